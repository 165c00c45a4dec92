//! The LLaMA training step on candle (CPU backend, or CUDA with the `cuda` feature): the
//! same graph as [`super::llama`] (embedding, RMSNorm, linear + LoRA with the same dropout
//! masks, GGUF adjacent-pair RoPE, causal GQA over packed sequences, SwiGLU, tied or untied
//! head, cross-entropy on target rows), with the backward from candle's autograd.
//!
//! Every op is a primitive with a backward (matmul, broadcast arithmetic, exp/log/sqrt,
//! reductions, narrow/cat/reshape, index_select/gather): candle's fused `rms_norm`,
//! `softmax_last_dim` and `rope` kernels return results without a gradient link, so they are
//! not used. Softmax maxima are detached (the shift cancels in the gradient).
//!
//! Weights: trainable parameters are uploaded as `Var`s from the host vectors once per
//! optimizer step ([`Engine::params_changed`]) and their gradients are added back into the
//! host `g`; frozen weights (the LoRA base, whatever its file type: F32, Q8_0, Q4_*) are
//! dequantized once to a frozen f32 copy on the device.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};

use super::batch::Batch;
use super::candle_device::TrainDevice;
use super::layers::positions;
use super::llama::TLlama;
use super::model::{
    dropout_factors, lora_seed, LossOut, Norm, TLinear, TrainModel, Weight, DOWN, GATE, K, O, Q,
    UP, V,
};
use crate::error::{Error, Result};
use crate::model::ops::rope_angles;

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Error {
        Error::Train(format!("candle: {e}"))
    }
}

/// The candle training engine on one device, with its copies of the weights.
pub struct Engine {
    dev: Device,
    /// Frozen weights (f32 on the device), by their place in the model.
    frozen: HashMap<String, Tensor>,
    /// Trainable parameters, by name; emptied when the host values change.
    vars: HashMap<String, Var>,
}

impl Engine {
    /// Open `device` (candle CPU, or a CUDA GPU: fails without a GPU or driver).
    pub fn new(device: TrainDevice) -> Result<Engine> {
        let dev = match device {
            TrainDevice::Cuda(i) => Device::new_cuda(i)
                .map_err(|e| Error::Train(format!("cannot open CUDA device {i}: {e}")))?,
            TrainDevice::CandleCpu | TrainDevice::Cpu => Device::Cpu,
        };
        Ok(Engine {
            dev,
            frozen: HashMap::new(),
            vars: HashMap::new(),
        })
    }

    /// The host parameters changed: upload them again before the next pass.
    pub fn params_changed(&mut self) {
        self.vars.clear();
    }

    /// Forward one micro-batch; with `backward`, add the gradients of
    /// `loss_scale * sum(token losses)` into the host parameters' `g`.
    pub fn forward_backward(
        &mut self,
        m: &mut TrainModel,
        b: &Batch,
        loss_scale: f32,
        seed: Option<u64>,
        backward: bool,
    ) -> Result<LossOut> {
        let out = LossOut {
            loss_sum: 0.0,
            n_targets: b.targets.len(),
        };
        if b.tokens.is_empty() {
            return Ok(out);
        }
        let TrainModel::Llama(lm) = m else {
            return Err(Error::InvalidArgument(
                "the candle/CUDA training engine supports LLaMA models only (use --device cpu)"
                    .into(),
            ));
        };
        let loss = self.forward(lm, b, seed)?;
        let loss_sum = f64::from(loss.to_scalar::<f32>()?);
        if backward {
            let grads = loss.affine(f64::from(loss_scale), 0.0)?.backward()?;
            for p in m.params_mut() {
                let Some(g) = self.vars.get(&p.name).and_then(|v| grads.get(v)) else {
                    continue;
                };
                let g = g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                p.g.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
            }
        }
        Ok(LossOut { loss_sum, ..out })
    }

