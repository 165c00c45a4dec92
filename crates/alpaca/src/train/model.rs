//! The LLaMA training graph, llm.c style: an explicit forward that saves what the backward
//! needs, and an explicit backward, over f32 GEMMs ([`super::gemm`]).
//!
//! Layers: token embedding, RMSNorm, linear (+ LoRA), RoPE (GGUF adjacent-pair layout),
//! causal grouped-query attention, SwiGLU, the (tied) output head and cross-entropy on target
//! positions only (logits are never built for masked positions).
//!
//! Weights are either trainable f32 [`Param`]s or frozen [`QMatrix`]es in their file type
//! (QLoRA: a frozen quantized weight is dequantized transiently for one product, its input
//! gradient is `dX = dY . W`, and it never gets a weight gradient).
//!
//! Shapes: `n` tokens of a micro-batch (sequences packed back to back, no padding), `d` model
//! width, `hd` head dim, `qd = nh*hd`, `kvd = nkv*hd`, `f` feed-forward width, `r` LoRA rank,
//! `V` vocabulary, `L` one sequence's length.

use std::borrow::Cow;

use rayon::prelude::*;

use super::batch::Batch;
use super::gemm;
use crate::error::{Error, Result};
use crate::model::linear::QMatrix;
use crate::model::llama::{Llama, LlamaConfig};
use crate::model::ops::{dot, rms_norm, rope_angles, rope_normal, silu, softmax};
use crate::model::quant::GgmlType;
use crate::rng::Rng;

// ------------------------------------------------------------------------------------------
// Parameters and weights
// ------------------------------------------------------------------------------------------

/// A trainable `rows x cols` f32 tensor with its gradient.
#[derive(Debug, Clone)]
pub struct Param {
    /// Stable name (PEFT / Hugging Face key), used by checkpoints and exports.
    pub name: String,
    pub w: Vec<f32>,
    pub g: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    /// Whether AdamW's weight decay applies (matrices yes, norm weights no).
    pub decay: bool,
}

impl Param {
    pub fn new(name: String, w: Vec<f32>, rows: usize, cols: usize, decay: bool) -> Param {
        let g = vec![0.0; w.len()];
        Param {
            name,
            w,
            g,
            rows,
            cols,
            decay,
        }
    }
}

/// A weight matrix: frozen in its file type, or trainable f32.
#[derive(Debug, Clone)]
pub enum Weight {
    Frozen(QMatrix),
    Train(Param),
}

impl Weight {
    pub fn rows(&self) -> usize {
        match self {
            Weight::Frozen(q) => q.rows,
            Weight::Train(p) => p.rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Weight::Frozen(q) => q.cols,
            Weight::Train(p) => p.cols,
        }
    }
    /// The values as f32: borrowed when already f32, else dequantized (transiently).
    pub fn f32(&self) -> Cow<'_, [f32]> {
        match self {
            Weight::Train(p) => Cow::Borrowed(&p.w),
            Weight::Frozen(q) => {
                if q.ty == GgmlType::F32 {
                    // SAFETY: any bit pattern is a valid f32; alignment is checked by align_to.
                    let (pre, mid, post) = unsafe { q.data.bytes().align_to::<f32>() };
                    if pre.is_empty() && post.is_empty() {
                        return Cow::Borrowed(mid);
                    }
                }
                let mut out = vec![0f32; q.rows * q.cols];
                out.par_chunks_mut(q.cols * 64)
                    .enumerate()
                    .for_each(|(c, o)| {
                        for (j, row) in o.chunks_exact_mut(q.cols).enumerate() {
                            q.dequantize_row_into(c * 64 + j, row);
                        }
                    });
                Cow::Owned(out)
            }
        }
    }
    /// Rows `r0..r1` as f32: borrowed when already f32, else dequantized (transiently).
    fn rows_f32(&self, r0: usize, r1: usize) -> Cow<'_, [f32]> {
        let cols = self.cols();
        if let Cow::Borrowed(all) = self.f32_if_plain() {
            return Cow::Borrowed(&all[r0 * cols..r1 * cols]);
        }
        let mut out = vec![0f32; (r1 - r0) * cols];
        out.par_chunks_mut(cols * 64)
            .enumerate()
            .for_each(|(c, o)| {
                for (j, row) in o.chunks_exact_mut(cols).enumerate() {
                    self.row_into(r0 + c * 64 + j, row);
                }
            });
        Cow::Owned(out)
    }
    /// The values when they are f32 already (no copy); empty otherwise.
    fn f32_if_plain(&self) -> Cow<'_, [f32]> {
        match self {
            Weight::Train(p) => Cow::Borrowed(&p.w),
            Weight::Frozen(q) if q.ty == GgmlType::F32 => {
                // SAFETY: any bit pattern is a valid f32; alignment is checked by align_to.
                let (pre, mid, post) = unsafe { q.data.bytes().align_to::<f32>() };
                if pre.is_empty() && post.is_empty() {
                    Cow::Borrowed(mid)
                } else {
                    Cow::Owned(Vec::new())
                }
            }
            Weight::Frozen(_) => Cow::Owned(Vec::new()),
        }
    }
    /// Copy row `r` into `out` (embedding lookup).
    fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::Frozen(q) => q.dequantize_row_into(r, out),
            Weight::Train(p) => out.copy_from_slice(&p.w[r * p.cols..(r + 1) * p.cols]),
        }
    }
}

