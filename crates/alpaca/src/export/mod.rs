//! The export room: merge a LoRA adapter into its base, quantize, and write the result in the
//! formats the ecosystem loads (GGUF for llama.cpp and Ollama, a Hugging Face directory for
//! transformers, a PEFT adapter directory for peft).
//!
//! Every model in flight is a [`Gguf`](crate::model::gguf::Gguf): a file, a converted Hugging
//! Face directory or a merged model built in memory ([`Gguf::from_bytes`]).
//!
//! The GGUF path, for callers (the CLI, the recipe):
//!
//! ```no_run
//! use alpaca::export::{export_gguf, ExportOptions};
//! use alpaca::model::quant::GgmlType;
//! let opts = ExportOptions::new("base.gguf", "out.gguf", GgmlType::Q4K);
//! let summary = export_gguf(&opts, &mut |done, total| eprint!("\r{done}/{total}"))?;
//! println!("{} tensors, {} bytes", summary.n_tensors, summary.bytes);
//! # Ok::<(), alpaca::Error>(())
//! ```

pub mod gguf_out;
pub mod hf;
pub mod merge;
pub mod peft;
pub mod provenance;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::model::gguf::Gguf;
use crate::model::quant::GgmlType;

pub use gguf_out::{fallback_type, file_type, QUANT_TYPES};
pub use merge::merge_lora;

/// What `export_gguf` does. Build with [`ExportOptions::new`] and set the rest by field.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The base model: a GGUF file or a Hugging Face directory.
    pub base: PathBuf,
    /// A LoRA adapter to merge: a run directory of `alpaca train` or a PEFT adapter
    /// directory (`adapter_config.json` + `adapter_model.safetensors`).
    pub lora: Option<PathBuf>,
    /// The GGUF file to write.
    pub out: PathBuf,
    /// Weight type of the matrices: one of [`QUANT_TYPES`].
    pub quant: GgmlType,
    /// Overwrite an existing `out` (atomically); without it an existing file is an error.
    pub force: bool,
    /// Weight type of the token embeddings and the output matrix (None: as `quant`).
    pub keep_embeddings: Option<GgmlType>,
}

impl ExportOptions {
    pub fn new(base: impl Into<PathBuf>, out: impl Into<PathBuf>, quant: GgmlType) -> Self {
        ExportOptions {
            base: base.into(),
            lora: None,
            out: out.into(),
            quant,
            force: false,
            keep_embeddings: None,
        }
    }
}

/// What `export_gguf` wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub n_tensors: usize,
    /// Tensors per weight type name (`"Q4_K"`, `"F32"`, ...).
    pub tensors_per_type: BTreeMap<String, usize>,
    /// Tensors whose row length does not fit the requested block size, with the type used.
    pub fallbacks: Vec<(String, GgmlType)>,
    /// Linears that got a LoRA update merged in (0 without `lora`).
    pub merged_linears: usize,
    /// Size of the written file.
    pub bytes: u64,
    pub seconds: f64,
}

/// Open a base model: a GGUF file, or a Hugging Face directory converted in memory.
pub fn open_base(path: &Path) -> Result<Gguf> {
    crate::model::hf::open_model(path)
}

/// Refuse an existing output unless `force` (so nothing is touched): a user error.
pub fn check_output(out: &Path, force: bool) -> Result<()> {
    if !force && std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; pass --force to overwrite it",
            out.display()
        )));
    }
    Ok(())
}

/// Merge (optionally), quantize and write a GGUF v3 file. `progress(done, total)` counts
/// weights converted so far; it is called from the calling thread only.
pub fn export_gguf(
    opts: &ExportOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ExportSummary> {
    let t0 = Instant::now();
    check_output(&opts.out, opts.force)?;
    if !QUANT_TYPES.contains(&opts.quant) {
        return Err(Error::InvalidArgument(format!(
            "--quant {}: supported types are {}",
            opts.quant.name().to_ascii_lowercase(),
            gguf_out::quant_names()
        )));
    }
    if let Some(t) = opts.keep_embeddings {
        if !QUANT_TYPES.contains(&t) {
            return Err(Error::InvalidArgument(format!(
                "--keep-embeddings {}: supported types are {}",
                t.name().to_ascii_lowercase(),
                gguf_out::quant_names()
            )));
        }
    }
    let base = open_base(&opts.base)?;
    let (model, merged, prov) = match &opts.lora {
        Some(dir) => {
            let (g, n) = merge_lora(&base, dir)?;
            (g, n, Some(provenance::Provenance::read(dir)?))
        }
        None => (base, 0, None),
    };
    let plan = gguf_out::Plan {
        quant: opts.quant,
        keep_embeddings: opts.keep_embeddings,
        base_path: &opts.base,
        provenance: prov.as_ref(),
    };
    let (writer, stats) = gguf_out::build(&model, &plan, progress)?;
    let bytes = writer.to_bytes();
    // Checked again: the export may have taken minutes.
    check_output(&opts.out, opts.force)?;
    crate::model::gguf::write_atomic(&opts.out, &bytes)?;
    Ok(ExportSummary {
        out: opts.out.clone(),
        n_tensors: stats.n_tensors,
        tensors_per_type: stats.per_type,
        fallbacks: stats.fallbacks,
        merged_linears: merged,
        bytes: bytes.len() as u64,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
