//! Summary statistics of an instruction data set (`alpaca data stats`).
//!
//! Counts, input share, word-length histograms, the most common root verbs and the distribution
//! of ROUGE-L similarity to the nearest other instruction.
//!
//! The "root verb" is an approximation: the first word of the instruction, lowercased, after
//! skipping a polite "please". The Alpaca paper parsed each instruction with a constituency
//! parser; for imperative instructions (the large majority) the first word is that verb, and for
//! questions it is the question word, which is reported as such.
//!
//! Similarity is computed exactly for a deterministic sample of up to `similarity_sample` items
//! against every other item, so it stays fast on large sets.

use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;

use super::rouge::{f_measure, for_each_token, Pattern, Vocab};
use super::Example;

/// A histogram over fixed bucket edges: `counts[i]` counts values in `[edges[i], edges[i+1])`,
/// the last bucket is open-ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(edges: Vec<f64>) -> Self {
        let n = edges.len();
        Histogram {
            edges,
            counts: vec![0; n],
        }
    }

    pub fn add(&mut self, v: f64) {
        let i = self.edges.partition_point(|&e| e <= v);
        if i > 0 {
            self.counts[i - 1] += 1;
        }
    }

    /// Bucket labels such as `0-9`, `10-19`, `200+`.
    pub fn labels(&self) -> Vec<String> {
        let fmt = |x: f64| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        };
        let ints = self.edges.iter().all(|e| e.fract() == 0.0);
        (0..self.edges.len())
            .map(|i| match self.edges.get(i + 1) {
                Some(&hi) if ints => format!("{}-{}", fmt(self.edges[i]), fmt(hi - 1.0)),
                Some(&hi) => format!("{}-{}", fmt(self.edges[i]), fmt(hi)),
                None => format!("{}+", fmt(self.edges[i])),
            })
            .collect()
    }
}

/// Everything `alpaca data stats` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub count: usize,
    pub unique_instructions: usize,
    pub with_input: usize,
    pub input_share: f64,
    pub empty_output: usize,
    pub mean_instruction_words: f64,
    pub mean_output_words: f64,
    pub instruction_words: Histogram,
    pub input_words: Histogram,
    pub output_words: Histogram,
    /// `(first word, count)`, most common first.
    pub root_verbs: Vec<(String, u64)>,
    /// Items whose nearest-neighbour similarity was measured.
    pub similarity_sampled: usize,
    /// Max ROUGE-L of each sampled item against all other items, in buckets of 0.1.
    pub similarity: Histogram,
    pub mean_max_similarity: f64,
}

/// Knobs for [`compute`].
#[derive(Clone, Debug)]
pub struct StatsConfig {
    /// How many root verbs to list.
    pub top_verbs: usize,
    /// How many items get an exact nearest-neighbour similarity (0 = skip).
    pub similarity_sample: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            top_verbs: 20,
            similarity_sample: 2000,
        }
    }
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// First word of an instruction, lowercased, skipping "please" (see the module docs).
pub fn root_verb(instruction: &str) -> Option<String> {
    let mut first = None;
    for_each_token(instruction, |t| {
        if first.is_none() && t != "please" {
            first = Some(t.to_string());
        }
    });
    first
}

fn length_edges() -> Vec<f64> {
    vec![
        0., 5., 10., 15., 20., 30., 40., 60., 80., 100., 150., 200., 300.,
    ]
}

/// Compute the statistics of a data set.
pub fn compute(examples: &[Example], cfg: &StatsConfig) -> Stats {
    let n = examples.len();
    let mut s = Stats {
        count: n,
        instruction_words: Histogram::new(length_edges()),
        input_words: Histogram::new(length_edges()),
        output_words: Histogram::new(length_edges()),
        similarity: Histogram::new((0..=10).map(|i| i as f64 / 10.0).collect()),
        ..Stats::default()
    };
    let mut verbs: HashMap<String, u64> = HashMap::new();
    let mut unique = std::collections::HashSet::new();
    let (mut iw, mut ow) = (0usize, 0usize);
    for ex in examples {
        unique.insert(ex.instruction.as_str());
        let (i, o) = (words(&ex.instruction), words(&ex.output));
        iw += i;
        ow += o;
        s.instruction_words.add(i as f64);
        s.output_words.add(o as f64);
        if !ex.input.trim().is_empty() {
            s.with_input += 1;
            s.input_words.add(words(&ex.input) as f64);
        }
        if ex.output.trim().is_empty() {
            s.empty_output += 1;
        }
        if let Some(v) = root_verb(&ex.instruction) {
            *verbs.entry(v).or_default() += 1;
        }
    }
    s.unique_instructions = unique.len();
    if n > 0 {
        s.input_share = s.with_input as f64 / n as f64;
        s.mean_instruction_words = iw as f64 / n as f64;
        s.mean_output_words = ow as f64 / n as f64;
    }
    let mut verbs: Vec<(String, u64)> = verbs.into_iter().collect();
    verbs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    verbs.truncate(cfg.top_verbs);
    s.root_verbs = verbs;

    // Nearest-neighbour similarity for an evenly spaced sample.
    if n > 1 && cfg.similarity_sample > 0 {
        let mut vocab = Vocab::new();
        let toks: Vec<Vec<u32>> = examples.iter().map(|e| vocab.ids(&e.instruction)).collect();
        let step = n.div_ceil(cfg.similarity_sample.min(n));
        let sample: Vec<usize> = (0..n).step_by(step).collect();
        let best: Vec<f64> = sample
            .par_iter()
            .map_init(Pattern::new, |p, &i| {
                p.set(&toks[i]);
                toks.iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, b)| f_measure(p.lcs(b), toks[i].len(), b.len()))
                    .fold(0.0f64, f64::max)
            })
            .collect();
        for &b in &best {
            s.similarity.add(b);
        }
        s.similarity_sampled = best.len();
        s.mean_max_similarity = best.iter().sum::<f64>() / best.len() as f64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_verbs() {
        let ex = vec![
            Example::new("Please write a haiku about rain.", "", "Rain taps softly."),
            Example::new("Write a limerick about cats.", "", "There once was a cat."),
            Example::new("What is the capital of France?", "", "Paris."),
            Example::new("Summarize the text.", "Long text here.", ""),
        ];
        let s = compute(&ex, &StatsConfig::default());
        assert_eq!(s.count, 4);
        assert_eq!(s.with_input, 1);
        assert_eq!(s.empty_output, 1);
        assert_eq!(s.root_verbs[0], ("write".to_string(), 2));
        assert_eq!(s.similarity_sampled, 4);
        assert_eq!(s.similarity.counts.iter().sum::<u64>(), 4);
        assert_eq!(s.instruction_words.counts[1], 3); // 5-9 words
    }

    #[test]
    fn histogram_labels() {
        let mut h = Histogram::new(vec![0., 10., 20.]);
        h.add(0.);
        h.add(25.);
        assert_eq!(h.counts, [1, 0, 1]);
        assert_eq!(h.labels(), ["0-9", "10-19", "20+"]);
    }
}
