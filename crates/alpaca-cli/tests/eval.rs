//! `alpaca eval` end to end on tiny random models: held-out loss equal to training's own
//! validation loss, predictions that resume after `kill -9`, the judge and bootstrap on a
//! case with a known answer, ROUGE-L, and clear errors on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alpaca::model::quant::GgmlType;
use common::{bin, fails, ok, temp_dir, tiny_data, train_cmd, WORDS};

fn tiny_model(dir: &Path) -> PathBuf {
    common::tiny_model(dir, GgmlType::F32)
}

/// Self-Instruct format, like user_oriented_instructions.jsonl.
fn tiny_instructions(dir: &Path, n: usize) -> PathBuf {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("task_{i}"),
                "motivation_app": "test",
                "instruction": format!("Say {}", WORDS[i % 6]),
                "instances": [{"input": if i % 2 == 0 { "" } else { WORDS[(i + 1) % 6] },
                               "output": WORDS[(i + 2) % 6]}],
            })
            .to_string()
        })
        .collect();
    let path = dir.join("instructions.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write");
    path
}

fn json_f64(path: &Path, key: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn held_out_loss_equals_the_training_validation_loss() {
    let dir = temp_dir("loss");
    let model = tiny_model(&dir);
    let data = tiny_data(&dir);
    let run = dir.join("run");
    ok(&train_cmd(&model, &data, &run)
        .args([
            "--max-steps",
            "6",
            "--batch-size",
            "2",
            "--micro-batch-size",
            "2",
        ])
        .args([
            "--val-size",
            "5",
            "--seed",
            "7",
            "--warmup-steps",
            "1",
            "--lr",
            "1e-2",
        ])
        .args(["-t", "1", "-q"])
        .output()
        .expect("train"));
    let summary = run.join("train_summary.json");
    let loss = |extra: &[&str], json: &str| -> f64 {
        let path = dir.join(json);
        ok(&bin()
            .args(["eval", "loss", "-m"])
            .arg(&model)
            .args(extra)
            .arg("--json")
            .arg(&path)
            .args(["-t", "1"])
            .output()
            .expect("eval loss"));
        assert_eq!(json_f64(&path, "n_examples"), 5.0);
        json_f64(&path, "loss")
    };
    let run_s = run.to_str().expect("utf-8 path");
    let data_s = data.to_str().expect("utf-8 path");
    // Before: the base model on the run's held-out split (read from the run directory).
    let before = loss(&["--split-from", run_s], "base.json");
    let want = json_f64(&summary, "initial_eval_loss");
    assert!((before - want).abs() < 1e-4, "{before} vs {want}");
    // The same split from flags, as `alpaca train` was given them.
    let flags = loss(
        &["--data", data_s, "--val-size", "5", "--seed", "7"],
        "f.json",
    );
    assert_eq!(flags, before);
    // After: the adapter; the split comes from --lora's run directory.
    let after = loss(&["--lora", run_s], "tuned.json");
    let want = json_f64(&summary, "final_eval_loss");
    assert!((after - want).abs() < 1e-4, "{after} vs {want}");
    assert!(after < before, "{after} < {before}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn predict(model: &Path, set: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["eval", "predict", "-m"])
        .arg(model)
        .arg("--instructions")
        .arg(set)
        .arg("-o")
        .arg(out)
        .args(["-n", "6", "-t", "1"])
        .args(extra);
    c
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn predictions_resume_after_kill() {
    let dir = temp_dir("predict");
    let model = tiny_model(&dir);
    let set = tiny_instructions(&dir, 12);
    let straight = dir.join("straight.jsonl");
    let out = ok(&predict(&model, &set, &straight, &["--parallel", "1"])
        .output()
        .expect("run"));
    assert!(out.contains("12 answers (12 new, 0 resumed)"), "{out}");
    let a = lines(&straight);
    assert_eq!(a.len(), 12);
    assert_eq!(a[3]["id"], "task_3");
    assert_eq!(a[3]["input"], WORDS[4]);
    assert_eq!(a[3]["reference"], WORDS[5]);
    assert_eq!(a[3]["settings"]["max_new_tokens"], 6);
    assert!(a[3]["response"].is_string());

    // Kill -9 after 5 answers, then rerun the same command.
    let resumed = dir.join("resumed.jsonl");
    let mut child = predict(
        &model,
        &set,
        &resumed,
        &["--parallel", "1", "--pause-after", "5"],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("spawn");
    let t0 = Instant::now();
    while std::fs::read_to_string(&resumed).map_or(0, |s| s.lines().count()) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no 5 answers");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    let out = ok(&predict(&model, &set, &resumed, &[])
        .output()
        .expect("rerun"));
    assert!(out.contains("12 answers (7 new, 5 resumed)"), "{out}");
    assert_eq!(lines(&resumed), a, "same answers, in the set's order");

    // Other settings may not continue the file, and it stays as it was.
    let before = std::fs::read(&resumed).expect("read");
    fails(
        &predict(
            &model,
            &set,
            &resumed,
            &["--parallel", "1", "--temp", "0.5"],
        )
        .output()
        .expect("mismatch"),
        "resumed.jsonl:1: written with other settings (temperature: 0.0 there, 0.5 now)",
    );
    assert_eq!(std::fs::read(&resumed).expect("read"), before);
    // Batched decoding answers every item too.
    let batched = dir.join("batched.jsonl");
    ok(&predict(&model, &set, &batched, &["--parallel", "4"])
        .output()
        .expect("batched"));
    assert_eq!(lines(&batched).len(), 12);
    let _ = std::fs::remove_dir_all(&dir);
}

fn write_preds(path: &Path, who: &str, lens: &[usize]) {
    let text: String = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            serde_json::json!({
                "id": i.to_string(), "instruction": format!("Task {i}"), "input": "",
                "response": who.repeat(n), "reference": "a".repeat(n), "generator": who,
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, text).expect("write");
}

#[test]
fn longer_answer_judge_gives_the_computed_win_rate() {
    let dir = temp_dir("judge");
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    // B longer in 6, A longer in 3, same length in 1: win rate (6 + 1/2) / 10 = 65%.
    write_preds(&a, "a", &[3, 5, 2, 9, 4, 4, 1, 8, 7, 5]);
    write_preds(&b, "b", &[6, 9, 4, 2, 8, 9, 3, 5, 3, 5]);
    let out_dir = dir.join("report");
    let loss = dir.join("loss.json");
    std::fs::write(
        &loss,
        r#"{"label": "tuned", "loss": 1.5, "perplexity": 4.48, "n_examples": 3, "n_tokens": 30, "n_skipped": 0}"#,
    )
    .expect("write");
    let out = ok(&bin()
        .args(["eval", "judge"])
        .arg(&a)
        .arg(&b)
        .args(["--judge", "length", "-o"])
        .arg(&out_dir)
        .arg("--loss")
        .arg(&loss)
        .output()
        .expect("judge"));
    assert!(
        out.contains("b vs a: 6 wins, 1 ties, 3 losses of 10; win rate 65.0%"),
        "{out}"
    );
    let s: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("summary.json")).expect("summary"),
    )
    .expect("json");
    assert_eq!(s["tally"]["win_rate"], 0.65);
    assert_eq!(s["tally"]["disagreements"], 0);
    let (lo, hi) = (
        s["tally"]["interval"]["lo"].as_f64().expect("lo"),
        s["tally"]["interval"]["hi"].as_f64().expect("hi"),
    );
    assert!(lo < 0.65 && 0.65 < hi, "{lo} {hi}");
    assert_eq!(lines(&out_dir.join("judgments.jsonl")).len(), 20);
    let md = std::fs::read_to_string(out_dir.join("report.md")).expect("md");
    assert!(md.contains("| 10 | 6 | 1 | 3 | 65.0% |"), "{md}");
    assert!(md.contains("| tuned | 1.5000 |"), "{md}");
    let svg = std::fs::read_to_string(out_dir.join("report.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("b wins"));

    // ROUGE-L against the references the files carry ("a"*n vs "b"*n: one token each).
    let out = ok(&bin()
        .args(["eval", "rouge"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("rouge"));
    assert!(out.contains("a.jsonl: ROUGE-L 1.0000 over 10"), "{out}");
    assert!(out.contains("b.jsonl: ROUGE-L 0.0000 over 10"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let dir = temp_dir("bad");
    let model = tiny_model(&dir);
    let set = dir.join("u.jsonl");
    std::fs::write(
        &set,
        "{\"id\": \"t0\", \"instruction\": \"x\", \"instances\": [{\"input\": \"\"}]}\n\
         {\"id\": \"t1\", \"instruction\": \"y\", \"instances\": [{\"input\": 3}]}\n",
    )
    .expect("write");
    let out = dir.join("p.jsonl");
    fails(
        &predict(&model, &set, &out, &[]).output().expect("run"),
        "u.jsonl:2: field `instances[0].input` must be a string",
    );
    assert!(!out.exists(), "no output on bad input");

    // A file that is not a prediction file is refused and left intact.
    let data = tiny_data(&dir);
    let good = tiny_instructions(&dir, 2);
    let before = std::fs::read(&data).expect("read");
    fails(
        &predict(&model, &good, &data, &[]).output().expect("run"),
        "data.json:1: not a record of this file",
    );
    assert_eq!(std::fs::read(&data).expect("read"), before);

    let a = dir.join("a.jsonl");
    write_preds(&a, "a", &[1, 2]);
    let b = dir.join("b.jsonl");
    std::fs::write(
        &b,
        "{\"id\": \"0\", \"instruction\": \"Task 0\", \"input\": \"\"}\n",
    )
    .expect("write");
    let judge = |b: &Path, j: &str| {
        bin()
            .args(["eval", "judge"])
            .arg(&a)
            .arg(b)
            .args(["--judge", j, "-o"])
            .arg(dir.join("r"))
            .output()
            .expect("judge")
    };
    fails(&judge(&b, "length"), "b.jsonl:1: missing field `response`");
    std::fs::write(
        &b,
        "{\"id\": \"0\", \"instruction\": \"Task 0\", \"response\": \"x\"}\n{oops\n",
    )
    .expect("write");
    fails(&judge(&b, "length"), "b.jsonl:2: invalid JSON");
    write_preds(&b, "b", &[1, 2]);
    fails(&judge(&b, "oracle"), "unknown judge `oracle`");
    fails(
        &bin()
            .args(["eval", "loss", "-m"])
            .arg(&model)
            .output()
            .expect("loss"),
        "give --data FILE",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
