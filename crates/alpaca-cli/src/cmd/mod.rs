//! One module per subcommand, plus the options they share.

pub mod bench;
pub mod chat;
pub mod data;
pub mod eval;
pub mod export;
pub mod perplexity;
pub mod recipe;
pub mod run;
pub mod serve;
pub mod tokenize;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use alpaca::infer::{Engine, SamplerConfig};

/// `-m` and `-t`, shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF file or Hugging Face model directory [default: the embedded SmolLM2-135M-Instruct]
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Worker threads [default: all cores]
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// LoRA adapter to apply: a run directory of `alpaca train` or a PEFT adapter directory
    #[arg(long = "lora")]
    pub lora: Option<PathBuf>,
    /// Follow llama.cpp's CPU arithmetic: Q8_0 weights multiply 8-bit activations with
    /// integer dots; LLaMA models also take ggml's RoPE, RMSNorm, SwiGLU, an f16 KV cache and
    /// flash attention (parity with llama.cpp, not speed; logits move off the f32 reference)
    #[arg(long = "int8-activations", conflicts_with = "f32_activations")]
    pub int8_activations: bool,
    /// Keep f32 activations in every product (transformers parity). By default one-token
    /// decode of Q8_0/Q5/K-quant models and batched decode steps of every model (the server
    /// under concurrency) quantize activations to 8 bits for integer dots (faster; logits
    /// within the 8-bit rounding); one-token decode of Q4_0/Q4_1/F16/F32 models uses f32
    #[arg(long = "f32-activations")]
    pub f32_activations: bool,
}

impl ModelArgs {
    /// Set up the thread pool and load the model.
    pub fn load(&self) -> Result<Engine> {
        init_threads(self.threads)?;
        alpaca::model::int8::set_int8_activations(self.int8_activations);
        let path = alpaca::assets::resolve_model(self.model.as_deref())?;
        let mut engine = Engine::load(&path)?;
        if self.f32_activations {
            engine
                .model
                .set_act_mode(alpaca::model::int8_decode::ActMode::F32);
        }
        if let Some(dir) = &self.lora {
            alpaca::train::export::load_adapter(dir, &mut engine.model)?;
        }
        Ok(engine)
    }
}

pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    // A second initialization (tests calling twice) is harmless: keep the first pool.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(())
}

/// Sampling flags shared by run and chat. Defaults are the Alpaca demo's (temperature 0.7,
/// top-p 0.9); `--temp 0` is greedy and deterministic.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy
    #[arg(long = "temp", default_value_t = 0.7)]
    pub temp: f32,
    /// Nucleus sampling threshold (1 = off)
    #[arg(long = "top-p", default_value_t = 0.9)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off)
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Drop tokens below this fraction of the best token's probability (0 = off)
    #[arg(long = "min-p", default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty over the last 64 tokens (1 = off)
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Subtract this times a token's count in the last 64 tokens from its logit (OpenAI's frequency_penalty, -2..2)
    #[arg(
        long = "frequency-penalty",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub frequency_penalty: f32,
    /// Subtract this from the logit of every token seen in the last 64 tokens (OpenAI's presence_penalty, -2..2)
    #[arg(
        long = "presence-penalty",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub presence_penalty: f32,
    /// Random seed [default: from the clock]
    #[arg(long = "seed")]
    pub seed: Option<u64>,
    /// Maximum new tokens
    #[arg(short = 'n', long = "max-new-tokens", default_value_t = 256)]
    pub max_new: usize,
    /// Stop when the output contains this string (repeatable)
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn sampler(&self) -> SamplerConfig {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            seed,
        }
    }
}

/// Read a UTF-8 text file, naming the file and the byte offset of bad UTF-8.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: invalid UTF-8 at byte {}",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}
