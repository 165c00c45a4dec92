//! ROUGE-L near-duplicate removal, the O(N^2) heart of self-instruct, made fast.
//!
//! Semantics are the original's: walk candidates in order, drop one when its ROUGE-L F-measure
//! against any reference instruction or any earlier *kept* candidate is above the threshold
//! (strictly), keep it otherwise. Scores are [`super::rouge`]'s, bit-identical to rouge_score.
//!
//! Speed comes from never doing work that cannot change a decision:
//! - every text is tokenized once to integer ids; LCS is bit-parallel ([`Pattern`]);
//! - length bound: `F <= 2 min(la, lb) / (la + lb)`, so far-apart lengths are never compared;
//! - bag-of-words bound: tokens of one side absent from the other can never be matched, so a scan
//!   stops once too many were seen ([`Pattern::lcs_bounded`]);
//! - prefix filtering ([`dedup`]): `F > t` needs a token overlap above `t*la/(2-t)`, so two
//!   items can only be near-duplicates when the rarest `la - overlap + 1` tokens of each share
//!   one; an inverted index over those prefixes yields the few pairs worth an LCS;
//! - rayon: candidates are checked in parallel in blocks against the frozen kept set, then each
//!   block is settled in order against the items it itself kept, which keeps decisions identical
//!   to the sequential algorithm.
//!
//! [`SimilarityIndex`] is the incremental variant for generation, where every kept item also
//! reports its 10 most similar instructions and its mean similarity (exact scores over all).

use std::collections::HashMap;

use rayon::prelude::*;

use super::rouge::{f_measure, Pattern, Vocab};

/// Default ROUGE-L threshold of the original.
pub const DEFAULT_THRESHOLD: f64 = 0.7;

/// Slack for bounds computed in floating point: a bound only skips a pair when it is below the
/// threshold by more than this, far above any rounding of the final score.
const EPS: f64 = 1e-9;

/// Below this many comparisons, waking the thread pool costs more than it saves.
const SEQUENTIAL_BELOW: usize = 2048;

/// True when two lengths can reach a score above `t` at all.
#[inline]
pub fn lengths_admissible(la: usize, lb: usize, t: f64) -> bool {
    f_measure(la.min(lb), la, lb) > t - EPS
}

/// Most tokens of `b` (length `lb`) that may be absent from `a` (length `la`) while the score
/// can still exceed `t`.
#[inline]
pub fn max_misses(la: usize, lb: usize, t: f64) -> usize {
    // F > t  <=>  lcs > t (la+lb) / 2 (in exact arithmetic); round the need down to be safe.
    let need = (t * (la + lb) as f64 / 2.0 - 1e-6).floor().max(0.0) as usize;
    lb.saturating_sub(need)
}

/// Score of a prepared candidate against `b`, or `None` when bounds prove it is not above `t`.
#[inline]
fn bounded_score(p: &Pattern, b: &[u32], t: f64) -> Option<f64> {
    let lcs = p.lcs_bounded(b, max_misses(p.len(), b.len(), t))?;
    Some(f_measure(lcs, p.len(), b.len()))
}

// ------------------------------------------------------------------------------------ batch dedup

/// Where the match that dropped a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MatchOf {
    /// Index into the reference (`against`) list.
    Reference(usize),
    /// Index of an earlier kept candidate.
    Candidate(usize),
}

/// The decision for one candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// `None`: kept. `Some`: dropped, with one match above the threshold and its score (not
    /// necessarily the best match: bounds stop the search at the first one).
    pub duplicate_of: Option<(MatchOf, f64)>,
}

impl Decision {
    pub fn kept(&self) -> bool {
        self.duplicate_of.is_none()
    }
}

/// Sequential-semantics ROUGE-L dedup of `candidates` against `references` and each other.
pub fn dedup(candidates: &[&str], references: &[&str], threshold: f64) -> Vec<Decision> {
    let mut vocab = Vocab::new();
    let refs: Vec<Vec<u32>> = references.iter().map(|s| vocab.ids(s)).collect();
    let cands: Vec<Vec<u32>> = candidates.iter().map(|s| vocab.ids(s)).collect();
    dedup_ids(&cands, &refs, threshold)
}

