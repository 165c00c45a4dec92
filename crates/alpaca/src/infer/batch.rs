//! Continuous batching: one scheduler thread owns the decode loop for many concurrent
//! generations, so they share the model's weight reads.
//!
//! Each step the scheduler (1) admits queued jobs into free slots, (2) runs a bounded amount
//! of prompt processing (chunked prefill, so a long prompt does not stall everyone else's
//! tokens), then (3) advances every decoding sequence by one token in a single batched
//! forward pass ([`Model::forward_batch`](crate::model::Model::forward_batch)), samples each
//! with its own [`Sampler`] and hands the text to the job's [`Sink`]. A sink that reports its
//! receiver gone cancels the sequence at once and frees its slot.
//!
//! The queue in front of the slots is bounded: [`Scheduler::submit`] fails with
//! [`SubmitError::QueueFull`] instead of growing memory. This module knows nothing of HTTP;
//! the server adapts sinks to its channels.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Engine, FinishReason, GenParams, Sampler, StopMatcher};
use crate::error::{Error, Result};
use crate::model::KvCache;
use crate::tokenizer::StreamDecoder;

// ------------------------------------------------------------------------------------------
// Jobs, events and sinks
// ------------------------------------------------------------------------------------------

/// What a job receives, in order: text pieces, then exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Complete UTF-8 text (stop strings already removed).
    Text(String),
    Done(Summary),
    Failed(String),
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Time spent waiting for a slot.
    pub queue_time: Duration,
}

/// Where a job's events go (a channel to an HTTP response, a test vector, ...).
pub trait Sink: Send {
    /// Deliver an event; `Break` means the receiver is gone (cancel the job).
    fn send(&mut self, ev: Event) -> ControlFlow<()>;
    /// True once the receiver is gone, checked every step even when no text is produced.
    fn is_closed(&self) -> bool;
}

/// One generation request: prompt ids, settings and where to send the output.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenParams,
    pub sink: Box<dyn Sink>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// Every slot is busy and the queue is full: try again later (HTTP 429).
    QueueFull,
    /// The scheduler is shutting down (HTTP 503).
    ShuttingDown,
}

/// Limits of a scheduler. Defaults suit a small model on a laptop CPU.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Sequences decoded together (slots). Default 16.
    pub max_seqs: usize,
    /// Jobs waiting for a slot before submissions are refused. Default 64.
    pub queue_capacity: usize,
    /// Prompt tokens processed per step, across admitted jobs (at least one chunk always
    /// runs). Default 256.
    pub prefill_chunk: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_seqs: 16,
            queue_capacity: 64,
            prefill_chunk: 256,
        }
    }
}

/// Live counters, shared with whoever reports metrics.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Jobs submitted but not yet in a slot.
    pub queued: AtomicUsize,
    /// Jobs in a slot (prefilling or decoding).
    pub active: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens not computed: their keys and values were copied from the last prompt
    /// that shared them (the chat template's system and role header, say).
    pub cached_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Batched decode steps run, and sequences advanced by them (their ratio is the mean
    /// batch size).
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
    /// Microseconds the scheduler spent computing prompts, in batched decode forward
    /// passes, and sampling from their logits (where a step's time goes).
    pub prefill_micros: AtomicU64,
    pub decode_micros: AtomicU64,
    pub sample_micros: AtomicU64,
    pub finished: AtomicU64,
    pub cancelled: AtomicU64,
}

enum Msg {
    Job(Box<Job>, Instant),
    /// Wakes an idle scheduler (shutdown).
    Wake,
}

// ------------------------------------------------------------------------------------------
// The scheduler handle
// ------------------------------------------------------------------------------------------

/// Handle to the scheduler thread. Dropping it without [`Scheduler::shutdown`] leaves the
/// thread running until every handle's sender is gone.
pub struct Scheduler {
    tx: SyncSender<Msg>,
    stats: Arc<SchedulerStats>,
    /// Set once: after it no job is admitted; active ones run until `deadline`.
    stopping: Arc<AtomicBool>,
    deadline: Arc<Mutex<Option<Instant>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    engine: Arc<Engine>,
}

