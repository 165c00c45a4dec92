//! Helpers shared by the integration tests (`mod common;` in each): the binary, scratch
//! directories, tiny fixtures and checks on a finished command. Each test file uses only
//! some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alpaca::model::fresh::{random_llama_gguf, tiny_llama_config};
use alpaca::model::quant::GgmlType;
use alpaca::tokenizer::tiny_test_vocab;

/// The `alpaca` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_alpaca"))
}

/// `alpaca train -m MODEL --data DATA -o OUT`, for the caller to add flags to.
pub fn train_cmd(model: &Path, data: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args(["train", "-m"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("-o")
        .arg(out);
    c
}

/// A fresh, empty scratch directory, named after the test file, `name` and the process.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "alpaca-{}-{name}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A tiny random LLaMA (`tiny_llama_config` on the test vocabulary, seed 1) with weights of
/// type `ty`, written to `dir/tiny.gguf`.
pub fn tiny_model(dir: &Path, ty: GgmlType) -> PathBuf {
    let tok = tiny_test_vocab();
    let path = dir.join("tiny.gguf");
    random_llama_gguf(&tiny_llama_config(tok.tokens.len()), &tok, ty, 1)
        .expect("model")
        .write(&path)
        .expect("write");
    path
}

/// Short phrases the tiny data sets are made of.
pub const WORDS: [&str; 6] = [
    "the cat",
    "a hat",
    "in the sun",
    "on the mat",
    "is big",
    "the end",
];

/// Write `rows` as one JSON list (an Alpaca data file) to `dir/name`.
pub fn write_rows(dir: &Path, name: &str, rows: &[serde_json::Value]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string(rows).expect("json")).expect("write");
    path
}

/// 24 Alpaca rows made of [`WORDS`], every third with an input, in `dir/data.json`.
pub fn tiny_data(dir: &Path) -> PathBuf {
    let rows: Vec<serde_json::Value> = (0..24)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Say {}", WORDS[i % 6]),
                "input": if i % 3 == 0 { WORDS[(i + 1) % 6] } else { "" },
                "output": format!("{} {}", WORDS[(i + 2) % 6], WORDS[(i + 3) % 6]),
            })
        })
        .collect();
    write_rows(dir, "data.json", &rows)
}

/// Assert the command succeeded (showing its exit code and output otherwise); its stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert the command failed with exit code 1 and `want` in its stderr; its stderr.
pub fn fails(out: &Output, want: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(want), "expected `{want}` in: {err}");
    err
}
