use super::*;
use crate::model::int8_decode::tests::{levels, random_x};
use crate::model::int8_decode::{quantize_acts, ActBuf};
use crate::model::kernels::tests::{random_matrix, Lcg};
use crate::model::ops::SimdLevel;
use crate::model::quant::dequantize_row;

const TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

/// Per output: `sum_j |w_j| * |x_j|` over the dequantized weights and the activations
/// as quantized, plus the hard bound of the activation rounding `sum_j |w_j| * d_j / 2`.
fn magnitudes(
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Vec<(f32, f32, f32)> {
    let rb = ty.row_bytes(cols);
    let mut out = Vec::new();
    let mut a = ActBuf::default();
    let mut w = vec![0f32; cols];
    for xi in x.chunks_exact(cols) {
        quantize_acts(xi, &mut a);
        for r in 0..rows {
            dequantize_row(ty, &data[r * rb..(r + 1) * rb], &mut w);
            let wmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (mut mag, mut round, mut f) = (0f32, 0f32, 0f32);
            for (j, (wj, xj)) in w.iter().zip(xi).enumerate() {
                let xq = a.d[j / 32] * a.q[j] as f32;
                // Offsets and mins make the summed terms larger than |w x|: bound by both.
                mag += (wj.abs() + wmax) * xq.abs();
                round += wj.abs() * 0.501 * a.d[j / 32];
                f += (wj * xj).abs();
            }
            out.push((mag, round, f));
        }
    }
    out
}

#[test]
fn every_level_matches_the_scalar_reference_on_odd_shapes() {
    let mut rng = Lcg(19);
    for ty in TYPES {
        let bs = ty.block_size().max(32);
        // 9 and 17 blocks of 32 cross the 8-block passes; 2 super-blocks are 16 blocks.
        let nblocks: &[usize] = if bs == 32 { &[1, 3, 9, 17] } else { &[1, 2, 3] };
        for &nbk in nblocks {
            let cols = bs * nbk;
            for rows in [1, 31, 33, 70] {
                let data = random_matrix(ty, rows, cols, &mut rng);
                for t in [1, 2, 3, 5, 13] {
                    let x = random_x(t, cols, &mut rng);
                    let mags = magnitudes(ty, &data, rows, cols, &x);
                    let mut want = vec![f32::NAN; t * rows];
                    gemm(Level::Scalar, ty, &data, rows, cols, &x, t, &mut want);
                    for level in levels() {
                        let mut y = vec![f32::NAN; t * rows];
                        gemm(level, ty, &data, rows, cols, &x, t, &mut y);
                        for (j, ((g, w), (mag, _, _))) in y.iter().zip(&want).zip(&mags).enumerate()
                        {
                            assert!(
                                (g - w).abs() <= 1e-5 * mag + 1e-6,
                                "{} {level:?} rows={rows} cols={cols} t={t} [{j}]: {g} vs {w}",
                                ty.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn int8_gemm_is_within_the_activation_rounding_of_the_f32_gemm() {
    let mut rng = Lcg(31);
    for ty in TYPES {
        let cols = ty.block_size().max(32) * 3;
        for (rows, t) in [(17, 7), (70, 33)] {
            let data = random_matrix(ty, rows, cols, &mut rng);
            let x = random_x(t, cols, &mut rng);
            let mags = magnitudes(ty, &data, rows, cols, &x);
            let mut want = vec![0f32; t * rows];
            kernels::gemm(SimdLevel::Scalar, ty, &data, rows, cols, &x, t, &mut want);
            for level in levels() {
                let mut y = vec![f32::NAN; t * rows];
                gemm(level, ty, &data, rows, cols, &x, t, &mut y);
                for (j, ((g, w), (_, round, f))) in y.iter().zip(&want).zip(&mags).enumerate() {
                    // |x - d q| <= d / 2 per value: a hard bound on the difference.
                    assert!(
                        (g - w).abs() <= round + 2e-5 * f + 1e-6,
                        "{} {level:?} rows={rows} t={t} [{j}]: {g} vs {w}",
                        ty.name()
                    );
                }
            }
        }
    }
}

#[test]
fn parallel_gemm_matches_serial() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .expect("pool");
    let mut rng = Lcg(47);
    let (rows, cols, t) = (300, 512, 70);
    for ty in [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
        let data = random_matrix(ty, rows, cols, &mut rng);
        let x = random_x(t, cols, &mut rng);
        let level = int8_decode::level_for(SimdLevel::Avx512);
        let mut serial = vec![0f32; t * rows];
        gemm(level, ty, &data, rows, cols, &x, t, &mut serial);
        let mut par = vec![f32::NAN; t * rows];
        pool.install(|| gemm(level, ty, &data, rows, cols, &x, t, &mut par));
        assert_eq!(serial, par, "{}", ty.name());
    }
}

#[test]
fn types_without_kernels_take_the_f32_gemm() {
    let mut rng = Lcg(53);
    let (rows, cols, t) = (5, 64, 33);
    for ty in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::F16] {
        assert!(!supported(ty));
        let data = random_matrix(ty, rows, cols, &mut rng);
        let x = random_x(t, cols, &mut rng);
        let level = kernels::default_level();
        let mut want = vec![0f32; t * rows];
        kernels::gemm(level, ty, &data, rows, cols, &x, t, &mut want);
        let mut y = vec![f32::NAN; t * rows];
        gemm(Level::Vnni, ty, &data, rows, cols, &x, t, &mut y);
        assert_eq!(y, want, "{}", ty.name());
    }
}

/// One SmolLM2-135M layer (q, k, v, o, gate, up, down) for a 512-token prompt, per type:
/// the `f32` GEMM vs the int8 GEMM, best of 7 (K-quants: the down projection only).
/// `RAYON_NUM_THREADS=1 cargo test --release -p alpaca --lib int8_gemm_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn int8_gemm_timing() {
    let mut rng = Lcg(1);
    let shapes: [(usize, usize); 7] = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let t = 512;
    for ty in TYPES {
        let mats: Vec<(usize, usize, Vec<u8>, Vec<f32>)> = shapes
            .iter()
            // K-quants only where the width is whole super-blocks (the down projection).
            .filter(|&&(_, c)| c.is_multiple_of(ty.block_size()))
            .map(|&(r, c)| {
                (
                    r,
                    c,
                    random_matrix(ty, r, c, &mut rng),
                    random_x(t, c, &mut rng),
                )
            })
            .collect();
        let time = |int8: bool| {
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t0 = std::time::Instant::now();
                for (r, c, data, x) in &mats {
                    let mut y = vec![0f32; t * r];
                    if int8 {
                        let level = int8_decode::level_for(SimdLevel::Avx512);
                        gemm(level, ty, data, *r, *c, x, t, &mut y);
                    } else {
                        kernels::gemm(kernels::default_level(), ty, data, *r, *c, x, t, &mut y);
                    }
                    std::hint::black_box(&y);
                }
                best = best.min(t0.elapsed().as_secs_f64());
            }
            best * 1e3
        };
        let (f, i) = (time(false), time(true));
        println!(
            "{:5} t={t}: f32 {f:.2} ms, int8 {i:.2} ms ({:.2}x)",
            ty.name(),
            f / i
        );
    }
}
