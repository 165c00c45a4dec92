//! Reading a Hugging Face model directory (config.json, *.safetensors, tokenizer.json) into
//! an in-memory GGUF, so every loader path is the GGUF path.
//!
//! Supported: `LlamaForCausalLM` (SmolLM, LLaMA 1/2/3 without RoPE scaling, Mistral without
//! sliding window) with a byte-level BPE `tokenizer.json`; weights in F32, F16 or BF16, in
//! `model.safetensors` or shards listed by `model.safetensors.index.json`. The conversion
//! is llama.cpp's `convert_hf_to_gguf.py` for these models: the same metadata keys and
//! tensor names, q/k rows permuted for adjacent-pair RoPE, norms in F32, matrices in their
//! stored type, a tied output head left out.
//!
//! The tensor-name table and the config mapping are shared with the writer
//! ([`crate::export::hf`]), so both directions agree by construction.

pub mod tokenizer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::model::gguf::{Gguf, GgufWriter, Value};
use crate::model::llama::LlamaConfig;
use crate::model::quant::{quantize_row, GgmlType};
use crate::model::{detect_format, ModelFormat};
use crate::train::checkpoint::read_safetensors;
use crate::train::export::permute_rows;

/// Open a model path of either format: a GGUF file (memory-mapped) or a Hugging Face
/// directory (converted in memory by [`load_hf_dir`]).
pub fn open_model(path: &Path) -> Result<Gguf> {
    match detect_format(path)? {
        ModelFormat::Gguf => Gguf::open(path),
        ModelFormat::HfDir => load_hf_dir(path),
    }
}

/// Per-layer tensors: GGUF name (after `blk.N.`) and HF name (after `model.layers.N.`).
pub const LAYER_TENSORS: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Whole-model tensors: GGUF name and HF name.
pub const GLOBAL_TENSORS: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// The HF name of a GGUF tensor name (`blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`), for the LLaMA layout.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let base = name.strip_suffix(".weight")?;
    if let Some(rest) = base.strip_prefix("blk.") {
        let (layer, t) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let (_, hf) = LAYER_TENSORS.iter().find(|(g, _)| *g == t)?;
        return Some(format!("model.layers.{layer}.{hf}.weight"));
    }
    let (_, hf) = GLOBAL_TENSORS.iter().find(|(g, _)| *g == base)?;
    Some(format!("{hf}.weight"))
}

/// The GGUF name of an HF tensor name (inverse of [`gguf_to_hf_name`]).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    let base = name.strip_suffix(".weight")?;
    if let Some(rest) = base.strip_prefix("model.layers.") {
        let (layer, t) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let (g, _) = LAYER_TENSORS.iter().find(|(_, h)| *h == t)?;
        return Some(format!("blk.{layer}.{g}.weight"));
    }
    let (g, _) = GLOBAL_TENSORS.iter().find(|(_, h)| *h == base)?;
    Some(format!("{g}.weight"))
}

/// Rows x cols an HF tensor must have under `c`, and the heads whose rows are RoPE-permuted.
fn expected_shape(c: &LlamaConfig, gguf_name: &str) -> Option<(Vec<usize>, Option<usize>)> {
    let t = gguf_name.strip_suffix(".weight")?.rsplit('.').next()?;
    let (d, f, q, kv) = (c.dim, c.ffn_dim, c.q_dim(), c.kv_dim());
    Some(match t {
        "token_embd" | "output" => (vec![c.vocab_size, d], None),
        "attn_norm" | "ffn_norm" | "output_norm" => (vec![d], None),
        "attn_q" => (vec![q, d], Some(c.n_heads)),
        "attn_k" => (vec![kv, d], Some(c.n_kv_heads)),
        "attn_v" => (vec![kv, d], None),
        "attn_output" => (vec![d, q], None),
        "ffn_gate" | "ffn_up" => (vec![f, d], None),
        "ffn_down" => (vec![d, f], None),
        _ => return None,
    })
}

