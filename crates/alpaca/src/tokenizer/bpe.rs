//! Byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`): GPT-2, SmolLM, LLaMA-3, Qwen2.
//!
//! Encoding a piece of raw text is three steps, as in llama.cpp's `llm_tokenizer_bpe` and
//! Hugging Face `tokenizers`:
//!
//! 1. pre-tokenize: split the text into words with the model's regexes (keyed on GGUF
//!    `tokenizer.ggml.pre`; unknown names are refused, never guessed);
//! 2. map each byte of a word to its GPT-2 "byte-level" character (`bytes_to_unicode`), whose
//!    single-character token is the starting symbol;
//! 3. merge adjacent symbols, lowest merge rank first (leftmost on ties), until no pair of
//!    neighbours has a merge. A binary heap over a linked list keeps this O(n log n), so a
//!    60 kB run of CJK letters (one regex word) costs no more than many short words.
//!
//! Nothing here knows about special tokens; `mod.rs` cuts them out of the text first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use crate::error::{Error, Result};

// ------------------------------------------------------------------------------------------
// Byte-level alphabet
// ------------------------------------------------------------------------------------------

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map
/// to themselves, the other 68 to U+0100.. in byte order (space -> 'Ġ', newline -> 'Ċ').
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        map[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    map
}

/// The inverse of [`bytes_to_unicode`].
pub(crate) fn unicode_to_bytes() -> HashMap<char, u8> {
    bytes_to_unicode()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// Decode a byte-level token string to the bytes it stands for. Characters outside the
/// byte-level alphabet (only in malformed vocabularies) pass through as their UTF-8.
pub(crate) fn byte_level_decode(token: &str, inv: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match inv.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Pre-tokenizers
// ------------------------------------------------------------------------------------------

/// GPT-2's word pattern. llama.cpp and HF omit GPT-2's trailing `|\s+`: whatever no branch
/// matches stays a word of its own, which gives the same split.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// LLaMA-3 (`llama-bpe`); llama.cpp spells the case-insensitive contractions out.
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2: LLaMA-3's pattern with single digits.
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The closed set of supported pre-tokenizers, by their GGUF `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// `default`, `gpt-2`: the GPT-2 pattern alone.
    Gpt2,
    /// `smollm` (also `starcoder`, `refact`, which llama.cpp treats identically): every
    /// `\p{N}` character isolated, then the GPT-2 pattern; no prefix space. Equals HF's
    /// `Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false)]`.
    SmolLm,
    /// `llama-bpe` / `llama3` / `llama-v3`: the LLaMA-3 pattern; whole-word vocabulary hits
    /// skip merging (`ignore_merges`).
    Llama3,
    /// `qwen2`.
    Qwen2,
}

impl PreTokenizer {
    /// Look up a GGUF `tokenizer.ggml.pre` name. Unknown names are an error: a wrong
    /// pre-tokenizer silently produces ids the model was never trained on.
    pub fn from_name(name: &str) -> Result<PreTokenizer> {
        Ok(match name {
            "default" | "gpt-2" | "gpt2" => PreTokenizer::Gpt2,
            "smollm" | "starcoder" | "refact" => PreTokenizer::SmolLm,
            "llama-bpe" | "llama3" | "llama-v3" => PreTokenizer::Llama3,
            "qwen2" => PreTokenizer::Qwen2,
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported pre-tokenizer `tokenizer.ggml.pre = {other}` \
                     (supported: smollm, starcoder, refact, llama-bpe, qwen2, default, gpt-2)"
                )))
            }
        })
    }

    fn pattern(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 | PreTokenizer::SmolLm => GPT2_PATTERN,
            PreTokenizer::Llama3 => LLAMA3_PATTERN,
            PreTokenizer::Qwen2 => QWEN2_PATTERN,
        }
    }
}

/// Split `text` into words (byte ranges into `text`), appending to `out`.
fn regex_split(re: &Regex, text: &str, base: usize, out: &mut Vec<(usize, usize)>) -> Result<()> {
    let mut last = 0;
    for m in re.find_iter(text) {
        let m = m.map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
        if m.start() > last {
            out.push((base + last, base + m.start()));
        }
        if m.end() > m.start() {
            out.push((base + m.start(), base + m.end()));
        }
        last = m.end();
    }
    if last < text.len() {
        out.push((base + last, base + text.len()));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The BPE model
// ------------------------------------------------------------------------------------------

/// Merge table and pre-tokenizer of a byte-level BPE vocabulary.
#[derive(Debug)]
pub(crate) struct Bpe {
    pre: PreTokenizer,
    re: Regex,
    /// (left id, right id) -> (rank, merged id). Rank = line number in `tokenizer.ggml.merges`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each byte's byte-level character (None only in malformed vocabularies).
    byte_ids: [Option<u32>; 256],
    /// Byte-level alphabet, for whole-word lookups (`ignore_merges`).
    byte_chars: [char; 256],
}

impl Bpe {
    pub(crate) fn new(
        pre: PreTokenizer,
        merges: &[&str],
        token_to_id: &HashMap<String, u32>,
    ) -> Result<Bpe> {
        let re = Regex::new(pre.pattern())
            .map_err(|e| Error::Internal(format!("pre-tokenizer regex: {e}")))?;
        let byte_chars = bytes_to_unicode();
        let mut byte_ids = [None; 256];
        for (b, c) in byte_chars.iter().enumerate() {
            byte_ids[b] = token_to_id.get(c.to_string().as_str()).copied();
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, line) in merges.iter().enumerate() {
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                Error::Tokenizer(format!(
                    "merge {rank} `{line}` is not two tokens separated by a space"
                ))
            })?;
            let lookup = |s: &str| {
                token_to_id.get(s).copied().ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "merge {rank} `{line}`: `{s}` is not in the vocabulary"
                    ))
                })
            };
            let merged = format!("{a}{b}");
            let key = (lookup(a)?, lookup(b)?);
            let value = (rank as u32, lookup(&merged)?);
            // The first (lowest-rank) occurrence wins, as in HF.
            table.entry(key).or_insert(value);
        }
        Ok(Bpe {
            pre,
            re,
            merges: table,
            byte_ids,
            byte_chars,
        })
    }

    /// Encode raw text (no special tokens in it), appending ids to `out`.
    pub(crate) fn encode(
        &self,
        text: &str,
        token_to_id: &HashMap<String, u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut words = Vec::new();
        if self.pre == PreTokenizer::SmolLm {
            // Isolate every \p{N} character (Rust's `is_numeric` is exactly Nd|Nl|No), then
            // split the runs between them with the GPT-2 pattern.
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    if i > start {
                        regex_split(&self.re, &text[start..i], start, &mut words)?;
                    }
                    words.push((i, i + c.len_utf8()));
                    start = i + c.len_utf8();
                }
            }
            if start < text.len() {
                regex_split(&self.re, &text[start..], start, &mut words)?;
            }
        } else {
            regex_split(&self.re, text, 0, &mut words)?;
        }
        let mut scratch = Scratch::default();
        for (s, e) in words {
            self.encode_word(&text.as_bytes()[s..e], token_to_id, &mut scratch, out);
        }
        Ok(())
    }

    fn encode_word(
        &self,
        word: &[u8],
        token_to_id: &HashMap<String, u32>,
        sc: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        if self.pre == PreTokenizer::Llama3 {
            let mapped: String = word.iter().map(|&b| self.byte_chars[b as usize]).collect();
            if let Some(&id) = token_to_id.get(&mapped) {
                out.push(id);
                return;
            }
        }
        // Symbols: a doubly linked list over the word's bytes. Bytes without a token (only in
        // malformed vocabularies) are dropped, as HF's BPE does without an unk token.
        sc.syms.clear();
        sc.heap.clear();
        for &b in word {
            if let Some(id) = self.byte_ids[b as usize] {
                sc.syms.push(Sym {
                    id,
                    prev: NONE,
                    next: NONE,
                });
            }
        }
        let n = sc.syms.len();
        if n == 0 {
            return;
        }
        for i in 0..n {
            sc.syms[i].prev = if i == 0 { NONE } else { i - 1 };
            sc.syms[i].next = if i + 1 == n { NONE } else { i + 1 };
        }
        for i in 0..n.saturating_sub(1) {
            self.push_pair(sc, i, i + 1);
        }
        // Merge the lowest rank first, leftmost on ties. Stale entries (a side already merged
        // away or changed) are recognised by the ids no longer matching.
        while let Some(Reverse((_rank, left, left_id, right_id))) = sc.heap.pop() {
            let l = sc.syms[left];
            if l.id != left_id || l.next == NONE {
                continue;
            }
            let right = l.next;
            if sc.syms[right].id != right_id {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(left_id, right_id)) else {
                continue;
            };
            let r_next = sc.syms[right].next;
            sc.syms[left].id = merged;
            sc.syms[left].next = r_next;
            sc.syms[right].id = u32::MAX; // dead
            if r_next != NONE {
                sc.syms[r_next].prev = left;
            }
            if l.prev != NONE {
                self.push_pair(sc, l.prev, left);
            }
            if r_next != NONE {
                self.push_pair(sc, left, r_next);
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(sc.syms[i].id);
            i = sc.syms[i].next;
        }
    }

    fn push_pair(&self, sc: &mut Scratch, left: usize, right: usize) {
        let (a, b) = (sc.syms[left].id, sc.syms[right].id);
        if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
            sc.heap.push(Reverse((rank, left, a, b)));
        }
    }
}

const NONE: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Sym {
    id: u32,
    prev: usize,
    next: usize,
}

/// Buffers reused across the words of one `encode` call.
#[derive(Default)]
struct Scratch {
    syms: Vec<Sym>,
    /// (rank, left position, left id, right id), smallest first.
    heap: BinaryHeap<Reverse<(u32, usize, u32, u32)>>,
}
