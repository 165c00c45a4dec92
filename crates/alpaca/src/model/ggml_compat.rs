//! llama.cpp's arithmetic for the non-matrix ops, used by LLaMA models under
//! `--int8-activations` (see [`crate::model::int8`] for the Q8_0 products).
//!
//! The default engine computes RoPE angles in f64, RMSNorm with an f32 SIMD dot, attention
//! over an f32 KV cache with an exact softmax, and SiLU with `exp`; transformers parity
//! depends on that. llama.cpp (ggml-cpu, built `-march=native -O3` with GCC on an
//! AVX-512 CPU without AVX512-FP16) rounds differently, and greedy decoding eventually
//! follows the rounding. Each function here reproduces one ggml-cpu op bit for bit:
//!
//! - [`rope_cache`] + [`rope_rotate`]: `ggml_rope_cache_init` (f32 angle as a running
//!   product `theta *= powf(base, -2/n_dims)`, `sincosf`) and `rotate_pairs`, which GCC
//!   compiles to `fmaddsub`: `x0' = fma(x0, cos, -(x1*sin))`, `x1' = fma(x0, sin, x1*cos)`,
//!   the products inside the parentheses rounded first.
//! - [`rms_norm`]: `ggml_compute_forward_rms_norm_f32`: sum of f32 squares in f64,
//!   `mean = (float)(sum/n)`, `scale = 1/sqrtf(mean + eps)`, `y = x*scale*w`.
//! - [`swiglu`]: `ggml_vec_swiglu_f32`: 16-lane `ggml_v_silu` built on ggml's AVX-512
//!   `ggml_v_expf` ([`v_expf`]), scalar `x/(1+expf(-x))` for the leftovers.
//! - [`round_f16`]: the f16 KV cache (`GGML_TYPE_F16`, llama.cpp's default), round to
//!   nearest even.
//! - [`attention`]: `ggml_compute_forward_flash_attn_ext_f16` (llama.cpp's default on
//!   CPU): batches of fewer than [`FA_TILE_Q`] queries (decode) take the one-chunk kernel
//!   (Q to f16, `ggml_vec_dot_f16` scores, online softmax with an f16 `VKQ` accumulator);
//!   larger prompt batches take the tiled kernel (f32 Q, `simd_gemm` scores, per-tile
//!   `ggml_vec_soft_max_f32`, f32 accumulator). llama.cpp's split-KV decode path (a KV
//!   view of 512 cells or more, i.e. past 256 positions with its default padding) is not
//!   emulated.

use half::f16;
use rayon::prelude::*;

use crate::model::attention::AttnShape;
use crate::model::ops;

/// ggml's `GGML_FA_TILE_Q`: query batches at least this long take the tiled kernel.
pub const FA_TILE_Q: usize = 64;
/// ggml's `GGML_FA_TILE_KV`: keys per tile of the tiled kernel.
pub const FA_TILE_KV: usize = 64;

/// Whether LLaMA forwards follow llama.cpp's arithmetic (the `--int8-activations` switch).
pub fn enabled() -> bool {
    crate::model::int8::enabled()
}

/// Causal attention: `(q, keys, values, pos0, t, shape, out)`.
pub type AttentionFn = fn(&[f32], &[f32], &[f32], usize, usize, AttnShape, &mut [f32]);

/// The non-matrix ops of a LLaMA forward: the default engine's, or llama.cpp's.
#[derive(Clone, Copy)]
pub struct LlamaOps {
    pub rms_norm: fn(&[f32], &[f32], f32, &mut [f32]),
    pub rope_angles: fn(usize, usize, f32, &mut [f32], &mut [f32]),
    pub rope: fn(&mut [f32], &[f32], &[f32]),
    pub swiglu: fn(&mut [f32], &[f32]),
    pub attention: AttentionFn,
    /// Round keys and values to f16 before caching them.
    pub f16_cache: bool,
}