/// [`dedup`] on already tokenized texts.
pub fn dedup_ids(cands: &[Vec<u32>], refs: &[Vec<u32>], t: f64) -> Vec<Decision> {
    let keep_all = vec![Decision { duplicate_of: None }; cands.len()];
    if t >= 1.0 || cands.is_empty() {
        return keep_all; // F never exceeds 1
    }
    if t <= 0.0 {
        return dedup_brute(cands, refs, t);
    }
    let mut index = PrefixIndex::new(cands, refs, t);
    for (r, toks) in refs.iter().enumerate() {
        index.insert(Owner::Reference(r), toks);
    }
    let mut out = Vec::with_capacity(cands.len());
    let mut pattern = Pattern::new();
    let block = 512;
    for (bi, chunk) in cands.chunks(block).enumerate() {
        let base = bi * block;
        let frozen = index.len();
        // Phase 1: everyone in the block against the kept set as it was, in parallel.
        let first: Vec<Option<(usize, f64)>> = chunk
            .par_iter()
            .enumerate()
            .map_init(Pattern::new, |p, (i, toks)| {
                index.probe(base + i, toks, p, 0)
            })
            .collect();
        // Phase 2: in order, against what this block itself kept.
        for (i, toks) in chunk.iter().enumerate() {
            let hit = first[i].or_else(|| index.probe(base + i, toks, &mut pattern, frozen));
            let duplicate_of = hit.map(|(slot, score)| (index.owners[slot].into(), score));
            if duplicate_of.is_none() {
                index.insert(Owner::Candidate(base + i), toks);
            }
            out.push(Decision { duplicate_of });
        }
    }
    out
}

/// The plain algorithm with length and bag bounds only; the oracle for tests.
pub fn dedup_brute(cands: &[Vec<u32>], refs: &[Vec<u32>], t: f64) -> Vec<Decision> {
    let mut kept: Vec<(MatchOf, &[u32])> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| (MatchOf::Reference(i), r.as_slice()))
        .collect();
    let mut p = Pattern::new();
    let mut out = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        p.set(c);
        let hit = kept.iter().find_map(|&(who, b)| {
            if !lengths_admissible(c.len(), b.len(), t) {
                return None;
            }
            bounded_score(&p, b, t).filter(|&f| f > t).map(|f| (who, f))
        });
        if hit.is_none() {
            kept.push((MatchOf::Candidate(i), c));
        }
        out.push(Decision { duplicate_of: hit });
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Owner {
    Reference(usize),
    Candidate(usize),
}

impl From<Owner> for MatchOf {
    fn from(o: Owner) -> Self {
        match o {
            Owner::Reference(i) => MatchOf::Reference(i),
            Owner::Candidate(i) => MatchOf::Candidate(i),
        }
    }
}

/// Inverted index over the rarest tokens ("prefixes") of kept items.
///
/// Multisets become sets by numbering repeated tokens (`the#0`, `the#1`, ...), so the set
/// overlap of two records equals their bag-of-words overlap, which bounds the LCS. Elements
/// are ordered rarest first over the whole input, which keeps posting lists short.
struct PrefixIndex<'a> {
    t: f64,
    /// Element ids of each input text (references first, then candidates), sorted rarest first.
    elements: Vec<Vec<u32>>,
    n_refs: usize,
    /// Postings: element -> kept slots whose prefix holds it (slots ascend).
    postings: Vec<Vec<u32>>,
    /// Per kept slot (in insertion order): who it is, and its tokens.
    owners: Vec<Owner>,
    tokens: Vec<&'a [u32]>,
}

