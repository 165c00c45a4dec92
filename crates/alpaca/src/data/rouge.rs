//! ROUGE-L exactly as Google's `rouge_score` computes it (`RougeScorer(["rougeL"],
//! use_stemmer=False)`), made fast.
//!
//! Tokenization (rouge_score `tokenize.tokenize` without a stemmer): full Unicode lowercase,
//! every run of characters outside `[a-z0-9]` becomes a separator, empty tokens are dropped. So
//! non-ASCII letters vanish, except those whose lowercase is ASCII (`İ` -> `i̇`, the Kelvin sign ->
//! `k`), which Python keeps too.
//!
//! Score: LCS over tokens, `P = lcs / len(prediction)`, `R = lcs / len(target)`,
//! `F = 2*P*R / (P+R)` in f64 with the same operation order as Python, so scores agree to the
//! last bit. F is symmetric in its arguments (doubling is exact, products and sums commute).
//!
//! The LCS is bit-parallel (Allison-Dix / Hyyrö 2004): the first sequence becomes one bit mask
//! per distinct token, and each token of the second sequence costs a handful of word operations
//! per 64 tokens of the first. This module knows nothing about thresholds or data sets; see
//! [`super::dedup`].

use std::collections::HashMap;

// ------------------------------------------------------------------------------------ tokens

/// Call `f` on every rouge_score token of `text`, in order, without allocating per token.
pub fn for_each_token(text: &str, mut f: impl FnMut(&str)) {
    fn step(c: char, buf: &mut String, f: &mut impl FnMut(&str)) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            buf.push(c);
        } else if !buf.is_empty() {
            f(buf);
            buf.clear();
        }
    }
    let mut buf = String::new();
    for c in text.chars() {
        if c.is_ascii() {
            step(c.to_ascii_lowercase(), &mut buf, &mut f);
        } else {
            // Full Unicode lowercase, as Python's str.lower(): a few expansions contain ASCII.
            for lc in c.to_lowercase() {
                step(lc, &mut buf, &mut f);
            }
        }
    }
    if !buf.is_empty() {
        f(&buf);
    }
}

/// rouge_score tokens of `text`.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_token(text, |t| out.push(t.to_string()));
    out
}

/// Interns tokens to dense integer ids so that LCS compares integers.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    ids: HashMap<String, u32>,
}

impl Vocab {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct tokens seen.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Token ids of `text`, interning new tokens.
    pub fn ids(&mut self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for_each_token(text, |t| {
            let next = self.ids.len() as u32;
            let id = match self.ids.get(t) {
                Some(&id) => id,
                None => {
                    self.ids.insert(t.to_string(), next);
                    next
                }
            };
            out.push(id);
        });
        out
    }
}

// ------------------------------------------------------------------------------------ score

