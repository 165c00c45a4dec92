//! The OpenAI wire format: parsing `/v1/chat/completions` and `/v1/completions` request
//! bodies into checked settings, and building response and stream-chunk objects.
//!
//! Pure functions over `serde_json::Value`, no HTTP: every bad field becomes an [`ApiError`]
//! naming the parameter, as OpenAI's `{"error": {"message", "type", "param", "code"}}`.
//! Field names and defaults follow OpenAI's API reference; extensions (`top_k`, `min_p`,
//! `repeat_penalty`, `ignore_eos`, and `template` + `input` on completions) are marked as such.

use serde_json::{json, Map, Value};

use crate::data::template::{Message, TemplateChoice};
use crate::infer::{FinishReason, SamplerConfig};

/// An error answered as an OpenAI error object with an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about one request parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// What to render into the prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSpec {
    /// Chat messages, rendered with the server's chat template.
    Messages(Vec<Message>),
    /// Text used as is (`template` raw), or an instruction + input rendered with `template`.
    Text {
        text: String,
        input: String,
        template: TemplateChoice,
    },
    /// Token ids given directly (`prompt: [1, 2, 3]`).
    Ids(Vec<u32>),
}

/// A checked generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub endpoint: Endpoint,
    pub prompt: PromptSpec,
    /// None: up to the context (chat) or 16 (completions), capped by the server's limit.
    pub max_tokens: Option<usize>,
    pub sampler: SamplerConfig,
    /// Whether `seed` was given (else the server picks one).
    pub seeded: bool,
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with usage and no choices.
    pub include_usage: bool,
    /// Extension (as llama.cpp's server): keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// Server-side defaults for fields OpenAI does not have (llama.cpp server's values).
pub const DEFAULT_TOP_K: usize = 40;
/// Most stop strings accepted in one request.
pub const MAX_STOPS: usize = 16;

/// Parse a request body. `max_tokens_limit` bounds `max_tokens`.
pub fn parse_request(
    endpoint: Endpoint,
    body: &[u8],
    max_tokens_limit: usize,
) -> Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError {
        status: 400,
        message: format!("We could not parse the JSON body of your request: {e}"),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_json"),
    })?;
    let Value::Object(o) = v else {
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            "The request body must be a JSON object.",
        ));
    };
    let prompt = match endpoint {
        Endpoint::Chat => PromptSpec::Messages(parse_messages(&o)?),
        Endpoint::Completion => parse_prompt(&o)?,
    };
    let mut max_tokens = opt_int(&o, "max_tokens")?;
    if endpoint == Endpoint::Chat {
        if let Some(m) = opt_int(&o, "max_completion_tokens")? {
            max_tokens = Some(m);
        }
    }
    let max_tokens = match max_tokens {
        None => None,
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens must be at least 1, got {m}."),
            ))
        }
        Some(m) if m as u64 > max_tokens_limit as u64 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens is {m}, but this server allows at most {max_tokens_limit}."),
            ))
        }
        Some(m) => Some(m as usize),
    };
    if let Some(n) = opt_int(&o, "n")? {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("Only n = 1 is supported, got {n}."),
            ));
        }
    }
    for unsupported in ["logprobs", "echo"] {
        if opt_bool(&o, unsupported)? == Some(true) {
            return Err(ApiError::invalid(
                unsupported,
                format!("`{unsupported}` is not supported by this server."),
            ));
        }
    }
    if let Some(b) = opt_int(&o, "best_of")? {
        if b != 1 {
            return Err(ApiError::invalid(
                "best_of",
                "Only best_of = 1 is supported.",
            ));
        }
    }

    let mut sampler = SamplerConfig {
        temperature: 1.0,
        top_k: DEFAULT_TOP_K,
        ..SamplerConfig::default()
    };
    if let Some(t) = opt_num(&o, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {t}."),
            ));
        }
        sampler.temperature = t as f32;
    }
    if let Some(p) = opt_num(&o, "top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {p}."),
            ));
        }
        sampler.top_p = p as f32;
    }
    if let Some(k) = opt_int(&o, "top_k")? {
        // Extension; 0 turns it off.
        if k < 0 {
            return Err(ApiError::invalid("top_k", "top_k must be >= 0."));
        }
        sampler.top_k = k as usize;
    }
    if let Some(p) = opt_num(&o, "min_p")? {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid("min_p", "min_p must be in [0, 1]."));
        }
        sampler.min_p = p as f32;
    }
    if let Some(r) = opt_num(&o, "repeat_penalty")? {
        if !(r > 0.0 && r.is_finite()) {
            return Err(ApiError::invalid(
                "repeat_penalty",
                "repeat_penalty must be > 0.",
            ));
        }
        sampler.repeat_penalty = r as f32;
    }
    for (name, slot) in [
        ("frequency_penalty", &mut sampler.frequency_penalty),
        ("presence_penalty", &mut sampler.presence_penalty),
    ] {
        if let Some(v) = opt_num(&o, name)? {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid(
                    name,
                    format!("{name} must be between -2 and 2, got {v}."),
                ));
            }
            *slot = v as f32;
        }
    }
    let seed = opt_int(&o, "seed")?;
    if let Some(s) = seed {
        sampler.seed = s as u64;
    }
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOPS {
                return Err(ApiError::invalid(
                    "stop",
                    format!("At most {MAX_STOPS} stop sequences are allowed."),
                ));
            }
            a.iter()
                .map(|s| {
                    s.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::invalid("stop", "stop must be a string or an array of strings.")
                    })
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or an array of strings.",
            ))
        }
    };
    let stream = opt_bool(&o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options must be an object.",
            ))
        }
    };
    Ok(Request {
        endpoint,
        prompt,
        max_tokens,
        sampler,
        seeded: seed.is_some(),
        stop,
        stream,
        include_usage,
        ignore_eos: opt_bool(&o, "ignore_eos")?.unwrap_or(false),
    })
}