    /// A weight on the device: the parameter's `Var` when trainable, else the frozen copy
    /// stored under `key`.
    fn weight(&mut self, key: &str, w: &Weight) -> Result<Tensor> {
        match w {
            Weight::Train(p) => self.var(&p.name, &p.w, (p.rows, p.cols)),
            Weight::Frozen(q) => {
                if let Some(t) = self.frozen.get(key) {
                    return Ok(t.clone());
                }
                let f = w.f32();
                let t = Tensor::from_slice(f.as_ref(), (q.rows, q.cols), &self.dev)?;
                self.frozen.insert(key.to_string(), t.clone());
                Ok(t)
            }
        }
    }

    fn norm(&mut self, key: &str, n: &Norm) -> Result<Tensor> {
        match n {
            Norm::Train(p) => self.var(&p.name, &p.w, p.w.len()),
            Norm::Frozen(w) => {
                if let Some(t) = self.frozen.get(key) {
                    return Ok(t.clone());
                }
                let t = Tensor::from_slice(w.as_slice(), w.len(), &self.dev)?;
                self.frozen.insert(key.to_string(), t.clone());
                Ok(t)
            }
        }
    }

    fn var(
        &mut self,
        name: &str,
        w: &[f32],
        shape: impl Into<candle_core::Shape>,
    ) -> Result<Tensor> {
        if let Some(v) = self.vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let v = Var::from_slice(w, shape, &self.dev)?;
        let t = v.as_tensor().clone();
        self.vars.insert(name.to_string(), v);
        Ok(t)
    }

    /// `y = x W^T (+ scale * (drop(x) A^T) B^T)`, LoRA dropout from the host's masks.
    fn linear(
        &mut self,
        key: &str,
        lin: &TLinear,
        x: &Tensor,
        p: f32,
        seed: u64,
    ) -> Result<Tensor> {
        let w = self.weight(key, &lin.w)?;
        let y = x.matmul(&w.t()?)?;
        let Some(l) = &lin.lora else {
            return Ok(y);
        };
        let a = self.var(&l.a.name, &l.a.w, (l.a.rows, l.a.cols))?;
        let bm = self.var(&l.b.name, &l.b.w, (l.b.rows, l.b.cols))?;
        let xd = if p > 0.0 {
            let f = dropout_factors(x.elem_count(), p, seed);
            x.mul(&Tensor::from_vec(f, x.shape().clone(), &self.dev)?)?
        } else {
            x.clone()
        };
        let u = xd.matmul(&a.t()?)?.matmul(&bm.t()?)?;
        Ok(y.add(&u.affine(f64::from(l.scale), 0.0)?)?)
    }

