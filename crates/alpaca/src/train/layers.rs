//! The primitives of the training graph, each written once with its forward and its
//! backward, and shared by every architecture ([`super::llama`], [`super::gemma3`]):
//! embedding lookup, RMSNorm, RoPE (both layouts), causal grouped-query attention over packed
//! sequences (optionally sliding-window and soft-capped), the gated feed-forward activations
//! and the output head's cross-entropy.
//!
//! Shapes: `n` tokens of a micro-batch (sequences packed back to back), `d` a row's width,
//! `hd` head dim, `qd = nh*hd`, `kvd = nkv*hd`, `V` vocabulary, `L` one sequence's length.

use rayon::prelude::*;

use super::gemm;
use super::model::{Norm, Weight};
use crate::error::{Error, Result};
use crate::model::attention::AttnShape;
use crate::model::ops::{
    dot, exp_shift_sum, gelu_tanh, rms_backward_row, rms_norm, rope_angles, rope_neox, rope_normal,
    scale_in_place, silu, softmax_backward_row, softmax_poly, swiglu_backward, swiglu_into,
};

// ------------------------------------------------------------------------------------------
// Embedding
// ------------------------------------------------------------------------------------------

/// `n` zeros: a buffer handed back by [`recycle`], zero-filled, or a fresh one. Written in
/// parallel when large: a big `vec![0.0; n]` is a serial memset on the calling thread while
/// the pool waits (activations and gradients are megabytes per layer).
pub fn zeros(n: usize) -> Vec<f32> {
    match take_recycled(n) {
        Some(mut v) => {
            v.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
            v
        }
        None => fresh_zeros(n),
    }
}

/// `n` zeros in a new allocation (in parallel when large).
fn fresh_zeros(n: usize) -> Vec<f32> {
    if n < 1 << 16 {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0f32, n));
    v
}

/// Recycled buffers of [`scratch`] and [`zeros`]: at most this many are kept.
const SCRATCH_KEEP: usize = 1024;
static SCRATCH: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// `n` values for a buffer whose every element is written before it is read (a GEMM output
/// with `beta = 0`, an element-wise result): a buffer handed back by [`recycle`], holding
/// stale values, or a new zeroed one when none fits. A step's activations and temporaries have the
/// same sizes from layer to layer and step to step, so once warm nothing is zero-filled (the
/// zero fill of every fresh buffer was 2% of a LoRA step). Never use it for a buffer that is
/// accumulated into.
pub fn scratch(n: usize) -> Vec<f32> {
    take_recycled(n).unwrap_or_else(|| fresh_zeros(n))
}

/// The smallest recycled buffer that holds `n` values and is at most twice that (memory),
/// resized to `n`; its values are stale.
fn take_recycled(n: usize) -> Option<Vec<f32>> {
    if n == 0 {
        return None;
    }
    let mut v = SCRATCH.lock().ok().and_then(|mut pool| {
        let (i, _) = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| (n..=2 * n).contains(&v.capacity()))
            .min_by_key(|(_, v)| v.capacity())?;
        Some(pool.swap_remove(i))
    })?;
    if v.len() >= n {
        v.truncate(n);
    } else {
        v.resize(n, 0.0);
    }
    Some(v)
}

/// Free every recycled buffer (before a full fine-tuning optimizer step, see
/// [`super::train`]).
pub fn release_scratch() {
    if let Ok(mut pool) = SCRATCH.lock() {
        pool.clear();
    }
}

/// Hand buffers that are no longer needed back to [`scratch`].
pub fn recycle<const N: usize>(bufs: [Vec<f32>; N]) {
    if let Ok(mut pool) = SCRATCH.lock() {
        for v in bufs {
            if v.capacity() > 0 && pool.len() < SCRATCH_KEEP {
                pool.push(v);
            }
        }
    }
}

/// A copy of `x` in a [`scratch`] buffer.
pub fn copy_of(x: &[f32]) -> Vec<f32> {
    let mut v = scratch(x.len());
    v.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(o, x)| o.copy_from_slice(x));
    v
}

