//! `alpaca run`: one prompt in, the completion out on stdout (streamed).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use alpaca::data::template::TemplateChoice;
use alpaca::infer::GenParams;

use super::{read_text, ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The instruction or prompt
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from a UTF-8 file
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Optional input (context) for the instruction, as in Alpaca data
    #[arg(long = "input", default_value = "")]
    pub input: String,
    /// Prompt template: auto (the model's own chat template), alpaca, alpaca-lora, chatml, raw
    #[arg(long = "template", default_value = "auto")]
    pub template: TemplateChoice,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating after the end-of-sequence token
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Print the generated token ids as JSON instead of text
    #[arg(long = "ids")]
    pub ids: bool,
    /// Print timings to stderr
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Write the logits of every prompt position to PATH as JSON
    /// `{"ids": [n], "n_vocab": V, "logits": [[V] x n]}` before generating (with `-n 0`,
    /// nothing is generated). For comparing with other implementations (scripts/hf_check.py).
    #[arg(long = "dump-logits", hide = true, value_name = "PATH")]
    pub dump_logits: Option<PathBuf>,
}

pub fn run(a: RunArgs) -> Result<()> {
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), None) => p.clone(),
        (None, Some(f)) => read_text(f)?,
        _ => bail!("give a prompt with -p PROMPT or -f FILE"),
    };
    let engine = a.model.load()?;
    let text = engine
        .template(a.template)
        .render_instruction(&prompt, &a.input)?;
    let ids = engine.encode_prompt(&text)?;
    if let Some(path) = &a.dump_logits {
        let mut cache = engine.model.new_cache(ids.len());
        let logits = engine.model.forward(&ids, &mut cache, ids.len())?;
        let n_vocab = engine.model.vocab_size();
        let rows: Vec<&[f32]> = logits.chunks_exact(n_vocab).collect();
        let json = serde_json::json!({"ids": ids, "n_vocab": n_vocab, "logits": rows});
        alpaca::model::gguf::write_atomic(path, serde_json::to_string(&json)?.as_bytes())?;
        if a.sampling.max_new == 0 {
            return Ok(());
        }
    }
    let params = GenParams {
        max_new_tokens: a.sampling.max_new,
        sampler: a.sampling.sampler(),
        stop: a.sampling.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let streaming = !a.ids;
    let gen = engine.generate(&ids, &params, &mut |piece| {
        if !streaming {
            return ControlFlow::Continue(());
        }
        // A closed pipe (e.g. `| head`) ends generation quietly.
        match out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    })?;
    if a.ids {
        writeln!(out, "{}", serde_json::to_string(&gen.ids)?)?;
    } else {
        let _ = writeln!(out);
    }
    let _ = out.flush();
    if a.verbose {
        let pt = gen.prompt_time.as_secs_f64();
        let gt = gen.gen_time.as_secs_f64();
        eprintln!(
            "prompt: {} tokens in {:.2}s ({:.1} tok/s); generated: {} tokens in {:.2}s ({:.1} tok/s); finish: {}",
            gen.prompt_tokens,
            pt,
            gen.prompt_tokens as f64 / pt.max(1e-9),
            gen.ids.len(),
            gt,
            gen.ids.len() as f64 / gt.max(1e-9),
            gen.finish.as_str()
        );
    }
    Ok(())
}