/// A LoRA adapter (Hu et al. 2021, arXiv:2106.09685): `y += scale * (drop(x) A^T) B^T`.
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Param, // [r, in]
    pub b: Param, // [out, r]
    /// `alpha / r`.
    pub scale: f32,
}

/// A linear layer of the training graph: `y = x W^T` (+ LoRA).
#[derive(Debug, Clone)]
pub struct TLinear {
    pub w: Weight, // [out, in]
    pub lora: Option<Lora>,
}

/// Dropout multipliers (0 or `1/(1-p)`) for `n` values, regenerated from `seed` in backward.
fn dropout_factors(n: usize, p: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let keep = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.next_f32() < p { 0.0 } else { keep })
        .collect()
}

impl TLinear {
    fn dims(&self) -> (usize, usize) {
        (self.w.rows(), self.w.cols())
    }

    /// `y[n, out] = x[n, in] W^T (+ scale * (drop(x) A^T) B^T)`. Returns `u = drop(x) A^T`
    /// (`[n, r]`, empty without LoRA), saved for backward.
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32], p: f32, seed: u64) -> Vec<f32> {
        let (rows, cols) = self.dims();
        gemm::nt(x, &self.w.f32(), y, n, cols, rows, 1.0, false);
        let Some(l) = &self.lora else {
            return Vec::new();
        };
        let r = l.a.rows;
        let xd: Cow<[f32]> = if p > 0.0 {
            let f = dropout_factors(n * cols, p, seed);
            Cow::Owned(x.iter().zip(&f).map(|(a, b)| a * b).collect())
        } else {
            Cow::Borrowed(x)
        };
        let mut u = vec![0f32; n * r];
        gemm::nt(&xd, &l.a.w, &mut u, n, cols, r, 1.0, false); // [n, r]
        gemm::nt(&u, &l.b.w, y, n, r, rows, l.scale, true); // [n, out]
        u
    }

    /// Accumulate weight gradients and write (`acc` false) or add `dx[n, in] = dy W (+ LoRA)`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        x: &[f32],
        n: usize,
        dy: &[f32],
        u: &[f32],
        dx: &mut [f32],
        acc: bool,
        p: f32,
        seed: u64,
    ) {
        let (rows, cols) = self.dims();
        if let Weight::Train(w) = &mut self.w {
            gemm::tn(dy, x, &mut w.g, n, rows, cols, 1.0, true); // dW[out, in] += dy^T x
        }
        gemm::nn(dy, &self.w.f32(), dx, n, rows, cols, 1.0, acc); // dx[n, in] (+)= dy W
        let Some(l) = &mut self.lora else {
            return;
        };
        let r = l.a.rows;
        let factors = (p > 0.0).then(|| dropout_factors(n * cols, p, seed));
        let xd: Cow<[f32]> = match &factors {
            Some(f) => Cow::Owned(x.iter().zip(f).map(|(a, b)| a * b).collect()),
            None => Cow::Borrowed(x),
        };
        gemm::tn(dy, u, &mut l.b.g, n, rows, r, l.scale, true); // dB[out, r] += s dy^T u
        let mut du = vec![0f32; n * r];
        gemm::nn(dy, &l.b.w, &mut du, n, rows, r, l.scale, false); // du[n, r] = s dy B
        gemm::tn(&du, &xd, &mut l.a.g, n, r, cols, 1.0, true); // dA[r, in] += du^T xd
        let mut dxd = vec![0f32; n * cols];
        gemm::nn(&du, &l.a.w, &mut dxd, n, r, cols, 1.0, false); // [n, in]
        match &factors {
            Some(f) => dx
                .iter_mut()
                .zip(dxd.iter().zip(f))
                .for_each(|(o, (g, m))| *o += g * m),
            None => dx.iter_mut().zip(&dxd).for_each(|(o, g)| *o += g),
        }
    }
}

