//! Held-out loss and perplexity on response tokens only.
//!
//! Each example is encoded exactly as `alpaca train` encodes it
//! ([`encode_example`]: template, exact prompt/target boundary, target cut at the cutoff with
//! its EOS kept) and scored by the inference engine's forward pass, so an adapter applied to
//! the [`Engine`] is scored as it will be used. Only the target tokens (the response and its
//! EOS) count; the sum and the count run in [`Perplexity`], the accumulator of
//! `alpaca perplexity`, with its [`nll`].
//!
//! The split is the one of `alpaca train` ([`split`] over every record of the file, seeded),
//! so "held out" means held out from training. [`RunSplit::from_run_dir`] reads a run
//! directory's recorded settings (data file, validation size, seed, cutoff, template), so the
//! base model and the tuned one are scored on the very same examples.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::io::read_examples;
use crate::data::template::{Template, TemplateChoice};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::infer::perplexity::{nll, Perplexity};
use crate::infer::Engine;
use crate::train::batch::{encode_example, split, ValSize};

/// Loss of a model on the response tokens of a set of examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossReport {
    /// Mean negative log-likelihood per response token (nats), EOS included.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Examples scored (those whose prompt fits the cutoff).
    pub n_examples: usize,
    /// Response tokens scored.
    pub n_tokens: usize,
    /// Examples skipped because the prompt leaves no room for a target token.
    pub n_skipped: usize,
}

/// Mean response-token loss of `engine` (with whatever adapter it carries) on `examples`.
///
/// `progress(done, total)` is called after each example. Examples whose prompt does not fit
/// `cutoff_len` (at most the model's context) are skipped and counted, as training skips them.
pub fn response_loss(
    engine: &Engine,
    examples: &[Example],
    template: &Template,
    cutoff_len: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LossReport> {
    if cutoff_len < 2 {
        return Err(Error::InvalidArgument(format!(
            "--cutoff-len {cutoff_len} must be at least 2"
        )));
    }
    // Longer than the context cannot be scored: cut there.
    let cutoff_len = cutoff_len.min(engine.model.context_length());
    if examples.is_empty() {
        return Err(Error::InvalidArgument("no examples to score".into()));
    }
    let vocab = engine.model.vocab_size();
    let mut acc = Perplexity::default();
    let mut skipped = 0;
    for (i, ex) in examples.iter().enumerate() {
        match encode_example(&engine.tokenizer, template, ex, cutoff_len, false)? {
            None => skipped += 1,
            Some(enc) => {
                // Position j predicts id j+1: feed all ids but the last, keep the logits of
                // the positions loss_from-1 ..= len-2.
                let n = enc.n_targets();
                let feed = &enc.ids[..enc.ids.len() - 1];
                let mut cache = engine.model.new_cache(feed.len());
                let logits = engine.model.forward(feed, &mut cache, n)?;
                for (row, &target) in logits.chunks_exact(vocab).zip(&enc.ids[enc.loss_from..]) {
                    acc.nll += nll(row, target as usize);
                    acc.count += 1;
                }
                acc.windows += 1;
            }
        }
        progress(i + 1, examples.len());
    }
    if acc.count == 0 {
        return Err(Error::CutoffTooShort {
            cutoff: cutoff_len,
            shortest: 0,
        });
    }
    let loss = acc.nll / acc.count as f64;
    Ok(LossReport {
        loss,
        perplexity: acc.value(),
        n_examples: acc.windows,
        n_tokens: acc.count,
        n_skipped: skipped,
    })
}

/// Where the held-out examples come from: a data file split as `alpaca train` splits it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSplit {
    pub data: PathBuf,
    pub val_size: ValSize,
    pub seed: u64,
    pub cutoff_len: usize,
    pub template: TemplateChoice,
}

impl RunSplit {
    /// The split `alpaca train` would make with these flags (its defaults: val 2000,
    /// seed 42, cutoff 256, template alpaca-lora).
    pub fn new(data: PathBuf) -> Self {
        RunSplit {
            data,
            val_size: ValSize::Count(2000),
            seed: 42,
            cutoff_len: 256,
            template: TemplateChoice::AlpacaLora,
        }
    }

