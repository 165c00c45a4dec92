//! Tests of the int8-activation path (`int8.rs`).
//!
//! They never flip the process-wide switch: other tests run in parallel and expect the f32
//! path.

use super::*;
use crate::model::quant::{dequantize_row, quantize_row, GgmlType};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f32 {
        (self.next() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
}

fn levels() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Avx512Vnni]
        .into_iter()
        .filter(|l| available(*l))
        .collect()
}

/// A plain port of ggml-cpu's x86 `quantize_row_q8_0`, one value at a time.
fn ggml_x86_port(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks_exact(32) {
        let mut amax = 0f32;
        for v in b {
            amax = amax.max(v.abs());
        }
        let d = amax / 127.0;
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for v in b {
            let q = (v * id).round_ties_even();
            // cvtps_epi32: out of range (here: infinite) is i32::MIN.
            let r = if q.is_finite() && q.abs() < 2.0e9 {
                q as i32
            } else {
                i32::MIN
            };
            out.push(r.clamp(-128, 127) as i8 as u8);
        }
    }
    out
}

/// ggml's `quantize_row_q8_0_ref`: divides by `d` and rounds half away from zero.
fn ggml_ref_port(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for v in b {
            out.push((v * id).round() as i8 as u8);
        }
    }
    out
}

fn quantize(x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; row_bytes(x.len())];
    quantize_row_q8_0(x, &mut q);
    q
}

fn edge_inputs() -> Vec<Vec<f32>> {
    let mut v = vec![vec![0f32; 64]];
    let mut huge = vec![0.001f32; 32];
    huge[7] = 3.0e4;
    v.push(huge);
    let mut neg = (0..32).map(|i| i as f32 * 0.01).collect::<Vec<_>>();
    neg[31] = -5.0;
    v.push(neg);
    // amax 127 -> multiplier 1: exact halves are ties (2.5 -> 2, 3.5 -> 4, -2.5 -> -2).
    let mut ties = vec![127.0f32];
    ties.extend([2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, 126.5]);
    ties.resize(32, 0.25);
    v.push(ties);
    v.push(vec![-1.0; 32]);
    v.push(vec![f32::MIN_POSITIVE; 32]);
    v
}

#[test]
fn quantize_equals_ggml_x86_bit_for_bit() {
    let mut rng = Lcg(7);
    let mut inputs = edge_inputs();
    for s in [1e-3f32, 1.0, 40.0, 1e4] {
        inputs.push((0..256).map(|_| rng.unit() * s).collect());
    }
    for x in &inputs {
        let want = ggml_x86_port(x);
        assert_eq!(quantize(x), want, "input starting {:?}", &x[..4]);
        let mut q = vec![0u8; want.len()];
        quantize_scalar(x, &mut q);
        assert_eq!(q, want);
    }
    // The ties round to even (unlike the `_ref` version, which rounds away from zero).
    let q = quantize(&inputs[3]);
    let qs: Vec<i8> = q[2..11].iter().map(|b| *b as i8).collect();
    assert_eq!(qs, [127, 2, 4, -2, -4, 0, 0, 2, 126]);
    assert_eq!(ggml_ref_port(&inputs[3])[3] as i8, 3);
    // Zeros: zero scale, zero values. Negative max: -127.
    assert!(quantize(&inputs[0]).iter().all(|b| *b == 0));
    assert_eq!(quantize(&inputs[2])[2 + 31] as i8, -127);
    // A block of subnormal-sized values: 127 / amax overflows to infinity and, as in ggml,
    // every value becomes -128 (the converted "integer indefinite", saturated).
    assert!(quantize(&inputs[5])[2..].iter().all(|b| *b as i8 == -128));
}

