//! `alpaca chat`: an interactive, streaming conversation.
//!
//! The KV cache is kept between turns: each turn the whole conversation is rendered with the
//! template, and only the tokens after the longest prefix already in the cache are run.
//! Ctrl-C stops the current answer, not the program. Commands: `/reset`, `/exit`.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use alpaca::data::template::{Message, TemplateChoice};
use alpaca::infer::GenParams;

use super::{ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt template: auto (the model's own chat template), alpaca, alpaca-lora, chatml, raw
    #[arg(long = "template", default_value = "auto")]
    pub template: TemplateChoice,
    /// System message
    #[arg(long = "system")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let engine = a.model.load()?;
    let template = engine.template(a.template);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let params = GenParams {
        max_new_tokens: a.sampling.max_new,
        sampler: a.sampling.sampler(),
        stop: a.sampling.stop.clone(),
        ignore_eos: false,
    };
    let mut history: Vec<Message> = a
        .system
        .iter()
        .map(|s| Message::new("system", s.clone()))
        .collect();
    let mut cache = engine.model.new_cache(engine.model.context_length());
    let mut cached: Vec<u32> = Vec::new();
    eprintln!(
        "alpaca chat: {} ({}). /reset clears the conversation, /exit or Ctrl-D quits, Ctrl-C stops an answer.",
        engine.path.display(),
        engine.model.arch()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let line = match lines.next() {
            None => break,
            Some(l) => l.context("reading standard input")?,
        };
        interrupted.store(false, Ordering::SeqCst);
        let line = line.trim_end();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                cache.clear();
                cached.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let text = template.render_chat(&history, true)?;
        let ids = engine.encode_prompt(&text)?;
        // Reuse the cached prefix; run only what is new.
        let common = ids
            .iter()
            .zip(&cached)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        cache.truncate(common);
        cached.truncate(common);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let res = engine.generate_with_cache(&mut cache, &ids[common..], &params, &mut |piece| {
            if interrupted.load(Ordering::SeqCst) {
                return ControlFlow::Break(());
            }
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            ControlFlow::Continue(())
        });
        let _ = writeln!(out);
        match res {
            Ok(gen) => {
                cached.extend_from_slice(&ids[common..]);
                cached.extend_from_slice(&gen.ids);
                // The cache holds the answer tokens except the last one sampled.
                cached.truncate(cache.len());
                history.push(Message::new("assistant", gen.text));
                if interrupted.swap(false, Ordering::SeqCst) {
                    eprintln!("(stopped)");
                }
            }
            Err(alpaca::Error::ContextOverflow { .. }) => {
                eprintln!("(the conversation no longer fits the context; use /reset)");
                history.pop();
                cache.clear();
                cached.clear();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
