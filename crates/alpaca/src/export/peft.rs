//! Writing a LoRA adapter alone as a PEFT adapter directory.
//!
//! `alpaca train --lora` already leaves a PEFT-named adapter in its run directory
//! (`adapter_model.safetensors` + `adapter_config.json`, see
//! [`crate::train::export::save_adapter`]). Export reads it back, checks it the way
//! `PeftModel.from_pretrained` will use it (every key a `lora_A`/`lora_B` pair of a listed
//! target module, shapes `[r, in]` / `[out, r]`, one shape per module kind, and against the
//! base model when one is given), and writes a clean copy: F32 tensors under PEFT's key
//! names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`) and a complete
//! `LoraConfig`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::hf::{prepare_out_dir, write_json};
use crate::error::{Error, Result};
use crate::model::gguf::Gguf;
use crate::model::hf::read_json;
use crate::model::llama::LlamaConfig;
use crate::train::checkpoint::{read_safetensors, write_safetensors, TensorRef};
use crate::train::model::{linear_parent, LINEAR_NAMES};

/// What [`write_peft_dir`] wrote.
#[derive(Debug, Clone)]
pub struct PeftSummary {
    pub dir: PathBuf,
    pub r: usize,
    pub alpha: f64,
    /// Target module names (`q_proj`, `v_proj`, ...), sorted.
    pub targets: Vec<String>,
    /// Number of adapted linears (layers x targets).
    pub n_adapted: usize,
    pub n_params: usize,
}

/// One parsed adapter key: layer, index into [`LINEAR_NAMES`], `A` or `B`.
fn parse_key(key: &str) -> Option<(usize, usize, bool)> {
    let rest = key.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let (module, ab) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, true)
    } else {
        (rest.strip_suffix(".lora_B.weight")?, false)
    };
    let (parent, name) = module.split_once('.')?;
    let j = LINEAR_NAMES.iter().position(|n| *n == name)?;
    (linear_parent(j) == parent).then_some((layer, j, ab))
}

/// `(out, in)` of linear `j` in a model of shape `c`.
fn linear_shape(c: &LlamaConfig, j: usize) -> (usize, usize) {
    let (d, f, q, kv) = (c.dim, c.ffn_dim, c.q_dim(), c.kv_dim());
    match j {
        0 => (q, d),
        1 | 2 => (kv, d),
        3 => (d, q),
        4 | 5 => (f, d),
        _ => (d, f),
    }
}

/// Export the adapter found at `adapter` (an `alpaca train` run directory, a PEFT
/// directory, or its `adapter_model.safetensors`) to `out` as a PEFT directory.
/// A non-empty `out` is refused unless `force`.
pub fn write_peft_dir(adapter: &Path, out: &Path, force: bool) -> Result<PeftSummary> {
    write_peft(adapter, None, out, force)
}

/// [`write_peft_dir`], also checking every shape and layer index against `base`.
pub fn write_peft_dir_for(
    adapter: &Path,
    base: &Gguf,
    out: &Path,
    force: bool,
) -> Result<PeftSummary> {
    write_peft(adapter, Some(base), out, force)
}

