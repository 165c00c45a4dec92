//! Fresh (randomly initialized) models: tiny LLaMA files for tests and fixtures, written as
//! real GGUF so that every test exercises the same loader users do.

use crate::error::Result;
use crate::model::gguf::{GgufWriter, Value};
use crate::model::llama::LlamaConfig;
use crate::model::quant::{quantize_row, GgmlType};
use crate::rng::Rng;
use crate::tokenizer::TokenizerParts;

/// A tiny LLaMA config over a vocabulary of `vocab_size` tokens.
pub fn tiny_llama_config(vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        n_layers: 2,
        dim: 64,
        ffn_dim: 128,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size,
        context_length: 256,
        rms_eps: 1e-5,
        rope_base: 10000.0,
        rope_dim: 16,
    }
}

/// Build a GGUF of a LLaMA with random weights (normal-ish, std 0.02 scaled like GPT-2's
/// init) in weight type `ty`, with the given tokenizer. Norm weights are 1 (F32).
pub fn random_llama_gguf(
    cfg: &LlamaConfig,
    tok: &TokenizerParts,
    ty: GgmlType,
    seed: u64,
) -> Result<GgufWriter> {
    cfg.validate()?;
    let mut rng = Rng::new(seed);
    let mut w = GgufWriter::new();
    let a = "llama";
    w.set("general.architecture", Value::String(a.into()));
    w.set("general.name", Value::String("tiny-random-llama".into()));
    w.set(format!("{a}.block_count"), Value::U32(cfg.n_layers as u32));
    w.set(
        format!("{a}.context_length"),
        Value::U32(cfg.context_length as u32),
    );
    w.set(format!("{a}.embedding_length"), Value::U32(cfg.dim as u32));
    w.set(
        format!("{a}.feed_forward_length"),
        Value::U32(cfg.ffn_dim as u32),
    );
    w.set(
        format!("{a}.attention.head_count"),
        Value::U32(cfg.n_heads as u32),
    );
    w.set(
        format!("{a}.attention.head_count_kv"),
        Value::U32(cfg.n_kv_heads as u32),
    );
    w.set(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_eps),
    );
    w.set(format!("{a}.rope.freq_base"), Value::F32(cfg.rope_base));
    w.set(
        format!("{a}.rope.dimension_count"),
        Value::U32(cfg.rope_dim as u32),
    );
    w.set(format!("{a}.vocab_size"), Value::U32(cfg.vocab_size as u32));
    tok.write_gguf(&mut w);

    let mut matrix = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize, ty: GgmlType| {
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| {
                // Sum of 4 uniforms: cheap, roughly normal, std ~ 0.58 * scale.
                let s: f32 = (0..4).map(|_| rng.next_f32() - 0.5).sum();
                s * 0.08
            })
            .collect();
        let bytes: Vec<u8> = x
            .chunks_exact(cols)
            .flat_map(|r| quantize_row(ty, r).expect("fresh models use quantizable types"))
            .collect();
        w.add_tensor(name, vec![cols as u64, rows as u64], ty, bytes);
    };
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };
    let (d, f) = (cfg.dim, cfg.ffn_dim);
    matrix(&mut w, "token_embd.weight", cfg.vocab_size, d, ty);
    for i in 0..cfg.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        w.add_tensor(p("attn_norm"), vec![d as u64], GgmlType::F32, ones(d));
        matrix(&mut w, &p("attn_q"), cfg.q_dim(), d, ty);
        matrix(&mut w, &p("attn_k"), cfg.kv_dim(), d, ty);
        matrix(&mut w, &p("attn_v"), cfg.kv_dim(), d, ty);
        matrix(&mut w, &p("attn_output"), d, cfg.q_dim(), ty);
        w.add_tensor(p("ffn_norm"), vec![d as u64], GgmlType::F32, ones(d));
        matrix(&mut w, &p("ffn_gate"), f, d, ty);
        matrix(&mut w, &p("ffn_up"), f, d, ty);
        matrix(&mut w, &p("ffn_down"), d, f, ty);
    }
    w.add_tensor("output_norm.weight", vec![d as u64], GgmlType::F32, ones(d));
    Ok(w)
}
