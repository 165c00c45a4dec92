//! The training graph's shared parts, llm.c style: an explicit forward that saves what the
//! backward needs, and an explicit backward, over f32 GEMMs ([`super::gemm`]).
//!
//! This file holds what every architecture shares: trainable [`Param`]s, [`Weight`]s
//! (frozen in their file type, or trainable f32), the linear layer with LoRA ([`TLinear`]),
//! norms, the [`Method`], the builder that turns a loaded model's tensors into training
//! tensors, and [`TrainModel`], one variant per architecture file: [`super::llama`] and
//! [`super::gemma3`]. The layers' math (forward and backward) is in [`super::layers`].
//!
//! QLoRA: a frozen quantized weight is dequantized transiently for one product, its input
//! gradient is `dX = dY . W`, and it never gets a weight gradient.
//!
//! Shapes: `n` tokens of a micro-batch (sequences packed back to back, no padding), `d` model
//! width, `r` LoRA rank.

use std::borrow::Cow;
use std::cell::RefCell;

use rayon::prelude::*;

use super::batch::Batch;
use super::gemm;
use super::gemma3::TGemma3;
use super::layers::{recycle, scratch};
use super::llama::TLlama;
use crate::error::{Error, Result};
use crate::model::gemma3::Gemma3;
use crate::model::kernels;
use crate::model::linear::QMatrix;
use crate::model::llama::Llama;
use crate::model::quant::GgmlType;
use crate::model::Model;
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
    /// The values as f32: borrowed when already f32, else dequantized into a new buffer.
    pub fn f32(&self) -> Cow<'_, [f32]> {
        match self.f32_if_plain() {
            Cow::Borrowed(w) => Cow::Borrowed(w),
            Cow::Owned(_) => {
                let mut out = vec![0f32; self.rows() * self.cols()];
                self.dequant_rows_into(0, &mut out);
                Cow::Owned(out)
            }
        }
    }
    /// Run `f` on the values as f32: see [`Self::with_rows_f32`].
    pub(super) fn with_f32<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        self.with_rows_f32(0, self.rows(), f)
    }
    /// Run `f` on rows `r0..r1` as f32: borrowed when already f32, else dequantized into this
    /// thread's scratch buffer, which is kept for the next product (no allocation, page
    /// faults or zero-fill per product once it has grown).
    pub(super) fn with_rows_f32<R>(&self, r0: usize, r1: usize, f: impl FnOnce(&[f32]) -> R) -> R {
        let cols = self.cols();
        if let Cow::Borrowed(all) = self.f32_if_plain() {
            return f(&all[r0 * cols..r1 * cols]);
        }
        // Held across the parallel dequantization and the product: see `with_scratch`.
        kernels::with_scratch(&DEQUANT, |buf| {
            let len = (r1 - r0) * cols;
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            let out = &mut buf[..len];
            self.dequant_rows_into(r0, out);
            f(out)
        })
    }
    /// Dequantize rows `r0..` into `out` (whole rows), in parallel.
    fn dequant_rows_into(&self, r0: usize, out: &mut [f32]) {
        let cols = self.cols();
        out.par_chunks_mut(cols * 64)
            .enumerate()
            .for_each(|(c, o)| {
                for (j, row) in o.chunks_exact_mut(cols).enumerate() {
                    self.row_into(r0 + c * 64 + j, row);
                }
            });
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
    pub(super) fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::Frozen(q) => q.unpack_row_into(r, out),
            Weight::Train(p) => out.copy_from_slice(&p.w[r * p.cols..(r + 1) * p.cols]),
        }
    }
}

