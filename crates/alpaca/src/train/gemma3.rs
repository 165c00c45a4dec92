//! The Gemma 3 training graph. Mirrors [`crate::model::gemma3::Gemma3::forward`]; the
//! layers' math is in [`super::layers`]. Per block:
//!
//! ```text
//! h1 = rms(x, attn_norm);  q, k, v = h1 Wq, h1 Wk, h1 Wv
//! q, k = rope(rms_heads(q, q_norm)), rope(rms_heads(k, k_norm))   (QK-norm, neox RoPE:
//!                                      local layers base 10000, global layers their own)
//! att = attention(q, k, v)              (sliding window on local layers)
//! x2 = x + rms(att Wo, post_attn_norm)
//! h2 = rms(x2, ffn_norm);  dn = (gelu_tanh(h2 Wg) * h2 Wu) Wd
//! x3 = x2 + rms(dn, post_ffn_norm)
//! ```
//!
//! Embeddings are scaled by `sqrt(d)`; the head is tied to them unless the file has its own,
//! followed by the final logit soft-cap when configured. Norm weights are the GGUF's (Gemma's
//! `1 + w` already added), so every norm is the plain `x * w` form; export subtracts the 1.
//!
//! Shapes: `n` tokens of a micro-batch, `d` model width, `hd` head dim, `qd = nh*hd`,
//! `kvd = nkv*hd`, `f` feed-forward width.

use super::batch::Batch;
use super::layers::{
    add_into, attention_backward, attention_forward, embed, embed_backward, head_loss, positions,
    rms_backward, rms_forward, zeros, Glu, Rope, HEAD_VCHUNK,
};
use super::model::{
    input_for, lora_seed, push_block_params, Builder, LossOut, Method, Norm, Param, TLinear,
    Weight, DOWN, GATE, K, O, Q, UP, V,
};
use crate::error::Result;
use crate::model::attention::AttnShape;
use crate::model::gemma3::{Gemma3, Gemma3Config};

/// One Gemma 3 block of the training graph.
#[derive(Debug, Clone)]
pub struct GemmaBlock {
    pub attn_norm: Norm,      // [d]
    pub q_norm: Norm,         // [hd]
    pub k_norm: Norm,         // [hd]
    pub post_attn_norm: Norm, // [d]
    pub ffn_norm: Norm,       // [d]
    pub post_ffn_norm: Norm,  // [d]
    /// q [qd,d], k [kvd,d], v [kvd,d], o [d,qd], gate [f,d], up [f,d], down [d,f].
    pub lin: [TLinear; 7],
}

impl GemmaBlock {
    /// The six norms, in [`GEMMA_NORM_NAMES`] order.
    pub fn norms(&self) -> [&Norm; 6] {
        [
            &self.attn_norm,
            &self.q_norm,
            &self.k_norm,
            &self.post_attn_norm,
            &self.ffn_norm,
            &self.post_ffn_norm,
        ]
    }
}

/// Hugging Face names of a block's norms (under `model.layers.{i}.`), in
/// [`GemmaBlock::norms`] order.
pub const GEMMA_NORM_NAMES: [&str; 6] = [
    "input_layernorm",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
];

/// The Gemma 3 training graph and its weights.
#[derive(Debug, Clone)]
pub struct TGemma3 {
    pub cfg: Gemma3Config,
    pub embd: Weight, // [V, d]
    pub blocks: Vec<GemmaBlock>,
    pub out_norm: Norm, // [d]
    /// Untied output head [V, d]; `None` when tied to `embd` (always, in released Gemma 3).
    pub head: Option<Weight>,
    /// LoRA dropout probability (0 for full fine-tuning).
    pub dropout: f32,
}

