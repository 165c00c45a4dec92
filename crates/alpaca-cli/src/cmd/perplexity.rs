//! `alpaca perplexity`: perplexity of a text, scored like llama.cpp's perplexity tool (see
//! `alpaca::infer::perplexity`). The last line printed is `PPL = <value>`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use alpaca::infer::perplexity::perplexity;

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
    let tokens = engine.tokenizer.encode(&text, false)?;
    let bos = engine
        .tokenizer
        .bos_id()
        .filter(|_| engine.tokenizer.add_bos());
    eprintln!(
        "perplexity: {} tokens, windows of {}, scoring the second half of each",
        tokens.len(),
        a.ctx
    );
    let mut stderr = std::io::stderr();
    let p = perplexity(&engine.model, &tokens, a.ctx, bos, a.chunks, &mut |p| {
        let _ = write!(stderr, "[{}]{:.4} ", p.windows, p.value());
        let _ = stderr.flush();
    })
    .with_context(|| a.file.display().to_string())?;
    eprintln!();
    println!("scored {} tokens in {} windows", p.count, p.windows);
    println!("PPL = {:.4}", p.value());
    Ok(())
}
