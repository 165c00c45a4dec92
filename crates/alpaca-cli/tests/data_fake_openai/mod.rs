//! A fake OpenAI-compatible server on loopback for the data tests.
//!
//! It serves `/v1/completions` (string or list prompt) and `/v1/chat/completions` with the
//! deterministic replies of `alpaca::generate::teacher::synthetic_reply`, and injects faults on
//! a fixed schedule of request numbers: 429 with `Retry-After`, 500, a hung connection, and a
//! 200 with malformed JSON. Faults are transient by construction (a retry is a new request
//! number), so a client that retries correctly ends with exactly the replies of a clean server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use alpaca::generate::teacher::synthetic_reply;

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Fault {
    RateLimited,
    ServerError,
    Hang,
    Malformed,
    Unauthorized,
    NotFound,
}

pub struct FakeServer {
    pub url: String,
    pub faults_served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(
            self.url
                .trim_start_matches("http://")
                .trim_end_matches("/v1"),
        );
    }
}

/// Start a server; `schedule(n)` says which fault (if any) request number `n` gets, and
/// `latency` delays every reply.
pub fn start(schedule: fn(u64) -> Option<Fault>, latency: Duration, hang: Duration) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicU64::new(0));
    let faults_served = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, f, s) = (requests.clone(), faults_served.clone(), stop.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if s.load(Ordering::Relaxed) {
                return;
            }
            let Ok(conn) = conn else { continue };
            let n = r.fetch_add(1, Ordering::SeqCst);
            let fault = schedule(n);
            if fault.is_some() {
                f.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::spawn(move || handle(conn, fault, latency, hang));
        }
    });
    FakeServer {
        url: format!("http://{addr}/v1"),
        faults_served,
        stop,
    }
}

fn respond(conn: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(msg.as_bytes());
    let _ = conn.flush();
}

fn handle(mut conn: TcpStream, fault: Option<Fault>, latency: Duration, hang: Duration) {
    let Ok(clone) = conn.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    std::thread::sleep(latency);
    match fault {
        Some(Fault::RateLimited) => {
            return respond(
                &mut conn,
                "429 Too Many Requests",
                "Retry-After: 0.05\r\n",
                r#"{"error":{"message":"slow down"}}"#,
            )
        }
        Some(Fault::ServerError) => {
            return respond(&mut conn, "500 Internal Server Error", "", "oops")
        }
        Some(Fault::Hang) => {
            std::thread::sleep(hang);
            return;
        }
        Some(Fault::Malformed) => {
            return respond(&mut conn, "200 OK", "", r#"{"choices": [{"text": "trunc"#)
        }
        Some(Fault::Unauthorized) => {
            return respond(
                &mut conn,
                "401 Unauthorized",
                "",
                r#"{"error":{"message":"Incorrect API key provided"}}"#,
            )
        }
        Some(Fault::NotFound) => {
            return respond(
                &mut conn,
                "404 Not Found",
                "",
                r#"{"error":{"message":"The model `nope` does not exist"}}"#,
            )
        }
        None => {}
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return respond(
            &mut conn,
            "400 Bad Request",
            "",
            r#"{"error":{"message":"bad json"}}"#,
        );
    };
    let chat = request_line.contains("/chat/completions");
    let prompts: Vec<String> = if chat {
        vec![req["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()]
    } else {
        match &req["prompt"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .map(|p| p.as_str().unwrap_or("").to_string())
                .collect(),
            _ => vec![],
        }
    };
    let (mut pt, mut ct) = (0, 0);
    let choices: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let c = synthetic_reply(p);
            pt += c.usage.prompt_tokens;
            ct += c.usage.completion_tokens;
            let finish = if c.finish == alpaca::generate::Finish::Length { "length" } else { "stop" };
            if chat {
                json!({"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": finish})
            } else {
                json!({"index": i, "text": c.text, "finish_reason": finish})
            }
        })
        .collect();
    // Reverse the choices: clients must order them by `index`.
    let choices: Vec<Value> = choices.into_iter().rev().collect();
    let body = json!({"object": "text_completion", "choices": choices,
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}});
    respond(&mut conn, "200 OK", "", &body.to_string());
}
