//! The f32 matrix products of training, over our own GEMM ([`crate::model::sgemm`]: AVX-512
//! 8x48 micro-kernel, ~230 GFLOP/s on one Zen 5 core for 1024x576x1536, 1.2-1.5x the
//! `matrixmultiply` crate it replaced).
//!
//! Three shapes cover every linear layer, all row-major:
//! - [`nt`]: `y[m,n] (+)= x[m,k] . w[n,k]^T` (forward);
//! - [`nn`]: `dx[m,k] (+)= dy[m,n] . w[n,k]` (input gradient);
//! - [`tn`]: `dw[n,k] (+)= dy[m,n]^T . x[m,k]` (weight gradient).
//!
//! Threads come from the global rayon pool (the CLI's `-t`).

// BLAS-style signatures: the dimensions are the arguments.
#![allow(clippy::too_many_arguments)]

pub use crate::model::sgemm::sgemm;

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

#[cfg(test)]
mod tests {
    use super::*;

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
