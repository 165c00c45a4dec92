//! Predictions: answers of one model to an instruction set, one JSONL record per item, with
//! the fields of Self-Instruct's prediction files (`instruction`, `input`, `response`) plus
//! the item `id`, the reference output when the set has one, and the model and sampling
//! settings.
//!
//! Generation goes through the continuous-batching [`Scheduler`], so many answers share each
//! pass over the weights. Records are appended as answers finish ([`JsonlLog`]); rerunning
//! the same command continues an interrupted file (settings must match), and the finished
//! file is rewritten atomically in the instruction set's order. Each item samples from its
//! own seed (the run's seed and the item id), so answers do not depend on batching order.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::items::EvalItem;
use super::log::{finish, JsonlLog};
use crate::data::template::Template;
use crate::error::{Error, Result};
use crate::infer::batch::{Event as GenEvent, Job, Scheduler, SchedulerConfig, Sink, SubmitError};
use crate::infer::{Engine, GenParams, SamplerConfig};

/// The settings that produced a prediction; a resumed file must have been written with the
/// same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenSettings {
    /// Model file.
    pub model: String,
    /// LoRA adapter directory, if any.
    #[serde(default)]
    pub lora: Option<String>,
    /// Template name (`auto` is the model's own chat template).
    pub template: String,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub repeat_penalty: f32,
    pub seed: u64,
    #[serde(default)]
    pub stop: Vec<String>,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub response: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Short name of the model that answered (reports use it).
    pub generator: String,
    /// `stop` (end of sequence or a stop string) or `length`.
    pub finish: String,
    pub completion_tokens: usize,
    pub settings: GenSettings,
}

/// A prediction run.
#[derive(Debug, Clone)]
pub struct PredictConfig {
    pub generator: String,
    pub settings: GenSettings,
    pub template: Template,
    /// Sequences decoded together.
    pub max_seqs: usize,
}

impl PredictConfig {
    fn params(&self, id: &str) -> GenParams {
        let s = &self.settings;
        GenParams {
            max_new_tokens: s.max_new_tokens,
            sampler: SamplerConfig {
                temperature: s.temperature,
                top_p: s.top_p,
                top_k: s.top_k,
                repeat_penalty: s.repeat_penalty,
                seed: s.seed ^ fnv1a(id),
                ..SamplerConfig::default()
            },
            stop: s.stop.clone(),
            ignore_eos: false,
        }
    }
}

/// Progress of [`predict`].
#[derive(Debug, Clone)]
pub enum PredictEvent {
    /// The file is open: `done` of `total` items were already answered.
    Start {
        total: usize,
        done: usize,
        torn_bytes: usize,
    },
    /// One more answer is on disk.
    Answered {
        done: usize,
        total: usize,
        completion_tokens: usize,
    },
}

/// The outcome of [`predict`].
#[derive(Debug, Clone)]
pub struct PredictSummary {
    pub total: usize,
    /// Answered in this call.
    pub new: usize,
    /// Answered before this call (resumed).
    pub resumed: usize,
    /// All items answered (the file is complete and in order).
    pub complete: bool,
    pub completion_tokens: usize,
}

struct ChanSink {
    idx: usize,
    tx: Sender<(usize, GenEvent)>,
}

impl Sink for ChanSink {
    fn send(&mut self, ev: GenEvent) -> ControlFlow<()> {
        match self.tx.send((self.idx, ev)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
    fn is_closed(&self) -> bool {
        false
    }
}

/// Answer every item of `items` into `out` (continuing it unless `overwrite`). `on_event`
/// may stop the run (`Break`, e.g. on Ctrl-C): what is on disk stays valid and a rerun
/// continues it.
pub fn predict(
    engine: Arc<Engine>,
    items: &[EvalItem],
    out: &Path,
    cfg: &PredictConfig,
    overwrite: bool,
    on_event: &mut dyn FnMut(&PredictEvent) -> ControlFlow<()>,
) -> Result<PredictSummary> {
    let reopened = JsonlLog::<Prediction>::open(out, overwrite)?;
    let mut log = reopened.log;
    let index: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i))
        .collect();
    let mut answers: Vec<Option<Prediction>> = vec![None; items.len()];
    for (line, p) in reopened.records {
        let bad = |reason: String| Error::Data {
            path: out.to_path_buf(),
            line,
            reason,
        };
        if p.settings != cfg.settings {
            return Err(bad(format!(
                "written with other settings ({}); rerun with the same flags or pass --overwrite",
                describe_diff(&p.settings, &cfg.settings)
            )));
        }
        let i = *index.get(p.id.as_str()).ok_or_else(|| {
            bad(format!(
                "id `{}` is not in the instruction set; use another output file or --overwrite",
                p.id
            ))
        })?;
        answers[i] = Some(p);
    }
    let resumed = answers.iter().filter(|a| a.is_some()).count();
    let total = items.len();
    let mut summary = PredictSummary {
        total,
        new: 0,
        resumed,
        complete: false,
        completion_tokens: 0,
    };
    let mut stop = on_event(&PredictEvent::Start {
        total,
        done: resumed,
        torn_bytes: reopened.torn_bytes,
    })
    .is_break();
    let todo: Vec<usize> = (0..total).filter(|&i| answers[i].is_none()).collect();
    if !todo.is_empty() && !stop {
        let max_seqs = cfg.max_seqs.max(1);
        let sched = Scheduler::start(
            Arc::clone(&engine),
            SchedulerConfig {
                max_seqs,
                queue_capacity: max_seqs,
                prefill_chunk: 256,
            },
        )?;
        let res = run_jobs(&sched, &engine, items, &todo, cfg, &mut |i, p| {
            log.append(&p)?;
            summary.new += 1;
            summary.completion_tokens += p.completion_tokens;
            let ev = PredictEvent::Answered {
                done: resumed + summary.new,
                total,
                completion_tokens: p.completion_tokens,
            };
            answers[i] = Some(p);
            Ok(on_event(&ev))
        });
        sched.shutdown(Duration::ZERO);
        stop = res?;
    }
    let _ = stop;
    if answers.iter().all(|a| a.is_some()) {
        let ordered: Vec<Prediction> = answers.into_iter().flatten().collect();
        finish(log.path(), &ordered)?;
        summary.complete = true;
    }
    Ok(summary)
}