impl LlamaOps {
    /// llama.cpp's ops when [`enabled`], the default engine's otherwise.
    pub fn current() -> Self {
        if enabled() {
            LlamaOps {
                rms_norm,
                rope_angles: rope_cache,
                rope: rope_rotate,
                swiglu,
                attention,
                f16_cache: true,
            }
        } else {
            LlamaOps {
                rms_norm: ops::rms_norm,
                rope_angles: ops::rope_angles,
                rope: ops::rope_normal,
                swiglu: ops::swiglu,
                attention: crate::model::attention::attention,
                f16_cache: false,
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// RoPE
// ------------------------------------------------------------------------------------------

/// cos/sin of `pos * theta_i` for `i < rope_dim/2`, as `ggml_rope_cache_init` computes them
/// (no YaRN, frequency scale 1): the angle is an f32 running product.
pub fn rope_cache(pos: usize, rope_dim: usize, base: f32, cos: &mut [f32], sin: &mut [f32]) {
    let theta_scale = base.powf(-2.0f32 / rope_dim as f32);
    let mut theta = pos as f32;
    for (c, s) in cos.iter_mut().zip(sin.iter_mut()).take(rope_dim / 2) {
        (*s, *c) = theta.sin_cos();
        theta *= theta_scale;
    }
}

/// Rotate adjacent pairs of one head (ggml "normal" RoPE) with ggml's FMA contraction.
pub fn rope_rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (pair, (&c, &s)) in x.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0.mul_add(c, -(x1 * s));
        pair[1] = x0.mul_add(s, x1 * c);
    }
}

// ------------------------------------------------------------------------------------------
// RMSNorm, SwiGLU
// ------------------------------------------------------------------------------------------

/// `out = x * (1/sqrtf(mean(x^2) + eps)) * w` with ggml's f64 sum of squares.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().fold(0.0f64, |s, &v| s + (v * v) as f64);
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// One lane of ggml's AVX-512 `ggml_v_expf` (a degree-5 polynomial on `x - n ln2` and a
/// `scalef` by `n`): within 1.5 ulp of `exp`, but not `expf`'s bits.
pub fn v_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let p = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)));
    let j = p.mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    scalef(j, n)
}

/// `_mm512_scalef_ps` for an integral `n` within +-192: `j * 2^n`, rounded once.
fn scalef(j: f32, n: f32) -> f32 {
    (j as f64 * 2f64.powi(n as i32)) as f32
}

/// `gate[i] = silu(gate[i]) * up[i]` as `ggml_vec_swiglu_f32` on AVX-512.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    let full = gate.len() / 16 * 16;
    for (g, &u) in gate[..full].iter_mut().zip(up) {
        let x = *g;
        *g = x / (1.0 + v_expf(0.0 - x)) * u;
    }
    for (g, &u) in gate[full..].iter_mut().zip(&up[full..]) {
        let x = *g;
        *g = x / (1.0 + (-x).exp()) * u;
    }
}

// ------------------------------------------------------------------------------------------
// f16 KV cache, flash attention
// ------------------------------------------------------------------------------------------

/// `x` rounded to the nearest f16 (ties to even), as f32. Normal f16 results are rounded
/// on the f32 bits (drop 13 mantissa bits); subnormals, overflow, inf and NaN go through `half`.
#[inline]
pub fn h(x: f32) -> f32 {
    let b = x.to_bits();
    // |x| from 2^-14 (smallest normal f16) up to (not including) 65504 (largest f16)
    if (0x3880_0000..0x477f_e000).contains(&(b & 0x7fff_ffff)) {
        f32::from_bits((b + 0x0fff + ((b >> 13) & 1)) & !0x1fff)
    } else {
        f16::from_f32(x).to_f32()
    }
}

/// Round every value to f16 (round to nearest even), as storing into an f16 cache does.
pub fn round_f16(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = h(*v));
}

/// GCC's `_mm512_reduce_add_ps`: halves, quarters, then pairs.
pub fn reduce_add_16(a: &[f32; 16]) -> f32 {
    let t3: [f32; 8] = std::array::from_fn(|i| a[i + 8] + a[i]);
    let t6: [f32; 4] = std::array::from_fn(|i| t3[i + 4] + t3[i]);
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// `ggml_vec_dot_f16` on AVX-512 without FP16 arithmetic, for f16-valued inputs: four
/// 16-lane f32 accumulators over steps of 64, folded `(a0+a2)+(a1+a3)`, reduced, then the
/// leftovers added in f64.
pub fn dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let np = n / 64 * 64;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, al) in a.iter_mut().enumerate() {
                let k = i + 16 * j + l;
                *al = x[k].mul_add(y[k], *al);
            }
        }
    }
    let fold: [f32; 16] = std::array::from_fn(|l| {
        let (a02, a13) = (acc[0][l] + acc[2][l], acc[1][l] + acc[3][l]);
        a02 + a13
    });
    let mut sum = reduce_add_16(&fold) as f64;
    for k in np..n {
        sum += (x[k] * y[k]) as f64;
    }
    sum as f32
}