/// An RMSNorm weight: frozen or trainable.
#[derive(Debug, Clone)]
pub enum Norm {
    Frozen(Vec<f32>),
    Train(Param),
}

impl Norm {
    fn w(&self) -> &[f32] {
        match self {
            Norm::Frozen(w) => w,
            Norm::Train(p) => &p.w,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Model
// ------------------------------------------------------------------------------------------

/// Module names of a block's linears, in [`TBlock::lin`] order, and their HF parents.
pub const LINEAR_NAMES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

/// `self_attn` or `mlp`: the Hugging Face parent module of linear `i`.
pub fn linear_parent(i: usize) -> &'static str {
    if i < 4 {
        "self_attn"
    } else {
        "mlp"
    }
}

/// One transformer block of the training graph.
#[derive(Debug, Clone)]
pub struct TBlock {
    pub attn_norm: Norm, // [d]
    pub ffn_norm: Norm,  // [d]
    /// q [qd,d], k [kvd,d], v [kvd,d], o [d,qd], gate [f,d], up [f,d], down [d,f].
    pub lin: [TLinear; 7],
}

/// What is trained.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// Every weight, dequantized to f32.
    Full,
    /// LoRA adapters on the chosen linears; the base stays frozen in its file type.
    Lora {
        r: usize,
        alpha: f32,
        dropout: f32,
        /// Which of [`LINEAR_NAMES`] get an adapter.
        targets: [bool; 7],
    },
}

/// The LLaMA training graph and its weights.
#[derive(Debug, Clone)]
pub struct TrainModel {
    pub cfg: LlamaConfig,
    pub embd: Weight, // [V, d]
    pub blocks: Vec<TBlock>,
    pub out_norm: Norm, // [d]
    /// Untied output head [V, d]; `None` when tied to `embd`.
    pub head: Option<Weight>,
    /// LoRA dropout probability (0 for full fine-tuning).
    pub dropout: f32,
}

/// Activations of one block saved by the forward for the backward.
struct LayerActs {
    x: Vec<f32>,          // [n, d] block input (residual)
    rstd1: Vec<f32>,      // [n]
    q: Vec<f32>,          // [n, qd] after RoPE
    k: Vec<f32>,          // [n, kvd] after RoPE
    v: Vec<f32>,          // [n, kvd]
    probs: Vec<Vec<f32>>, // per (sequence, head): [L, L]
    att: Vec<f32>,        // [n, qd]
    x2: Vec<f32>,         // [n, d] residual after attention
    rstd2: Vec<f32>,      // [n]
    g: Vec<f32>,          // [n, f] gate pre-activation
    up: Vec<f32>,         // [n, f]
    u: [Vec<f32>; 7],     // LoRA intermediates [n, r]
}

/// Loss of one micro-batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossOut {
    /// Sum of token losses (nats).
    pub loss_sum: f64,
    pub n_targets: usize,
}

