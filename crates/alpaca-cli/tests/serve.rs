//! `alpaca serve` as a user runs it: the real binary on a free port with a tiny random
//! model, spoken to over raw HTTP/1.1. Bad requests get OpenAI-style errors with the right
//! status and the server keeps serving; a client that disconnects frees its slot; SIGTERM
//! exits cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use alpaca::model::fresh::{random_llama_gguf, tiny_llama_config};
use alpaca::model::quant::GgmlType;
use alpaca::tokenizer::tiny_test_vocab;
use serde_json::Value;

/// A tiny LLaMA (vocab 283) with context `ctx`.
fn tiny_model(name: &str, ctx: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alpaca-serve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut cfg = tiny_llama_config(tiny_test_vocab().tokens.len());
    cfg.context_length = ctx;
    let w = random_llama_gguf(&cfg, &tiny_test_vocab(), GgmlType::Q8_0, 5).expect("model");
    let p = dir.join(format!("{name}.gguf"));
    w.write(&p).expect("write model");
    p
}

/// A running server; killed on drop if the test did not stop it.
struct Server {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(model: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_alpaca"))
        .args(["serve", "-t", "1", "--port", "0", "-m"])
        .arg(model)
        .args(extra)
        .env("ALPACA_MODELS", "/nonexistent/alpaca-test-models")
        .env_remove("ALPACA_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start alpaca serve");
    let stderr = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    // From here on the child is killed and reaped on drop, even if a check panics.
    let mut srv = Server {
        child,
        addr: String::new(),
        lines: rx,
    };
    let stderr = stderr.expect("stderr piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = srv
            .lines
            .recv_timeout(left)
            .expect("server printed its address");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            srv.addr = rest.split_whitespace().next().expect("address").to_string();
            return srv;
        }
    }
}

/// Status, headers and body of one HTTP/1.1 exchange (`Connection: close`).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send head");
    // The server may answer (413) before reading a big body: ignore a reset on the rest.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

const KEY: (&str, &str) = ("Authorization", "Bearer s3cret");

fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, &[KEY], body.as_bytes())
}