    /// The settings a training run recorded in its checkpoint (`checkpoint.safetensors`).
    pub fn from_run_dir(dir: &Path) -> Result<Self> {
        let ckpt = dir.join("checkpoint.safetensors");
        if !ckpt.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{} is not an `alpaca train` run directory (no checkpoint.safetensors); give --data instead",
                dir.display()
            )));
        }
        let st = crate::train::checkpoint::read_safetensors(&ckpt)?;
        let bad = |r: String| Error::Train(format!("checkpoint {}: {r}", ckpt.display()));
        let state: serde_json::Value = serde_json::from_str(
            st.meta
                .get("alpaca.train_state")
                .ok_or_else(|| bad("no training state".into()))?,
        )
        .map_err(|e| bad(e.to_string()))?;
        let c = &state["config"];
        let field = |k: &str| bad(format!("config has no usable `{k}`"));
        let data = c["data"].as_str().ok_or_else(|| field("data"))?;
        let val_size = parse_val_debug(c["val_size"].as_str().unwrap_or(""))
            .ok_or_else(|| field("val_size"))?;
        let template = match c["template"].as_str().unwrap_or("") {
            "Auto" => TemplateChoice::Auto,
            "Alpaca" => TemplateChoice::Alpaca,
            "AlpacaLora" => TemplateChoice::AlpacaLora,
            "ChatMl" => TemplateChoice::ChatMl,
            "Raw" => TemplateChoice::Raw,
            _ => return Err(field("template")),
        };
        Ok(RunSplit {
            data: PathBuf::from(data),
            val_size,
            seed: c["seed"].as_u64().ok_or_else(|| field("seed"))?,
            cutoff_len: c["cutoff_len"]
                .as_u64()
                .ok_or_else(|| field("cutoff_len"))? as usize,
            template,
        })
    }

    /// Read the data file and return the validation examples (all of them with `all`).
    pub fn examples(&self, all: bool) -> Result<Vec<Example>> {
        let ds = read_examples(&self.data)?;
        if ds.examples.is_empty() {
            return Err(Error::EmptyDataset {
                path: self.data.clone(),
            });
        }
        if all {
            return Ok(ds.examples);
        }
        Ok(held_out(ds.examples, self.val_size, self.seed))
    }
}

/// The validation examples of `alpaca train --val-size val --seed seed` on these examples
/// (the split is over every record, before prompts too long for the cutoff are dropped).
pub fn held_out(examples: Vec<Example>, val: ValSize, seed: u64) -> Vec<Example> {
    let (_, vi) = split(examples.len(), val, seed);
    let mut keep = vec![false; examples.len()];
    vi.iter().for_each(|&i| keep[i] = true);
    examples
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| k.then_some(e))
        .collect()
}

/// `Count(99)` / `Fraction(0.1)`, as a run's config records them.
fn parse_val_debug(s: &str) -> Option<ValSize> {
    let inner = |p: &str| s.strip_prefix(p)?.strip_suffix(')');
    if let Some(n) = inner("Count(") {
        return n.parse().ok().map(ValSize::Count);
    }
    inner("Fraction(")?.parse().ok().map(ValSize::Fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fresh::{random_llama_gguf, tiny_llama_config};
    use crate::model::quant::GgmlType;
    use crate::tokenizer::tiny_test_vocab;

    fn engine(name: &str) -> (Engine, PathBuf) {
        let tok = tiny_test_vocab();
        let w = random_llama_gguf(&tiny_llama_config(tok.tokens.len()), &tok, GgmlType::F32, 5)
            .expect("model");
        let path = std::env::temp_dir().join(format!(
            "alpaca-eval-loss-{name}-{}.gguf",
            std::process::id()
        ));
        w.write(&path).expect("write");
        (Engine::load(&path).expect("load"), path)
    }

    #[test]
    fn loss_is_the_mean_nll_of_target_tokens() {
        let (e, path) = engine("mean");
        let exs = vec![
            Example::new("Say hi", "", "the thing"),
            Example::new("Say", "a dog", "the cat is here"),
        ];
        let t = Template::Alpaca;
        let mut calls = Vec::new();
        let r = response_loss(&e, &exs, &t, 512, &mut |d, n| calls.push((d, n))).expect("loss");
        assert_eq!(calls, vec![(1, 2), (2, 2)]);
        // Reference: score each target token from a full forward, one position at a time.
        let (mut sum, mut count) = (0f64, 0usize);
        for ex in &exs {
            let enc = encode_example(&e.tokenizer, &t, ex, 512, false)
                .expect("encode")
                .expect("fits");
            for i in enc.loss_from..enc.ids.len() {
                let mut cache = e.model.new_cache(i);
                let logits = e.model.forward(&enc.ids[..i], &mut cache, 1).expect("fwd");
                sum += nll(&logits, enc.ids[i] as usize);
                count += 1;
            }
        }
        assert_eq!(r.n_tokens, count);
        assert_eq!(r.n_examples, 2);
        assert!((r.loss - sum / count as f64).abs() < 1e-4, "{r:?}");
        assert!((r.perplexity - r.loss.exp()).abs() < 1e-9);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn held_out_matches_the_training_split() {
        let exs: Vec<Example> = (0..50)
            .map(|i| Example::new(format!("i{i}"), "", "o"))
            .collect();
        let v = held_out(exs.clone(), ValSize::Count(7), 3);
        let (_, vi) = split(50, ValSize::Count(7), 3);
        let want: Vec<Example> = vi.iter().map(|&i| exs[i].clone()).collect();
        assert_eq!(v, want);
        assert_eq!(parse_val_debug("Count(99)"), Some(ValSize::Count(99)));
        assert_eq!(
            parse_val_debug("Fraction(0.1)"),
            Some(ValSize::Fraction(0.1))
        );
        assert_eq!(parse_val_debug("Other"), None);
    }
}
