//! Shared numeric primitives of the forward pass, written once for every architecture:
//! dot products, RMSNorm, RoPE, softmax and activations, all on `f32` slices.
//!
//! Reductions keep 16 independent accumulators so the compiler can vectorize them; the
//! `#[target_feature]` wrappers let one portable binary use AVX2/FMA or AVX-512 when the CPU
//! has them (chosen once at run time, see [`simd_level`]).

use std::sync::OnceLock;

/// The widest SIMD family this CPU supports, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Scalar,
    Avx2,
    Avx512,
}

static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
static HW_LEVEL: OnceLock<SimdLevel> = OnceLock::new();

/// The widest level the CPU supports, ignoring `ALPACA_SIMD` (tests use it to run every
/// level's kernels directly).
pub fn hw_simd_level() -> SimdLevel {
    *HW_LEVEL.get_or_init(|| {
        #[allow(unused_mut)]
        let mut level = SimdLevel::Scalar;
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                level = SimdLevel::Avx2;
            }
            if level == SimdLevel::Avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                level = SimdLevel::Avx512;
            }
        }
        level
    })
}

/// Detected SIMD level. `ALPACA_SIMD=scalar|avx2` forces a lower level (to test fallbacks).
pub fn simd_level() -> SimdLevel {
    *LEVEL.get_or_init(|| {
        let level = hw_simd_level();
        match std::env::var("ALPACA_SIMD").as_deref() {
            Ok("scalar") => SimdLevel::Scalar,
            Ok("avx2") => level.min(SimdLevel::Avx2),
            _ => level,
        }
    })
}

/// Expand `$body` (an expression using only safe code) three times: for AVX-512, AVX2+FMA
/// and portable, and call the best one the CPU supports. The body is `#[inline(always)]`
/// generic code; each copy is compiled with its own target features.
macro_rules! dispatch {
    ($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty $body:block) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { imp($($arg),*) }
                match $crate::model::ops::simd_level() {
                    // SAFETY: the CPU supports the features these copies were compiled for.
                    $crate::model::ops::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::model::ops::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::model::ops::SimdLevel::Scalar => {}
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// Sum of `a[i] * b[i]` with 16 lanes of partial sums.
#[inline(always)]
pub fn dot_inline(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s = x.mul_add(*y, s);
    }
    hsum16(&acc) + s
}

#[inline(always)]
pub fn hsum16(acc: &[f32; 16]) -> f32 {
    let mut a8 = [0f32; 8];
    for i in 0..8 {
        a8[i] = acc[i] + acc[i + 8];
    }
    let a4 = [a8[0] + a8[4], a8[1] + a8[5], a8[2] + a8[6], a8[3] + a8[7]];
    (a4[0] + a4[2]) + (a4[1] + a4[3])
}

dispatch!(dot(a: &[f32], b: &[f32]) -> f32 { dot_inline(a, b) });

dispatch!(axpy(alpha: f32, x: &[f32], y: &mut [f32]) -> () {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = alpha.mul_add(*xi, *yi);
    }
});

/// 16 lanes of partial sums of `f(i)` over `0..n` (the order [`dot_inline`] sums in).
#[inline(always)]
fn sum16(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let full = n / 16 * 16;
    for c in (0..full).step_by(16) {
        for (i, a) in acc.iter_mut().enumerate() {
            *a += f(c + i);
        }
    }
    let s: f32 = (full..n).map(&f).sum();
    hsum16(&acc) + s
}

dispatch!(rms_backward_row(x: &[f32], w: &[f32], dy: &[f32], r: f32, dx: &mut [f32]) -> () {
    // RMSNorm backward of one row (`r = 1/rms(x)`), added into `dx`:
    // `dx_i += r w_i dy_i - r^3/d x_i sum_j(dy_j w_j x_j)`.
    let d = x.len();
    let (w, dy, dx) = (&w[..d], &dy[..d], &mut dx[..d]);
    let s = sum16(d, |j| dy[j] * w[j] * x[j]);
    let c = r * r * r * s / d as f32;
    for (j, o) in dx.iter_mut().enumerate() {
        *o += r * w[j] * dy[j] - c * x[j];
    }
});

dispatch!(softmax_backward_row(dp: &mut [f32], p: &[f32], scale: f32) -> () {
    // From `dp = dL/dp` of one softmax row `p`: `dz = p (dp - sum(p dp)) scale`, in place.
    let p = &p[..dp.len()];
    let s = dot_inline(dp, p);
    for (d, &pi) in dp.iter_mut().zip(p) {
        *d = pi * (*d - s) * scale;
    }
});

