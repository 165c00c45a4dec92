//! Stages 5 and 6 as calls into the eval and export rooms: held-out response loss of the
//! base and the tuned model, and the merged, quantized GGUF.

use std::path::Path;

use serde_json::{json, Value};

use super::config::RecipeConfig;
use super::{Layout, Observer};
use crate::data::io::read_examples;
use crate::data::template::TemplateChoice;
use crate::error::{Error, Result};
use crate::eval::response_loss;
use crate::export::{export_gguf, ExportOptions};
use crate::infer::Engine;
use crate::model::quant::GgmlType;

/// The export weight type of a config (validated by the config).
pub fn quant_type(name: &str) -> Result<GgmlType> {
    GgmlType::parse(name)
        .filter(|t| crate::export::QUANT_TYPES.contains(t))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "`export.quant` is `{name}`; expected one of {}",
                quant_names()
            ))
        })
}

/// The export weight types, for messages.
pub fn quant_names() -> String {
    crate::export::QUANT_TYPES
        .iter()
        .map(|t| t.name().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tuned model's file for the "after" evaluation: the base with the adapter (LoRA), or
/// the exported GGUF (full fine-tuning, whose export runs first).
fn tuned_engine(cfg: &RecipeConfig, student: &Path, lay: &Layout) -> Result<Engine> {
    if cfg.train.method == "full" {
        return Engine::load(&cfg.export_path());
    }
    let mut engine = Engine::load(student)?;
    crate::train::export::load_adapter(&lay.train_dir(), &mut engine.model)?;
    Ok(engine)
}

/// Stage 5: response loss of the base and the tuned model on the held-out set.
pub fn eval(
    cfg: &RecipeConfig,
    student: &Path,
    lay: &Layout,
    obs: &mut dyn Observer,
) -> Result<Value> {
    let examples = read_examples(&lay.held_out())?.examples;
    let choice: TemplateChoice = cfg.train.template.parse()?;
    let cutoff = if cfg.eval.cutoff_len > 0 {
        cfg.eval.cutoff_len
    } else {
        cfg.train.cutoff_len
    };
    let base = Engine::load(student)?;
    let template = base.template(choice);
    let before = response_loss(&base, &examples, &template, cutoff, &mut |d, t| {
        obs.eval_progress("base", d, t)
    })?;
    drop(base);
    let tuned = tuned_engine(cfg, student, lay)?;
    let template = tuned.template(choice);
    let after = response_loss(&tuned, &examples, &template, cutoff, &mut |d, t| {
        obs.eval_progress("tuned", d, t)
    })?;
    Ok(json!({
        "examples": before.n_examples,
        "tokens": before.n_tokens,
        "skipped": before.n_skipped,
        "before": before.loss,
        "after": after.loss,
        "ppl_before": before.perplexity,
        "ppl_after": after.perplexity,
        "tuned": if cfg.train.method == "full" { "exported GGUF" } else { "base + LoRA adapter" },
    }))
}

/// Stage 6: merge the adapter (LoRA) or take the fine-tuned weights (full), quantize, write.
pub fn export(
    cfg: &RecipeConfig,
    student: &Path,
    lay: &Layout,
    out: &Path,
    obs: &mut dyn Observer,
) -> Result<Value> {
    let quant = quant_type(&cfg.export.quant)?;
    let mut opts = if cfg.train.method == "full" {
        ExportOptions::new(lay.train_dir(), out, quant)
    } else {
        let mut o = ExportOptions::new(student, out, quant);
        o.lora = Some(lay.train_dir());
        o
    };
    // The stage hash decides whether the file is current; a stale one is replaced atomically.
    opts.force = true;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut last = 0;
    let s = export_gguf(&opts, &mut |done, total| {
        // A note every tenth of the way is enough for a stage that takes seconds.
        let tenth = done * 10 / total.max(1);
        if tenth > last {
            last = tenth;
            obs.eval_progress("export", done, total);
        }
    })?;
    Ok(json!({
        "path": s.out,
        "bytes": s.bytes,
        "quant": cfg.export.quant,
        "tensors": s.n_tensors,
        "merged_linears": s.merged_linears,
        "fallbacks": s.fallbacks.len(),
    }))
}
