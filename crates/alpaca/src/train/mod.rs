//! The train room: supervised fine-tuning of a GGUF model (LLaMA, Gemma 3) on instruction data, full or LoRA
//! (QLoRA when the base is quantized: the base stays in its file type and frozen).
//!
//! - [`batch`]: template, tokenization with an exact prompt/target boundary, masking,
//!   split, length-grouped batching;
//! - [`model`]: the training graph's shared types (parameters, LoRA linears, the method);
//!   [`layers`]: its primitives, forward and backward; [`llama`], [`gemma3`]: one graph per
//!   architecture (llm.c style: an explicit forward and backward);
//! - [`gemm`]: the f32 matrix products under it;
//! - [`optim`]: AdamW, schedules with warmup, gradient clipping;
//! - [`checkpoint`]: safetensors I/O and atomic checkpoints with exact resume;
//! - [`export`]: the PEFT adapter / Hugging Face model written at the end;
//! - [`metrics`]: `metrics.jsonl` and `loss.svg`;
//! - [`candle_device`]: where the forward and backward run (`--device`); `candle` (feature
//!   `candle`/`cuda`): the same step on candle's CPU or CUDA backend.
//!
//! [`train`] runs a whole job and reports through a callback; it never prints.

pub mod batch;
#[cfg(feature = "candle")]
pub mod candle;
pub mod candle_device;
pub mod checkpoint;
pub mod export;
pub mod gemm;
pub mod gemma3;
pub mod layers;
pub mod llama;
pub mod metrics;
pub mod model;
pub mod optim;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::json;

use crate::data::io::read_examples;
use crate::data::template::{Template, TemplateChoice};
use crate::error::{Error, Result};
use crate::model::hf::open_model;
use crate::model::Model;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use batch::{encode_example, epoch_batches, split, Batch, Encoded, ValSize};
use candle_device::Stepper;
pub use candle_device::TrainDevice;
pub use metrics::StepMetrics;
pub use model::Method;
use model::TrainModel;
use optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};

/// Warmup length: a fraction of all steps, or a step count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    Ratio(f32),
    Steps(usize),
}

/// A validated training job. Defaults (see [`TrainConfig::new`]) are alpaca-lora's.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Base model (GGUF).
    pub model: PathBuf,
    /// Alpaca JSON / JSONL / ShareGPT / messages file.
    pub data: PathBuf,
    /// Run directory: checkpoint, metrics, outputs.
    pub out_dir: PathBuf,
    /// LoRA r 8, alpha 16, dropout 0.05 on q and v by default.
    pub method: Method,
    /// Peak learning rate (3e-4).
    pub lr: f32,
    /// Passes over the training split (3), unless `max_steps` is set.
    pub epochs: f32,
    pub max_steps: Option<usize>,
    /// Sequences per optimizer step (128); a multiple of `micro_batch_size`.
    pub batch_size: usize,
    /// Sequences per forward/backward (4).
    pub micro_batch_size: usize,
    /// Most tokens per example (256); the target is cut, keeping its EOS.
    pub cutoff_len: usize,
    /// Validation split (2000 examples).
    pub val_size: ValSize,
    pub template: TemplateChoice,
    /// Loss on prompt tokens too (off: response tokens only).
    pub train_on_inputs: bool,
    pub group_by_length: bool,
    pub warmup: Warmup,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (1.0; 0 = off).
    pub max_grad_norm: f32,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// Validation loss every N steps (0: only at the start and the end).
    pub eval_every: usize,
    pub seed: u64,
    /// Continue from `out_dir/checkpoint.safetensors` when it exists.
    pub resume: bool,
    /// Where the forward and backward run (not in the fingerprint: resuming on another
    /// device is allowed).
    pub device: TrainDevice,
}

