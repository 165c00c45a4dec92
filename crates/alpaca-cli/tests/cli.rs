//! The real binary on tiny random-weight models that the tests write themselves: the
//! command-line contract (outputs, JSON shapes, exit codes) and every bad-input path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use alpaca::model::fresh::{random_llama_gguf, tiny_llama_config};
use alpaca::model::gguf::Value;
use alpaca::model::quant::GgmlType;
use alpaca::tokenizer::tiny_test_vocab;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_alpaca"));
    // A cache that never holds the default model, so "no -m" tests are hermetic.
    c.env("ALPACA_MODELS", "/nonexistent/alpaca-test-models");
    c
}

/// A fresh directory under the system temp dir, unique to this test.
fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("alpaca-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Write a tiny LLaMA (2 layers, d 64, vocab 283) in weight type `ty`.
fn tiny_model(dir: &Path, ty: GgmlType) -> PathBuf {
    let w = random_llama_gguf(
        &tiny_llama_config(tiny_test_vocab().tokens.len()),
        &tiny_test_vocab(),
        ty,
        7,
    )
    .expect("tiny model");
    let p = dir.join(format!("tiny-{}.gguf", ty.name()));
    w.write(&p).expect("write tiny model");
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run alpaca")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A user error: exit code 1, one line on stderr, no panic or backtrace.
fn assert_user_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn run_is_deterministic_at_temperature_zero_and_seeded_otherwise() {
    let d = tmpdir("run");
    let m = tiny_model(&d, GgmlType::Q8_0);
    let go = |extra: &[&str]| {
        let o = run(bin()
            .args(["run", "-m"])
            .arg(&m)
            .args([
                "-p",
                "the cat sat",
                "--template",
                "raw",
                "-n",
                "12",
                "-t",
                "1",
                "--ids",
            ])
            .args(extra));
        assert!(o.status.success(), "{}", stderr(&o));
        let ids: Vec<u32> = serde_json::from_str(stdout(&o).trim()).expect("--ids prints JSON");
        ids
    };
    let greedy = go(&["--temp", "0", "--ignore-eos"]);
    assert_eq!(greedy.len(), 12);
    assert_eq!(greedy, go(&["--temp", "0", "--ignore-eos"]));
    let a = go(&["--temp", "1.0", "--seed", "5", "--ignore-eos"]);
    assert_eq!(a, go(&["--temp", "1.0", "--seed", "5", "--ignore-eos"]));
    assert_ne!(a, go(&["--temp", "1.0", "--seed", "6", "--ignore-eos"]));
}

#[test]
fn every_weight_type_loads_and_generates() {
    let d = tmpdir("types");
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ] {
        let m = tiny_model(&d, ty);
        let o = run(bin().args(["run", "-m"]).arg(&m).args([
            "-p",
            "hello",
            "--template",
            "alpaca",
            "-n",
            "4",
            "--temp",
            "0",
            "-t",
            "1",
        ]));
        assert!(o.status.success(), "{}: {}", ty.name(), stderr(&o));
    }
}

#[test]
fn tokenize_json_bench_json_and_perplexity_formats() {
    let d = tmpdir("formats");
    let m = tiny_model(&d, GgmlType::Q4_0);
    let o = run(bin().args(["tokenize", "-m"]).arg(&m).args([
        "--text",
        "<|im_start|>the 12",
        "--json",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<u32> = serde_json::from_str(stdout(&o).trim()).expect("JSON array");
    assert_eq!(ids[0], 1, "special token parsed");
    assert_eq!(
        &ids[ids.len() - 2..],
        &[3 + b'1' as u32, 3 + b'2' as u32],
        "digits split one by one"
    );

    let o = run(bin()
        .args(["bench", "-m"])
        .arg(&m)
        .args(["-p", "16", "-n", "4", "-r", "1", "-t", "1", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("bench JSON");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["test"], "pp16");
    assert_eq!(rows[1]["test"], "tg4");
    for r in rows {
        assert_eq!(r["threads"], 1);
        assert!(r["tokens_per_second"].as_f64().expect("number") > 0.0);
        assert!(r["stddev"].as_f64().is_some());
    }

    let text = d.join("text.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat and the dog ran in the hall. ".repeat(20),
    )
    .expect("write");
    let o = run(bin()
        .args(["perplexity", "-m"])
        .arg(&m)
        .arg("-f")
        .arg(&text)
        .args(["--ctx", "64", "-t", "1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let last = out.trim_end().lines().last().expect("output");
    let ppl: f64 = last
        .strip_prefix("PPL = ")
        .expect("last line is PPL = ")
        .parse()
        .expect("number");
    // A random model over 283 tokens: perplexity near the vocabulary size, finite.
    assert!(ppl.is_finite() && ppl > 1.0, "{ppl}");
}

#[test]
fn chat_streams_keeps_history_and_resets() {
    let d = tmpdir("chat");
    let m = tiny_model(&d, GgmlType::Q8_0);
    let mut child = bin()
        .args(["chat", "-m"])
        .arg(&m)
        .args(["--template", "chatml", "-n", "5", "--temp", "0", "-t", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chat");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"hello there\nand then\n/reset\nhello there\n/exit\n")
            .expect("write");
    }
    let o = child.wait_with_output().expect("chat exits");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("conversation cleared"));
    // The first answer is what `run` gives for the same message and template, and after
    // /reset the same first message gives the same (greedy) answer again.
    let single = run(bin().args(["run", "-m"]).arg(&m).args([
        "--template",
        "chatml",
        "-p",
        "hello there",
        "-n",
        "5",
        "--temp",
        "0",
        "-t",
        "1",
    ]));
    let first = stdout(&single);
    let out = stdout(&o);
    assert!(out.starts_with(&first), "{out:?} vs {first:?}");
    assert!(out.ends_with(&first), "{out:?} vs {first:?}");
    assert!(
        out.len() > 2 * first.len(),
        "a second answer in between: {out:?}"
    );
}

// ------------------------------------------------------------------------------ bad input

#[test]
fn missing_default_model_names_the_fetch_command() {
    let o = run(bin().args(["run", "-p", "hi"]));
    assert_user_error(&o, "scripts/fetch-model.sh");
    let o = run(bin().args(["run", "-m", "/nonexistent/model.gguf", "-p", "hi"]));
    assert_user_error(&o, "/nonexistent/model.gguf");
}

#[test]
fn truncated_and_corrupt_gguf_are_rejected() {
    let d = tmpdir("truncated");
    let m = tiny_model(&d, GgmlType::Q4_1);
    let bytes = std::fs::read(&m).expect("read");
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).expect("write");
    let o = run(bin().args(["run", "-m"]).arg(&cut).args(["-p", "hi"]));
    assert_user_error(&o, "truncated");
    let garbage = d.join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model").expect("write");
    let o = run(bin().args(["run", "-m"]).arg(&garbage).args(["-p", "hi"]));
    assert_user_error(&o, "bad magic");
}

#[test]
fn unsupported_architecture_and_weight_type_are_rejected() {
    let d = tmpdir("unsupported");
    let tok = tiny_test_vocab();
    let cfg = tiny_llama_config(tok.tokens.len());
    let mut w = random_llama_gguf(&cfg, &tok, GgmlType::Q8_0, 1).expect("model");
    w.set("general.architecture", Value::String("mamba".into()));
    let p = d.join("mamba.gguf");
    w.write(&p).expect("write");
    let o = run(bin().args(["run", "-m"]).arg(&p).args(["-p", "hi"]));
    assert_user_error(&o, "unsupported architecture `mamba`");

    // A model whose gate matrix is Q2_K, a type this build cannot compute with. Rows of
    // 256 so that the K-quant block fits.
    let cfg = alpaca::model::llama::LlamaConfig {
        dim: 256,
        head_dim: 64,
        ..cfg
    };
    let mut w = random_llama_gguf(&cfg, &tok, GgmlType::Q8_0, 1).expect("model");
    w.add_tensor(
        "blk.0.ffn_gate.weight",
        vec![256, cfg.ffn_dim as u64],
        GgmlType::Q2K,
        vec![0u8; cfg.ffn_dim * GgmlType::Q2K.type_size()],
    );
    let p = d.join("q2k.gguf");
    w.write(&p).expect("write");
    let o = run(bin().args(["run", "-m"]).arg(&p).args(["-p", "hi"]));
    assert_user_error(&o, "unsupported weight type Q2_K");
}

#[test]
fn prompt_longer_than_context_is_rejected() {
    let d = tmpdir("ctx");
    let m = tiny_model(&d, GgmlType::Q8_0);
    let long = "x ".repeat(400); // > 256 tokens of context
    let o = run(bin()
        .args(["run", "-m"])
        .arg(&m)
        .args(["-p", &long, "--template", "raw"]));
    assert_user_error(&o, "context holds 256");
}

#[test]
fn invalid_utf8_prompt_file_is_rejected() {
    let d = tmpdir("utf8");
    let m = tiny_model(&d, GgmlType::Q8_0);
    let f = d.join("prompt.txt");
    std::fs::write(&f, b"caf\xe9 au lait").expect("write");
    let o = run(bin().args(["run", "-m"]).arg(&m).arg("-f").arg(&f));
    assert_user_error(&o, "invalid UTF-8 at byte 3");
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let o = run(bin().args(["run", "--temp", "hot"]));
    assert_eq!(o.status.code(), Some(1));
    let o = run(bin().args(["--help"]));
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("run"));
}