impl Scheduler {
    /// Start the scheduler thread. It owns the decode loop; `engine` is shared read-only.
    pub fn start(engine: Arc<Engine>, cfg: SchedulerConfig) -> Result<Scheduler> {
        if cfg.max_seqs == 0 || cfg.prefill_chunk == 0 {
            return Err(Error::InvalidArgument(
                "the scheduler needs at least one slot and a prefill chunk of 1 or more".into(),
            ));
        }
        let (tx, rx) = sync_channel(cfg.queue_capacity.max(1));
        let stats = Arc::new(SchedulerStats::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let deadline = Arc::new(Mutex::new(None));
        let ctx = Loop {
            engine: Arc::clone(&engine),
            cfg,
            rx,
            stats: Arc::clone(&stats),
            stopping: Arc::clone(&stopping),
            deadline: Arc::clone(&deadline),
        };
        // The decode loop runs on a worker of a pool of its own, as many threads as the
        // global pool: the model's parallel loops then split work from inside the pool
        // (join/steal) instead of handing every one to sleeping workers from outside, which
        // cost about half the single-stream speed. Its own pool, so that a loop idling in
        // `recv` never takes a worker from other users of the global pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("alpaca-decode-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("starting the decode thread pool: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("alpaca-scheduler".into())
            .spawn(move || pool.install(move || ctx.run()))
            .map_err(|e| Error::Internal(format!("starting the scheduler thread: {e}")))?;
        Ok(Scheduler {
            tx,
            stats,
            stopping,
            deadline,
            thread: Mutex::new(Some(thread)),
            engine,
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn stats(&self) -> &Arc<SchedulerStats> {
        &self.stats
    }

    /// Queue a job without blocking.
    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Msg::Job(Box::new(job), Instant::now())) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::ShuttingDown,
                })
            }
        }
    }

    /// Stop admitting jobs (queued ones fail with "shutting down"); active generations may
    /// finish within `grace`, after which they end with [`FinishReason::Cancelled`]. Then
    /// wait for the thread to exit.
    pub fn shutdown(&self, grace: Duration) {
        if let Ok(mut d) = self.deadline.lock() {
            *d = Some(Instant::now() + grace);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // Wake an idle scheduler; a full queue means it is busy and will see the flag.
        let _ = self.tx.try_send(Msg::Wake);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

// ------------------------------------------------------------------------------------------
// One sequence
// ------------------------------------------------------------------------------------------

/// A job in a slot: its cache, sampler and streaming state.
struct Seq<'e> {
    sink: Box<dyn Sink>,
    cache: KvCache,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// The sampled token to feed next step (None while prefilling).
    next: Option<u32>,
    sampler: Sampler,
    /// Prompt and generated ids (for the repetition penalty).
    history: Vec<u32>,
    generated: usize,
    max_new: usize,
    ignore_eos: bool,
    decoder: StreamDecoder<'e>,
    stops: StopMatcher,
    queue_time: Duration,
    /// Set when the sequence is over; it leaves its slot at the end of the step.
    finish: Option<FinishReason>,
    /// An error was already sent: no summary follows.
    failed: bool,
}

impl<'e> Seq<'e> {
    /// A sequence for `job`, or the error and the sink to report it to.
    fn new(
        engine: &'e Engine,
        job: Job,
        queue_time: Duration,
    ) -> std::result::Result<Seq<'e>, (Error, Box<dyn Sink>)> {
        let Job {
            prompt,
            params,
            sink,
        } = job;
        let ctx = engine.model.context_length();
        let invalid = if let Err(e) = params.sampler.validate() {
            Some(e)
        } else if prompt.is_empty() {
            Some(Error::InvalidArgument("the prompt is empty".into()))
        } else if prompt.len() >= ctx {
            Some(Error::ContextOverflow {
                prompt: prompt.len(),
                max_new: params.max_new_tokens,
                ctx,
            })
        } else {
            None
        };
        if let Some(e) = invalid {
            return Err((e, sink));
        }
        // Context guard: never past the context; the finish reason says so.
        let max_new = params.max_new_tokens.min(ctx - prompt.len());
        Ok(Seq {
            sink,
            cache: engine.model.new_cache(prompt.len() + max_new),
            history: prompt.clone(),
            prompt,
            prefilled: 0,
            next: None,
            sampler: Sampler::new(params.sampler),
            generated: 0,
            max_new,
            ignore_eos: params.ignore_eos,
            decoder: StreamDecoder::new(&engine.tokenizer, true),
            stops: StopMatcher::new(&params.stop),
            queue_time,
            finish: None,
            failed: false,
        })
    }

    /// End the sequence with an error (sent instead of the summary).
    fn fail(&mut self, message: String) {
        let _ = self.sink.send(Event::Failed(message));
        self.failed = true;
        self.finish = Some(FinishReason::Cancelled);
    }

    /// `n` more prompt tokens are in the cache (computed alone or riding along with a
    /// batched step), `logits` those of the last: once the whole prompt is in, it is offered
    /// as the shared prefix and the first token is sampled.
    fn prompt_advanced(
        &mut self,
        n: usize,
        logits: &mut [f32],
        prefix: &mut Option<PrefixCache>,
        engine: &Engine,
        eot: &[u32],
        stats: &SchedulerStats,
    ) {
        self.prefilled += n;
        stats.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
        if self.prefilled == self.prompt.len() {
            PrefixCache::remember(prefix, engine, self);
            self.accept(logits, eot, stats);
        }
    }

    /// Sample from `logits` and stream the token; sets `finish` when the sequence ends.
    fn accept(&mut self, logits: &mut [f32], eot: &[u32], stats: &SchedulerStats) {
        if self.max_new == 0 {
            self.finish = Some(FinishReason::Length);
            return;
        }
        let next = self.sampler.sample(logits, &self.history);
        if eot.contains(&next) && !self.ignore_eos {
            self.finish = Some(FinishReason::Eos);
            return;
        }
        self.generated += 1;
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        self.history.push(next);
        let piece = self.decoder.push(next);
        let (emit, stopped) = self.stops.feed(&piece);
        if !emit.is_empty() && self.sink.send(Event::Text(emit)).is_break() {
            self.finish = Some(FinishReason::Cancelled);
        } else if stopped {
            self.finish = Some(FinishReason::Stop);
        } else if self.generated >= self.max_new {
            self.finish = Some(FinishReason::Length);
        } else {
            self.next = Some(next);
        }
    }

    /// Flush held-back text and send the summary.
    fn close(&mut self) {
        if self.failed {
            return;
        }
        let mut finish = self.finish.unwrap_or(FinishReason::Cancelled);
        if finish != FinishReason::Stop && finish != FinishReason::Cancelled {
            let rest = self.decoder.finish();
            let (mut emit, stopped) = self.stops.feed(&rest);
            if stopped {
                finish = FinishReason::Stop;
            } else {
                emit.push_str(&self.stops.flush());
            }
            if !emit.is_empty() {
                let _ = self.sink.send(Event::Text(emit));
            }
        }
        let _ = self.sink.send(Event::Done(Summary {
            finish,
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.generated,
            queue_time: self.queue_time,
        }));
    }
}

