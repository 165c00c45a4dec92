//! From examples to micro-batches: template, tokenization with an exact prompt/target
//! boundary, prompt masking, cutoff (EOS kept), validation split, shuffling and
//! length-grouped batching.
//!
//! The prompt and the target are tokenized separately and their ids concatenated, so the
//! boundary is exact by construction (Stanford Alpaca tokenized `prompt` and `prompt +
//! target` separately, and merges across the seam shifted the mask by a token).

use crate::data::template::Template;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;

/// One tokenized example: `ids` = prompt ids ++ target ids (target ends with EOS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Index of the first id that carries loss (the first target id, or 1 when training on
    /// inputs too).
    pub loss_from: usize,
}

impl Encoded {
    /// Number of positions with loss.
    pub fn n_targets(&self) -> usize {
        self.ids.len().saturating_sub(self.loss_from)
    }
}

/// Tokenize one example. `Ok(None)` when the prompt leaves no room for one target token
/// within `cutoff`. A target cut at the cutoff keeps its EOS as the last id.
pub fn encode_example(
    tok: &Tokenizer,
    template: &Template,
    ex: &Example,
    cutoff: usize,
    train_on_inputs: bool,
) -> Result<Option<Encoded>> {
    let eos = tok
        .eos_id()
        .ok_or_else(|| Error::Tokenizer("the vocabulary has no end-of-sequence token".into()))?;
    let prompt_text = template.render_instruction(&ex.instruction, &ex.input)?;
    let mut ids = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos_id());
    }
    ids.extend(tok.encode(&prompt_text, true)?);
    let prompt_len = ids.len();
    if prompt_len + 1 > cutoff {
        return Ok(None);
    }
    let mut target = tok.encode(&ex.output, false)?;
    target.truncate(cutoff - prompt_len - 1);
    target.push(eos);
    ids.extend(target);
    let loss_from = if train_on_inputs {
        1
    } else {
        prompt_len.max(1)
    };
    Ok(Some(Encoded { ids, loss_from }))
}

/// A packed micro-batch: sequences back to back (no padding), and the positions with loss.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    /// `(start, len)` of each sequence in `tokens`.
    pub seqs: Vec<(usize, usize)>,
    /// `(row, label)`: the row of `tokens` whose output predicts `label`.
    pub targets: Vec<(usize, u32)>,
}

impl Batch {
    pub fn from_encoded(items: &[&Encoded]) -> Batch {
        let mut b = Batch::default();
        for e in items {
            let start = b.tokens.len();
            b.tokens.extend_from_slice(&e.ids);
            b.seqs.push((start, e.ids.len()));
            for i in e.loss_from.max(1)..e.ids.len() {
                b.targets.push((start + i - 1, e.ids[i]));
            }
        }
        b
    }
}

/// Validation split size: a count, or a fraction of the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValSize {
    Count(usize),
    Fraction(f64),
}

impl std::str::FromStr for ValSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "--val-size `{s}`: a count (2000) or a fraction (0.1)"
            ))
        };
        if let Ok(n) = s.parse::<usize>() {
            return Ok(ValSize::Count(n));
        }
        let f: f64 = s.parse().map_err(|_| bad())?;
        if !(0.0..1.0).contains(&f) {
            return Err(bad());
        }
        Ok(ValSize::Fraction(f))
    }
}

/// Fisher-Yates shuffle of `0..n` with a seed.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Split `0..n` into (train, validation) indices, reproducibly from `seed`.
pub fn split(n: usize, val: ValSize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n_val = match val {
        ValSize::Count(c) => c.min(n.saturating_sub(1)),
        ValSize::Fraction(f) => ((n as f64 * f).round() as usize).min(n.saturating_sub(1)),
    };
    let order = shuffled(n, seed ^ 0x5EED_5EED);
    let (v, t) = order.split_at(n_val);
    let (mut t, mut v) = (t.to_vec(), v.to_vec());
    t.sort_unstable();
    v.sort_unstable();
    (t, v)
}

