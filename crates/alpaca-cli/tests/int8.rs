//! `--int8-activations`: llama.cpp-style Q8_0 products (int8 activations, integer dots).

mod common;

use alpaca::model::quant::GgmlType;
use common::{bin, ok, temp_dir, tiny_model};

fn logits(path: &std::path::Path) -> Vec<Vec<f32>> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("logits file")).expect("json");
    serde_json::from_value(v["logits"].clone()).expect("logits rows")
}

#[test]
fn run_with_int8_activations_on_a_tiny_q8_0_model() {
    let d = temp_dir("int8");
    let m = tiny_model(&d, GgmlType::Q8_0);
    let dump = |name: &str, flag: Option<&str>| {
        let p = d.join(name);
        let mut c = bin();
        c.args(["run", "-m"]).arg(&m).args([
            "-p",
            "the cat is big",
            "--template",
            "raw",
            "--temp",
            "0",
            "-n",
            "0",
            "-t",
            "1",
            "--dump-logits",
        ]);
        c.arg(&p);
        if let Some(f) = flag {
            c.arg(f);
        }
        ok(&c.output().expect("run"));
        logits(&p)
    };
    let f32 = dump("f32.json", None);
    let int8 = dump("int8.json", Some("--int8-activations"));
    assert_eq!(f32.len(), int8.len());
    assert!(!f32.is_empty());
    let (mut max_diff, mut max_abs) = (0f32, 0f32);
    for (a, b) in f32.iter().zip(&int8) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!(y.is_finite());
            max_diff = max_diff.max((x - y).abs());
            max_abs = max_abs.max(x.abs());
        }
    }
    // Quantized activations change the logits, but only a little.
    assert!(max_diff > 0.0, "the flag changed nothing");
    assert!(
        max_diff < 0.05 * max_abs.max(1.0),
        "{max_diff} vs scale {max_abs}"
    );

    // Greedy generation through the flag (prompt GEMM and decode steps).
    let out = ok(&bin()
        .args(["run", "-m"])
        .arg(&m)
        .args([
            "-p",
            "the cat",
            "--template",
            "raw",
            "--temp",
            "0",
            "-n",
            "8",
            "--ignore-eos",
            "--ids",
            "-t",
            "1",
            "--int8-activations",
        ])
        .output()
        .expect("run"));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("ids json");
    let ids = v
        .as_array()
        .or_else(|| v["ids"].as_array())
        .or_else(|| v["output_ids"].as_array())
        .expect("ids");
    assert_eq!(ids.len(), 8, "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn int8_activations_is_in_the_help_of_every_inference_command() {
    for cmd in ["run", "chat", "perplexity", "bench", "serve"] {
        let help = ok(&bin().args([cmd, "--help"]).output().expect("help"));
        assert!(help.contains("--int8-activations"), "{cmd}: {help}");
    }
}