impl<'a> PrefixIndex<'a> {
    fn new(cands: &'a [Vec<u32>], refs: &'a [Vec<u32>], t: f64) -> Self {
        // Number repeated tokens, then rank elements by document frequency (rarest first).
        let mut ids: HashMap<(u32, u32), u32> = HashMap::new();
        let mut freq: Vec<u32> = Vec::new();
        let mut raw: Vec<Vec<u32>> = Vec::with_capacity(refs.len() + cands.len());
        let mut seen: HashMap<u32, u32> = HashMap::new();
        for toks in refs.iter().chain(cands) {
            seen.clear();
            let mut els = Vec::with_capacity(toks.len());
            for &tok in toks.iter() {
                let k = seen.entry(tok).or_insert(0);
                let next = ids.len() as u32;
                let id = *ids.entry((tok, *k)).or_insert(next);
                *k += 1;
                if id as usize == freq.len() {
                    freq.push(0);
                }
                freq[id as usize] += 1;
                els.push(id);
            }
            raw.push(els);
        }
        let mut order: Vec<u32> = (0..freq.len() as u32).collect();
        order.sort_unstable_by_key(|&e| (freq[e as usize], e));
        let mut rank = vec![0u32; freq.len()];
        for (r, &e) in order.iter().enumerate() {
            rank[e as usize] = r as u32;
        }
        for els in &mut raw {
            for e in els.iter_mut() {
                *e = rank[*e as usize];
            }
            els.sort_unstable();
        }
        PrefixIndex {
            t,
            elements: raw,
            n_refs: refs.len(),
            postings: vec![Vec::new(); freq.len()],
            owners: Vec::new(),
            tokens: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.owners.len()
    }

    /// How many of the rarest elements of a record of `n` tokens must be indexed / probed.
    fn prefix_len(&self, n: usize) -> usize {
        // Any partner above t shares more than t*n/(2-t) tokens with it; round the need down.
        let v = self.t * n as f64 / (2.0 - self.t);
        let need = (v - 1e-6).ceil().max(1.0) as usize;
        (n + 1).saturating_sub(need).min(n)
    }

    fn row(&self, owner: Owner) -> usize {
        match owner {
            Owner::Reference(r) => r,
            Owner::Candidate(c) => self.n_refs + c,
        }
    }

    fn insert(&mut self, owner: Owner, toks: &'a [u32]) {
        let slot = self.owners.len() as u32;
        self.owners.push(owner);
        self.tokens.push(toks);
        let row = self.row(owner);
        let p = self.prefix_len(toks.len());
        for &e in &self.elements[row][..p] {
            self.postings[e as usize].push(slot);
        }
    }

    /// First kept slot `>= min_slot` that scores above the threshold against candidate `c`.
    fn probe(
        &self,
        c: usize,
        toks: &[u32],
        p: &mut Pattern,
        min_slot: usize,
    ) -> Option<(usize, f64)> {
        if toks.is_empty() {
            return None;
        }
        let row = self.n_refs + c;
        let n = self.prefix_len(toks.len());
        let mut hits: Vec<u32> = Vec::new();
        for &e in &self.elements[row][..n] {
            let list = &self.postings[e as usize];
            let from = list.partition_point(|&s| (s as usize) < min_slot);
            hits.extend_from_slice(&list[from..]);
        }
        if hits.is_empty() {
            return None;
        }
        hits.sort_unstable();
        hits.dedup();
        p.set(toks);
        hits.into_iter().find_map(|s| {
            let b = self.tokens[s as usize];
            if !lengths_admissible(toks.len(), b.len(), self.t) {
                return None;
            }
            bounded_score(p, b, self.t)
                .filter(|&f| f > self.t)
                .map(|f| (s as usize, f))
        })
    }
}

// ------------------------------------------------------------------------------------ incremental

/// The `k` most similar instructions of an item and its mean similarity to all of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Neighbours {
    /// `(item index, score)`, best first.
    pub top: Vec<(usize, f64)>,
    /// Mean ROUGE-L over every indexed instruction (0 when the index is empty).
    pub mean: f64,
}

/// Incremental ROUGE-L index for generation: texts are added one by one, and each new
/// candidate is checked against all of them.
#[derive(Clone, Debug, Default)]
pub struct SimilarityIndex {
    vocab: Vocab,
    items: Vec<Vec<u32>>,
    /// Item indices by token length.
    by_len: Vec<Vec<u32>>,
}