thread_local! {
    /// Dequantized frozen weights of [`Weight::with_rows_f32`].
    static DEQUANT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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

/// Elements per parallel task of [`dropout_into`] (a multiple of 4).
const DROP_TASK: usize = 1 << 14;

/// `out[i] (+)= x[i] * m_i`, `m_i` the dropout multiplier (0 with probability `p`, else
/// `1/(1-p)`) of element `i` of the mask seeded by `seed`. The mask is a pure function of
/// `(seed, i)`: each 64-bit counter-hash draw ([`Rng::u64_at`]) gives four elements 16 bits
/// each (so `p` is applied at 1/65536 resolution), generated in parallel, and the backward
/// recomputes the same mask instead of storing it.
pub(super) fn dropout_into(x: &[f32], out: &mut [f32], p: f32, seed: u64, add: bool) {
    let keep = 1.0 / (1.0 - p);
    let thresh = (p * 65536.0).round() as u64;
    out.par_chunks_mut(DROP_TASK)
        .zip(x.par_chunks(DROP_TASK))
        .enumerate()
        .for_each(|(t, (o, x))| {
            dropout_task(x, o, seed, (t * DROP_TASK / 4) as u64, thresh, keep, add)
        });
}

crate::model::ops::dispatch!(dropout_task(x: &[f32], out: &mut [f32], seed: u64, base: u64, thresh: u64, keep: f32, add: bool) -> () {
    // One task of `dropout_into`: draw `base + q` gives elements `4q..4q + 4`, 16 bits each.
    let mut m = [0f32; 64];
    for (blk, (o, x)) in out.chunks_mut(64).zip(x.chunks(64)).enumerate() {
        let b0 = base + (blk * 16) as u64;
        for (q, m4) in m.chunks_exact_mut(4).enumerate() {
            let h = Rng::u64_at(seed, b0 + q as u64);
            for (lane, mi) in m4.iter_mut().enumerate() {
                *mi = if (h >> (16 * lane)) & 0xFFFF < thresh { 0.0 } else { keep };
            }
        }
        if add {
            o.iter_mut().zip(x).zip(&m).for_each(|((o, &x), &m)| *o += x * m);
        } else {
            o.iter_mut().zip(x).zip(&m).for_each(|((o, &x), &m)| *o = x * m);
        }
    }
});

/// `x` after dropout with probability `p` (borrowed as is when `p` is 0).
fn dropped(x: &[f32], p: f32, seed: u64) -> Cow<'_, [f32]> {
    if p > 0.0 {
        let mut xd = scratch(x.len());
        dropout_into(x, &mut xd, p, seed, false);
        Cow::Owned(xd)
    } else {
        Cow::Borrowed(x)
    }
}

/// Hand a [`dropped`] copy back to the recycled buffers (nothing when it borrowed `x`).
fn recycle_dropped(xd: Cow<'_, [f32]>) {
    if let Cow::Owned(v) = xd {
        recycle([v]);
    }
}

/// The dropout multipliers of [`dropout_into`] for `n` values (the candle engine applies the
/// host's exact masks).
#[cfg(feature = "candle")]
pub(super) fn dropout_factors(n: usize, p: f32, seed: u64) -> Vec<f32> {
    let mut out = vec![0.0; n];
    dropout_into(&vec![1.0; n], &mut out, p, seed, false);
    out
}

impl TLinear {
    fn dims(&self) -> (usize, usize) {
        (self.w.rows(), self.w.cols())
    }

    /// `y[n, out] = x[n, in] W^T (+ scale * (drop(x) A^T) B^T)`. Returns `u = drop(x) A^T`
    /// (`[n, r]`, empty without LoRA), saved for backward.
    pub(super) fn forward(
        &self,
        x: &[f32],
        n: usize,
        y: &mut [f32],
        p: f32,
        seed: u64,
    ) -> Vec<f32> {
        let (rows, cols) = self.dims();
        self.w
            .with_f32(|w| gemm::nt(x, w, y, n, cols, rows, 1.0, false));
        let Some(l) = &self.lora else {
            return Vec::new();
        };
        let r = l.a.rows;
        let xd = dropped(&x[..n * cols], p, seed);
        let mut u = vec![0f32; n * r];
        if r <= gemm::NARROW {
            gemm::nt_narrow(&xd, &l.a.w, &mut u, n, cols, r, 1.0); // [n, r]
        } else {
            gemm::nt(&xd, &l.a.w, &mut u, n, cols, r, 1.0, false);
        }
        gemm::nt(&u, &l.b.w, y, n, r, rows, l.scale, true); // [n, out]
        recycle_dropped(xd);
        u
    }

