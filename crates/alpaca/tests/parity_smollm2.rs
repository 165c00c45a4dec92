//! The engine against Hugging Face transformers on the real default model.
//!
//! Fixtures come from `scripts/ref_greedy.py` and `scripts/ref_perplexity.py`, which run
//! transformers on the same GGUF (dequantized to f32). Skips with a note when the default
//! model is not in the cache (`scripts/fetch-model.sh` puts it there).

mod common;

use common::*;

use alpaca::infer::Engine;

fn model() -> Option<Engine> {
    cached_model(alpaca::assets::DEFAULT_MODEL_FILE, "scripts/fetch-model.sh")
}

/// Greedy 64 new tokens equal transformers' token for token on 4 prompts (Alpaca, ChatML,
/// code, non-ASCII).
#[test]
fn greedy_64_tokens_match_transformers() {
    let Some(engine) = model() else { return };
    let fx = fixture("greedy_smollm2.json");
    for case in fx["cases"].as_array().expect("cases") {
        let n = case["output_ids"].as_array().expect("ids").len();
        assert_greedy_case(&engine, case, n);
    }
}

/// Perplexity with windows of 512 equals transformers' on the same windows (within 0.5%;
/// in practice to 4 decimals). The first two windows run by default; all eight with
/// ALPACA_SLOW_TESTS=1.
#[test]
fn perplexity_matches_transformers() {
    let Some(engine) = model() else { return };
    let Some(text) = ppl_text() else { return };
    let fx = fixture("perplexity_smollm2.json");
    assert_eq!(
        text.chars().count() as u64,
        fx["text_chars"].as_u64().expect("chars")
    );
    let tokens = engine.tokenizer.encode(&text, false).expect("encode");
    assert_eq!(
        tokens.len() as u64,
        fx["n_text_tokens"].as_u64().expect("n")
    );
    let running: Vec<f64> = fx["ppl_running_by_window"]
        .as_array()
        .expect("running")
        .iter()
        .map(|v| v.as_f64().expect("f"))
        .collect();
    let windows = if std::env::var_os("ALPACA_SLOW_TESTS").is_some() {
        0
    } else {
        2
    };
    let mut seen = Vec::new();
    let p = alpaca::infer::perplexity::perplexity(
        &engine.model,
        &tokens,
        512,
        None,
        windows,
        &mut |p| seen.push(p.value()),
    )
    .expect("perplexity");
    for (i, (ours, theirs)) in seen.iter().zip(&running).enumerate() {
        let rel = (ours - theirs).abs() / theirs;
        assert!(
            rel < 0.005,
            "window {}: {ours} vs transformers {theirs}",
            i + 1
        );
    }
    if windows == 0 {
        assert_eq!(p.count as u64, fx["n_scored"].as_u64().expect("n"));
    }
}
