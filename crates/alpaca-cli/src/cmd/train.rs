//! `alpaca train`: supervised fine-tuning (LoRA, QLoRA on a quantized base, or full) of a
//! GGUF model on Alpaca / ShareGPT / messages data. The work is in `alpaca::train`; this
//! file maps flags to a `TrainConfig` and draws the progress bar.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use alpaca::data::template::TemplateChoice;
use alpaca::train::batch::ValSize;
use alpaca::train::model::LINEAR_NAMES;
use alpaca::train::optim::{AdamWConfig, Schedule};
use alpaca::train::{train, Event, Method, TrainConfig, TrainDevice, Warmup};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Base model (GGUF; quantized weights stay quantized under LoRA)
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Training data: Alpaca JSON/JSONL, ShareGPT or messages (optionally .gz)
    #[arg(long = "data")]
    pub data: PathBuf,
    /// Run directory (checkpoint, metrics.jsonl, loss.svg, adapter or model)
    #[arg(short = 'o', long = "output")]
    pub out: PathBuf,
    /// Train LoRA adapters (the default)
    #[arg(long = "lora", conflicts_with = "full")]
    pub lora: bool,
    /// Full fine-tuning (every weight, dequantized to f32)
    #[arg(long = "full")]
    pub full: bool,
    #[arg(long = "lora-r", default_value_t = 8)]
    pub lora_r: usize,
    #[arg(long = "lora-alpha", default_value_t = 16.0)]
    pub lora_alpha: f32,
    #[arg(long = "lora-dropout", default_value_t = 0.05)]
    pub lora_dropout: f32,
    /// Comma-separated: q,k,v,o,gate,up,down (or all)
    #[arg(long = "lora-targets", default_value = "q,v")]
    pub lora_targets: String,
    /// Peak learning rate
    #[arg(long = "lr", default_value_t = 3e-4)]
    pub lr: f32,
    #[arg(long = "epochs", default_value_t = 3.0, conflicts_with = "max_steps")]
    pub epochs: f32,
    /// Stop after this many optimizer steps (overrides --epochs)
    #[arg(long = "max-steps")]
    pub max_steps: Option<usize>,
    /// Sequences per optimizer step (gradient accumulation over micro-batches)
    #[arg(long = "batch-size", default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long = "micro-batch-size", default_value_t = 4)]
    pub micro_batch_size: usize,
    /// Most tokens per example; long targets are cut, keeping EOS
    #[arg(long = "cutoff-len", default_value_t = 256)]
    pub cutoff_len: usize,
    /// Validation examples: a count (2000) or a fraction (0.1)
    #[arg(long = "val-size", default_value = "2000")]
    pub val_size: ValSize,
    /// alpaca, alpaca-lora, chatml, or auto (the model's own chat template)
    #[arg(long = "template", default_value = "alpaca-lora")]
    pub template: TemplateChoice,
    /// Also put loss on prompt tokens
    #[arg(long = "train-on-inputs")]
    pub train_on_inputs: bool,
    /// Batch sequences of similar length together
    #[arg(long = "group-by-length")]
    pub group_by_length: bool,
    #[arg(long = "warmup-ratio", conflicts_with = "warmup_steps")]
    pub warmup_ratio: Option<f32>,
    /// Warmup steps [default: 100]
    #[arg(long = "warmup-steps")]
    pub warmup_steps: Option<usize>,
    /// cosine, linear or constant
    #[arg(long = "schedule", default_value = "linear")]
    pub schedule: Schedule,
    #[arg(long = "weight-decay", default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long = "adam-beta1", default_value_t = 0.9)]
    pub beta1: f32,
    #[arg(long = "adam-beta2", default_value_t = 0.999)]
    pub beta2: f32,
    #[arg(long = "adam-eps", default_value_t = 1e-8)]
    pub eps: f32,
    /// Clip the global gradient norm (0 = off)
    #[arg(long = "max-grad-norm", default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Checkpoint every N steps (and at the end; 0 = only at the end)
    #[arg(long = "save-every", default_value_t = 200)]
    pub save_every: usize,
    /// Validation loss every N steps (and at the start and end)
    #[arg(long = "eval-every", default_value_t = 200)]
    pub eval_every: usize,
    #[arg(long = "seed", default_value_t = 42)]
    pub seed: u64,
    /// Continue from the run directory's checkpoint
    #[arg(long = "resume")]
    pub resume: bool,
    /// cpu, cuda, cuda:N (builds with --features cuda), candle-cpu (--features candle)
    #[arg(long = "device", default_value = "cpu")]
    pub device: String,
    /// Worker threads [default: all cores]
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// No progress bar (one line per step on stderr instead)
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Testing hook: after checkpointing step N, wait forever (to be killed)
    #[arg(long = "pause-after", hide = true)]
    pub pause_after: Option<usize>,
}

