//! The tokenizer room: text <-> token ids, built from GGUF metadata.
//!
//! Two vocabulary families, a closed set keyed on `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE with a regex pre-tokenizer named by `tokenizer.ggml.pre`
//!   (SmolLM, LLaMA-3, Qwen2; see `bpe.rs`). Unknown pre-tokenizer names are refused.
//! - `llama`: SentencePiece-style merges by score with `▁` for space and `<0xNN>` byte
//!   fallback (LLaMA-2, Gemma; see `spm.rs`).
//!
//! Special tokens follow llama.cpp's `tokenizer_st_partition`: before the model sees the
//! text, user-defined tokens (type 4) are always cut out as single ids, and control tokens
//! (type 3, e.g. `<|im_start|>`) only when the caller asks (`parse_special`, true for
//! prompts rendered from a chat template, false for user data). Matching is leftmost-longest,
//! as in Hugging Face's added-token matcher.
//!
//! The room knows nothing about chat templates, models or sampling; it never adds BOS by
//! itself (the caller asks [`Tokenizer::add_bos`]).

mod bpe;
mod spm;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::gguf::{self, Gguf, GgufWriter, Value};
pub use bpe::PreTokenizer;

// ------------------------------------------------------------------------------------------
// Vocabulary description
// ------------------------------------------------------------------------------------------

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    /// Values outside 1..=6 (0 = undefined in old files) are read as normal.
    pub fn from_i64(v: i64) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// Everything a tokenizer is built from: the GGUF `tokenizer.ggml.*` keys as plain data.
/// [`Tokenizer::from_gguf`] reads one from a file; tests and tiny fixture models build one
/// by hand (see [`tiny_test_vocab`]) and may write it with [`TokenizerParts::write_gguf`].
#[derive(Debug, Clone)]
pub struct TokenizerParts {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece-style).
    pub model: String,
    /// `tokenizer.ggml.pre`; used by `gpt2` only (absent = `default`).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One per token; empty = all normal.
    pub token_types: Vec<TokenType>,
    /// `llama` only: one per token, higher merges first.
    pub scores: Vec<f32>,
    /// `gpt2` only: "left right" lines, rank = position.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (llama.cpp's default: true for `llama`, false for `gpt2`).
    pub add_bos: bool,
    pub add_eos: bool,
    /// `tokenizer.ggml.add_space_prefix` (`llama` only; default true).
    pub add_space_prefix: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl TokenizerParts {
    /// Read the `tokenizer.*` keys of a GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<TokenizerParts> {
        let model = g.get_str("tokenizer.ggml.model")?.to_string();
        let tokens: Vec<String> = g
            .get_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(String::from)
            .collect();
        let token_types = match g.get("tokenizer.ggml.token_type") {
            Some(_) => g
                .get_i64_array("tokenizer.ggml.token_type")?
                .into_iter()
                .map(TokenType::from_i64)
                .collect(),
            None => Vec::new(),
        };
        let scores = match g.get("tokenizer.ggml.scores") {
            Some(_) => g.get_f32_array("tokenizer.ggml.scores")?,
            None => Vec::new(),
        };
        let merges = match g.get("tokenizer.ggml.merges") {
            Some(_) => g
                .get_str_array("tokenizer.ggml.merges")?
                .into_iter()
                .map(String::from)
                .collect(),
            None => Vec::new(),
        };
        let opt_str = |k: &str| -> Result<Option<String>> {
            Ok(match g.get(k) {
                Some(_) => Some(g.get_str(k)?.to_string()),
                None => None,
            })
        };
        let opt_id = |k: &str| -> Result<Option<u32>> {
            match g.get(k) {
                // Some converters write -1 (as u32::MAX) for "none".
                Some(_) => Ok(u32::try_from(g.get_u64(k)?).ok().filter(|&v| v != u32::MAX)),
                None => Ok(None),
            }
        };
        let opt_bool = |k: &str, default: bool| -> Result<bool> {
            match g.get(k) {
                Some(_) => g.get_bool(k),
                None => Ok(default),
            }
        };
        let is_spm = model == "llama";
        Ok(TokenizerParts {
            pre: opt_str("tokenizer.ggml.pre")?,
            tokens,
            token_types,
            scores,
            merges,
            bos_id: opt_id("tokenizer.ggml.bos_token_id")?,
            eos_id: opt_id("tokenizer.ggml.eos_token_id")?,
            unk_id: opt_id("tokenizer.ggml.unknown_token_id")?,
            pad_id: opt_id("tokenizer.ggml.padding_token_id")?,
            add_bos: opt_bool("tokenizer.ggml.add_bos_token", is_spm)?,
            add_eos: opt_bool("tokenizer.ggml.add_eos_token", false)?,
            add_space_prefix: opt_bool("tokenizer.ggml.add_space_prefix", true)?,
            chat_template: opt_str("tokenizer.chat_template")?,
            model,
        })
    }

    /// Write these parts as `tokenizer.*` metadata (for tiny test models and export).
    pub fn write_gguf(&self, w: &mut GgufWriter) {
        w.set("tokenizer.ggml.model", Value::String(self.model.clone()));
        if let Some(pre) = &self.pre {
            w.set("tokenizer.ggml.pre", Value::String(pre.clone()));
        }
        w.set("tokenizer.ggml.tokens", gguf::str_array(&self.tokens));
        if !self.token_types.is_empty() {
            let types: Vec<i32> = self.token_types.iter().map(|&t| t as i32).collect();
            w.set("tokenizer.ggml.token_type", gguf::i32_array(&types));
        }
        if !self.scores.is_empty() {
            w.set("tokenizer.ggml.scores", gguf::f32_array(&self.scores));
        }
        if !self.merges.is_empty() {
            w.set("tokenizer.ggml.merges", gguf::str_array(&self.merges));
        }
        for (k, v) in [
            ("bos_token_id", self.bos_id),
            ("eos_token_id", self.eos_id),
            ("unknown_token_id", self.unk_id),
            ("padding_token_id", self.pad_id),
        ] {
            if let Some(v) = v {
                w.set(format!("tokenizer.ggml.{k}"), Value::U32(v));
            }
        }
        w.set("tokenizer.ggml.add_bos_token", Value::Bool(self.add_bos));
        w.set("tokenizer.ggml.add_eos_token", Value::Bool(self.add_eos));
        w.set(
            "tokenizer.ggml.add_space_prefix",
            Value::Bool(self.add_space_prefix),
        );
        if let Some(t) = &self.chat_template {
            w.set("tokenizer.chat_template", Value::String(t.clone()));
        }
    }
}