impl TrainModel {
    /// Build the training graph over a loaded LLaMA. `seed` initializes LoRA `A`.
    pub fn from_llama(m: &Llama, method: &Method, seed: u64) -> Result<TrainModel> {
        let cfg = m.cfg.clone();
        let full = *method == Method::Full;
        let train_w = |name: String, q: &QMatrix| {
            Weight::Train(Param::new(name, q.to_f32(), q.rows, q.cols, true))
        };
        let norm = |name: String, w: &[f32]| {
            if full {
                Norm::Train(Param::new(name, w.to_vec(), 1, w.len(), false))
            } else {
                Norm::Frozen(w.to_vec())
            }
        };
        let mut rng = Rng::new(seed);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for (i, b) in m.blocks.iter().enumerate() {
            let ws = [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down];
            let lin: Vec<TLinear> = ws
                .iter()
                .enumerate()
                .map(|(j, l)| {
                    let q = &l.weight;
                    let key = format!("layers.{i}.{}.{}", linear_parent(j), LINEAR_NAMES[j]);
                    match method {
                        Method::Full => TLinear {
                            w: train_w(format!("model.{key}.weight"), q),
                            lora: None,
                        },
                        Method::Lora {
                            r, alpha, targets, ..
                        } => {
                            let lora = targets[j].then(|| {
                                // PEFT init: A ~ kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(in)),
                                // B = 0, so training starts at the base model.
                                let bound = 1.0 / (q.cols as f32).sqrt();
                                let a: Vec<f32> = (0..r * q.cols)
                                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                                    .collect();
                                let p = format!("base_model.model.model.{key}");
                                Lora {
                                    a: Param::new(
                                        format!("{p}.lora_A.weight"),
                                        a,
                                        *r,
                                        q.cols,
                                        true,
                                    ),
                                    b: Param::new(
                                        format!("{p}.lora_B.weight"),
                                        vec![0.0; q.rows * r],
                                        q.rows,
                                        *r,
                                        true,
                                    ),
                                    scale: alpha / *r as f32,
                                }
                            });
                            TLinear {
                                w: Weight::Frozen(q.clone()),
                                lora,
                            }
                        }
                    }
                })
                .collect();
            let lin: [TLinear; 7] = lin
                .try_into()
                .map_err(|_| Error::Internal("a block has 7 linears".into()))?;
            blocks.push(TBlock {
                attn_norm: norm(
                    format!("model.layers.{i}.input_layernorm.weight"),
                    &b.attn_norm,
                ),
                ffn_norm: norm(
                    format!("model.layers.{i}.post_attention_layernorm.weight"),
                    &b.ffn_norm,
                ),
                lin,
            });
        }
        let embd = if full {
            train_w("model.embed_tokens.weight".into(), &m.tok_embd)
        } else {
            Weight::Frozen(m.tok_embd.clone())
        };
        let head = (!m.tied_output).then(|| {
            if full {
                train_w("lm_head.weight".into(), &m.output.weight)
            } else {
                Weight::Frozen(m.output.weight.clone())
            }
        });
        Ok(TrainModel {
            cfg,
            embd,
            blocks,
            out_norm: norm("model.norm.weight".into(), &m.output_norm),
            head,
            dropout: match method {
                Method::Full => 0.0,
                Method::Lora { dropout, .. } => *dropout,
            },
        })
    }

