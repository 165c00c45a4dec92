//! Gemma 3: Google DeepMind's decoder-only transformer (Gemma Team 2025, arXiv:2503.19786),
//! text part, as laid out in GGUF files (`general.architecture = gemma3`; llama.cpp's
//! `convert_hf_to_gguf.py`, `Gemma3Model`).
//!
//! Notable features, relative to [`crate::model::llama`]:
//! - four RMSNorms per block: before and after attention, before and after the feed-forward
//!   (sandwich norm). Gemma writes its norms as `x * (1 + w)`; llama.cpp's converter stores
//!   `1 + w` in the GGUF, so here every norm is the plain `x * w` of [`rms_norm`]
//!   (transformers subtracts the 1 again when it loads such a file);
//! - QK-norm: an RMSNorm over each query and key head (`attn_q_norm`, `attn_k_norm`, `[hd]`),
//!   before RoPE;
//! - interleaved local and global attention: by default every 6th layer (`(i + 1) % 6 == 0`)
//!   is global, the others see only the last `sliding_window` positions; local layers use
//!   RoPE base 10000, global layers `rope.freq_base` (1e6);
//! - RoPE in the "neox" (rotate-half) layout: Gemma's q/k rows are stored unpermuted
//!   (llama.cpp uses `LLAMA_ROPE_TYPE_NEOX` for gemma3);
//! - attention scale `query_pre_attn_scalar^-0.5` (= `head_dim^-0.5` except for 27B, see
//!   [`Gemma3Config::from_gguf`]);
//! - GeGLU feed-forward: `down(gelu_tanh(gate(x)) * up(x))`;
//! - token embeddings multiplied by `sqrt(d)`; output head tied to them; optional final
//!   logit soft-cap `cap * tanh(logit / cap)` (`final_logit_softcapping`; absent in 270M).
//!
//! The file reads top to bottom: config, weights, forward. Shapes: `t` tokens in the batch,
//! `d` model width, `hd` head dim, `nh`/`nkv` query/key-value heads, `f` feed-forward width.

use crate::error::{Error, Result};
use crate::model::attention::{attention, AttnShape, KvCache};
use crate::model::gguf::{Gguf, Value};
use crate::model::linear::{Linear, QMatrix};
use crate::model::llama::{gguf_matrix, gguf_vector};
use crate::model::ops::{geglu, rms_norm, rms_norm_heads, rope_angles, rope_neox};

// ------------------------------------------------------------------------------------------
// Config
// ------------------------------------------------------------------------------------------

/// Hyperparameters, validated. Defaults follow llama.cpp's gemma3 loader where a key is
/// optional.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Config {
    pub n_layers: usize,
    /// Model width `d`.
    pub dim: usize,
    /// Feed-forward width `f`.
    pub ffn_dim: usize,
    pub n_heads: usize,
    /// Defaults to `n_heads`.
    pub n_kv_heads: usize,
    /// `attention.key_length`; defaults to `dim / n_heads`. RoPE rotates the whole head.
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Training context length: the most positions the model may attend over.
    pub context_length: usize,
    /// Defaults to 1e-6.
    pub rms_eps: f32,
    /// RoPE base of the global layers (`rope.freq_base`); defaults to 1e6.
    pub rope_base_global: f32,
    /// RoPE base of the local layers (`rope.freq_base_swa`); defaults to 10000.
    pub rope_base_local: f32,
    /// Positions a local layer sees, its own included (`attention.sliding_window`).
    pub sliding_window: usize,
    /// One per layer: true for global (full) attention, false for sliding-window.
    pub global_layers: Vec<bool>,
    /// Multiplier of q.k: `query_pre_attn_scalar^-0.5`.
    pub attn_scale: f32,
    /// Attention-score soft-cap (`attn_logit_softcapping`; Gemma 2 style); usually None.
    pub attn_softcap: Option<f32>,
    /// Final logit soft-cap (`final_logit_softcapping`); None for Gemma 3 270M.
    pub final_softcap: Option<f32>,
}

