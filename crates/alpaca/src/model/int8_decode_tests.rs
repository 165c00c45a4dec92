use super::*;
use crate::model::kernels::tests::{random_matrix, Lcg};
use crate::model::quant::dequantize_row;

const TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

/// The int8 levels this CPU can run (shared by the int8 GEMM and multi-token tests).
pub(crate) fn levels() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Vnni]
        .into_iter()
        .filter(|l| available(*l))
        .collect()
}

/// `t` activation rows with a spread of magnitudes per block (some blocks tiny, one all
/// zero); shared by the int8 GEMM and multi-token tests.
pub(crate) fn random_x(t: usize, cols: usize, rng: &mut Lcg) -> Vec<f32> {
    let mut x: Vec<f32> = (0..t * cols)
        .map(|i| rng.unit() * [1.0, 0.01, 30.0][(i / 32 + i / cols) % 3])
        .collect();
    if cols >= 64 {
        x[32..64].fill(0.0);
    }
    x
}

/// The dequantized activations `d_b * q`.
fn dequant_acts(a: &ActBuf) -> Vec<f32> {
    a.q.iter()
        .enumerate()
        .map(|(j, q)| a.d[j / 32] * *q as f32)
        .collect()
}

#[test]
fn quantized_acts_round_to_nearest_and_sum_lanes() {
    let mut rng = Lcg(3);
    let x = random_x(1, 32 * 9, &mut rng);
    let mut a = ActBuf::default();
    quantize_acts(&x, &mut a);
    assert_eq!((a.q.len(), a.d.len(), a.nl.len()), (x.len(), 9, 72));
    for (b, xb) in x.chunks_exact(32).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(a.d[b], amax / 127.0);
        let q = &a.q[32 * b..32 * b + 32];
        for (i, g) in q.chunks_exact(4).enumerate() {
            let s: i32 = g.iter().map(|v| *v as i32).sum();
            assert_eq!(a.nl[8 * b + i], -s);
        }
        for (v, q) in xb.iter().zip(q) {
            assert!(*q >= -127);
            assert!((v - a.d[b] * *q as f32).abs() <= 0.5001 * a.d[b] + 1e-30);
        }
    }
    // A zero block quantizes to zeros with a zero scale.
    assert_eq!(a.d[1], 0.0);
    assert!(a.q[32..64].iter().all(|q| *q == 0));
}