dispatch!(softmax_poly(x: &mut [f32]) -> () {
    // [`softmax`] over [`exp_poly`] (relative error about 2e-7), vectorized.
    let mut m16 = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            m16[i] = if c[i] > m16[i] { c[i] } else { m16[i] };
        }
    }
    let max = chunks.remainder().iter().chain(&m16).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut acc = [0f32; 16];
    let mut lanes = x.chunks_exact_mut(16);
    for c in &mut lanes {
        for i in 0..16 {
            c[i] = exp_poly(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut s = 0f32;
    for v in lanes.into_remainder() {
        *v = exp_poly(*v - max);
        s += *v;
    }
    let inv = 1.0 / (hsum16(&acc) + s);
    x.iter_mut().for_each(|v| *v *= inv);
});

/// RMSNorm (Zhang & Sennrich 2019): `out = x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = dot(x, x) / x.len() as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    for ((o, xi), wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// Rotary position embedding tables for one position: `cos`/`sin` of `pos * theta_i`,
/// `theta_i = base^(-2i/rope_dim)` for `i < rope_dim/2`.
pub fn rope_angles(pos: usize, rope_dim: usize, base: f32, cos: &mut [f32], sin: &mut [f32]) {
    for i in 0..rope_dim / 2 {
        // Computed in f64 then rounded, to stay close to the f32 reference implementations.
        let theta = (pos as f64) * (base as f64).powf(-2.0 * i as f64 / rope_dim as f64);
        cos[i] = theta.cos() as f32;
        sin[i] = theta.sin() as f32;
    }
}

// Apply RoPE in ggml's "normal" layout to one head: rotate adjacent pairs
// `(x[2i], x[2i+1])`. GGUF llama files store q/k permuted so that this layout is exact
// (llama.cpp `convert_hf_to_gguf.py` permutes HF's rotate-half layout into it).
dispatch!(rope_normal(x: &mut [f32], cos: &[f32], sin: &[f32]) -> () {
    let x = &mut x[..2 * cos.len()];
    for (i, p) in x.chunks_exact_mut(2).enumerate() {
        let (a, b) = (p[0], p[1]);
        p[0] = a * cos[i] - b * sin[i];
        p[1] = a * sin[i] + b * cos[i];
    }
});

/// Apply RoPE in the "neox" (rotate-half) layout: pairs `(x[i], x[i + d/2])`.
pub fn rope_neox(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = a * sin[i] + b * cos[i];
    }
}

/// In-place numerically stable softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `exp(x)` without a libm call, so loops over it vectorize (Cephes `expf`): `x = k ln2 + r`
/// (Cody-Waite, two-part `ln2`), a degree-6 polynomial for `exp(r)` on `|r| <= ln2/2`, and
/// `2^k` built in the exponent bits. Relative error about 2e-7; the input is clamped to
/// `[-87.3, 88.3]` (so tiny results are `1.2e-38`, not denormals or 0).
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.3);
    let k = x.mul_add(std::f32::consts::LOG2_E, 0.5).floor();
    let r = k.mul_add(-0.693_359_4, x);
    let r = k.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    e * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

dispatch!(exp_shift_sum(x: &mut [f32], shift: f32) -> f64 {
    // `x[i] = exp(x[i] - shift)`; returns the sum (16 f32 lanes per 1024 values, then f64).
    let mut total = 0f64;
    for block in x.chunks_mut(1024) {
        let mut acc = [0f32; 16];
        let mut lanes = block.chunks_exact_mut(16);
        for c in &mut lanes {
            for i in 0..16 {
                c[i] = exp_poly(c[i] - shift);
                acc[i] += c[i];
            }
        }
        let mut s = 0f32;
        for v in lanes.into_remainder() {
            *v = exp_poly(*v - shift);
            s += *v;
        }
        total += (hsum16(&acc) + s) as f64;
    }
    total
});

dispatch!(scale_in_place(x: &mut [f32], s: f32) -> () {
    x.iter_mut().for_each(|v| *v *= s);
});

/// SiLU (swish): `x * sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU in place: `gate[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

dispatch!(swiglu_fast(gate: &mut [f32], up: &[f32]) -> () {
    // [`swiglu`] over [`exp_poly`] (relative error about 2e-7), vectorized: the batched
    // step's (libm's scalar `exp` was a tenth of an 8-sequence step, all on one thread);
    // single-sequence passes keep [`swiglu`], their arithmetic pinned to transformers'.
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_poly(-*g)) * u;
    }
});

dispatch!(swiglu_into(g: &[f32], up: &[f32], out: &mut [f32]) -> () {
    // `out = silu(g) * up`, vectorized ([`exp_poly`]).
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(up) {
        *o = g / (1.0 + exp_poly(-g)) * u;
    }
});

dispatch!(swiglu_backward(g: &[f32], up: &[f32], dact: &[f32], dg: &mut [f32], dup: &mut [f32]) -> () {
    // From `dact = dL/d(silu(g) * up)`: `dup = dact silu(g)`,
    // `dg = dact up silu'(g)`, `silu'(g) = s (1 + g (1 - s))`, `s = sigmoid(g)`.
    for (i, (dgi, dui)) in dg.iter_mut().zip(dup.iter_mut()).enumerate() {
        let (x, d) = (g[i], dact[i]);
        let s = 1.0 / (1.0 + exp_poly(-x));
        *dui = d * x * s;
        *dgi = d * up[i] * s * (1.0 + x * (1.0 - s));
    }
});