/// A tiny byte-level BPE vocabulary for tests and fixture models (not for real use), laid
/// out like SmolLM2's: ids 0, 1, 2 are the control tokens `<|endoftext|>` (unk),
/// `<|im_start|>` (bos) and `<|im_end|>` (eos, pad); ids 3..259 the 256 byte-level
/// characters in byte order (byte `b` is id `3 + b`); then one token per merge, 24 in all
/// (283 tokens). Pre-tokenizer `smollm`, no BOS added.
pub fn tiny_test_vocab() -> TokenizerParts {
    const MERGES: [&str; 24] = [
        "Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he", "r e", "Ġ s", "a t", "e n", "o r",
        "Ġ w", "e s", "Ġ o", "in g", "Ġ c", "l l", "Ġ b", "i s", "Ġ i", "Ġ h", "Ġ f", "a n",
    ];
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut token_types = vec![TokenType::Control; 3];
    tokens.extend(bpe::bytes_to_unicode().iter().map(|c| c.to_string()));
    for m in MERGES {
        tokens.push(m.replace(' ', ""));
    }
    token_types.resize(tokens.len(), TokenType::Normal);
    TokenizerParts {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types,
        scores: Vec::new(),
        merges: MERGES.map(String::from).to_vec(),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        pad_id: Some(2),
        add_bos: false,
        add_eos: false,
        add_space_prefix: false,
        chat_template: None,
    }
}

// ------------------------------------------------------------------------------------------
// The tokenizer
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Model {
    Bpe(Box<bpe::Bpe>),
    Spm {
        add_space_prefix: bool,
        byte_ids: Box<[Option<u32>; 256]>,
    },
}

/// Names of control tokens that end a turn, besides EOS (llama.cpp's end-of-generation set).
const EOT_NAMES: [&str; 9] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<EOT>",
    "<|end_of_text|>",
    "<|return|>",
];

