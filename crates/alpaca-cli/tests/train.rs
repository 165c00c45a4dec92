//! `alpaca train` end to end on a tiny random model: exact resume after `kill -9`, outputs,
//! `alpaca run --lora`, and the bad-input errors.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use alpaca::model::quant::GgmlType;
use alpaca::train::checkpoint::read_safetensors;
use alpaca::train::metrics::read_metrics;
use common::{bin, fails, ok, temp_dir, tiny_data, tiny_model, train_cmd};

const ARGS: &[&str] = &[
    "--batch-size",
    "4",
    "--micro-batch-size",
    "2",
    "--val-size",
    "4",
    "--save-every",
    "1",
    "--eval-every",
    "5",
    "--warmup-steps",
    "3",
    "--lr",
    "1e-2",
    "--lora-targets",
    "q,k,v,o,gate,up,down",
    "-t",
    "1",
    "-q",
];

fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    train_cmd(model, data, out)
        .args(ARGS)
        .args(extra)
        .output()
        .expect("run alpaca")
}

fn checkpoint_step(path: &Path) -> Option<usize> {
    let st = read_safetensors(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(st.meta.get("alpaca.train_state")?).ok()?;
    v["step"].as_u64().map(|s| s as usize)
}

#[test]
fn resume_after_kill_is_exact() {
    let dir = temp_dir("resume");
    let model = tiny_model(&dir, GgmlType::Q8_0);
    let data = tiny_data(&dir);

    let straight = dir.join("straight");
    let out = train(&model, &data, &straight, &["--max-steps", "20"]);
    ok(&out);

    // Second run: stop after step 10's checkpoint, kill -9, resume.
    let run = dir.join("resumed");
    let mut child = train_cmd(&model, &data, &run)
        .args(ARGS)
        .args(["--max-steps", "20", "--pause-after", "10"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let ckpt = run.join("checkpoint.safetensors");
    let t0 = Instant::now();
    while checkpoint_step(&ckpt) != Some(10) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no checkpoint at step 10"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9"); // SIGKILL
    let _ = child.wait();
    let out = train(&model, &data, &run, &["--max-steps", "20", "--resume"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming at step 10"), "{err}");

    let a = read_metrics(&straight.join("metrics.jsonl")).expect("metrics");
    let b = read_metrics(&run.join("metrics.jsonl")).expect("metrics");
    assert_eq!(a.len(), 20);
    assert_eq!(b.len(), 20);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        assert_eq!(x.loss, y.loss, "loss at step {}", x.step);
        assert_eq!(x.lr, y.lr);
        assert_eq!(x.grad_norm, y.grad_norm);
        assert_eq!(x.eval_loss, y.eval_loss);
    }
    assert!(
        a[19].loss < a[0].loss,
        "loss falls: {} -> {}",
        a[0].loss,
        a[19].loss
    );
    let wa = read_safetensors(&straight.join("adapter_model.safetensors")).expect("adapter");
    let wb = read_safetensors(&run.join("adapter_model.safetensors")).expect("adapter");
    assert_eq!(wa.tensors.len(), 2 * 7 * 2);
    for (name, (_, va)) in &wa.tensors {
        let vb = &wb.tensors[name].1;
        let diff = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
    assert!(straight.join("adapter_config.json").is_file());
    assert!(straight.join("loss.svg").is_file());

    // The adapter loads for inference.
    let out = bin()
        .args(["run", "-m"])
        .arg(&model)
        .arg("--lora")
        .arg(&straight)
        .args([
            "-p",
            "Say the cat",
            "--template",
            "alpaca-lora",
            "--temp",
            "0",
            "-n",
            "8",
            "-t",
            "1",
        ])
        .output()
        .expect("run");
    ok(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn full_fine_tune_writes_a_model() {
    let dir = temp_dir("full");
    let model = tiny_model(&dir, GgmlType::F32);
    let data = tiny_data(&dir);
    let out = train(
        &model,
        &data,
        &dir.join("run"),
        &["--full", "--max-steps", "3"],
    );
    ok(&out);
    let st = read_safetensors(&dir.join("run/model.safetensors")).expect("model");
    assert!(st
        .tensors
        .contains_key("model.layers.1.mlp.down_proj.weight"));
    assert!(dir.join("run/config.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let dir = temp_dir("bad");
    let model = tiny_model(&dir, GgmlType::Q8_0);
    let check = |data: &str, extra: &[&str], want: &str| {
        let p = dir.join("bad.json");
        std::fs::write(&p, data).expect("write");
        fails(&train(&model, &p, &dir.join("run"), extra), want);
    };
    check("[]", &["--max-steps", "1"], "no examples");
    check(
        r#"[{"instruction": "a", "output": "b"}, {"instruction": "c"}]"#,
        &["--max-steps", "1"],
        "bad.json:2: missing field `output`",
    );
    check(
        r#"[{"instruction": "a", "output": "b"}]"#,
        &["--cutoff-len", "5", "--max-steps", "1"],
        "shorter than every prompt",
    );
    check(
        r#"[{"instruction": "a", "output": "b"}]"#,
        &["--device", "tpu", "--max-steps", "1"],
        "unknown device `tpu`",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--device cuda` in a build without the `cuda` feature: a clear message, exit code 1,
/// before any work (no run directory is made).
#[cfg(not(feature = "cuda"))]
#[test]
fn device_cuda_without_the_feature_fails_clearly() {
    let dir = temp_dir("nocuda");
    let model = tiny_model(&dir, GgmlType::Q8_0);
    let data = tiny_data(&dir);
    let out = dir.join("run");
    for dev in ["cuda", "cuda:1"] {
        let err = fails(
            &train(&model, &data, &out, &["--device", dev, "--max-steps", "1"]),
            "no CUDA support",
        );
        assert!(err.contains("--features cuda"), "{err}");
    }
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
