//! The evaluation report: Markdown tables and one SVG picture (wins/ties/losses of the
//! pairwise comparison, and held-out loss of each model), both hand-written.

use std::fmt::Write;

use super::bootstrap::Interval;
use super::loss::LossReport;
use super::pairwise::Tally;
use super::rouge::RougeReport;
use crate::data::svg::{bar_chart, escape, open_doc, panel_frame, PANEL_H, PANEL_W};

/// A named loss measurement (e.g. "base", "tuned").
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossEntry {
    pub label: String,
    #[serde(flatten)]
    pub report: LossReport,
}

/// Everything a report can show; each part is optional.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub title: String,
    pub tally: Option<Tally>,
    pub losses: Vec<LossEntry>,
    /// ROUGE-L per prediction file, by generator name.
    pub rouge: Vec<(String, RougeReport)>,
    /// File name of the picture, linked from the Markdown.
    pub svg_name: Option<String>,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The Markdown report.
pub fn markdown(r: &Report) -> String {
    let mut s = format!("# {}\n\n", r.title);
    if let Some(t) = &r.tally {
        let _ = writeln!(
            s,
            "Pairwise comparison of **{}** (B) against **{}** (A), judged by `{}`, each \
             instruction asked in both orders.\n",
            t.b, t.a, t.judge
        );
        let ci = t
            .interval
            .map(|c| format!("[{}, {}]", pct(c.lo), pct(c.hi)))
            .unwrap_or_else(|| "n/a".into());
        s.push_str("| instructions | B wins | ties | B loses | B win rate (ties = 1/2) | 95% bootstrap CI |\n");
        s.push_str("|---|---|---|---|---|---|\n");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {ci} |\n",
            t.n,
            t.wins,
            t.ties,
            t.losses,
            pct(t.win_rate)
        );
        let _ = writeln!(
            s,
            "- Orders disagree on {} of {} instructions ({}); on {} of them each order picked \
             a different response (pure position bias).",
            t.disagreements,
            t.n,
            pct(t.disagreements as f64 / t.n.max(1) as f64),
            t.flips
        );
        if t.decisive_verdicts > 0 {
            let _ = writeln!(
                s,
                "- The judge picked the response shown first in {} of its {} decisive verdicts ({}).",
                t.first_position_picks,
                t.decisive_verdicts,
                pct(t.first_position_picks as f64 / t.decisive_verdicts as f64)
            );
        }
        if let Some(d) = &t.debiased {
            let ci = d
                .interval
                .map(|c| format!(" (95% CI [{}, {}])", pct(c.lo), pct(c.hi)))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "- Position bias cancelled in logits (B's margin = (d_ba - d_ab)/2, where d is the \
                 judge's logit(a) - logit(b)): B wins {}, ties {}, loses {}; win rate {}{ci}.",
                d.wins,
                d.ties,
                d.losses,
                pct(d.win_rate)
            );
        }
        if let Some(p) = t.mean_p_b {
            let _ = writeln!(
                s,
                "- Mean judge probability that B is better, over both orders: {}.",
                pct(p)
            );
        }
        if t.identical > 0 {
            let _ = writeln!(
                s,
                "- {} instructions had identical responses (ties, judge not asked).",
                t.identical
            );
        }
        if let Some(c) = t.interval {
            let _ = writeln!(
                s,
                "- Interval: percentile bootstrap over instructions, {} resamples.",
                c.resamples
            );
        }
        s.push('\n');
    }
    if !r.losses.is_empty() {
        s.push_str("Held-out loss on response tokens:\n\n");
        s.push_str("| model | loss | perplexity | examples | tokens |\n|---|---|---|---|---|\n");
        for l in &r.losses {
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.3} | {} | {} |",
                l.label, l.report.loss, l.report.perplexity, l.report.n_examples, l.report.n_tokens
            );
        }
        s.push('\n');
    }
    if !r.rouge.is_empty() {
        s.push_str("ROUGE-L against the reference outputs:\n\n");
        s.push_str("| predictions | ROUGE-L | scored |\n|---|---|---|\n");
        for (name, g) in &r.rouge {
            let _ = writeln!(s, "| {name} | {:.4} | {} |", g.mean, g.n);
        }
        s.push('\n');
    }
    if let Some(svg) = &r.svg_name {
        let _ = writeln!(s, "![wins, ties, losses and loss]({svg})");
    }
    s
}