// ------------------------------------------------------------------------------------------
// Prompt prefix reuse
// ------------------------------------------------------------------------------------------

/// Shorter shared prefixes are computed again (copying is not worth the bookkeeping).
const MIN_SHARED_PREFIX: usize = 8;

/// The keys and values of the last fully prefilled prompt. Chat requests share a template
/// header (system prompt, role markers), so a new job copies the positions its prompt has in
/// common with this one instead of computing them: a prompt's prefill costs about as much as
/// five decode steps of eight sequences, so this is a large share of the work when many
/// short chats arrive.
struct PrefixCache {
    ids: Vec<u32>,
    cache: KvCache,
}

impl PrefixCache {
    /// Keep `s`'s prompt (just prefilled) as the prefix to share.
    fn remember(slot: &mut Option<PrefixCache>, engine: &Engine, s: &Seq<'_>) {
        let n = s.prompt.len();
        if n < MIN_SHARED_PREFIX || slot.as_ref().is_some_and(|p| p.ids == s.prompt) {
            return;
        }
        let mut cache = engine.model.new_cache(n);
        if cache.copy_prefix(&s.cache, n) {
            *slot = Some(PrefixCache {
                ids: s.prompt.clone(),
                cache,
            });
        }
    }

    /// Copy the shared prefix into `s` (not yet prefilled); returns the positions copied. At
    /// least two prompt tokens are left to compute, so the logits of the last come from the
    /// same multi-row kernels as an unshared prompt of the same length.
    fn reuse(&self, s: &mut Seq<'_>) -> usize {
        let common = self
            .ids
            .iter()
            .zip(&s.prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(s.prompt.len().saturating_sub(2));
        if common < MIN_SHARED_PREFIX
            || s.prefilled != 0
            || !s.cache.copy_prefix(&self.cache, common)
        {
            return 0;
        }
        s.prefilled = common;
        common
    }
}

// ------------------------------------------------------------------------------------------
// The decode loop
// ------------------------------------------------------------------------------------------

/// Adds the microseconds since `since` to a time counter.
fn add_micros(counter: &AtomicU64, since: Instant) {
    let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
    counter.fetch_add(us, Ordering::Relaxed);
}

struct Loop {
    engine: Arc<Engine>,
    cfg: SchedulerConfig,
    rx: Receiver<Msg>,
    stats: Arc<SchedulerStats>,
    stopping: Arc<AtomicBool>,
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl Loop {
    fn run(self) {
        let engine = Arc::clone(&self.engine);
        let engine: &Engine = &engine;
        let eot = engine.tokenizer.eot_ids().to_vec();
        let vocab = engine.model.vocab_size();
        let mut seqs: Vec<Seq<'_>> = Vec::new();
        let mut prefix: Option<PrefixCache> = None;
        let mut disconnected = false;
        loop {
            let stopping = self.stopping.load(Ordering::SeqCst);
            // --- 1. admit: block when idle, else take what is waiting
            while seqs.len() < self.cfg.max_seqs && !disconnected {
                let msg = if seqs.is_empty() && !stopping {
                    self.rx.recv().map_err(|_| TryRecvError::Disconnected)
                } else {
                    self.rx.try_recv()
                };
                let (job, queued_at) = match msg {
                    Ok(Msg::Job(job, at)) => (job, at),
                    Ok(Msg::Wake) => break,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                };
                self.stats.queued.fetch_sub(1, Ordering::SeqCst);
                let mut job = *job;
                if self.stopping.load(Ordering::SeqCst) {
                    let _ = job
                        .sink
                        .send(Event::Failed("the server is shutting down".into()));
                    continue;
                }
                if job.sink.is_closed() {
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match Seq::new(engine, job, queued_at.elapsed()) {
                    Ok(mut s) => {
                        if let Some(p) = &prefix {
                            let n = p.reuse(&mut s);
                            self.stats
                                .cached_prompt_tokens
                                .fetch_add(n as u64, Ordering::Relaxed);
                        }
                        seqs.push(s)
                    }
                    Err((e, mut sink)) => {
                        let _ = sink.send(Event::Failed(e.to_string()));
                    }
                }
            }
            self.stats.active.store(seqs.len(), Ordering::SeqCst);
            if seqs.is_empty() {
                if disconnected || self.stopping.load(Ordering::SeqCst) {
                    // Fail whatever is still queued, then exit.
                    while let Ok(msg) = self.rx.try_recv() {
                        if let Msg::Job(mut job, _) = msg {
                            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
                            let _ = job
                                .sink
                                .send(Event::Failed("the server is shutting down".into()));
                        }
                    }
                    return;
                }
                continue;
            }

            // --- cancellations: receivers gone, or the shutdown grace is over
            let past_deadline = self.stopping.load(Ordering::SeqCst)
                && self
                    .deadline
                    .lock()
                    .ok()
                    .and_then(|d| *d)
                    .is_some_and(|d| Instant::now() >= d);
            for s in seqs.iter_mut() {
                if past_deadline || s.sink.is_closed() {
                    s.finish = Some(FinishReason::Cancelled);
                }
            }

            // --- 2. prompts alone while nothing decodes: chunked, oldest first, within the
            // token budget, each its own forward pass (a lone request keeps the exact
            // single-sequence arithmetic).
            let mut budget = self.cfg.prefill_chunk;
            let decoding = |s: &Seq<'_>| s.finish.is_none() && s.next.is_some();
            if !seqs.iter().any(decoding) {
                let t_prefill = Instant::now();
                for s in seqs.iter_mut() {
                    if budget == 0 {
                        break;
                    }
                    if s.finish.is_some() || s.prefilled == s.prompt.len() {
                        continue;
                    }
                    let n = budget.min(s.prompt.len() - s.prefilled);
                    budget -= n;
                    let chunk = &s.prompt[s.prefilled..s.prefilled + n];
                    match engine.model.forward(chunk, &mut s.cache, 1) {
                        Ok(mut logits) => s.prompt_advanced(
                            n,
                            &mut logits,
                            &mut prefix,
                            engine,
                            &eot,
                            &self.stats,
                        ),
                        Err(e) => s.fail(e.to_string()),
                    }
                }
                add_micros(&self.stats.prefill_micros, t_prefill);
            }

            // --- 3. one batched step: a token for every decoding sequence and, while some
            // decode, prompt chunks (within what is left of the budget) riding along, so a
            // new request's prompt shares the step's weight reads instead of stalling it.
            let any_decoding = seqs.iter().any(decoding);
            let mut batch: Vec<(&mut Seq<'_>, usize)> = Vec::new();
            for s in seqs.iter_mut() {
                if decoding(s) {
                    batch.push((s, 0));
                } else if any_decoding
                    && budget > 0
                    && s.finish.is_none()
                    && s.prefilled < s.prompt.len()
                {
                    let n = budget.min(s.prompt.len() - s.prefilled);
                    budget -= n;
                    batch.push((s, n));
                }
            }
            if !batch.is_empty() {
                let mut tokens = Vec::with_capacity(batch.len());
                let mut counts = Vec::with_capacity(batch.len());
                for (s, n) in &batch {
                    match (*n, s.next) {
                        (0, Some(t)) => {
                            tokens.push(t);
                            counts.push(1);
                        }
                        _ => {
                            tokens.extend_from_slice(&s.prompt[s.prefilled..s.prefilled + n]);
                            counts.push(*n);
                        }
                    }
                }
                let t_decode = Instant::now();
                let result = {
                    let mut caches: Vec<&mut KvCache> =
                        batch.iter_mut().map(|(s, _)| &mut s.cache).collect();
                    engine
                        .model
                        .forward_batch_chunks(&tokens, &counts, &mut caches)
                };
                add_micros(&self.stats.decode_micros, t_decode);
                match result {
                    Ok(mut logits) => {
                        let t_sample = Instant::now();
                        let rows = batch.iter().filter(|(_, n)| *n == 0).count();
                        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .decode_rows
                            .fetch_add(rows as u64, Ordering::Relaxed);
                        // Sampling is serial: per sequence it is tens of microseconds,
                        // less than handing it to the pool costs.
                        for ((s, n), l) in batch.iter_mut().zip(logits.chunks_mut(vocab)) {
                            if *n == 0 {
                                s.next = None;
                                s.accept(l, &eot, &self.stats);
                                continue;
                            }
                            s.prompt_advanced(*n, l, &mut prefix, engine, &eot, &self.stats);
                        }
                        add_micros(&self.stats.sample_micros, t_sample);
                    }
                    Err(e) => {
                        for (s, _) in batch.iter_mut() {
                            s.fail(e.to_string());
                        }
                    }
                }
            }

            // --- 4. retire finished sequences (their caches are freed here)
            seqs.retain_mut(|s| {
                if s.finish.is_none() {
                    return true;
                }
                s.close();
                let counter = if s.finish == Some(FinishReason::Cancelled) {
                    &self.stats.cancelled
                } else {
                    &self.stats.finished
                };
                counter.fetch_add(1, Ordering::Relaxed);
                false
            });
            self.stats.active.store(seqs.len(), Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fresh::{random_llama_gguf, tiny_llama_config};
    use crate::model::quant::GgmlType;
    use crate::tokenizer::tiny_test_vocab;

    fn engine(name: &str) -> Arc<Engine> {
        let vocab = tiny_test_vocab();
        let w = random_llama_gguf(
            &tiny_llama_config(vocab.tokens.len()),
            &vocab,
            GgmlType::Q8_0,
            3,
        )
        .expect("tiny model");
        let p =
            std::env::temp_dir().join(format!("alpaca-sched-{}-{name}.gguf", std::process::id()));
        w.write(&p).expect("write");
        let mut e = Engine::load(&p).expect("load");
        // Batched decode steps run f32 activations; single-token steps of a Q8_0 model would
        // take the 8-bit kernels by default. One arithmetic, so batched output equals solo.
        e.model
            .set_act_mode(crate::model::int8_decode::ActMode::F32);
        let _ = std::fs::remove_file(&p);
        Arc::new(e)
    }

    /// Collects events; `closed` simulates a client that went away.
    #[derive(Clone, Default)]
    struct VecSink {
        events: Arc<Mutex<Vec<Event>>>,
        closed: Arc<AtomicBool>,
    }

    impl Sink for VecSink {
        fn send(&mut self, ev: Event) -> ControlFlow<()> {
            if self.is_closed() {
                return ControlFlow::Break(());
            }
            if let Ok(mut v) = self.events.lock() {
                v.push(ev);
            }
            ControlFlow::Continue(())
        }
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::SeqCst)
        }
    }

    impl VecSink {
        fn wait_done(&self) -> (String, Event) {
            for _ in 0..2000 {
                let v = self.events.lock().expect("lock").clone();
                if let Some(last @ (Event::Done(_) | Event::Failed(_))) = v.last() {
                    let text = v
                        .iter()
                        .filter_map(|e| match e {
                            Event::Text(t) => Some(t.as_str()),
                            _ => None,
                        })
                        .collect();
                    return (text, last.clone());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("job did not finish");
        }
    }

    fn params(max: usize, seed: u64, temperature: f32) -> GenParams {
        let mut p = GenParams {
            max_new_tokens: max,
            ignore_eos: true,
            ..GenParams::default()
        };
        p.sampler.seed = seed;
        p.sampler.temperature = temperature;
        p.sampler.top_k = 20;
        p
    }

    /// Jobs decoded together give exactly what each gives alone through `Engine::generate`.
    #[test]
    fn batched_jobs_match_single_generation() {
        let e = engine("match");
        let sched = Scheduler::start(Arc::clone(&e), SchedulerConfig::default()).expect("start");
        let prompts = [
            "the cat",
            "in the beginning there was",
            "a",
            "hello there, this is",
        ];
        let mut sinks = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let ids = e.encode_prompt(p).expect("encode");
            let sink = VecSink::default();
            let temp = if i % 2 == 0 { 0.0 } else { 0.8 };
            sched
                .submit(Job {
                    prompt: ids.clone(),
                    params: params(10 + 3 * i, i as u64, temp),
                    sink: Box::new(sink.clone()),
                })
                .expect("submit");
            let want = e
                .generate(&ids, &params(10 + 3 * i, i as u64, temp), &mut |_| {
                    ControlFlow::Continue(())
                })
                .expect("generate");
            sinks.push((sink, want));
        }
        for (sink, want) in sinks {
            let (text, last) = sink.wait_done();
            assert_eq!(text, want.text);
            match last {
                Event::Done(s) => {
                    assert_eq!(s.completion_tokens, want.ids.len());
                    assert_eq!(s.finish, FinishReason::Length);
                }
                other => panic!("{other:?}"),
            }
        }
        sched.shutdown(Duration::from_secs(1));
        assert_eq!(sched.stats().active.load(Ordering::SeqCst), 0);
    }

    /// Jobs whose prompts share a head copy its keys and values from the last prompt (the
    /// counter says so) and still generate what each generates alone.
    #[test]
    fn shared_prompt_prefix_is_copied_and_output_unchanged() {
        let e = engine("prefix");
        let sched = Scheduler::start(Arc::clone(&e), SchedulerConfig::default()).expect("start");
        let head: Vec<u32> = (40..52).collect();
        for (i, tail) in [&[7u32, 90, 91][..], &[100, 3, 5, 9], &[61, 62]]
            .iter()
            .enumerate()
        {
            let ids: Vec<u32> = head.iter().chain(tail.iter()).copied().collect();
            let sink = VecSink::default();
            sched
                .submit(Job {
                    prompt: ids.clone(),
                    params: params(8, i as u64, 0.0),
                    sink: Box::new(sink.clone()),
                })
                .expect("submit");
            // One at a time: each later job finds the previous prompt remembered.
            let (text, last) = sink.wait_done();
            let want = e
                .generate(&ids, &params(8, i as u64, 0.0), &mut |_| {
                    ControlFlow::Continue(())
                })
                .expect("generate");
            assert_eq!(text, want.text, "job {i}");
            assert!(matches!(last, Event::Done(_)), "{last:?}");
        }
        let cached = sched.stats().cached_prompt_tokens.load(Ordering::SeqCst);
        assert_eq!(cached, 2 * head.len() as u64);
        sched.shutdown(Duration::ZERO);
    }

    #[test]
    fn closed_sink_frees_its_slot_and_full_queue_refuses() {
        let e = engine("cancel");
        let cfg = SchedulerConfig {
            max_seqs: 1,
            queue_capacity: 1,
            prefill_chunk: 64,
        };
        let sched = Scheduler::start(Arc::clone(&e), cfg).expect("start");
        let ids = e.encode_prompt("the cat").expect("encode");
        // Long job occupies the only slot until its client goes away.
        let long = VecSink::default();
        sched
            .submit(Job {
                prompt: ids.clone(),
                params: params(200, 1, 0.0),
                sink: Box::new(long.clone()),
            })
            .expect("submit");
        while sched.stats().active.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let queued = VecSink::default();
        let job = |s: &VecSink| Job {
            prompt: ids.clone(),
            params: params(5, 2, 0.0),
            sink: Box::new(s.clone()),
        };
        sched.submit(job(&queued)).expect("queued");
        assert_eq!(
            sched.submit(job(&VecSink::default())),
            Err(SubmitError::QueueFull)
        );
        long.closed.store(true, Ordering::SeqCst);
        let (_, last) = queued.wait_done();
        assert!(matches!(last, Event::Done(_)), "{last:?}");
        assert!(sched.stats().cancelled.load(Ordering::SeqCst) >= 1);
        sched.shutdown(Duration::ZERO);
        assert_eq!(
            sched.submit(job(&VecSink::default())),
            Err(SubmitError::ShuttingDown)
        );
    }

    #[test]
    fn prompt_over_the_context_fails_the_job_only() {
        let e = engine("ctx");
        let sched = Scheduler::start(Arc::clone(&e), SchedulerConfig::default()).expect("start");
        let sink = VecSink::default();
        let too_long = vec![5u32; e.model.context_length()];
        sched
            .submit(Job {
                prompt: too_long,
                params: params(4, 0, 0.0),
                sink: Box::new(sink.clone()),
            })
            .expect("submit");
        assert!(matches!(sink.wait_done().1, Event::Failed(_)));
        sched.shutdown(Duration::ZERO);
    }
}
