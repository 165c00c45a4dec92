//! The candle engine against our trainer on tiny random LLaMAs: the loss and every gradient
//! of one micro-batch (LoRA on all seven linears with dropout over an F32 and a Q8_0 base,
//! full fine-tuning with a tied and an untied head), and whole `train()` runs.
//!
//! The device is candle's CPU backend, or `ALPACA_CANDLE_TEST_DEVICE` (e.g. `cuda`, as
//! scripts/cuda_check.sh sets it on a GPU machine).

use std::path::{Path, PathBuf};

use super::*;
use crate::model::fresh::{random_llama_gguf, tiny_llama_config};
use crate::model::gguf::Gguf;
use crate::model::llama::Llama;
use crate::model::quant::GgmlType;
use crate::rng::Rng;
use crate::tokenizer::tiny_test_vocab;
use crate::train::batch::{Batch, Encoded, ValSize};
use crate::train::metrics::read_metrics;
use crate::train::model::Method;
use crate::train::{train, TrainConfig, Warmup};

/// Relative tolerance of losses and of each gradient tensor (by norm).
const TOL: f64 = 1e-4;

fn test_device() -> TrainDevice {
    match std::env::var("ALPACA_CANDLE_TEST_DEVICE") {
        Ok(s) => s
            .parse()
            .expect("ALPACA_CANDLE_TEST_DEVICE is a device name"),
        Err(_) => TrainDevice::CandleCpu,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alpaca-candle-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A tiny random LLaMA GGUF in `ty`; `untied` adds an F32 output head.
fn tiny_gguf(dir: &Path, ty: GgmlType, untied: bool) -> PathBuf {
    let tok = tiny_test_vocab();
    let cfg = tiny_llama_config(tok.tokens.len());
    let mut w = random_llama_gguf(&cfg, &tok, ty, 11).expect("model");
    if untied {
        let mut rng = Rng::new(5);
        let bytes: Vec<u8> = (0..cfg.vocab_size * cfg.dim)
            .flat_map(|_| ((rng.next_f32() - 0.5) * 0.2).to_le_bytes())
            .collect();
        let dims = vec![cfg.dim as u64, cfg.vocab_size as u64];
        w.add_tensor("output.weight", dims, GgmlType::F32, bytes);
    }
    let path = dir.join(format!("tiny-{ty:?}-{untied}.gguf"));
    w.write(&path).expect("write");
    path
}

fn tiny_llama(ty: GgmlType, untied: bool) -> Llama {
    let path = tiny_gguf(&temp_dir("grad"), ty, untied);
    let m = Llama::from_gguf(&Gguf::open(&path).expect("open")).expect("load");
    assert_eq!(m.tied_output, !untied);
    m
}

/// Three sequences (lengths 9, 6, 12) with loss on their later positions.
fn batch() -> Batch {
    let mut rng = Rng::new(3);
    let mut seq = |n: usize, from: usize| Encoded {
        ids: (0..n).map(|_| (rng.next_u64() % 280) as u32 + 3).collect(),
        loss_from: from,
    };
    let (a, b, c) = (seq(9, 4), seq(6, 1), seq(12, 7));
    Batch::from_encoded(&[&a, &b, &c])
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// One micro-batch on both engines: equal losses and gradients; returns how many tensors
/// were compared.
fn check(llama: &Llama, method: &Method) -> usize {
    let mut ours = TrainModel::from_llama(llama, method, 9).expect("train model");
    // LoRA B starts at zero, which would make every A gradient zero: start from random B.
    let mut rng = Rng::new(17);
    for p in ours.params_mut() {
        if p.name.contains("lora_B") {
            p.w.iter_mut()
                .for_each(|w| *w = (rng.next_f32() - 0.5) * 0.1);
        }
    }
    let mut theirs = ours.clone();
    let b = batch();
    let scale = 1.0 / b.targets.len() as f32;
    let seed = Some(1234);
    let mut engine = Engine::new(test_device()).expect("device");
    let lo = ours.forward_backward(&b, scale, seed, true).expect("ours");
    let lt = engine
        .forward_backward(&mut theirs, &b, scale, seed, true)
        .expect("candle");
    assert_eq!(lo.n_targets, lt.n_targets);
    assert!(
        rel(lt.loss_sum, lo.loss_sum) < TOL,
        "loss {} vs {}",
        lt.loss_sum,
        lo.loss_sum
    );
    // No-gradient passes (evaluation) agree too and leave the gradients alone.
    let eo = ours.forward_backward(&b, 0.0, None, false).expect("ours");
    let et = engine
        .forward_backward(&mut theirs, &b, 0.0, None, false)
        .expect("candle");
    assert!(rel(et.loss_sum, eo.loss_sum) < TOL);

    let go: Vec<(String, Vec<f32>)> = ours
        .params_mut()
        .iter()
        .map(|p| (p.name.clone(), p.g.clone()))
        .collect();
    let gt = theirs.params_mut();
    assert_eq!(go.len(), gt.len());
    for ((name, a), p) in go.iter().zip(&gt) {
        assert_eq!(name, &p.name);
        let norm = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let diff = a
            .iter()
            .zip(&p.g)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(norm > 0.0, "{name}: zero gradient");
        assert!(diff <= TOL * norm, "{name}: |diff| {diff} vs |g| {norm}");
    }
    go.len()
}

fn lora_all(dropout: f32) -> Method {
    Method::Lora {
        r: 4,
        alpha: 8.0,
        dropout,
        targets: [true; 7],
    }
}

#[test]
fn candle_lora_all_targets_with_dropout_matches_cpu() {
    // 2 layers x 7 linears x (A, B).
    assert_eq!(check(&tiny_llama(GgmlType::F32, false), &lora_all(0.1)), 28);
}

#[test]
fn candle_lora_over_q8_0_base_matches_cpu() {
    assert_eq!(
        check(&tiny_llama(GgmlType::Q8_0, false), &lora_all(0.0)),
        28
    );
}

#[test]
fn candle_lora_untied_head_matches_cpu() {
    let m = Method::Lora {
        r: 2,
        alpha: 4.0,
        dropout: 0.05,
        targets: [true, false, true, false, false, false, true],
    };
    // 2 layers x 3 linears x (A, B).
    assert_eq!(check(&tiny_llama(GgmlType::Q8_0, true), &m), 12);
}

#[test]
fn candle_full_tied_matches_cpu() {
    // embedding, 2 x (2 norms + 7 linears), final norm.
    assert_eq!(check(&tiny_llama(GgmlType::F32, false), &Method::Full), 20);
}

#[test]
fn candle_full_untied_matches_cpu() {
    assert_eq!(check(&tiny_llama(GgmlType::F32, true), &Method::Full), 21);
}

/// Whole runs (accumulation, clipping, AdamW, eval, checkpoint) on both engines.
fn run(dir: &Path, model: &Path, data: &Path, method: &Method, device: TrainDevice) -> PathBuf {
    let out = dir.join(format!("run-{device}-{}", matches!(method, Method::Full)));
    let _ = std::fs::remove_dir_all(&out);
    let mut cfg = TrainConfig::new(model.to_path_buf(), data.to_path_buf(), out.clone());
    cfg.method = method.clone();
    cfg.max_steps = Some(3);
    cfg.batch_size = 4;
    cfg.micro_batch_size = 2;
    cfg.val_size = ValSize::Count(4);
    cfg.warmup = Warmup::Steps(1);
    cfg.lr = 1e-3;
    cfg.eval_every = 2;
    cfg.device = device;
    train(&cfg, &mut |_| std::ops::ControlFlow::Continue(())).expect("train");
    out
}

fn check_runs(method: &Method) {
    let dir = temp_dir("run");
    let model = tiny_gguf(&dir, GgmlType::Q8_0, false);
    let words = ["the cat", "a hat", "in the sun", "on the mat", "is big"];
    let rows: Vec<serde_json::Value> = (0..16)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Say {}", words[i % 5]),
                "input": "",
                "output": format!("{} {}", words[(i + 2) % 5], words[(i + 3) % 5]),
            })
        })
        .collect();
    let data = dir.join("data.json");
    std::fs::write(&data, serde_json::to_string(&rows).expect("json")).expect("write");
    let a = read_metrics(&run(&dir, &model, &data, method, TrainDevice::Cpu).join("metrics.jsonl"))
        .expect("metrics");
    let b = read_metrics(&run(&dir, &model, &data, method, test_device()).join("metrics.jsonl"))
        .expect("metrics");
    assert_eq!(a.len(), 3);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(
            rel(y.loss, x.loss) < TOL,
            "step {}: {} vs {}",
            x.step,
            y.loss,
            x.loss
        );
        assert!(rel(y.grad_norm, x.grad_norm) < 1e-3, "step {}", x.step);
        match (x.eval_loss, y.eval_loss) {
            (Some(p), Some(q)) => assert!(rel(q, p) < TOL, "eval at step {}", x.step),
            (p, q) => assert_eq!(p.is_some(), q.is_some()),
        }
    }
    // The parameters moved on both, so later losses follow the updates.
    assert_ne!(a[0].loss, a[2].loss);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn candle_train_run_lora_matches_cpu() {
    check_runs(&lora_all(0.05));
}

#[test]
fn candle_train_run_full_matches_cpu() {
    check_runs(&Method::Full);
}
