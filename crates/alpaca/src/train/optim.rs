//! AdamW (Loshchilov & Hutter 2019, decoupled weight decay, as `torch.optim.AdamW`),
//! learning-rate schedules with warmup (as Hugging Face's `get_*_schedule_with_warmup`) and
//! global-norm gradient clipping.

use rayon::prelude::*;

use super::model::Param;
use crate::error::{Error, Result};

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            "constant" => Ok(Schedule::Constant),
            o => Err(Error::InvalidArgument(format!(
                "unknown schedule `{o}` (linear, cosine, constant)"
            ))),
        }
    }
}

impl Schedule {
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
            Schedule::Constant => "constant",
        }
    }

    /// Learning rate for optimizer step `step` (0-based) of `total`, peak `lr`. Warmup is
    /// linear from 0 (Hugging Face's lambdas, evaluated at the scheduler's step count).
    pub fn lr(self, lr: f32, step: usize, warmup: usize, total: usize) -> f32 {
        if step < warmup {
            return lr * step as f32 / warmup.max(1) as f32;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        let f = match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        lr * f as f32
    }
}

/// AdamW hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// PyTorch / Hugging Face defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW state: first and second moments per parameter, in `params_mut` order.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Updates taken so far (bias correction uses `t`).
    pub t: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: &[&mut Param]) -> Self {
        AdamW {
            cfg,
            t: 0,
            m: params.iter().map(|p| vec![0.0; p.w.len()]).collect(),
            v: params.iter().map(|p| vec![0.0; p.w.len()]).collect(),
        }
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, params: &mut [&mut Param], lr: f32) {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - (c.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (c.beta2 as f64).powi(self.t as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for ((p, m), v) in params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            let decay = if p.decay {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let Param { w, g, .. } = &mut **p;
            w.par_iter_mut()
                .zip(g.par_iter())
                .zip(m.par_iter_mut().zip(v.par_iter_mut()))
                .for_each(|((w, &g), (m, v))| {
                    *w *= decay;
                    *m = c.beta1 * *m + (1.0 - c.beta1) * g;
                    *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
                    let denom = v.sqrt() / bc2_sqrt + c.eps;
                    *w -= step_size * *m / denom;
                });
        }
    }
}

/// Global L2 norm of every gradient (f64; deterministic, see [`sum_sq`]).
pub fn grad_norm(params: &[&mut Param]) -> f64 {
    params.iter().map(|p| sum_sq(&p.g)).sum::<f64>().sqrt()
}

/// Values per parallel task of [`sum_sq`] and the clipping scale.
const NORM_CHUNK: usize = 1 << 16;

/// `sum(g^2)` in f64, in parallel over fixed chunks (8 lanes each) added in chunk order: the
/// same result on any thread count, so a resumed run clips exactly as a straight one.
fn sum_sq(g: &[f32]) -> f64 {
    let parts: Vec<f64> = g
        .par_chunks(NORM_CHUNK)
        .map(|c| {
            let mut acc = [0f64; 8];
            let mut it = c.chunks_exact(8);
            for v in &mut it {
                for (a, &x) in acc.iter_mut().zip(v) {
                    *a += x as f64 * x as f64;
                }
            }
            let tail: f64 = it.remainder().iter().map(|&x| x as f64 * x as f64).sum();
            acc.iter().sum::<f64>() + tail
        })
        .collect();
    parts.iter().sum()
}

/// Scale gradients so that their global norm is at most `max_norm` (torch's
/// `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(params: &mut [&mut Param], max_norm: f32) -> f64 {
    let norm = grad_norm(params);
    if max_norm > 0.0 && norm > max_norm as f64 {
        let s = (max_norm as f64 / (norm + 1e-6)) as f32;
        for p in params.iter_mut() {
            p.g.par_chunks_mut(NORM_CHUNK)
                .for_each(|c| c.iter_mut().for_each(|g| *g *= s));
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_hugging_face() {
        let s = Schedule::Linear;
        assert_eq!(s.lr(1.0, 0, 10, 110), 0.0);
        assert!((s.lr(1.0, 5, 10, 110) - 0.5).abs() < 1e-6);
        assert!((s.lr(1.0, 60, 10, 110) - 0.5).abs() < 1e-6);
        assert!((Schedule::Cosine.lr(1.0, 60, 10, 110) - 0.5).abs() < 1e-6);
        assert!((Schedule::Cosine.lr(1.0, 10, 10, 110) - 1.0).abs() < 1e-6);
        assert_eq!(Schedule::Constant.lr(2.0, 100, 10, 110), 2.0);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let mut p = Param::new("w".into(), vec![1.0, -1.0], 1, 2, true);
        p.g = vec![0.5, -2.0];
        let mut params = vec![&mut p];
        let mut opt = AdamW::new(AdamWConfig::default(), &params);
        opt.step(&mut params, 0.1);
        // Bias-corrected first step: w -= lr * sign(g).
        assert!((p.w[0] - 0.9).abs() < 1e-5 && (p.w[1] + 0.9).abs() < 1e-5);
    }

    #[test]
    fn sum_of_squares_matches_a_serial_sum() {
        let g: Vec<f32> = (0..3 * NORM_CHUNK + 13)
            .map(|i| (i as f32 * 0.01).sin())
            .collect();
        let want: f64 = g.iter().map(|&x| x as f64 * x as f64).sum();
        assert!((sum_sq(&g) - want).abs() < 1e-9 * want);
        assert_eq!(
            sum_sq(&g[..5]),
            g[..5].iter().map(|&x| x as f64 * x as f64).sum::<f64>()
        );
        assert_eq!(sum_sq(&[]), 0.0);
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut p = Param::new("w".into(), vec![0.0; 2], 1, 2, true);
        p.g = vec![3.0, 4.0];
        let mut params = vec![&mut p];
        assert!((clip_grad_norm(&mut params, 1.0) - 5.0).abs() < 1e-9);
        assert!((grad_norm(&params) - 1.0).abs() < 1e-4);
    }
}