/// Rows of `embd` for `tokens`, times `scale` (Gemma: `sqrt(d)`; LLaMA: 1): `[n, d]`.
pub fn embed(embd: &Weight, tokens: &[u32], vocab: usize, scale: f32) -> Result<Vec<f32>> {
    let d = embd.cols();
    let mut x = zeros(tokens.len() * d);
    for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
        if tok as usize >= vocab {
            return Err(Error::InvalidArgument(format!(
                "token id {tok} is outside the vocabulary of {vocab}"
            )));
        }
        embd.row_into(tok as usize, row);
        if scale != 1.0 {
            row.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(x)
}

/// Backward of [`embed`]: adds `scale * dx` into the rows' gradient when trainable.
pub fn embed_backward(embd: &mut Weight, tokens: &[u32], dx: &[f32], scale: f32) {
    let Weight::Train(p) = embd else {
        return;
    };
    let d = p.cols;
    for (row, &tok) in dx.chunks_exact(d).zip(tokens) {
        let t = tok as usize;
        p.g[t * d..(t + 1) * d]
            .iter_mut()
            .zip(row)
            .for_each(|(g, v)| *g += scale * v);
    }
}

/// `x += y`, elementwise.
pub fn add_into(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(a, b)| *a += b));
}

// ------------------------------------------------------------------------------------------
// RMSNorm
// ------------------------------------------------------------------------------------------

/// RMSNorm of each `d`-wide row (a token, or one head of a token for QK-norm): returns the
/// output and `rstd = 1/sqrt(mean(x^2)+eps)` per row.
pub fn rms_forward(x: &[f32], w: &[f32], eps: f32, d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut out = scratch(x.len());
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, xr)| rms_norm(xr, w, eps, o));
    let rstd = x
        .par_chunks(d)
        .map(|xr| 1.0 / (dot(xr, xr) / d as f32 + eps).sqrt())
        .collect();
    (out, rstd)
}

/// RMSNorm backward: adds `dL/dx` into `dx`, and `dL/dw` into the norm's gradient when
/// trainable. `dx_i = r w_i dy_i - r^3/d x_i sum_j(dy_j w_j x_j)`.
pub fn rms_backward(
    x: &[f32],
    norm: &mut Norm,
    rstd: &[f32],
    dy: &[f32],
    d: usize,
    dx: &mut [f32],
) {
    let w = norm.w();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d).zip(dy.par_chunks(d)))
        .zip(rstd.par_iter())
        .for_each(|((o, (xr, dyr)), &r)| rms_backward_row(xr, w, dyr, r, o));
    if let Norm::Train(p) = norm {
        // Parallel over columns, sequential over rows: deterministic sums.
        const COLS: usize = 64;
        p.g.par_chunks_mut(COLS).enumerate().for_each(|(c, g)| {
            let j0 = c * COLS;
            for ((xr, dyr), &r) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(rstd) {
                let (xr, dyr) = (&xr[j0..j0 + g.len()], &dyr[j0..j0 + g.len()]);
                for ((gj, &dj), &xj) in g.iter_mut().zip(dyr).zip(xr) {
                    *gj += dj * xj * r;
                }
            }
        });
    }
}

// ------------------------------------------------------------------------------------------
// RoPE
// ------------------------------------------------------------------------------------------

/// Each token's position within its own sequence.
pub fn positions(seqs: &[(usize, usize)], n: usize) -> Vec<usize> {
    let mut pos = vec![0usize; n];
    for &(start, len) in seqs {
        for (i, p) in pos[start..start + len].iter_mut().enumerate() {
            *p = i;
        }
    }
    pos
}

/// RoPE tables for positions `0..max_len`, in one layout: ggml's "normal" (adjacent pairs,
/// GGUF LLaMA) or "neox" (rotate-half, Gemma).
pub struct Rope {
    cos: Vec<f32>, // [max_len, rope_dim/2]
    sin: Vec<f32>,
    neg_sin: Vec<f32>,
    rope_dim: usize,
    neox: bool,
}

impl Rope {
    pub fn new(max_len: usize, rope_dim: usize, base: f32, neox: bool) -> Rope {
        let half = rope_dim / 2;
        let (mut cos, mut sin) = (vec![0f32; max_len * half], vec![0f32; max_len * half]);
        for p in 0..max_len {
            let s = p * half..(p + 1) * half;
            rope_angles(p, rope_dim, base, &mut cos[s.clone()], &mut sin[s]);
        }
        let neg_sin = sin.iter().map(|s| -s).collect();
        Rope {
            cos,
            sin,
            neg_sin,
            rope_dim,
            neox,
        }
    }

