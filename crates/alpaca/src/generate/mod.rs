//! The self-instruct room: turn seed tasks into instruction data with a teacher model.
//!
//! Loop (RECIPE.md, stage 1): build prompts from 3 sampled seeds, send them to the
//! [`Teacher`] in batches and in parallel, parse the replies, filter, ROUGE-L-dedup against the
//! seeds and every kept instruction, append what survives to the [`store::Store`], until the
//! target count is kept.
//!
//! Determinism and crash safety: prompt `p` depends only on `(--seed, p)`; replies are processed
//! strictly in prompt order whatever order they arrive in; each kept item records its
//! `(prompt, position)`. A resumed run restarts at the last stored prompt and skips the
//! positions already stored, so with a deterministic teacher a run that crashed and resumed any
//! number of times stores exactly what a clean run stores.
//!
//! This room never prints: progress goes to the caller's callback, the summary is the returned
//! [`Report`].

pub mod local;
pub mod openai;
pub mod parse;
pub mod prompt;
pub mod store;
pub mod teacher;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::data::dedup::{SimilarityIndex, DEFAULT_THRESHOLD};
use crate::data::filter::{FilterConfig, Reject, RejectCounts};
use crate::data::io::{parse_seed_tasks, SeedTask};
use crate::error::{Error, Result};

pub use parse::ParseMode;
pub use store::{OpenMode, Opened, Store, StoredItem};
pub use teacher::{Completion, Finish, Price, SamplingParams, Scripted, Teacher, Usage};

use parse::parse_reply;
use prompt::PromptBuilder;
use store::Similar;

/// Our own seed tasks, the default when no `--seeds` file is given.
pub const DEFAULT_SEEDS: &str = include_str!("../../assets/seed_tasks.jsonl");

/// The embedded seed tasks, parsed.
pub fn default_seeds() -> Result<Vec<SeedTask>> {
    parse_seed_tasks(
        DEFAULT_SEEDS,
        std::path::Path::new("<embedded seed_tasks.jsonl>"),
    )
}

/// Everything that shapes a generation run. Defaults are the original's.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// Kept items to reach (counting those already in a resumed store).
    pub target: usize,
    /// Seed of the prompt RNG (`--seed`).
    pub seed: u64,
    /// Seed tasks shown per prompt (3).
    pub seeds_per_prompt: usize,
    /// Prompts per request where the teacher allows (5).
    pub prompts_per_request: usize,
    /// Requests in flight (the original: 1).
    pub concurrency: usize,
    /// ROUGE-L threshold above which an instruction is a near-duplicate (0.7).
    pub threshold: f64,
    /// Similar instructions recorded per kept item (10).
    pub neighbours: usize,
    pub filters: FilterConfig,
    pub params: SamplingParams,
    /// Prompt header (ours by default, or the user's `--prompt-file`).
    pub header: String,
    pub parse_mode: ParseMode,
    pub price: Price,
    /// Stop after this many prompts even if the target is not reached (a guard against a
    /// teacher whose replies never parse).
    pub max_prompts: Option<u64>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            target: 100,
            seed: 0,
            seeds_per_prompt: 3,
            prompts_per_request: 5,
            concurrency: 4,
            threshold: DEFAULT_THRESHOLD,
            neighbours: 10,
            filters: FilterConfig::default(),
            params: SamplingParams::default(),
            header: prompt::DEFAULT_HEADER.to_string(),
            parse_mode: ParseMode::Forgiving,
            price: Price::default(),
            max_prompts: None,
        }
    }
}

/// A progress snapshot, sent after every processed prompt.
#[derive(Clone, Debug, Default)]
pub struct ProgressInfo {
    pub kept: usize,
    pub target: usize,
    /// Items already in the store when the run started.
    pub resumed: usize,
    /// Parsed items looked at in this run.
    pub candidates: u64,
    pub prompts: u64,
    pub usage: Usage,
    pub cost: f64,
    pub elapsed: Duration,
}

/// The final summary of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub progress: ProgressInfo,
    pub rejected: RejectCounts,
    pub target_reached: bool,
    pub teacher: String,
}

type JobResult = (u64, usize, Result<Vec<Completion>>);

/// State of the in-order processing side.
struct Sink<'a> {
    cfg: &'a GenerateConfig,
    store: Store,
    index: SimilarityIndex,
    texts: Vec<String>,
    skip_until: Option<(u64, u32)>,
    teacher: String,
    info: ProgressInfo,
    rejected: RejectCounts,
    first_new: usize,
}

impl Sink<'_> {
    fn done(&self) -> bool {
        self.info.kept >= self.cfg.target
    }

    /// Parse, filter, dedup and store the items of prompt `p`'s completion.
    fn process(&mut self, p: u64, c: &Completion) -> Result<()> {
        self.info.prompts += 1;
        self.info.usage.add(c.usage);
        self.info.cost = self.cfg.price.cost(self.info.usage);
        let parsed = parse_reply(&c.text, &c.finish, self.first_new, self.cfg.parse_mode);
        for r in parsed.rejected {
            self.rejected.add(r);
        }
        for (pos, ex) in parsed.items {
            if self.done() {
                break;
            }
            let pos = pos as u32;
            if self.skip_until.is_some_and(|last| (p, pos) <= last) {
                continue; // stored before the crash
            }
            self.info.candidates += 1;
            if let Some(r) = self.cfg.filters.check(&ex) {
                self.rejected.add(r);
                continue;
            }
            let ids = self.index.tokenize(&ex.instruction);
            let dedup_on = !self.cfg.filters.disabled.contains(&Reject::Duplicate);
            if dedup_on && self.index.find_above(&ids, self.cfg.threshold).is_some() {
                self.rejected.add(Reject::Duplicate);
                continue;
            }
            let nb = self.index.neighbours(&ids, self.cfg.neighbours);
            let item = StoredItem {
                instruction: ex.instruction,
                input: ex.input,
                output: ex.output,
                prompt: p,
                position: pos,
                seed: self.cfg.seed,
                teacher: self.teacher.clone(),
                usage: c.usage,
                most_similar_instructions: nb
                    .top
                    .iter()
                    .map(|&(i, score)| Similar {
                        instruction: self.texts[i].clone(),
                        score,
                    })
                    .collect(),
                avg_similarity_score: nb.mean,
            };
            self.store.append(&item)?;
            self.index.insert(ids);
            self.texts.push(item.instruction);
            self.info.kept += 1;
        }
        Ok(())
    }
}

