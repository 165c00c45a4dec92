//! `alpaca recipe` end to end on a tiny random model with the synthetic teacher: every stage
//! runs, a rerun skips them all, a crash during generation and then during training resumes
//! to byte-identical artifacts, and the pre-flight errors come before any work.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use alpaca::model::quant::GgmlType;
use common::{bin, temp_dir, write_rows, WORDS};

fn tiny_model(dir: &Path) -> PathBuf {
    common::tiny_model(dir, GgmlType::Q8_0)
}

/// A small Alpaca file to mix in.
fn extra_data(dir: &Path) -> PathBuf {
    let rows: Vec<serde_json::Value> = (0..30)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Say {} number {i} twice", WORDS[i % 6]),
                "input": "",
                "output": format!("{} {}", WORDS[(i + 2) % 6], WORDS[(i + 3) % 6]),
            })
        })
        .collect();
    write_rows(dir, "extra.json", &rows)
}

/// A recipe on the tiny model; `extra` is appended (later keys of a section win in TOML only
/// as new sections, so callers add whole sections or top-level keys).
fn config(dir: &Path, out: &str, sample_tokens: usize) -> PathBuf {
    let model = tiny_model(dir);
    let data = extra_data(dir);
    let text = format!(
        r#"out_dir = "{out}"
threads = 1

[model]
student = "{model}"

[teacher]
kind = "synthetic"

[generate]
count = 30
seed = 3

[data]
files = ["{data}"]
top_up_to = 45
held_out = 6

[train]
max_steps = 6
batch_size = 4
micro_batch_size = 2
val_size = 0
save_every = 1
eval_every = 0
warmup_steps = 1
lr = 1e-2
lora_targets = ["all"]

[sample]
max_new_tokens = {sample_tokens}
"#,
        out = dir.join(out).display(),
        model = model.display(),
        data = data.display(),
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn recipe(cfg: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("recipe")
        .arg(cfg)
        .args(extra)
        .output()
        .expect("run alpaca")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The artifacts that must come out the same however often the run was interrupted.
const ARTIFACTS: [&str; 5] = [
    "generate/store.jsonl",
    "data/train.json",
    "data/held_out.json",
    "train/adapter_model.safetensors",
    "model-q8_0.gguf",
];

#[test]
fn every_stage_runs_then_a_rerun_skips_them_all() {
    let dir = temp_dir("e2e");
    let cfg = config(&dir, "run", 8);
    let out = recipe(&cfg, &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for (i, stage) in [
        "models", "generate", "mix", "train", "eval", "export", "sample",
    ]
    .iter()
    .enumerate()
    {
        assert!(t.contains(&format!("[{}/7] {stage}", i + 1)), "{t}");
    }
    // The summary table has the numbers the issue asks for.
    assert!(t.contains("| 2 generate | ran |"), "{t}");
    assert!(t.contains("kept 30 of target 30"), "{t}");
    assert!(t.contains("rejected"), "{t}");
    assert!(t.contains("held-out response loss on"), "{t}");
    assert!(t.contains("-> tuned"), "{t}");
    assert!(t.contains("model-q8_0.gguf (q8_0,"), "{t}");
    assert!(t.contains("tok/s (greedy, exported model)"), "{t}");
    assert!(t.contains("chat with it: alpaca chat -m"), "{t}");
    let run = dir.join("run");
    for a in ARTIFACTS {
        assert!(run.join(a).exists(), "{a} missing");
    }
    let store_lines = String::from_utf8(read(&run.join("generate/store.jsonl")))
        .expect("utf8")
        .lines()
        .count();
    assert_eq!(store_lines, 30);
    let held: Vec<serde_json::Value> =
        serde_json::from_slice(&read(&run.join("data/held_out.json"))).expect("json");
    assert_eq!(held.len(), 6);
    let summary = std::fs::read_to_string(run.join("summary.md")).expect("summary.md");
    assert!(summary.contains("| 4 train | ran |"), "{summary}");

    // Nothing changed: every stage is skipped, nothing is rewritten.
    let before: Vec<Vec<u8>> = ARTIFACTS.iter().map(|a| read(&run.join(a))).collect();
    let t0 = Instant::now();
    let out = recipe(&cfg, &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "a rerun must be quick"
    );
    assert_eq!(t.matches("config unchanged: skipped").count(), 6, "{t}");
    for (a, b) in ARTIFACTS.iter().zip(&before) {
        assert_eq!(&read(&run.join(a)), b, "{a} changed on a rerun");
    }

    // A change to the last stage's section reruns that stage only.
    let cfg2 = config(&dir, "run", 4);
    let out = recipe(&cfg2, &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.matches("config unchanged: skipped").count(), 5, "{t}");
    assert!(t.contains("| 7 sample | ran |"), "{t}");
    assert!(t.contains("4 tokens at"), "{t}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn crash_in_generation_then_in_training_resumes_to_the_same_artifacts() {
    let dir = temp_dir("resume");
    // Both runs use the same run directory (the exported GGUF records its adapter's path):
    // the uninterrupted one is moved aside.
    let cfg = config(&dir, "run", 8);
    let out = recipe(&cfg, &[]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::rename(dir.join("run"), dir.join("clean")).expect("move aside");

    let run = dir.join("run");
    // 1. Killed during generation, after 12 kept items.
    let out = recipe(&cfg, &["--crash-after", "generate:12"]);
    assert!(!out.status.success(), "{}", text(&out));
    let stored = String::from_utf8(read(&run.join("generate/store.jsonl")))
        .expect("utf8")
        .lines()
        .count();
    assert!(
        (12..30).contains(&stored),
        "{stored} items stored at the crash"
    );
    assert!(!run.join("data/train.json").exists());

    // 2. Rerun: generation resumes from the store; killed during training after step 3.
    let out = recipe(&cfg, &["--crash-after", "train:3"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains(&format!("with {stored} items")), "{t}");
    assert!(t.contains("kept 30 of target 30"), "{t}");
    assert!(run.join("train/checkpoint.safetensors").exists());
    assert!(!run.join("train/adapter_model.safetensors").exists());

    // 3. Rerun: generation and mix are skipped, training resumes from its checkpoint.
    let out = recipe(&cfg, &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("[2/7] generate: self-instruct data from the teacher (output complete"),
        "{t}"
    );
    assert!(
        t.contains("[3/7] mix: mix in data files, set aside the held-out set (output complete"),
        "{t}"
    );
    assert!(t.contains("resuming at step 2"), "{t}");

    for a in ARTIFACTS {
        assert!(
            read(&dir.join("clean").join(a)) == read(&run.join(a)),
            "{a} differs from the uninterrupted run"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Run a config expected to fail in pre-flight: exit code 1, quickly, nothing generated.
fn preflight_fails(dir: &Path, cfg: &str, needles: &[&str]) {
    let path = dir.join("bad.toml");
    std::fs::write(&path, cfg).expect("write");
    let t0 = Instant::now();
    let out = recipe(&path, &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "pre-flight took too long"
    );
    for n in needles {
        assert!(t.contains(n), "`{n}` not in: {t}");
    }
    assert!(!dir.join("out/generate/store.jsonl").exists());
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn preflight_names_the_problem_before_any_work() {
    let dir = temp_dir("preflight");
    let model = tiny_model(&dir);
    let head = format!(
        "out_dir = \"{}\"\n[model]\nstudent = \"{}\"\n",
        dir.join("out").display(),
        model.display()
    );
    // A typo in a key: the key, the file and the line are named.
    preflight_fails(
        &dir,
        &format!("{head}[train]\nlr = 1e-3\nmax_step = 10\n"),
        &["bad.toml:6", "unknown field `max_step`"],
    );
    // An unreachable teacher: nothing listens on port 9 of the loopback.
    preflight_fails(
        &dir,
        &format!(
            "{head}[teacher]\nkind = \"chat\"\nmodel = \"gpt-4o-mini\"\nbase_url = \"http://127.0.0.1:9/v1\"\n"
        ),
        &["teacher.base_url", "http://127.0.0.1:9/v1", "unreachable"],
    );
    // A missing data file.
    let missing = dir.join("nowhere/alpaca.json");
    preflight_fails(
        &dir,
        &format!(
            "{head}[teacher]\nkind = \"synthetic\"\n[data]\nfiles = [\"{}\"]\n",
            missing.display()
        ),
        &["data.files", "nowhere/alpaca.json", "does not exist"],
    );
    // A missing student model, and a missing config file.
    preflight_fails(
        &dir,
        "[model]\nstudent = \"/nonexistent/model.gguf\"\n",
        &["model.student", "/nonexistent/model.gguf"],
    );
    let out = recipe(&dir.join("no-such.toml"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no-such.toml"));
    std::fs::remove_dir_all(&dir).ok();
}