/// Read and parse a JSON file; a syntax error names the file and line.
pub(crate) fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        line: e.line(),
        reason: e.to_string(),
    })
}

/// A field of a JSON file is wrong: name the file and the field.
fn field_err(path: &Path, field: &str, reason: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: `{field}`: {reason}", path.display()))
}

/// The model shape described by an HF `config.json`, and whether the head is tied.
pub fn llama_config_from_hf(path: &Path, cfg: &Json) -> Result<(LlamaConfig, bool)> {
    let arch = cfg["architectures"][0].as_str().unwrap_or("");
    let model_type = cfg["model_type"].as_str().unwrap_or("");
    if arch != "LlamaForCausalLM" && model_type != "llama" {
        return Err(field_err(
            path,
            "architectures",
            format!(
                "`{arch}` (model_type `{model_type}`) is not supported; \
                 Hugging Face directories of LlamaForCausalLM load"
            ),
        ));
    }
    let req = |k: &str| -> Result<usize> {
        cfg[k]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| field_err(path, k, "missing or not a positive integer"))
    };
    let opt_usize = |k: &str| cfg[k].as_u64().map(|v| v as usize);
    let num = |k: &str, default: f64| -> Result<f64> {
        match &cfg[k] {
            Json::Null => Ok(default),
            v => v.as_f64().ok_or_else(|| field_err(path, k, "not a number")),
        }
    };
    if cfg["hidden_act"].as_str().is_some_and(|a| a != "silu") {
        return Err(field_err(path, "hidden_act", "only silu is supported"));
    }
    for k in ["attention_bias", "mlp_bias"] {
        if cfg[k] == true {
            return Err(field_err(path, k, "biases are not supported"));
        }
    }
    // transformers 5 moved rope settings into `rope_parameters`.
    let rope = match &cfg["rope_parameters"] {
        Json::Object(o) => Json::Object(o.clone()),
        _ => cfg["rope_scaling"].clone(),
    };
    let rope_type = rope["rope_type"]
        .as_str()
        .or(rope["type"].as_str())
        .unwrap_or("default");
    if rope_type != "default" {
        return Err(field_err(
            path,
            "rope_scaling",
            format!("RoPE scaling `{rope_type}` is not supported"),
        ));
    }
    let rope_base = match rope["rope_theta"].as_f64() {
        Some(t) => t,
        None => num("rope_theta", 10000.0)?,
    };
    let dim = req("hidden_size")?;
    let n_heads = req("num_attention_heads")?;
    if n_heads == 0 {
        return Err(field_err(path, "num_attention_heads", "is 0"));
    }
    let head_dim = opt_usize("head_dim").unwrap_or(dim / n_heads);
    let c = LlamaConfig {
        n_layers: req("num_hidden_layers")?,
        dim,
        ffn_dim: req("intermediate_size")?,
        n_heads,
        n_kv_heads: opt_usize("num_key_value_heads").unwrap_or(n_heads),
        head_dim,
        vocab_size: req("vocab_size")?,
        context_length: opt_usize("max_position_embeddings").unwrap_or(2048),
        rms_eps: num("rms_norm_eps", 1e-6)? as f32,
        rope_base: rope_base as f32,
        rope_dim: head_dim,
    };
    c.validate()
        .map_err(|e| field_err(path, "config", e.to_string()))?;
    // LlamaConfig's default is untied.
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    Ok((c, tied))
}

