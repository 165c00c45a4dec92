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