    /// Rotate the first `rope_dim` values of every `hd`-wide head of each `width`-wide row by
    /// its token's position. `inverse` rotates back: the backward (the rotation is
    /// orthogonal, so its transpose is the rotation by `-angle`).
    pub fn apply(&self, m: &mut [f32], width: usize, hd: usize, pos: &[usize], inverse: bool) {
        let half = self.rope_dim / 2;
        let sin = if inverse { &self.neg_sin } else { &self.sin };
        m.par_chunks_mut(width).enumerate().for_each(|(i, row)| {
            let t = pos[i] * half..(pos[i] + 1) * half;
            let (c, s) = (&self.cos[t.clone()], &sin[t]);
            for head in row.chunks_exact_mut(hd) {
                let h = &mut head[..self.rope_dim];
                if self.neox {
                    rope_neox(h, c, s);
                } else {
                    rope_normal(h, c, s);
                }
            }
        })
    }
}

// ------------------------------------------------------------------------------------------
// Attention
// ------------------------------------------------------------------------------------------

/// Keys a query at position `i` sees: `lo..=i` (the last `window` positions, or all).
fn first_key(i: usize, a: &AttnShape) -> usize {
    match a.window {
        Some(w) => (i + 1).saturating_sub(w),
        None => 0,
    }
}

/// Query rows per block of the causal products (`lo..hi`, in order): a block needs only
/// the keys `..hi`, so the products do about `(1 + 1/blocks) / 2` of the full `L x L` work.
fn causal_blocks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    const BQ: usize = 64;
    (0..len).step_by(BQ).map(move |i0| (i0, (i0 + BQ).min(len)))
}

/// `scale * Q K^T` for one (sequence, head), `[L, L]`.
fn scores(qh: &[f32], kh: &[f32], len: usize, a: &AttnShape) -> Vec<f32> {
    let (qd, kvd, hd) = (
        a.n_heads * a.head_dim,
        a.n_kv_heads * a.head_dim,
        a.head_dim,
    );
    let mut p = vec![0f32; len * len];
    let plan = gemm::attention_plan();
    gemm::sgemm_with(
        &plan,
        len,
        hd,
        len,
        a.scale,
        qh,
        (qd, 1),
        kh,
        (1, kvd),
        0.0,
        &mut p,
        (len, 1),
    );
    p
}

/// Causal GQA attention over packed sequences (`q [n, qd]`, `k`/`v [n, kvd]`, after RoPE).
/// Returns the probabilities per (sequence, head) (`[L, L]`, zero outside each row's window)
/// and the output `[n, qd]`.
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[(usize, usize)],
    a: AttnShape,
    n: usize,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let (hd, qd, kvd) = (
        a.head_dim,
        a.n_heads * a.head_dim,
        a.n_kv_heads * a.head_dim,
    );
    let group = a.n_heads / a.n_kv_heads;
    let plan = gemm::attention_plan();
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..a.n_heads).map(move |h| (s, h)))
        .collect();
    let res: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(s, h)| {
            let (start, len) = seqs[s];
            let g = h / group;
            let vh = &v[start * kvd + g * hd..];
            let (qh, kh) = (&q[start * qd + h * hd..], &k[start * kvd + g * hd..]);
            // Causal: a block of query rows needs only the keys up to its last row.
            let mut p = vec![0f32; len * len];
            for (i0, i1) in causal_blocks(len) {
                gemm::sgemm_with(
                    &plan,
                    i1 - i0,
                    hd,
                    i1,
                    a.scale,
                    &qh[i0 * qd..],
                    (qd, 1),
                    kh,
                    (1, kvd),
                    0.0,
                    &mut p[i0 * len..],
                    (len, 1),
                );
            }
            for (i, row) in p.chunks_exact_mut(len).enumerate() {
                let lo = first_key(i, &a);
                if let Some(cap) = a.softcap {
                    row[lo..=i]
                        .iter_mut()
                        .for_each(|z| *z = cap * (*z / cap).tanh());
                }
                softmax_poly(&mut row[lo..=i]);
                row[..lo].fill(0.0);
                row[i + 1..].fill(0.0);
            }
            let mut o = vec![0f32; len * hd]; // [L, hd]
            for (i0, i1) in causal_blocks(len) {
                gemm::sgemm_with(
                    &plan,
                    i1 - i0,
                    i1,
                    hd,
                    1.0,
                    &p[i0 * len..],
                    (len, 1),
                    vh,
                    (kvd, 1),
                    0.0,
                    &mut o[i0 * hd..],
                    (hd, 1),
                );
            }
            (p, o)
        })
        .collect();
    let mut out = zeros(n * qd);
    let mut probs = Vec::with_capacity(res.len());
    for (&(s, h), (p, o)) in tasks.iter().zip(res) {
        let start = seqs[s].0;
        for (i, row) in o.chunks_exact(hd).enumerate() {
            let at = (start + i) * qd + h * hd;
            out[at..at + hd].copy_from_slice(row);
        }
        probs.push(p);
    }
    (probs, out)
}

