//! Hugging Face `tokenizer.json` + `tokenizer_config.json` <-> GGUF tokenizer parts.
//!
//! Only byte-level BPE vocabularies (GGUF `tokenizer.ggml.model = gpt2`: SmolLM, LLaMA-3,
//! Qwen2, GPT-2) are converted. The pre-tokenizer is the one thing that must be named
//! exactly: each supported GGUF `tokenizer.ggml.pre` has one Hugging Face pipeline, written
//! by [`to_tokenizer_json`] and recognized by [`from_tokenizer_json`]; anything else is
//! refused rather than guessed (a wrong split silently changes every id).
//!
//! Token types follow llama.cpp's converter: added tokens marked `special` are control
//! tokens (type 3), other added tokens user-defined (type 4), vocabulary holes unused (5).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::read_json;
use crate::error::{Error, Result};
use crate::tokenizer::{TokenType, TokenizerParts};

/// HF's spelling of the LLaMA-3 split regex (`llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// HF's spelling of the Qwen2 split regex.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
           "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
           "invert": false})
}

/// The HF pre-tokenizer (and normalizer) of a GGUF `tokenizer.ggml.pre` name.
fn pre_tokenizer_json(pre: &str) -> Result<(Value, Value)> {
    Ok(match pre {
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            Value::Null,
        ),
        "default" | "gpt-2" | "gpt2" => (byte_level(true), Value::Null),
        "llama-bpe" | "llama3" | "llama-v3" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            Value::Null,
        ),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            json!({"type": "NFC"}),
        ),
        other => {
            return Err(Error::Tokenizer(format!(
                "no Hugging Face pre-tokenizer for `tokenizer.ggml.pre = {other}`"
            )))
        }
    })
}

/// Recognize the GGUF pre-tokenizer name of an HF `pre_tokenizer` object.
fn detect_pre(pre: &Value) -> Option<&'static str> {
    let items: Vec<&Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"].as_array()?.iter().collect(),
        Some(_) => vec![pre],
        None => return None,
    };
    let ty = |v: &Value| v["type"].as_str().unwrap_or("").to_string();
    let kinds: Vec<String> = items.iter().map(|v| ty(v)).collect();
    let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    let bl = items.iter().find(|v| v["type"] == "ByteLevel")?;
    let bl_regex = bl["use_regex"].as_bool().unwrap_or(true);
    if bl["add_prefix_space"].as_bool().unwrap_or(false) {
        return None;
    }
    match kinds[..] {
        ["ByteLevel"] if bl_regex => Some("gpt2"),
        ["Digits", "ByteLevel"] if bl_regex && items[0]["individual_digits"] == true => {
            Some("smollm")
        }
        ["Split", "ByteLevel"] if !bl_regex => {
            let re = items[0]["pattern"]["Regex"].as_str()?;
            if re == LLAMA3_REGEX {
                Some("llama-bpe")
            } else if re == QWEN2_REGEX {
                Some("qwen2")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Build `tokenizer.json` from GGUF parts (byte-level BPE only).
pub fn to_tokenizer_json(p: &TokenizerParts) -> Result<Value> {
    if p.model != "gpt2" {
        return Err(Error::Tokenizer(format!(
            "writing tokenizer.json supports byte-level BPE vocabularies \
             (`tokenizer.ggml.model = gpt2`), not `{}`",
            p.model
        )));
    }
    let pre = p.pre.as_deref().unwrap_or("default");
    let (pre_tokenizer, normalizer) = pre_tokenizer_json(pre)?;
    let ty = |i: usize| p.token_types.get(i).copied().unwrap_or(TokenType::Normal);
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, t) in p.tokens.iter().enumerate() {
        // Duplicates (a converter bug) keep the first id, as our tokenizer does.
        if !vocab.contains_key(t) {
            vocab.insert(t.clone(), json!(i));
        }
        let special = match ty(i) {
            TokenType::Control => true,
            TokenType::UserDefined => false,
            _ => continue,
        };
        added.push(
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": special}),
        );
    }
    let name = |id: Option<u32>| id.and_then(|i| p.tokens.get(i as usize)).cloned();
    let post = match (p.add_bos, name(p.bos_id)) {
        (true, Some(bos)) => {
            let id = p.bos_id.unwrap_or(0);
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.clone(): {"id": bos, "ids": [id], "tokens": [bos]}}})
        }
        _ => json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                    "use_regex": true}),
    };
    let llama3 = matches!(pre, "llama-bpe" | "llama3" | "llama-v3");
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": name(p.unk_id),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": llama3,
            "vocab": vocab, "merges": p.merges,
        }
    }))
}