/// Write the `llama.*` hyperparameters of `c` (the keys [`LlamaConfig::from_gguf`] reads).
pub fn write_llama_keys(w: &mut GgufWriter, c: &LlamaConfig) {
    let u = |n: usize| Value::U32(n as u32);
    w.set("general.architecture", Value::String("llama".into()));
    w.set("llama.block_count", u(c.n_layers));
    w.set("llama.context_length", u(c.context_length));
    w.set("llama.embedding_length", u(c.dim));
    w.set("llama.feed_forward_length", u(c.ffn_dim));
    w.set("llama.attention.head_count", u(c.n_heads));
    w.set("llama.attention.head_count_kv", u(c.n_kv_heads));
    w.set("llama.attention.key_length", u(c.head_dim));
    w.set("llama.attention.value_length", u(c.head_dim));
    w.set(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(c.rms_eps),
    );
    w.set("llama.rope.freq_base", Value::F32(c.rope_base));
    w.set("llama.rope.dimension_count", u(c.rope_dim));
    w.set("llama.vocab_size", u(c.vocab_size));
}

/// The safetensors files of a directory: `model.safetensors`, else the shards of
/// `model.safetensors.index.json` (transformers' order of preference).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::ModelNotFound {
            path: dir.to_path_buf(),
            hint: "The directory has no model.safetensors or model.safetensors.index.json \
                   (PyTorch .bin weights are not read)."
                .into(),
        });
    }
    let j = read_json(&index)?;
    let map = j["weight_map"]
        .as_object()
        .ok_or_else(|| field_err(&index, "weight_map", "missing or not an object"))?;
    let mut files = BTreeSet::new();
    for (name, f) in map {
        let f = f
            .as_str()
            .filter(|f| !f.contains('/') && !f.contains('\\') && !f.starts_with('.'))
            .ok_or_else(|| field_err(&index, name, "not a file name in this directory"))?;
        files.insert(f.to_string());
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Read a Hugging Face model directory into an in-memory GGUF (see the module docs).
/// Every error names the file and the field or tensor at fault.
pub fn load_hf_dir(dir: &Path) -> Result<Gguf> {
    let cfg_path = dir.join("config.json");
    let cfg = read_json(&cfg_path)?;
    let (c, tied) = llama_config_from_hf(&cfg_path, &cfg)?;
    let id = |k: &str| cfg[k].as_u64().map(|v| v as u32);
    let eos = id("eos_token_id").or_else(|| cfg["eos_token_id"][0].as_u64().map(|v| v as u32));
    let tok = tokenizer::from_tokenizer_json(dir, c.vocab_size, id("bos_token_id"), eos)?;
    if tok.tokens.len() != c.vocab_size {
        return Err(field_err(
            &dir.join("tokenizer.json"),
            "model.vocab",
            format!(
                "{} tokens, but config.json has vocab_size {}",
                tok.tokens.len(),
                c.vocab_size
            ),
        ));
    }

    let mut w = GgufWriter::new();
    write_llama_keys(&mut w, &c);
    let name = cfg["_name_or_path"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    w.set("general.name", Value::String(name));
    w.set("general.type", Value::String("model".into()));
    tok.write_gguf(&mut w);

    // Tensors in GGUF order, whatever order the shards hold them in.
    let mut wanted: Vec<String> = vec!["token_embd.weight".into()];
    for i in 0..c.n_layers {
        wanted.extend(
            LAYER_TENSORS
                .iter()
                .map(|(g, _)| format!("blk.{i}.{g}.weight")),
        );
    }
    wanted.push("output_norm.weight".into());
    let mut found: BTreeMap<String, (GgmlType, Vec<u64>, Vec<u8>)> = BTreeMap::new();
    for file in weight_files(dir)? {
        let st = read_safetensors(&file)?;
        for (hf_name, (shape, vals)) in st.tensors {
            if hf_name.ends_with("rotary_emb.inv_freq") {
                continue; // recomputed from rope_theta
            }
            let Some(g_name) = hf_to_gguf_name(&hf_name) else {
                return Err(Error::Tensor {
                    name: hf_name,
                    reason: format!(
                        "in {}: not a LlamaForCausalLM tensor this loader knows",
                        file.display()
                    ),
                });
            };
            if g_name == "output.weight" && tied {
                continue; // tied: the loader uses token_embd
            }
            let (expect, rope_heads) = expected_shape(&c, &g_name)
                .ok_or_else(|| Error::Internal(format!("no shape rule for {g_name}")))?;
            if shape != expect {
                return Err(Error::Tensor {
                    name: hf_name,
                    reason: format!(
                        "in {}: shape {shape:?}, but config.json implies {expect:?}",
                        file.display()
                    ),
                });
            }
            let vals = match rope_heads {
                Some(h) => permute_rows(&vals, h, c.head_dim, shape[1]),
                None => vals,
            };
            let ty = match (shape.len(), st.dtypes.get(&hf_name).map(String::as_str)) {
                (1, _) | (_, Some("F32")) => GgmlType::F32,
                (_, Some("F16")) => GgmlType::F16,
                _ => GgmlType::BF16,
            };
            let bytes = quantize_row(ty, &vals)
                .ok_or_else(|| Error::Internal(format!("cannot encode {}", ty.name())))?;
            let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            found.insert(g_name, (ty, dims, bytes));
        }
    }
    if !tied {
        wanted.push("output.weight".into());
    }
    for g_name in &wanted {
        let Some((ty, dims, bytes)) = found.remove(g_name) else {
            let hf = gguf_to_hf_name(g_name).unwrap_or_else(|| g_name.clone());
            let hint = if g_name == "output.weight" {
                " (config.json says tie_word_embeddings = false)"
            } else {
                ""
            };
            return Err(Error::Tensor {
                name: hf,
                reason: format!("missing from the weights in {}{hint}", dir.display()),
            });
        };
        w.add_tensor(g_name.clone(), dims, ty, bytes);
    }
    if let Some(extra) = found.keys().next() {
        return Err(Error::Tensor {
            name: gguf_to_hf_name(extra).unwrap_or_else(|| extra.clone()),
            reason: format!(
                "layer beyond num_hidden_layers = {} in {}",
                c.n_layers,
                dir.display()
            ),
        });
    }
    let bytes = w.to_bytes();
    drop(w);
    Gguf::from_bytes(dir, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_map_both_ways() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
            "blk.0.attn_q.weight",
            "blk.29.ffn_down.weight",
            "blk.7.ffn_norm.weight",
        ] {
            let hf = gguf_to_hf_name(g).expect("mapped");
            assert_eq!(hf_to_gguf_name(&hf).as_deref(), Some(g));
        }
        assert_eq!(
            gguf_to_hf_name("blk.3.attn_output.weight").as_deref(),
            Some("model.layers.3.self_attn.o_proj.weight")
        );
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_to_gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }

    #[test]
    fn config_refuses_what_the_model_cannot_run() {
        let p = Path::new("config.json");
        let base = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 300, "rope_theta": 50000.0, "tie_word_embeddings": true
        });
        let (c, tied) = llama_config_from_hf(p, &base).expect("valid");
        assert_eq!((c.head_dim, c.rope_base, tied), (16, 50000.0, true));
        let mut v5 = base.clone();
        v5["rope_parameters"] = serde_json::json!({"rope_theta": 7.0, "rope_type": "default"});
        assert_eq!(
            llama_config_from_hf(p, &v5).expect("valid").0.rope_base,
            7.0
        );
        for (k, v) in [
            ("architectures", serde_json::json!(["GPT2LMHeadModel"])),
            ("rope_scaling", serde_json::json!({"rope_type": "llama3"})),
            ("hidden_act", serde_json::json!("gelu")),
            ("num_key_value_heads", serde_json::json!(3)),
            ("hidden_size", serde_json::Value::Null),
        ] {
            let mut bad = base.clone();
            bad[k] = v;
            if k == "architectures" {
                bad["model_type"] = serde_json::json!("gpt2");
            }
            let e = llama_config_from_hf(p, &bad).expect_err(k).to_string();
            assert!(e.contains("config.json"), "{e}");
        }
    }
}
