//! The OpenAI-compatible HTTP server: `/v1/chat/completions`, `/v1/completions` (whole or
//! streamed as server-sent events), `/v1/models`, `/health`, `/metrics` (Prometheus text)
//! and the embedded chat page at `/`.
//!
//! Handlers only translate: they parse and check the request ([`super::api`]), render and
//! tokenize the prompt, and submit a [`Job`] to the [`Scheduler`], which batches every
//! active generation into one forward pass. Events come back over a channel; a client that
//! goes away drops the receiver and the scheduler frees its slot on its next step.
//!
//! Safety defaults: the caller binds the listener (the CLI uses 127.0.0.1), an optional
//! bearer key is compared in constant time, bodies and `max_tokens` are bounded, the queue
//! is bounded (429 when full). The library never prints: access lines go to a callback.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::api::{self, ApiError, Endpoint, PromptSpec, ResponseMeta};
use super::batch::{Event, Job, Scheduler, Sink, SubmitError, Summary};
use super::{Engine, GenParams};
use crate::data::template::TemplateChoice;
use crate::error::{Error, Result};

/// The chat page: one self-contained HTML file (inline CSS and JS, no CDN, no build step).
pub const CHAT_HTML: &str = include_str!("../../assets/chat.html");

/// Settings of the HTTP layer (the scheduler has its own).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Name reported by `/v1/models` and in responses.
    pub model_id: String,
    /// Bearer key required on `/v1/*` and `/metrics`; None = open.
    pub api_key: Option<String>,
    /// Largest request body in bytes (413 above). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for (400 above); also the default for chat.
    pub max_tokens_limit: usize,
    /// Template for chat messages (`auto`: the model's own chat template).
    pub chat_template: TemplateChoice,
    /// On shutdown, how long active generations may run before they are cut.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    pub fn new(model_id: impl Into<String>) -> Self {
        ServerConfig {
            model_id: model_id.into(),
            api_key: None,
            max_body_bytes: 1 << 20,
            max_tokens_limit: 2048,
            chat_template: TemplateChoice::Auto,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Receives one line per finished HTTP request and lifecycle messages.
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

struct AppState {
    sched: Arc<Scheduler>,
    cfg: ServerConfig,
    metrics: Metrics,
    log: LogFn,
    next_id: AtomicU64,
}

/// Serve until `shutdown` resolves, then stop admitting work, let active generations finish
/// within the grace period (or cut them), close connections and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sched: Arc<Scheduler>,
    cfg: ServerConfig,
    log: LogFn,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let grace = cfg.shutdown_grace;
    let state = Arc::new(AppState {
        sched: Arc::clone(&sched),
        metrics: Metrics::default(),
        cfg,
        log: Arc::clone(&log),
        next_id: AtomicU64::new(0),
    });
    let app = router(Arc::clone(&state));
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let sched2 = Arc::clone(&sched);
    let log2 = Arc::clone(&log);
    let signal = async move {
        shutdown.await;
        log2("shutting down: no new requests; finishing active generations");
        // Joining the scheduler blocks: off the async workers. Streams end as their jobs do.
        tokio::task::spawn_blocking(move || {
            sched2.shutdown(grace);
            let _ = drained_tx.send(());
        });
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .map_err(|e| Error::Internal(format!("HTTP server: {e}")))?;
    let _ = drained_rx.await;
    log("server stopped");
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    Router::new()
        .route("/", get(|| async { Html(CHAT_HTML) }))
        .route("/health", get(health))
        .merge(v1)
        .fallback(|| async {
            error_response(&ApiError::new(404, "invalid_request_error", "Unknown URL."))
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            access_log,
        ))
        .with_state(state)
}

// ------------------------------------------------------------------------------------------
// Middleware: authentication, access log + request counts
// ------------------------------------------------------------------------------------------

/// Equal-length comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

async fn auth(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    req: HttpRequest,
    next: Next,
) -> Response {
    if let Some(key) = &st.cfg.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let want = format!("Bearer {key}");
        if !constant_time_eq(given, want.as_bytes()) {
            let e = ApiError::new(
                401,
                "authentication_error",
                "Incorrect API key provided (send `Authorization: Bearer KEY`).",
            )
            .with_code("invalid_api_key");
            return error_response(&e);
        }
    }
    next.run(req).await
}