impl SimilarityIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Token ids of `text` (interning new tokens).
    pub fn tokenize(&mut self, text: &str) -> Vec<u32> {
        self.vocab.ids(text)
    }

    /// Add an item; returns its index.
    pub fn insert(&mut self, ids: Vec<u32>) -> usize {
        let n = ids.len();
        if self.by_len.len() <= n {
            self.by_len.resize(n + 1, Vec::new());
        }
        self.by_len[n].push(self.items.len() as u32);
        self.items.push(ids);
        self.items.len() - 1
    }

    /// Some indexed item scoring above `t` against `ids`, if any (bounds only; not the best).
    pub fn find_above(&self, ids: &[u32], t: f64) -> Option<(usize, f64)> {
        if ids.is_empty() || t >= 1.0 {
            return None;
        }
        let la = ids.len();
        let cands: Vec<u32> = (0..self.by_len.len())
            .filter(|&lb| lb > 0 && lengths_admissible(la, lb, t))
            .flat_map(|lb| self.by_len[lb].iter().copied())
            .collect();
        if cands.len() < SEQUENTIAL_BELOW {
            let mut p = Pattern::new();
            p.set(ids);
            return cands.iter().find_map(|&i| {
                let b = &self.items[i as usize];
                bounded_score(&p, b, t)
                    .filter(|&f| f > t)
                    .map(|f| (i as usize, f))
            });
        }
        cands
            .par_chunks(256)
            .map_init(
                || {
                    let mut p = Pattern::new();
                    p.set(ids);
                    p
                },
                |p, chunk| {
                    chunk.iter().find_map(|&i| {
                        let b = &self.items[i as usize];
                        bounded_score(p, b, t)
                            .filter(|&f| f > t)
                            .map(|f| (i as usize, f))
                    })
                },
            )
            .find_first(|h| h.is_some())
            .flatten()
    }

    /// Exact scores against every item: the `k` best and the mean.
    pub fn neighbours(&self, ids: &[u32], k: usize) -> Neighbours {
        if self.items.is_empty() {
            return Neighbours::default();
        }
        let mut scores: Vec<f64> = Vec::with_capacity(self.items.len());
        let score = |p: &mut Pattern, b: &Vec<u32>| f_measure(p.lcs(b), ids.len(), b.len());
        if self.items.len() < SEQUENTIAL_BELOW {
            let mut p = Pattern::new();
            p.set(ids);
            scores.extend(self.items.iter().map(|b| score(&mut p, b)));
        } else {
            self.items
                .par_iter()
                .map_init(
                    || {
                        let mut p = Pattern::new();
                        p.set(ids);
                        p
                    },
                    score,
                )
                .collect_into_vec(&mut scores);
        }
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        // Best first; ties by index for determinism.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let top = order.into_iter().take(k).map(|i| (i, scores[i])).collect();
        Neighbours { top, mean }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rouge::lcs_dp;

    fn lcg(s: &mut u64) -> u64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *s >> 33
    }

    /// Random "instructions" over a small Zipf-ish vocabulary with many near-copies.
    fn corpus(n: usize, seed: u64) -> Vec<Vec<u32>> {
        let mut s = seed;
        let mut out: Vec<Vec<u32>> = Vec::new();
        for _ in 0..n {
            if !out.is_empty() && lcg(&mut s).is_multiple_of(3) {
                // mutate an earlier one
                let mut v = out[(lcg(&mut s) as usize) % out.len()].clone();
                for _ in 0..(lcg(&mut s) % 4) {
                    let pos = (lcg(&mut s) as usize) % (v.len() + 1);
                    if lcg(&mut s).is_multiple_of(2) && pos < v.len() {
                        v.remove(pos);
                    } else {
                        v.insert(pos, (lcg(&mut s) % 40) as u32);
                    }
                }
                out.push(v);
            } else {
                let len = 1 + (lcg(&mut s) % 90) as usize;
                out.push(
                    (0..len)
                        .map(|_| ((lcg(&mut s) % 50) * (lcg(&mut s) % 50) / 7) as u32)
                        .collect(),
                );
            }
        }
        out
    }

    #[test]
    fn prefix_filter_equals_brute_force() {
        for (seed, t) in [(1, 0.7), (2, 0.5), (3, 0.9), (4, 0.3), (5, 0.7)] {
            let all = corpus(1500, seed);
            let (refs, cands) = all.split_at(100);
            let fast = dedup_ids(cands, refs, t);
            let slow = dedup_brute(cands, refs, t);
            let kf: Vec<bool> = fast.iter().map(Decision::kept).collect();
            let ks: Vec<bool> = slow.iter().map(Decision::kept).collect();
            assert_eq!(kf, ks, "seed {seed} t {t}");
            assert!(kf.iter().any(|k| !k) && kf.iter().any(|k| *k));
        }
    }

    #[test]
    fn brute_force_equals_dp() {
        let all = corpus(400, 9);
        let t = 0.7;
        let dec = dedup_brute(&all, &[], t);
        let mut kept: Vec<&Vec<u32>> = Vec::new();
        for (c, d) in all.iter().zip(&dec) {
            let best = kept
                .iter()
                .map(|b| f_measure(lcs_dp(c, b), c.len(), b.len()))
                .fold(0.0f64, f64::max);
            assert_eq!(d.kept(), best <= t);
            if d.kept() {
                kept.push(c);
            }
        }
    }

    #[test]
    fn text_level_dedup() {
        let c = [
            "Give three tips for staying healthy.",
            "List three ways to stay healthy!",
            "give three tips for staying healthy",
            "Describe the water cycle in simple words.",
        ];
        let d = dedup(&c, &["Describe the water cycle in simple terms."], 0.7);
        let kept: Vec<bool> = d.iter().map(Decision::kept).collect();
        assert_eq!(kept, [true, true, false, false]);
        assert_eq!(d[2].duplicate_of.map(|x| x.0), Some(MatchOf::Candidate(0)));
        assert_eq!(d[3].duplicate_of.map(|x| x.0), Some(MatchOf::Reference(0)));
    }

    #[test]
    fn similarity_index_agrees_with_dedup() {
        let all = corpus(600, 11);
        let t = 0.7;
        let dec = dedup_brute(&all, &[], t);
        let mut idx = SimilarityIndex::new();
        for (c, d) in all.iter().zip(&dec) {
            let hit = idx.find_above(c, t);
            assert_eq!(hit.is_none(), d.kept());
            if hit.is_none() {
                let nb = idx.neighbours(c, 10);
                if let Some(&(_, best)) = nb.top.first() {
                    assert!(best <= t);
                }
                idx.insert(c.clone());
            }
        }
    }
}