/// Run self-instruct until `cfg.target` items are in the store.
///
/// `opened` is the store as [`Store::open`] returned it (its items seed the dedup index and
/// tell where to resume). `progress` is called after every processed prompt.
pub fn generate(
    teacher: &dyn Teacher,
    seeds: &[SeedTask],
    opened: Opened,
    cfg: &GenerateConfig,
    progress: &mut dyn FnMut(&ProgressInfo),
) -> Result<Report> {
    if seeds.is_empty() {
        return Err(Error::InvalidArgument("no seed tasks".into()));
    }
    if let Some(last) = opened.items.last().filter(|i| i.seed != cfg.seed) {
        // Prompt numbers only line up with the RNG stream they were drawn from.
        return Err(Error::InvalidArgument(format!(
            "{} was generated with --seed {}; resume it with the same seed (not {})",
            opened.store.path().display(),
            last.seed,
            cfg.seed
        )));
    }
    let start = Instant::now();
    teacher.set_cancelled(false);
    let builder = PromptBuilder {
        header: cfg.header.clone(),
        seeds: seeds.to_vec(),
        per_prompt: cfg.seeds_per_prompt.max(1),
        seed: cfg.seed,
    };
    let mut sink = Sink {
        cfg,
        store: opened.store,
        index: SimilarityIndex::new(),
        texts: Vec::new(),
        skip_until: opened.items.last().map(StoredItem::origin),
        teacher: teacher.describe(),
        info: ProgressInfo {
            kept: opened.items.len(),
            target: cfg.target,
            resumed: opened.items.len(),
            ..ProgressInfo::default()
        },
        rejected: RejectCounts::default(),
        first_new: builder.first_new(),
    };
    for text in seeds
        .iter()
        .map(|s| &s.instruction)
        .chain(opened.items.iter().map(|i| &i.instruction))
    {
        let ids = sink.index.tokenize(text);
        sink.index.insert(ids);
        sink.texts.push(text.clone());
    }
    let first_prompt = sink.skip_until.map_or(0, |(p, _)| p);
    let batch = cfg.prompts_per_request.min(teacher.max_batch()).max(1) as u64;
    let workers = cfg.concurrency.max(1);
    let end_prompt = cfg
        .max_prompts
        .map_or(u64::MAX, |m| first_prompt.saturating_add(m));

    let (job_tx, job_rx) = mpsc::channel::<(u64, Vec<String>)>();
    let job_rx = Mutex::new(job_rx);
    let (res_tx, res_rx) = mpsc::channel::<JobResult>();
    let result = std::thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            let (job_rx, res_tx) = (&job_rx, res_tx.clone());
            scope.spawn(move || loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((first, prompts)) = job else { return };
                let r = teacher.complete(&prompts, &cfg.params);
                if res_tx.send((first, prompts.len(), r)).is_err() {
                    return;
                }
            });
        }
        drop(res_tx);
        let mut next_job = first_prompt;
        let mut in_flight = 0usize;
        let dispatch = |next_job: &mut u64, in_flight: &mut usize| {
            if *next_job >= end_prompt {
                return;
            }
            let n = batch.min(end_prompt - *next_job);
            let prompts = (*next_job..*next_job + n)
                .map(|p| builder.build(p))
                .collect();
            if job_tx.send((*next_job, prompts)).is_ok() {
                *next_job += n;
                *in_flight += 1;
            }
        };
        let outcome = (|| -> Result<()> {
            if sink.done() {
                return Ok(());
            }
            for _ in 0..workers * 2 {
                dispatch(&mut next_job, &mut in_flight);
            }
            let mut next = first_prompt;
            let mut pending: BTreeMap<u64, (usize, Result<Vec<Completion>>)> = BTreeMap::new();
            while in_flight > 0 {
                let (first, n, r) = res_rx
                    .recv()
                    .map_err(|_| Error::Internal("teacher workers stopped unexpectedly".into()))?;
                in_flight -= 1;
                pending.insert(first, (n, r));
                while let Some((n, r)) = pending.remove(&next) {
                    let comps = r?;
                    if comps.len() != n {
                        return Err(Error::Teacher(format!(
                            "{} returned {} completions for {n} prompts",
                            sink.teacher,
                            comps.len()
                        )));
                    }
                    for (k, c) in comps.iter().enumerate() {
                        sink.process(next + k as u64, c)?;
                        sink.info.elapsed = start.elapsed();
                        progress(&sink.info);
                        if sink.done() {
                            return Ok(());
                        }
                    }
                    next += n as u64;
                    dispatch(&mut next_job, &mut in_flight);
                }
            }
            Ok(())
        })();
        drop(job_tx);
        teacher.set_cancelled(true);
        outcome
    });
    result?;
    sink.info.elapsed = start.elapsed();
    Ok(Report {
        target_reached: sink.done(),
        progress: sink.info,
        rejected: sink.rejected,
        teacher: sink.teacher,
    })
}

#[cfg(test)]
mod tests;