fn write_peft(adapter: &Path, base: Option<&Gguf>, out: &Path, force: bool) -> Result<PeftSummary> {
    let (dir, file) = if adapter.is_dir() {
        (
            adapter.to_path_buf(),
            adapter.join("adapter_model.safetensors"),
        )
    } else {
        let parent = adapter.parent().unwrap_or(Path::new(".")).to_path_buf();
        (parent, adapter.to_path_buf())
    };
    let cfg_path = dir.join("adapter_config.json");
    if !file.is_file() || !cfg_path.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{}: no LoRA adapter here (expected adapter_model.safetensors and \
             adapter_config.json, as `alpaca train --lora` writes)",
            adapter.display()
        )));
    }
    let mut cfg = read_json(&cfg_path)?;
    let bad = |field: &str, reason: String| {
        Error::Config(format!("{}: `{field}`: {reason}", cfg_path.display()))
    };
    if cfg["peft_type"].as_str().unwrap_or("LORA") != "LORA" {
        return Err(bad(
            "peft_type",
            format!("{} is not LORA", cfg["peft_type"]),
        ));
    }
    let r = cfg["r"]
        .as_u64()
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("r", "must be a positive integer".into()))? as usize;
    let alpha = cfg["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("lora_alpha", "must be a number".into()))?;
    let targets: BTreeSet<String> = match &cfg["target_modules"] {
        Value::Array(list) => list
            .iter()
            .map(|t| {
                t.as_str()
                    .filter(|t| LINEAR_NAMES.contains(t))
                    .map(str::to_string)
                    .ok_or_else(|| {
                        bad(
                            "target_modules",
                            format!("{t} is not one of {}", LINEAR_NAMES.join(", ")),
                        )
                    })
            })
            .collect::<Result<_>>()?,
        v => return Err(bad("target_modules", format!("{v} is not a list of names"))),
    };
    for (k, ok) in [
        ("bias", cfg["bias"].as_str().unwrap_or("none") == "none"),
        ("use_dora", cfg["use_dora"] != true),
        ("modules_to_save", cfg["modules_to_save"].is_null()),
    ] {
        if !ok {
            return Err(bad(k, format!("{} is not supported", cfg[k])));
        }
    }

    let st = read_safetensors(&file)?;
    let base_cfg = base.map(LlamaConfig::from_gguf).transpose()?;
    // Per module kind: (out, in), which must agree across layers.
    let mut dims: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut pairs: BTreeMap<(usize, usize), u8> = BTreeMap::new();
    for (key, (shape, _)) in &st.tensors {
        let tensor_err = |reason: String| Error::Tensor {
            name: key.clone(),
            reason: format!("in {}: {reason}", file.display()),
        };
        let (layer, j, is_a) = parse_key(key)
            .ok_or_else(|| tensor_err("not a PEFT LoRA key of a LLaMA linear".into()))?;
        if !targets.contains(LINEAR_NAMES[j]) {
            return Err(tensor_err(format!(
                "{} is not in target_modules",
                LINEAR_NAMES[j]
            )));
        }
        let (o, i) = match (is_a, &shape[..]) {
            (true, [rr, i]) if *rr == r => (None, Some(*i)),
            (false, [o, rr]) if *rr == r => (Some(*o), None),
            _ => {
                return Err(tensor_err(format!(
                    "shape {shape:?} is not lora_{} of rank r = {r}",
                    if is_a { "A [r, in]" } else { "B [out, r]" }
                )))
            }
        };
        let e = dims.entry(j).or_insert((0, 0));
        for (slot, v) in [(&mut e.0, o), (&mut e.1, i)] {
            if let Some(v) = v {
                if *slot != 0 && *slot != v {
                    return Err(tensor_err(format!(
                        "{} has size {v} here but {} in another layer",
                        LINEAR_NAMES[j], *slot
                    )));
                }
                *slot = v;
            }
        }
        if let Some(c) = &base_cfg {
            if layer >= c.n_layers {
                return Err(tensor_err(format!(
                    "the base model has {} layers",
                    c.n_layers
                )));
            }
            let (bo, bi) = linear_shape(c, j);
            if o.is_some_and(|o| o != bo) || i.is_some_and(|i| i != bi) {
                return Err(tensor_err(format!(
                    "shape {shape:?} does not fit the base model's {bo}x{bi} {}",
                    LINEAR_NAMES[j]
                )));
            }
        }
        *pairs.entry((layer, j)).or_default() |= if is_a { 1 } else { 2 };
    }
    if let Some(((layer, j), _)) = pairs.iter().find(|(_, &m)| m != 3) {
        return Err(Error::Tensor {
            name: format!("layer {layer} {}", LINEAR_NAMES[*j]),
            reason: format!(
                "in {}: lora_A without lora_B or the reverse",
                file.display()
            ),
        });
    }
    if pairs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: the adapter has no LoRA tensors",
            file.display()
        )));
    }

    // A complete LoraConfig; keep what the source had (dropout, base name, ...).
    let defaults = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none",
        "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
        "modules_to_save": null, "lora_dropout": 0.0, "use_rslora": false,
    });
    if let (Some(c), Some(d)) = (cfg.as_object_mut(), defaults.as_object()) {
        for (k, v) in d {
            c.entry(k.clone()).or_insert_with(|| v.clone());
        }
        c.insert("target_modules".into(), json!(targets));
        c.insert("inference_mode".into(), json!(true));
    }
    if cfg["use_rslora"] == true {
        // Our loader scales by alpha / r; refuse rather than export a different model.
        return Err(bad(
            "use_rslora",
            "rank-stabilized LoRA is not supported".into(),
        ));
    }
    let tensors: Vec<TensorRef> = st
        .tensors
        .iter()
        .map(|(n, (s, v))| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    let n_params = tensors.iter().map(|t| t.2.len()).sum();
    prepare_out_dir(out, force)?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&out.join("adapter_model.safetensors"), &tensors, &meta)?;
    write_json(&out.join("adapter_config.json"), &cfg)?;
    Ok(PeftSummary {
        dir: out.to_path_buf(),
        r,
        alpha,
        targets: targets.into_iter().collect(),
        n_adapted: pairs.len(),
        n_params,
    })
}

