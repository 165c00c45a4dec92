use super::*;
use crate::model::int8_decode::tests::{levels, random_x};
use crate::model::kernels::tests::{random_matrix, smollm2_layer, Lcg};
use crate::model::quant::dequantize_row;

const TYPES: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4K,
];

fn dequant(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> Vec<Vec<f32>> {
    let rb = ty.row_bytes(cols);
    (0..rows)
        .map(|r| {
            let mut w = vec![0f32; cols];
            dequantize_row(ty, &data[r * rb..(r + 1) * rb], &mut w);
            w
        })
        .collect()
}

/// Every level against the scalar reference, and the reference against the exact product
/// of the dequantized weights and activations, for odd row counts, block counts and token
/// counts (every group size, padded groups, several groups).
#[test]
fn every_level_matches_the_scalar_reference() {
    let mut rng = Lcg(5);
    for ty in TYPES {
        let bs = ty.block_size().max(32);
        // 19 blocks: the decoders' 4- and 8-block passes twice or more, plus a tail.
        let counts: &[usize] = if bs == 32 { &[1, 3, 7, 19] } else { &[1, 2] };
        for &nblocks in counts {
            let cols = bs * nblocks;
            for rows in [1, 5, 9] {
                let data = random_matrix(ty, rows, cols, &mut rng);
                let w = dequant(ty, &data, rows, cols);
                for t in [2, 3, 4, 5, 8, 9, 11, 17, 33] {
                    let x = random_x(t, cols, &mut rng);
                    let mut want = vec![f32::NAN; t * rows];
                    matmul(Level::Scalar, ty, &data, rows, cols, &x, t, &mut want);
                    for i in 0..t {
                        let mut a = ActBuf::default();
                        quantize_acts(&x[i * cols..(i + 1) * cols], &mut a);
                        let xd: Vec<f32> = (0..cols).map(|k| a.d[k / 32] * a.q[k] as f32).collect();
                        for r in 0..rows {
                            let wmax = w[r].iter().fold(0f32, |m, v| m.max(v.abs()));
                            // Offsets and mins make the terms summed larger than |w x|.
                            let mag: f32 = w[r]
                                .iter()
                                .zip(&xd)
                                .map(|(w, x)| (w.abs() + 2.0 * wmax) * x.abs())
                                .sum();
                            let exact: f64 = w[r]
                                .iter()
                                .zip(&xd)
                                .map(|(w, x)| *w as f64 * *x as f64)
                                .sum();
                            let v = want[i * rows + r];
                            assert!(
                                (v as f64 - exact).abs() <= 1e-5 * mag as f64 + 1e-6,
                                "{} scalar cols={cols} rows={rows} t={t} [{i},{r}]: {v} vs {exact}",
                                ty.name()
                            );
                        }
                    }
                    for level in levels() {
                        let mut y = vec![f32::NAN; t * rows];
                        matmul(level, ty, &data, rows, cols, &x, t, &mut y);
                        for (j, (a, b)) in y.iter().zip(&want).enumerate() {
                            let r = j % rows;
                            let wmax = w[r].iter().fold(0f32, |m, v| m.max(v.abs()));
                            let xr = &x[(j / rows) * cols..(j / rows + 1) * cols];
                            let mag: f32 = w[r]
                                .iter()
                                .zip(xr)
                                .map(|(w, x)| (w.abs() + 2.0 * wmax) * x.abs())
                                .sum();
                            assert!(
                                (a - b).abs() <= 1e-5 * mag + 1e-6,
                                "{} {level:?} cols={cols} rows={rows} t={t} [{j}]: {a} vs {b}",
                                ty.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Against the `f32` kernels: the difference is bounded by the activation rounding
/// (`|x - d q| <= d / 2` per value).
#[test]
fn int8_multi_is_within_the_activation_rounding_of_f32() {
    let mut rng = Lcg(31);
    for ty in TYPES {
        let cols = ty.block_size().max(32) * 3;
        let rows = 13;
        let data = random_matrix(ty, rows, cols, &mut rng);
        let w = dequant(ty, &data, rows, cols);
        for t in [2, 6, 8, 19] {
            let x = random_x(t, cols, &mut rng);
            let mut want = vec![0f32; t * rows];
            kernels::matvec(SimdLevel::Scalar, ty, &data, rows, cols, &x, t, &mut want);
            for level in levels() {
                let mut y = vec![f32::NAN; t * rows];
                matmul(level, ty, &data, rows, cols, &x, t, &mut y);
                for i in 0..t {
                    let mut a = ActBuf::default();
                    let xi = &x[i * cols..(i + 1) * cols];
                    quantize_acts(xi, &mut a);
                    for r in 0..rows {
                        let bound: f32 = w[r]
                            .iter()
                            .enumerate()
                            .map(|(k, w)| w.abs() * 0.501 * a.d[k / 32])
                            .sum();
                        let mag: f32 = w[r].iter().zip(xi).map(|(w, x)| (w * x).abs()).sum();
                        let (g, f) = (y[i * rows + r], want[i * rows + r]);
                        assert!(
                            (g - f).abs() <= bound + 2e-5 * mag + 1e-6,
                            "{} {level:?} t={t} [{i},{r}]: {g} vs {f}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn parallel_matmul_matches_serial() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .expect("pool");
    let mut rng = Lcg(47);
    let (rows, cols, t) = (301, 512, 8);
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let data = random_matrix(ty, rows, cols, &mut rng);
        let x = random_x(t, cols, &mut rng);
        let level = level_for(SimdLevel::Avx512);
        let mut serial = vec![0f32; t * rows];
        matmul(level, ty, &data, rows, cols, &x, t, &mut serial);
        let mut par = vec![f32::NAN; t * rows];
        pool.install(|| matmul(level, ty, &data, rows, cols, &x, t, &mut par));
        assert_eq!(serial, par, "{}", ty.name());
    }
}

#[test]
fn types_without_kernels_fall_back_to_f32() {
    let mut rng = Lcg(53);
    let (rows, cols, t) = (5, 256, 3);
    for ty in [GgmlType::Q6K, GgmlType::F16] {
        assert!(!supported(ty));
        let data = random_matrix(ty, rows, cols, &mut rng);
        let x = random_x(t, cols, &mut rng);
        let mut want = vec![0f32; t * rows];
        let f = kernels::default_level();
        kernels::matvec(f, ty, &data, rows, cols, &x, t, &mut want);
        let mut y = vec![f32::NAN; t * rows];
        matmul(Level::Vnni, ty, &data, rows, cols, &x, t, &mut y);
        assert_eq!(y, want, "{}", ty.name());
    }
}

#[test]
fn group_sizes_cover_every_count() {
    for t in 1..40 {
        let (mut i, mut lanes) = (0, 0);
        while i < t {
            let tt = group_size(t - i);
            assert!([1, 2, 4, 8].contains(&tt));
            i += tt.min(t - i);
            lanes += tt;
        }
        assert!(lanes < t + 4, "t={t}: {lanes} lanes");
    }
}

/// One SmolLM2-135M layer (Q4_1) plus a slice of its Q8_0 head by token count: the `f32`
/// multi-row kernels against these, alternated (timing only; run by hand, one thread):
/// `RAYON_NUM_THREADS=1 cargo test --release -p alpaca --lib int8_multi_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn int8_multi_timing() {
    use std::time::Instant;
    let mut rng = Lcg(1);
    let mats = smollm2_layer(&mut rng);
    let f = kernels::default_level();
    let level = level_for(f);
    for t in [2usize, 3, 4, 8, 16, 32] {
        let x: Vec<f32> = (0..t * 1536).map(|_| rng.unit()).collect();
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..15 {
            for (p, ts) in times.iter_mut().enumerate() {
                let t0 = Instant::now();
                for (ty, r, c, d) in &mats {
                    let mut y = vec![0f32; t * r];
                    if p == 0 {
                        kernels::matvec(f, *ty, d, *r, *c, &x[..t * c], t, &mut y);
                    } else {
                        matmul(level, *ty, d, *r, *c, &x[..t * c], t, &mut y);
                    }
                }
                ts.push(t0.elapsed().as_secs_f64());
            }
        }
        for ts in times.iter_mut() {
            ts.sort_by(f64::total_cmp);
        }
        let (a, b) = (times[0][7], times[1][7]);
        eprintln!(
            "t={t:2}: f32 {:7.1} us  int8 {:7.1} us  (median of 15, f32/int8 {:.2}x)",
            a * 1e6,
            b * 1e6,
            a / b
        );
    }
}
