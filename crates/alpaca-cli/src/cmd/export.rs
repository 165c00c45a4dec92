//! `alpaca export`: merge a LoRA adapter and write GGUF (quantized on all cores), a Hugging
//! Face directory or a PEFT adapter directory.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use alpaca::export::{export_gguf, ExportOptions, ExportSummary, QUANT_TYPES};
use alpaca::model::quant::GgmlType;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One GGUF v3 file (llama.cpp, Ollama)
    Gguf,
    /// A Hugging Face directory (transformers)
    Hf,
    /// The LoRA adapter alone, as a PEFT adapter directory
    Peft,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Base model: GGUF file or Hugging Face directory [default: the embedded SmolLM2-135M-Instruct]
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// LoRA adapter to merge: a run directory of `alpaca train` or a PEFT adapter directory
    #[arg(long = "lora")]
    pub lora: Option<PathBuf>,
    /// Output: a .gguf file, or a directory for --format hf|peft
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// Output format
    #[arg(long = "format", value_enum, default_value_t = Format::Gguf)]
    pub format: Format,
    /// Weight type of the matrices: f32|f16|bf16|q8_0|q4_0|q4_1|q4_k|q6_k (norms stay f32);
    /// for --format hf, the safetensors dtype (f32|f16|bf16)
    /// [default: f16 for gguf, f32 for hf]
    #[arg(long = "quant", value_parser = parse_quant)]
    pub quant: Option<GgmlType>,
    /// Weight type of the token embeddings and output matrix [default: as --quant]
    #[arg(long = "keep-embeddings", value_parser = parse_quant)]
    pub keep_embeddings: Option<GgmlType>,
    /// Overwrite an existing output (atomically: a temporary file, then a rename)
    #[arg(long = "force")]
    pub force: bool,
    /// Worker threads [default: all cores]
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// No progress bar
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
}

fn parse_quant(s: &str) -> std::result::Result<GgmlType, String> {
    let names = || alpaca::export::gguf_out::quant_names();
    match GgmlType::parse(s) {
        Some(t) if QUANT_TYPES.contains(&t) => Ok(t),
        _ => Err(format!("unknown type `{s}` (one of {})", names())),
    }
}

pub fn run(a: ExportArgs) -> Result<()> {
    super::init_threads(a.threads)?;
    let base = || alpaca::assets::resolve_model(a.model.as_deref());
    match a.format {
        Format::Gguf => export_gguf_cmd(&a, base()?),
        Format::Hf => {
            use alpaca::train::checkpoint::StDtype;
            let dtype = match a.quant.unwrap_or(GgmlType::F32) {
                GgmlType::F32 => StDtype::F32,
                GgmlType::F16 => StDtype::F16,
                GgmlType::BF16 => StDtype::BF16,
                t => bail!(
                    "--format hf writes f32, f16 or bf16 safetensors, not {}",
                    t.name().to_ascii_lowercase()
                ),
            };
            let base = base()?;
            let model = match &a.lora {
                Some(dir) => alpaca::export::merge_lora(&alpaca::export::open_base(&base)?, dir)?.0,
                None => alpaca::export::open_base(&base)?,
            };
            let s = alpaca::export::hf::write_hf_dir_as(&model, &a.out, a.force, dtype)?;
            eprintln!(
                "export: wrote {} ({} tensors, {} parameters, {} files)",
                s.dir.display(),
                s.n_tensors,
                s.n_params,
                s.files.len()
            );
            Ok(())
        }
        Format::Peft => {
            let Some(adapter) = &a.lora else {
                bail!("--format peft exports a LoRA adapter: give it with --lora DIR");
            };
            // Checked against the base when one was given with -m.
            let s = match &a.model {
                Some(_) => {
                    let g = alpaca::export::open_base(&base()?)?;
                    alpaca::export::peft::write_peft_dir_for(adapter, &g, &a.out, a.force)?
                }
                None => alpaca::export::peft::write_peft_dir(adapter, &a.out, a.force)?,
            };
            eprintln!(
                "export: wrote {} (PEFT LoRA r={} alpha={}, {} linears, {} parameters, targets {})",
                s.dir.display(),
                s.r,
                s.alpha,
                s.n_adapted,
                s.n_params,
                s.targets.join(",")
            );
            Ok(())
        }
    }
}

fn export_gguf_cmd(a: &ExportArgs, base: PathBuf) -> Result<()> {
    if a.out.is_dir() {
        bail!(
            "{} is a directory; --format gguf writes one file (e.g. -o model.gguf)",
            a.out.display()
        );
    }
    let quant = a.quant.unwrap_or(GgmlType::F16);
    let mut opts = ExportOptions::new(base, a.out.clone(), quant);
    opts.lora = a.lora.clone();
    opts.force = a.force;
    opts.keep_embeddings = a.keep_embeddings;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {percent:>3}% {msg} {per_sec} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} weights", quant.name()));
    let summary = export_gguf(&opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    print_summary(&summary, quant);
    Ok(())
}

fn print_summary(s: &ExportSummary, quant: GgmlType) {
    let types: Vec<String> = s
        .tensors_per_type
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    eprintln!(
        "export: wrote {} ({:.1} MiB, {} tensors: {}) in {:.1}s",
        s.out.display(),
        s.bytes as f64 / (1 << 20) as f64,
        s.n_tensors,
        types.join(", "),
        s.seconds
    );
    if s.merged_linears > 0 {
        eprintln!(
            "export: merged the LoRA adapter into {} linears",
            s.merged_linears
        );
    }
    if !s.fallbacks.is_empty() {
        let mut by_type = std::collections::BTreeMap::<&str, usize>::new();
        for (_, t) in &s.fallbacks {
            *by_type.entry(t.name()).or_default() += 1;
        }
        let list: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} as {t}")).collect();
        eprintln!(
            "export: {} tensors have rows that are not a multiple of the {} block ({}), \
             as llama.cpp does",
            s.fallbacks.len(),
            quant.name(),
            list.join(", ")
        );
    }
}
