use super::*;

struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }
}

fn levels() -> Vec<SimdLevel> {
    [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|l| *l <= hw_simd_level())
        .collect()
}

/// Check one product against a naive triple loop in f64. Layouts: 0 = nt, 1 = nn, 2 = tn
/// (as train::gemm uses them), 3 = every operand column-major.
fn check(
    plan: &Plan,
    m: usize,
    k: usize,
    n: usize,
    layout: u8,
    alpha: f32,
    beta: f32,
    rng: &mut Lcg,
) {
    let a = rng.vec(m * k);
    let b = rng.vec(k * n);
    let (ast, bst, cst) = match layout {
        0 => ((k, 1), (1, k), (n, 1)),
        1 => ((k, 1), (n, 1), (n, 1)),
        2 => ((1, m), (n, 1), (n, 1)),
        _ => ((1, m), (1, k), (1, m)),
    };
    let c0 = if beta == 0.0 {
        vec![f32::NAN; m * n]
    } else {
        rng.vec(m * n)
    };
    let mut c = c0.clone();
    sgemm_with(plan, m, k, n, alpha, &a, ast, &b, bst, beta, &mut c, cst);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            let mut mag = 0f64;
            for p in 0..k {
                let x = a[i * ast.0 + p * ast.1] as f64 * b[p * bst.0 + j * bst.1] as f64;
                s += x;
                mag += x.abs();
            }
            let ci = i * cst.0 + j * cst.1;
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c0[ci] as f64
            };
            let want = alpha as f64 * s + old;
            let tol =
                1e-5 * (alpha.abs() as f64 * mag + old.abs() + 1.0) * (1.0 + (k as f64).sqrt());
            let got = c[ci] as f64;
            assert!(
                (got - want).abs() <= tol,
                "m={m} k={k} n={n} layout={layout} at ({i},{j}): {got} vs {want}"
            );
        }
    }
}

#[test]
fn every_level_matches_naive_on_odd_shapes() {
    let dims = [1, 2, 3, 5, 7, 13, 16, 17, 31, 33, 47, 64, 70];
    let mut rng = Lcg(7);
    let plans = levels().into_iter().flat_map(|l| [plan(l), plan_wide32(l)]);
    for p in plans {
        let mut case = 0usize;
        for &m in &dims {
            for &n in &dims {
                // A rotating k keeps the sweep fast while covering every k.
                let k = dims[(case * 5 + 3) % dims.len()];
                let layout = (case % 4) as u8;
                let (alpha, beta) = [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25), (1.0, 1.0)][case % 4];
                check(&p, m, k, n, layout, alpha, beta, &mut rng);
                case += 1;
            }
        }
    }
}

#[test]
fn small_blocks_cover_k_blocking_and_parallel_splits() {
    // Tiny cache blocks force several kc slices, row blocks and column blocks.
    let mut rng = Lcg(11);
    for level in levels() {
        let mut p = plan(level);
        p.kc = 8;
        p.mc = 2 * p.mr;
        p.nc = 2 * p.nr;
        for (m, k, n) in [(37, 29, 101), (70, 67, 53), (3, 41, 150)] {
            for layout in 0..4 {
                check(&p, m, k, n, layout, 1.5, 0.0, &mut rng);
                check(&p, m, k, n, layout, 1.0, 1.0, &mut rng);
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            check(&p, 61, 29, 97, 0, 1.0, 0.0, &mut rng);
            check(&p, 5, 19, 200, 2, 0.5, 1.0, &mut rng);
        });
    }
}

#[test]
fn k_zero_scales_or_clears_c() {
    let mut c = vec![f32::NAN; 6];
    sgemm(2, 0, 3, 1.0, &[], (0, 1), &[], (3, 1), 0.0, &mut c, (3, 1));
    assert_eq!(c, vec![0.0; 6]);
    let mut c = vec![2.0; 6];
    sgemm(2, 0, 3, 1.0, &[], (0, 1), &[], (3, 1), 0.5, &mut c, (3, 1));
    assert_eq!(c, vec![1.0; 6]);
}

/// GFLOP/s of our sgemm vs `matrixmultiply` on the SmolLM2 training shapes (m = 1024 tokens),
/// one thread:
/// `taskset -c 0 cargo test --release -p alpaca --lib sgemm_vs_matrixmultiply -- --ignored --nocapture`
#[test]
#[ignore]
fn sgemm_vs_matrixmultiply() {
    use std::time::Instant;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut rng = Lcg(3);
    let m = 1024;
    let reps = 5;
    let variants = plan_variants();
    println!(
        "| layout | m x k x n | matrixmultiply | {} |",
        variants.iter().map(|v| v.0).collect::<Vec<_>>().join(" | ")
    );
    for (k, n) in [
        (576, 576),
        (576, 192),
        (576, 1536),
        (1536, 576),
        (576, 49152),
        (576, 16),
        (16, 576),
    ] {
        for layout in 0..3u8 {
            // nt: y[m,n] = x[m,k] w[n,k]^T; nn: dx[m,k] = dy[m,n] w[n,k]; tn: dw[n,k] = dy^T x.
            let (mm, kk, nn) = match layout {
                0 => (m, k, n),
                1 => (m, n, k),
                _ => (n, m, k),
            };
            if n == 49152 && layout != 0 {
                continue;
            }
            let (ast, bst) = match layout {
                0 => ((kk, 1), (1, kk)),
                1 => ((kk, 1), (nn, 1)),
                _ => ((1, mm), (nn, 1)),
            };
            let a = rng.vec(mm * kk);
            let b = rng.vec(kk * nn);
            let mut c = vec![0f32; mm * nn];
            let flop = 2.0 * (mm * kk * nn) as f64;
            let time = |f: &mut dyn FnMut(&mut [f32])| {
                let mut c = c.clone();
                f(&mut c);
                let mut ts: Vec<f64> = (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        f(&mut c);
                        t.elapsed().as_secs_f64()
                    })
                    .collect();
                ts.sort_by(|x, y| x.partial_cmp(y).unwrap());
                flop / ts[reps / 2] / 1e9
            };
            let mm_gf = time(&mut |c: &mut [f32]| unsafe {
                matrixmultiply::sgemm(
                    mm,
                    kk,
                    nn,
                    1.0,
                    a.as_ptr(),
                    ast.0 as isize,
                    ast.1 as isize,
                    b.as_ptr(),
                    bst.0 as isize,
                    bst.1 as isize,
                    0.0,
                    c.as_mut_ptr(),
                    nn as isize,
                    1,
                )
            });
            let ours: Vec<String> = variants
                .iter()
                .map(|(_, p)| {
                    let gf = pool.install(|| {
                        time(&mut |c: &mut [f32]| {
                            sgemm_with(p, mm, kk, nn, 1.0, &a, ast, &b, bst, 0.0, c, (nn, 1))
                        })
                    });
                    format!("{gf:.1} ({:.2}x)", gf / mm_gf)
                })
                .collect();
            c[0] = 0.0;
            println!(
                "| {} | {mm}x{kk}x{nn} | {mm_gf:.1} | {} |",
                ["nt", "nn", "tn"][layout as usize],
                ours.join(" | ")
            );
        }
    }
}