/// Backward of [`attention_forward`]: `(dq [n, qd], dk [n, kvd], dv [n, kvd])`, gradients
/// with respect to the post-RoPE `q` and `k`. One task per (sequence, kv head), so the
/// grouped heads' contributions to `dk`/`dv` add up without races. With a soft-cap the
/// scores are recomputed (not saved) for the cap's derivative.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[Vec<f32>],
    datt: &[f32],
    seqs: &[(usize, usize)],
    a: AttnShape,
    n: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, qd, kvd) = (
        a.head_dim,
        a.n_heads * a.head_dim,
        a.n_kv_heads * a.head_dim,
    );
    let group = a.n_heads / a.n_kv_heads;
    let plan = gemm::attention_plan();
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..a.n_kv_heads).map(move |g| (s, g)))
        .collect();
    type Grads = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);
    let res: Vec<Grads> = tasks
        .par_iter()
        .map(|&(s, g)| {
            let (start, len) = seqs[s];
            let kh = &k[start * kvd + g * hd..];
            let vh = &v[start * kvd + g * hd..];
            let mut dkh = vec![0f32; len * hd];
            let mut dvh = vec![0f32; len * hd];
            let mut dqs = Vec::with_capacity(group);
            let mut dp = vec![0f32; len * len];
            for h in g * group..(g + 1) * group {
                let p = &probs[s * a.n_heads + h]; // [L, L]
                let doh = &datt[start * qd + h * hd..]; // [L, hd] stride qd
                let qh = &q[start * qd + h * hd..];
                let raw = a.softcap.map(|_| scores(qh, kh, len, &a));
                let mut dqh = vec![0f32; len * hd];
                // Causal: a block of query rows touches only the keys up to its last row.
                for (i0, i1) in causal_blocks(len) {
                    let mb = i1 - i0;
                    let (pb, dob, qb) = (&p[i0 * len..], &doh[i0 * qd..], &qh[i0 * qd..]);
                    // dV[..i1] += P[i0..i1, ..i1]^T dO[i0..i1]
                    gemm::sgemm_with(
                        &plan,
                        i1,
                        mb,
                        hd,
                        1.0,
                        pb,
                        (1, len),
                        dob,
                        (qd, 1),
                        1.0,
                        &mut dvh,
                        (hd, 1),
                    );
                    // dP[i0..i1, ..i1] = dO V^T
                    gemm::sgemm_with(
                        &plan,
                        mb,
                        hd,
                        i1,
                        1.0,
                        dob,
                        (qd, 1),
                        vh,
                        (1, kvd),
                        0.0,
                        &mut dp[i0 * len..],
                        (len, 1),
                    );
                    // dS = P * (dP - rowsum(P * dP)) [* (1 - tanh^2) under a soft-cap] * scale
                    for i in i0..i1 {
                        let (dr, pr) = (&mut dp[i * len..(i + 1) * len], &p[i * len..]);
                        let lo = first_key(i, &a);
                        softmax_backward_row(&mut dr[lo..=i], &pr[lo..=i], a.scale);
                        if let (Some(cap), Some(raw)) = (a.softcap, &raw) {
                            for j in lo..=i {
                                let t = (raw[i * len + j] / cap).tanh();
                                dr[j] *= 1.0 - t * t;
                            }
                        }
                        dr[..lo].fill(0.0);
                        dr[i + 1..].fill(0.0);
                    }
                    // dQ[i0..i1] = dS K[..i1] ; dK[..i1] += dS^T Q[i0..i1]
                    gemm::sgemm_with(
                        &plan,
                        mb,
                        i1,
                        hd,
                        1.0,
                        &dp[i0 * len..],
                        (len, 1),
                        kh,
                        (kvd, 1),
                        0.0,
                        &mut dqh[i0 * hd..],
                        (hd, 1),
                    );
                    gemm::sgemm_with(
                        &plan,
                        i1,
                        mb,
                        hd,
                        1.0,
                        &dp[i0 * len..],
                        (1, len),
                        qb,
                        (qd, 1),
                        1.0,
                        &mut dkh,
                        (hd, 1),
                    );
                }
                dqs.push(dqh);
            }
            (dqs, dkh, dvh)
        })
        .collect();
    let mut dq = zeros(n * qd);
    let mut dk = zeros(n * kvd);
    let mut dv = zeros(n * kvd);
    for (&(s, g), (dqs, dkh, dvh)) in tasks.iter().zip(res) {
        let start = seqs[s].0;
        for i in 0..seqs[s].1 {
            let r = start + i;
            for (j, dqh) in dqs.iter().enumerate() {
                let h = g * group + j;
                dq[r * qd + h * hd..r * qd + (h + 1) * hd]
                    .copy_from_slice(&dqh[i * hd..(i + 1) * hd]);
            }
            dk[r * kvd + g * hd..r * kvd + (g + 1) * hd]
                .copy_from_slice(&dkh[i * hd..(i + 1) * hd]);
            dv[r * kvd + g * hd..r * kvd + (g + 1) * hd]
                .copy_from_slice(&dvh[i * hd..(i + 1) * hd]);
        }
    }
    (dq, dk, dv)
}

