//! `alpaca perplexity`: perplexity of a text, scored the way llama.cpp's perplexity tool does:
//! the text is cut into non-overlapping windows of `--ctx` tokens, each window is run from an
//! empty cache (its first token replaced by BOS when the vocabulary adds one), and only the
//! second half of each window is scored, so every scored token has at least ctx/2 of context.
//! The last line printed is `PPL = <value>`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::{read_text, ModelArgs};

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// UTF-8 text file to score
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Window size in tokens
    #[arg(long = "ctx", short = 'c', default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many windows (0 = all)
    #[arg(long = "chunks", default_value_t = 0)]
    pub chunks: usize,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let text = read_text(&a.file)?;
    let engine = a.model.load()?;
    if a.ctx < 4 || a.ctx > engine.model.context_length() {
        bail!(
            "--ctx {} must be between 4 and the model context {}",
            a.ctx,
            engine.model.context_length()
        );
    }
    let tokens = engine.tokenizer.encode(&text, false)?;
    let mut n_chunks = tokens.len() / a.ctx;
    if a.chunks > 0 {
        n_chunks = n_chunks.min(a.chunks);
    }
    if n_chunks == 0 {
        bail!(
            "{}: {} tokens is less than one window of {} (use a longer text or a smaller --ctx)",
            a.file.display(),
            tokens.len(),
            a.ctx
        );
    }
    let bos = engine
        .tokenizer
        .bos_id()
        .filter(|_| engine.tokenizer.add_bos());
    let first = a.ctx / 2;
    eprintln!(
        "perplexity: {} tokens, {} windows of {}, scoring positions {}..{} of each",
        tokens.len(),
        n_chunks,
        a.ctx,
        first + 1,
        a.ctx
    );
    let vocab = engine.model.vocab_size();
    let mut nll = 0f64;
    let mut count = 0usize;
    let mut stderr = std::io::stderr();
    for c in 0..n_chunks {
        let mut window = tokens[c * a.ctx..(c + 1) * a.ctx].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        let mut cache = engine.model.new_cache(a.ctx);
        // Logits at positions first..ctx-1; position j predicts token j+1.
        let logits = engine.model.forward(&window, &mut cache, a.ctx - first)?;
        for (i, row) in logits
            .chunks_exact(vocab)
            .take(a.ctx - first - 1)
            .enumerate()
        {
            let target = window[first + i + 1] as usize;
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            nll += max + sum.ln() - row[target] as f64;
            count += 1;
        }
        let _ = write!(stderr, "[{}]{:.4} ", c + 1, (nll / count as f64).exp());
        let _ = stderr.flush();
    }
    eprintln!();
    println!("scored {count} tokens in {n_chunks} windows");
    println!("PPL = {:.4}", (nll / count as f64).exp());
    Ok(())
}
