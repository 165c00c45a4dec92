//! Gradients of the training graph against finite differences, for every parameter type
//! (embedding, norms, q/k/v/o/gate/up/down, final norm; LoRA A and B over a frozen f32 and a
//! frozen Q8_0 base, with dropout), and the training forward against the inference forward.

use std::path::PathBuf;

use alpaca::model::fresh::{random_llama_gguf, tiny_llama_config};
use alpaca::model::gguf::Gguf;
use alpaca::model::llama::Llama;
use alpaca::model::quant::GgmlType;
use alpaca::rng::Rng;
use alpaca::tokenizer::tiny_test_vocab;
use alpaca::train::batch::{Batch, Encoded};
use alpaca::train::model::{Method, TrainModel};

fn tiny_llama(ty: GgmlType, name: &str) -> Llama {
    let cfg = tiny_llama_config(tiny_test_vocab().tokens.len());
    let dir = std::env::temp_dir().join(format!("alpaca-train-grad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path: PathBuf = dir.join(name);
    random_llama_gguf(&cfg, &tiny_test_vocab(), ty, 7)
        .expect("model")
        .write(&path)
        .expect("write");
    let g = Gguf::open(&path).expect("open");
    Llama::from_gguf(&g).expect("load")
}

/// Two sequences (lengths 9 and 6) with loss on their last positions.
fn batch() -> Batch {
    let mut rng = Rng::new(3);
    let mut seq = |n: usize, from: usize| Encoded {
        ids: (0..n).map(|_| (rng.next_u64() % 280) as u32 + 3).collect(),
        loss_from: from,
    };
    let (a, b) = (seq(9, 4), seq(6, 1));
    Batch::from_encoded(&[&a, &b])
}

fn loss(m: &mut TrainModel, b: &Batch, seed: Option<u64>) -> f64 {
    let out = m.forward_backward(b, 0.0, seed, false).expect("forward");
    out.loss_sum / out.n_targets as f64
}

/// For each trainable tensor: the derivative of the loss along its gradient direction,
/// by central differences, equals the gradient's norm.
fn check_all(mut m: TrainModel, seed: Option<u64>, tol: f64) -> usize {
    let b = batch();
    m.zero_grad();
    let n = b.targets.len() as f32;
    m.forward_backward(&b, 1.0 / n, seed, true)
        .expect("backward");
    let grads: Vec<(String, Vec<f32>)> = m
        .params_mut()
        .iter()
        .map(|p| (p.name.clone(), p.g.clone()))
        .collect();
    for (k, (name, g)) in grads.iter().enumerate() {
        let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!(norm > 0.0, "{name}: zero gradient");
        // Step so that the loss moves by ~1e-2: far above f32 noise, small for curvature.
        let eps = 1e-2 / norm;
        let shift = |m: &mut TrainModel, s: f64| {
            let p = &mut m.params_mut()[k];
            for (w, gv) in p.w.iter_mut().zip(g) {
                *w += (s * eps * *gv as f64 / norm) as f32;
            }
        };
        shift(&mut m, 1.0);
        let up = loss(&mut m, &b, seed);
        shift(&mut m, -2.0);
        let down = loss(&mut m, &b, seed);
        shift(&mut m, 1.0);
        let numeric = (up - down) / (2.0 * eps);
        let rel = (numeric - norm).abs() / norm;
        assert!(
            rel < tol,
            "{name}: numeric {numeric:.6} vs analytic {norm:.6} (rel {rel:.2e})"
        );
    }
    grads.len()
}

#[test]
fn full_gradients_match_finite_differences() {
    let llama = tiny_llama(GgmlType::F32, "full.gguf");
    let m = TrainModel::from_llama(&llama, &Method::Full, 1).expect("model");
    // embedding + 2 layers x (2 norms + 7 linears) + final norm
    assert_eq!(check_all(m, None, 2e-2), 1 + 2 * 9 + 1);
}

fn lora_model(ty: GgmlType, name: &str) -> TrainModel {
    let llama = tiny_llama(ty, name);
    let method = Method::Lora {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: [true; 7],
    };
    let mut m = TrainModel::from_llama(&llama, &method, 1).expect("model");
    // B starts at zero (so A's gradient would be zero): give it values.
    let mut rng = Rng::new(11);
    for p in m.params_mut() {
        if p.name.contains("lora_B") {
            p.w.iter_mut()
                .for_each(|w| *w = (rng.next_f32() - 0.5) * 0.2);
        }
    }
    m
}

#[test]
fn lora_gradients_match_finite_differences_with_dropout() {
    let m = lora_model(GgmlType::F32, "lora.gguf");
    assert_eq!(check_all(m, Some(99), 2e-2), 2 * 7 * 2);
}

#[test]
fn qlora_gradients_match_finite_differences() {
    let m = lora_model(GgmlType::Q8_0, "qlora.gguf");
    assert_eq!(check_all(m, Some(5), 2e-2), 2 * 7 * 2);
}

#[test]
fn training_forward_matches_inference_forward() {
    let llama = tiny_llama(GgmlType::F32, "infer.gguf");
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 % 280) as u32 + 3).collect();
    let mut cache = llama.new_cache(64);
    let logits = llama.forward(&ids, &mut cache, ids.len()).expect("forward");
    let v = llama.cfg.vocab_size;
    let mut want = 0f64;
    for i in 0..ids.len() - 1 {
        let row = &logits[i * v..(i + 1) * v];
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let lse = max as f64
            + row
                .iter()
                .map(|&z| ((z - max) as f64).exp())
                .sum::<f64>()
                .ln();
        want += lse - row[ids[i + 1] as usize] as f64;
    }
    want /= (ids.len() - 1) as f64;
    let mut m = TrainModel::from_llama(&llama, &Method::Full, 1).expect("model");
    let e = Encoded {
        ids: ids.clone(),
        loss_from: 1,
    };
    let got = loss(&mut m, &Batch::from_encoded(&[&e]), None);
    assert!((got - want).abs() < 1e-4, "train {got} vs inference {want}");
}
