//! Self-instruct generation against a real HTTP server on loopback (issue 10, must-show 3 and 4).
//!
//! - faults (429 + Retry-After, 500, hung connection, malformed JSON) and replies cut by the
//!   length limit still end with exactly the store of a clean run;
//! - 401 and 404 fail fast with a clear message;
//! - the real binary, killed with SIGKILL at random moments and resumed over and over, loses and
//!   duplicates nothing, and ends byte-identical to an uninterrupted run.

mod data_fake_openai;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alpaca::data::filter::Reject;
use alpaca::generate::openai::{Endpoint, OpenAiConfig, OpenAiTeacher};
use alpaca::generate::{
    default_seeds, generate, GenerateConfig, OpenMode, Report, Scripted, Store, StoredItem, Teacher,
};
use data_fake_openai::{start, Fault};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("alpaca-data-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn teacher(url: &str, endpoint: Endpoint) -> OpenAiTeacher {
    OpenAiTeacher::new(OpenAiConfig {
        base_url: url.to_string(),
        model: "fake-model".into(),
        api_key: Some("sk-test".into()),
        endpoint,
        batch: 5,
        timeout: Duration::from_millis(700),
        max_retries: 30,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
    })
    .unwrap()
}

fn run(t: &dyn Teacher, path: &Path, target: usize) -> alpaca::Result<Report> {
    let cfg = GenerateConfig {
        target,
        seed: 11,
        concurrency: 4,
        ..GenerateConfig::default()
    };
    let opened = Store::open(path, OpenMode::Overwrite)?;
    generate(t, &default_seeds()?, opened, &cfg, &mut |_| {})
}

/// Items without the teacher name (which holds the server's port).
fn content(path: &Path) -> Vec<StoredItem> {
    let mut items = Store::open(path, OpenMode::Resume).unwrap().items;
    for i in &mut items {
        i.teacher.clear();
    }
    items
}

fn faulty(n: u64) -> Option<Fault> {
    match n % 8 {
        1 => Some(Fault::RateLimited),
        3 => Some(Fault::ServerError),
        5 => Some(Fault::Malformed),
        6 if n < 40 => Some(Fault::Hang),
        _ => None,
    }
}

#[test]
fn faults_and_truncation_end_with_the_clean_store() {
    let dir = tmp_dir("faults");
    let clean = start(|_| None, Duration::ZERO, Duration::ZERO);
    let bad = start(faulty, Duration::ZERO, Duration::from_secs(3));
    for endpoint in [Endpoint::Completions, Endpoint::Chat] {
        let target = if endpoint == Endpoint::Chat { 60 } else { 150 };
        let (a, b, c) = (
            dir.join("clean.jsonl"),
            dir.join("faulty.jsonl"),
            dir.join("scripted.jsonl"),
        );
        let rc = run(&teacher(&clean.url, endpoint), &a, target).unwrap();
        let t = teacher(&bad.url, endpoint);
        let rb = run(&t, &b, target).unwrap();
        run(&Scripted::synthetic(5), &c, target).unwrap();
        assert!(rb.target_reached);
        assert!(
            t.retries() >= 4,
            "{endpoint:?}: only {} retries",
            t.retries()
        );
        assert_eq!(content(&a), content(&b), "{endpoint:?}");
        assert_eq!(content(&a).len(), target);
        // Replies cut by the length limit lost their last item, and only that.
        assert!(rc.rejected.get(Reject::Truncated) > 0);
        assert_eq!(
            rc.rejected.get(Reject::Truncated),
            rb.rejected.get(Reject::Truncated)
        );
        // Same items as the in-process teacher (usage differs: the server splits per request).
        let key = |v: Vec<StoredItem>| -> Vec<_> {
            v.into_iter()
                .map(|i| (i.instruction, i.input, i.output, i.prompt, i.position))
                .collect()
        };
        assert_eq!(key(content(&a)), key(content(&c)));
        assert!(rc.progress.usage.prompt_tokens > 0);
    }
    assert!(bad.faults_served.load(std::sync::atomic::Ordering::SeqCst) >= 8);
}