/// Activations of one block saved by the forward for the backward.
struct Acts {
    x: Vec<f32>,          // [n, d] block input (residual)
    rstd1: Vec<f32>,      // [n]
    q: Vec<f32>,          // [n, qd] before QK-norm
    rq: Vec<f32>,         // [n * nh] QK-norm rstd
    k: Vec<f32>,          // [n, kvd] before QK-norm
    rk: Vec<f32>,         // [n * nkv]
    v: Vec<f32>,          // [n, kvd]
    probs: Vec<Vec<f32>>, // per (sequence, head): [L, L]
    att: Vec<f32>,        // [n, qd]
    o: Vec<f32>,          // [n, d] attention output projection
    ro: Vec<f32>,         // [n] its post-norm rstd
    x2: Vec<f32>,         // [n, d] residual after attention
    rstd2: Vec<f32>,      // [n]
    g: Vec<f32>,          // [n, f] gate pre-activation
    up: Vec<f32>,         // [n, f]
    dn: Vec<f32>,         // [n, d] feed-forward output
    rdn: Vec<f32>,        // [n] its post-norm rstd
    u: [Vec<f32>; 7],     // LoRA intermediates [n, r]
}

impl TGemma3 {
    pub(super) fn new(m: &Gemma3, method: &Method, seed: u64) -> Result<TGemma3> {
        let mut bld = Builder::new(method, seed);
        let mut blocks = Vec::with_capacity(m.cfg.n_layers);
        for (i, b) in m.blocks.iter().enumerate() {
            let ws = [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down].map(|l| &l.weight);
            let norm = |j: usize, w: &[f32]| {
                bld.norm(
                    format!("model.layers.{i}.{}.weight", GEMMA_NORM_NAMES[j]),
                    w,
                )
            };
            let (attn_norm, q_norm, k_norm) = (
                norm(0, &b.attn_norm),
                norm(1, &b.q_norm),
                norm(2, &b.k_norm),
            );
            let (post_attn_norm, ffn_norm, post_ffn_norm) = (
                norm(3, &b.post_attn_norm),
                norm(4, &b.ffn_norm),
                norm(5, &b.post_ffn_norm),
            );
            blocks.push(GemmaBlock {
                lin: bld.linears(i, ws)?,
                attn_norm,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm,
                post_ffn_norm,
            });
        }
        Ok(TGemma3 {
            cfg: m.cfg.clone(),
            embd: bld.weight("model.embed_tokens.weight", &m.tok_embd),
            blocks,
            out_norm: bld.norm("model.norm.weight".into(), &m.output_norm),
            head: (!m.tied_output).then(|| bld.weight("lm_head.weight", &m.output.weight)),
            dropout: method.dropout(),
        })
    }