// ------------------------------------------------------------------------------------------
// Gated feed-forward activations
// ------------------------------------------------------------------------------------------

/// Values per parallel task of the activations' vectorized kernels.
const GLU_TASK: usize = 1 << 14;

/// The gate's activation: SwiGLU (LLaMA) or GeGLU with the tanh GELU (Gemma).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glu {
    Swi,
    Ge,
}

impl Glu {
    fn f(self, x: f32) -> f32 {
        match self {
            Glu::Swi => silu(x),
            Glu::Ge => gelu_tanh(x),
        }
    }

    /// The activation's derivative.
    fn df(self, x: f32) -> f32 {
        match self {
            Glu::Swi => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }
            Glu::Ge => {
                const C: f32 = 0.797_884_6; // sqrt(2/pi)
                let t = (C * (x + 0.044715 * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044715 * x * x)
            }
        }
    }

    /// `act(g) * up`.
    pub fn forward(self, g: &[f32], up: &[f32]) -> Vec<f32> {
        if self == Glu::Swi {
            let mut out = scratch(g.len());
            out.par_chunks_mut(GLU_TASK)
                .zip(g.par_chunks(GLU_TASK).zip(up.par_chunks(GLU_TASK)))
                .for_each(|(o, (g, u))| swiglu_into(g, u, o));
            return out;
        }
        g.par_iter().zip(up).map(|(g, u)| self.f(*g) * u).collect()
    }

    /// `(dg, dup)` from `dact`.
    pub fn backward(self, g: &[f32], up: &[f32], dact: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut dg = scratch(g.len());
        let mut dup = scratch(g.len());
        if self == Glu::Swi {
            dg.par_chunks_mut(GLU_TASK)
                .zip(dup.par_chunks_mut(GLU_TASK))
                .enumerate()
                .for_each(|(t, (dg, du))| {
                    let r = t * GLU_TASK..t * GLU_TASK + dg.len();
                    swiglu_backward(&g[r.clone()], &up[r.clone()], &dact[r], dg, du);
                });
            return (dg, dup);
        }
        dg.par_iter_mut()
            .zip(dup.par_iter_mut())
            .enumerate()
            .for_each(|(i, (dgi, dui))| {
                *dui = dact[i] * self.f(g[i]);
                *dgi = dact[i] * up[i] * self.df(g[i]);
            });
        (dg, dup)
    }
}

// ------------------------------------------------------------------------------------------
// Output head and cross-entropy
// ------------------------------------------------------------------------------------------

