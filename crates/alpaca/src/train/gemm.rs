//! The f32 matrix products of training, over our own GEMM ([`crate::model::sgemm`]: AVX-512
//! 8x48 micro-kernel, ~230 GFLOP/s on one Zen 5 core for 1024x576x1536, 1.2-1.5x the
//! `matrixmultiply` crate it replaced).
//!
//! Three shapes cover every linear layer, all row-major:
//! - [`nt`]: `y[m,n] (+)= x[m,k] . w[n,k]^T` (forward);
//! - [`nn`]: `dx[m,k] (+)= dy[m,n] . w[n,k]` (input gradient);
//! - [`tn`]: `dw[n,k] (+)= dy[m,n]^T . x[m,k]` (weight gradient).
//!
//! Products with a LoRA-rank-wide side ([`nt_narrow`], [`tn_narrow`]) skip the GEMM, which
//! would pack (copy, or transpose) the whole large operand for an output a few columns wide.
//!
//! Threads come from the global rayon pool (the CLI's `-t`).

// BLAS-style signatures: the dimensions are the arguments.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

pub use crate::model::sgemm::{sgemm, sgemm_with};

/// The GEMM plan of attention's products (outputs a multiple of 32 wide).
pub fn attention_plan() -> crate::model::sgemm::Plan {
    crate::model::sgemm::plan_wide32(crate::model::ops::simd_level())
}

/// The widest rank that goes through [`nt_narrow`] and [`tn_narrow`] (the AVX-512 GEMM's
/// register tile is 48 wide).
pub const NARROW: usize = 32;
/// Rows of `x` per parallel task of [`nt_narrow`].
const NARROW_ROWS: usize = 64;
/// Columns of `x` per parallel task of [`tn_narrow`].
const NARROW_COLS: usize = 32;
// `outer_group_512` holds a stripe in two 16-lane registers.
const _: () = assert!(NARROW_COLS == 32);

fn beta(acc: bool) -> f32 {
    if acc {
        1.0
    } else {
        0.0
    }
}

/// `y[m,n] (+)= alpha * x[m,k] . w[n,k]^T`.
pub fn nt(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    acc: bool,
) {
    sgemm(m, k, n, alpha, x, (k, 1), w, (1, k), beta(acc), y, (n, 1));
}

/// `dx[m,k] (+)= alpha * dy[m,n] . w[n,k]`.
pub fn nn(
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    acc: bool,
) {
    sgemm(m, n, k, alpha, dy, (n, 1), w, (k, 1), beta(acc), dx, (k, 1));
}

/// `dw[n,k] (+)= alpha * dy[m,n]^T . x[m,k]`.
pub fn tn(
    dy: &[f32],
    x: &[f32],
    dw: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    acc: bool,
) {
    sgemm(n, m, k, alpha, dy, (1, n), x, (k, 1), beta(acc), dw, (k, 1));
}

/// `y[m, r] = alpha * x[m, k] . a[r, k]^T` for a narrow `r`: `r` dot products per row of `x`,
/// which is read once and never packed.
pub fn nt_narrow(x: &[f32], a: &[f32], y: &mut [f32], m: usize, k: usize, r: usize, alpha: f32) {
    let y = &mut y[..m * r];
    if k == 0 || r == 0 {
        y.fill(0.0);
        return;
    }
    let a = &a[..r * k];
    y.par_chunks_mut(r * NARROW_ROWS)
        .zip(x[..m * k].par_chunks(k * NARROW_ROWS))
        .for_each(|(yc, xc)| dots_task(xc, a, yc, k, r, alpha));
}

crate::model::ops::dispatch!(dots_task(x: &[f32], a: &[f32], y: &mut [f32], k: usize, r: usize, alpha: f32) -> () {
    for (yi, xi) in y.chunks_exact_mut(r).zip(x.chunks_exact(k)) {
        let mut j0 = 0;
        while j0 < r {
            j0 += match r - j0 {
                8.. => dots_group::<8>(xi, a, k, j0, yi, alpha),
                4.. => dots_group::<4>(xi, a, k, j0, yi, alpha),
                _ => dots_group::<1>(xi, a, k, j0, yi, alpha),
            };
        }
    }
});

