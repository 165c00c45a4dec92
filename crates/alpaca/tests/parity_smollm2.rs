//! The engine against Hugging Face transformers on the real default model.
//!
//! Fixtures come from `scripts/ref_greedy.py` and `scripts/ref_perplexity.py`, which run
//! transformers on the same GGUF (dequantized to f32). Skips with a note when the default
//! model is not in the cache (`scripts/fetch-model.sh` puts it there).

use std::path::PathBuf;

use alpaca::infer::{Engine, GenParams};

fn model() -> Option<Engine> {
    let p = alpaca::assets::default_model_path();
    if !p.is_file() {
        eprintln!(
            "note: skipping, {} not found (run scripts/fetch-model.sh)",
            p.display()
        );
        return None;
    }
    // One thread: the suite runs tests in parallel on a small machine.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    Some(Engine::load(&p).expect("default model loads"))
}

fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let raw = std::fs::read_to_string(&path).expect("fixture exists");
    serde_json::from_str(&raw).expect("fixture is JSON")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Greedy 64 new tokens equal transformers' token for token on 4 prompts (Alpaca, ChatML,
/// code, non-ASCII).
#[test]
fn greedy_64_tokens_match_transformers() {
    let Some(engine) = model() else { return };
    let fx = fixture("greedy_smollm2.json");
    for case in fx["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let prompt = case["prompt"].as_str().expect("prompt");
        let want_prompt = ids(&case["prompt_ids"]);
        assert_eq!(
            engine.encode_prompt(prompt).expect("encode"),
            want_prompt,
            "{name}: prompt ids"
        );
        let want = ids(&case["output_ids"]);
        let params = GenParams {
            max_new_tokens: want.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let got = engine
            .generate(&want_prompt, &params, &mut |_| {
                std::ops::ControlFlow::Continue(())
            })
            .expect("generate");
        assert_eq!(got.ids, want, "{name}: greedy ids differ");
    }
}

/// The perplexity text of `scripts/make_ppl_text.py`: the `output` fields of the Alpaca demo
/// data, stripped, joined by blank lines until at least 20,000 characters.
fn ppl_text() -> Option<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/alpaca_en_demo.json");
    let Ok(raw) = std::fs::read_to_string(&path) else {
        eprintln!("note: skipping, {} not found", path.display());
        return None;
    };
    let rows: Vec<serde_json::Value> = serde_json::from_str(&raw).expect("demo data is JSON");
    let mut parts: Vec<&str> = Vec::new();
    for r in &rows {
        let out = r["output"].as_str().expect("output").trim();
        if out.is_empty() {
            continue;
        }
        parts.push(out);
        if parts.join("\n\n").chars().count() >= 20_000 {
            break;
        }
    }
    Some(parts.join("\n\n"))
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