/// Build `tokenizer_config.json` (special tokens, BOS policy, chat template).
pub fn to_tokenizer_config(p: &TokenizerParts, context_length: usize) -> Value {
    let name = |id: Option<u32>| id.and_then(|i| p.tokens.get(i as usize)).cloned();
    let mut c = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": p.add_bos,
        "add_eos_token": p.add_eos,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": context_length,
        "bos_token": name(p.bos_id),
        "eos_token": name(p.eos_id),
        "unk_token": name(p.unk_id),
        "pad_token": name(p.pad_id),
    });
    if let Some(t) = &p.chat_template {
        c["chat_template"] = json!(t);
    }
    c
}

/// A field of a JSON file is wrong: name the file and the field.
fn bad(path: &Path, field: &str, reason: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: `{field}`: {reason}", path.display()))
}

/// Read `dir/tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`) into GGUF
/// tokenizer parts. `vocab_size` (from config.json) pads the vocabulary with unused tokens
/// when the embedding matrix is larger than the tokenizer, as llama.cpp's converter does.
/// `eos_fallback` is config.json's `eos_token_id` when tokenizer_config.json names none.
pub fn from_tokenizer_json(
    dir: &Path,
    vocab_size: usize,
    bos_fallback: Option<u32>,
    eos_fallback: Option<u32>,
) -> Result<TokenizerParts> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(Error::Tokenizer(format!(
            "{} is missing: a Hugging Face model directory needs it \
             (a SentencePiece tokenizer.model alone is not read)",
            path.display()
        )));
    }
    let tj = read_json(&path)?;
    let model = &tj["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == true {
        return Err(bad(
            &path,
            "model.type",
            "only byte-level BPE tokenizers (GPT-2 style) are supported",
        ));
    }
    let pre = detect_pre(&tj["pre_tokenizer"]).ok_or_else(|| {
        bad(
            &path,
            "pre_tokenizer",
            format!(
                "unsupported pre-tokenizer {} (supported: the SmolLM, GPT-2, LLaMA-3 and \
                 Qwen2 pipelines)",
                tj["pre_tokenizer"]
            ),
        )
    })?;
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad(&path, "model.vocab", "not an object"))?;
    let mut by_id: HashMap<usize, (String, TokenType)> = HashMap::new();
    for (t, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            bad(
                &path,
                "model.vocab",
                format!("id of `{t}` is not an integer"),
            )
        })?;
        by_id.insert(id as usize, (t.clone(), TokenType::Normal));
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad(&path, "added_tokens", format!("bad entry {a}")));
        };
        let ty = if a["special"] == true {
            TokenType::Control
        } else {
            TokenType::UserDefined
        };
        by_id.insert(id as usize, (content.to_string(), ty));
    }
    let n = by_id.keys().max().map_or(0, |m| m + 1).max(vocab_size);
    if n > 10_000_000 {
        return Err(bad(
            &path,
            "model.vocab",
            format!("id {n} is implausibly large"),
        ));
    }
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        match by_id.remove(&i) {
            Some((t, ty)) => {
                tokens.push(t);
                types.push(ty);
            }
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(TokenType::Unused);
            }
        }
    }
    let mut merges = Vec::new();
    for m in model["merges"].as_array().into_iter().flatten() {
        let line = match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => match (pair.first(), pair.get(1)) {
                (Some(Value::String(a)), Some(Value::String(b))) if pair.len() == 2 => {
                    format!("{a} {b}")
                }
                _ => return Err(bad(&path, "model.merges", format!("bad merge {m}"))),
            },
            _ => return Err(bad(&path, "model.merges", format!("bad merge {m}"))),
        };
        merges.push(line);
    }

    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() {
        read_json(&cfg_path)?
    } else {
        json!({})
    };
    let index: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let special = |field: &str| -> Result<Option<u32>> {
        let v = &cfg[field];
        let s = match v {
            Value::Null => return Ok(None),
            Value::String(s) => s.as_str(),
            Value::Object(o) => o.get("content").and_then(|c| c.as_str()).unwrap_or(""),
            _ => return Err(bad(&cfg_path, field, "not a string")),
        };
        index
            .get(s)
            .copied()
            .map(Some)
            .ok_or_else(|| bad(&cfg_path, field, format!("`{s}` is not in the vocabulary")))
    };
    // The post-processor of LLaMA-3-style tokenizers adds BOS; so does `add_bos_token`.
    let post = &tj["post_processor"];
    let post_adds_bos = post["type"] == "TemplateProcessing"
        && post["single"]
            .as_array()
            .and_then(|s| s.first())
            .is_some_and(|f| f.get("SpecialToken").is_some());
    let add_bos = cfg["add_bos_token"].as_bool().unwrap_or(false) || post_adds_bos;
    let mut chat_template = match &cfg["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    };
    let jinja = dir.join("chat_template.jinja");
    if chat_template.is_none() && jinja.is_file() {
        chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
    }
    let unk = match model["unk_token"].as_str() {
        Some(s) => index.get(s).copied(),
        None => None,
    };
    let bos_id = special("bos_token")?.or(bos_fallback);
    let eos_id = special("eos_token")?.or(eos_fallback);
    let unk_id = special("unk_token")?.or(unk);
    let pad_id = special("pad_token")?;
    drop(index);
    Ok(TokenizerParts {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: types,
        scores: Vec::new(),
        merges,
        bos_id,
        eos_id,
        unk_id,
        pad_id,
        add_bos,
        add_eos: cfg["add_eos_token"].as_bool().unwrap_or(false),
        add_space_prefix: false,
        chat_template,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tiny_test_vocab;

    #[test]
    fn tokenizer_json_round_trips_every_pre_tokenizer() {
        for pre in ["smollm", "gpt2", "llama-bpe", "qwen2"] {
            let dir =
                std::env::temp_dir().join(format!("alpaca-hftok-{pre}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let mut p = tiny_test_vocab();
            p.pre = Some(pre.into());
            p.add_bos = pre == "llama-bpe";
            p.chat_template = Some("{{ messages }}".into());
            let tj = to_tokenizer_json(&p).expect("json");
            std::fs::write(dir.join("tokenizer.json"), tj.to_string()).expect("write");
            let tc = to_tokenizer_config(&p, 256);
            std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).expect("write");
            let q = from_tokenizer_json(&dir, p.tokens.len(), None, None).expect("read");
            assert_eq!(
                q.pre.as_deref(),
                Some(if pre == "gpt2" { "gpt2" } else { pre })
            );
            assert_eq!(q.tokens, p.tokens);
            assert_eq!(q.token_types, p.token_types);
            assert_eq!(q.merges, p.merges);
            assert_eq!(
                (q.bos_id, q.eos_id, q.unk_id, q.pad_id),
                (p.bos_id, p.eos_id, p.unk_id, p.pad_id)
            );
            assert_eq!(q.add_bos, p.add_bos);
            assert_eq!(q.chat_template, p.chat_template);
            // A larger embedding pads the vocabulary with unused tokens.
            let q = from_tokenizer_json(&dir, p.tokens.len() + 2, None, None).expect("read");
            assert_eq!(q.tokens.len(), p.tokens.len() + 2);
            assert_eq!(q.token_types.last(), Some(&TokenType::Unused));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn unknown_pre_tokenizers_and_models_are_refused() {
        assert_eq!(detect_pre(&json!({"type": "Metaspace"})), None);
        assert_eq!(
            detect_pre(&json!({"type": "Sequence", "pretokenizers": [
                split("\\s+"), byte_level(false)]})),
            None
        );
        let mut p = tiny_test_vocab();
        p.model = "llama".into();
        assert!(to_tokenizer_json(&p).is_err());
        p.model = "gpt2".into();
        p.pre = Some("falcon".into());
        assert!(to_tokenizer_json(&p).is_err());
    }
}