async fn access_log(State(st): State<Arc<AppState>>, req: HttpRequest, next: Next) -> Response {
    let t0 = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    st.metrics.count_request(&path, status);
    (st.log)(&format!(
        "{method} {path} {status} {:.1}ms",
        t0.elapsed().as_secs_f64() * 1e3
    ));
    resp
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e.to_json())).into_response()
}

// ------------------------------------------------------------------------------------------
// Small endpoints
// ------------------------------------------------------------------------------------------

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    let s = st.sched.stats();
    Json(json!({
        "status": "ok",
        "model": st.cfg.model_id,
        "active": s.active.load(Ordering::Relaxed),
        "queued": s.queued.load(Ordering::Relaxed),
    }))
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let ctx = st.sched.engine().model.context_length();
    Json(json!({"object": "list", "data": [{
        "id": st.cfg.model_id,
        "object": "model",
        "created": unix_now(),
        "owned_by": "alpaca",
        "context_length": ctx,
    }]}))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let body = st.metrics.render(&st.sched);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

// ------------------------------------------------------------------------------------------
// Completions
// ------------------------------------------------------------------------------------------

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    complete(st, Endpoint::Chat, body).await
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    complete(st, Endpoint::Completion, body).await
}

/// Sends scheduler events into the response's channel.
struct ChannelSink(UnboundedSender<Event>);

impl Sink for ChannelSink {
    fn send(&mut self, ev: Event) -> ControlFlow<()> {
        match self.0.send(ev) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

async fn complete(
    st: Arc<AppState>,
    ep: Endpoint,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(rej) => {
            let status = rej.status().as_u16();
            let msg = if status == 413 {
                format!(
                    "The request body is larger than this server's limit of {} bytes.",
                    st.cfg.max_body_bytes
                )
            } else {
                rej.body_text()
            };
            return error_response(&ApiError::new(status, "invalid_request_error", msg));
        }
    };
    let req = match api::parse_request(ep, &body, st.cfg.max_tokens_limit) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    // Render and tokenize off the async workers (a long prompt takes a while).
    let st2 = Arc::clone(&st);
    let spec = req.prompt.clone();
    let ids = match tokio::task::spawn_blocking(move || prompt_ids(&st2, spec)).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => return error_response(&e),
        Err(e) => {
            return error_response(&ApiError::new(500, "server_error", e.to_string()));
        }
    };
    let ctx = st.sched.engine().model.context_length();
    if ids.len() >= ctx {
        let param = if ep == Endpoint::Chat {
            "messages"
        } else {
            "prompt"
        };
        let e = ApiError::invalid(
            param,
            format!(
                "This model's maximum context length is {ctx} tokens, but the prompt has {} \
                 tokens.",
                ids.len()
            ),
        )
        .with_code("context_length_exceeded");
        return error_response(&e);
    }
    let max_new = req.max_tokens.unwrap_or(match ep {
        Endpoint::Chat => st.cfg.max_tokens_limit,
        Endpoint::Completion => 16,
    });
    let mut sampler = req.sampler.clone();
    if !req.seeded {
        let n = st.next_id.load(Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        sampler.seed = nanos ^ n.rotate_left(32);
    }
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt: ids,
        params: GenParams {
            max_new_tokens: max_new,
            sampler,
            stop: req.stop.clone(),
            ignore_eos: req.ignore_eos,
        },
        sink: Box::new(ChannelSink(tx)),
    };
    if let Err(e) = st.sched.submit(job) {
        let e = match e {
            SubmitError::QueueFull => ApiError::new(
                429,
                "rate_limit_error",
                "The server is busy (all slots and the queue are full); retry shortly.",
            )
            .with_code("queue_full"),
            SubmitError::ShuttingDown => {
                ApiError::new(503, "server_error", "The server is shutting down.")
            }
        };
        return error_response(&e);
    }
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = ResponseMeta {
        id: format!(
            "{}-{:x}{n:04x}",
            if ep == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            unix_now()
        ),
        created: unix_now(),
        model: st.cfg.model_id.clone(),
    };
    if req.stream {
        let stream = ChunkStream {
            rx,
            ep,
            meta,
            include_usage: req.include_usage,
            out: VecDeque::new(),
            started: false,
            done: false,
            st,
            t0,
            got_first: false,
        };
        Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response()
    } else {
        whole_response(st, ep, meta, rx, t0).await
    }
}

