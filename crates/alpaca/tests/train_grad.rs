//! Gradients of the training graph against finite differences, for every parameter type
//! (embedding, norms, q/k/v/o/gate/up/down, final norm; LoRA A and B over a frozen f32 and a
//! frozen Q8_0 base, with dropout), and the training forward against the inference forward,
//! for LLaMA and Gemma 3 (QK-norms, sandwich norms, GeGLU, sliding window, scaled embeddings,
//! soft-caps), plus the Gemma adapter round trip (train graph = inference with `--lora`).

use std::path::PathBuf;

use alpaca::model::fresh::{
    random_gemma3_gguf, random_llama_gguf, tiny_gemma3_config, tiny_llama_config,
};
use alpaca::model::gemma3::{Gemma3, Gemma3Config};
use alpaca::model::gguf::Gguf;
use alpaca::model::llama::Llama;
use alpaca::model::quant::GgmlType;
use alpaca::model::Model;
use alpaca::rng::Rng;
use alpaca::tokenizer::tiny_test_vocab;
use alpaca::train::batch::{Batch, Encoded};
use alpaca::train::model::{Method, TrainModel};

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alpaca-train-grad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn tiny_llama(ty: GgmlType, name: &str) -> Llama {
    let cfg = tiny_llama_config(tiny_test_vocab().tokens.len());
    let path = temp_path(name);
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

/// Finite-difference steps, as the loss change they aim for. Gemma's QK-norms and sandwich
/// norms make the loss strongly curved along small-gradient directions (a q_norm gradient
/// of 0.006 turns a 1e-2 loss step into a weight move of ~1.6), so its checks step smaller;
/// the errors shrink with the step (5% at 3e-3, under 2% at 1e-3 and 3e-4), as they do for
/// curvature and would not for a wrong gradient.
const LLAMA_STEP: f64 = 1e-2;
const GEMMA_STEP: f64 = 1e-3;

/// For each trainable tensor: the derivative of the loss along its gradient direction,
/// by central differences, equals the gradient's norm.
fn check_all(mut m: TrainModel, seed: Option<u64>, tol: f64, step: f64) -> usize {
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
        // Step so that the loss moves by ~`step`: far above f32 noise, small for curvature.
        let eps = step / norm;
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
    assert_eq!(check_all(m, None, 2e-2, LLAMA_STEP), 1 + 2 * 9 + 1);
}

fn lora_model(ty: GgmlType, name: &str) -> TrainModel {
    lora_model_on(ty, name, [true; 7])
}

fn lora_model_on(ty: GgmlType, name: &str, targets: [bool; 7]) -> TrainModel {
    let llama = tiny_llama(ty, name);
    let method = Method::Lora {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets,
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
    assert_eq!(check_all(m, Some(99), 2e-2, LLAMA_STEP), 2 * 7 * 2);
}

/// The default targets (q, v): the backward skips recomputing the frozen feed-forward's
/// inputs (nothing reads them), and q, v's adapters still get exact gradients.
#[test]
fn lora_on_q_v_only_gradients_match_finite_differences() {
    let mut targets = [false; 7];
    targets[0] = true; // q
    targets[2] = true; // v
    let m = lora_model_on(GgmlType::Q8_0, "lora_qv.gguf", targets);
    assert_eq!(check_all(m, Some(3), 2e-2, LLAMA_STEP), 2 * 2 * 2);
}

#[test]
fn qlora_gradients_match_finite_differences() {
    let m = lora_model(GgmlType::Q8_0, "qlora.gguf");
    assert_eq!(check_all(m, Some(5), 2e-2, LLAMA_STEP), 2 * 7 * 2);
}

/// Mean next-token loss of the inference forward over `ids`.
fn inference_loss(m: &Model, ids: &[u32]) -> f64 {
    let mut cache = m.new_cache(64);
    let logits = m.forward(ids, &mut cache, ids.len()).expect("forward");
    let v = m.vocab_size();
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
    want / (ids.len() - 1) as f64
}

/// The training forward's mean loss on `ids` (loss on every position).
fn train_loss(m: &mut TrainModel, ids: &[u32]) -> f64 {
    let e = Encoded {
        ids: ids.to_vec(),
        loss_from: 1,
    };
    loss(m, &Batch::from_encoded(&[&e]), None)
}

fn test_ids() -> Vec<u32> {
    (0..12).map(|i| (i * 37 % 280) as u32 + 3).collect()
}

#[test]
fn training_forward_matches_inference_forward() {
    let llama = tiny_llama(GgmlType::F32, "infer.gguf");
    let ids = test_ids();
    let mut m = TrainModel::from_llama(&llama, &Method::Full, 1).expect("model");
    let got = train_loss(&mut m, &ids);
    let want = inference_loss(&Model::Llama(llama), &ids);
    assert!((got - want).abs() < 1e-4, "train {got} vs inference {want}");
}

// ------------------------------------------------------------------------------------------
// Gemma 3
// ------------------------------------------------------------------------------------------

/// A tiny random Gemma 3 (6 layers, the last global, sliding window 4) whose norms (all six
/// kinds, stored as Gemma's `1 + w`) are random around 1, so every norm weight matters.
fn tiny_gemma3(ty: GgmlType, name: &str, edit: impl FnOnce(&mut Gemma3Config)) -> Gemma3 {
    let mut cfg = tiny_gemma3_config(tiny_test_vocab().tokens.len());
    edit(&mut cfg);
    let path = temp_path(name);
    random_gemma3_gguf(&cfg, &tiny_test_vocab(), ty, 7)
        .expect("model")
        .write(&path)
        .expect("write");
    let g = Gguf::open(&path).expect("open");
    let mut m = Gemma3::from_gguf(&g).expect("load");
    let mut rng = Rng::new(21);
    let mut jitter = |w: &mut Vec<f32>| {
        w.iter_mut()
            .for_each(|v| *v = 1.0 + (rng.next_f32() - 0.5) * 0.6)
    };
    for b in &mut m.blocks {
        for w in [
            &mut b.attn_norm,
            &mut b.q_norm,
            &mut b.k_norm,
            &mut b.post_attn_norm,
            &mut b.ffn_norm,
            &mut b.post_ffn_norm,
        ] {
            jitter(w);
        }
    }
    jitter(&mut m.output_norm);
    m
}

/// Soft-caps small enough to bend the tiny model's scores and logits.
fn with_caps(c: &mut Gemma3Config) {
    c.attn_softcap = Some(0.5);
    c.final_softcap = Some(2.0);
}

#[test]
fn gemma3_training_forward_matches_inference_forward() {
    let ids = test_ids(); // 12 tokens: past the sliding window of 4
    for (name, caps) in [("g-infer.gguf", false), ("g-infer-caps.gguf", true)] {
        let g = tiny_gemma3(GgmlType::F32, name, |c| {
            if caps {
                with_caps(c)
            }
        });
        let mut m = TrainModel::from_gemma3(&g, &Method::Full, 1).expect("model");
        let got = train_loss(&mut m, &ids);
        let want = inference_loss(&Model::Gemma3(g), &ids);
        assert!(
            (got - want).abs() < 1e-4,
            "caps {caps}: train {got} vs inference {want}"
        );
    }
}

#[test]
fn gemma3_full_gradients_match_finite_differences() {
    let g = tiny_gemma3(GgmlType::F32, "g-full.gguf", |_| {});
    let m = TrainModel::from_gemma3(&g, &Method::Full, 1).expect("model");
    // embedding + 6 layers x (6 norms + 7 linears) + final norm
    assert_eq!(check_all(m, None, 2e-2, GEMMA_STEP), 1 + 6 * 13 + 1);
}

#[test]
fn gemma3_softcap_gradients_match_finite_differences() {
    let g = tiny_gemma3(GgmlType::F32, "g-caps.gguf", with_caps);
    let m = TrainModel::from_gemma3(&g, &Method::Full, 1).expect("model");
    assert_eq!(check_all(m, None, 2e-2, GEMMA_STEP), 1 + 6 * 13 + 1);
}

fn gemma3_lora(ty: GgmlType, name: &str) -> (Gemma3, TrainModel) {
    let g = tiny_gemma3(ty, name, |_| {});
    let method = Method::Lora {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: [true; 7],
    };
    let mut m = TrainModel::from_gemma3(&g, &method, 1).expect("model");
    let mut rng = Rng::new(11);
    for p in m.params_mut() {
        if p.name.contains("lora_B") {
            p.w.iter_mut()
                .for_each(|w| *w = (rng.next_f32() - 0.5) * 0.2);
        }
    }
    (g, m)
}

#[test]
fn gemma3_lora_and_qlora_gradients_match_finite_differences() {
    let (_, m) = gemma3_lora(GgmlType::F32, "g-lora.gguf");
    assert_eq!(check_all(m, Some(99), 2e-2, GEMMA_STEP), 6 * 7 * 2);
    let (_, m) = gemma3_lora(GgmlType::Q8_0, "g-qlora.gguf");
    assert_eq!(check_all(m, Some(5), 2e-2, GEMMA_STEP), 6 * 7 * 2);
}

/// An adapter saved from the Gemma training graph and attached to the inference model (what
/// `alpaca run --lora` does) computes the training graph's loss.
#[test]
fn gemma3_adapter_round_trip_matches_training_forward() {
    let (g, mut m) = gemma3_lora(GgmlType::F32, "g-adapter.gguf");
    let ids = test_ids();
    let got = train_loss(&mut m, &ids);
    let method = Method::Lora {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: [true; 7],
    };
    let dir = temp_path("g-adapter");
    std::fs::create_dir_all(&dir).expect("dir");
    alpaca::train::export::save_adapter(&dir, &m, &method, "tiny").expect("save");
    let mut model = Model::Gemma3(g);
    let base = inference_loss(&model, &ids);
    let n = alpaca::train::export::load_adapter(&dir, &mut model).expect("load");
    assert_eq!(n, 6 * 7);
    let want = inference_loss(&model, &ids);
    assert!((got - want).abs() < 1e-4, "train {got} vs --lora {want}");
    assert!((base - want).abs() > 1e-3, "the adapter changes the model");
}

/// A full Gemma export holds Hugging Face names and layout: 1 + 6 x 13 + 1 tensors (tied: no
/// lm_head), norms as `w` (the GGUF's `1 + w` minus 1), q/k rows unpermuted, and a
/// `gemma3_text` config. With `ALPACA_GEMMA3_EXPORT_OUT=DIR` it also leaves `DIR/hf` and our
/// logits (`DIR/logits.json`) for `scripts/gemma3_export_check.py` (transformers).
#[test]
fn gemma3_full_export_has_hf_layout() {
    let g = tiny_gemma3(GgmlType::F32, "g-export.gguf", |_| {});
    let m = TrainModel::from_gemma3(&g, &Method::Full, 1).expect("model");
    let out = std::env::var_os("ALPACA_GEMMA3_EXPORT_OUT").map(PathBuf::from);
    let dir = match &out {
        Some(d) => d.join("hf"),
        None => temp_path("g-export-hf"),
    };
    std::fs::create_dir_all(&dir).expect("dir");
    alpaca::train::export::save_full(&dir, &m).expect("save");
    let st =
        alpaca::train::checkpoint::read_safetensors(&dir.join("model.safetensors")).expect("read");
    assert_eq!(st.tensors.len(), 1 + 6 * 13 + 1);
    assert!(!st.tensors.contains_key("lm_head.weight"));
    let (shape, qn) = &st.tensors["model.layers.2.self_attn.q_norm.weight"];
    assert_eq!(shape, &[32]);
    for (a, b) in qn.iter().zip(&g.blocks[2].q_norm) {
        assert!((a - (b - 1.0)).abs() < 1e-6);
    }
    let (_, pf) = &st.tensors["model.layers.5.post_feedforward_layernorm.weight"];
    assert!((pf[3] - (g.blocks[5].post_ffn_norm[3] - 1.0)).abs() < 1e-6);
    let (shape, q) = &st.tensors["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(shape, &[128, 64]);
    assert_eq!(q, &g.blocks[0].wq.weight.to_f32());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("cfg"))
            .expect("json");
    assert_eq!(cfg["model_type"], "gemma3_text");
    assert_eq!(cfg["layer_types"][5], "full_attention");
    assert_eq!(cfg["layer_types"][0], "sliding_attention");
    assert_eq!(cfg["query_pre_attn_scalar"], 32);
    if let Some(d) = out {
        let ids = test_ids();
        let model = Model::Gemma3(g);
        let mut cache = model.new_cache(64);
        let logits = model.forward(&ids, &mut cache, ids.len()).expect("forward");
        let rows: Vec<&[f32]> = logits.chunks_exact(model.vocab_size()).collect();
        let j = serde_json::json!({"ids": ids, "logits": rows});
        std::fs::write(d.join("logits.json"), j.to_string()).expect("write logits");
    }
}
