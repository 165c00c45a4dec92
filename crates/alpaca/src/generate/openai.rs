//! A teacher behind any OpenAI-compatible HTTP server (OpenAI, vLLM, TGI, llama.cpp server,
//! Ollama), on `/v1/completions` (several prompts per request as a list prompt) or
//! `/v1/chat/completions` (one prompt per request).
//!
//! Transport policy lives here and nowhere else:
//! - retried, with exponential backoff and full jitter: 408, 409, 429, 5xx, connection errors,
//!   timeouts, and 200 replies that are not the expected JSON; `Retry-After` (seconds) is honoured;
//! - fatal at once, with the server's own message: 400, 401, 403, 404 and other 4xx (bad key,
//!   unknown model, wrong URL), which no retry can fix;
//! - a run that is finished or failed elsewhere calls [`Teacher::set_cancelled`] so that backoff sleeps
//!   end early.
//!
//! Blocking I/O on plain threads: generation is bound by the server, and the caller runs as many
//! of these calls in parallel as it wants concurrency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::prompt::Rng;
use super::teacher::{Completion, Finish, SamplingParams, Teacher, Usage};
use crate::error::{Error, Result};

/// Which API route to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/completions`: raw text continuation, list prompts allowed.
    Completions,
    /// `/chat/completions`: the prompt is sent as one user message.
    Chat,
}

/// Settings of an OpenAI-compatible teacher.
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// Base URL including the version prefix, e.g. `https://api.openai.com/v1`. `/v1` is added
    /// when the URL has no path.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub endpoint: Endpoint,
    /// Prompts per `/completions` request (the original sent 5). Chat always sends 1.
    pub batch: usize,
    /// Whole-request timeout (connect, send, wait, read).
    pub timeout: Duration,
    /// Retries after the first attempt before giving up.
    pub max_retries: u32,
    /// Backoff before retry k is uniform in `[0, min(max, base * 2^k)]`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "https://api.openai.com/v1".into(),
            model: String::new(),
            api_key: None,
            endpoint: Endpoint::Completions,
            batch: 5,
            timeout: Duration::from_secs(300),
            max_retries: 10,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The HTTP teacher.
pub struct OpenAiTeacher {
    cfg: OpenAiConfig,
    url: String,
    agent: ureq::Agent,
    cancelled: AtomicBool,
    retries: AtomicU64,
}

/// Outcome of one attempt.
enum Attempt {
    Done(Vec<Completion>),
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Fatal(String),
}

impl OpenAiTeacher {
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        if cfg.model.trim().is_empty() {
            return Err(Error::InvalidArgument("teacher model name is empty".into()));
        }
        let base = cfg.base_url.trim_end_matches('/');
        let scheme_end = base.find("://").map(|i| i + 3).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "teacher base URL `{base}` must start with http:// or https://"
            ))
        })?;
        let base = if base[scheme_end..].contains('/') {
            base.to_string()
        } else {
            format!("{base}/v1")
        };
        let route = match cfg.endpoint {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat/completions",
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(cfg.timeout)
            .timeout_connect(cfg.timeout.min(Duration::from_secs(30)))
            .build();
        Ok(OpenAiTeacher {
            url: format!("{base}/{route}"),
            cfg,
            agent,
            cancelled: AtomicBool::new(false),
            retries: AtomicU64::new(0),
        })
    }

    /// The full request URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Retries made so far (all threads).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn body(&self, prompts: &[String], p: &SamplingParams) -> Value {
        let mut body = match self.cfg.endpoint {
            Endpoint::Completions => json!({"model": self.cfg.model, "prompt": prompts}),
            Endpoint::Chat => json!({
                "model": self.cfg.model,
                "messages": [{"role": "user", "content": prompts[0]}],
            }),
        };
        body["max_tokens"] = json!(p.max_tokens);
        body["temperature"] = json!(p.temperature);
        body["top_p"] = json!(p.top_p);
        body["n"] = json!(1);
        if !p.stop.is_empty() {
            body["stop"] = json!(p.stop);
        }
        body
    }

    fn attempt(&self, prompts: &[String], params: &SamplingParams) -> Attempt {
        let body = self.body(prompts, params).to_string();
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.cfg.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        match req.send_string(&body) {
            Ok(resp) => match resp.into_string() {
                Ok(text) => match self.decode(&text, prompts.len()) {
                    Ok(c) => Attempt::Done(c),
                    Err(why) => Attempt::Retry { why, after: None },
                },
                Err(e) => Attempt::Retry {
                    why: format!("reading the reply: {e}"),
                    after: None,
                },
            },
            Err(ureq::Error::Status(code, resp)) => {
                let after = resp
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| Duration::from_secs_f64(s.min(600.0)));
                let msg = resp
                    .into_string()
                    .ok()
                    .map(|b| server_message(&b))
                    .unwrap_or_default();
                let why = format!("HTTP {code} from {}{msg}", self.url);
                match code {
                    408 | 409 | 429 | 500..=599 => Attempt::Retry { why, after },
                    401 | 403 => Attempt::Fatal(format!("{why}: check the API key")),
                    404 => Attempt::Fatal(format!(
                        "{why}: check the base URL and the model name `{}`",
                        self.cfg.model
                    )),
                    _ => Attempt::Fatal(why),
                }
            }
            Err(ureq::Error::Transport(t)) => Attempt::Retry {
                why: t.to_string(), // names the URL itself
                after: None,
            },
        }
    }

    /// Parse a 200 body; an `Err` is a malformed reply (retried).
    fn decode(&self, text: &str, n: usize) -> std::result::Result<Vec<Completion>, String> {
        #[derive(Deserialize)]
        struct ApiUsage {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
        }
        #[derive(Deserialize)]
        struct Msg {
            content: Option<String>,
        }
        #[derive(Deserialize)]
        struct Choice {
            text: Option<String>,
            message: Option<Msg>,
            index: Option<usize>,
            finish_reason: Option<String>,
        }
        #[derive(Deserialize)]
        struct Reply {
            choices: Vec<Choice>,
            usage: Option<ApiUsage>,
        }
        let reply: Reply =
            serde_json::from_str(text).map_err(|e| format!("malformed JSON reply: {e}"))?;
        if reply.choices.len() != n {
            return Err(format!("expected {n} choices, got {}", reply.choices.len()));
        }
        let usage = reply.usage.map_or(Usage::default(), |u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        });
        let shares = usage.split(n);
        let mut out: Vec<Option<Completion>> = vec![None; n];
        for (i, c) in reply.choices.into_iter().enumerate() {
            let at = c.index.unwrap_or(i);
            let text = match self.cfg.endpoint {
                Endpoint::Completions => c.text,
                Endpoint::Chat => c.message.and_then(|m| m.content),
            };
            let (Some(text), Some(slot)) = (text, out.get_mut(at)) else {
                return Err(format!("choice {i} has no text or a bad index"));
            };
            *slot = Some(Completion {
                text,
                finish: Finish::from_api(c.finish_reason.as_deref()),
                usage: shares[at],
            });
        }
        out.into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "choices do not cover every prompt".to_string())
    }

    /// Sleep in short slices so that cancellation is noticed.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.cancelled.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
        !self.cancelled.load(Ordering::Relaxed)
    }

    fn request(&self, prompts: &[String], params: &SamplingParams) -> Result<Vec<Completion>> {
        let mut rng = Rng::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ (prompts.as_ptr() as u64),
        );
        let mut attempt = 0u32;
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(Error::Teacher("cancelled".into()));
            }
            let (why, after) = match self.attempt(prompts, params) {
                Attempt::Done(c) => return Ok(c),
                Attempt::Fatal(why) => return Err(Error::Teacher(why)),
                Attempt::Retry { why, after } => (why, after),
            };
            if attempt >= self.cfg.max_retries {
                return Err(Error::Teacher(format!(
                    "giving up after {} attempts: {why}",
                    attempt + 1
                )));
            }
            let cap = self
                .cfg
                .backoff_base
                .saturating_mul(1u32 << attempt.min(20))
                .min(self.cfg.backoff_max);
            let jitter = cap.mul_f64((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
            self.retries.fetch_add(1, Ordering::Relaxed);
            if !self.sleep(after.unwrap_or(jitter)) {
                return Err(Error::Teacher("cancelled".into()));
            }
            attempt += 1;
        }
    }
}

