//! The inference room: a loaded model with its tokenizer and template ([`Engine`]), the
//! sampler, and the one generation loop every command uses (run, chat, server, eval, the
//! local teacher).
//!
//! The loop works on token ids and hands text to a callback as it becomes complete UTF-8;
//! it never prints.

pub mod api;
pub mod batch;
pub mod perplexity;
pub mod sampler;
#[cfg(feature = "server")]
pub mod server;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::data::template::{Template, TemplateChoice};
use crate::error::{Error, Result};
use crate::model::{KvCache, Model};
use crate::tokenizer::{StreamDecoder, Tokenizer};
pub use sampler::{Sampler, SamplerConfig};

/// A model ready to generate: weights, tokenizer and chat template.
pub struct Engine {
    pub path: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The model's own Jinja chat template, if its metadata has one.
    pub chat_template: Option<String>,
}

impl Engine {
    /// Load a model from a path; the format is detected from the path.
    pub fn load(path: &Path) -> Result<Engine> {
        // A GGUF file is memory-mapped; a Hugging Face directory is converted in memory.
        let g = crate::model::hf::open_model(path)?;
        let mut model = Model::from_gguf(&g)?;
        model.set_auto_act_mode();
        let tokenizer = Tokenizer::from_gguf(&g)?;
        if tokenizer.vocab_size() != model.vocab_size() {
            return Err(Error::Config(format!(
                "{}: tokenizer has {} tokens but the model {}",
                path.display(),
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        let chat_template = g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        Ok(Engine {
            path: path.to_path_buf(),
            model,
            tokenizer,
            chat_template,
        })
    }

    /// The template for a `--template` choice.
    pub fn template(&self, choice: TemplateChoice) -> Template {
        let tok = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.token_str(i))
                .unwrap_or("")
                .to_string()
        };
        Template::resolve(
            choice,
            self.chat_template.as_deref(),
            &tok(self.tokenizer.bos_id()),
            &tok(self.tokenizer.eos_id()),
        )
    }

    /// Tokenize a rendered prompt: special-token strings are parsed, and BOS is added when
    /// the vocabulary asks for it, unless the text already starts with it (chat templates
    /// such as Gemma's write `{{ bos_token }}` themselves).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let body = self.tokenizer.encode(text, true)?;
        if self.tokenizer.add_bos() {
            if let Some(b) = self.tokenizer.bos_id() {
                if body.first() != Some(&b) {
                    ids.push(b);
                }
            }
        }
        ids.extend(body);
        Ok(ids)
    }

    /// Generate a continuation of `prompt` (token ids) in a fresh cache.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        // The cache grows with use, so its capacity can be the whole context.
        let mut cache = self.model.new_cache(self.model.context_length());
        self.generate_with_cache(&mut cache, prompt, params, on_text)
    }

    /// Generate, continuing `cache` (which holds a prefix of the conversation). `prompt` is
    /// the new tokens to feed before generation starts.
    pub fn generate_with_cache(
        &self,
        cache: &mut KvCache,
        prompt: &[u32],
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        params.sampler.validate()?;
        let ctx = self.model.context_length();
        let used = cache.len() + prompt.len();
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        if used >= ctx {
            return Err(Error::ContextOverflow {
                prompt: used,
                max_new: params.max_new_tokens,
                ctx,
            });
        }
        // Context guard: never run past the context; the finish reason says so.
        let max_new = params.max_new_tokens.min(ctx - used);
        if cache.capacity() < used + max_new {
            return Err(Error::ContextOverflow {
                prompt: used,
                max_new,
                ctx: cache.capacity(),
            });
        }

        let mut sampler = Sampler::new(params.sampler.clone());
        let mut history: Vec<u32> = prompt.to_vec();
        let mut out_ids = Vec::new();
        let mut decoder = StreamDecoder::new(&self.tokenizer, true);
        let mut stops = StopMatcher::new(&params.stop);
        let eot = self.tokenizer.eot_ids();

        let t0 = Instant::now();
        let mut logits = self.model.forward(prompt, cache, 1)?;
        let prompt_time = t0.elapsed();
        let t1 = Instant::now();
        let mut finish = FinishReason::Length;
        while out_ids.len() < max_new {
            let next = sampler.sample(&mut logits, &history);
            if eot.contains(&next) && !params.ignore_eos {
                finish = FinishReason::Eos;
                break;
            }
            out_ids.push(next);
            history.push(next);
            let piece = decoder.push(next);
            let (emit, stopped) = stops.feed(&piece);
            if !emit.is_empty() && on_text(&emit).is_break() {
                finish = FinishReason::Cancelled;
                break;
            }
            if stopped {
                finish = FinishReason::Stop;
                break;
            }
            if out_ids.len() == max_new {
                break;
            }
            logits = self.model.forward(&[next], cache, 1)?;
        }
        if finish != FinishReason::Stop && finish != FinishReason::Cancelled {
            let rest = decoder.finish();
            let (mut emit, stopped) = stops.feed(&rest);
            if !stopped {
                emit.push_str(&stops.flush());
            } else {
                finish = FinishReason::Stop;
            }
            if !emit.is_empty() {
                let _ = on_text(&emit);
            }
        }
        Ok(Generation {
            text: stops.text,
            ids: out_ids,
            finish,
            prompt_tokens: prompt.len(),
            prompt_time,
            gen_time: t1.elapsed(),
        })
    }
}

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_new_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop when the output contains any of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks, parity checks).
    pub ignore_eos: bool,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_new_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model emitted an end-of-sequence token.
    Eos,
    /// `max_new_tokens` or the context was reached.
    Length,
    /// A stop string appeared.
    Stop,
    /// The caller asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Text returned to the user (stop string removed).
    pub text: String,
    /// Generated token ids (the end-of-sequence token excluded).
    pub ids: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub gen_time: Duration,
}

/// Finds stop strings in streamed text, holding back any tail that could still become one.
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Text emitted so far.
    pub(crate) text: String,
    /// Text received but not yet emitted (a possible stop-string prefix).
    pending: String,
}

impl StopMatcher {
    pub(crate) fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.to_vec(),
            text: String::new(),
            pending: String::new(),
        }
    }

    /// Add text; returns what can be emitted now and whether a stop string was found.
    pub(crate) fn feed(&mut self, s: &str) -> (String, bool) {
        self.pending.push_str(s);
        let hit = self
            .stops
            .iter()
            .filter(|st| !st.is_empty())
            .filter_map(|st| self.pending.find(st.as_str()))
            .min();
        if let Some(at) = hit {
            let emit = self.pending[..at].to_string();
            self.text.push_str(&emit);
            self.pending.clear();
            return (emit, true);
        }
        // Hold back the longest suffix of `pending` that is a prefix of some stop string.
        let mut keep = 0;
        for st in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if st.starts_with(tail) {
                    keep = keep.max(tail.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        self.text.push_str(&emit);
        (emit, false)
    }

    pub(crate) fn flush(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.text.push_str(&rest);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_split_across_pieces() {
        let stops = vec!["###".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.feed("Hello #"), ("Hello ".into(), false));
        assert_eq!(m.feed("#"), ("".into(), false));
        assert_eq!(m.feed("x"), ("##x".into(), false));
        assert_eq!(m.feed(" ##"), (" ".into(), false));
        assert_eq!(m.feed("# tail"), ("".into(), true));
        assert_eq!(m.text, "Hello ##x ");
    }

    #[test]
    fn no_stops_emit_everything() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.feed("abc"), ("abc".into(), false));
        assert_eq!(m.flush(), "");
    }
}