/// One target row's cross-entropy: `row` holds the logits on entry (soft-capped here when
/// `softcap` is set) and, with `backward`, `loss_scale * dloss/dlogits` on return. The
/// exponentials are computed once (vectorized, [`exp_shift_sum`]) and reused for the gradient
/// `softmax - onehot`.
fn row_loss(
    row: &mut [f32],
    label: usize,
    loss_scale: f32,
    softcap: Option<f32>,
    backward: bool,
) -> f64 {
    // Under a soft-cap, the cap's derivative `1 - tanh^2` per logit.
    let dcap: Option<Vec<f32>> = softcap.map(|cap| {
        row.iter_mut()
            .map(|z| {
                let t = (*z / cap).tanh();
                *z = cap * t;
                1.0 - t * t
            })
            .collect()
    });
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let z_label = row[label];
    let sum = exp_shift_sum(row, max);
    let loss = max as f64 + sum.ln() - z_label as f64;
    if backward {
        scale_in_place(row, (loss_scale as f64 / sum) as f32);
        row[label] -= loss_scale;
        if let Some(dc) = dcap {
            row.iter_mut().zip(&dc).for_each(|(g, c)| *g *= c);
        }
    }
    loss
}

/// Rows of a frozen head that [`head_loss`] dequantizes at a time (the slice size does not
/// matter for speed: `head_timing`).
pub const HEAD_VCHUNK: usize = 8192;