/// `: message` from an OpenAI-style error body, or a short excerpt of the body.
fn server_message(body: &str) -> String {
    let msg = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    if msg.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", msg.trim())
    }
}

impl Teacher for OpenAiTeacher {
    fn describe(&self) -> String {
        let kind = match self.cfg.endpoint {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat",
        };
        format!("{kind}:{}@{}", self.cfg.model, self.url)
    }

    fn max_batch(&self) -> usize {
        match self.cfg.endpoint {
            Endpoint::Completions => self.cfg.batch.max(1),
            Endpoint::Chat => 1,
        }
    }

    fn complete(&self, prompts: &[String], params: &SamplingParams) -> Result<Vec<Completion>> {
        match self.cfg.endpoint {
            Endpoint::Completions => self.request(prompts, params),
            Endpoint::Chat => {
                let mut out = Vec::with_capacity(prompts.len());
                for p in prompts {
                    out.extend(self.request(std::slice::from_ref(p), params)?);
                }
                Ok(out)
            }
        }
    }

    fn set_cancelled(&self, cancelled: bool) {
        self.cancelled.store(cancelled, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teacher(endpoint: Endpoint) -> OpenAiTeacher {
        OpenAiTeacher::new(OpenAiConfig {
            base_url: "http://127.0.0.1:9".into(),
            model: "m".into(),
            endpoint,
            ..OpenAiConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn urls() {
        assert_eq!(
            teacher(Endpoint::Completions).url(),
            "http://127.0.0.1:9/v1/completions"
        );
        assert_eq!(
            teacher(Endpoint::Chat).url(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        let bad = OpenAiTeacher::new(OpenAiConfig {
            base_url: "localhost:8000".into(),
            model: "m".into(),
            ..OpenAiConfig::default()
        });
        assert!(bad.is_err());
    }

    #[test]
    fn decodes_out_of_order_choices_and_usage() {
        let t = teacher(Endpoint::Completions);
        let body = r#"{"choices":[{"text":"b","index":1,"finish_reason":"length"},{"text":"a","index":0,"finish_reason":"stop"}],
                      "usage":{"prompt_tokens":11,"completion_tokens":4,"total_tokens":15}}"#;
        let c = t.decode(body, 2).unwrap();
        assert_eq!(c[0].text, "a");
        assert_eq!(c[1].finish, Finish::Length);
        assert_eq!(c[0].usage.prompt_tokens + c[1].usage.prompt_tokens, 11);
        assert!(t.decode("{\"choices\": [", 1).is_err());
        assert!(t.decode(body, 3).is_err());
        let chat = teacher(Endpoint::Chat);
        let c = chat
            .decode(
                r#"{"choices":[{"message":{"role":"assistant","content":"hi"}}]}"#,
                1,
            )
            .unwrap();
        assert_eq!(c[0].text, "hi");
    }

    #[test]
    fn server_messages() {
        assert_eq!(
            server_message(r#"{"error":{"message":"bad key"}}"#),
            ": bad key"
        );
        assert_eq!(server_message(""), "");
    }
}