/// `y[j] = alpha * x . a[j]` for the `G` rows `j0..j0 + G` of `a` (`[r, k]`) at once: `G`
/// independent 16-lane accumulators keep the FMA pipeline full (one dot at a time is a
/// single dependency chain, a quarter of the FMA throughput), and `x` is loaded once per
/// group. Returns `G`.
#[inline(always)]
fn dots_group<const G: usize>(
    x: &[f32],
    a: &[f32],
    k: usize,
    j0: usize,
    y: &mut [f32],
    alpha: f32,
) -> usize {
    let rows: [&[f32]; G] = std::array::from_fn(|g| &a[(j0 + g) * k..(j0 + g + 1) * k]);
    let mut acc = [[0f32; 16]; G];
    let full = k / 16 * 16;
    for c in (0..full).step_by(16) {
        let xv = &x[c..c + 16];
        for (accg, row) in acc.iter_mut().zip(&rows) {
            let av = &row[c..c + 16];
            for i in 0..16 {
                accg[i] = xv[i].mul_add(av[i], accg[i]);
            }
        }
    }
    for ((yj, accg), row) in y[j0..j0 + G].iter_mut().zip(&acc).zip(&rows) {
        let mut t = crate::model::ops::hsum16(accg);
        for c in full..k {
            t = x[c].mul_add(row[c], t);
        }
        *yj = alpha * t;
    }
    G
}

/// `g += alpha * u[m, r]^T . x[m, k]` for a narrow `r`, `g` being `[r, k]`, or `[k, r]` when
/// `g_transposed` (the layout of LoRA's `dB`). Each task sums a stripe of `NARROW_COLS`
/// columns of `x` over all rows; `x` is read once and never packed.
pub fn tn_narrow(
    u: &[f32],
    x: &[f32],
    g: &mut [f32],
    m: usize,
    r: usize,
    k: usize,
    alpha: f32,
    g_transposed: bool,
) {
    if r == 0 || k == 0 {
        return;
    }
    let (u, x) = (&u[..m * r], &x[..m * k]);
    let stripes: Vec<(usize, Vec<f32>)> = (0..k.div_ceil(NARROW_COLS))
        .into_par_iter()
        .map(|s| {
            let c0 = s * NARROW_COLS;
            let w = NARROW_COLS.min(k - c0);
            let mut acc = vec![0f32; r * w];
            outer_task(u, x, &mut acc, r, k, c0, w);
            (c0, acc)
        })
        .collect();
    let g = &mut g[..r * k];
    for (c0, acc) in stripes {
        let w = acc.len() / r;
        for (j, row) in acc.chunks_exact(w).enumerate() {
            for (c, v) in row.iter().enumerate() {
                let at = if g_transposed {
                    (c0 + c) * r + j
                } else {
                    j * k + c0 + c
                };
                g[at] += alpha * v;
            }
        }
    }
}

crate::model::ops::dispatch!(outer_task(u: &[f32], x: &[f32], acc: &mut [f32], r: usize, k: usize, c0: usize, w: usize) -> () {
    // acc[j, c] += u[i, j] x[i, c0 + c] over every row i.
    #[cfg(target_arch = "x86_64")]
    if w == NARROW_COLS && crate::model::ops::simd_level() == crate::model::ops::SimdLevel::Avx512 {
        let mut j0 = 0;
        while j0 < r {
            // SAFETY: AVX-512 is supported (checked above); every row of `x` holds columns
            // `c0..c0 + NARROW_COLS`, every row of `u` `r >= j0 + G` values, `acc` `r` rows.
            j0 += unsafe {
                match r - j0 {
                    8.. => outer_group_512::<8>(u, x, acc, r, k, c0, j0),
                    4.. => outer_group_512::<4>(u, x, acc, r, k, c0, j0),
                    _ => outer_group_512::<1>(u, x, acc, r, k, c0, j0),
                }
            };
        }
        return;
    }
    for (ui, xi) in u.chunks_exact(r).zip(x.chunks_exact(k)) {
        let xi = &xi[c0..c0 + w];
        for (accj, &s) in acc.chunks_exact_mut(w).zip(ui) {
            for (a, &xv) in accj.iter_mut().zip(xi) {
                *a = s.mul_add(xv, *a);
            }
        }
    }
});

