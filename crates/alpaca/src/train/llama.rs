//! The LLaMA training graph: token embedding, RMSNorm, linear (+ LoRA), RoPE (GGUF
//! adjacent-pair layout), causal grouped-query attention, SwiGLU, the (tied) output head and
//! cross-entropy on target positions only. Mirrors [`crate::model::llama::Llama::forward`];
//! the layers' math is in [`super::layers`].
//!
//! Shapes: `n` tokens of a micro-batch, `d` model width, `hd` head dim, `qd = nh*hd`,
//! `kvd = nkv*hd`, `f` feed-forward width.

use super::batch::Batch;
use super::layers::{
    add_into, attention_backward, attention_forward, copy_of, embed, embed_backward, head_loss,
    positions, recycle, rms_backward, rms_forward, scratch, zeros, Glu, Rope, HEAD_VCHUNK,
};
use super::model::{
    input_for, lora_seed, push_block_params, Builder, LossOut, Method, Norm, Param, TLinear,
    Weight, DOWN, GATE, K, O, Q, UP, V,
};
use crate::error::Result;
use crate::model::llama::{Llama, LlamaConfig};

/// One LLaMA block of the training graph.
#[derive(Debug, Clone)]
pub struct LlamaBlock {
    pub attn_norm: Norm, // [d]
    pub ffn_norm: Norm,  // [d]
    /// q [qd,d], k [kvd,d], v [kvd,d], o [d,qd], gate [f,d], up [f,d], down [d,f].
    pub lin: [TLinear; 7],
}

/// The LLaMA training graph and its weights.
#[derive(Debug, Clone)]
pub struct TLlama {
    pub cfg: LlamaConfig,
    pub embd: Weight, // [V, d]
    pub blocks: Vec<LlamaBlock>,
    pub out_norm: Norm, // [d]
    /// Untied output head [V, d]; `None` when tied to `embd`.
    pub head: Option<Weight>,
    /// LoRA dropout probability (0 for full fine-tuning).
    pub dropout: f32,
}