/// Causal attention for `t` queries from position `pos0` over an f16-valued KV cache
/// (`[position][n_kv_heads * head_dim]`), as llama.cpp's CPU flash attention computes it;
/// same arguments as [`crate::model::attention::attention`]. No window, no soft-cap.
pub fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    pos0: usize,
    t: usize,
    s: AttnShape,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let kv_dim = s.n_kv_heads * hd;
    let tiled = t >= FA_TILE_Q;
    let one = |row: usize, o: &mut [f32]| {
        let (i, head) = (row / s.n_heads, row % s.n_heads);
        let qr = &q[row * hd..(row + 1) * hd];
        let kv = KvHead {
            keys,
            values,
            kv_dim,
            off: (head / group) * hd,
            hd,
            n: pos0 + i + 1,
        };
        if tiled {
            attend_tiled(qr, kv, s.scale, o);
        } else {
            attend_one_chunk(qr, kv, s.scale, o);
        }
    };
    if t * s.n_heads * (pos0 + t) * hd < (1 << 16) {
        out.chunks_exact_mut(hd)
            .enumerate()
            .for_each(|(r, o)| one(r, o));
    } else {
        out.par_chunks_exact_mut(hd)
            .enumerate()
            .for_each(|(r, o)| one(r, o));
    }
}

/// The cache columns of one kv head, positions `0..n` visible.
#[derive(Clone, Copy)]
struct KvHead<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    kv_dim: usize,
    off: usize,
    hd: usize,
    n: usize,
}

impl KvHead<'_> {
    fn key(&self, p: usize) -> &[f32] {
        let s = p * self.kv_dim + self.off;
        &self.keys[s..s + self.hd]
    }

    fn value(&self, p: usize) -> &[f32] {
        let s = p * self.kv_dim + self.off;
        &self.values[s..s + self.hd]
    }
}

/// `ggml_compute_forward_flash_attn_ext_f16_one_chunk` for one query row.
fn attend_one_chunk(q: &[f32], kv: KvHead, scale: f32, out: &mut [f32]) {
    let qh: Vec<f32> = q.iter().map(|&v| h(v)).collect();
    let vkq = out;
    vkq.fill(0.0);
    let (mut s_sum, mut m) = (0f32, f32::NEG_INFINITY);
    for p in 0..kv.n {
        let s = dot_f16(kv.key(p), &qh) * scale + 0.0;
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > m {
            let m_old = m;
            m = s;
            ms = (m_old - m).exp();
            vkq.iter_mut().for_each(|a| *a = h(*a * ms));
        } else {
            vs = (s - m).exp();
        }
        for (a, &v) in vkq.iter_mut().zip(kv.value(p)) {
            *a = h(v.mul_add(vs, *a));
        }
        s_sum = s_sum.mul_add(ms, vs);
    }
    let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
    vkq.iter_mut().for_each(|a| *a *= inv);
}

/// `ggml_compute_forward_flash_attn_ext_tiled` for one query row: tiles of
/// [`FA_TILE_KV`] keys, masked entries `-inf`.
fn attend_tiled(q: &[f32], kv: KvHead, scale: f32, out: &mut [f32]) {
    let vkq = out;
    vkq.fill(0.0);
    let (mut s_sum, mut m) = (0f32, f32::NEG_INFINITY);
    let mut kq = [0f32; FA_TILE_KV];
    for ic in (0..kv.n).step_by(FA_TILE_KV) {
        for (tk, e) in kq.iter_mut().enumerate() {
            let p = ic + tk;
            *e = if p < kv.n {
                let k = kv.key(p);
                let acc = q
                    .iter()
                    .zip(k)
                    .fold(0f32, |a, (&qv, &kv)| kv.mul_add(qv, a));
                acc * scale + 0.0
            } else {
                f32::NEG_INFINITY
            };
        }
        let tile_max = kq
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| if a > b { a } else { b });
        if tile_max == f32::NEG_INFINITY {
            continue;
        }
        let m_new = m.max(tile_max);
        if m_new > m {
            let ms = (m - m_new).exp();
            vkq.iter_mut().for_each(|a| *a *= ms);
            s_sum *= ms;
        }
        m = m_new;
        let mut sum = 0f64;
        for chunk in kq.chunks_exact_mut(16) {
            let mut lanes = [0f32; 16];
            for (l, e) in lanes.iter_mut().zip(chunk.iter_mut()) {
                *e = v_expf(*e - m_new);
                *l = *e;
            }
            sum += reduce_add_16(&lanes) as f64;
        }
        s_sum = (s_sum as f64 + sum) as f32;
        for (tk, &pk) in kq.iter().enumerate() {
            let p = ic + tk;
            if p >= kv.n {
                continue; // weight 0: the product adds nothing
            }
            for (a, &v) in vkq.iter_mut().zip(kv.value(p)) {
                *a = v.mul_add(pk, *a);
            }
        }
    }
    let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
    vkq.iter_mut().for_each(|a| *a *= inv);
}

#[cfg(test)]
#[path = "ggml_compat_tests.rs"]
mod tests;