/// GELU, tanh approximation (as used by Gemma's GeGLU).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// GeGLU in place (Gemma's feed-forward): `gate[i] = gelu_tanh(gate[i]) * up[i]`.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh(*g) * u;
    }
}

/// RMSNorm in place over each `w.len()`-sized chunk of `x` (one chunk per head): the
/// QK-norm of Gemma 3, Qwen 3 and OLMo 2, applied to `[t, n_heads * head_dim]` rows.
pub fn rms_norm_heads(x: &mut [f32], w: &[f32], eps: f32) {
    for head in x.chunks_exact_mut(w.len()) {
        let scale = 1.0 / (dot(head, head) / w.len() as f32 + eps).sqrt();
        for (v, wi) in head.iter_mut().zip(w) {
            *v *= scale * wi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_rows_match_their_scalar_formulas() {
        for d in [5, 16, 64, 129, 576] {
            let v = |k: f32| -> Vec<f32> { (0..d).map(|i| (i as f32 * k).sin()).collect() };
            let (x, w, dy, base) = (v(0.37), v(0.11), v(0.53), v(0.71));
            let r = 1.3f32;
            let mut dx = base.clone();
            rms_backward_row(&x, &w, &dy, r, &mut dx);
            let s: f32 = (0..d).map(|j| dy[j] * w[j] * x[j]).sum();
            for j in 0..d {
                let want = base[j] + r * w[j] * dy[j] - r * r * r * s / d as f32 * x[j];
                assert!((dx[j] - want).abs() < 1e-5, "rms d={d} j={j}");
            }
            let mut p = x.clone();
            let mut want_p = x.clone();
            softmax_poly(&mut p);
            softmax(&mut want_p);
            for j in 0..d {
                assert!(
                    (p[j] - want_p[j]).abs() < 1e-6 * want_p[j].max(1e-3),
                    "softmax d={d}"
                );
            }
            let mut dp = dy.clone();
            softmax_backward_row(&mut dp, &p, 0.5);
            let s: f32 = (0..d).map(|j| dy[j] * p[j]).sum();
            for j in 0..d {
                assert!(
                    (dp[j] - p[j] * (dy[j] - s) * 0.5).abs() < 1e-6,
                    "dsoftmax d={d}"
                );
            }
        }
    }

    #[test]
    fn dot_matches_naive_on_odd_sizes() {
        for n in [0, 1, 7, 16, 33, 576, 1001] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - naive).abs() < 1e-3, "n={n}");
        }
    }

    #[test]
    fn rope_layouts_agree_under_permutation() {
        // Normal layout on interleaved pairs equals neox layout on the de-interleaved vector.
        let d = 8;
        let x: Vec<f32> = (0..d).map(|i| i as f32 + 1.0).collect();
        let (mut c, mut s) = (vec![0.0; d / 2], vec![0.0; d / 2]);
        rope_angles(5, d, 10000.0, &mut c, &mut s);
        let mut a = x.clone();
        rope_normal(&mut a, &c, &s);
        let mut b: Vec<f32> = (0..d / 2)
            .map(|i| x[2 * i])
            .chain((0..d / 2).map(|i| x[2 * i + 1]))
            .collect();
        rope_neox(&mut b, &c, &s);
        for i in 0..d / 2 {
            assert!((a[2 * i] - b[i]).abs() < 1e-6);
            assert!((a[2 * i + 1] - b[i + d / 2]).abs() < 1e-6);
        }
    }

    #[test]
    fn exp_poly_matches_libm() {
        // The documented range (below -87.3 the result stays at 2^-126).
        for i in -1990..=2000 {
            let x = i as f32 * 0.0437;
            let (a, b) = (exp_poly(x), x.exp());
            assert!((a - b).abs() <= 4e-7 * b, "x={x}: {a} vs {b}");
        }
        assert!(exp_poly(-1e4) < 1.2e-38 && exp_poly(-1e4) >= 0.0);
        let mut v: Vec<f32> = (0..1037).map(|i| (i as f32 * 0.01).sin()).collect();
        let want: f64 = v.iter().map(|&z| ((z - 1.0) as f64).exp()).sum();
        let got = exp_shift_sum(&mut v, 1.0);
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        assert!((v[5] - (0.05f32.sin() - 1.0).exp()).abs() < 1e-6);
    }

    #[test]
    fn swiglu_fast_matches_swiglu() {
        // Odd length (a vector tail), large negative and positive gates included.
        let gate: Vec<f32> = (0..1037).map(|i| (i as f32 - 518.0) * 0.05).collect();
        let up: Vec<f32> = (0..1037).map(|i| (i as f32 * 0.37).cos()).collect();
        let (mut a, mut b) = (gate.clone(), gate);
        swiglu(&mut a, &up);
        swiglu_fast(&mut b, &up);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1e-3), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }
}