/// Prompt ids for a request: render with the right template, tokenize, check ids.
fn prompt_ids(st: &AppState, spec: PromptSpec) -> std::result::Result<Vec<u32>, ApiError> {
    let engine: &Engine = st.sched.engine();
    let (text, param) = match spec {
        PromptSpec::Ids(ids) => {
            let vocab = engine.model.vocab_size();
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("Token id {bad} is outside the vocabulary ({vocab})."),
                ));
            }
            if ids.is_empty() {
                return Err(ApiError::invalid("prompt", "The prompt is empty."));
            }
            return Ok(ids);
        }
        PromptSpec::Messages(m) => (
            engine.template(st.cfg.chat_template).render_chat(&m, true),
            "messages",
        ),
        PromptSpec::Text {
            text,
            input,
            template,
        } => match template {
            TemplateChoice::Raw => (Ok(text), "prompt"),
            t => (
                engine.template(t).render_instruction(&text, &input),
                "prompt",
            ),
        },
    };
    let text = text.map_err(|e| ApiError::invalid(param, e.to_string()))?;
    let ids = engine
        .encode_prompt(&text)
        .map_err(|e| ApiError::invalid(param, e.to_string()))?;
    if ids.is_empty() {
        return Err(ApiError::invalid(param, "The prompt is empty."));
    }
    Ok(ids)
}

async fn whole_response(
    st: Arc<AppState>,
    ep: Endpoint,
    meta: ResponseMeta,
    mut rx: UnboundedReceiver<Event>,
    t0: Instant,
) -> Response {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => {
                if text.is_empty() {
                    st.metrics.ttft.observe(t0.elapsed());
                }
                text.push_str(&t);
            }
            Event::Done(s) => {
                st.metrics.latency.observe(t0.elapsed());
                let usage = api::usage(s.prompt_tokens, s.completion_tokens);
                return Json(api::response(ep, &meta, &text, s.finish, usage)).into_response();
            }
            Event::Failed(m) => {
                return error_response(&ApiError::new(500, "server_error", m));
            }
        }
    }
    error_response(&ApiError::new(
        500,
        "server_error",
        "The generation ended without a result.",
    ))
}

/// The SSE body of a streamed response: OpenAI chunks, then `data: [DONE]`.
struct ChunkStream {
    rx: UnboundedReceiver<Event>,
    ep: Endpoint,
    meta: ResponseMeta,
    include_usage: bool,
    /// Events ready to go out.
    out: VecDeque<SseEvent>,
    started: bool,
    done: bool,
    st: Arc<AppState>,
    t0: Instant,
    got_first: bool,
}

impl ChunkStream {
    fn push(&mut self, v: Value) {
        self.out.push_back(SseEvent::default().data(v.to_string()));
    }

    fn finish(&mut self, s: Option<Summary>, error: Option<String>) {
        if let Some(m) = error {
            let e = ApiError::new(500, "server_error", m);
            self.push(e.to_json());
        }
        if let Some(s) = s {
            let c = api::chunk(self.ep, &self.meta, None, false, Some(s.finish));
            self.push(c);
            if self.include_usage {
                let u = api::usage(s.prompt_tokens, s.completion_tokens);
                let c = api::usage_chunk(self.ep, &self.meta, u);
                self.push(c);
            }
        }
        self.out.push_back(SseEvent::default().data("[DONE]"));
        self.st.metrics.latency.observe(self.t0.elapsed());
        self.done = true;
    }
}

impl futures_core::Stream for ChunkStream {
    type Item = std::result::Result<SseEvent, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.started {
            this.started = true;
            if this.ep == Endpoint::Chat {
                let c = api::chunk(this.ep, &this.meta, Some(""), true, None);
                this.push(c);
            }
        }
        loop {
            if let Some(ev) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Event::Text(t))) => {
                    if !this.got_first {
                        this.got_first = true;
                        this.st.metrics.ttft.observe(this.t0.elapsed());
                    }
                    let c = api::chunk(this.ep, &this.meta, Some(&t), false, None);
                    this.push(c);
                }
                Poll::Ready(Some(Event::Done(s))) => this.finish(Some(s), None),
                Poll::Ready(Some(Event::Failed(m))) => this.finish(None, Some(m)),
                Poll::Ready(None) => this.finish(None, Some("the generation ended".into())),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Metrics (Prometheus text format 0.0.4)
// ------------------------------------------------------------------------------------------