/// Every `GLOBAL_EVERY`-th layer is global when the file names no pattern (llama.cpp
/// `hparams.set_swa_pattern(6)`; transformers `sliding_window_pattern = 6`).
pub const GLOBAL_EVERY: usize = 6;

impl Gemma3Config {
    /// Read from GGUF metadata under the `gemma3.` prefix.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        let k = |s: &str| format!("{arch}.{s}");
        let opt_usize = |key: &str, default: usize| -> Result<usize> {
            match g.get(key) {
                Some(_) => g.get_usize(key),
                None => Ok(default),
            }
        };
        let opt_f32 = |key: &str| -> Result<Option<f32>> {
            match g.get(key) {
                Some(_) => g.get_f32(key).map(Some),
                None => Ok(None),
            }
        };
        let n_heads = g.get_usize(&k("attention.head_count"))?;
        let dim = g.get_usize(&k("embedding_length"))?;
        let n_layers = g.get_usize(&k("block_count"))?;
        if n_heads == 0 || n_layers == 0 {
            return Err(Error::Config(format!(
                "{arch}: attention.head_count {n_heads}, block_count {n_layers}"
            )));
        }
        let head_dim = opt_usize(&k("attention.key_length"), dim / n_heads)?;
        let value_length = opt_usize(&k("attention.value_length"), head_dim)?;
        if value_length != head_dim {
            return Err(Error::Config(format!(
                "{arch}: attention.value_length {value_length} differs from key_length {head_dim}"
            )));
        }
        if let Some(v) = g.get(&k("rope.scaling.type")) {
            if v.as_str() != Some("none") {
                return Err(Error::Config(format!(
                    "{arch}: RoPE scaling {v:?} is not supported (Gemma 3 4B and larger)"
                )));
            }
        }
        // Layer pattern: `attention.sliding_window_pattern` is either a period (every n-th
        // layer global) or one bool per layer, true = sliding (llama.cpp's convention).
        let pattern_key = k("attention.sliding_window_pattern");
        let global_layers = match g.get(&pattern_key) {
            None => (0..n_layers).map(|i| (i + 1) % GLOBAL_EVERY == 0).collect(),
            Some(Value::Array(_, items)) => {
                let v: Option<Vec<bool>> = items.iter().map(|b| b.as_bool().map(|s| !s)).collect();
                match v {
                    Some(v) if v.len() == n_layers => v,
                    _ => {
                        return Err(Error::Config(format!(
                            "{pattern_key}: expected {n_layers} bools"
                        )))
                    }
                }
            }
            Some(_) => {
                let every = g.get_usize(&pattern_key)?.max(1);
                (0..n_layers).map(|i| (i + 1) % every == 0).collect()
            }
        };
        // llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3): query_pre_attn_scalar is
        // d / n_heads for the 27B model (62 layers) and head_dim for every other size.
        let query_pre_attn_scalar = if n_layers == 62 {
            dim / n_heads
        } else {
            head_dim
        };
        let cfg = Gemma3Config {
            n_layers,
            dim,
            ffn_dim: g.get_usize(&k("feed_forward_length"))?,
            n_heads,
            n_kv_heads: opt_usize(&k("attention.head_count_kv"), n_heads)?,
            head_dim,
            vocab_size: match g.get(&k("vocab_size")) {
                Some(_) => g.get_usize(&k("vocab_size"))?,
                None => g.get_array("tokenizer.ggml.tokens")?.len(),
            },
            context_length: g.get_usize(&k("context_length"))?,
            rms_eps: opt_f32(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            rope_base_global: opt_f32(&k("rope.freq_base"))?.unwrap_or(1e6),
            rope_base_local: opt_f32(&k("rope.freq_base_swa"))?.unwrap_or(10000.0),
            sliding_window: g.get_usize(&k("attention.sliding_window"))?,
            global_layers,
            attn_scale: 1.0 / (query_pre_attn_scalar as f32).sqrt(),
            attn_softcap: opt_f32(&k("attn_logit_softcapping"))?.filter(|&c| c > 0.0),
            final_softcap: opt_f32(&k("final_logit_softcapping"))?.filter(|&c| c > 0.0),
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
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        if self.global_layers.len() != self.n_layers {
            return bad(format!(
                "{} layer kinds for {} layers",
                self.global_layers.len(),
                self.n_layers
            ));
        }
        if self.context_length == 0 || self.sliding_window == 0 {
            return bad("context_length or sliding_window is 0".into());
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

// ------------------------------------------------------------------------------------------
// Weights
// ------------------------------------------------------------------------------------------

/// One transformer block. Norm weights are as stored in GGUF (Gemma's `1 + w`).
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Vec<f32>,      // [d]
    pub wq: Linear,               // [nh*hd, d]
    pub wk: Linear,               // [nkv*hd, d]
    pub wv: Linear,               // [nkv*hd, d]
    pub q_norm: Vec<f32>,         // [hd]
    pub k_norm: Vec<f32>,         // [hd]
    pub wo: Linear,               // [d, nh*hd]
    pub post_attn_norm: Vec<f32>, // [d]
    pub ffn_norm: Vec<f32>,       // [d]
    pub w_gate: Linear,           // [f, d]
    pub w_up: Linear,             // [f, d]
    pub w_down: Linear,           // [d, f]
    pub post_ffn_norm: Vec<f32>,  // [d]
}

#[derive(Debug, Clone)]
pub struct Gemma3 {
    pub cfg: Gemma3Config,
    pub tok_embd: QMatrix, // [vocab, d]
    pub blocks: Vec<Block>,
    pub output_norm: Vec<f32>, // [d]
    pub output: Linear,        // [vocab, d]; shares tok_embd's bytes when tied
    pub tied_output: bool,
}

impl Gemma3 {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let cfg = Gemma3Config::from_gguf(g)?;
        let (d, f, v, hd) = (cfg.dim, cfg.ffn_dim, cfg.vocab_size, cfg.head_dim);
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
                q_norm: gguf_vector(g, &p("attn_q_norm"), hd)?,
                k_norm: gguf_vector(g, &p("attn_k_norm"), hd)?,
                wo: lin(&p("attn_output"), d, qd)?,
                post_attn_norm: gguf_vector(g, &p("post_attention_norm"), d)?,
                ffn_norm: gguf_vector(g, &p("ffn_norm"), d)?,
                w_gate: lin(&p("ffn_gate"), f, d)?,
                w_up: lin(&p("ffn_up"), f, d)?,
                w_down: lin(&p("ffn_down"), d, f)?,
                post_ffn_norm: gguf_vector(g, &p("post_ffw_norm"), d)?,
            });
        }
        let tok_embd = gguf_matrix(g, "token_embd.weight", v, d)?;
        let (output, tied_output) = match g.tensor("output.weight") {
            Some(_) => (lin("output.weight", v, d)?, false),
            None => (Linear::new(tok_embd.clone()), true),
        };
        Ok(Gemma3 {
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

    /// Bytes of weights read to decode one token (every matrix once).
    pub fn weight_bytes_per_token(&self) -> usize {
        let lin = |l: &Linear| l.weight.data.bytes().len();
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down]
                    .into_iter()
                    .map(lin)
                    .sum::<usize>()
            })
            .sum();
        blocks + lin(&self.output)
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
        let (d, hd, eps) = (c.dim, c.head_dim, c.rms_eps);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());

        // x: [t, d] token embeddings times sqrt(d) (Gemma's embedding scale, in f32 as
        // transformers computes it).
        let embd_scale = (d as f32).sqrt();
        let mut x = vec![0f32; t * d];
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            if tok as usize >= c.vocab_size {
                return Err(Error::InvalidArgument(format!(
                    "token id {tok} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            self.tok_embd.dequantize_row_into(tok as usize, row);
            row.iter_mut().for_each(|v| *v *= embd_scale);
        }

        // RoPE tables for the batch positions, one pair per base: [t, hd/2] each.
        let half = hd / 2;
        let tables = |base: f32| {
            let mut cos = vec![0f32; t * half];
            let mut sin = vec![0f32; t * half];
            for i in 0..t {
                let s = i * half..(i + 1) * half;
                rope_angles(pos0 + i, hd, base, &mut cos[s.clone()], &mut sin[s]);
            }
            (cos, sin)
        };
        let local_rope = tables(c.rope_base_local);
        let global_rope = tables(c.rope_base_global);
        let shape = |global: bool| AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: hd,
            scale: c.attn_scale,
            window: (!global).then_some(c.sliding_window),
            softcap: c.attn_softcap,
        };

        let mut h = vec![0f32; t * d]; // normed input   [t, d]
        let mut q = vec![0f32; t * qd]; //               [t, nh*hd]
        let mut k = vec![0f32; t * kvd]; //              [t, nkv*hd]
        let mut v = vec![0f32; t * kvd]; //              [t, nkv*hd]
        let mut att = vec![0f32; t * qd]; // attention   [t, nh*hd]
        let mut proj = vec![0f32; t * d]; // projections [t, d]
        let mut gate = vec![0f32; t * c.ffn_dim]; //     [t, f]
        let mut up = vec![0f32; t * c.ffn_dim]; //       [t, f]

        // x += post_norm(proj), row by row (the "sandwich" residual of Gemma 2/3).
        let add_normed = |x: &mut [f32], proj: &[f32], h: &mut [f32], w: &[f32]| {
            for ((xr, pr), hr) in x
                .chunks_exact_mut(d)
                .zip(proj.chunks_exact(d))
                .zip(h.chunks_exact_mut(d))
            {
                rms_norm(pr, w, eps, hr);
                xr.iter_mut().zip(hr.iter()).for_each(|(a, b)| *a += b);
            }
        };

        for (l, b) in self.blocks.iter().enumerate() {
            let global = c.global_layers[l];
            let (cos, sin) = if global { &global_rope } else { &local_rope };

            // --- attention
            for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                rms_norm(xr, &b.attn_norm, eps, hr);
            }
            b.wq.forward(&h, t, &mut q);
            b.wk.forward(&h, t, &mut k);
            b.wv.forward(&h, t, &mut v);
            // QK-norm per head, then RoPE (rotate-half layout).
            rms_norm_heads(&mut q, &b.q_norm, eps);
            rms_norm_heads(&mut k, &b.k_norm, eps);
            for i in 0..t {
                let (cs, sn) = (
                    &cos[i * half..(i + 1) * half],
                    &sin[i * half..(i + 1) * half],
                );
                for head in q[i * qd..(i + 1) * qd].chunks_exact_mut(hd) {
                    rope_neox(head, cs, sn);
                }
                for head in k[i * kvd..(i + 1) * kvd].chunks_exact_mut(hd) {
                    rope_neox(head, cs, sn);
                }
            }
            cache.push(l, &k, &v);
            attention(
                &q,
                cache.keys(l),
                cache.values(l),
                pos0,
                t,
                shape(global),
                &mut att,
            );
            b.wo.forward(&att, t, &mut proj);
            add_normed(&mut x, &proj, &mut h, &b.post_attn_norm);

            // --- feed-forward (GeGLU)
            for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                rms_norm(xr, &b.ffn_norm, eps, hr);
            }
            b.w_gate.forward(&h, t, &mut gate);
            b.w_up.forward(&h, t, &mut up);
            geglu(&mut gate, &up);
            b.w_down.forward(&gate, t, &mut proj);
            add_normed(&mut x, &proj, &mut h, &b.post_ffn_norm);
        }
        cache.advance(t);

        // --- head: logits for the last n tokens, [n, vocab]
        let n = n_logits.clamp(1, t);
        let mut hn = vec![0f32; n * d];
        for (hr, xr) in hn.chunks_exact_mut(d).zip(x[(t - n) * d..].chunks_exact(d)) {
            rms_norm(xr, &self.output_norm, eps, hr);
        }
        let mut logits = vec![0f32; n * c.vocab_size];
        self.output.forward(&hn, n, &mut logits);
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
        }
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use crate::infer::{Engine, GenParams};
    use crate::model::fresh::{random_gemma3_gguf, tiny_gemma3_config};
    use crate::model::quant::GgmlType;
    use crate::model::Model;
    use crate::tokenizer::tiny_test_vocab;

    /// Write a tiny random Gemma 3 (Q8_0) and load it through the same path users take.
    fn tiny(tag: &str, edit: impl FnOnce(&mut super::Gemma3Config)) -> Engine {
        let vocab = tiny_test_vocab();
        let mut cfg = tiny_gemma3_config(vocab.tokens.len());
        edit(&mut cfg);
        let w = random_gemma3_gguf(&cfg, &vocab, GgmlType::Q8_0, 7).expect("tiny model");
        let p =
            std::env::temp_dir().join(format!("alpaca-gemma3-{tag}-{}.gguf", std::process::id()));
        w.write(&p).expect("write");
        let mut e = Engine::load(&p).expect("load");
        // These tests compare one-token steps with prompt batches (f32): one arithmetic.
        e.model
            .set_act_mode(crate::model::int8_decode::ActMode::F32);
        let _ = std::fs::remove_file(&p);
        e
    }

    #[test]
    fn tiny_gemma3_loads_and_generates_deterministically() {
        let e = tiny("gen", |_| {});
        let Model::Gemma3(m) = &e.model else {
            panic!("architecture {}", e.model.arch())
        };
        assert_eq!(
            m.cfg.global_layers,
            [false, false, false, false, false, true],
            "layer pattern read back from the file"
        );
        assert!(m.tied_output);
        let prompt: Vec<u32> = (10..19).collect(); // 9 tokens: past the window of 4
        let params = GenParams {
            max_new_tokens: 12,
            ignore_eos: true,
            ..Default::default()
        };
        let run = || {
            e.generate(&prompt, &params, &mut |_| {
                std::ops::ControlFlow::Continue(())
            })
            .expect("generate")
            .ids
        };
        let first = run();
        assert_eq!(first.len(), 12);
        assert_eq!(first, run());
    }

    /// A prompt run as one batch gives the logits of feeding it token by token, across the
    /// sliding window (local layers) and the global layer.
    #[test]
    fn batched_prompt_equals_token_by_token() {
        let e = tiny("batch", |_| {});
        let m = &e.model;
        let toks: Vec<u32> = (30..40).collect();
        let v = m.vocab_size();
        let mut c1 = m.new_cache(64);
        let all = m.forward(&toks, &mut c1, toks.len()).expect("batch");
        let mut c2 = m.new_cache(64);
        for (i, &t) in toks.iter().enumerate() {
            let one = m.forward(&[t], &mut c2, 1).expect("step");
            for (a, b) in one.iter().zip(&all[i * v..(i + 1) * v]) {
                assert!((a - b).abs() < 1e-4, "position {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn final_logit_softcap_bounds_logits() {
        let e = tiny("cap", |c| c.final_softcap = Some(0.25));
        let mut cache = e.model.new_cache(16);
        let logits = e.model.forward(&[5, 6, 7], &mut cache, 1).expect("forward");
        assert!(logits.iter().all(|z| z.abs() <= 0.25));
        assert!(logits.iter().any(|z| z.abs() > 0.0));
    }
}
