//! Helpers shared by the parity tests against reference fixtures (one copy for every model).
#![allow(dead_code)] // each test file uses a subset

use std::path::PathBuf;

use alpaca::infer::{Engine, GenParams};

/// Opt-in slow variants.
pub fn slow() -> bool {
    std::env::var_os("ALPACA_SLOW_TESTS").is_some()
}

/// Load `file` from the model cache on one thread, or print why the test skips.
pub fn cached_model(file: &str, fetch: &str) -> Option<Engine> {
    let p = alpaca::assets::models_dir().join(file);
    if !p.is_file() {
        eprintln!("note: skipping, {} not found (run {fetch})", p.display());
        return None;
    }
    // One thread: the suite runs tests in parallel on a small machine.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    let mut e = Engine::load(&p).expect("model loads");
    // Parity with transformers is an f32 comparison: no 8-bit decode activations.
    e.model
        .set_act_mode(alpaca::model::int8_decode::ActMode::F32);
    Some(e)
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let raw = std::fs::read_to_string(&path).expect("fixture exists");
    serde_json::from_str(&raw).expect("fixture is JSON")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Check one greedy fixture case: prompt ids, then the first `n_new` generated ids.
pub fn assert_greedy_case(engine: &Engine, case: &serde_json::Value, n_new: usize) {
    let name = case["name"].as_str().expect("name");
    let prompt = case["prompt"].as_str().expect("prompt");
    let want_prompt = ids(&case["prompt_ids"]);
    assert_eq!(
        engine.encode_prompt(prompt).expect("encode"),
        want_prompt,
        "{name}: prompt ids"
    );
    let want = &ids(&case["output_ids"])[..n_new];
    let params = GenParams {
        max_new_tokens: n_new,
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

/// The perplexity text of `scripts/make_ppl_text.py`: the `output` fields of the Alpaca demo
/// data, stripped, joined by blank lines until at least 20,000 characters.
pub fn ppl_text() -> Option<String> {
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
