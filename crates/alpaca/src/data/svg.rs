//! A hand-written SVG picture of [`Stats`]: four bar-chart panels (instruction length, output
//! length, root verbs, nearest-neighbour similarity). No plotting dependency: bars are `<rect>`s
//! and labels `<text>`s, escaped.

use std::fmt::Write;

use super::stats::Stats;

/// Size of one chart panel.
pub const PANEL_W: f64 = 460.0;
pub const PANEL_H: f64 = 300.0;

/// Escape text for SVG/XML content.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The start of a `w` x `h` SVG document on white, with a bold title at `(tx, ty)`.
pub fn open_doc(out: &mut String, w: f64, h: f64, tx: f64, ty: f64, title: &str) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{tx}" y="{ty}" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
}

/// Where a panel's bars go (see [`panel_frame`]).
pub struct PlotArea {
    /// x of the plot's left edge.
    pub left: f64,
    /// y of the baseline the bars stand on.
    pub base: f64,
    pub w: f64,
    pub h: f64,
}

/// A bar-chart panel at `(x0, y0)`: its bold title and its baseline. Returns the plot area
/// the bars fill.
pub fn panel_frame(out: &mut String, x0: f64, y0: f64, title: &str) -> PlotArea {
    let (left, bottom, top) = (40.0, 60.0, 30.0);
    let plot_w = PANEL_W - left - 10.0;
    let plot_h = PANEL_H - bottom - top;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
        x0 + left,
        y0 + 18.0,
        escape(title)
    );
    let base = y0 + top + plot_h;
    let _ = writeln!(
        out,
        r##"<line x1="{:.1}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#333"/>"##,
        x0 + left,
        x0 + left + plot_w
    );
    PlotArea {
        left: x0 + left,
        base,
        w: plot_w,
        h: plot_h,
    }
}

/// One vertical bar chart at `(x0, y0)`; `labels` under the bars, counts above them.
pub fn bar_chart(
    out: &mut String,
    x0: f64,
    y0: f64,
    title: &str,
    labels: &[String],
    counts: &[u64],
) {
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let p = panel_frame(out, x0, y0, title);
    let n = counts.len().max(1) as f64;
    let bw = p.w / n;
    let base = p.base;
    for (i, (&c, label)) in counts.iter().zip(labels).enumerate() {
        let h = p.h * c as f64 / max;
        let x = p.left + i as f64 * bw;
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4878a8"><title>{}: {c}</title></rect>"##,
            x + 1.0,
            base - h,
            (bw - 2.0).max(1.0),
            escape(label)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{c}</text>"#,
            x + bw / 2.0,
            base - h - 3.0
        );
        let (lx, ly) = (x + bw / 2.0, base + 10.0);
        let _ = writeln!(
            out,
            r#"<text x="{lx:.1}" y="{ly:.1}" font-size="10" text-anchor="end" transform="rotate(-45 {lx:.1} {ly:.1})">{}</text>"#,
            escape(label)
        );
    }
}

/// The full stats picture as an SVG document.
pub fn stats_svg(s: &Stats, title: &str) -> String {
    let mut out = String::new();
    let (w, h) = (2.0 * PANEL_W, 2.0 * PANEL_H + 40.0);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let head = format!(
        "{title}: {} examples, {:.1}% with input, {} unique instructions",
        s.count,
        100.0 * s.input_share,
        s.unique_instructions
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="24" font-size="16">{}</text>"#,
        escape(&head)
    );
    let top = 40.0;
    bar_chart(
        &mut out,
        0.0,
        top,
        "instruction length (words)",
        &s.instruction_words.labels(),
        &s.instruction_words.counts,
    );
    bar_chart(
        &mut out,
        PANEL_W,
        top,
        "output length (words)",
        &s.output_words.labels(),
        &s.output_words.counts,
    );
    let (vl, vc): (Vec<String>, Vec<u64>) = s.root_verbs.iter().cloned().unzip();
    bar_chart(
        &mut out,
        0.0,
        top + PANEL_H,
        "root verbs (first word)",
        &vl,
        &vc,
    );
    bar_chart(
        &mut out,
        PANEL_W,
        top + PANEL_H,
        &format!(
            "max ROUGE-L to another instruction ({} sampled)",
            s.similarity_sampled
        ),
        &s.similarity.labels(),
        &s.similarity.counts,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::stats::{compute, StatsConfig};
    use crate::data::Example;

    #[test]
    fn svg_is_well_formed_enough() {
        let ex = vec![Example::new("Explain <tags> & \"quotes\".", "", "Sure.")];
        let svg = stats_svg(&compute(&ex, &StatsConfig::default()), "t&t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t&amp;t"));
        assert!(!svg.contains("<tags>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }
}