impl TrainConfig {
    pub fn new(model: PathBuf, data: PathBuf, out_dir: PathBuf) -> Self {
        TrainConfig {
            model,
            data,
            out_dir,
            method: Method::Lora {
                r: 8,
                alpha: 16.0,
                dropout: 0.05,
                targets: [true, false, true, false, false, false, false],
            },
            lr: 3e-4,
            epochs: 3.0,
            max_steps: None,
            batch_size: 128,
            micro_batch_size: 4,
            cutoff_len: 256,
            val_size: ValSize::Count(2000),
            template: TemplateChoice::AlpacaLora,
            train_on_inputs: false,
            group_by_length: false,
            warmup: Warmup::Steps(100),
            schedule: Schedule::Linear,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            save_every: 200,
            eval_every: 200,
            seed: 42,
            resume: false,
            device: TrainDevice::Cpu,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.micro_batch_size == 0 || self.batch_size == 0 {
            return bad("batch sizes must be at least 1".into());
        }
        if !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return bad(format!(
                "--batch-size {} must be a multiple of --micro-batch-size {}",
                self.batch_size, self.micro_batch_size
            ));
        }
        if self.cutoff_len < 2 {
            return bad("--cutoff-len must be at least 2".into());
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return bad("--lr must be positive".into());
        }
        if let Method::Lora {
            r,
            dropout,
            targets,
            ..
        } = &self.method
        {
            if *r == 0 || !(0.0..1.0).contains(dropout) || !targets.iter().any(|t| *t) {
                return bad("LoRA needs r >= 1, 0 <= dropout < 1 and at least one target".into());
            }
        }
        Ok(())
    }

    /// The settings that must match for `--resume` (everything that changes the math).
    fn fingerprint(&self) -> serde_json::Value {
        json!({
            "data": self.data, "method": format!("{:?}", self.method), "lr": self.lr,
            "epochs": self.epochs, "max_steps": self.max_steps, "batch_size": self.batch_size,
            "micro_batch_size": self.micro_batch_size, "cutoff_len": self.cutoff_len,
            "val_size": format!("{:?}", self.val_size), "template": format!("{:?}", self.template),
            "train_on_inputs": self.train_on_inputs, "group_by_length": self.group_by_length,
            "warmup": format!("{:?}", self.warmup), "schedule": self.schedule.name(),
            "adamw": format!("{:?}", self.adamw), "max_grad_norm": self.max_grad_norm,
            "seed": self.seed,
        })
    }
}

/// What [`train`] reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// Data and model ready.
    Start {
        n_train: usize,
        n_val: usize,
        /// Examples dropped because their prompt does not fit the cutoff.
        skipped: usize,
        total_steps: usize,
        start_step: usize,
        trainable_params: usize,
    },
    /// Validation loss before training.
    InitialEval {
        loss: f64,
    },
    Step(StepMetrics),
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
}

/// The outcome of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub steps: usize,
    pub initial_eval_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub n_train: usize,
    pub n_val: usize,
    pub skipped: usize,
}

/// Tokenized training and validation sets.
struct Data {
    train: Vec<Encoded>,
    val: Vec<Encoded>,
    skipped: usize,
}

fn prepare_data(cfg: &TrainConfig, tok: &Tokenizer, template: &Template) -> Result<Data> {
    let ds = read_examples(&cfg.data)?;
    if ds.examples.is_empty() {
        return Err(Error::EmptyDataset {
            path: cfg.data.clone(),
        });
    }
    let encoded: Vec<Option<Encoded>> = ds
        .examples
        .par_iter()
        .map(|ex| encode_example(tok, template, ex, cfg.cutoff_len, cfg.train_on_inputs))
        .collect::<Result<_>>()?;
    let skipped = encoded.iter().filter(|e| e.is_none()).count();
    if skipped == encoded.len() {
        let shortest = ds
            .examples
            .iter()
            .filter_map(|ex| {
                let text = template
                    .render_instruction(&ex.instruction, &ex.input)
                    .ok()?;
                tok.encode(&text, true)
                    .ok()
                    .map(|ids| ids.len() + tok.add_bos() as usize)
            })
            .min()
            .unwrap_or(0);
        return Err(Error::CutoffTooShort {
            cutoff: cfg.cutoff_len,
            shortest,
        });
    }
    let (ti, vi) = split(encoded.len(), cfg.val_size, cfg.seed);
    let pick = |idx: &[usize]| -> Vec<Encoded> {
        idx.iter().filter_map(|&i| encoded[i].clone()).collect()
    };
    let (train, val) = (pick(&ti), pick(&vi));
    if train.is_empty() {
        return Err(Error::EmptyDataset {
            path: cfg.data.clone(),
        });
    }
    Ok(Data {
        train,
        val,
        skipped,
    })
}

