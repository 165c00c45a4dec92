//! `alpaca train` on a tiny random Gemma 3 through the real binary: QLoRA with the Alpaca
//! template lowers the training loss and writes a PEFT adapter, which `alpaca run --lora`
//! applies (it changes the greedy output); `--full` writes a `Gemma3ForCausalLM` export.

mod common;

use std::path::{Path, PathBuf};

use alpaca::model::fresh::{random_gemma3_gguf, tiny_gemma3_config};
use alpaca::model::quant::GgmlType;
use alpaca::tokenizer::tiny_test_vocab;
use alpaca::train::checkpoint::read_safetensors;
use alpaca::train::metrics::read_metrics;
use common::{bin, ok, temp_dir, train_cmd, write_rows, WORDS};

/// A tiny Gemma 3 (Q8_0: the QLoRA base stays quantized) and 16 Alpaca rows.
fn fixtures(dir: &Path) -> (PathBuf, PathBuf) {
    let tok = tiny_test_vocab();
    let cfg = tiny_gemma3_config(tok.tokens.len());
    let model = dir.join("tiny-gemma3.gguf");
    random_gemma3_gguf(&cfg, &tok, GgmlType::Q8_0, 3)
        .expect("model")
        .write(&model)
        .expect("write");
    // The first four of WORDS.
    let rows: Vec<serde_json::Value> = (0..16)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Say {}", WORDS[i % 4]),
                "input": "",
                "output": format!("{} is {}", WORDS[(i + 1) % 4], WORDS[(i + 2) % 4]),
            })
        })
        .collect();
    (model, write_rows(dir, "data.json", &rows))
}

fn train(model: &Path, data: &Path, out: &Path, method: &[&str], steps: &str) {
    let mut cmd = train_cmd(model, data, out);
    cmd.args(method);
    cmd.args([
        "--max-steps",
        steps,
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--val-size",
        "4",
        "--template",
        "alpaca",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "0",
        "-t",
        "1",
        "-q",
    ]);
    ok(&cmd.output().expect("run train"));
}

fn greedy(model: &Path, lora: Option<&Path>) -> String {
    let mut cmd = bin();
    cmd.arg("run").arg("-m").arg(model);
    if let Some(l) = lora {
        cmd.arg("--lora").arg(l);
    }
    cmd.args([
        "--template",
        "alpaca",
        "--temp",
        "0",
        "-n",
        "8",
        "--ignore-eos",
        "--ids",
        "-t",
        "1",
        "-p",
        "Say the cat",
    ]);
    ok(&cmd.output().expect("run"))
}

#[test]
fn gemma3_qlora_trains_and_run_lora_applies_it() {
    let dir = temp_dir("qlora");
    let (model, data) = fixtures(&dir);
    let run = dir.join("run");
    train(
        &model,
        &data,
        &run,
        &["--lora", "--lora-targets", "q,k,v,o,gate,up,down"],
        "12",
    );
    let m = read_metrics(&run.join("metrics.jsonl")).expect("metrics");
    assert_eq!(m.len(), 12);
    let first = m[..3].iter().map(|r| r.loss).sum::<f64>();
    let last = m[9..].iter().map(|r| r.loss).sum::<f64>();
    assert!(last < first, "loss did not fall: {first} -> {last}");
    let st = read_safetensors(&run.join("adapter_model.safetensors")).expect("adapter");
    assert_eq!(st.tensors.len(), 6 * 7 * 2);
    assert!(st
        .tensors
        .contains_key("base_model.model.model.layers.5.mlp.down_proj.lora_B.weight"));
    let base = greedy(&model, None);
    let tuned = greedy(&model, Some(&run));
    assert_ne!(base, tuned, "the adapter changes the greedy output");
}

#[test]
fn gemma3_full_fine_tune_writes_a_gemma3_model() {
    let dir = temp_dir("full");
    let (model, data) = fixtures(&dir);
    let run = dir.join("run");
    train(&model, &data, &run, &["--full"], "2");
    let st = read_safetensors(&run.join("model.safetensors")).expect("model");
    assert_eq!(st.tensors.len(), 1 + 6 * 13 + 1);
    assert!(st
        .tensors
        .contains_key("model.layers.0.pre_feedforward_layernorm.weight"));
    let cfg = std::fs::read_to_string(run.join("config.json")).expect("config");
    assert!(cfg.contains("Gemma3ForCausalLM"), "{cfg}");
}