    /// Whether [`Self::backward`] reads the layer's input `x`: for a trainable weight's
    /// gradient or the adapter's (a frozen layer without LoRA needs only `dy`).
    pub(super) fn needs_input(&self) -> bool {
        matches!(self.w, Weight::Train(_)) || self.lora.is_some()
    }

    /// Accumulate weight gradients and write (`acc` false) or add `dx[n, in] = dy W (+ LoRA)`.
    /// `x` may be empty when [`Self::needs_input`] is false; `dx` is empty when the input's
    /// gradient is not needed (the first block's attention under a frozen embedding).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
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
        let want_dx = !dx.is_empty();
        // dx[n, in] (+)= dy W
        if want_dx {
            self.w
                .with_f32(|w| gemm::nn(dy, w, dx, n, rows, cols, 1.0, acc));
        }
        let Some(l) = &mut self.lora else {
            return;
        };
        let r = l.a.rows;
        let xd = dropped(&x[..n * cols], p, seed);
        let mut du = vec![0f32; n * r];
        if r <= gemm::NARROW {
            gemm::tn_narrow(u, dy, &mut l.b.g, n, r, rows, l.scale, true); // dB[out, r] += s dy^T u
            let mut bt = vec![0f32; r * rows]; // B^T [r, out]
            for (o, brow) in l.b.w.chunks_exact(r).enumerate() {
                for (j, &v) in brow.iter().enumerate() {
                    bt[j * rows + o] = v;
                }
            }
            gemm::nt_narrow(dy, &bt, &mut du, n, rows, r, l.scale); // du[n, r] = s dy B
            gemm::tn_narrow(&du, &xd, &mut l.a.g, n, r, cols, 1.0, false); // dA[r, in] += du^T xd
        } else {
            gemm::tn(dy, u, &mut l.b.g, n, rows, r, l.scale, true);
            gemm::nn(dy, &l.b.w, &mut du, n, rows, r, l.scale, false);
            gemm::tn(&du, &xd, &mut l.a.g, n, r, cols, 1.0, true);
        }
        recycle_dropped(xd);
        if want_dx && p > 0.0 {
            let mut dxd = scratch(n * cols);
            gemm::nn(&du, &l.a.w, &mut dxd, n, r, cols, 1.0, false); // [n, in]
            dropout_into(&dxd, dx, p, seed, true);
            recycle([dxd]);
        } else if want_dx {
            // dx already holds `dy W` (written or added above): add the adapter's part.
            gemm::nn(&du, &l.a.w, dx, n, r, cols, 1.0, true);
        }
    }
}

/// `f()` when one of the block's linears `which` reads its input in the backward, else an
/// empty vector: the backward recomputes a norm or gate output only for a layer that uses it
/// (under LoRA on q,v the feed-forward's inputs are never needed).
pub(super) fn input_for(
    lin: &[TLinear; 7],
    which: &[usize],
    f: impl FnOnce() -> Vec<f32>,
) -> Vec<f32> {
    if which.iter().any(|&j| lin[j].needs_input()) {
        f()
    } else {
        Vec::new()
    }
}

/// An RMSNorm weight: frozen or trainable.
#[derive(Debug, Clone)]
pub enum Norm {
    Frozen(Vec<f32>),
    Train(Param),
}