/// The micro-batches of one epoch, as indices into `lens` (the examples' lengths):
/// shuffled with `seed + epoch`; with `group_by_length`, each mega-batch of 50 micro-batches
/// is sorted by length, longest first (as Hugging Face's `group_by_length`), so a
/// micro-batch holds sequences of similar lengths.
pub fn epoch_batches(
    lens: &[usize],
    micro: usize,
    seed: u64,
    epoch: usize,
    group_by_length: bool,
) -> Vec<Vec<usize>> {
    let mut order = shuffled(lens.len(), seed.wrapping_add(epoch as u64 * 0x1000_0001));
    if group_by_length {
        for mega in order.chunks_mut(micro * 50) {
            mega.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        }
    }
    order.chunks(micro.max(1)).map(|c| c.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tiny_test_vocab;

    fn tok() -> Tokenizer {
        Tokenizer::from_parts(tiny_test_vocab()).expect("tiny vocab")
    }

    #[test]
    fn boundary_is_exact_and_eos_ends_target() {
        let t = tok();
        let ex = Example::new("Say hi", "", "the thing");
        let e = encode_example(&t, &Template::Alpaca, &ex, 512, false)
            .expect("encode")
            .expect("fits");
        let prompt = t
            .encode(
                &Template::Alpaca
                    .render_instruction("Say hi", "")
                    .expect("render"),
                true,
            )
            .expect("encode");
        assert_eq!(&e.ids[..prompt.len()], &prompt[..]);
        assert_eq!(e.loss_from, prompt.len());
        let target = &e.ids[e.loss_from..];
        assert_eq!(*target.last().expect("non-empty"), t.eos_id().expect("eos"));
        assert_eq!(t.decode(&target[..target.len() - 1], false), "the thing");
        // Labels are exactly the target ids, predicted from the previous position.
        let b = Batch::from_encoded(&[&e]);
        let labels: Vec<u32> = b.targets.iter().map(|t| t.1).collect();
        assert_eq!(labels, target);
        assert_eq!(b.targets[0].0, prompt.len() - 1);
    }

    #[test]
    fn cutoff_keeps_eos_and_rejects_long_prompts() {
        let t = tok();
        let ex = Example::new("Say hi", "", "the thing is long enough to cut");
        let full = encode_example(&t, &Template::Alpaca, &ex, 512, false)
            .expect("encode")
            .expect("fits");
        let cut = full.loss_from + 3;
        let e = encode_example(&t, &Template::Alpaca, &ex, cut, false)
            .expect("encode")
            .expect("fits");
        assert_eq!(e.ids.len(), cut);
        assert_eq!(*e.ids.last().expect("ids"), t.eos_id().expect("eos"));
        assert_eq!(e.n_targets(), 3);
        assert!(
            encode_example(&t, &Template::Alpaca, &ex, full.loss_from, false)
                .expect("encode")
                .is_none()
        );
        let all = encode_example(&t, &Template::Alpaca, &ex, 512, true)
            .expect("encode")
            .expect("fits");
        assert_eq!(all.loss_from, 1);
    }

    #[test]
    fn split_and_batches_are_reproducible() {
        let (t, v) = split(100, ValSize::Fraction(0.1), 42);
        assert_eq!((t.len(), v.len()), (90, 10));
        assert_eq!(
            split(100, ValSize::Fraction(0.1), 42),
            (t.clone(), v.clone())
        );
        assert!(t.iter().all(|i| !v.contains(i)));
        let lens: Vec<usize> = (0..20).map(|i| (i * 7) % 13).collect();
        let a = epoch_batches(&lens, 4, 1, 0, true);
        assert_eq!(a, epoch_batches(&lens, 4, 1, 0, true));
        assert_ne!(a, epoch_batches(&lens, 4, 1, 1, true));
        for w in a.concat().windows(2) {
            assert!(lens[w[0]] >= lens[w[1]], "sorted within the mega-batch");
        }
    }
}
