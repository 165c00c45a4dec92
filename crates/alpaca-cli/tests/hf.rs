//! Hugging Face directories and PEFT adapters through the real binary, on tiny random
//! models: `alpaca run -m HF_DIR` generates what the source GGUF generates, `--lora
//! PEFT_DIR` applies the same adapter on either, `--dump-logits` writes what it says, and
//! broken directories fail with one clear error (exit code 1).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use alpaca::export::hf::write_hf_dir_as;
use alpaca::export::peft::{write_adapter_dir, write_peft_dir_for};
use alpaca::model::fresh::{random_llama_gguf, tiny_llama_config};
use alpaca::model::gguf::Gguf;
use alpaca::model::quant::GgmlType;
use alpaca::tokenizer::tiny_test_vocab;
use alpaca::train::checkpoint::StDtype;
use common::{bin, fails, ok, temp_dir, train_cmd, write_rows};

/// A tiny GGUF model of weight type `ty` and its HF export (weights as `dtype`).
fn tiny_pair(dir: &Path, ty: GgmlType, dtype: StDtype) -> (PathBuf, PathBuf) {
    let tok = tiny_test_vocab();
    let cfg = tiny_llama_config(tok.tokens.len());
    let gguf = dir.join("tiny.gguf");
    random_llama_gguf(&cfg, &tok, ty, 3)
        .expect("model")
        .write(&gguf)
        .expect("write");
    let hf = dir.join("hf");
    let g = Gguf::open(&gguf).expect("open");
    write_hf_dir_as(&g, &hf, false, dtype).expect("export");
    (gguf, hf)
}

/// `alpaca run` greedy on a fixed prompt, 24 new tokens unless `extra` gives `-n`.
fn run(model: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["run", "-m"])
        .arg(model)
        .args([
            "-p",
            "the cat is on the mat",
            "--template",
            "raw",
            "--temp",
            "0",
            "--ignore-eos",
            "--ids",
            "-t",
            "1",
        ])
        .args(if extra.contains(&"-n") {
            &[][..]
        } else {
            &["-n", "24"][..]
        })
        .args(extra)
        .output()
        .expect("run alpaca")
}

fn ids(out: &Output) -> Vec<u32> {
    serde_json::from_str(&ok(out)).expect("ids json")
}