#[test]
fn quantize_agrees_with_the_ref_version_up_to_one_step() {
    let mut rng = Lcg(3);
    let x: Vec<f32> = (0..4096).map(|_| rng.unit() * 3.0).collect();
    let (a, b) = (quantize(&x), ggml_ref_port(&x));
    let stored = quantize_row(GgmlType::Q8_0, &x).expect("q8_0");
    for ((ba, bb), bs) in a
        .chunks_exact(34)
        .zip(b.chunks_exact(34))
        .zip(stored.chunks_exact(34))
    {
        assert_eq!(ba[..2], bb[..2]);
        assert_eq!(ba[..2], bs[..2], "the weight quantizer uses the same scale");
        for (p, q) in ba[2..].iter().zip(&bb[2..]) {
            assert!((*p as i8 as i32 - *q as i8 as i32).abs() <= 1);
        }
    }
}

#[test]
fn every_dot_level_equals_scalar_exactly() {
    let mut rng = Lcg(11);
    for cols in [32, 64, 576, 1536] {
        for _ in 0..8 {
            let w: Vec<f32> = (0..cols).map(|_| rng.unit() * 0.1).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.unit() * 4.0).collect();
            let wq = quantize_row(GgmlType::Q8_0, &w).expect("q8_0");
            let xq = quantize(&x);
            let want = dot_scalar(&wq, &xq);
            // The exact integer dot, for the scalar kernel itself.
            let exact: f64 = wq
                .chunks_exact(34)
                .zip(xq.chunks_exact(34))
                .map(|(a, b)| {
                    let s: i32 = a[2..]
                        .iter()
                        .zip(&b[2..])
                        .map(|(p, q)| *p as i8 as i32 * *q as i8 as i32)
                        .sum();
                    s as f64 * (scale(a) * scale(b)) as f64
                })
                .sum();
            assert!((want as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()));
            for level in levels() {
                let got = dot_q8_0(level, &wq, &xq);
                assert_eq!(got.to_bits(), want.to_bits(), "{level:?} cols={cols}");
            }
        }
    }
}

#[test]
fn matmul_is_within_int8_error_of_the_f32_reference_at_every_level() {
    let mut rng = Lcg(5);
    let (rows, cols) = (67, 128);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() * 0.2).collect();
    let data: Vec<u8> = w
        .chunks_exact(cols)
        .flat_map(|r| quantize_row(GgmlType::Q8_0, r).expect("q8_0"))
        .collect();
    let mut wd = vec![0f32; rows * cols];
    for (r, o) in wd.chunks_exact_mut(cols).enumerate() {
        dequantize_row(GgmlType::Q8_0, &data[r * 136..(r + 1) * 136], o);
    }
    for t in [1, 2, 5] {
        let x: Vec<f32> = (0..t * cols).map(|_| rng.unit() * 3.0).collect();
        let mut first: Option<Vec<f32>> = None;
        for level in levels() {
            let mut y = vec![0f32; t * rows];
            matmul_q8_0_at(level, &data, rows, cols, &x, t, &mut y);
            for i in 0..t {
                let xi = &x[i * cols..(i + 1) * cols];
                let xq = quantize(xi);
                for r in 0..rows {
                    let wr = &wd[r * cols..(r + 1) * cols];
                    let exact: f32 = wr.iter().zip(xi).map(|(a, b)| a * b).sum();
                    // Each activation moves by at most half a step, amax / 254 of its block.
                    let bound: f32 = wr
                        .chunks_exact(32)
                        .zip(xi.chunks_exact(32))
                        .map(|(wb, xb)| {
                            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                            wb.iter().map(|v| v.abs()).sum::<f32>() * amax / 254.0 * 1.01
                        })
                        .sum::<f32>()
                        + 1e-4;
                    let got = y[i * rows + r];
                    assert!(
                        (got - exact).abs() <= bound,
                        "{got} vs {exact} (bound {bound})"
                    );
                    let row = &data[r * 136..(r + 1) * 136];
                    assert_eq!(got.to_bits(), dot_scalar(row, &xq).to_bits());
                }
            }
            match &first {
                None => first = Some(y),
                Some(f) => assert_eq!(f, &y, "{level:?} differs"),
            }
        }
    }
}

#[test]
fn matmul_handles_empty_shapes() {
    let mut y: Vec<f32> = Vec::new();
    matmul_q8_0(&[], 0, 32, &[0.5; 32], 1, &mut y);
    assert!(y.is_empty());
}