/// `", {name} lo-hi"` for an interval, empty without one.
fn ci(interval: Option<Interval>, name: &str) -> String {
    interval
        .map(|c| format!(", {name} {}-{}", pct(c.lo), pct(c.hi)))
        .unwrap_or_default()
}

/// The picture: a win/tie/loss bar chart and a held-out loss bar chart, side by side.
pub fn svg(r: &Report) -> String {
    let panels = r
        .tally
        .as_ref()
        .map_or(0, |t| 1 + t.debiased.is_some() as usize)
        + (!r.losses.is_empty()) as usize;
    let w = PANEL_W * panels.max(1) as f64;
    let h = PANEL_H + 40.0;
    let mut out = String::new();
    open_doc(&mut out, w, h, 10.0, 20.0, &r.title);
    let mut x0 = 0.0;
    if let Some(t) = &r.tally {
        let labels = [
            format!("{} wins", t.b),
            "ties".into(),
            format!("{} wins", t.a),
        ];
        let mut charts = vec![(
            format!(
                "{} vs {}: win rate {}{}",
                t.b,
                t.a,
                pct(t.win_rate),
                ci(t.interval, "95% CI")
            ),
            [t.wins, t.ties, t.losses],
        )];
        if let Some(d) = &t.debiased {
            charts.push((
                format!(
                    "position bias cancelled in logits: {}{}",
                    pct(d.win_rate),
                    ci(d.interval, "CI")
                ),
                [d.wins, d.ties, d.losses],
            ));
        }
        for (title, counts) in charts {
            bar_chart(
                &mut out,
                x0,
                30.0,
                &title,
                &labels,
                &counts.map(|c| c as u64),
            );
            x0 += PANEL_W;
        }
    }
    if !r.losses.is_empty() {
        loss_bars(&mut out, x0, 30.0, &r.losses);
    }
    out.push_str("</svg>\n");
    out
}

/// Vertical bars of held-out loss, one per entry, value on top.
fn loss_bars(out: &mut String, x0: f64, y0: f64, losses: &[LossEntry]) {
    let max = losses
        .iter()
        .map(|l| l.report.loss)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9);
    let p = panel_frame(out, x0, y0, "held-out loss (response tokens)");
    let bw = p.w / losses.len() as f64;
    let base = p.base;
    for (i, l) in losses.iter().enumerate() {
        let v = if l.report.loss.is_finite() {
            l.report.loss
        } else {
            0.0
        };
        let hgt = p.h * v / max;
        let x = p.left + i as f64 * bw;
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{hgt:.1}" fill="#e07b39"><title>{}: {v:.4}</title></rect>"##,
            x + bw * 0.2,
            base - hgt,
            bw * 0.6,
            escape(&l.label)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{v:.4}</text>"#,
            x + bw / 2.0,
            base - hgt - 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            x + bw / 2.0,
            base + 16.0,
            escape(&l.label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shows_counts_interval_and_losses() {
        let t = Tally {
            a: "base".into(),
            b: "tuned".into(),
            judge: "j".into(),
            n: 10,
            wins: 6,
            ties: 1,
            losses: 3,
            win_rate: 0.65,
            interval: Some(crate::eval::bootstrap::Interval {
                lo: 0.4,
                hi: 0.85,
                level: 0.95,
                resamples: 100,
            }),
            disagreements: 2,
            flips: 1,
            first_position_picks: 9,
            decisive_verdicts: 18,
            mean_p_b: None,
            identical: 0,
            debiased: None,
        };
        let l = |label: &str, loss: f64| LossEntry {
            label: label.into(),
            report: LossReport {
                loss,
                perplexity: loss.exp(),
                n_examples: 9,
                n_tokens: 900,
                n_skipped: 0,
            },
        };
        let r = Report {
            title: "t <x>".into(),
            tally: Some(t),
            losses: vec![l("base", 1.84), l("tuned", 1.72)],
            rouge: Vec::new(),
            svg_name: Some("report.svg".into()),
        };
        let md = markdown(&r);
        assert!(
            md.contains("| 10 | 6 | 1 | 3 | 65.0% | [40.0%, 85.0%] |"),
            "{md}"
        );
        assert!(md.contains("| tuned | 1.7200 |"), "{md}");
        let pic = svg(&r);
        assert!(
            pic.contains("tuned wins") && pic.contains("1.8400") && pic.contains("t &lt;x&gt;")
        );
        assert_eq!(pic.matches("<rect").count(), 1 + 3 + 2);
    }
}