#[test]
fn run_on_an_hf_dir_generates_what_the_gguf_generates() {
    for (ty, dtype) in [(GgmlType::F32, StDtype::F32), (GgmlType::F16, StDtype::F16)] {
        let dir = temp_dir(&format!("run-{}", ty.name()));
        let (gguf, hf) = tiny_pair(&dir, ty, dtype);
        let a = ids(&run(&gguf, &[]));
        let b = ids(&run(&hf, &[]));
        assert_eq!(a.len(), 24);
        assert_eq!(a, b, "greedy ids differ for {}", ty.name());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn dump_logits_of_a_quantized_model_matches_its_hf_export() {
    let dir = temp_dir("logits");
    let (gguf, hf) = tiny_pair(&dir, GgmlType::Q8_0, StDtype::F32);
    let dump = |model: &Path, name: &str| -> serde_json::Value {
        let path = dir.join(name);
        let out = run(
            model,
            &["-n", "0", "--dump-logits", path.to_str().expect("utf-8")],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty() || out.stdout == b"[]\n");
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dump")).expect("json")
    };
    let (a, b) = (dump(&gguf, "a.json"), dump(&hf, "b.json"));
    let n = a["ids"].as_array().expect("ids").len();
    assert!(n > 3);
    assert_eq!(a["ids"], b["ids"]);
    assert_eq!(a["n_vocab"], 283);
    let rows = |v: &serde_json::Value| -> Vec<Vec<f64>> {
        serde_json::from_value(v["logits"].clone()).expect("logits")
    };
    let (ra, rb) = (rows(&a), rows(&b));
    assert_eq!(ra.len(), n);
    assert!(ra.iter().all(|r| r.len() == 283));
    let max = ra.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let err = ra
        .iter()
        .flatten()
        .zip(rb.iter().flatten())
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(max > 0.0 && err <= 1e-4 * max, "err {err} of max {max}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PEFT adapter with random q/v factors for the tiny model.
fn peft_adapter(dir: &Path) -> PathBuf {
    let c = tiny_llama_config(tiny_test_vocab().tokens.len());
    let r = 4;
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut seed = 12345u32;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    for i in 0..c.n_layers {
        for (name, out) in [("q_proj", c.q_dim()), ("v_proj", c.kv_dim())] {
            let k = format!("base_model.model.model.layers.{i}.self_attn.{name}");
            owned.push((format!("{k}.lora_A.weight"), vec![r, c.dim], rnd(r * c.dim)));
            owned.push((format!("{k}.lora_B.weight"), vec![out, r], rnd(out * r)));
        }
    }
    let src = dir.join("adapter-src");
    let cfg = serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 8,
                                 "target_modules": ["v_proj", "q_proj"]});
    write_adapter_dir(&src, &owned, &cfg).expect("write");
    src
}

#[test]
fn peft_adapter_applies_the_same_on_gguf_and_hf_dir() {
    let dir = temp_dir("peft");
    let (gguf, hf) = tiny_pair(&dir, GgmlType::F32, StDtype::F32);
    let src = peft_adapter(&dir);
    let peft = dir.join("peft");
    let base = Gguf::open(&gguf).expect("open");
    let s = write_peft_dir_for(&src, &base, &peft, false).expect("peft export");
    assert_eq!((s.r, s.n_adapted), (4, 4));
    assert_eq!(s.targets, ["q_proj", "v_proj"]);
    let lora = ["--lora", peft.to_str().expect("utf-8")];
    let plain = ids(&run(&gguf, &[]));
    let a = ids(&run(&gguf, &lora));
    let b = ids(&run(&hf, &lora));
    assert_eq!(a, b, "the adapter acts differently on the HF dir");
    assert_ne!(a, plain, "the adapter changed nothing");
    // An adapter for another shape is refused against that base, naming the tensor.
    let n = tiny_test_vocab().tokens.len();
    let narrow = alpaca::model::llama::LlamaConfig {
        dim: 32,
        head_dim: 8,
        rope_dim: 8,
        ..tiny_llama_config(n)
    };
    let w = random_llama_gguf(&narrow, &tiny_test_vocab(), GgmlType::F32, 1).expect("model");
    let wrong = Gguf::from_bytes("narrow", &w.to_bytes()).expect("valid");
    let e = write_peft_dir_for(&src, &wrong, &dir.join("x"), false)
        .expect_err("shape mismatch")
        .to_string();
    assert!(e.contains("does not fit the base model"), "{e}");
    assert!(
        !dir.join("x").exists(),
        "nothing written on a refused export"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broken_hf_dirs_fail_with_one_clear_error() {
    let dir = temp_dir("broken");
    let (_, hf) = tiny_pair(&dir, GgmlType::F32, StDtype::F32);
    let case = |name: &str, edit: &dyn Fn(&Path), needle: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        for f in std::fs::read_dir(&hf).expect("ls") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, d.join(f.file_name().expect("name"))).expect("copy");
        }
        edit(&d);
        let err = fails(&run(&d, &[]), needle);
        assert!(!err.contains("panicked"), "{name}: {err}");
    };
    case(
        "no-tokenizer",
        &|d| std::fs::remove_file(d.join("tokenizer.json")).expect("rm"),
        "tokenizer.json",
    );
    case(
        "no-weights",
        &|d| std::fs::remove_file(d.join("model.safetensors")).expect("rm"),
        "model.safetensors",
    );
    case(
        "bad-config",
        &|d| std::fs::write(d.join("config.json"), "{\"architectures\": [").expect("w"),
        "config.json",
    );
    case(
        "wrong-layers",
        &|d| {
            let p = d.join("config.json");
            let mut c: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).expect("r")).expect("json");
            c["num_hidden_layers"] = serde_json::json!(3);
            std::fs::write(&p, c.to_string()).expect("w");
        },
        "model.layers.2",
    );
    case(
        "truncated-weights",
        &|d| {
            let p = d.join("model.safetensors");
            let b = std::fs::read(&p).expect("r");
            std::fs::write(&p, &b[..b.len() / 2]).expect("w");
        },
        "model.safetensors",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `alpaca train -m HF_DIR` trains on the converted model, and its adapter, exported as
/// PEFT, gives the same greedy output on the HF dir and on the source GGUF.
#[test]
fn train_on_an_hf_dir_and_apply_its_peft_export() {
    let dir = temp_dir("train");
    let (gguf, hf) = tiny_pair(&dir, GgmlType::F32, StDtype::F32);
    let rows: Vec<serde_json::Value> = (0..16)
        .map(|i| {
            serde_json::json!({"instruction": format!("Say the cat {i}"), "input": "",
                               "output": "on the mat in the sun"})
        })
        .collect();
    let data = write_rows(&dir, "data.json", &rows);
    let run_dir = dir.join("run");
    let out = train_cmd(&hf, &data, &run_dir)
        .args([
            "--max-steps",
            "4",
            "--batch-size",
            "4",
            "--micro-batch-size",
            "2",
        ])
        .args([
            "--val-size",
            "0",
            "--lr",
            "5e-2",
            "--lora-targets",
            "q,k,v,o,gate",
        ])
        .args(["-t", "1", "-q"])
        .output()
        .expect("train");
    ok(&out);
    let peft = dir.join("peft");
    let base = alpaca::model::hf::open_model(&hf).expect("open hf dir");
    let s = write_peft_dir_for(&run_dir, &base, &peft, false).expect("peft export");
    assert_eq!(s.n_adapted, 2 * 5);
    let lora = ["--lora", peft.to_str().expect("utf-8")];
    let a = ids(&run(&hf, &lora));
    assert_eq!(a, ids(&run(&gguf, &lora)));
    // Greedy ids of a random model barely move; its logits must.
    let logits = |extra: &[&str]| -> Vec<f64> {
        let path = dir.join("l.json");
        let mut args = vec!["-n", "0", "--dump-logits", path.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        ok(&run(&hf, &args));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dump")).expect("json");
        let rows: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone()).expect("rows");
        rows.concat()
    };
    let (tuned, plain) = (logits(&lora), logits(&[]));
    let moved = tuned
        .iter()
        .zip(&plain)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(moved > 1e-3, "training changed nothing ({moved})");
    let _ = std::fs::remove_dir_all(&dir);
}