    /// The summed loss of the micro-batch (a scalar that tracks the parameters).
    fn forward(&mut self, m: &TLlama, b: &Batch, seed: Option<u64>) -> Result<Tensor> {
        let c = &m.cfg;
        let n = b.tokens.len();
        let (d, nh, nkv, hd) = (c.dim, c.n_heads, c.n_kv_heads, c.head_dim);
        let p_drop = if seed.is_some() { m.dropout } else { 0.0 };
        let seed = seed.unwrap_or(0);
        if let Some(&t) = b.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "token id {t} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let tokens = Tensor::from_slice(b.tokens.as_slice(), n, &self.dev)?;
        let embd = self.weight("embd", &m.embd)?;
        let mut x = embd.index_select(&tokens, 0)?; // [n, d]
        let rope = RopeTables::new(self, &positions(&b.seqs, n), c.rope_dim, c.rope_base)?;
        let masks = self.causal_masks(&b.seqs)?;
        let scale = 1.0 / (hd as f64).sqrt();

        for (l, blk) in m.blocks.iter().enumerate() {
            let ls = |j: usize| lora_seed(seed, l, j);
            let lin = |j: usize| format!("blk.{l}.{j}");
            let w1 = self.norm(&format!("blk.{l}.attn_norm"), &blk.attn_norm)?;
            let h1 = rms_norm(&x, &w1, c.rms_eps)?;
            let q = self.linear(&lin(Q), &blk.lin[Q], &h1, p_drop, ls(Q))?;
            let k = self.linear(&lin(K), &blk.lin[K], &h1, p_drop, ls(K))?;
            let v = self.linear(&lin(V), &blk.lin[V], &h1, p_drop, ls(V))?;
            let q = rope.apply(&q, nh, hd)?;
            let k = rope.apply(&k, nkv, hd)?;
            let att = attention(&q, &k, &v, &b.seqs, &masks, (nh, nkv, hd), scale)?;
            let o = self.linear(&lin(O), &blk.lin[O], &att, p_drop, ls(O))?;
            let x2 = x.add(&o)?;

            let w2 = self.norm(&format!("blk.{l}.ffn_norm"), &blk.ffn_norm)?;
            let h2 = rms_norm(&x2, &w2, c.rms_eps)?;
            let g = self.linear(&lin(GATE), &blk.lin[GATE], &h2, p_drop, ls(GATE))?;
            let up = self.linear(&lin(UP), &blk.lin[UP], &h2, p_drop, ls(UP))?;
            // silu(g) = g / (1 + exp(-g))
            let act = g.div(&g.neg()?.exp()?.affine(1.0, 1.0)?)?.mul(&up)?;
            let down = self.linear(&lin(DOWN), &blk.lin[DOWN], &act, p_drop, ls(DOWN))?;
            x = x2.add(&down)?;
        }
        let wf = self.norm("out_norm", &m.out_norm)?;
        let hf = rms_norm(&x, &wf, c.rms_eps)?; // [n, d]
        let head = match &m.head {
            Some(h) => self.weight("head", h)?,
            None => embd,
        };
        let rows: Vec<u32> = b.targets.iter().map(|t| t.0 as u32).collect();
        let labels: Vec<u32> = b.targets.iter().map(|t| t.1).collect();
        let m_t = rows.len();
        let ht = hf.index_select(&Tensor::from_vec(rows, m_t, &self.dev)?, 0)?; // [m, d]
        let logits = ht.matmul(&head.t()?)?; // [m, V]
        let logp = log_softmax(&logits)?;
        let labels = Tensor::from_vec(labels, (m_t, 1), &self.dev)?;
        debug_assert_eq!(hf.dims(), &[n, d]);
        Ok(logp.gather(&labels, 1)?.sum_all()?.neg()?)
    }