/// Cross-entropy of the head (`[V, d]`, optionally followed by the final logit soft-cap
/// `cap * tanh(z / cap)`) at target rows only: logits are never built for masked positions.
/// Returns the summed loss and, with `backward`, `dhf` (`[n, d]`, zero at non-target rows),
/// accumulating the head's gradient when it is trainable. A frozen head is dequantized `vch`
/// rows at a time ([`HEAD_VCHUNK`]).
pub fn head_loss(
    head: &mut Weight,
    hf: &[f32],
    targets: &[(usize, u32)],
    loss_scale: f32,
    softcap: Option<f32>,
    backward: bool,
    vch: usize,
) -> (f64, Vec<f32>) {
    let (vocab, d) = (head.rows(), head.cols());
    let n = hf.len() / d;
    let mut dhf = if backward { zeros(n * d) } else { Vec::new() };
    // A frozen (possibly quantized) head is dequantized a slice of the vocabulary at a
    // time, so it never exists whole in f32; a trainable head is used in place.
    let mut grad = match head {
        Weight::Train(p) => Some(std::mem::take(&mut p.g)),
        Weight::Frozen(_) => None,
    };
    let w: &Weight = head;
    // Targets per chunk: the `[CHUNK, V]` logits are the largest buffer of a step (201 MB at
    // V = 49152), and a frozen head is dequantized twice per chunk.
    const CHUNK: usize = 1024;
    let vchunks: Vec<(usize, usize)> = (0..vocab)
        .step_by(vch)
        .map(|v0| (v0, (v0 + vch).min(vocab)))
        .collect();
    let mut loss = 0f64;
    // One logits buffer for every chunk of targets; never read before written (beta = 0).
    let mut logits = scratch(targets.len().min(CHUNK) * vocab);
    for tc in targets.chunks(CHUNK) {
        let m = tc.len();
        let mut ht = scratch(m * d); // [m, d]
        for (row, &(i, _)) in ht.chunks_exact_mut(d).zip(tc) {
            row.copy_from_slice(&hf[i * d..(i + 1) * d]);
        }
        for &(v0, v1) in &vchunks {
            // [vc, d]
            w.with_rows_f32(v0, v1, |e| {
                gemm::sgemm(
                    m,
                    d,
                    v1 - v0,
                    1.0,
                    &ht,
                    (d, 1),
                    e,
                    (1, d),
                    0.0,
                    &mut logits[v0..],
                    (vocab, 1),
                )
            });
        }
        let losses: Vec<f64> = logits[..m * vocab]
            .par_chunks_mut(vocab)
            .zip(tc)
            .map(|(row, &(_, label))| row_loss(row, label as usize, loss_scale, softcap, backward))
            .collect();
        loss += losses.iter().sum::<f64>();
        if !backward {
            continue;
        }
        let mut dht = scratch(m * d); // [m, d] = dlogits . E (written by the first slice)
        for &(v0, v1) in &vchunks {
            let vc = v1 - v0;
            let beta = if v0 == 0 { 0.0 } else { 1.0 };
            w.with_rows_f32(v0, v1, |e| {
                gemm::sgemm(
                    m,
                    vc,
                    d,
                    1.0,
                    &logits[v0..],
                    (vocab, 1),
                    e,
                    (d, 1),
                    beta,
                    &mut dht,
                    (d, 1),
                )
            });
            if let Some(g) = grad.as_deref_mut() {
                // dE[v0..v1, d] += dlogits[:, v0..v1]^T ht
                gemm::sgemm(
                    vc,
                    m,
                    d,
                    1.0,
                    &logits[v0..],
                    (1, vocab),
                    &ht,
                    (d, 1),
                    1.0,
                    &mut g[v0 * d..],
                    (d, 1),
                );
            }
        }
        for (row, &(i, _)) in dht.chunks_exact(d).zip(tc) {
            dhf[i * d..(i + 1) * d].copy_from_slice(row);
        }
        recycle([ht, dht]);
    }
    recycle([logits]);
    if let (Some(g), Weight::Train(p)) = (grad, head) {
        p.g = g;
    }
    (loss, dhf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glu_derivatives_match_finite_differences() {
        for glu in [Glu::Swi, Glu::Ge] {
            for x in [-3.0f32, -0.7, 0.0, 0.4, 2.5] {
                let h = 1e-3;
                let num = (glu.f(x + h) - glu.f(x - h)) / (2.0 * h);
                assert!((num - glu.df(x)).abs() < 1e-3, "{glu:?} at {x}");
            }
        }
    }

    #[test]
    fn vectorized_swiglu_matches_the_scalar_formulas() {
        let n = GLU_TASK + 37;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.013).sin() * 9.0).collect();
        let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.007).cos()).collect();
        let dact: Vec<f32> = (0..n).map(|i| (i as f32 * 0.029).sin()).collect();
        let act = Glu::Swi.forward(&g, &up);
        let (dg, dup) = Glu::Swi.backward(&g, &up, &dact);
        for i in 0..n {
            let f = Glu::Swi.f(g[i]);
            assert!((act[i] - f * up[i]).abs() < 1e-5, "act at {i}");
            assert!((dup[i] - dact[i] * f).abs() < 1e-5, "dup at {i}");
            let want = dact[i] * up[i] * Glu::Swi.df(g[i]);
            assert!((dg[i] - want).abs() < 1e-5, "dg at {i}");
        }
    }

    /// Two packed sequences longer than one causal block, 2 query heads sharing 1 kv head.
    fn attn_case() -> (AttnShape, Vec<(usize, usize)>, [Vec<f32>; 4]) {
        let a = AttnShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            scale: 0.5,
            window: None,
            softcap: None,
        };
        let seqs = vec![(0, 150), (150, 70)];
        let n = 220;
        let f = |len: usize, w: f32| (0..len).map(|i| (i as f32 * w).sin()).collect();
        (
            a,
            seqs,
            [
                f(n * 8, 0.37),
                f(n * 4, 0.53),
                f(n * 4, 0.71),
                f(n * 8, 0.13),
            ],
        )
    }

    #[test]
    fn blocked_causal_attention_matches_naive_and_finite_differences() {
        let (a, seqs, [q, k, v, w]) = attn_case();
        let n = 220;
        let (_, out) = attention_forward(&q, &k, &v, &seqs, a, n);
        // Naive forward: each row's softmax over its own sequence's keys up to itself.
        for &(start, len) in &seqs {
            for i in 0..len {
                for h in 0..2 {
                    let qi = &q[(start + i) * 8 + h * 4..][..4];
                    let s: Vec<f32> = (0..=i)
                        .map(|j| 0.5 * dot(qi, &k[(start + j) * 4..][..4]))
                        .collect();
                    let m = s.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
                    let z: f32 = s.iter().map(|x| (x - m).exp()).sum();
                    for c in 0..4 {
                        let want: f32 = (0..=i)
                            .map(|j| (s[j] - m).exp() / z * v[(start + j) * 4 + c])
                            .sum();
                        let got = out[(start + i) * 8 + h * 4 + c];
                        assert!(
                            (got - want).abs() < 1e-5,
                            "row {i} head {h}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        // Backward of `sum(out * w)` against central differences.
        let (probs, _) = attention_forward(&q, &k, &v, &seqs, a, n);
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &probs, &w, &seqs, a, n);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let (_, o) = attention_forward(q, k, v, &seqs, a, n);
            o.iter().zip(&w).map(|(x, y)| *x as f64 * *y as f64).sum()
        };
        let h = 1e-2f32;
        for (which, idx) in [(0, 3), (0, 70 * 8 + 5), (0, 149 * 8 + 2), (1, 10 * 4 + 1)]
            .into_iter()
            .chain([
                (1, 100 * 4 + 3),
                (2, 64 * 4),
                (2, 200 * 4 + 2),
                (1, 219 * 4),
            ])
        {
            let mut t = [q.clone(), k.clone(), v.clone()];
            t[which][idx] += h;
            let up = loss(&t[0], &t[1], &t[2]);
            t[which][idx] -= 2.0 * h;
            let down = loss(&t[0], &t[1], &t[2]);
            let num = (up - down) / (2.0 * h as f64);
            let got = [&dq, &dk, &dv][which][idx] as f64;
            assert!(
                (num - got).abs() < 2e-3 * (1.0 + num.abs()),
                "{which}/{idx}: {got} vs {num}"
            );
        }
    }

    #[test]
    fn positions_restart_per_sequence() {
        assert_eq!(positions(&[(0, 3), (3, 2)], 5), vec![0, 1, 2, 0, 1]);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Median time of the output head's cross-entropy, forward and backward, over 1024
    /// targets with SmolLM2-135M's tied Q8_0 head (from the model cache), 2 threads, for
    /// several vocabulary slice sizes alternated in one process:
    /// `cargo test --release -p alpaca --lib train::layers::timing::head_timing -- --exact
    /// --ignored --nocapture`
    #[test]
    #[ignore]
    fn head_timing() {
        let crate::model::Model::Llama(m) = crate::assets::load_default_model() else {
            panic!("SmolLM2 is a LLaMA");
        };
        let mut head = Weight::Frozen(m.tok_embd.clone());
        let (vocab, d, n) = (head.rows(), head.cols(), 1024);
        let hf: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let targets: Vec<(usize, u32)> = (0..n).map(|i| (i, (i * 7919 % vocab) as u32)).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let sizes = [8192, 4096, 2048, 1024];
        let mut ts = vec![Vec::new(); sizes.len()];
        pool.install(|| {
            for _ in 0..8 {
                for (t, &vch) in ts.iter_mut().zip(&sizes) {
                    let t0 = std::time::Instant::now();
                    let _ = head_loss(&mut head, &hf, &targets, 1.0, None, true, vch);
                    t.push(t0.elapsed().as_secs_f64());
                }
            }
        });
        for (t, vch) in ts.iter_mut().zip(sizes) {
            t.sort_by(f64::total_cmp);
            println!("head slice {vch}: {:.1} ms (median of 8)", t[4] * 1e3);
        }
    }

    /// Median time of attention forward and backward at SmolLM2-135M's shape (9 heads, 3 kv
    /// heads, head dim 64) over 4 x 256 packed tokens, 2 threads:
    /// `cargo test --release -p alpaca --lib train::layers::timing::attention_timing -- --exact
    /// --ignored --nocapture`
    #[test]
    #[ignore]
    fn attention_timing() {
        let a = AttnShape::smollm2();
        let seqs: Vec<(usize, usize)> = (0..4).map(|s| (s * 256, 256)).collect();
        let n = 1024;
        let f =
            |len: usize, w: f32| -> Vec<f32> { (0..len).map(|i| (i as f32 * w).sin()).collect() };
        let (q, k, v, dout) = (
            f(n * 576, 0.37),
            f(n * 192, 0.53),
            f(n * 192, 0.71),
            f(n * 576, 0.13),
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let (mut tf, mut tb) = (Vec::new(), Vec::new());
        pool.install(|| {
            for _ in 0..30 {
                let t = std::time::Instant::now();
                let (probs, _) = attention_forward(&q, &k, &v, &seqs, a, n);
                tf.push(t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                let _ = attention_backward(&q, &k, &v, &probs, &dout, &seqs, a, n);
                tb.push(t.elapsed().as_secs_f64());
            }
        });
        tf.sort_by(f64::total_cmp);
        tb.sort_by(f64::total_cmp);
        println!(
            "attention forward {:.2} ms, backward {:.2} ms (median of 30)",
            tf[15] * 1e3,
            tb[15] * 1e3
        );
    }
}
