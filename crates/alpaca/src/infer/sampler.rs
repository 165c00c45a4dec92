//! Choosing the next token from logits: greedy, or temperature sampling filtered by top-k,
//! top-p (nucleus) and min-p, after repetition, frequency and presence penalties.
//!
//! Order of operations (as llama.cpp's default chain): penalties, then greedy when
//! temperature is 0, else top-k, softmax at temperature, top-p, min-p, and a draw. The RNG is
//! our own SplitMix64 so a seed gives the same tokens on every platform and version.

use crate::error::{Error, Result};
pub use crate::rng::Rng;

/// Sampling settings; defaults give greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy (deterministic). Typical 0.7.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1.0 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely; 0 = off.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1.0 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// OpenAI's `frequency_penalty`: subtract this times a token's count in the window; 0 = off.
    pub frequency_penalty: f32,
    /// OpenAI's `presence_penalty`: subtract this once from every token in the window; 0 = off.
    pub presence_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p must be in [0, 1]");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat penalty must be > 0");
        }
        for (name, v) in [
            ("frequency penalty", self.frequency_penalty),
            ("presence penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be between -2 and 2, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// A sampler with its own RNG state.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub cfg: SamplerConfig,
    rng: Rng,
    /// Scratch: candidate (id, logit/probability) pairs, reused across tokens.
    cand: Vec<(u32, f32)>,
    /// Scratch: the penalty window, sorted.
    seen: Vec<u32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Sampler {
            cfg,
            rng,
            cand: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Pick the next token. `history` is the context so far (for the repetition penalty).
    /// `logits` may be modified.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.cfg;
        if c.repeat_penalty != 1.0 || c.frequency_penalty != 0.0 || c.presence_penalty != 0.0 {
            // Distinct tokens of the window with their counts (llama.cpp's penalties sampler:
            // the last `repeat_last_n` tokens of the context, prompt included).
            let start = history.len().saturating_sub(c.repeat_last_n);
            self.seen.clear();
            self.seen.extend_from_slice(&history[start..]);
            self.seen.sort_unstable();
            let mut i = 0;
            while i < self.seen.len() {
                let t = self.seen[i];
                let n = self.seen[i..].iter().take_while(|&&x| x == t).count();
                i += n;
                if let Some(l) = logits.get_mut(t as usize) {
                    if c.repeat_penalty != 1.0 {
                        *l = if *l > 0.0 {
                            *l / c.repeat_penalty
                        } else {
                            *l * c.repeat_penalty
                        };
                    }
                    *l -= n as f32 * c.frequency_penalty + c.presence_penalty;
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(logits);
        }
        if c.top_k > 0 && c.top_k < logits.len() {
            top_k_into(logits, c.top_k, &mut self.cand);
        } else {
            self.cand.clear();
            self.cand
                .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        }
        self.cand.sort_unstable_by(by_logit);
        // Softmax at temperature over the survivors (sorted, most likely first).
        let max = self.cand[0].1;
        let mut sum = 0f32;
        for e in self.cand.iter_mut() {
            e.1 = ((e.1 - max) / c.temperature).exp();
            sum += e.1;
        }
        for e in self.cand.iter_mut() {
            e.1 /= sum;
        }
        if c.top_p < 1.0 {
            let mut cum = 0f32;
            let mut keep = self.cand.len();
            for (i, e) in self.cand.iter().enumerate() {
                cum += e.1;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        if c.min_p > 0.0 {
            let floor = self.cand[0].1 * c.min_p;
            let keep = self.cand.iter().take_while(|e| e.1 >= floor).count().max(1);
            self.cand.truncate(keep);
        }
        let total: f32 = self.cand.iter().map(|e| e.1).sum();
        let mut r = self.rng.next_f32() * total;
        for e in &self.cand {
            r -= e.1;
            if r <= 0.0 {
                return e.0;
            }
        }
        self.cand[self.cand.len() - 1].0
    }
}

/// Most likely first; equal logits by index (a total order, NaN included).
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` (< `logits.len()`) best `(index, logit)` pairs under [`by_logit`], in no order,
/// into `out`: one pass that keeps at most `2k` candidates and drops every logit not above
/// the running k-th best (a later index never wins a tie, so the set is exactly that of a
/// selection over all of them), instead of copying and selecting over the whole vocabulary
/// for every sampled token. Runs of [`RUN`] logits all below that floor are skipped after
/// one vectorized maximum.
fn top_k_into(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    let mut floor: Option<f32> = None;
    for (r, run) in logits.chunks(RUN).enumerate() {
        if floor.is_some_and(|f| all_below(run, f)) {
            continue;
        }
        for (j, &l) in run.iter().enumerate() {
            if floor.is_some_and(|f| l.total_cmp(&f) != std::cmp::Ordering::Greater) {
                continue;
            }
            out.push(((r * RUN + j) as u32, l));
            if out.len() == 2 * k {
                out.select_nth_unstable_by(k - 1, by_logit);
                out.truncate(k);
                floor = Some(out[k - 1].1);
            }
        }
    }
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, by_logit);
        out.truncate(k);
    }
}

/// Logits per skip test in [`top_k_into`].
const RUN: usize = 64;

/// Whether every value of `run` is below `floor` (then none passes the floor under
/// `total_cmp` either). False when `run` holds a NaN or `floor` is one: those take the
/// exact per-value test. Sixteen running maxima, so the loop vectorizes.
fn all_below(run: &[f32], floor: f32) -> bool {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut nan = false;
    let mut it = run.chunks_exact(16);
    for v in &mut it {
        for i in 0..16 {
            m[i] = if v[i] > m[i] { v[i] } else { m[i] };
            nan |= v[i].is_nan();
        }
    }
    for &x in it.remainder() {
        m[0] = if x > m[0] { x } else { m[0] };
        nan |= x.is_nan();
    }
    !nan && m.iter().all(|&x| x < floor)
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_pass_equals_a_selection_over_all_logits() {
        let mut r = Rng::new(7);
        for &(n, k) in &[
            (10, 1),
            (10, 9),
            (100, 3),
            (1000, 40),
            (49_152, 40),
            (49_155, 7),
            (5000, 2500),
        ] {
            for (ties, odd) in [(false, false), (true, false), (false, true)] {
                let mut logits: Vec<f32> = (0..n)
                    .map(|_| {
                        let v = r.next_f32() * 20.0 - 10.0;
                        if ties {
                            v.round()
                        } else {
                            v
                        }
                    })
                    .collect();
                if odd {
                    // NaNs of both signs, infinities and signed zeros late in the vector
                    // (after the floor is set), where whole runs are skipped.
                    let specials = [
                        f32::NAN,
                        -f32::NAN,
                        f32::INFINITY,
                        f32::NEG_INFINITY,
                        0.0,
                        -0.0,
                    ];
                    for (j, x) in specials.iter().enumerate() {
                        let at = (n as usize).saturating_sub(1 + 13 * j);
                        logits[at] = *x;
                    }
                }
                let mut all: Vec<(u32, f32)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, l))
                    .collect();
                all.sort_unstable_by(by_logit);
                all.truncate(k);
                let mut got = Vec::new();
                top_k_into(&logits, k, &mut got);
                got.sort_unstable_by(by_logit);
                assert_eq!(
                    got.iter()
                        .map(|&(i, l)| (i, l.to_bits()))
                        .collect::<Vec<_>>(),
                    all.iter()
                        .map(|&(i, l)| (i, l.to_bits()))
                        .collect::<Vec<_>>(),
                    "n {n} k {k} ties {ties} odd {odd}"
                );
            }
        }
    }

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerConfig::default());
        let mut l = logits();
        assert_eq!(s.sample(&mut l, &[]), argmax(&logits()));
    }

    #[test]
    fn seed_makes_sampling_reproducible() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let draw = |cfg: &SamplerConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..50)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&cfg), draw(&cfg));
        let other = SamplerConfig {
            seed: 43,
            ..cfg.clone()
        };
        assert_ne!(draw(&cfg), draw(&other));
    }

    #[test]
    fn top_k_one_is_greedy_and_filters_hold() {
        let best = argmax(&logits());
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]), best);
        }
        // min_p = 1 keeps only the top token too; top_p tiny as well.
        for cfg in [
            SamplerConfig {
                temperature: 1.0,
                min_p: 1.0,
                ..Default::default()
            },
            SamplerConfig {
                temperature: 1.0,
                top_p: 1e-6,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(cfg);
            assert_eq!(s.sample(&mut logits(), &[]), best);
        }
        // top_k = 3 only ever yields the three best.
        let mut sorted: Vec<u32> = (0..100).collect();
        let l = logits();
        sorted.sort_by(|a, b| l[*b as usize].total_cmp(&l[*a as usize]));
        let mut s = Sampler::new(SamplerConfig {
            temperature: 10.0,
            top_k: 3,
            seed: 1,
            ..Default::default()
        });
        for _ in 0..100 {
            assert!(sorted[..3].contains(&s.sample(&mut logits(), &[])));
        }
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let mut l = vec![1.0, 2.0, 1.9];
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut l, &[1]), 2);
    }

    #[test]
    fn frequency_and_presence_penalties_follow_openai() {
        // logit -= count * frequency + presence, for tokens in the window only.
        let mut s = Sampler::new(SamplerConfig {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        });
        let mut l = vec![3.0, 2.0, 1.0, 0.5];
        s.sample(&mut l, &[0, 2, 0, 0]);
        assert_eq!(l, vec![3.0 - 1.5 - 0.25, 2.0, 1.0 - 0.5 - 0.25, 0.5]);
        // The window is the last `repeat_last_n` tokens.
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 1.0,
            repeat_last_n: 2,
            ..Default::default()
        });
        let mut l = vec![3.0, 2.5, 1.0];
        assert_eq!(s.sample(&mut l, &[1, 0, 2]), 1);
        assert_eq!(l, vec![2.0, 2.5, 0.0]);
        // A negative frequency penalty encourages repetition.
        let mut s = Sampler::new(SamplerConfig {
            frequency_penalty: -1.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [2.0, 1.5], &[1]), 1);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        for cfg in [
            SamplerConfig {
                temperature: -1.0,
                ..Default::default()
            },
            SamplerConfig {
                top_p: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                min_p: 2.0,
                ..Default::default()
            },
            SamplerConfig {
                repeat_penalty: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                frequency_penalty: 2.5,
                ..Default::default()
            },
            SamplerConfig {
                presence_penalty: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(cfg.validate().is_err());
        }
    }
}