impl Norm {
    pub(super) fn w(&self) -> &[f32] {
        match self {
            Norm::Frozen(w) => w,
            Norm::Train(p) => &p.w,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Model
// ------------------------------------------------------------------------------------------

/// Module names of a block's linears, in `lin` order, and their HF parents.
pub const LINEAR_NAMES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
pub(super) const Q: usize = 0;
pub(super) const K: usize = 1;
pub(super) const V: usize = 2;
pub(super) const O: usize = 3;
pub(super) const GATE: usize = 4;
pub(super) const UP: usize = 5;
pub(super) const DOWN: usize = 6;

/// `self_attn` or `mlp`: the Hugging Face parent module of linear `i`.
pub fn linear_parent(i: usize) -> &'static str {
    if i < 4 {
        "self_attn"
    } else {
        "mlp"
    }
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

impl Method {
    /// LoRA dropout probability (0 for full fine-tuning).
    pub fn dropout(&self) -> f32 {
        match self {
            Method::Full => 0.0,
            Method::Lora { dropout, .. } => *dropout,
        }
    }
}

/// Turns a loaded model's tensors into training tensors for a [`Method`]: trainable f32
/// copies for full fine-tuning; frozen originals plus LoRA adapters otherwise.
pub(super) struct Builder<'a> {
    method: &'a Method,
    rng: Rng,
}

impl<'a> Builder<'a> {
    /// `seed` initializes LoRA `A`.
    pub(super) fn new(method: &'a Method, seed: u64) -> Self {
        Builder {
            method,
            rng: Rng::new(seed),
        }
    }

    fn full(&self) -> bool {
        *self.method == Method::Full
    }

    /// A matrix outside the blocks (embedding, untied head): trainable only when full.
    pub(super) fn weight(&self, name: &str, q: &QMatrix) -> Weight {
        if self.full() {
            Weight::Train(Param::new(name.into(), q.to_f32(), q.rows, q.cols, true))
        } else {
            Weight::Frozen(q.clone())
        }
    }

    /// A norm weight: trainable (without weight decay) only when full.
    pub(super) fn norm(&self, name: String, w: &[f32]) -> Norm {
        if self.full() {
            Norm::Train(Param::new(name, w.to_vec(), 1, w.len(), false))
        } else {
            Norm::Frozen(w.to_vec())
        }
    }

    /// Layer `i`'s seven linears (in [`LINEAR_NAMES`] order), named as Hugging Face does.
    pub(super) fn linears(&mut self, i: usize, ws: [&QMatrix; 7]) -> Result<[TLinear; 7]> {
        let mut out = Vec::with_capacity(7);
        for (j, q) in ws.into_iter().enumerate() {
            let key = format!("layers.{i}.{}.{}", linear_parent(j), LINEAR_NAMES[j]);
            out.push(match self.method {
                Method::Full => TLinear {
                    w: Weight::Train(Param::new(
                        format!("model.{key}.weight"),
                        q.to_f32(),
                        q.rows,
                        q.cols,
                        true,
                    )),
                    lora: None,
                },
                Method::Lora {
                    r, alpha, targets, ..
                } => {
                    let lora = if targets[j] {
                        // PEFT init: A ~ kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(in)),
                        // B = 0, so training starts at the base model.
                        let bound = 1.0 / (q.cols as f32).sqrt();
                        let a: Vec<f32> = (0..r * q.cols)
                            .map(|_| (self.rng.next_f32() * 2.0 - 1.0) * bound)
                            .collect();
                        let p = format!("base_model.model.model.{key}");
                        Some(Lora {
                            a: Param::new(format!("{p}.lora_A.weight"), a, *r, q.cols, true),
                            b: Param::new(
                                format!("{p}.lora_B.weight"),
                                vec![0.0; q.rows * r],
                                q.rows,
                                *r,
                                true,
                            ),
                            scale: alpha / *r as f32,
                        })
                    } else {
                        None
                    };
                    TLinear {
                        w: Weight::Frozen(q.clone()),
                        lora,
                    }
                }
            });
        }
        out.try_into()
            .map_err(|_| Error::Internal("a block has 7 linears".into()))
    }
}

/// Push a block's trainable tensors (norms first, then linears with their adapters) in a
/// stable order.
pub(super) fn push_block_params<'a>(
    v: &mut Vec<&'a mut Param>,
    norms: Vec<&'a mut Norm>,
    lin: &'a mut [TLinear; 7],
) {
    for n in norms {
        if let Norm::Train(p) = n {
            v.push(p);
        }
    }
    for l in lin {
        if let Weight::Train(p) = &mut l.w {
            v.push(p);
        }
        if let Some(lo) = &mut l.lora {
            v.push(&mut lo.a);
            v.push(&mut lo.b);
        }
    }
}

/// Loss of one micro-batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossOut {
    /// Sum of token losses (nats).
    pub loss_sum: f64,
    pub n_targets: usize,
}