#[test]
fn unauthorized_and_not_found_fail_fast() {
    let dir = tmp_dir("fatal");
    for (fault, needle) in [
        (Fault::Unauthorized, "API key"),
        (Fault::NotFound, "model name"),
    ] {
        let server = match fault {
            Fault::Unauthorized => start(
                |_| Some(Fault::Unauthorized),
                Duration::ZERO,
                Duration::ZERO,
            ),
            _ => start(|_| Some(Fault::NotFound), Duration::ZERO, Duration::ZERO),
        };
        let start = Instant::now();
        let err = run(
            &teacher(&server.url, Endpoint::Completions),
            &dir.join("x.jsonl"),
            10,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(needle)
                && msg.contains("Incorrect API key") | msg.contains("does not exist"),
            "{msg}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "took {:?}",
            start.elapsed()
        );
    }
}

/// A deterministic stream of pseudo-random numbers for kill delays.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn alpaca_generate(url: &str, out: &Path, target: usize) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.with_extension("log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alpaca"));
    let target = target.to_string();
    let args = [
        "data",
        "generate",
        "--teacher",
        "completions:fake-model",
        "--base-url",
        url,
        "-n",
        &target,
        "--resume",
        "--seed",
        "5",
        "--concurrency",
        "1",
        "--batch",
        "1",
        "--backoff-ms",
        "5",
        "--timeout",
        "2",
        "-t",
        "1",
        "-o",
    ];
    cmd.args(args)
        .arg(out)
        .env("OPENAI_API_KEY", "sk-test")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    cmd
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tmp_dir("kill9");
    // Latency makes each run slow enough to be killed in the middle of its work, and faults
    // make kills land during retries too.
    let server = start(
        |n| match n % 11 {
            4 => Some(Fault::RateLimited),
            9 => Some(Fault::ServerError),
            _ => None,
        },
        Duration::from_millis(50),
        Duration::ZERO,
    );
    let target = 600;
    let clean = dir.join("clean.jsonl");
    let st = alpaca_generate(&server.url, &clean, target)
        .status()
        .unwrap();
    assert!(st.success());

    let store = dir.join("killed.jsonl");
    let mut rng = 0x5eed_u64;
    let (mut kills, mut torn_seen, mut cycles, mut prev_lines) = (0, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(25);
    while kills < 25 && Instant::now() < deadline {
        cycles += 1;
        let mut child = alpaca_generate(&server.url, &store, target)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + next(&mut rng) % 120));
        match child.try_wait().unwrap() {
            Some(st) => {
                // Finished before the kill.
                eprintln!("cycle {cycles} exited by itself: {st}");
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
        let mut bytes = std::fs::read(&store).unwrap_or_default();
        if !bytes.is_empty() && bytes.last() != Some(&b'\n') {
            torn_seen += 1;
        } else if cycles % 4 == 0 && !bytes.is_empty() {
            // SIGKILL rarely lands inside the single write of a line; a power cut can. Leave
            // half a line behind as such a crash would.
            let half = br#"{"instruction":"Half a line that never got its"#;
            bytes.extend_from_slice(half);
            std::fs::write(&store, &bytes).unwrap();
            torn_seen += 1;
        }
        // Every complete line parses, and complete lines are never taken back.
        let good = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let lines = std::str::from_utf8(&bytes[..good]).unwrap().lines().count();
        for line in std::str::from_utf8(&bytes[..good]).unwrap().lines() {
            serde_json::from_str::<StoredItem>(line).unwrap();
        }
        assert!(
            lines >= prev_lines,
            "store lost items: {lines} < {prev_lines}"
        );
        prev_lines = lines;
    }
    assert!(kills >= 20, "only {kills} kills landed in {cycles} cycles");
    // Finish the run.
    assert!(alpaca_generate(&server.url, &store, target)
        .status()
        .unwrap()
        .success());
    let got = std::fs::read_to_string(&store).unwrap();
    let want = std::fs::read_to_string(&clean).unwrap();
    let items: Vec<StoredItem> = got
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), target);
    let mut origins: Vec<(u64, u32)> = items.iter().map(StoredItem::origin).collect();
    origins.dedup();
    assert_eq!(origins.len(), target, "duplicated item");
    assert_eq!(
        got, want,
        "killed-and-resumed store differs from the clean one"
    );
    let log = std::fs::read_to_string(store.with_extension("log")).unwrap();
    assert!(torn_seen >= 3);
    assert!(
        log.matches("dropped a torn last line").count() >= torn_seen,
        "{log}"
    );
    eprintln!("{kills} kills in {cycles} cycles, {torn_seen} torn lines recovered");
}