fn parse_messages(o: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(items)) = o.get("messages") else {
        return Err(ApiError::invalid(
            "messages",
            "messages is required and must be an array.",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty."));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(role) = m.get("role").and_then(Value::as_str) else {
            return Err(ApiError::invalid(
                &format!("{param}.role"),
                "Each message needs a string role.",
            ));
        };
        // `developer` is OpenAI's newer name for the system role.
        let role = if role == "developer" { "system" } else { role };
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            // Content parts: only text parts are supported.
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                &format!("{param}.content"),
                                "Only text content parts are supported.",
                            ))
                        }
                    }
                }
                s
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("{param}.content"),
                    "content must be a string or an array of text parts.",
                ))
            }
        };
        out.push(Message::new(role, content));
    }
    Ok(out)
}

fn parse_prompt(o: &Map<String, Value>) -> Result<PromptSpec, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "prompt must be a string, an array of one string, or an array of token ids.",
        )
    };
    let text = match o.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            let ids = a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .ok_or_else(bad)
                })
                .collect::<Result<Vec<u32>, _>>()?;
            return Ok(PromptSpec::Ids(ids));
        }
        Some(Value::Array(a)) if a.len() > 1 && a.iter().all(Value::is_string) => {
            return Err(ApiError::invalid(
                "prompt",
                "Only one prompt per request is supported.",
            ))
        }
        None => return Err(ApiError::invalid("prompt", "prompt is required.")),
        Some(_) => return Err(bad()),
    };
    let template = match o.get("template") {
        None | Some(Value::Null) => TemplateChoice::Raw,
        Some(Value::String(s)) => s
            .parse::<TemplateChoice>()
            .map_err(|e| ApiError::invalid("template", e.to_string()))?,
        Some(_) => return Err(ApiError::invalid("template", "template must be a string.")),
    };
    let input = match o.get("input") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::invalid("input", "input must be a string.")),
    };
    if template == TemplateChoice::Raw && !input.is_empty() {
        return Err(ApiError::invalid(
            "input",
            "input needs a template (e.g. \"template\": \"alpaca\").",
        ));
    }
    Ok(PromptSpec::Text {
        text,
        input,
        template,
    })
}

fn type_error(key: &str, want: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        key,
        format!("Invalid type for '{key}': expected {want}, but got {got}."),
    )
}

fn opt_num(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => Err(type_error(key, "a number", v)),
    }
}

fn opt_int(o: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Ok(Some(i)),
            // Seeds above i64::MAX keep their bits.
            (None, Some(u)) => Ok(Some(u as i64)),
            _ => Err(type_error(key, "an integer", &Value::Number(n.clone()))),
        },
        Some(v) => Err(type_error(key, "an integer", v)),
    }
}

fn opt_bool(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(type_error(key, "a boolean", v)),
    }
}

// ------------------------------------------------------------------------------------------
// Responses
// ------------------------------------------------------------------------------------------

/// Identity of one response: shared by all its chunks.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// OpenAI's `finish_reason` for ours (a shutdown cancellation reads as `length`: the answer
/// was cut short, not finished).
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// A whole (non-streamed) response.
pub fn response(
    ep: Endpoint,
    meta: &ResponseMeta,
    text: &str,
    finish: FinishReason,
    usage_v: Value,
) -> Value {
    match ep {
        Endpoint::Chat => json!({
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish_reason(finish),
            }],
            "usage": usage_v,
        }),
        Endpoint::Completion => json!({
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish_reason(finish),
            }],
            "usage": usage_v,
        }),
    }
}