/// Write `tensors` (PEFT key names, shapes `[r, in]` / `[out, r]`) and `config` (a
/// `LoraConfig`) as a PEFT adapter directory `dir`, created if missing: what `alpaca train
/// --lora` leaves behind, for tests and tools that build an adapter by hand.
pub fn write_adapter_dir(
    dir: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    config: &Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let refs: Vec<TensorRef> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    write_safetensors(
        &dir.join("adapter_model.safetensors"),
        &refs,
        &BTreeMap::new(),
    )?;
    write_json(&dir.join("adapter_config.json"), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_for_llama_linears() {
        assert_eq!(
            parse_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, 0, true))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"),
            Some((0, 6, false))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.mlp.q_proj.lora_B.weight"),
            None
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"),
            None
        );
    }

    fn write_adapter(dir: &Path, cfg: Value, tensors: &[(&str, Vec<usize>)]) {
        let owned: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone(), vec![0.5; s.iter().product()]))
            .collect();
        write_adapter_dir(dir, &owned, &cfg).expect("write");
    }

    #[test]
    fn validates_and_refuses_to_overwrite() {
        let root = std::env::temp_dir().join(format!("alpaca-peft-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let src = root.join("run");
        let q = "base_model.model.model.layers.0.self_attn.q_proj";
        let cfg = json!({"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]});
        write_adapter(
            &src,
            cfg.clone(),
            &[
                (&format!("{q}.lora_A.weight"), vec![2, 8]),
                (&format!("{q}.lora_B.weight"), vec![8, 2]),
            ],
        );
        let out = root.join("peft");
        let s = write_peft_dir(&src, &out, false).expect("export");
        assert_eq!((s.r, s.n_adapted, s.n_params), (2, 1, 32));
        let written: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(written["peft_type"], "LORA");
        assert_eq!(written["task_type"], "CAUSAL_LM");
        assert_eq!(written["target_modules"], json!(["q_proj"]));
        let st = read_safetensors(&out.join("adapter_model.safetensors")).expect("read");
        assert_eq!(st.tensors[&format!("{q}.lora_B.weight")].0, vec![8, 2]);
        // A second export into the now non-empty directory needs force.
        let e = write_peft_dir(&src, &out, false).expect_err("not empty");
        assert!(e.to_string().contains("--force"), "{e}");
        write_peft_dir(&src, &out, true).expect("forced");

        // Wrong rank, missing half, untargeted module: each refused, naming the tensor.
        for (tensors, needle) in [
            (
                vec![
                    (format!("{q}.lora_A.weight"), vec![3, 8]),
                    (format!("{q}.lora_B.weight"), vec![8, 2]),
                ],
                "rank",
            ),
            (
                vec![(format!("{q}.lora_A.weight"), vec![2, 8])],
                "lora_A without",
            ),
            (
                vec![
                    (
                        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"
                            .to_string(),
                        vec![2, 8],
                    ),
                    (
                        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
                            .to_string(),
                        vec![8, 2],
                    ),
                ],
                "target_modules",
            ),
        ] {
            let t: Vec<(&str, Vec<usize>)> = tensors
                .iter()
                .map(|(n, s)| (n.as_str(), s.clone()))
                .collect();
            write_adapter(&src, cfg.clone(), &t);
            let e = write_peft_dir(&src, &root.join("x"), true)
                .expect_err(needle)
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
