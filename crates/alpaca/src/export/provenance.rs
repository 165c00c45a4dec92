//! Where a merged model came from: read from the adapter directory (`adapter_config.json`)
//! and, when it is a run directory of `alpaca train`, from the run's checkpoint settings and
//! `train_summary.json`. Written into the GGUF as `general.*` keys (the names gguf-py
//! defines) and `alpaca.*` keys for what GGUF has no name for.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::gguf::{str_array, GgufWriter, Value};

/// What is known about an adapter and its training run.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The adapter directory as given.
    pub adapter: PathBuf,
    /// `base_model_name_or_path` of the adapter config.
    pub adapter_base: Option<String>,
    pub r: Option<u64>,
    pub alpha: Option<f64>,
    pub target_modules: Vec<String>,
    /// The training data file, from the run's checkpoint settings.
    pub dataset: Option<String>,
    /// The run's settings (JSON), from its checkpoint.
    pub training_config: Option<String>,
    /// `train_summary.json`, compacted.
    pub training_summary: Option<String>,
}

impl Provenance {
    /// Read what `dir` (an adapter or run directory, or its safetensors file) holds. Only
    /// `adapter_config.json` is required; the run files are optional.
    pub fn read(path: &Path) -> Result<Provenance> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Data {
            path: cfg_path.clone(),
            line: e.line(),
            reason: e.to_string(),
        })?;
        let mut p = Provenance {
            adapter: path.to_path_buf(),
            adapter_base: cfg["base_model_name_or_path"].as_str().map(String::from),
            r: cfg["r"].as_u64(),
            alpha: cfg["lora_alpha"].as_f64(),
            target_modules: cfg["target_modules"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        if let Some(meta) = safetensors_metadata(&dir.join("checkpoint.safetensors")) {
            if let Some(state) = meta
                .get("alpaca.train_state")
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            {
                let config = &state["config"];
                p.dataset = config["data"].as_str().map(String::from);
                if !config.is_null() {
                    p.training_config = Some(config.to_string());
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("train_summary.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                p.training_summary = Some(v.to_string());
            }
        }
        Ok(p)
    }

    /// Write the provenance keys. `base_name` names the base model.
    pub fn write(&self, w: &mut GgufWriter, base_name: &str) {
        let s = |v: &str| Value::String(v.to_string());
        let adapter_name = self
            .adapter
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.adapter.display().to_string());
        w.set("general.name", s(&format!("{base_name} + {adapter_name}")));
        w.set("general.finetune", s(&adapter_name));
        w.set("general.base_model.count", Value::U32(1));
        w.set("general.base_model.0.name", s(base_name));
        if let Some(b) = &self.adapter_base {
            w.set("alpaca.lora.base_model", s(b));
        }
        w.set(
            "alpaca.lora.adapter",
            s(&self.adapter.display().to_string()),
        );
        if let Some(r) = self.r {
            w.set("alpaca.lora.r", Value::U32(r as u32));
        }
        if let Some(a) = self.alpha {
            w.set("alpaca.lora.alpha", Value::F32(a as f32));
        }
        if !self.target_modules.is_empty() {
            w.set(
                "alpaca.lora.target_modules",
                str_array(&self.target_modules),
            );
        }
        if let Some(d) = &self.dataset {
            let name = Path::new(d)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| d.clone());
            w.set("general.dataset.count", Value::U32(1));
            w.set("general.dataset.0.name", s(&name));
            w.set("alpaca.training.data", s(d));
        }
        if let Some(c) = &self.training_config {
            w.set("alpaca.training.config", s(c));
        }
        if let Some(c) = &self.training_summary {
            w.set("alpaca.training.summary", s(c));
        }
    }
}

/// The `__metadata__` of a safetensors file, reading only its header (a checkpoint also
/// holds optimizer state, far larger than the header). None when absent or unreadable.
fn safetensors_metadata(path: &Path) -> Option<std::collections::BTreeMap<String, String>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let meta = v.get("__metadata__")?.as_object()?;
    Some(
        meta.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
    )
}