/// Decode a chunked body if needed and parse JSON.
fn json_of(body: &str) -> Value {
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map(|e| e + 1).unwrap_or(body.len());
    serde_json::from_str(&body[start..end]).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn assert_error(resp: (u16, String), status: u16, param: Option<&str>) {
    assert_eq!(resp.0, status, "{}", resp.1);
    let j = json_of(&resp.1);
    let e = &j["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
    assert!(e["type"].is_string(), "{j}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{j}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{j}");
    }
}

fn assert_serving(addr: &str) {
    let (st, body) = post(
        addr,
        "/v1/completions",
        r#"{"prompt":"the cat","max_tokens":5,"temperature":0}"#,
    );
    assert_eq!(st, 200, "{body}");
    let j = json_of(&body);
    assert_eq!(j["object"], "text_completion");
    assert!(j["usage"]["completion_tokens"]
        .as_u64()
        .is_some_and(|n| n <= 5));
}

#[test]
fn r6_bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let m = tiny_model("bad", 256);
    let srv = start(&m, &["--api-key", "s3cret", "--max-body", "4096"]);
    let a = srv.addr.as_str();
    assert_serving(a);

    // Authentication: wrong or missing key.
    let body = br#"{"prompt":"x","max_tokens":2}"#;
    let wrong = [("Authorization", "Bearer s3creT")];
    assert_error(http(a, "POST", "/v1/completions", &wrong, body), 401, None);
    assert_error(http(a, "POST", "/v1/completions", &[], body), 401, None);
    assert_error(http(a, "GET", "/v1/models", &[], b""), 401, None);
    // Open routes need no key.
    assert_eq!(http(a, "GET", "/health", &[], b"").0, 200);
    let (st, page) = http(a, "GET", "/", &[], b"");
    assert!(st == 200 && page.contains("<title>alpaca</title>"), "{st}");

    // Oversized body.
    let big = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(10_000));
    assert_error(post(a, "/v1/completions", &big), 413, None);
    // Invalid JSON, wrong types, unsupported values.
    assert_error(
        post(a, "/v1/chat/completions", "{\"messages\": [}"),
        400,
        None,
    );
    assert_error(
        post(a, "/v1/completions", r#"{"prompt":"x","max_tokens":-5}"#),
        400,
        Some("max_tokens"),
    );
    assert_error(
        post(
            a,
            "/v1/completions",
            r#"{"prompt":"x","temperature":"warm"}"#,
        ),
        400,
        Some("temperature"),
    );
    assert_error(
        post(
            a,
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
        ),
        400,
        Some("n"),
    );
    // A prompt longer than the context (256): ~600 byte-level tokens.
    let long = format!(r#"{{"prompt":"{}","max_tokens":4}}"#, "zq ".repeat(200));
    let resp = post(a, "/v1/completions", &long);
    assert_error(resp.clone(), 400, Some("prompt"));
    assert!(resp.1.contains("context_length_exceeded"), "{}", resp.1);
    let chat_long = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "zq ".repeat(200)
    );
    assert_error(
        post(a, "/v1/chat/completions", &chat_long),
        400,
        Some("messages"),
    );
    // Unknown route.
    assert_error(http(a, "GET", "/v2/nothing", &[KEY], b""), 404, None);

    // Still serving: plain and streamed, chat and completion.
    assert_serving(a);
    let (st, body) = post(
        a,
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":6,"stream":true,
            "stream_options":{"include_usage":true},"seed":3}"#,
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("chat.completion.chunk"), "{body}");
    assert!(body.contains("\"usage\""), "{body}");
    assert!(
        body.trim_end().ends_with("data: [DONE]") || body.contains("data: [DONE]\n"),
        "{body}"
    );

    let (st, metrics) = http(a, "GET", "/metrics", &[KEY], b"");
    assert_eq!(st, 200);
    for needle in [
        "alpaca_requests_total{path=\"/v1/completions\",status=\"413\"} 1",
        "alpaca_requests_total{path=\"/v1/completions\",status=\"401\"} 2",
        "alpaca_queue_depth 0",
        "alpaca_generated_tokens_total",
        "alpaca_time_to_first_token_seconds_count",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
    drop(srv);
}

/// Scrape one metric's value.
fn metric(addr: &str, name: &str) -> f64 {
    let (_, m) = http(addr, "GET", "/metrics", &[], b"");
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {m}"))
}

#[test]
fn r6_disconnected_client_frees_its_slot_and_sigterm_exits_cleanly() {
    let m = tiny_model("cancel", 8192);
    let mut srv = start(
        &m,
        &["--parallel", "1", "--queue", "1", "--max-tokens", "8000"],
    );
    let a = srv.addr.clone();
    // A long stream in the only slot; read its first chunk, then hang up.
    let mut s = TcpStream::connect(&a).expect("connect");
    let body = r#"{"prompt":"the cat","max_tokens":8000,"ignore_eos":true,"stream":true}"#;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("first bytes");
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The head goes out at submission; the job takes the slot on the scheduler's next turn.
    let t0 = Instant::now();
    while metric(&a, "alpaca_active_sequences") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "job never became active"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(s);
    let t0 = Instant::now();
    while metric(&a, "alpaca_generations_cancelled_total") < 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "slot not freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&a, "alpaca_active_sequences"), 0.0);
    assert_eq!(metric(&a, "alpaca_generations_finished_total"), 0.0);
    // The freed slot serves the next request.
    let (st, _) = http(
        &a,
        "POST",
        "/v1/completions",
        &[],
        br#"{"prompt":"a","max_tokens":3}"#,
    );
    assert_eq!(st, 200);

    // SIGTERM: clean exit, code 0.
    let pid = srv.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = srv.child.try_wait().expect("wait") {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = srv.lines.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("server stopped")),
        "{rest:?}"
    );
}