/// Mean validation loss (no dropout, no gradients).
fn evaluate(
    dev: &mut Stepper,
    m: &mut TrainModel,
    val: &[Encoded],
    micro: usize,
) -> Result<Option<f64>> {
    if val.is_empty() {
        return Ok(None);
    }
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in val.chunks(micro.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let out = dev.forward_backward(m, &Batch::from_encoded(&refs), 0.0, None, false)?;
        sum += out.loss_sum;
        count += out.n_targets;
    }
    Ok(Some(sum / count.max(1) as f64))
}

/// Run a training job. `on_event` may stop it early (`Break`), e.g. on Ctrl-C; the last
/// checkpoint then stays as it was.
pub fn train(
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(&Event) -> ControlFlow<()>,
) -> Result<Summary> {
    cfg.validate()?;
    let mut dev = Stepper::new(cfg.device)?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;
    let g = open_model(&cfg.model)?;
    let base = Model::from_gguf(&g)?;
    let tok = Tokenizer::from_gguf(&g)?;
    let tok_str = |id: Option<u32>| id.and_then(|i| tok.token_str(i)).unwrap_or("").to_string();
    let template = Template::resolve(
        cfg.template,
        tok.chat_template(),
        &tok_str(tok.bos_id()),
        &tok_str(tok.eos_id()),
    );
    let data = prepare_data(cfg, &tok, &template)?;
    let mut model = TrainModel::from_model(&base, &cfg.method, cfg.seed)?;
    drop(base);

    let micro = cfg.micro_batch_size;
    let accum = cfg.batch_size / micro;
    let lens: Vec<usize> = data.train.iter().map(|e| e.ids.len()).collect();
    let per_epoch = data.train.len().div_ceil(micro);
    let total = match cfg.max_steps {
        Some(s) => s,
        None => ((cfg.epochs as f64 * per_epoch as f64) / accum as f64).ceil() as usize,
    }
    .max(1);
    let warmup = match cfg.warmup {
        Warmup::Steps(s) => s,
        Warmup::Ratio(r) => (r as f64 * total as f64).ceil() as usize,
    };

    let ckpt = cfg.out_dir.join("checkpoint.safetensors");
    let metrics_path = cfg.out_dir.join("metrics.jsonl");
    let mut opt = AdamW::new(cfg.adamw, &model.params_mut());
    let (mut step, mut micro_pos) = (0usize, 0u64);
    let mut records = Vec::new();
    if cfg.resume && ckpt.exists() {
        let st = checkpoint::load(&ckpt, &mut model.params_mut(), &mut opt)?;
        if st.config != cfg.fingerprint() {
            return Err(Error::Train(format!(
                "{} was written with other settings ({}); resume with the same flags or use a new run directory",
                ckpt.display(),
                st.config
            )));
        }
        step = st.step;
        micro_pos = st.micro_pos;
        records = metrics::truncate_metrics(&metrics_path, step)?;
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    }
    let trainable = model.params_mut().iter().map(|p| p.w.len()).sum();
    let mut stop = on_event(&Event::Start {
        n_train: data.train.len(),
        n_val: data.val.len(),
        skipped: data.skipped,
        total_steps: total,
        start_step: step,
        trainable_params: trainable,
    })
    .is_break();

    let mut summary = Summary {
        steps: step,
        initial_eval_loss: None,
        final_eval_loss: None,
        final_train_loss: None,
        n_train: data.train.len(),
        n_val: data.val.len(),
        skipped: data.skipped,
    };
    let summary_path = cfg.out_dir.join("train_summary.json");
    if step == 0 {
        summary.initial_eval_loss = evaluate(&mut dev, &mut model, &data.val, micro)?;
        if let Some(loss) = summary.initial_eval_loss {
            stop |= on_event(&Event::InitialEval { loss }).is_break();
        }
        write_summary(&summary_path, &summary)?;
    } else if let Ok(text) = std::fs::read_to_string(&summary_path) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        summary.initial_eval_loss = v["initial_eval_loss"].as_f64();
    }

    let mut epoch_cache: Option<(usize, Vec<Vec<usize>>)> = None;
    while step < total && !stop {
        let t0 = Instant::now();
        let lr = cfg.schedule.lr(cfg.lr, step, warmup, total);
        let mut batches = Vec::with_capacity(accum);
        for _ in 0..accum {
            let epoch = (micro_pos / per_epoch as u64) as usize;
            let idx = (micro_pos % per_epoch as u64) as usize;
            if epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let order = epoch_batches(&lens, micro, cfg.seed, epoch, cfg.group_by_length);
                epoch_cache = Some((epoch, order));
            }
            let order = &epoch_cache.as_ref().expect("filled above").1;
            let refs: Vec<&Encoded> = order[idx].iter().map(|&i| &data.train[i]).collect();
            batches.push(Batch::from_encoded(&refs));
            micro_pos += 1;
        }
        let n_targets: usize = batches.iter().map(|b| b.targets.len()).sum();
        let n_tokens: usize = batches.iter().map(|b| b.tokens.len()).sum();
        let scale = 1.0 / n_targets.max(1) as f32;
        model.zero_grad();
        let mut loss_sum = 0f64;
        for (j, b) in batches.iter().enumerate() {
            let seed =
                Rng::new(cfg.seed ^ ((step * 4096 + j) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
                    .next_u64();
            loss_sum += dev
                .forward_backward(&mut model, b, scale, Some(seed), true)?
                .loss_sum;
        }
        let loss = loss_sum / n_targets.max(1) as f64;
        if !loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                step: step + 1,
                loss,
            });
        }
        if matches!(cfg.method, Method::Full) {
            // AdamW reads and writes four copies of every weight here: recycled activations
            // held across it would add to the peak (3.53 vs 3.29 GiB at 4 x 256). LoRA's
            // state is small, so its buffers stay for the next step's forward.
            layers::release_scratch();
        }
        let mut params = model.params_mut();
        let gnorm = clip_grad_norm(&mut params, cfg.max_grad_norm);
        if !gnorm.is_finite() {
            return Err(Error::NonFiniteLoss {
                step: step + 1,
                loss: gnorm,
            });
        }
        opt.step(&mut params, lr);
        drop(params);
        dev.params_changed();
        step += 1;
        let tokens_per_s = n_tokens as f64 / t0.elapsed().as_secs_f64();
        let last = step == total;
        let eval_loss = if (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) || last {
            evaluate(&mut dev, &mut model, &data.val, micro)?
        } else {
            None
        };
        let rec = StepMetrics {
            step,
            loss,
            lr,
            grad_norm: gnorm,
            tokens_per_s,
            eval_loss,
        };
        metrics::append_metrics(&metrics_path, &rec)?;
        records.push(rec.clone());
        summary.final_train_loss = Some(loss);
        if eval_loss.is_some() {
            summary.final_eval_loss = eval_loss;
        }
        stop |= on_event(&Event::Step(rec)).is_break();
        if (cfg.save_every > 0 && step.is_multiple_of(cfg.save_every)) || last {
            let state = checkpoint::TrainState {
                step,
                micro_pos,
                seed: cfg.seed,
                config: cfg.fingerprint(),
            };
            checkpoint::save(&ckpt, &model.params_mut(), &opt, &state)?;
            stop |= on_event(&Event::Checkpoint {
                step,
                path: ckpt.clone(),
            })
            .is_break();
        }
    }
    summary.steps = step;
    write_outputs(cfg, &model, &records, &summary)?;
    Ok(summary)
}

/// The adapter or model, the loss curve and the summary.
fn write_outputs(
    cfg: &TrainConfig,
    model: &TrainModel,
    records: &[StepMetrics],
    summary: &Summary,
) -> Result<()> {
    let base = cfg.model.display().to_string();
    match &cfg.method {
        Method::Full => export::save_full(&cfg.out_dir, model)?,
        m => export::save_adapter(&cfg.out_dir, model, m, &base)?,
    }
    let title = format!("{} on {}", base_name(&cfg.model), base_name(&cfg.data));
    let svg = metrics::loss_svg(records, &title);
    crate::data::io::write_atomic(&cfg.out_dir.join("loss.svg"), svg.as_bytes())?;
    write_summary(&cfg.out_dir.join("train_summary.json"), summary)
}

fn write_summary(path: &Path, summary: &Summary) -> Result<()> {
    let text = serde_json::to_string_pretty(summary).map_err(|e| Error::Internal(e.to_string()))?;
    crate::data::io::write_atomic(path, text.as_bytes())
}

fn base_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