#[test]
fn quantize_row_is_bit_identical_to_the_portable_code() {
    let mut rng = Lcg(5);
    let mut x = random_x(1, 32 * 13, &mut rng);
    // Ties of the rounding (x * 127 / max = k + 0.5) and values at the max.
    x[64] = 1.0;
    x[65] = 0.5 / 127.0 * 3.0;
    x[66] = -1.0;
    let nb = x.len() / 32;
    let (mut q, mut d, mut nl) = (vec![0i8; x.len()], vec![0f32; nb], vec![0i32; 8 * nb]);
    quantize_row(&x, &mut q, &mut d, &mut nl);
    let (mut q2, mut d2, mut nl2) = (vec![1i8; x.len()], vec![1f32; nb], vec![1i32; 8 * nb]);
    quantize_impl(&x, &mut q2, &mut d2, &mut nl2);
    assert_eq!((q, nl), (q2, nl2));
    assert_eq!(
        d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        d2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn every_level_matches_the_scalar_reference() {
    let mut rng = Lcg(17);
    for ty in TYPES {
        let bs = ty.block_size().max(32);
        // 65 blocks of 32 cross the 64-block scale pass of the vector kernels.
        let counts: &[usize] = if bs == 32 {
            &[1, 2, 3, 7, 65]
        } else {
            &[1, 2, 3]
        };
        for &nblocks in counts {
            let cols = bs * nblocks;
            let rows = 4;
            let data = random_matrix(ty, rows, cols, &mut rng);
            let x = random_x(1, cols, &mut rng);
            let mut a = ActBuf::default();
            quantize_acts(&x, &mut a);
            let xd = dequant_acts(&a);
            let rb = ty.row_bytes(cols);
            for r in 0..rows {
                let row = &data[r * rb..(r + 1) * rb];
                let mut w = vec![0f32; cols];
                dequantize_row(ty, row, &mut w);
                let wmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Offsets and mins make the terms summed larger than |w x|: bound by both.
                let mag: f32 = w
                    .iter()
                    .zip(&xd)
                    .map(|(w, x)| (w.abs() + wmax) * x.abs())
                    .sum();
                let want = dot_row_at(Level::Scalar, ty, row, a.view());
                let exact: f64 = w.iter().zip(&xd).map(|(w, x)| *w as f64 * *x as f64).sum();
                assert!(
                    (want as f64 - exact).abs() <= 1e-5 * mag as f64 + 1e-6,
                    "{} scalar cols={cols} row {r}: {want} vs {exact}",
                    ty.name()
                );
                for level in levels() {
                    let got = dot_row_at(level, ty, row, a.view());
                    assert!(
                        (got - want).abs() <= 1e-5 * mag + 1e-6,
                        "{} {level:?} cols={cols} row {r}: {got} vs {want}",
                        ty.name()
                    );
                }
            }
        }
    }
}

#[test]
fn eight_row_kernels_are_bit_identical_to_the_scalar_reference() {
    // Q8_0, Q5_0 and Q6_K compute every row in the scalar reference's arithmetic, whichever lane,
    // call (interleaved chunks, remainder with repeated rows) or level computes it.
    let mut rng = Lcg(23);
    for ty in [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q6K] {
        for (rows, nblocks) in [(1, 1), (7, 3), (8, 2), (13, 18), (70, 5), (203, 1)] {
            let cols = ty.block_size().max(32) * nblocks;
            let data = random_matrix(ty, rows, cols, &mut rng);
            let x = random_x(1, cols, &mut rng);
            let mut a = ActBuf::default();
            quantize_acts(&x, &mut a);
            let rb = ty.row_bytes(cols);
            let want: Vec<f32> = (0..rows)
                .map(|r| dot_row_at(Level::Scalar, ty, &data[r * rb..(r + 1) * rb], a.view()))
                .collect();
            for level in levels() {
                let mut y = vec![f32::NAN; rows];
                matvec(level, ty, &data, rows, cols, &x, &mut y);
                assert_eq!(y, want, "{} {level:?} rows={rows} cols={cols}", ty.name());
                for (r, w) in want.iter().enumerate() {
                    let got = dot_row_at(level, ty, &data[r * rb..(r + 1) * rb], a.view());
                    assert_eq!(got, *w, "{} {level:?} row {r}", ty.name());
                }
            }
        }
    }
}

#[test]
fn int8_matvec_is_within_the_activation_rounding_of_f32() {
    let mut rng = Lcg(29);
    for ty in TYPES {
        let cols = ty.block_size().max(32) * 3;
        for rows in [1, 17, 70] {
            let data = random_matrix(ty, rows, cols, &mut rng);
            let x = random_x(1, cols, &mut rng);
            let mut want = vec![0f32; rows];
            kernels::matvec_fused(SimdLevel::Scalar, ty, &data, rows, cols, &x, 1, &mut want);
            let mut a = ActBuf::default();
            quantize_acts(&x, &mut a);
            let rb = ty.row_bytes(cols);
            for level in levels() {
                let mut y = vec![f32::NAN; rows];
                matvec(level, ty, &data, rows, cols, &x, &mut y);
                for r in 0..rows {
                    let mut w = vec![0f32; cols];
                    dequantize_row(ty, &data[r * rb..(r + 1) * rb], &mut w);
                    // |x - d q| <= d / 2 per value: a hard bound on the difference.
                    let bound: f32 = w
                        .iter()
                        .enumerate()
                        .map(|(j, w)| w.abs() * 0.501 * a.d[j / 32])
                        .sum();
                    let mag: f32 = w.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
                    assert!(
                        (y[r] - want[r]).abs() <= bound + 2e-5 * mag + 1e-6,
                        "{} {level:?} rows={rows} [{r}]: {} vs {}",
                        ty.name(),
                        y[r],
                        want[r]
                    );
                }
            }
        }
    }
}

#[test]
fn parallel_matvec_matches_serial() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .expect("pool");
    let mut rng = Lcg(41);
    let (rows, cols) = (300, 512);
    for ty in [GgmlType::Q8_0, GgmlType::Q6K] {
        let data = random_matrix(ty, rows, cols, &mut rng);
        let x = random_x(1, cols, &mut rng);
        let level = level_for(SimdLevel::Avx512);
        let mut serial = vec![0f32; rows];
        matvec(level, ty, &data, rows, cols, &x, &mut serial);
        let mut par = vec![f32::NAN; rows];
        pool.install(|| matvec(level, ty, &data, rows, cols, &x, &mut par));
        assert_eq!(serial, par, "{}", ty.name());
    }
}

#[test]
fn types_without_kernels_fall_back_to_f32() {
    let mut rng = Lcg(43);
    let (rows, cols) = (5, 64);
    let ty = GgmlType::Q4_1;
    assert!(kernel(Level::Scalar, ty).is_none());
    let data = random_matrix(ty, rows, cols, &mut rng);
    let x = random_x(1, cols, &mut rng);
    let mut want = vec![0f32; rows];
    kernels::matvec_fused(
        kernels::default_level(),
        ty,
        &data,
        rows,
        cols,
        &x,
        1,
        &mut want,
    );
    let mut y = vec![f32::NAN; rows];
    matvec(Level::Vnni, ty, &data, rows, cols, &x, &mut y);
    assert_eq!(y, want);
}

#[test]
fn auto_policy_keeps_f32_for_the_default_model_types() {
    // One-token products stay f32; only batched decode steps take int8.
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::F16, GgmlType::F32] {
        assert_eq!(auto_mode(ty), ActMode::Int8Batch, "{}", ty.name());
    }
    for ty in [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K] {
        assert_eq!(auto_mode(ty), ActMode::Int8, "{}", ty.name());
    }
}