/// One stream chunk: `text` (chat: the `delta.content`; `role` adds the role to the delta)
/// and, on the last one, the finish reason.
pub fn chunk(
    ep: Endpoint,
    meta: &ResponseMeta,
    text: Option<&str>,
    role: bool,
    finish: Option<FinishReason>,
) -> Value {
    let fr = finish.map(finish_reason);
    match ep {
        Endpoint::Chat => {
            let mut delta = Map::new();
            if role {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            json!({
                "id": meta.id,
                "object": "chat.completion.chunk",
                "created": meta.created,
                "model": meta.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": fr}],
            })
        }
        Endpoint::Completion => json!({
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null,
                         "finish_reason": fr}],
        }),
    }
}

/// The `include_usage` chunk: no choices, usage filled.
pub fn usage_chunk(ep: Endpoint, meta: &ResponseMeta, usage_v: Value) -> Value {
    let object = match ep {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completion => "text_completion",
    };
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage_v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Request, ApiError> {
        parse_request(Endpoint::Chat, body.as_bytes(), 512)
    }

    #[test]
    fn parses_a_full_chat_request() {
        let r = chat(
            r#"{"model":"x","messages":[{"role":"system","content":"be brief"},
               {"role":"user","content":[{"type":"text","text":"hi"}]}],
               "temperature":0.5,"top_p":0.9,"max_tokens":20,"stop":"\n","seed":7,
               "stream":true,"stream_options":{"include_usage":true},"n":1,
               "frequency_penalty":0.5,"presence_penalty":-0.25}"#,
        )
        .expect("valid");
        assert_eq!(r.sampler.frequency_penalty, 0.5);
        assert_eq!(r.sampler.presence_penalty, -0.25);
        assert_eq!(
            r.prompt,
            PromptSpec::Messages(vec![
                Message::new("system", "be brief"),
                Message::new("user", "hi")
            ])
        );
        assert_eq!(r.max_tokens, Some(20));
        assert_eq!(r.sampler.temperature, 0.5);
        assert_eq!(r.sampler.seed, 7);
        assert!(r.seeded && r.stream && r.include_usage);
        assert_eq!(r.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn rejects_bad_fields_naming_the_parameter() {
        let cases = [
            ("{not json", None),
            ("[1]", None),
            (r#"{"messages":"hi"}"#, Some("messages")),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":-3}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":1000}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":"9"}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"temperature":"hot"}"#,
                Some("temperature"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"top_p":0}"#,
                Some("top_p"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"n":2}"#,
                Some("n"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"stop":[1]}"#,
                Some("stop"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"stream":"yes"}"#,
                Some("stream"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"frequency_penalty":3}"#,
                Some("frequency_penalty"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"}],"presence_penalty":"x"}"#,
                Some("presence_penalty"),
            ),
            (
                r#"{"messages":[{"role":"user"}, {"content":"x"}]}"#,
                Some("messages[1].role"),
            ),
        ];
        for (body, param) in cases {
            let e = chat(body).expect_err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}");
            let j = e.to_json();
            assert!(j["error"]["message"].is_string() && j["error"]["type"].is_string());
        }
    }

    #[test]
    fn completion_prompts_and_templates() {
        let c = |b: &str| parse_request(Endpoint::Completion, b.as_bytes(), 64);
        assert!(matches!(
            c(r#"{"prompt":["one"]}"#).expect("ok").prompt,
            PromptSpec::Text {
                template: TemplateChoice::Raw,
                ..
            }
        ));
        assert_eq!(
            c(r#"{"prompt":[1,2,3]}"#).expect("ok").prompt,
            PromptSpec::Ids(vec![1, 2, 3])
        );
        let r = c(r#"{"prompt":"Add","input":"2+2","template":"alpaca"}"#).expect("ok");
        assert_eq!(
            r.prompt,
            PromptSpec::Text {
                text: "Add".into(),
                input: "2+2".into(),
                template: TemplateChoice::Alpaca
            }
        );
        assert_eq!(r.sampler.top_k, DEFAULT_TOP_K);
        for bad in [
            r#"{"prompt":["a","b"]}"#,
            r#"{"prompt":5}"#,
            r#"{}"#,
            r#"{"prompt":"x","template":"nope"}"#,
            r#"{"prompt":"x","input":"y"}"#,
            r#"{"prompt":"x","echo":true}"#,
        ] {
            assert_eq!(c(bad).expect_err(bad).status, 400, "{bad}");
        }
    }

    #[test]
    fn chunks_have_openai_shapes() {
        let m = ResponseMeta {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
        };
        let first = chunk(Endpoint::Chat, &m, Some(""), true, None);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert!(first["choices"][0]["finish_reason"].is_null());
        let last = chunk(Endpoint::Chat, &m, None, false, Some(FinishReason::Eos));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["choices"][0]["delta"], json!({}));
        let r = response(
            Endpoint::Completion,
            &m,
            "hi",
            FinishReason::Length,
            usage(3, 2),
        );
        assert_eq!(r["usage"]["total_tokens"], 5);
        assert_eq!(r["choices"][0]["finish_reason"], "length");
    }
}
