//! SentencePiece-style tokenization (GGUF `tokenizer.ggml.model = llama`): LLaMA-1/2,
//! Mistral v0.1, Gemma. A port of llama.cpp's `llm_tokenizer_spm_session`.
//!
//! The text (spaces already escaped to `▁`, prefix space already added by the caller) is
//! split into UTF-8 characters; then, repeatedly, the adjacent pair whose concatenation is
//! the vocabulary entry with the highest score is merged (leftmost on ties). Each final
//! symbol is emitted as its token; characters with no token fall back to `<0xNN>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// Vocabulary data the SPM session needs, borrowed from the tokenizer.
pub(crate) struct SpmVocab<'a> {
    pub token_to_id: &'a HashMap<String, u32>,
    pub scores: &'a [f32],
    /// `<0xNN>` token of each byte (or the one-character token for ASCII, else `unk`).
    pub byte_ids: &'a [Option<u32>; 256],
}

#[derive(Debug, Clone, Copy)]
struct Sym {
    /// Byte range in the text.
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

#[derive(Debug)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

// Highest score first; on ties the leftmost pair (llama.cpp's `llm_bigram_spm::comparator`).
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .partial_cmp(&o.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| o.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Tokenize `text` (already `▁`-escaped), appending ids to `out`.
pub(crate) fn encode(v: &SpmVocab<'_>, text: &str, out: &mut Vec<u32>) {
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    for (i, (off, c)) in text.char_indices().enumerate() {
        let len = c.len_utf8();
        syms.push(Sym {
            start: off,
            len,
            prev: i as isize - 1,
            next: if off + len == text.len() {
                -1
            } else {
                i as isize + 1
            },
        });
    }
    if syms.is_empty() {
        return;
    }
    let mut heap = BinaryHeap::new();
    let try_add = |syms: &[Sym], left: isize, right: isize, heap: &mut BinaryHeap<Bigram>| {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (syms[left as usize], syms[right as usize]);
        let s = &text[l.start..l.start + l.len + r.len];
        let Some(&id) = v.token_to_id.get(s) else {
            return;
        };
        let score = v.scores.get(id as usize).copied().unwrap_or(0.0);
        heap.push(Bigram {
            left: left as usize,
            right: right as usize,
            score,
            size: s.len(),
        });
    };

    for i in 1..syms.len() {
        try_add(&syms, i as isize - 1, i as isize, &mut heap);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (syms[bg.left], syms[bg.right]);
        // Skip pairs whose symbols were merged away or have grown since.
        if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
            continue;
        }
        syms[bg.left].len += r.len;
        syms[bg.right].len = 0;
        syms[bg.left].next = r.next;
        if r.next >= 0 {
            syms[r.next as usize].prev = bg.left as isize;
        }
        let (prev, next) = (syms[bg.left].prev, syms[bg.left].next);
        try_add(&syms, prev, bg.left as isize, &mut heap);
        try_add(&syms, bg.left as isize, next, &mut heap);
    }
    let mut i = 0isize;
    while i >= 0 {
        let s = syms[i as usize];
        resegment(v, &text[s.start..s.start + s.len], out);
        i = s.next;
    }
}

/// Emit the token for a final symbol, or its bytes as byte tokens. (A merged symbol always
/// has a token, so llama.cpp's re-split along `rev_merge` never triggers and is left out.)
fn resegment(v: &SpmVocab<'_>, s: &str, out: &mut Vec<u32>) {
    match v.token_to_id.get(s) {
        Some(&id) => out.push(id),
        None => bytes(v, s, out),
    }
}

fn bytes(v: &SpmVocab<'_>, s: &str, out: &mut Vec<u32>) {
    for &b in s.as_bytes() {
        if let Some(id) = v.byte_ids[b as usize] {
            out.push(id);
        }
    }
}
