//! Token ids of our tokenizer against reference fixtures made by Hugging Face `tokenizers`
//! / `transformers` from the same GGUF files (`scripts/ref_tokenizer.py`,
//! `scripts/ref_tokenizer_gemma.py`, `scripts/ref_tokenizer_pretok.py`).
//!
//! The models are not in the repository: each test skips with a note when its GGUF is not
//! in the model cache (`$ALPACA_MODELS`, default `~/.cache/alpaca/models`).

use std::path::PathBuf;
use std::time::Instant;

use alpaca::model::gguf::Gguf;
use alpaca::tokenizer::{StreamDecoder, Tokenizer, TokenizerParts};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// The model cache (`$ALPACA_MODELS`, else `~/.cache/alpaca/models`).
fn default_model_dir() -> Option<PathBuf> {
    Some(alpaca::assets::models_dir())
}

/// The path of model `name` if the file is there; otherwise prints why the test skips.
fn default_model_path(name: &str) -> Option<PathBuf> {
    let p = default_model_dir()?.join(name);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "note: skipping, {} not found (run scripts/fetch-model.sh or set ALPACA_MODELS)",
            p.display()
        );
        None
    }
}

struct Case {
    text: String,
    ids: Vec<u32>,
}

fn read_fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&raw).expect("fixture is JSON")
}

fn load_fixture(name: &str) -> Vec<Case> {
    let v = read_fixture(name);
    parse_cases(v.get("cases").unwrap_or(&v))
}

fn parse_cases(v: &serde_json::Value) -> Vec<Case> {
    v.as_array()
        .expect("fixture holds an array of cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            ids: c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect(),
        })
        .collect()
}

/// Compare every case; report all mismatches at once. Returns the number that matched.
fn check_parity(tok: &Tokenizer, cases: &[Case]) -> usize {
    let mut bad = Vec::new();
    for c in cases {
        let ids = tok.encode(&c.text, true).expect("encode");
        if ids != c.ids {
            bad.push(format!(
                "{:?}\n  ours: {:?}\n  ref:  {:?}",
                c.text, ids, c.ids
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
    cases.len()
}

/// Decoding the ids of a text gives the text back, whole or streamed token by token.
fn check_round_trip(tok: &Tokenizer, cases: &[Case]) {
    for c in cases {
        let full = tok.decode(&c.ids, false);
        let mut d = StreamDecoder::new(tok, false);
        let mut streamed: String = c.ids.iter().map(|&id| d.push(id)).collect();
        streamed.push_str(&d.finish());
        assert_eq!(full, c.text);
        assert_eq!(streamed, c.text);
    }
}

/// Encoding 20k characters must take far below 100 ms: a mixed text, and the worst cases
/// for the merge loop and the regex (one 20k-letter CJK word, 20k spaces before a letter).
/// Returns the slowest time in ms.
fn time_20k(tok: &Tokenizer) -> f64 {
    let unit = "The quick brown fox, jumps over 13 lazy dogs! Café naïve — 日本語の文章 😀\n\tdef f(x): return x**2\n";
    let mixed = unit.repeat(20_000 / unit.chars().count() + 1);
    let cjk = "日本語の文章も少し書きます".repeat(20_000 / 13);
    let spaces = " ".repeat(20_000) + "x";
    let mut worst = 0.0f64;
    for (name, text) in [("mixed", mixed), ("cjk", cjk), ("spaces", spaces)] {
        let _ = tok.encode(&text, false).expect("encode");
        let t0 = Instant::now();
        let ids = tok.encode(&text, false).expect("encode");
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "encode {name}: {} chars -> {} tokens in {ms:.2} ms",
            text.chars().count(),
            ids.len()
        );
        assert_eq!(tok.decode(&ids, false), text);
        worst = worst.max(ms);
    }
    worst
}

#[test]
fn smollm2_matches_reference() {
    let Some(path) = default_model_path(SMOLLM2) else {
        return;
    };
    let g = Gguf::open(&path).expect("open model");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let cases = load_fixture("tokenizer_smollm2.json");
    assert!(cases.len() >= 100);
    let n = check_parity(&tok, &cases);
    eprintln!("smollm2: {n}/{n} texts match the reference ids");
    check_round_trip(&tok, &cases);

    assert_eq!(tok.eos_id(), Some(2));
    assert!(tok.eot_ids().contains(&2) && tok.eot_ids().contains(&0));
    assert!(!tok.add_bos());
    assert!(time_20k(&tok) < 100.0);
}

/// The LLaMA-3 and Qwen2 pre-tokenizers on the SmolLM2 vocabulary (no small model of either
/// family is at hand; this pins the regexes and LLaMA-3's whole-word lookup).
#[test]
fn llama3_and_qwen2_pretokenizers_match_reference() {
    let Some(path) = default_model_path(SMOLLM2) else {
        return;
    };
    let g = Gguf::open(&path).expect("open model");
    let v = read_fixture("tokenizer_pretok_variants.json");
    for pre in ["llama-bpe", "qwen2"] {
        let mut parts = TokenizerParts::from_gguf(&g).expect("parts");
        parts.pre = Some(pre.to_string());
        let tok = Tokenizer::from_parts(parts).expect("tokenizer");
        let cases = parse_cases(&v["variants"][pre]);
        let n = check_parity(&tok, &cases);
        eprintln!("{pre}: {n}/{n} texts match the reference ids");
        check_round_trip(&tok, &cases);
    }
}

#[test]
fn gemma3_matches_reference() {
    let Some(path) = default_model_path(GEMMA3) else {
        return;
    };
    let g = Gguf::open(&path).expect("open model");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let cases = load_fixture("tokenizer_gemma3.json");
    let n = check_parity(&tok, &cases);
    eprintln!("gemma3: {n}/{n} texts match the reference ids");
    check_round_trip(&tok, &cases);

    assert_eq!(tok.vocab_size(), 262_144);
    assert!(tok.add_bos());
    let eot = tok.token_id("<end_of_turn>").expect("<end_of_turn>");
    assert!(tok.eot_ids().contains(&eot));
    assert!(time_20k(&tok) < 100.0);
}