fn parse_targets(s: &str) -> Result<[bool; 7]> {
    let mut t = [false; 7];
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "all" {
            return Ok([true; 7]);
        }
        let short = name.trim_end_matches("_proj");
        match LINEAR_NAMES
            .iter()
            .position(|n| n.trim_end_matches("_proj") == short)
        {
            Some(i) => t[i] = true,
            None => bail!("unknown LoRA target `{name}` (q, k, v, o, gate, up, down, all)"),
        }
    }
    if !t.iter().any(|x| *x) {
        bail!("--lora-targets is empty");
    }
    Ok(t)
}

/// Keep freed heap memory in the process: every micro-batch allocates and frees the same
/// large buffers (activations, logits, dequantized weights), and with glibc's defaults each
/// one is a fresh `mmap` whose pages fault in again, then go back to the kernel (about 9% of
/// a LoRA step in a profile). One arena, too: glibc gives each thread its own, and those
/// unmap a heap that becomes free whatever the trim threshold (about 35,000 page faults per
/// LoRA q,v step of 4 x 256 tokens with the default arenas, none with one). Peak memory is
/// unchanged; only its reuse is. Set before the thread pool exists, so no thread has an arena
/// of its own yet.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_MAX: i32 = -4;
    const M_ARENA_MAX: i32 = -8;
    // SAFETY: glibc's `mallopt` only tunes the allocator; called before the training threads
    // allocate anything large. A rejected setting (return 0) just keeps the default.
    unsafe {
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
        mallopt(M_MMAP_MAX, 0);
        mallopt(M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

pub fn run(a: TrainArgs) -> Result<()> {
    let device: TrainDevice = a.device.parse()?;
    device.check_built()?;
    let threads = match a.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    keep_freed_memory();
    super::init_threads(Some(threads))?;

    let mut cfg = TrainConfig::new(a.model.clone(), a.data.clone(), a.out.clone());
    cfg.device = device;
    cfg.method = if a.full {
        Method::Full
    } else {
        Method::Lora {
            r: a.lora_r,
            alpha: a.lora_alpha,
            dropout: a.lora_dropout,
            targets: parse_targets(&a.lora_targets)?,
        }
    };
    cfg.lr = a.lr;
    cfg.epochs = a.epochs;
    cfg.max_steps = a.max_steps;
    cfg.batch_size = a.batch_size;
    cfg.micro_batch_size = a.micro_batch_size;
    cfg.cutoff_len = a.cutoff_len;
    cfg.val_size = a.val_size;
    cfg.template = a.template;
    cfg.train_on_inputs = a.train_on_inputs;
    cfg.group_by_length = a.group_by_length;
    cfg.warmup = match (a.warmup_ratio, a.warmup_steps) {
        (Some(r), _) => Warmup::Ratio(r),
        (None, Some(s)) => Warmup::Steps(s),
        (None, None) => Warmup::Steps(100),
    };
    cfg.schedule = a.schedule;
    cfg.adamw = AdamWConfig {
        beta1: a.beta1,
        beta2: a.beta2,
        eps: a.eps,
        weight_decay: a.weight_decay,
    };
    cfg.max_grad_norm = a.max_grad_norm;
    cfg.save_every = a.save_every;
    cfg.eval_every = a.eval_every;
    cfg.seed = a.seed;
    cfg.resume = a.resume;

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let bar = ProgressBar::hidden();
    let quiet = a.quiet;
    let pause_after = a.pause_after;
    let mut on_event = |e: &Event| {
        match e {
            Event::Start {
                n_train,
                n_val,
                skipped,
                total_steps,
                start_step,
                trainable_params,
            } => {
                eprintln!(
                    "train: {n_train} examples ({n_val} validation, {skipped} skipped: prompt longer than the cutoff), \
                     {total_steps} steps, {trainable_params} trainable parameters{}",
                    if *start_step > 0 { format!(", resuming at step {start_step}") } else { String::new() }
                );
                if !quiet {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_length(*total_steps as u64);
                    bar.set_position(*start_step as u64);
                    bar.reset_eta();
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                }
            }
            Event::InitialEval { loss } => {
                bar.suspend(|| eprintln!("step 0: eval loss {loss:.4}"));
            }
            Event::Step(m) => {
                let msg = format!(
                    "loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s",
                    m.loss, m.lr, m.grad_norm, m.tokens_per_s
                );
                if quiet {
                    eprintln!("step {}: {msg}", m.step);
                } else {
                    bar.set_message(msg);
                    bar.set_position(m.step as u64);
                }
                if let Some(ev) = m.eval_loss {
                    bar.suspend(|| eprintln!("step {}: eval loss {ev:.4}", m.step));
                }
            }
            Event::Checkpoint { step, .. } => {
                if pause_after == Some(*step) {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
            }
        }
        if interrupted.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let summary = train(&cfg, &mut on_event)?;
    bar.finish_and_clear();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    eprintln!(
        "done: {} steps, train loss {}, eval loss {} (step 0: {}); outputs in {}",
        summary.steps,
        fmt(summary.final_train_loss),
        fmt(summary.final_eval_loss),
        fmt(summary.initial_eval_loss),
        a.out.display()
    );
    Ok(())
}
