//! The summary table printed at the end of a run (and written to `<out_dir>/summary.md`):
//! one Markdown row per stage with its status, wall time and key numbers.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::stages::StageOutcome;

/// The trained weights file of a run directory (adapter for LoRA, model for full).
pub fn adapter_file(dir: &Path) -> PathBuf {
    let a = dir.join("adapter_model.safetensors");
    if a.exists() {
        a
    } else {
        dir.join("model.safetensors")
    }
}

/// `1m 05s`, `42.0 s`.
pub fn fmt_secs(s: f64) -> String {
    if s >= 60.0 {
        format!(
            "{}m {:02}s",
            (s / 60.0).floor() as u64,
            (s % 60.0).floor() as u64
        )
    } else {
        format!("{s:.1} s")
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_f64() => format!("{x:.4}"),
        Some(x) => format!("{x}"),
        None => "-".into(),
    }
}

fn file_name(v: &Value) -> String {
    v.as_str()
        .and_then(|s| Path::new(s).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "-".into())
}

/// `unparseable 5, truncated 3` from a reason-to-count object.
pub fn reasons(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return String::new();
    };
    m.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn total(v: &Value) -> u64 {
    v.as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// The result column of one stage.
pub fn describe(o: &StageOutcome) -> String {
    let s = &o.summary;
    if o.off {
        return s["off"].as_str().unwrap_or("off").to_string();
    }
    match o.name.as_str() {
        "models" => format!(
            "student {} ({}); teacher {}",
            file_name(&s["student"]),
            mb(s["student_bytes"].as_u64().unwrap_or(0)),
            s["teacher"].as_str().unwrap_or("-")
        ),
        "generate" => format!(
            "kept {} of target {} from {} prompts ({} resumed); rejected {}{}",
            s["kept"],
            s["target"],
            s["prompts"],
            s["resumed"],
            total(&s["rejected"]),
            match reasons(&s["rejected"]) {
                r if r.is_empty() => String::new(),
                r => format!(" ({r})"),
            }
        ),
        "mix" => {
            let mut parts = vec![format!("generated {}", s["generated"])];
            if s["seeds"].as_u64().unwrap_or(0) > 0 {
                parts.push(format!("seeds {}", s["seeds"]));
            }
            for f in s["files"].as_array().into_iter().flatten() {
                let r = reasons(&f["rejected"]);
                parts.push(format!(
                    "{} {} of {} (filtered {}{}, near-duplicates {})",
                    file_name(&f["path"]),
                    f["taken"],
                    f["read"],
                    total(&f["rejected"]),
                    if r.is_empty() { r } else { format!(": {r}") },
                    f["duplicates"]
                ));
            }
            format!(
                "{}; train {}, held-out {}",
                parts.join(" + "),
                s["train"],
                s["held_out"]
            )
        }
        "train" => format!(
            "{} steps on {} examples; train loss {} -> {} (mean of the first and last 10 steps); {} tok/s",
            s["steps"],
            s["n_train"],
            num(if s["mean_first10_train_loss"].is_null() {
                &s["first_train_loss"]
            } else {
                &s["mean_first10_train_loss"]
            }),
            num(&s["mean_last10_train_loss"]),
            s["tokens_per_s"].as_f64().map_or("-".into(), |x| format!("{x:.0}"))
        ),
        "eval" => format!(
            "held-out response loss on {} examples ({} tokens): base {} -> tuned {}",
            s["examples"],
            s["tokens"],
            num(&s["before"]),
            num(&s["after"])
        ),
        "export" => format!(
            "{} ({}, {})",
            s["path"].as_str().unwrap_or("-"),
            s["quant"].as_str().unwrap_or("-"),
            mb(s["bytes"].as_u64().unwrap_or(0))
        ),
        "sample" => format!(
            "{} tokens at {} tok/s (greedy, exported model)",
            s["tokens"],
            s["tokens_per_s"].as_f64().map_or("-".into(), |x| format!("{x:.1}"))
        ),
        _ => s.to_string(),
    }
}

/// The whole table, Markdown.
pub fn table(outcomes: &[StageOutcome], total_wall: f64) -> String {
    let mut t = String::from("| stage | status | wall | result |\n|---|---|---|---|\n");
    for (i, o) in outcomes.iter().enumerate() {
        let status = if o.off {
            "off"
        } else if o.skipped {
            "done earlier"
        } else {
            "ran"
        };
        t.push_str(&format!(
            "| {} {} | {status} | {} | {} |\n",
            i + 1,
            o.name,
            fmt_secs(o.wall_s),
            describe(o).replace('|', "/")
        ));
    }
    t.push_str(&format!(
        "| total | | {} | this invocation |\n",
        fmt_secs(total_wall)
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_rows_carry_the_numbers() {
        let o = vec![
            StageOutcome {
                name: "generate".into(),
                skipped: false,
                off: false,
                wall_s: 75.0,
                summary: json!({"kept": 12, "target": 40, "prompts": 6, "resumed": 0,
                    "rejected": {"unparseable": 5, "truncated": 3}}),
            },
            StageOutcome {
                name: "eval".into(),
                skipped: true,
                off: false,
                wall_s: 3.0,
                summary: json!({"examples": 10, "tokens": 400, "before": 1.9, "after": 1.7}),
            },
        ];
        let t = table(&o, 80.0);
        assert!(t.contains("| 1 generate | ran | 1m 15s | kept 12 of target 40 from 6 prompts (0 resumed); rejected 8 (truncated 3, unparseable 5) |"), "{t}");
        assert!(t.contains("done earlier"), "{t}");
        assert!(t.contains("base 1.9000 -> tuned 1.7000"), "{t}");
    }
}