/// Histogram buckets in seconds.
const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    inner: Mutex<(Vec<u64>, u64, f64)>,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Ok(mut g) = self.inner.lock() {
            if g.0.is_empty() {
                g.0 = vec![0; BUCKETS.len()];
            }
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    g.0[i] += 1;
                }
            }
            g.1 += 1;
            g.2 += s;
        }
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let Ok(g) = self.inner.lock() else { return };
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (i, b) in BUCKETS.iter().enumerate() {
            let c = g.0.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {c}\n"));
        }
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n", g.1));
        out.push_str(&format!("{name}_sum {}\n{name}_count {}\n", g.2, g.1));
    }
}

#[derive(Default)]
struct Metrics {
    /// (path, status) -> count; paths outside the known set are lumped as "other".
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    ttft: Histogram,
    latency: Histogram,
}

impl Metrics {
    fn count_request(&self, path: &str, status: u16) {
        const KNOWN: [&str; 6] = [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/models",
            "/health",
            "/metrics",
            "/",
        ];
        let p = KNOWN
            .iter()
            .find(|k| **k == path)
            .copied()
            .unwrap_or("other");
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((p, status)).or_insert(0) += 1;
        }
    }

    fn render(&self, sched: &Scheduler) -> String {
        let s = sched.stats();
        let mut out = String::new();
        out.push_str("# HELP alpaca_requests_total HTTP requests by path and status.\n");
        out.push_str("# TYPE alpaca_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((p, st), n) in m.iter() {
                out.push_str(&format!(
                    "alpaca_requests_total{{path=\"{p}\",status=\"{st}\"}} {n}\n"
                ));
            }
        }
        let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        metric(
            "alpaca_prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            ld(&s.prompt_tokens),
        );
        metric(
            "alpaca_cached_prompt_tokens_total",
            "counter",
            "Prompt tokens whose keys and values were copied from a shared prefix.",
            ld(&s.cached_prompt_tokens),
        );
        metric(
            "alpaca_generated_tokens_total",
            "counter",
            "Tokens generated.",
            ld(&s.generated_tokens),
        );
        metric(
            "alpaca_decode_steps_total",
            "counter",
            "Batched decode steps (forward passes).",
            ld(&s.decode_steps),
        );
        metric(
            "alpaca_decode_rows_total",
            "counter",
            "Sequences advanced by decode steps (divided by steps: mean batch size).",
            ld(&s.decode_rows),
        );
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        metric(
            "alpaca_prefill_seconds_total",
            "counter",
            "Time the scheduler spent computing prompts.",
            secs(&s.prefill_micros),
        );
        metric(
            "alpaca_decode_seconds_total",
            "counter",
            "Time in batched decode forward passes.",
            secs(&s.decode_micros),
        );
        metric(
            "alpaca_sample_seconds_total",
            "counter",
            "Time sampling tokens from the decode steps' logits.",
            secs(&s.sample_micros),
        );
        metric(
            "alpaca_generations_finished_total",
            "counter",
            "Generations that ran to a stop or length.",
            ld(&s.finished),
        );
        metric(
            "alpaca_generations_cancelled_total",
            "counter",
            "Generations cut short (client gone, shutdown).",
            ld(&s.cancelled),
        );
        metric(
            "alpaca_queue_depth",
            "gauge",
            "Requests waiting for a decoding slot.",
            s.queued.load(Ordering::Relaxed) as f64,
        );
        metric(
            "alpaca_active_sequences",
            "gauge",
            "Sequences in a decoding slot.",
            s.active.load(Ordering::Relaxed) as f64,
        );
        self.ttft.render(
            "alpaca_time_to_first_token_seconds",
            "From request received to first generated text.",
            &mut out,
        );
        self.latency.render(
            "alpaca_request_duration_seconds",
            "From request received to the last token of a completion.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"Bearer k", b"Bearer k"));
        assert!(!constant_time_eq(b"Bearer k", b"Bearer j"));
        assert!(!constant_time_eq(b"Bearer k", b"Bearer kk"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        // A length difference of 256 must not wrap to "equal".
        assert!(!constant_time_eq(&[0u8; 256], b""));
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(2));
        let mut s = String::new();
        h.render("x", "help", &mut s);
        assert!(s.contains("x_bucket{le=\"0.025\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"5\"} 2\n"), "{s}");
        assert!(s.contains("x_count 2\n"), "{s}");
    }
}
