//! LLaMA: the decoder-only transformer of Touvron et al. 2023 (arXiv:2302.13971), as laid
//! out in GGUF files (`general.architecture = llama`; SmolLM2, LLaMA 1/2/3, Mistral, ...).
//!
//! Notable features:
//! - pre-norm blocks with RMSNorm (no biases anywhere);
//! - rotary position embeddings, ggml "normal" layout (adjacent pairs; GGUF files store
//!   q/k rows permuted for it);
//! - grouped-query attention (`n_kv_heads` <= `n_heads`);
//! - SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`;
//! - output head tied to the token embeddings when `output.weight` is absent.
//!
//! The file reads top to bottom: config, weights, forward. Shapes: `t` tokens in the batch,
//! `d` model width, `hd` head dim, `nh`/`nkv` query/key-value heads, `f` feed-forward width.

use crate::error::{Error, Result};
use crate::model::attention::{AttnShape, KvCache};
use crate::model::ggml_compat::{round_f16, LlamaOps};
use crate::model::gguf::Gguf;
use crate::model::linear::{Linear, QMatrix};
use crate::model::quant::dequantize_row;

// ------------------------------------------------------------------------------------------
// Config
// ------------------------------------------------------------------------------------------

/// Hyperparameters, validated. Defaults follow llama.cpp where a key is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_layers: usize,
    /// Model width `d`.
    pub dim: usize,
    /// Feed-forward width `f`.
    pub ffn_dim: usize,
    pub n_heads: usize,
    /// Defaults to `n_heads` (plain multi-head attention).
    pub n_kv_heads: usize,
    /// Defaults to `dim / n_heads`.
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Training context length: the most positions the model may attend over.
    pub context_length: usize,
    /// Defaults to 1e-5.
    pub rms_eps: f32,
    /// Defaults to 10000.
    pub rope_base: f32,
    /// Rotated dimensions per head; defaults to `head_dim`.
    pub rope_dim: usize,
}