/// [`outer_task`] for the `G` rows `j0..j0 + G` of `acc` over a full 32-column stripe: the
/// `G x 32` sums stay in `2 G` registers for the whole pass over the rows of `x` (summed in
/// memory, every FMA also loads and stores its accumulator; and the compiler's own
/// vectorization of this loop gathers across `G`). Returns `G`.
///
/// # Safety
/// The CPU must support AVX-512F; see the call site for the shapes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn outer_group_512<const G: usize>(
    u: &[f32],
    x: &[f32],
    acc: &mut [f32],
    r: usize,
    k: usize,
    c0: usize,
    j0: usize,
) -> usize {
    use std::arch::x86_64::*;
    let mut lo = [_mm512_setzero_ps(); G];
    let mut hi = [_mm512_setzero_ps(); G];
    for (ui, xi) in u.chunks_exact(r).zip(x.chunks_exact(k)) {
        let xs = &xi[c0..c0 + 32];
        let ug = &ui[j0..j0 + G];
        // SAFETY: `xs` holds 32 values.
        let (x0, x1) = unsafe {
            (
                _mm512_loadu_ps(xs.as_ptr()),
                _mm512_loadu_ps(xs.as_ptr().add(16)),
            )
        };
        for g in 0..G {
            let b = _mm512_set1_ps(ug[g]);
            lo[g] = _mm512_fmadd_ps(b, x0, lo[g]);
            hi[g] = _mm512_fmadd_ps(b, x1, hi[g]);
        }
    }
    for g in 0..G {
        let row = &mut acc[(j0 + g) * 32..(j0 + g + 1) * 32];
        let p = row.as_mut_ptr();
        // SAFETY: `row` holds 32 values.
        unsafe {
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), lo[g]));
            _mm512_storeu_ps(p.add(16), _mm512_add_ps(_mm512_loadu_ps(p.add(16)), hi[g]));
        }
    }
    G
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_products_match_the_gemm() {
        for (m, k, r) in [
            (5, 7, 3),
            (130, 70, 8),
            (64, 129, 16),
            (3, 1, 1),
            (65, 200, 17),
            (40, 100, 6),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let a: Vec<f32> = (0..r * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let u: Vec<f32> = (0..m * r).map(|i| (i as f32 * 0.23).sin()).collect();
            let close = |got: &[f32], want: &[f32]| {
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{g} vs {w} ({m}x{k}x{r})"
                    );
                }
            };
            let (mut y, mut want) = (vec![f32::NAN; m * r], vec![0.0; m * r]);
            nt_narrow(&x, &a, &mut y, m, k, r, 0.5);
            nt(&x, &a, &mut want, m, k, r, 0.5, false);
            close(&y, &want);
            // g[r, k] += u^T x, and the same into the transposed layout [k, r].
            let (mut g, mut want) = (vec![1.0; r * k], vec![1.0; r * k]);
            tn_narrow(&u, &x, &mut g, m, r, k, 2.0, false);
            tn(&u, &x, &mut want, m, r, k, 2.0, true);
            close(&g, &want);
            let mut gt = vec![1.0; k * r];
            tn_narrow(&u, &x, &mut gt, m, r, k, 2.0, true);
            let back: Vec<f32> = (0..r * k).map(|i| gt[(i % k) * r + i / k]).collect();
            close(&back, &want);
        }
        let mut y = vec![f32::NAN; 6];
        nt_narrow(&[], &[], &mut y, 3, 0, 2, 1.0);
        assert_eq!(y, vec![0.0; 6]);
    }

    #[test]
    fn shapes_match_naive() {
        let (m, k, n) = (5, 7, 3);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).cos()).collect();
        let mut y = vec![0.0; m * n];
        nt(&x, &w, &mut y, m, k, n, 1.0, false);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                assert!((y[i * n + j] - want).abs() < 1e-5);
            }
        }
        let mut dx = vec![0.0; m * k];
        nn(&y, &w, &mut dx, m, n, k, 1.0, false);
        for i in 0..m {
            for t in 0..k {
                let want: f32 = (0..n).map(|j| y[i * n + j] * w[j * k + t]).sum();
                assert!((dx[i * k + t] - want).abs() < 1e-4);
            }
        }
        let mut dw = vec![1.0; n * k];
        tn(&y, &x, &mut dw, m, n, k, 1.0, true);
        for j in 0..n {
            for t in 0..k {
                let want: f32 = 1.0 + (0..m).map(|i| y[i * n + j] * x[i * k + t]).sum::<f32>();
                assert!((dw[j * k + t] - want).abs() < 1e-4);
            }
        }
    }
}