/// Text <-> ids for one vocabulary. Cheap to share (`&Tokenizer` is all any method needs).
#[derive(Debug)]
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    scores: Vec<f32>,
    token_to_id: HashMap<String, u32>,
    /// The bytes each token stands for (byte-level decoded, `▁` -> space, `<0xNN>` -> byte).
    bytes: Vec<Vec<u8>>,
    model: Model,
    /// Control and user-defined token ids bucketed by first byte (256 buckets), longest first.
    specials: Vec<Vec<u32>>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eot: Vec<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Build the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        Tokenizer::from_parts(TokenizerParts::from_gguf(g)?)
    }

    /// Build from plain parts (see [`TokenizerParts`], [`tiny_test_vocab`]).
    pub fn from_parts(p: TokenizerParts) -> Result<Tokenizer> {
        let n = p.tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(Error::Tokenizer(format!("vocabulary has {n} tokens")));
        }
        let mut types = p.token_types;
        if types.is_empty() {
            types = vec![TokenType::Normal; n];
        }
        if types.len() != n {
            return Err(Error::Tokenizer(format!(
                "{} token types for {n} tokens",
                types.len()
            )));
        }
        for (name, id) in [
            ("bos", p.bos_id),
            ("eos", p.eos_id),
            ("unk", p.unk_id),
            ("pad", p.pad_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(Error::Tokenizer(format!(
                    "{name} token id {id} is outside the vocabulary of {n}"
                )));
            }
        }
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in p.tokens.iter().enumerate() {
            // On duplicates the first id wins (llama.cpp keeps the last; duplicates are a
            // converter bug either way).
            token_to_id.entry(t.clone()).or_insert(i as u32);
        }

        let (model, bytes) = match p.model.as_str() {
            "gpt2" => {
                let pre = PreTokenizer::from_name(p.pre.as_deref().unwrap_or("default"))?;
                let merges: Vec<&str> = p.merges.iter().map(String::as_str).collect();
                let bpe = bpe::Bpe::new(pre, &merges, &token_to_id)?;
                let inv = bpe::unicode_to_bytes();
                let bytes = p
                    .tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match ty {
                        TokenType::Normal | TokenType::Byte => bpe::byte_level_decode(t, &inv),
                        _ => t.as_bytes().to_vec(),
                    })
                    .collect();
                (Model::Bpe(Box::new(bpe)), bytes)
            }
            "llama" => {
                if p.scores.len() != n {
                    return Err(Error::Tokenizer(format!("{} scores for {n} tokens", p.scores.len())));
                }
                let mut byte_ids = Box::new([None; 256]);
                for (b, slot) in byte_ids.iter_mut().enumerate() {
                    // llama.cpp `byte_to_token`: `<0xNN>`, else the one-byte string, else unk.
                    let hex = format!("<0x{b:02X}>");
                    let one = (b < 128).then(|| (b as u8 as char).to_string());
                    *slot = token_to_id
                        .get(&hex)
                        .or_else(|| one.as_ref().and_then(|s| token_to_id.get(s)))
                        .copied()
                        .or(p.unk_id);
                }
                let bytes = p
                    .tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match ty {
                        TokenType::Byte => parse_byte_token(t).map(|b| vec![b]).unwrap_or_else(|| t.as_bytes().to_vec()),
                        TokenType::Normal | TokenType::UserDefined => t.replace('\u{2581}', " ").into_bytes(),
                        _ => t.as_bytes().to_vec(),
                    })
                    .collect();
                (Model::Spm { add_space_prefix: p.add_space_prefix, byte_ids }, bytes)
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported tokenizer model `tokenizer.ggml.model = {other}` (supported: gpt2, llama)"
                )))
            }
        };

        let mut specials: Vec<Vec<u32>> = vec![Vec::new(); 256];
        for (i, (t, ty)) in p.tokens.iter().zip(&types).enumerate() {
            if matches!(ty, TokenType::Control | TokenType::UserDefined) && !t.is_empty() {
                specials[t.as_bytes()[0] as usize].push(i as u32);
            }
        }
        for ids in specials.iter_mut() {
            ids.sort_by_key(|&id| (std::cmp::Reverse(p.tokens[id as usize].len()), id));
        }

        let mut eot: Vec<u32> = p.eos_id.into_iter().collect();
        for name in EOT_NAMES {
            if let Some(&id) = token_to_id.get(name) {
                if types[id as usize] == TokenType::Control && !eot.contains(&id) {
                    eot.push(id);
                }
            }
        }

        Ok(Tokenizer {
            tokens: p.tokens,
            types,
            scores: p.scores,
            token_to_id,
            bytes,
            model,
            specials,
            bos: p.bos_id,
            eos: p.eos_id,
            unk: p.unk_id,
            pad: p.pad_id,
            add_bos: p.add_bos,
            add_eos: p.add_eos,
            eot,
            chat_template: p.chat_template,
        })
    }

    // ---------------------------------------------------------------------- encode

    /// Encode text. With `parse_special`, control-token strings in the text (such as
    /// `<|im_start|>`) become their single ids; without it they are tokenized as plain text.
    /// User-defined tokens are always matched (as llama.cpp and HF do). Never adds BOS/EOS.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        // After a special token (or at the start) SPM adds the prefix space (llama.cpp).
        let mut prev_special = true;
        let mut raw_start = 0;
        let mut i = 0;
        let bytes = text.as_bytes();
        while i < bytes.len() {
            if let Some(id) = self.special_at(text, i, parse_special) {
                self.encode_raw(&text[raw_start..i], prev_special, &mut out)?;
                out.push(id);
                prev_special = true;
                i += self.tokens[id as usize].len();
                raw_start = i;
            } else {
                i += 1;
            }
        }
        self.encode_raw(&text[raw_start..], prev_special, &mut out)?;
        Ok(out)
    }

    /// The longest special token starting at byte `i` of `text`, if any.
    fn special_at(&self, text: &str, i: usize, parse_special: bool) -> Option<u32> {
        if !text.is_char_boundary(i) {
            return None;
        }
        let cands = &self.specials[text.as_bytes()[i] as usize];
        let rest = &text[i..];
        cands.iter().copied().find(|&id| {
            (parse_special || self.types[id as usize] == TokenType::UserDefined)
                && rest.starts_with(self.tokens[id as usize].as_str())
        })
    }

    fn encode_raw(&self, text: &str, prev_special: bool, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        match &self.model {
            Model::Bpe(b) => b.encode(text, &self.token_to_id, out),
            Model::Spm {
                add_space_prefix,
                byte_ids,
            } => {
                let mut s = String::with_capacity(text.len() + 3);
                if *add_space_prefix && prev_special {
                    s.push('\u{2581}');
                }
                s.push_str(&text.replace(' ', "\u{2581}"));
                let v = spm::SpmVocab {
                    token_to_id: &self.token_to_id,
                    scores: &self.scores,
                    byte_ids,
                };
                spm::encode(&v, &s, out);
                Ok(())
            }
        }
    }

    // ---------------------------------------------------------------------- decode

    /// The bytes a token stands for (empty for ids outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// True for tokens `decode(.., skip_special = true)` leaves out: control tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&TokenType::Control)
    }

    /// Decode ids to text; invalid UTF-8 becomes U+FFFD. With `skip_special`, control
    /// tokens (BOS, EOS, `<|im_start|>`...) are left out. Nothing is stripped: for an SPM
    /// vocabulary with `add_space_prefix`, the space encode put in front comes back.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut buf = Vec::new();
        for &id in ids {
            if !(skip_special && self.is_special(id)) {
                buf.extend_from_slice(self.token_bytes(id));
            }
        }
        match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    // ---------------------------------------------------------------------- accessors

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    /// Tokens that end generation: EOS plus turn-end control tokens present in the
    /// vocabulary (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|endoftext|>`, ...).
    pub fn eot_ids(&self) -> &[u32] {
        &self.eot
    }
    pub fn is_eot(&self, id: u32) -> bool {
        self.eot.contains(&id)
    }
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    /// The vocabulary entry as stored (byte-level characters / `▁` not decoded).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.token_to_id.get(s).copied()
    }
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    /// `tokenizer.chat_template`, when the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// `gpt2` or `llama`.
    pub fn model_name(&self) -> &'static str {
        match self.model {
            Model::Bpe(_) => "gpt2",
            Model::Spm { .. } => "llama",
        }
    }
}

/// `<0xNN>` -> NN.
fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

// ------------------------------------------------------------------------------------------
// Streaming decoder
// ------------------------------------------------------------------------------------------

/// Turns a stream of ids into text, holding back an incomplete UTF-8 sequence (an emoji
/// split over byte tokens) until its last byte arrives, so no U+FFFD appears mid-stream.
/// Bytes that can never become valid are replaced at once.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        StreamDecoder {
            tok,
            skip_special,
            pending: Vec::new(),
        }
    }

    /// Add one token; returns the text that is now complete (often empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.skip_special && self.tok.is_special(id) {
            return String::new();
        }
        self.pending.extend_from_slice(self.tok.token_bytes(id));
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid]));
                    match e.error_len() {
                        // Invalid for good: replace and go on.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            start = valid + n;
                        }
                        // Incomplete at the end: wait for more bytes.
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Flush what is left (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = match String::from_utf8_lossy(&self.pending) {
            Cow::Borrowed(s) => s.to_string(),
            Cow::Owned(s) => s,
        };
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests;