/// Activations of one block saved by the forward for the backward.
struct Acts {
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

impl TLlama {
    pub(super) fn new(m: &Llama, method: &Method, seed: u64) -> Result<TLlama> {
        let mut bld = Builder::new(method, seed);
        let mut blocks = Vec::with_capacity(m.cfg.n_layers);
        for (i, b) in m.blocks.iter().enumerate() {
            let ws = [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down].map(|l| &l.weight);
            let p = format!("model.layers.{i}");
            blocks.push(LlamaBlock {
                lin: bld.linears(i, ws)?,
                attn_norm: bld.norm(format!("{p}.input_layernorm.weight"), &b.attn_norm),
                ffn_norm: bld.norm(format!("{p}.post_attention_layernorm.weight"), &b.ffn_norm),
            });
        }
        Ok(TLlama {
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
            push_block_params(&mut v, vec![&mut b.attn_norm, &mut b.ffn_norm], &mut b.lin);
        }
        if let Norm::Train(p) = &mut self.out_norm {
            v.push(p);
        }
        if let Some(Weight::Train(p)) = &mut self.head {
            v.push(p);
        }
        v
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

        let mut x = embed(&self.embd, &b.tokens, c.vocab_size, 1.0)?; // [n, d]
        let max_len = b.seqs.iter().map(|s| s.1).max().unwrap_or(0);
        let rope = Rope::new(max_len, c.rope_dim, c.rope_base, false);
        let pos = positions(&b.seqs, n);
        let attn = c.attn_shape();

        // ---------------------------------------------------------------- forward
        let mut acts: Vec<Acts> = Vec::with_capacity(c.n_layers);
        for (l, blk) in self.blocks.iter().enumerate() {
            let lin = &blk.lin;
            let (h1, rstd1) = rms_forward(&x, blk.attn_norm.w(), eps, d);
            let mut u: [Vec<f32>; 7] = Default::default();
            // GEMM outputs (beta 0): recycled buffers, see `scratch`.
            let mut q = scratch(n * qd);
            let mut k = scratch(n * kvd);
            let mut v = scratch(n * kvd);
            u[Q] = lin[Q].forward(&h1, n, &mut q, p_drop, ls(l, Q));
            u[K] = lin[K].forward(&h1, n, &mut k, p_drop, ls(l, K));
            u[V] = lin[V].forward(&h1, n, &mut v, p_drop, ls(l, V));
            rope.apply(&mut q, qd, hd, &pos, false);
            rope.apply(&mut k, kvd, hd, &pos, false);
            let (probs, att) = attention_forward(&q, &k, &v, &b.seqs, attn, n);
            let mut proj = scratch(n * d);
            u[O] = lin[O].forward(&att, n, &mut proj, p_drop, ls(l, O));
            let mut x2 = copy_of(&x);
            add_into(&mut x2, &proj);

            let (h2, rstd2) = rms_forward(&x2, blk.ffn_norm.w(), eps, d);
            let mut g = scratch(n * f);
            let mut up = scratch(n * f);
            u[GATE] = lin[GATE].forward(&h2, n, &mut g, p_drop, ls(l, GATE));
            u[UP] = lin[UP].forward(&h2, n, &mut up, p_drop, ls(l, UP));
            let act = Glu::Swi.forward(&g, &up);
            u[DOWN] = lin[DOWN].forward(&act, n, &mut proj, p_drop, ls(l, DOWN));
            let mut x3 = copy_of(&x2);
            add_into(&mut x3, &proj);
            recycle([h1, h2, act, proj]);
            let x_in = std::mem::replace(&mut x, x3);
            acts.push(Acts {
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
        let (hf, rstdf) = rms_forward(&x, self.out_norm.w(), eps, d);
        let head = self.head.as_mut().unwrap_or(&mut self.embd);
        let (loss_sum, dhf) = head_loss(
            head,
            &hf,
            &b.targets,
            loss_scale,
            None,
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
        while let Some(a) = acts.pop() {
            let l = acts.len();
            let blk = &mut self.blocks[l];
            // --- feed-forward
            // Recomputed rather than saved, and only for layers that read them: the norm
            // outputs and silu(g) * up.
            let h1 = input_for(&blk.lin, &[Q, K, V], || {
                rms_forward(&a.x, blk.attn_norm.w(), eps, d).0
            });
            let h2 = input_for(&blk.lin, &[GATE, UP], || {
                rms_forward(&a.x2, blk.ffn_norm.w(), eps, d).0
            });
            let act = input_for(&blk.lin, &[DOWN], || Glu::Swi.forward(&a.g, &a.up));
            let mut dact = scratch(n * f);
            let lin = &mut blk.lin;
            let u = &a.u;
            lin[DOWN].backward(
                &act,
                n,
                &dx,
                &u[DOWN],
                &mut dact,
                false,
                p_drop,
                ls(l, DOWN),
            );
            let (dg, dup) = Glu::Swi.backward(&a.g, &a.up, &dact);
            let mut dh = scratch(n * d);
            lin[GATE].backward(&h2, n, &dg, &u[GATE], &mut dh, false, p_drop, ls(l, GATE));
            lin[UP].backward(&h2, n, &dup, &u[UP], &mut dh, true, p_drop, ls(l, UP));
            rms_backward(&a.x2, &mut blk.ffn_norm, &a.rstd2, &dh, d, &mut dx);

            // --- attention
            let mut datt = scratch(n * qd);
            lin[O].backward(&a.att, n, &dx, &u[O], &mut datt, false, p_drop, ls(l, O));
            let (mut dq, mut dk, dv) =
                attention_backward(&a.q, &a.k, &a.v, &a.probs, &datt, &b.seqs, attn, n);
            rope.apply(&mut dq, qd, hd, &pos, true);
            rope.apply(&mut dk, kvd, hd, &pos, true);
            // The first block's input gradient feeds only the embedding (and the norm): not
            // computed when both are frozen (LoRA).
            let frozen_below = l == 0
                && matches!(self.embd, Weight::Frozen(_))
                && matches!(blk.attn_norm, Norm::Frozen(_));
            let dh_in: &mut [f32] = if frozen_below { &mut [] } else { &mut dh };
            lin[Q].backward(&h1, n, &dq, &u[Q], dh_in, false, p_drop, ls(l, Q));
            lin[K].backward(&h1, n, &dk, &u[K], dh_in, true, p_drop, ls(l, K));
            lin[V].backward(&h1, n, &dv, &u[V], dh_in, true, p_drop, ls(l, V));
            if !frozen_below {
                rms_backward(&a.x, &mut blk.attn_norm, &a.rstd1, &dh, d, &mut dx);
            }
            recycle([h1, h2, act, dact, dg, dup, dh, datt, dq, dk, dv]);
            recycle([a.x, a.q, a.k, a.v, a.att, a.x2, a.g, a.up]);
        }
        embed_backward(&mut self.embd, &b.tokens, &dx, 1.0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::{Method, TrainModel};

    /// Median time of one forward+backward of a LoRA q,v (r 8, dropout 0.05) micro-batch of
    /// 4 x 256 tokens on the real SmolLM2 Q4_1 model (from the model cache), 2 threads, 7 steps
    /// after a warm-up (the optimizer step is not included):
    /// `cargo test --release -p alpaca --lib lora_step_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn lora_step_timing() {
        let base = crate::assets::load_default_model();
        let mut targets = [false; 7];
        targets[Q] = true;
        targets[V] = true;
        let method = Method::Lora {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets,
        };
        let mut m = TrainModel::from_model(&base, &method, 1).unwrap();
        let mut b = Batch::default();
        let mut rng = crate::rng::Rng::new(5);
        for s in 0..4 {
            b.seqs.push((s * 256, 256));
            for i in 0..256 {
                b.tokens.push((rng.next_u64() % 49152) as u32);
                if i > 0 {
                    b.targets
                        .push((s * 256 + i - 1, (rng.next_u64() % 49152) as u32));
                }
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut ts: Vec<f64> = pool.install(|| {
            m.forward_backward(&b, 1.0, Some(1), true).unwrap();
            (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    m.forward_backward(&b, 1.0, Some(1), true).unwrap();
                    t.elapsed().as_secs_f64()
                })
                .collect()
        });
        ts.sort_by(|a, b| a.total_cmp(b));
        let med = ts[ts.len() / 2];
        println!(
            "forward+backward median {med:.3} s, {:.1} tokens/s",
            1024.0 / med
        );
    }
}
