//! Fresh (randomly initialized) models: tiny LLaMA and Gemma 3 files for tests and fixtures, written as
//! real GGUF so that every test exercises the same loader users do.

use crate::error::Result;
use crate::model::gemma3::Gemma3Config;
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
        random_matrix(&mut rng, w, name, rows, cols, ty)
    };
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

/// A random `rows x cols` matrix in type `ty` added to `w`: sum of 4 uniforms per weight
/// (cheap, roughly normal, std ~ 0.58 * 0.08).
fn random_matrix(
    rng: &mut Rng,
    w: &mut GgufWriter,
    name: &str,
    rows: usize,
    cols: usize,
    ty: GgmlType,
) {
    let x: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let s: f32 = (0..4).map(|_| rng.next_f32() - 0.5).sum();
            s * 0.08
        })
        .collect();
    let bytes: Vec<u8> = x
        .chunks_exact(cols)
        .flat_map(|r| quantize_row(ty, r).expect("fresh models use quantizable types"))
        .collect();
    w.add_tensor(name, vec![cols as u64, rows as u64], ty, bytes);
}

/// `n` f32 ones, as tensor bytes (norm weights).
fn ones(n: usize) -> Vec<u8> {
    (0..n).flat_map(|_| 1f32.to_le_bytes()).collect()
}

/// A tiny Gemma 3 config over `vocab_size` tokens: 6 layers (the last one global), a
/// sliding window of 4 positions so short tests cross it.
pub fn tiny_gemma3_config(vocab_size: usize) -> Gemma3Config {
    let n_layers = 6;
    Gemma3Config {
        n_layers,
        dim: 64,
        ffn_dim: 128,
        n_heads: 4,
        n_kv_heads: 1,
        head_dim: 32,
        vocab_size,
        context_length: 256,
        rms_eps: 1e-6,
        rope_base_global: 1e6,
        rope_base_local: 10000.0,
        sliding_window: 4,
        global_layers: (0..n_layers).map(|i| (i + 1) % 6 == 0).collect(),
        attn_scale: 1.0 / (32f32).sqrt(),
        attn_softcap: None,
        final_softcap: None,
    }
}

/// Build a GGUF of a Gemma 3 with random weights in type `ty` (norms F32: ones, QK-norms
/// too), with the given tokenizer. The layer pattern is written as llama.cpp's per-layer
/// `attention.sliding_window_pattern` (true = sliding); the attention scale is the
/// loader's (`head_dim^-0.5`).
pub fn random_gemma3_gguf(
    cfg: &Gemma3Config,
    tok: &TokenizerParts,
    ty: GgmlType,
    seed: u64,
) -> Result<GgufWriter> {
    cfg.validate()?;
    let mut rng = Rng::new(seed);
    let mut w = GgufWriter::new();
    let a = "gemma3";
    let u = |n: usize| Value::U32(n as u32);
    w.set("general.architecture", Value::String(a.into()));
    w.set("general.name", Value::String("tiny-random-gemma3".into()));
    w.set(format!("{a}.block_count"), u(cfg.n_layers));
    w.set(format!("{a}.context_length"), u(cfg.context_length));
    w.set(format!("{a}.embedding_length"), u(cfg.dim));
    w.set(format!("{a}.feed_forward_length"), u(cfg.ffn_dim));
    w.set(format!("{a}.attention.head_count"), u(cfg.n_heads));
    w.set(format!("{a}.attention.head_count_kv"), u(cfg.n_kv_heads));
    w.set(format!("{a}.attention.key_length"), u(cfg.head_dim));
    w.set(format!("{a}.attention.value_length"), u(cfg.head_dim));
    w.set(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_eps),
    );
    w.set(
        format!("{a}.rope.freq_base"),
        Value::F32(cfg.rope_base_global),
    );
    w.set(
        format!("{a}.rope.freq_base_swa"),
        Value::F32(cfg.rope_base_local),
    );
    w.set(
        format!("{a}.attention.sliding_window"),
        u(cfg.sliding_window),
    );
    let pattern = cfg.global_layers.iter().map(|&g| Value::Bool(!g)).collect();
    w.set(
        format!("{a}.attention.sliding_window_pattern"),
        Value::Array(7, pattern),
    );
    if let Some(cap) = cfg.final_softcap {
        w.set(format!("{a}.final_logit_softcapping"), Value::F32(cap));
    }
    if let Some(cap) = cfg.attn_softcap {
        w.set(format!("{a}.attn_logit_softcapping"), Value::F32(cap));
    }
    w.set(format!("{a}.vocab_size"), u(cfg.vocab_size));
    tok.write_gguf(&mut w);

    let (d, f, hd) = (cfg.dim, cfg.ffn_dim, cfg.head_dim);
    let norm = |w: &mut GgufWriter, name: String, n: usize| {
        w.add_tensor(name, vec![n as u64], GgmlType::F32, ones(n))
    };
    random_matrix(&mut rng, &mut w, "token_embd.weight", cfg.vocab_size, d, ty);
    for i in 0..cfg.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        norm(&mut w, p("attn_norm"), d);
        random_matrix(&mut rng, &mut w, &p("attn_q"), cfg.q_dim(), d, ty);
        random_matrix(&mut rng, &mut w, &p("attn_k"), cfg.kv_dim(), d, ty);
        random_matrix(&mut rng, &mut w, &p("attn_v"), cfg.kv_dim(), d, ty);
        norm(&mut w, p("attn_q_norm"), hd);
        norm(&mut w, p("attn_k_norm"), hd);
        random_matrix(&mut rng, &mut w, &p("attn_output"), d, cfg.q_dim(), ty);
        norm(&mut w, p("post_attention_norm"), d);
        norm(&mut w, p("ffn_norm"), d);
        random_matrix(&mut rng, &mut w, &p("ffn_gate"), f, d, ty);
        random_matrix(&mut rng, &mut w, &p("ffn_up"), f, d, ty);
        random_matrix(&mut rng, &mut w, &p("ffn_down"), d, f, ty);
        norm(&mut w, p("post_ffw_norm"), d);
    }
    norm(&mut w, "output_norm.weight".into(), d);
    Ok(w)
}