/// Seed of the LoRA dropout mask of linear `j` in layer `l`, from the micro-batch's seed.
pub(super) fn lora_seed(seed: u64, l: usize, j: usize) -> u64 {
    Rng::new(seed ^ ((l * 7 + j + 1) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

/// The training graph of one of the supported architectures, with its weights.
#[derive(Debug, Clone)]
pub enum TrainModel {
    Llama(TLlama),
    Gemma3(TGemma3),
}

impl TrainModel {
    /// Build the training graph over a loaded model. `seed` initializes LoRA `A`.
    pub fn from_model(m: &Model, method: &Method, seed: u64) -> Result<TrainModel> {
        match m {
            Model::Llama(m) => Self::from_llama(m, method, seed),
            Model::Gemma3(m) => Self::from_gemma3(m, method, seed),
        }
    }

    pub fn from_llama(m: &Llama, method: &Method, seed: u64) -> Result<TrainModel> {
        TLlama::new(m, method, seed).map(TrainModel::Llama)
    }

    pub fn from_gemma3(m: &Gemma3, method: &Method, seed: u64) -> Result<TrainModel> {
        TGemma3::new(m, method, seed).map(TrainModel::Gemma3)
    }

    /// Every trainable tensor, in a stable order (optimizer state and checkpoints follow it).
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        match self {
            TrainModel::Llama(m) => m.params_mut(),
            TrainModel::Gemma3(m) => m.params_mut(),
        }
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
        if b.tokens.is_empty() {
            return Ok(LossOut::default());
        }
        // On a worker of the pool (`rayon::scope` runs it there when called from outside):
        // the graph's many parallel operations then start and end on a worker instead of
        // waking the pool and parking the caller each time (1.02x per LoRA step).
        rayon::scope(|_| match self {
            TrainModel::Llama(m) => m.forward_backward(b, loss_scale, seed, backward),
            TrainModel::Gemma3(m) => m.forward_backward(b, loss_scale, seed, backward),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_are_the_counter_hash_draws() {
        // Element `i` keeps 16 bits `i % 4` of draw `i / 4`, across task and block edges.
        let (p, seed, n) = (0.3f32, 7u64, DROP_TASK + 4 * 64 + 13);
        let x: Vec<f32> = (0..n).map(|i| 1.0 + (i as f32 * 0.1).sin()).collect();
        let (keep, thresh) = (1.0 / (1.0 - p), (p * 65536.0).round() as u64);
        let want: Vec<f32> = (0..n)
            .map(|i| {
                let h = Rng::u64_at(seed, (i / 4) as u64);
                let m = if (h >> (16 * (i % 4))) & 0xFFFF < thresh {
                    0.0
                } else {
                    keep
                };
                x[i] * m
            })
            .collect();
        let mut out = vec![f32::NAN; n];
        dropout_into(&x, &mut out, p, seed, false);
        assert_eq!(out, want);
        let mut acc = vec![1.0; n];
        dropout_into(&x, &mut acc, p, seed, true);
        assert!(acc.iter().zip(&want).all(|(a, w)| *a == 1.0 + w));
        let dropped = want.iter().filter(|&&v| v == 0.0).count() as f32 / n as f32;
        assert!((dropped - p).abs() < 0.02, "{dropped}");
    }
}