impl LlamaConfig {
    /// Read from GGUF metadata under the `llama.` prefix.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        let k = |s: &str| format!("{arch}.{s}");
        let n_heads = g.get_usize(&k("attention.head_count"))?;
        let dim = g.get_usize(&k("embedding_length"))?;
        if n_heads == 0 {
            return Err(Error::Config("attention.head_count is 0".into()));
        }
        let head_dim = match g.get(&k("attention.key_length")) {
            Some(_) => g.get_usize(&k("attention.key_length"))?,
            None => dim / n_heads,
        };
        let n_kv_heads = match g.get(&k("attention.head_count_kv")) {
            Some(_) => g.get_usize(&k("attention.head_count_kv"))?,
            None => n_heads,
        };
        let vocab_size = match g.get(&k("vocab_size")) {
            Some(_) => g.get_usize(&k("vocab_size"))?,
            None => g.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let opt_f32 = |key: &str, default: f32| -> Result<f32> {
            match g.get(key) {
                Some(_) => g.get_f32(key),
                None => Ok(default),
            }
        };
        let cfg = LlamaConfig {
            n_layers: g.get_usize(&k("block_count"))?,
            dim,
            ffn_dim: g.get_usize(&k("feed_forward_length"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: g.get_usize(&k("context_length"))?,
            rms_eps: opt_f32(&k("attention.layer_norm_rms_epsilon"), 1e-5)?,
            rope_base: opt_f32(&k("rope.freq_base"), 10000.0)?,
            rope_dim: match g.get(&k("rope.dimension_count")) {
                Some(_) => g.get_usize(&k("rope.dimension_count"))?,
                None => head_dim,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.n_layers == 0 || self.dim == 0 || self.ffn_dim == 0 || self.vocab_size == 0 {
            return bad(format!("zero-sized dimension in {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return bad(format!(
                "rope dimension {} must be even and at most head_dim {}",
                self.rope_dim, self.head_dim
            ));
        }
        if self.context_length == 0 {
            return bad("context_length is 0".into());
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Attention of every layer: global, scaled by `1/sqrt(head_dim)`, no soft-cap.
    pub fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            window: None,
            softcap: None,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Weights
// ------------------------------------------------------------------------------------------

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Vec<f32>, // [d]
    pub wq: Linear,          // [nh*hd, d]
    pub wk: Linear,          // [nkv*hd, d]
    pub wv: Linear,          // [nkv*hd, d]
    pub wo: Linear,          // [d, nh*hd]
    pub ffn_norm: Vec<f32>,  // [d]
    pub w_gate: Linear,      // [f, d]
    pub w_up: Linear,        // [f, d]
    pub w_down: Linear,      // [d, f]
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub cfg: LlamaConfig,
    pub tok_embd: QMatrix, // [vocab, d]
    pub blocks: Vec<Block>,
    pub output_norm: Vec<f32>, // [d]
    pub output: Linear,        // [vocab, d]; shares tok_embd's bytes when tied
    pub tied_output: bool,
}

/// Load a named matrix of `rows x cols` from a GGUF file.
pub fn gguf_matrix(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
    let info = g.tensor(name).ok_or_else(|| Error::Tensor {
        name: name.into(),
        reason: format!("missing from {}", g.path.display()),
    })?;
    // ggml drops trailing 1-sized dimensions: compare with them put back.
    let mut dims = info.dims.clone();
    dims.resize(dims.len().max(2), 1);
    let want = [cols as u64, rows as u64];
    if dims[..2] != want || dims[2..].iter().any(|&d| d != 1) {
        return Err(Error::Tensor {
            name: name.into(),
            reason: format!("shape {:?}, expected {want:?} (ggml order)", info.dims),
        });
    }
    QMatrix::new(name, info.ty, rows, cols, g.storage(info))
}

/// Load a named vector (norm weights) of length `n` as f32.
pub fn gguf_vector(g: &Gguf, name: &str, n: usize) -> Result<Vec<f32>> {
    let m = gguf_matrix(g, name, 1, n)?;
    let mut out = vec![0f32; n];
    dequantize_row(m.ty, m.row(0), &mut out);
    Ok(out)
}

impl Llama {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(g)?;
        let (d, f, v) = (cfg.dim, cfg.ffn_dim, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let lin = |name: &str, rows, cols| gguf_matrix(g, name, rows, cols).map(Linear::new);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            blocks.push(Block {
                attn_norm: gguf_vector(g, &p("attn_norm"), d)?,
                wq: lin(&p("attn_q"), qd, d)?,
                wk: lin(&p("attn_k"), kvd, d)?,
                wv: lin(&p("attn_v"), kvd, d)?,
                wo: lin(&p("attn_output"), d, qd)?,
                ffn_norm: gguf_vector(g, &p("ffn_norm"), d)?,
                w_gate: lin(&p("ffn_gate"), f, d)?,
                w_up: lin(&p("ffn_up"), f, d)?,
                w_down: lin(&p("ffn_down"), d, f)?,
            });
        }
        let tok_embd = gguf_matrix(g, "token_embd.weight", v, d)?;
        let (output, tied_output) = match g.tensor("output.weight") {
            Some(_) => (lin("output.weight", v, d)?, false),
            None => (Linear::new(tok_embd.clone()), true),
        };
        Ok(Llama {
            output_norm: gguf_vector(g, "output_norm.weight", d)?,
            cfg,
            tok_embd,
            blocks,
            output,
            tied_output,
        })
    }

    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(
            self.cfg.n_layers,
            self.cfg.kv_dim(),
            capacity.min(self.cfg.context_length),
        )
    }

    // --------------------------------------------------------------------------------------
    // Forward
    // --------------------------------------------------------------------------------------

    /// Run `tokens` (one batch, positions continuing from `cache.len()`) through the model,
    /// appending their keys and values to `cache`. Returns logits (`n x vocab`) for the last
    /// `n_logits` tokens of the batch (1 for generation, more for scoring).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        n_logits: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.cfg;
        // The default engine's ops, or llama.cpp's arithmetic under --int8-activations.
        let ops = LlamaOps::current();
        let t = tokens.len();
        let pos0 = cache.len();
        if t == 0 {
            return Err(Error::InvalidArgument(
                "forward called with no tokens".into(),
            ));
        }
        if pos0 + t > cache.capacity() {
            return Err(Error::ContextOverflow {
                prompt: pos0 + t,
                max_new: 0,
                ctx: cache.capacity(),
            });
        }
        let (d, hd) = (c.dim, c.head_dim);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());

        // Activation buffers, reused across calls through the cache (no allocation per
        // decoded token but the returned logits).
        let half = c.rope_dim / 2;
        let n = n_logits.clamp(1, t);
        let f = c.ffn_dim;
        let sizes = [
            t * d,    // x: residual stream         [t, d]
            t * half, // cos                        [t, rope_dim/2]
            t * half, // sin                        [t, rope_dim/2]
            t * d,    // h: normed input            [t, d]
            t * qd,   // q                          [t, nh*hd]
            t * kvd,  // k                          [t, nkv*hd]
            t * kvd,  // v                          [t, nkv*hd]
            t * qd,   // att: attention output      [t, nh*hd]
            t * d,    // proj: projections          [t, d]
            t * f,    // gate                       [t, f]
            t * f,    // up                         [t, f]
            n * d,    // hn: normed last rows       [n, d]
        ];
        let mut bufs = cache.scratch.take(&sizes);
        let [x, cos, sin, h, q, k, v, att, proj, gate, up, hn] = &mut bufs[..12] else {
            unreachable!("12 buffers requested")
        };

        // x: [t, d] token embeddings
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            if tok as usize >= c.vocab_size {
                return Err(Error::InvalidArgument(format!(
                    "token id {tok} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            self.tok_embd.dequantize_row_into(tok as usize, row);
        }

        // RoPE tables for the batch positions: [t, rope_dim/2] each.
        for i in 0..t {
            let s = i * half..(i + 1) * half;
            (ops.rope_angles)(
                pos0 + i,
                c.rope_dim,
                c.rope_base,
                &mut cos[s.clone()],
                &mut sin[s],
            );
        }
        let shape = c.attn_shape();

        for (l, b) in self.blocks.iter().enumerate() {
            // --- attention
            for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                (ops.rms_norm)(xr, &b.attn_norm, c.rms_eps, hr);
            }
            b.wq.forward(h, t, q);
            b.wk.forward(h, t, k);
            b.wv.forward(h, t, v);
            for i in 0..t {
                let (cs, sn) = (
                    &cos[i * half..(i + 1) * half],
                    &sin[i * half..(i + 1) * half],
                );
                for head in q[i * qd..(i + 1) * qd].chunks_exact_mut(hd) {
                    (ops.rope)(&mut head[..c.rope_dim], cs, sn);
                }
                for head in k[i * kvd..(i + 1) * kvd].chunks_exact_mut(hd) {
                    (ops.rope)(&mut head[..c.rope_dim], cs, sn);
                }
            }
            if ops.f16_cache {
                round_f16(k);
                round_f16(v);
            }
            cache.push(l, k, v);
            (ops.attention)(q, cache.keys(l), cache.values(l), pos0, t, shape, att);
            b.wo.forward(att, t, proj);
            x.iter_mut().zip(proj.iter()).for_each(|(a, p)| *a += p);

            // --- feed-forward (SwiGLU)
            for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                (ops.rms_norm)(xr, &b.ffn_norm, c.rms_eps, hr);
            }
            b.w_gate.forward(h, t, gate);
            b.w_up.forward(h, t, up);
            (ops.swiglu)(gate, up);
            b.w_down.forward(gate, t, proj);
            x.iter_mut().zip(proj.iter()).for_each(|(a, p)| *a += p);
        }
        cache.advance(t);

        // --- head: logits for the last n tokens, [n, vocab]
        for (hr, xr) in hn.chunks_exact_mut(d).zip(x[(t - n) * d..].chunks_exact(d)) {
            (ops.rms_norm)(xr, &self.output_norm, c.rms_eps, hr);
        }
        let mut logits = vec![0f32; n * c.vocab_size];
        self.output.forward(hn, n, &mut logits);
        cache.scratch.restore(bufs);
        Ok(logits)
    }
}