/// F-measure from an LCS length, with rouge_score's operation order.
pub fn f_measure(lcs: usize, len_target: usize, len_prediction: usize) -> f64 {
    if len_target == 0 || len_prediction == 0 {
        return 0.0;
    }
    let precision = lcs as f64 / len_prediction as f64;
    let recall = lcs as f64 / len_target as f64;
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// ROUGE-L F-measure of two texts (tokenizes both; for one-off use).
pub fn rouge_l(target: &str, prediction: &str) -> f64 {
    let mut v = Vocab::new();
    let a = v.ids(target);
    let b = v.ids(prediction);
    f_measure(lcs_len(&a, &b), a.len(), b.len())
}

/// Textbook O(n*m) LCS, the reference the fast kernel is tested against.
pub fn lcs_dp(a: &[u32], b: &[u32]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for &x in a {
        let mut diag = 0;
        for (j, &y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[b.len()]
}

/// LCS length of two id sequences (bit-parallel; builds the pattern each call).
pub fn lcs_len(a: &[u32], b: &[u32]) -> usize {
    let (a, b) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut p = Pattern::new();
    p.set(a);
    p.lcs(b)
}

// ------------------------------------------------------------------------------------ kernel

/// A sequence prepared for bit-parallel LCS against many others.
///
/// Layout: `slot[token]` maps a token id to a row of `masks` (`words` u64s per row); row 0 is
/// all zeros and stands for "token absent", so the inner loop has no branch. Reusable: `set`
/// only clears what the previous sequence wrote.
#[derive(Clone, Debug, Default)]
pub struct Pattern {
    len: usize,
    words: usize,
    slot: Vec<u32>,
    masks: Vec<u64>,
    used: Vec<u32>,
}

impl Pattern {
    pub fn new() -> Self {
        Self::default()
    }

    /// Length of the prepared sequence in tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Prepare `a`.
    pub fn set(&mut self, a: &[u32]) {
        for &t in &self.used {
            self.slot[t as usize] = 0;
        }
        self.used.clear();
        self.len = a.len();
        self.words = a.len().div_ceil(64).max(1);
        self.masks.clear();
        self.masks.resize(self.words, 0); // row 0: absent
        for (i, &t) in a.iter().enumerate() {
            let t = t as usize;
            if t >= self.slot.len() {
                self.slot.resize(t + 1, 0);
            }
            if self.slot[t] == 0 {
                self.slot[t] = (self.masks.len() / self.words) as u32;
                self.masks.resize(self.masks.len() + self.words, 0);
                self.used.push(t as u32);
            }
            let row = self.slot[t] as usize * self.words;
            self.masks[row + i / 64] |= 1u64 << (i % 64);
        }
    }

    #[inline(always)]
    fn row(&self, t: u32) -> usize {
        // Tokens beyond the table were never in the pattern.
        self.slot.get(t as usize).copied().unwrap_or(0) as usize
    }

    /// True when `t` occurs in the pattern.
    #[inline(always)]
    pub fn contains(&self, t: u32) -> bool {
        self.row(t) != 0
    }

    /// LCS length of the pattern and `b`.
    pub fn lcs(&self, b: &[u32]) -> usize {
        self.lcs_bounded(b, usize::MAX).unwrap_or(0)
    }

    /// LCS length, or `None` as soon as more than `max_misses` tokens of `b` are absent from
    /// the pattern (a bag-of-words bound: such tokens can never be matched, so the LCS is at
    /// most `b.len() - misses`).
    pub fn lcs_bounded(&self, b: &[u32], max_misses: usize) -> Option<usize> {
        if self.len == 0 || b.is_empty() {
            return Some(0);
        }
        let mut misses = 0usize;
        if self.words == 1 {
            let mut v: u64 = !0;
            for &t in b {
                let r = self.row(t);
                misses += (r == 0) as usize;
                if misses > max_misses {
                    return None;
                }
                let u = v & self.masks[r];
                v = v.wrapping_add(u) | (v - u);
            }
            let live = if self.len == 64 {
                !0
            } else {
                (1u64 << self.len) - 1
            };
            return Some((!v & live).count_ones() as usize);
        }
        let w = self.words;
        let mut v = vec![!0u64; w];
        for &t in b {
            let r = self.row(t);
            if r == 0 {
                misses += 1;
                if misses > max_misses {
                    return None;
                }
                continue; // an all-zero mask leaves V unchanged
            }
            let m = &self.masks[r * w..(r + 1) * w];
            let mut carry = 0u64;
            for (vi, &mi) in v.iter_mut().zip(m) {
                let u = *vi & mi;
                let (s1, c1) = vi.overflowing_add(u);
                let (s2, c2) = s1.overflowing_add(carry);
                carry = (c1 | c2) as u64;
                *vi = s2 | (*vi - u);
            }
        }
        let mut zeros = 0usize;
        for (i, &vi) in v.iter().enumerate() {
            let bits = (self.len - i * 64).min(64);
            let live = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
            zeros += (!vi & live).count_ones() as usize;
        }
        Some(zeros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_matches_rouge_score() {
        assert_eq!(
            tokenize("Hello, World! It's 2024."),
            ["hello", "world", "it", "s", "2024"]
        );
        assert_eq!(tokenize("naïve café"), ["na", "ve", "caf"]);
        assert_eq!(
            tokenize("İstanbul \u{212A}elvin"),
            ["i", "stanbul", "kelvin"]
        );
        assert!(tokenize("  ...  ").is_empty());
    }

    #[test]
    fn known_scores() {
        // Values printed by rouge_score 0.1.2.
        assert_eq!(
            rouge_l("the cat sat on the mat", "the cat on the mat"),
            0.9090909090909091
        );
        assert_eq!(rouge_l("a b c", "d e f"), 0.0);
        assert_eq!(rouge_l("", "a"), 0.0);
        assert_eq!(rouge_l("Write a poem.", "write a POEM"), 1.0);
    }

    /// Tiny deterministic generator for property tests.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn bit_parallel_equals_dp() {
        let mut s = 7u64;
        let mut p = Pattern::new();
        for round in 0..3000 {
            let alphabet = 2 + lcg(&mut s) % 12;
            let la = (lcg(&mut s) % if round % 5 == 0 { 200 } else { 70 }) as usize;
            let lb = (lcg(&mut s) % 150) as usize;
            let a: Vec<u32> = (0..la).map(|_| (lcg(&mut s) % alphabet) as u32).collect();
            let b: Vec<u32> = (0..lb)
                .map(|_| (lcg(&mut s) % (alphabet + 2)) as u32)
                .collect();
            p.set(&a);
            assert_eq!(p.lcs(&b), lcs_dp(&a, &b), "a={a:?} b={b:?}");
            assert_eq!(lcs_len(&b, &a), lcs_dp(&a, &b));
        }
    }

    #[test]
    fn bounded_gives_up_only_when_it_may() {
        let mut p = Pattern::new();
        p.set(&[1, 2, 3]);
        assert_eq!(p.lcs_bounded(&[1, 9, 9, 3], 1), None);
        assert_eq!(p.lcs_bounded(&[1, 9, 9, 3], 2), Some(2));
    }
}