    /// Per sequence length: `[L, L]` with 0 on and below the diagonal, -inf above.
    fn causal_masks(&self, seqs: &[(usize, usize)]) -> Result<HashMap<usize, Tensor>> {
        let mut out = HashMap::new();
        for &(_, len) in seqs {
            if out.contains_key(&len) {
                continue;
            }
            let m: Vec<f32> = (0..len * len)
                .map(|i| {
                    if i % len > i / len {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            out.insert(len, Tensor::from_vec(m, (len, len), &self.dev)?);
        }
        Ok(out)
    }
}

/// RMSNorm of each row: `x / sqrt(mean(x^2) + eps) * w`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x
        .sqr()?
        .mean_keepdim(D::Minus1)?
        .affine(1.0, f64::from(eps))?;
    Ok(x.broadcast_div(&ms.sqrt()?)?.broadcast_mul(w)?)
}

/// `log(softmax(z))` over the last dimension.
fn log_softmax(z: &Tensor) -> Result<Tensor> {
    let z = z.broadcast_sub(&z.max_keepdim(D::Minus1)?.detach())?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(z.broadcast_sub(&lse)?)
}

/// Causal GQA attention per packed sequence: `q [n, nh*hd]`, `k`/`v [n, nkv*hd]` (after
/// RoPE) to `[n, nh*hd]`.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqs: &[(usize, usize)],
    masks: &HashMap<usize, Tensor>,
    (nh, nkv, hd): (usize, usize, usize),
    scale: f64,
) -> Result<Tensor> {
    let group = nh / nkv;
    // [L, heads*hd] -> [heads, L, hd]; kv heads repeated for their `group` query heads.
    let heads = |t: &Tensor, start: usize, len: usize, h: usize| -> Result<Tensor> {
        Ok(t.narrow(0, start, len)?
            .reshape((len, h, hd))?
            .transpose(0, 1)?
            .contiguous()?)
    };
    let expand = |t: Tensor, len: usize| -> Result<Tensor> {
        if group == 1 {
            return Ok(t);
        }
        Ok(t.unsqueeze(1)?
            .broadcast_as((nkv, group, len, hd))?
            .contiguous()?
            .reshape((nh, len, hd))?)
    };
    let mut outs = Vec::with_capacity(seqs.len());
    for &(start, len) in seqs {
        let qh = heads(q, start, len, nh)?;
        let kh = expand(heads(k, start, len, nkv)?, len)?;
        let vh = expand(heads(v, start, len, nkv)?, len)?;
        let mask = masks
            .get(&len)
            .ok_or_else(|| Error::Internal("attention mask missing".into()))?;
        let s = qh
            .matmul(&kh.t()?)?
            .affine(scale, 0.0)?
            .broadcast_add(mask)?; // [nh, L, L]
        let s = s
            .broadcast_sub(&s.max_keepdim(D::Minus1)?.detach())?
            .exp()?;
        let p = s.broadcast_div(&s.sum_keepdim(D::Minus1)?)?;
        let o = p.matmul(&vh)?; // [nh, L, hd]
        outs.push(o.transpose(0, 1)?.reshape((len, nh * hd))?);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// RoPE in ggml's "normal" layout (adjacent pairs `(x[2i], x[2i+1])` of the first
/// `rope_dim` values of each head), by each token's position in its sequence.
struct RopeTables {
    cos: Tensor, // [n, 1, half, 1]
    sin: Tensor,
    rope_dim: usize,
}

impl RopeTables {
    fn new(e: &Engine, pos: &[usize], rope_dim: usize, base: f32) -> Result<RopeTables> {
        let (n, half) = (pos.len(), rope_dim / 2);
        let (mut cos, mut sin) = (vec![0f32; n * half], vec![0f32; n * half]);
        for (i, &p) in pos.iter().enumerate() {
            let r = i * half..(i + 1) * half;
            rope_angles(p, rope_dim, base, &mut cos[r.clone()], &mut sin[r]);
        }
        let shape = (n, 1, half, 1);
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, shape, &e.dev)?,
            sin: Tensor::from_vec(sin, shape, &e.dev)?,
            rope_dim,
        })
    }

    /// Rotate `t [n, heads*hd]`.
    fn apply(&self, t: &Tensor, heads: usize, hd: usize) -> Result<Tensor> {
        let n = t.dim(0)?;
        let (rd, half) = (self.rope_dim, self.rope_dim / 2);
        let t3 = t.reshape((n, heads, hd))?;
        let r = t3.narrow(2, 0, rd)?.reshape((n, heads, half, 2))?;
        let (a, b) = (r.narrow(3, 0, 1)?, r.narrow(3, 1, 1)?);
        let (c, s) = (&self.cos, &self.sin);
        let ra = a.broadcast_mul(c)?.sub(&b.broadcast_mul(s)?)?;
        let rb = a.broadcast_mul(s)?.add(&b.broadcast_mul(c)?)?;
        let mut rot = Tensor::cat(&[ra, rb], 3)?.reshape((n, heads, rd))?;
        if rd < hd {
            rot = Tensor::cat(&[rot, t3.narrow(2, rd, hd - rd)?], 2)?;
        }
        Ok(rot.reshape((n, heads * hd))?)
    }
}

#[cfg(test)]
#[path = "candle_tests.rs"]
mod tests;