    pub(super) fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = Vec::new();
        if let Weight::Train(p) = &mut self.embd {
            v.push(p);
        }
        for b in &mut self.blocks {
            let norms = vec![
                &mut b.attn_norm,
                &mut b.q_norm,
                &mut b.k_norm,
                &mut b.post_attn_norm,
                &mut b.ffn_norm,
                &mut b.post_ffn_norm,
            ];
            push_block_params(&mut v, norms, &mut b.lin);
        }
        if let Norm::Train(p) = &mut self.out_norm {
            v.push(p);
        }
        if let Some(Weight::Train(p)) = &mut self.head {
            v.push(p);
        }
        v
    }

    fn attn_shape(&self, layer: usize) -> AttnShape {
        let c = &self.cfg;
        AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale,
            window: (!c.global_layers[layer]).then_some(c.sliding_window),
            softcap: c.attn_softcap,
        }
    }

    pub(super) fn forward_backward(
        &mut self,
        b: &Batch,
        loss_scale: f32,
        seed: Option<u64>,
        backward: bool,
    ) -> Result<LossOut> {
        let c = self.cfg.clone();
        let n = b.tokens.len();
        let (d, hd, f, eps) = (c.dim, c.head_dim, c.ffn_dim, c.rms_eps);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let p_drop = if seed.is_some() { self.dropout } else { 0.0 };
        let seed = seed.unwrap_or(0);
        let ls = |l: usize, j: usize| lora_seed(seed, l, j);

        // Embeddings times sqrt(d), in f32 as the inference forward computes it.
        let embd_scale = (d as f32).sqrt();
        let mut x = embed(&self.embd, &b.tokens, c.vocab_size, embd_scale)?; // [n, d]
        let max_len = b.seqs.iter().map(|s| s.1).max().unwrap_or(0);
        let local = Rope::new(max_len, hd, c.rope_base_local, true);
        let global = Rope::new(max_len, hd, c.rope_base_global, true);
        let rope = |l: usize| if c.global_layers[l] { &global } else { &local };
        let pos = positions(&b.seqs, n);
        // QK-norm then RoPE: the q/k attention sees.
        let qk = |m: &[f32], norm: &Norm, width: usize, l: usize| {
            let (mut r, rstd) = rms_forward(m, norm.w(), eps, hd);
            rope(l).apply(&mut r, width, hd, &pos, false);
            (r, rstd)
        };

        // ---------------------------------------------------------------- forward
        let mut acts: Vec<Acts> = Vec::with_capacity(c.n_layers);
        for (l, blk) in self.blocks.iter().enumerate() {
            let lin = &blk.lin;
            let (h1, rstd1) = rms_forward(&x, blk.attn_norm.w(), eps, d);
            let mut u: [Vec<f32>; 7] = Default::default();
            let mut q = zeros(n * qd);
            let mut k = zeros(n * kvd);
            let mut v = zeros(n * kvd);
            u[Q] = lin[Q].forward(&h1, n, &mut q, p_drop, ls(l, Q));
            u[K] = lin[K].forward(&h1, n, &mut k, p_drop, ls(l, K));
            u[V] = lin[V].forward(&h1, n, &mut v, p_drop, ls(l, V));
            let (qr, rq) = qk(&q, &blk.q_norm, qd, l);
            let (kr, rk) = qk(&k, &blk.k_norm, kvd, l);
            let (probs, att) = attention_forward(&qr, &kr, &v, &b.seqs, self.attn_shape(l), n);
            let mut o = zeros(n * d);
            u[O] = lin[O].forward(&att, n, &mut o, p_drop, ls(l, O));
            let (po, ro) = rms_forward(&o, blk.post_attn_norm.w(), eps, d);
            let mut x2 = x.clone();
            add_into(&mut x2, &po);

            let (h2, rstd2) = rms_forward(&x2, blk.ffn_norm.w(), eps, d);
            let mut g = zeros(n * f);
            let mut up = zeros(n * f);
            u[GATE] = lin[GATE].forward(&h2, n, &mut g, p_drop, ls(l, GATE));
            u[UP] = lin[UP].forward(&h2, n, &mut up, p_drop, ls(l, UP));
            let act = Glu::Ge.forward(&g, &up);
            let mut dn = zeros(n * d);
            u[DOWN] = lin[DOWN].forward(&act, n, &mut dn, p_drop, ls(l, DOWN));
            let (pf, rdn) = rms_forward(&dn, blk.post_ffn_norm.w(), eps, d);
            let mut x3 = x2.clone();
            add_into(&mut x3, &pf);
            let x_in = std::mem::replace(&mut x, x3);
            acts.push(Acts {
                x: x_in,
                rstd1,
                q,
                rq,
                k,
                rk,
                v,
                probs,
                att,
                o,
                ro,
                x2,
                rstd2,
                g,
                up,
                dn,
                rdn,
                u,
            });
        }
        let (hf, rstdf) = rms_forward(&x, self.out_norm.w(), eps, d);
        let head = self.head.as_mut().unwrap_or(&mut self.embd);
        let (loss_sum, dhf) = head_loss(
            head,
            &hf,
            &b.targets,
            loss_scale,
            c.final_softcap,
            backward,
            HEAD_VCHUNK,
        );
        let out = LossOut {
            loss_sum,
            n_targets: b.targets.len(),
        };
        if !backward {
            return Ok(out);
        }

        // ---------------------------------------------------------------- backward
        // dx: [n, d] gradient of the residual stream.
        let mut dx = zeros(n * d);
        rms_backward(&x, &mut self.out_norm, &rstdf, &dhf, d, &mut dx);
        for (l, a) in acts.iter().enumerate().rev() {
            let attn = self.attn_shape(l);
            let blk = &mut self.blocks[l];
            // Recomputed rather than saved: q/k after QK-norm and RoPE, and (only for layers
            // that read them) the norm outputs and gelu(g) * up.
            let h1 = input_for(&blk.lin, &[Q, K, V], || {
                rms_forward(&a.x, blk.attn_norm.w(), eps, d).0
            });
            let h2 = input_for(&blk.lin, &[GATE, UP], || {
                rms_forward(&a.x2, blk.ffn_norm.w(), eps, d).0
            });
            let (qr, _) = qk(&a.q, &blk.q_norm, qd, l);
            let (kr, _) = qk(&a.k, &blk.k_norm, kvd, l);
            let act = input_for(&blk.lin, &[DOWN], || Glu::Ge.forward(&a.g, &a.up));
            let (lin, u) = (&mut blk.lin, &a.u);

            // --- feed-forward: x3 = x2 + post_ffn_norm(dn); dx passes to x2 unchanged.
            let mut ddn = zeros(n * d);
            rms_backward(&a.dn, &mut blk.post_ffn_norm, &a.rdn, &dx, d, &mut ddn);
            let mut dact = zeros(n * f);
            lin[DOWN].backward(
                &act,
                n,
                &ddn,
                &u[DOWN],
                &mut dact,
                false,
                p_drop,
                ls(l, DOWN),
            );
            let (dg, dup) = Glu::Ge.backward(&a.g, &a.up, &dact);
            let mut dh = zeros(n * d);
            lin[GATE].backward(&h2, n, &dg, &u[GATE], &mut dh, false, p_drop, ls(l, GATE));
            lin[UP].backward(&h2, n, &dup, &u[UP], &mut dh, true, p_drop, ls(l, UP));
            rms_backward(&a.x2, &mut blk.ffn_norm, &a.rstd2, &dh, d, &mut dx);

            // --- attention: x2 = x + post_attn_norm(o).
            let mut dout = zeros(n * d);
            rms_backward(&a.o, &mut blk.post_attn_norm, &a.ro, &dx, d, &mut dout);
            let mut datt = zeros(n * qd);
            lin[O].backward(&a.att, n, &dout, &u[O], &mut datt, false, p_drop, ls(l, O));
            let (mut dqr, mut dkr, dv) =
                attention_backward(&qr, &kr, &a.v, &a.probs, &datt, &b.seqs, attn, n);
            rope(l).apply(&mut dqr, qd, hd, &pos, true);
            rope(l).apply(&mut dkr, kvd, hd, &pos, true);
            let mut dq = zeros(n * qd);
            let mut dk = zeros(n * kvd);
            rms_backward(&a.q, &mut blk.q_norm, &a.rq, &dqr, hd, &mut dq);
            rms_backward(&a.k, &mut blk.k_norm, &a.rk, &dkr, hd, &mut dk);
            lin[Q].backward(&h1, n, &dq, &u[Q], &mut dh, false, p_drop, ls(l, Q));
            lin[K].backward(&h1, n, &dk, &u[K], &mut dh, true, p_drop, ls(l, K));
            lin[V].backward(&h1, n, &dv, &u[V], &mut dh, true, p_drop, ls(l, V));
            rms_backward(&a.x, &mut blk.attn_norm, &a.rstd1, &dh, d, &mut dx);
        }
        embed_backward(&mut self.embd, &b.tokens, &dx, embd_scale);
        Ok(out)
    }
}
