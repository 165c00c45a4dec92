//! Writing a Hugging Face model directory (config.json, model.safetensors, tokenizer.json,
//! generation_config.json) from a model in GGUF layout.
//!
//! The inverse of [`crate::model::hf::load_hf_dir`]: GGUF names become `LlamaForCausalLM`
//! names, q/k rows are un-permuted to rotate-half order, quantized tensors are dequantized
//! (to F32, or rounded to F16/BF16 on request), and `tokenizer.json` is rebuilt from the
//! GGUF vocabulary so that Hugging Face `tokenizers` produces our ids.
//!
//! Output directory policy: a missing or empty directory is written; a non-empty one only
//! with `force`. Every file is written through a temporary file and a rename, so a failure
//! (a full disk) never leaves a half-written file behind, and a file that was there stays
//! whole until its replacement is complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};
use crate::model::gguf::Gguf;
use crate::model::hf::{gguf_to_hf_name, tokenizer};
use crate::model::llama::LlamaConfig;
use crate::model::quant::dequantize_row;
use crate::tokenizer::TokenizerParts;
use crate::train::checkpoint::{write_safetensors_as, StDtype, TensorRef};
use crate::train::export::{hf_config, unpermute_rows};

/// What [`write_hf_dir`] wrote.
#[derive(Debug, Clone)]
pub struct HfSummary {
    pub dir: PathBuf,
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    pub n_tensors: usize,
    /// Total weights written.
    pub n_params: usize,
    pub dtype: StDtype,
    /// Whether the output head is tied to the embeddings (no `lm_head.weight`).
    pub tied: bool,
}

/// Refuse a non-empty output directory unless `force`; create it if missing.
pub fn prepare_out_dir(out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not a directory",
                out.display()
            )));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() && !force {
            return Err(Error::InvalidArgument(format!(
                "output directory {} exists and is not empty; pass --force to overwrite \
                 its files",
                out.display()
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))
}

/// Write `v` as pretty JSON to `path`, atomically.
pub(crate) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    text.push('\n');
    crate::model::gguf::write_atomic(path, text.as_bytes())
}

/// Every weight of a GGUF tensor as f32, rows in file order.
pub fn dequantize_tensor(g: &Gguf, name: &str) -> Result<Vec<f32>> {
    let t = g.tensor(name).ok_or_else(|| Error::Tensor {
        name: name.into(),
        reason: format!("missing from {}", g.path.display()),
    })?;
    if !t.ty.is_supported_weight() {
        return Err(Error::UnsupportedType {
            name: name.into(),
            ty: t.ty.name().into(),
        });
    }
    let cols = t.dims[0] as usize;
    let n = t.n_elements() as usize;
    let mut out = vec![0f32; n];
    let data = g.tensor_data(t);
    let rb = t.ty.row_bytes(cols);
    for (row, dst) in data.chunks_exact(rb).zip(out.chunks_exact_mut(cols.max(1))) {
        dequantize_row(t.ty, row, dst);
    }
    Ok(out)
}

/// Write `model` (a LLaMA in GGUF layout) as a Hugging Face directory with F32 weights.
/// See [`write_hf_dir_as`].
pub fn write_hf_dir(model: &Gguf, out: &Path, force: bool) -> Result<HfSummary> {
    write_hf_dir_as(model, out, force, StDtype::F32)
}