    /// Every trainable tensor, in a stable order (optimizer state and checkpoints follow it).
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = Vec::new();
        if let Weight::Train(p) = &mut self.embd {
            v.push(p);
        }
        for b in &mut self.blocks {
            if let Norm::Train(p) = &mut b.attn_norm {
                v.push(p);
            }
            if let Norm::Train(p) = &mut b.ffn_norm {
                v.push(p);
            }
            for l in &mut b.lin {
                if let Weight::Train(p) = &mut l.w {
                    v.push(p);
                }
                if let Some(lo) = &mut l.lora {
                    v.push(&mut lo.a);
                    v.push(&mut lo.b);
                }
            }
        }
        if let Norm::Train(p) = &mut self.out_norm {
            v.push(p);
        }
        if let Some(Weight::Train(p)) = &mut self.head {
            v.push(p);
        }
        v
    }

    /// Set every gradient to zero.
    pub fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.g.iter_mut().for_each(|g| *g = 0.0);
        }
    }

    /// Forward one micro-batch; with `backward`, accumulate gradients of
    /// `loss_scale * sum(token losses)`. `seed` drives LoRA dropout (`None`: no dropout).
    pub fn forward_backward(
        &mut self,
        b: &Batch,
        loss_scale: f32,
        seed: Option<u64>,
        backward: bool,
    ) -> Result<LossOut> {
        let c = self.cfg.clone();
        let n = b.tokens.len();
        let (d, hd, f) = (c.dim, c.head_dim, c.ffn_dim);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        if n == 0 {
            return Ok(LossOut::default());
        }
        let p_drop = if seed.is_some() { self.dropout } else { 0.0 };
        let seed = seed.unwrap_or(0);
        let lseed = |l: usize, j: usize| {
            Rng::new(seed ^ ((l * 7 + j + 1) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
        };

        // x: [n, d] token embeddings
        let mut x = vec![0f32; n * d];
        for (row, &tok) in x.chunks_exact_mut(d).zip(&b.tokens) {
            if tok as usize >= c.vocab_size {
                return Err(Error::InvalidArgument(format!(
                    "token id {tok} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            self.embd.row_into(tok as usize, row);
        }
        // RoPE tables by position within the sequence: [maxL, rope_dim/2].
        let half = c.rope_dim / 2;
        let max_len = b.seqs.iter().map(|s| s.1).max().unwrap_or(0);
        let (mut cos, mut sin) = (vec![0f32; max_len * half], vec![0f32; max_len * half]);
        for p in 0..max_len {
            let s = p * half..(p + 1) * half;
            rope_angles(p, c.rope_dim, c.rope_base, &mut cos[s.clone()], &mut sin[s]);
        }
        let neg_sin: Vec<f32> = sin.iter().map(|s| -s).collect();
        let mut pos = vec![0usize; n];
        for &(start, len) in &b.seqs {
            for i in 0..len {
                pos[start + i] = i;
            }
        }
        let rope = |m: &mut [f32], width: usize, sin: &[f32]| {
            m.par_chunks_mut(width).enumerate().for_each(|(i, row)| {
                let t = pos[i] * half..(pos[i] + 1) * half;
                for head in row.chunks_exact_mut(hd) {
                    rope_normal(&mut head[..c.rope_dim], &cos[t.clone()], &sin[t.clone()]);
                }
            })
        };
        let attn = AttnCfg {
            nh: c.n_heads,
            nkv: c.n_kv_heads,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };

        // ---------------------------------------------------------------- forward
        let mut acts: Vec<LayerActs> = Vec::with_capacity(c.n_layers);
        for (l, blk) in self.blocks.iter().enumerate() {
            let (h1, rstd1) = rms_forward(&x, blk.attn_norm.w(), c.rms_eps, d);
            let mut u: [Vec<f32>; 7] = Default::default();
            let mut q = vec![0f32; n * qd];
            let mut k = vec![0f32; n * kvd];
            let mut v = vec![0f32; n * kvd];
            u[Q] = blk.lin[Q].forward(&h1, n, &mut q, p_drop, lseed(l, Q));
            u[K] = blk.lin[K].forward(&h1, n, &mut k, p_drop, lseed(l, K));
            u[V] = blk.lin[V].forward(&h1, n, &mut v, p_drop, lseed(l, V));
            rope(&mut q, qd, &sin);
            rope(&mut k, kvd, &sin);
            let (probs, att) = attention_forward(&q, &k, &v, &b.seqs, attn, n);
            let mut proj = vec![0f32; n * d];
            u[O] = blk.lin[O].forward(&att, n, &mut proj, p_drop, lseed(l, O));
            let mut x2 = x.clone();
            x2.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);

            let (h2, rstd2) = rms_forward(&x2, blk.ffn_norm.w(), c.rms_eps, d);
            let mut g = vec![0f32; n * f];
            let mut up = vec![0f32; n * f];
            u[GATE] = blk.lin[GATE].forward(&h2, n, &mut g, p_drop, lseed(l, GATE));
            u[UP] = blk.lin[UP].forward(&h2, n, &mut up, p_drop, lseed(l, UP));
            let act: Vec<f32> = g.par_iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
            u[DOWN] = blk.lin[DOWN].forward(&act, n, &mut proj, p_drop, lseed(l, DOWN));
            let mut x3 = x2.clone();
            x3.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);
            let x_in = std::mem::replace(&mut x, x3);
            acts.push(LayerActs {
                x: x_in,
                rstd1,
                q,
                k,
                v,
                probs,
                att,
                x2,
                rstd2,
                g,
                up,
                u,
            });
        }
        let (hf, rstdf) = rms_forward(&x, self.out_norm.w(), c.rms_eps, d);
        let (loss_sum, dhf) = self.head_loss(&hf, &b.targets, loss_scale, backward);
        let out = LossOut {
            loss_sum,
            n_targets: b.targets.len(),
        };
        if !backward {
            return Ok(out);
        }

        // ---------------------------------------------------------------- backward
        // dx: [n, d] gradient of the residual stream.
        let mut dx = vec![0f32; n * d];
        rms_backward(&x, &mut self.out_norm, &rstdf, &dhf, d, &mut dx);
        for (l, a) in acts.iter().enumerate().rev() {
            let blk = &mut self.blocks[l];
            // --- feed-forward
            // Recomputed rather than saved: the norm outputs and silu(g) * up.
            let (h1, _) = rms_forward(&a.x, blk.attn_norm.w(), c.rms_eps, d);
            let (h2, _) = rms_forward(&a.x2, blk.ffn_norm.w(), c.rms_eps, d);
            let act: Vec<f32> =
                a.g.par_iter()
                    .zip(&a.up)
                    .map(|(g, u)| silu(*g) * u)
                    .collect();
            let mut dact = vec![0f32; n * f];
            let lin = &mut blk.lin;
            lin[DOWN].backward(
                &act,
                n,
                &dx,
                &a.u[DOWN],
                &mut dact,
                false,
                p_drop,
                lseed(l, DOWN),
            );
            let mut dg = vec![0f32; n * f];
            let mut dup = vec![0f32; n * f];
            dg.par_iter_mut()
                .zip(dup.par_iter_mut())
                .enumerate()
                .for_each(|(i, (dgi, dui))| {
                    let (gv, da) = (a.g[i], dact[i]);
                    let sg = 1.0 / (1.0 + (-gv).exp());
                    *dui = da * gv * sg;
                    *dgi = da * a.up[i] * sg * (1.0 + gv * (1.0 - sg));
                });
            let mut dh = vec![0f32; n * d];
            lin[GATE].backward(
                &h2,
                n,
                &dg,
                &a.u[GATE],
                &mut dh,
                false,
                p_drop,
                lseed(l, GATE),
            );
            lin[UP].backward(&h2, n, &dup, &a.u[UP], &mut dh, true, p_drop, lseed(l, UP));
            rms_backward(&a.x2, &mut blk.ffn_norm, &a.rstd2, &dh, d, &mut dx);

            // --- attention
            let mut datt = vec![0f32; n * qd];
            lin[O].backward(
                &a.att,
                n,
                &dx,
                &a.u[O],
                &mut datt,
                false,
                p_drop,
                lseed(l, O),
            );
            let (mut dq, mut dk, dv) =
                attention_backward(&a.q, &a.k, &a.v, &a.probs, &datt, &b.seqs, attn, n);
            rope(&mut dq, qd, &neg_sin);
            rope(&mut dk, kvd, &neg_sin);
            lin[Q].backward(&h1, n, &dq, &a.u[Q], &mut dh, false, p_drop, lseed(l, Q));
            lin[K].backward(&h1, n, &dk, &a.u[K], &mut dh, true, p_drop, lseed(l, K));
            lin[V].backward(&h1, n, &dv, &a.u[V], &mut dh, true, p_drop, lseed(l, V));
            rms_backward(&a.x, &mut blk.attn_norm, &a.rstd1, &dh, d, &mut dx);
        }
        if let Weight::Train(p) = &mut self.embd {
            for (row, &tok) in dx.chunks_exact(d).zip(&b.tokens) {
                let t = tok as usize;
                p.g[t * d..(t + 1) * d]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(g, v)| *g += v);
            }
        }
        Ok(out)
    }

    /// Cross-entropy of the head at target rows only. Returns the summed loss and, with
    /// `backward`, `dhf` ([n, d], zero at non-target rows), accumulating the head's gradient.
    fn head_loss(
        &mut self,
        hf: &[f32],
        targets: &[(usize, u32)],
        loss_scale: f32,
        backward: bool,
    ) -> (f64, Vec<f32>) {
        let (d, vocab) = (self.cfg.dim, self.cfg.vocab_size);
        let n = hf.len() / d;
        let mut dhf = if backward {
            vec![0f32; n * d]
        } else {
            Vec::new()
        };
        let head = match &mut self.head {
            Some(h) => h,
            None => &mut self.embd,
        };
        // A frozen (possibly quantized) head is dequantized a slice of the vocabulary at a
        // time, so it never exists whole in f32; a trainable head is used in place.
        let mut grad = match head {
            Weight::Train(p) => Some(std::mem::take(&mut p.g)),
            Weight::Frozen(_) => None,
        };
        let head: &Weight = head;
        const CHUNK: usize = 256;
        const VCH: usize = 8192;
        let vchunks: Vec<(usize, usize)> = (0..vocab)
            .step_by(VCH)
            .map(|v0| (v0, (v0 + VCH).min(vocab)))
            .collect();
        let mut loss = 0f64;
        for tc in targets.chunks(CHUNK) {
            let m = tc.len();
            let mut ht = vec![0f32; m * d]; // [m, d]
            for (row, &(i, _)) in ht.chunks_exact_mut(d).zip(tc) {
                row.copy_from_slice(&hf[i * d..(i + 1) * d]);
            }
            let mut logits = vec![0f32; m * vocab]; // [m, V]
            for &(v0, v1) in &vchunks {
                let e = head.rows_f32(v0, v1); // [vc, d]
                gemm::sgemm(
                    m,
                    d,
                    v1 - v0,
                    1.0,
                    &ht,
                    (d, 1),
                    &e,
                    (1, d),
                    0.0,
                    &mut logits[v0..],
                    (vocab, 1),
                );
            }
            let losses: Vec<f64> = logits
                .par_chunks_mut(vocab)
                .zip(tc)
                .map(|(row, &(_, label))| {
                    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let sum: f64 = row.iter().map(|&z| ((z - max) as f64).exp()).sum();
                    let lse = max as f64 + sum.ln();
                    let l = lse - row[label as usize] as f64;
                    if backward {
                        for z in row.iter_mut() {
                            *z = (((*z as f64) - lse).exp() as f32) * loss_scale;
                        }
                        row[label as usize] -= loss_scale;
                    }
                    l
                })
                .collect();
            loss += losses.iter().sum::<f64>();
            if !backward {
                continue;
            }
            let mut dht = vec![0f32; m * d]; // [m, d] = dlogits . E
            for &(v0, v1) in &vchunks {
                let vc = v1 - v0;
                let e = head.rows_f32(v0, v1);
                gemm::sgemm(
                    m,
                    vc,
                    d,
                    1.0,
                    &logits[v0..],
                    (vocab, 1),
                    &e,
                    (d, 1),
                    1.0,
                    &mut dht,
                    (d, 1),
                );
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
        }
        if let Some(g) = grad {
            let head = match &mut self.head {
                Some(h) => h,
                None => &mut self.embd,
            };
            if let Weight::Train(p) = head {
                p.g = g;
            }
        }
        (loss, dhf)
    }
}

// ------------------------------------------------------------------------------------------
// Primitives' forward (through ops.rs) and backward
// ------------------------------------------------------------------------------------------

/// RMSNorm of each row: returns the output `[n, d]` and `rstd = 1/sqrt(mean(x^2)+eps)` `[n]`.
fn rms_forward(x: &[f32], w: &[f32], eps: f32, d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; x.len()];
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
fn rms_backward(x: &[f32], norm: &mut Norm, rstd: &[f32], dy: &[f32], d: usize, dx: &mut [f32]) {
    let w = norm.w();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d).zip(dy.par_chunks(d)))
        .zip(rstd.par_iter())
        .for_each(|((o, (xr, dyr)), &r)| {
            let s: f32 = (0..d).map(|j| dyr[j] * w[j] * xr[j]).sum();
            let c = r * r * r * s / d as f32;
            for j in 0..d {
                o[j] += r * w[j] * dyr[j] - c * xr[j];
            }
        });
    if let Norm::Train(p) = norm {
        // Sequential over rows: deterministic sums.
        for ((xr, dyr), &r) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(rstd) {
            for j in 0..d {
                p.g[j] += dyr[j] * xr[j] * r;
            }
        }
    }
}

/// Attention geometry.
#[derive(Debug, Clone, Copy)]
struct AttnCfg {
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
}

/// Causal GQA attention over packed sequences. Returns the probabilities per
/// (sequence, head) (`[L, L]`, zero above the diagonal) and the output `[n, qd]`.
fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[(usize, usize)],
    a: AttnCfg,
    n: usize,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let (hd, qd, kvd) = (a.hd, a.nh * a.hd, a.nkv * a.hd);
    let group = a.nh / a.nkv;
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..a.nh).map(move |h| (s, h)))
        .collect();
    let res: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(s, h)| {
            let (start, len) = seqs[s];
            let g = h / group;
            let qh = &q[start * qd + h * hd..];
            let kh = &k[start * kvd + g * hd..];
            let vh = &v[start * kvd + g * hd..];
            let mut p = vec![0f32; len * len]; // [L, L] scores -> probabilities
            gemm::sgemm(
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
            for (i, row) in p.chunks_exact_mut(len).enumerate() {
                softmax(&mut row[..=i]);
                row[i + 1..].fill(0.0);
            }
            let mut o = vec![0f32; len * hd]; // [L, hd]
            gemm::sgemm(
                len,
                len,
                hd,
                1.0,
                &p,
                (len, 1),
                vh,
                (kvd, 1),
                0.0,
                &mut o,
                (hd, 1),
            );
            (p, o)
        })
        .collect();
    let mut out = vec![0f32; n * qd];
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
/// grouped heads' contributions to `dk`/`dv` add up without races.
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[Vec<f32>],
    datt: &[f32],
    seqs: &[(usize, usize)],
    a: AttnCfg,
    n: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, qd, kvd) = (a.hd, a.nh * a.hd, a.nkv * a.hd);
    let group = a.nh / a.nkv;
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..a.nkv).map(move |g| (s, g)))
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
                let p = &probs[s * a.nh + h]; // [L, L]
                let doh = &datt[start * qd + h * hd..]; // [L, hd] stride qd
                let qh = &q[start * qd + h * hd..];
                // dV += P^T dO
                gemm::sgemm(
                    len,
                    len,
                    hd,
                    1.0,
                    p,
                    (1, len),
                    doh,
                    (qd, 1),
                    1.0,
                    &mut dvh,
                    (hd, 1),
                );
                // dP = dO V^T  [L, L]
                gemm::sgemm(
                    len,
                    hd,
                    len,
                    1.0,
                    doh,
                    (qd, 1),
                    vh,
                    (1, kvd),
                    0.0,
                    &mut dp,
                    (len, 1),
                );
                // dS = P * (dP - rowsum(P * dP)) * scale
                for (i, (dr, pr)) in dp
                    .chunks_exact_mut(len)
                    .zip(p.chunks_exact(len))
                    .enumerate()
                {
                    let s: f32 = (0..=i).map(|j| dr[j] * pr[j]).sum();
                    for j in 0..=i {
                        dr[j] = pr[j] * (dr[j] - s) * a.scale;
                    }
                    dr[i + 1..].fill(0.0);
                }
                // dQ = dS K ; dK += dS^T Q
                let mut dqh = vec![0f32; len * hd];
                gemm::sgemm(
                    len,
                    len,
                    hd,
                    1.0,
                    &dp,
                    (len, 1),
                    kh,
                    (kvd, 1),
                    0.0,
                    &mut dqh,
                    (hd, 1),
                );
                gemm::sgemm(
                    len,
                    len,
                    hd,
                    1.0,
                    &dp,
                    (1, len),
                    qh,
                    (qd, 1),
                    1.0,
                    &mut dkh,
                    (hd, 1),
                );
                dqs.push(dqh);
            }
            (dqs, dkh, dvh)
        })
        .collect();
    let mut dq = vec![0f32; n * qd];
    let mut dk = vec![0f32; n * kvd];
    let mut dv = vec![0f32; n * kvd];
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