/// Feed `todo` through the scheduler, a slot's worth at a time; `done(i, prediction)` sees
/// each answer as it finishes. Returns true when `done` asked to stop.
fn run_jobs(
    sched: &Scheduler,
    engine: &Engine,
    items: &[EvalItem],
    todo: &[usize],
    cfg: &PredictConfig,
    done: &mut dyn FnMut(usize, Prediction) -> Result<ControlFlow<()>>,
) -> Result<bool> {
    let (tx, rx) = channel::<(usize, GenEvent)>();
    let mut next = 0;
    let mut in_flight = 0;
    let mut texts: HashMap<usize, String> = HashMap::new();
    let window = cfg.max_seqs.max(1) * 2;
    loop {
        while next < todo.len() && in_flight < window {
            let i = todo[next];
            let it = &items[i];
            let text = cfg
                .template
                .render_instruction(&it.instruction, &it.input)?;
            let prompt = engine.encode_prompt(&text)?;
            let job = Job {
                prompt,
                params: cfg.params(&it.id),
                sink: Box::new(ChanSink {
                    idx: i,
                    tx: tx.clone(),
                }),
            };
            match sched.submit(job) {
                Ok(()) => {}
                // The queue is full: wait for an answer.
                Err(SubmitError::QueueFull) if in_flight > 0 => break,
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "the generation scheduler refused a job: {e:?}"
                    )))
                }
            }
            next += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            return Ok(false);
        }
        let (i, ev) = rx
            .recv()
            .map_err(|_| Error::Internal("the generation scheduler stopped".into()))?;
        match ev {
            GenEvent::Text(t) => texts.entry(i).or_default().push_str(&t),
            GenEvent::Failed(msg) => {
                return Err(Error::InvalidArgument(format!(
                    "item `{}`: {msg}",
                    items[i].id
                )))
            }
            GenEvent::Done(s) => {
                in_flight -= 1;
                let it = &items[i];
                let p = Prediction {
                    id: it.id.clone(),
                    instruction: it.instruction.clone(),
                    input: it.input.clone(),
                    response: texts.remove(&i).unwrap_or_default(),
                    reference: it.reference.clone(),
                    generator: cfg.generator.clone(),
                    finish: s.finish.as_str().to_string(),
                    completion_tokens: s.completion_tokens,
                    settings: cfg.settings.clone(),
                };
                if done(i, p)?.is_break() {
                    return Ok(true);
                }
            }
        }
    }
}

fn describe_diff(old: &GenSettings, new: &GenSettings) -> String {
    let a = serde_json::to_value(old).unwrap_or_default();
    let b = serde_json::to_value(new).unwrap_or_default();
    let mut diffs = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, va) in a {
            let vb = b.get(k).cloned().unwrap_or_default();
            if *va != vb {
                diffs.push(format!("{k}: {va} there, {vb} now"));
            }
        }
    }
    diffs.join("; ")
}

/// Read a prediction file (any order); errors name the file and line.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let text = crate::data::io::read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: i + 1,
            reason: format!("invalid JSON: {e}"),
        })?;
        let field = |k: &str| -> Result<String> {
            match v.get(k) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Null) | None if k == "input" => Ok(String::new()),
                Some(_) => Err(Error::Data {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("field `{k}` must be a string"),
                }),
                None => Err(Error::Data {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("missing field `{k}`"),
                }),
            }
        };
        let (id, instruction, input, response) = (
            field("id")?,
            field("instruction")?,
            field("input")?,
            field("response")?,
        );
        // The metadata is optional: files from other tools carry only the text fields.
        let full: Option<Prediction> = serde_json::from_value(v.clone()).ok();
        out.push(full.unwrap_or_else(|| {
            Prediction {
                generator: v["generator"]
                    .as_str()
                    .or_else(|| v["model"].as_str())
                    .unwrap_or("")
                    .to_string(),
                reference: v["reference"].as_str().map(str::to_string),
                finish: String::new(),
                completion_tokens: 0,
                settings: GenSettings {
                    model: String::new(),
                    lora: None,
                    template: String::new(),
                    max_new_tokens: 0,
                    temperature: 0.0,
                    top_p: 1.0,
                    top_k: 0,
                    repeat_penalty: 1.0,
                    seed: 0,
                    stop: Vec::new(),
                },
                id,
                instruction,
                input,
                response,
            }
        }));
    }
    if out.is_empty() {
        return Err(Error::EmptyDataset {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// FNV-1a of a string: a stable per-item seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
