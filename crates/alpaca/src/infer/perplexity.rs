//! Perplexity of a token stream, scored the way llama.cpp's perplexity tool does: the tokens
//! are cut into non-overlapping windows of `ctx`, each window runs from an empty cache (its
//! first token replaced by BOS when the vocabulary adds one), and only the second half of
//! each window is scored, so every scored token has at least `ctx/2` tokens of context.

use crate::error::{Error, Result};
use crate::model::Model;

/// Running totals of a perplexity computation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Perplexity {
    /// Sum of negative log-likelihoods (nats).
    pub nll: f64,
    /// Tokens scored.
    pub count: usize,
    /// Windows done.
    pub windows: usize,
}

impl Perplexity {
    pub fn value(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }
}

/// Score `tokens` in windows of `ctx` (at most `max_windows`, 0 = all). `on_window` sees the
/// running totals after each window.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_windows: usize,
    on_window: &mut dyn FnMut(&Perplexity),
) -> Result<Perplexity> {
    if ctx < 4 || ctx > model.context_length() {
        return Err(Error::InvalidArgument(format!(
            "window of {ctx} tokens must be between 4 and the model context {}",
            model.context_length()
        )));
    }
    let mut n_windows = tokens.len() / ctx;
    if max_windows > 0 {
        n_windows = n_windows.min(max_windows);
    }
    if n_windows == 0 {
        return Err(Error::InvalidArgument(format!(
            "{} tokens is less than one window of {ctx}",
            tokens.len()
        )));
    }
    let vocab = model.vocab_size();
    let first = ctx / 2;
    let mut p = Perplexity::default();
    for w in 0..n_windows {
        let mut window = tokens[w * ctx..(w + 1) * ctx].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        let mut cache = model.new_cache(ctx);
        // Logits at positions first..ctx-1; position j predicts token j+1.
        let logits = model.forward(&window, &mut cache, ctx - first)?;
        for (i, row) in logits.chunks_exact(vocab).take(ctx - first - 1).enumerate() {
            p.nll += nll(row, window[first + i + 1] as usize);
            p.count += 1;
        }
        p.windows += 1;
        on_window(&p);
    }
    Ok(p)
}

/// Negative log-likelihood of `target` under softmax(`logits`), in f64.
pub fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}