/// Write `model` as a Hugging Face `LlamaForCausalLM` directory: config.json,
/// model.safetensors (weights as `dtype`), tokenizer.json, tokenizer_config.json,
/// generation_config.json. A non-empty `out` is refused unless `force`.
pub fn write_hf_dir_as(model: &Gguf, out: &Path, force: bool, dtype: StDtype) -> Result<HfSummary> {
    let arch = model.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::UnsupportedArch(format!(
            "{arch} (the Hugging Face export writes llama models)"
        )));
    }
    let c = LlamaConfig::from_gguf(model)?;
    let tok = TokenizerParts::from_gguf(model)?;
    // Build everything that can fail on bad input before touching the output directory.
    let tok_json = tokenizer::to_tokenizer_json(&tok)?;
    let tok_cfg = tokenizer::to_tokenizer_config(&tok, c.context_length);
    let tied = model.tensor("output.weight").is_none();

    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::with_capacity(model.tensors.len());
    for t in &model.tensors {
        let hf = gguf_to_hf_name(&t.name).ok_or_else(|| Error::Tensor {
            name: t.name.clone(),
            reason: "has no Hugging Face LlamaForCausalLM counterpart".into(),
        })?;
        let mut w = dequantize_tensor(model, &t.name)?;
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let heads = if t.name.ends_with(".attn_q.weight") {
            Some(c.n_heads)
        } else if t.name.ends_with(".attn_k.weight") {
            Some(c.n_kv_heads)
        } else {
            None
        };
        if let Some(h) = heads {
            if shape.len() != 2 || shape[0] != h * c.head_dim {
                return Err(Error::Tensor {
                    name: t.name.clone(),
                    reason: format!("shape {shape:?} does not hold {h} heads of {}", c.head_dim),
                });
            }
            w = unpermute_rows(&w, h, c.head_dim, shape[1]);
        }
        owned.push((hf, shape, w));
    }
    // HF order: embeddings, layers by index, norm, head (matches transformers' own files).
    let key = |n: &str| -> (usize, usize, String) {
        match n.strip_prefix("model.layers.") {
            Some(rest) => {
                let (i, t) = rest.split_once('.').unwrap_or((rest, ""));
                (1, i.parse().unwrap_or(0), t.to_string())
            }
            None if n.starts_with("model.embed") => (0, 0, n.into()),
            None => (2, 0, n.into()),
        }
    };
    owned.sort_by_key(|(n, _, _)| key(n));
    let n_params = owned.iter().map(|(_, _, w)| w.len()).sum();
    let tensors: Vec<TensorRef> = owned
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();

    let mut config = hf_config(&c, tied);
    // f32 -> shortest decimal, so 1e-5 reads back as 1e-5, not 9.999999747378752e-6.
    let short = |x: f32| x.to_string().parse::<f64>().unwrap_or(x as f64);
    config["rms_norm_eps"] = json!(short(c.rms_eps));
    config["rope_theta"] = json!(short(c.rope_base));
    let torch = match dtype {
        StDtype::F32 => "float32",
        StDtype::F16 => "float16",
        StDtype::BF16 => "bfloat16",
    };
    config["torch_dtype"] = json!(torch);
    config["dtype"] = json!(torch);
    let mut gen = json!({"_from_model_config": true});
    for (k, id) in [
        ("bos_token_id", tok.bos_id),
        ("eos_token_id", tok.eos_id),
        ("pad_token_id", tok.pad_id),
    ] {
        if let Some(id) = id {
            config[k] = json!(id);
            gen[k] = json!(id);
        }
    }

    prepare_out_dir(out, force)?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let files = [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    write_safetensors_as(&out.join(files[0]), &tensors, &meta, dtype)?;
    write_json(&out.join(files[1]), &config)?;
    write_json(&out.join(files[2]), &gen)?;
    write_json(&out.join(files[3]), &tok_json)?;
    write_json(&out.join(files[4]), &tok_cfg)?;
    Ok(HfSummary {
        dir: out.to_path_buf(),
        files: files.iter().map(|f| out.join(f)).collect(),
        n_tensors: tensors.len(),
        n_params,
        dtype,
        tied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fresh::{random_llama_gguf, tiny_llama_config};
    use crate::model::hf::load_hf_dir;
    use crate::model::quant::{quantize_row, GgmlType};
    use crate::tokenizer::tiny_test_vocab;

    fn tiny(ty: GgmlType, untied: bool) -> Gguf {
        let mut tok = tiny_test_vocab();
        tok.chat_template = Some("{% for m in messages %}{{ m.content }}{% endfor %}".into());
        let cfg = tiny_llama_config(tok.tokens.len());
        let mut w = random_llama_gguf(&cfg, &tok, ty, 7).expect("model");
        if untied {
            let x: Vec<f32> = (0..cfg.vocab_size * cfg.dim)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-4)
                .collect();
            let bytes = x
                .chunks_exact(cfg.dim)
                .flat_map(|r| quantize_row(ty, r).expect("simple type"))
                .collect();
            w.add_tensor(
                "output.weight",
                vec![cfg.dim as u64, cfg.vocab_size as u64],
                ty,
                bytes,
            );
        }
        Gguf::from_bytes("tiny.gguf", &w.to_bytes()).expect("valid")
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("alpaca-hfx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Largest error re-quantizing dequantized weights may add, per 32-block.
    fn bound(ty: GgmlType, block: &[f32]) -> f32 {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let (lo, hi) = block
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        match ty {
            GgmlType::Q8_0 => amax / 127.0,
            GgmlType::Q4_0 => amax / 8.0,
            GgmlType::Q4_1 => (hi - lo) / 15.0 + amax * 1e-3,
            _ => 0.0,
        }
    }

    /// GGUF -> HF -> GGUF: every tensor, every tokenizer and hyperparameter key survives;
    /// F32/F16 bit for bit, quantized types within the quantizer's error bound.
    #[test]
    fn gguf_hf_gguf_round_trip() {
        for (ty, dtype, untied) in [
            (GgmlType::F32, StDtype::F32, false),
            (GgmlType::F16, StDtype::F16, true),
            (GgmlType::F16, StDtype::F32, false),
            (GgmlType::Q8_0, StDtype::F32, true),
            (GgmlType::Q4_0, StDtype::F32, false),
            (GgmlType::Q4_1, StDtype::F32, false),
        ] {
            let src = tiny(ty, untied);
            let dir = temp(&format!("rt-{}-{}", ty.name(), dtype.name()));
            let s = write_hf_dir_as(&src, &dir, false, dtype).expect("export");
            assert_eq!(s.tied, !untied);
            assert_eq!(s.n_tensors, src.tensors.len());
            let back = load_hf_dir(&dir).expect("import");
            assert_eq!(back.tensors.len(), src.tensors.len(), "{}", ty.name());
            for t in &src.tensors {
                let b = back.tensor(&t.name).expect("same tensor names");
                assert_eq!(b.dims, t.dims, "{}", t.name);
                let (x, y) = (
                    dequantize_tensor(&src, &t.name).expect("src"),
                    dequantize_tensor(&back, &t.name).expect("back"),
                );
                // The HF weights are exactly the dequantized source weights.
                assert_eq!(x, y, "{} {}", ty.name(), t.name);
                if matches!(ty, GgmlType::F32 | GgmlType::F16) && t.dims.len() == 2 {
                    let want = if dtype == StDtype::F16 {
                        ty
                    } else {
                        GgmlType::F32
                    };
                    assert_eq!(b.ty, want, "{}", t.name);
                    if b.ty == t.ty {
                        assert_eq!(back.tensor_data(b), src.tensor_data(t), "{}", t.name);
                    }
                } else if t.ty != GgmlType::F32 {
                    // Quantizing the round-tripped weights again stays within the bound.
                    let cols = t.dims[0] as usize;
                    let mut requant = vec![0f32; y.len()];
                    for (r, o) in y.chunks_exact(cols).zip(requant.chunks_exact_mut(cols)) {
                        let q = quantize_row(t.ty, r).expect("simple type");
                        dequantize_row(t.ty, &q, o);
                    }
                    for (bx, bq) in x.chunks(32).zip(requant.chunks(32)) {
                        let err = bx
                            .iter()
                            .zip(bq)
                            .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
                        assert!(err <= bound(t.ty, bx), "{} err {err}", t.name);
                    }
                }
            }
            for (k, v) in &src.metadata {
                if k.starts_with("llama.") || k.starts_with("tokenizer.") {
                    assert_eq!(back.get(k), Some(v), "{} key {k}", ty.name());
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn output_directory_is_never_clobbered_without_force() {
        let src = tiny(GgmlType::F32, false);
        let dir = temp("force");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("keep.txt"), "mine").expect("write");
        let e = write_hf_dir(&src, &dir, false).expect_err("not empty");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 1);
        write_hf_dir(&src, &dir, true).expect("forced");
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.txt"))
                .ok()
                .as_deref(),
            Some("mine")
        );
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json")).expect("config"),
        )
        .expect("json");
        assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
        assert_eq!(cfg["tie_word_embeddings"], true);
        assert_eq!(cfg["eos_token_id"], 2);
        // A file path is not a directory to write into.
        let e = write_hf_dir(&src, &dir.join("keep.txt"), true).expect_err("file");
        assert!(e.to_string().contains("not a directory"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
