//! Quality of the 8-bit decode activations (docs/COMPAT.md, "8-bit decode and prompt activations"):
//! teacher-forced one-token decode over the perplexity text, each token through the decode
//! path, with the default (int8) and `f32` activations. Slow (opt-in: ALPACA_SLOW_TESTS=1):
//! 2 x 512 decode steps per model file present in the model cache.

mod common;
use common::*;

use alpaca::infer::perplexity::nll;
use alpaca::model::int8_decode::ActMode;

/// Perplexity of `tokens[1..]` given the previous tokens, one decode step per token.
fn decode_ppl(engine: &alpaca::infer::Engine, tokens: &[u32]) -> f64 {
    let mut cache = engine.model.new_cache(tokens.len());
    let mut sum = 0f64;
    for w in tokens.windows(2) {
        let logits = engine
            .model
            .forward(&w[..1], &mut cache, 1)
            .expect("forward");
        sum += nll(&logits, w[1] as usize);
    }
    (sum / (tokens.len() - 1) as f64).exp()
}

#[test]
fn int8_decode_perplexity_is_within_half_a_percent_of_f32() {
    if !slow() {
        eprintln!("note: skipping, set ALPACA_SLOW_TESTS=1");
        return;
    }
    let Some(text) = ppl_text() else { return };
    for file in [
        "SmolLM2-135M-Instruct.q8_0.gguf",
        "SmolLM2-135M-Instruct.q4_k_m.gguf",
    ] {
        let Some(mut engine) = cached_model(file, "alpaca export --quant q8_0") else {
            continue;
        };
        let tokens = engine.tokenizer.encode(&text, false).expect("encode");
        let tokens = &tokens[..512.min(tokens.len())];
        let f32_ppl = decode_ppl(&engine, tokens);
        engine.model.set_act_mode(ActMode::Int8);
        let int8_ppl = decode_ppl(&engine, tokens);
        eprintln!(
            "{file}: decode perplexity over 511 tokens: f32 {f32_ppl:.4}, int8 {int8_ppl:.4}"
        );
        assert!(
            (int8_ppl / f32_ppl - 1.0).abs() < 0.005,
            "{file}: int8 {int8_ppl} vs f32 {f32_ppl}"
        );
    }
}
