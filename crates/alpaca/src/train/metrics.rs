//! Training metrics: one JSON line per optimizer step (`metrics.jsonl`) and a loss-curve
//! SVG drawn by hand next to it (`loss.svg`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::svg::open_doc;
use crate::error::{Error, Result};

/// One step's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    /// Mean token loss of the step's global batch.
    pub loss: f64,
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens forwarded per second (prompt and target tokens).
    pub tokens_per_s: f64,
    /// Validation loss, on steps that evaluate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
}

/// Read a metrics file (missing file: no records).
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Data {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Rewrite the metrics file keeping records up to `step` (resume drops steps after the
/// checkpoint, which will be recomputed).
pub fn truncate_metrics(path: &Path, step: usize) -> Result<Vec<StepMetrics>> {
    let kept: Vec<StepMetrics> = read_metrics(path)?
        .into_iter()
        .filter(|m| m.step <= step)
        .collect();
    let mut text = String::new();
    for m in &kept {
        text.push_str(&serde_json::to_string(m).map_err(|e| Error::Internal(e.to_string()))?);
        text.push('\n');
    }
    crate::data::io::write_atomic(path, text.as_bytes())?;
    Ok(kept)
}

/// Append one record.
pub fn append_metrics(path: &Path, m: &StepMetrics) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let line = serde_json::to_string(m).map_err(|e| Error::Internal(e.to_string()))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

/// A line chart of training loss (blue) and validation loss (orange, dots) against step.
pub fn loss_svg(records: &[StepMetrics], title: &str) -> String {
    let (w, h) = (720.0, 400.0);
    let (left, right, top, bottom) = (60.0, 20.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max_step = records.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    let losses = records
        .iter()
        .flat_map(|r| std::iter::once(r.loss).chain(r.eval_loss))
        .filter(|v| v.is_finite());
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo.min(hi), hi.max(lo + 1e-6))
    } else {
        (0.0, 1.0)
    };
    let x = |s: usize| left + pw * s as f64 / max_step;
    let y = |v: f64| top + ph * (1.0 - (v - lo) / (hi - lo));
    let mut out = String::new();
    open_doc(&mut out, w, h, left, 24.0, title);
    let _ = writeln!(
        out,
        r##"<path d="M{left},{top} V{:.1} H{:.1}" fill="none" stroke="#333"/>"##,
        top + ph,
        left + pw
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{v:.3}</text>"#,
            left - 4.0,
            y(v) + 3.0
        );
        let s = (max_step * i as f64 / 4.0).round() as usize;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{s}</text>"#,
            x(s),
            top + ph + 15.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">step</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    let train: Vec<String> = records
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| format!("{:.1},{:.1}", x(r.step), y(r.loss)))
        .collect();
    if !train.is_empty() {
        let _ = writeln!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#4878a8" stroke-width="1.5"><title>train loss</title></polyline>"##,
            train.join(" ")
        );
    }
    let evals: Vec<(usize, f64)> = records
        .iter()
        .filter_map(|r| r.eval_loss.map(|e| (r.step, e)))
        .filter(|(_, e)| e.is_finite())
        .collect();
    if !evals.is_empty() {
        let pts: Vec<String> = evals
            .iter()
            .map(|&(s, e)| format!("{:.1},{:.1}", x(s), y(e)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#e07b39" stroke-width="1.5"/>"##,
            pts.join(" ")
        );
        for &(s, e) in &evals {
            let _ = writeln!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#e07b39"><title>step {s}: eval loss {e:.4}</title></circle>"##,
                x(s),
                y(e)
            );
        }
    }
    let lx = left + pw - 150.0;
    let _ = writeln!(
        out,
        r##"<text x="{lx:.1}" y="{:.1}" font-size="11" fill="#4878a8">— train loss</text>"##,
        top + 12.0
    );
    let _ = writeln!(
        out,
        r##"<text x="{lx:.1}" y="{:.1}" font-size="11" fill="#e07b39">● validation loss</text>"##,
        top + 28.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_draws_both_curves() {
        let recs: Vec<StepMetrics> = (1..=5)
            .map(|s| StepMetrics {
                step: s,
                loss: 3.0 / s as f64,
                lr: 1e-3,
                grad_norm: 1.0,
                tokens_per_s: 100.0,
                eval_loss: (s % 2 == 1).then_some(2.0),
            })
            .collect();
        let svg = loss_svg(&recs, "run <a>");
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("circle"));
        assert!(svg.contains("run &lt;a&gt;"));
    }
}
