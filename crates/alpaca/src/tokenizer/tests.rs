//! Unit tests of the tokenizer on hand-made vocabularies (no model file needed).
//! Parity with Hugging Face on real vocabularies is in `tests/tokenizer_parity.rs`.

use std::collections::HashMap;

use super::*;

fn tiny() -> Tokenizer {
    Tokenizer::from_parts(tiny_test_vocab()).expect("tiny vocab is valid")
}

/// Id of byte `b` in the tiny vocabulary.
fn byte_id(b: u8) -> u32 {
    3 + b as u32
}

// ------------------------------------------------------------------------------------------
// BPE
// ------------------------------------------------------------------------------------------

#[test]
fn bpe_tiny_merges() {
    let t = tiny();
    assert_eq!(t.vocab_size(), 283);
    let the = t.token_id("Ġthe").expect("merge token");
    let ing = t.token_id("ing").expect("merge token");
    let ids = t.encode("sing the", false).unwrap();
    assert_eq!(ids, vec![byte_id(b's'), ing, the]);
    assert_eq!(t.decode(&ids, false), "sing the");
}

#[test]
fn bpe_digits_are_isolated() {
    let t = tiny();
    // smollm: every digit alone, and "  4" keeps both spaces together (no " 4" word).
    let ids = t.encode("a  42", false).unwrap();
    let sp = byte_id(b' ');
    assert_eq!(
        ids,
        vec![byte_id(b'a'), sp, sp, byte_id(b'4'), byte_id(b'2')]
    );
}

#[test]
fn empty_string() {
    let t = tiny();
    assert!(t.encode("", true).unwrap().is_empty());
    assert_eq!(t.decode(&[], true), "");
}

#[test]
fn bpe_round_trip_is_lossless() {
    let t = tiny();
    for s in [
        "Hello, world!",
        "  x\n\n\ty ",
        "Café 😀 日本語 ½ ①",
        "\u{0}\u{7f}",
        "it's 'quoted'",
    ] {
        let ids = t.encode(s, false).unwrap();
        assert_eq!(t.decode(&ids, false), s);
    }
}

/// HF's BPE, the slow way: merge the single lowest-rank (leftmost) pair until none is left.
fn naive_bpe(t: &Tokenizer, word: &[u8]) -> Vec<u32> {
    let parts = tiny_test_vocab();
    let ranks: HashMap<(u32, u32), (usize, u32)> = parts
        .merges
        .iter()
        .enumerate()
        .map(|(r, m)| {
            let (a, b) = m.split_once(' ').unwrap();
            let merged = format!("{a}{b}");
            (
                (t.token_id(a).unwrap(), t.token_id(b).unwrap()),
                (r, t.token_id(&merged).unwrap()),
            )
        })
        .collect();
    let mut ids: Vec<u32> = word.iter().map(|&b| byte_id(b)).collect();
    loop {
        let best = (0..ids.len().saturating_sub(1))
            .filter_map(|i| ranks.get(&(ids[i], ids[i + 1])).map(|&(r, m)| (r, i, m)))
            .min();
        let Some((_, i, m)) = best else { break };
        ids[i] = m;
        ids.remove(i + 1);
    }
    ids
}

#[test]
fn bpe_heap_merge_equals_naive() {
    let t = tiny();
    let alphabet = b"theingasrlowbc";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..500 {
        let len = 1 + (state % 24) as usize;
        let word: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                alphabet[(state % alphabet.len() as u64) as usize]
            })
            .collect();
        let text = std::str::from_utf8(&word).unwrap();
        assert_eq!(
            t.encode(text, false).unwrap(),
            naive_bpe(&t, &word),
            "{text}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Special tokens
// ------------------------------------------------------------------------------------------

#[test]
fn special_tokens_parsed_only_when_asked() {
    let t = tiny();
    let text = "<|im_start|>user\nhi<|im_end|>";
    let ids = t.encode(text, true).unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    // u s er | \n | h i, between the two specials.
    assert_eq!(ids.len(), 8);
    assert_eq!(t.decode(&ids, false), text);
    assert_eq!(t.decode(&ids, true), "user\nhi");

    let plain = t.encode(text, false).unwrap();
    assert!(!plain.contains(&1) && !plain.contains(&2));
    assert_eq!(t.decode(&plain, false), text);
    // A prefix of a special token is plain text.
    assert!(!t.encode("<|im_start|", true).unwrap().contains(&1));
}

#[test]
fn special_tokens_longest_match_and_user_defined() {
    let mut p = tiny_test_vocab();
    p.tokens.push("<|im".into());
    p.token_types.push(TokenType::UserDefined);
    let t = Tokenizer::from_parts(p).unwrap();
    let ud = t.token_id("<|im").unwrap();
    // Longest match wins when control tokens are parsed...
    assert_eq!(t.encode("<|im_end|>", true).unwrap(), vec![2]);
    // ...and user-defined tokens are matched even without parse_special.
    let ids = t.encode("<|im_end|>", false).unwrap();
    assert_eq!(ids[0], ud);
    assert_eq!(t.decode(&ids, false), "<|im_end|>");
}

#[test]
fn eot_and_ids() {
    let t = tiny();
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.bos_id(), Some(1));
    assert!(!t.add_bos());
    assert_eq!(t.eot_ids(), &[2, 0]);
    assert_eq!(t.token_str(1), Some("<|im_start|>"));
    assert_eq!(t.token_bytes(byte_id(b' ')), b" ");
    assert_eq!(t.token_bytes(9999), b"");
}

// ------------------------------------------------------------------------------------------
// Refusals
// ------------------------------------------------------------------------------------------

#[test]
fn unknown_pre_tokenizer_is_refused() {
    let mut p = tiny_test_vocab();
    p.pre = Some("deepseek-llm".into());
    let err = Tokenizer::from_parts(p).unwrap_err().to_string();
    assert!(
        err.contains("deepseek-llm") && err.contains("smollm"),
        "{err}"
    );

    for ok in ["default", "gpt-2", "llama-bpe", "qwen2", "smollm"] {
        let mut p = tiny_test_vocab();
        p.pre = Some(ok.into());
        assert!(Tokenizer::from_parts(p).is_ok(), "{ok}");
    }
}

#[test]
fn bad_vocabularies_are_errors_not_panics() {
    let mut p = tiny_test_vocab();
    p.model = "bert".into();
    assert!(Tokenizer::from_parts(p).is_err());
    let mut p = tiny_test_vocab();
    p.merges.push("Ġ zz".into());
    assert!(Tokenizer::from_parts(p).is_err());
    let mut p = tiny_test_vocab();
    p.eos_id = Some(100_000);
    assert!(Tokenizer::from_parts(p).is_err());
    let mut p = tiny_test_vocab();
    p.token_types.pop();
    assert!(Tokenizer::from_parts(p).is_err());
}

// ------------------------------------------------------------------------------------------
// Streaming decoder
// ------------------------------------------------------------------------------------------

#[test]
fn stream_decoder_holds_split_emoji() {
    let t = tiny();
    let ids = t.encode("a😀b", false).unwrap();
    assert_eq!(ids.len(), 6, "emoji is four byte tokens");
    let mut d = StreamDecoder::new(&t, true);
    let pieces: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
    assert_eq!(pieces, vec!["a", "", "", "", "😀", "b"]);
    assert_eq!(d.finish(), "");
}

#[test]
fn stream_decoder_skips_specials_and_flushes_lossy() {
    let t = tiny();
    let mut d = StreamDecoder::new(&t, true);
    assert_eq!(d.push(2), "");
    // An invalid byte is replaced at once; a dangling lead byte only at finish().
    assert_eq!(d.push(byte_id(0xff)), "\u{FFFD}");
    assert_eq!(d.push(byte_id(0xf0)), "");
    assert_eq!(d.push(byte_id(b'x')), "\u{FFFD}x");
    assert_eq!(d.push(byte_id(0xe6)), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    let mut d = StreamDecoder::new(&t, false);
    assert_eq!(d.push(2), "<|im_end|>");
}

// ------------------------------------------------------------------------------------------
// SentencePiece
// ------------------------------------------------------------------------------------------

/// `<unk> <s> </s>`, 256 byte tokens, then pieces with scores (higher merges first).
fn tiny_spm(add_space_prefix: bool) -> Tokenizer {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    let mut scores = vec![0.0; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TokenType::Byte);
        scores.push(0.0);
    }
    let pieces: [(&str, f32); 16] = [
        ("▁", -10.0),
        ("h", -10.0),
        ("e", -10.0),
        ("l", -10.0),
        ("o", -10.0),
        ("w", -10.0),
        ("r", -10.0),
        ("d", -10.0),
        ("ll", -1.0),
        ("he", -2.0),
        ("hell", -3.0),
        ("or", -3.0),
        ("hello", -4.0),
        ("wor", -4.0),
        ("▁hello", -5.0),
        ("▁w", -6.0),
    ];
    for (p, s) in pieces.into_iter().chain([("ld", -6.0)]) {
        tokens.push(p.into());
        types.push(TokenType::Normal);
        scores.push(s);
    }
    tokens.push("\n".into());
    types.push(TokenType::UserDefined);
    scores.push(0.0);
    Tokenizer::from_parts(TokenizerParts {
        model: "llama".into(),
        pre: None,
        tokens,
        token_types: types,
        scores,
        merges: Vec::new(),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        pad_id: None,
        add_bos: true,
        add_eos: false,
        add_space_prefix,
        chat_template: None,
    })
    .expect("tiny spm vocab is valid")
}

fn pieces(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| t.token_str(id).unwrap_or("?").to_string())
        .collect()
}

#[test]
fn spm_highest_score_first() {
    let t = tiny_spm(true);
    // Worked by hand: ll(-1), he(-2), hell(-3) before or(-3) (leftmost tie), wor(-4) after
    // hello(-4), ▁hello(-5); "▁w" (-6) is stale once "wor" exists; then ld(-6).
    let ids = t.encode("hello world", false).unwrap();
    assert_eq!(pieces(&t, &ids), ["▁hello", "▁", "wor", "ld"]);
    assert_eq!(t.decode(&ids, false), " hello world");
    assert!(t.add_bos());
}

#[test]
fn spm_byte_fallback_and_no_prefix() {
    let t = tiny_spm(false);
    let ids = t.encode("hé", false).unwrap();
    assert_eq!(pieces(&t, &ids), ["h", "<0xC3>", "<0xA9>"]);
    assert_eq!(t.decode(&ids, false), "hé");
    let mut d = StreamDecoder::new(&t, false);
    let out: String = ids.iter().map(|&id| d.push(id)).collect();
    assert_eq!(out, "hé");
}

#[test]
fn spm_specials_and_prefix_space_after_them() {
    let t = tiny_spm(true);
    let ids = t.encode("<s>hello\nhello", true).unwrap();
    // "\n" is user-defined (always cut out); the prefix space follows every special token,
    // "\n" included, as in llama.cpp.
    assert_eq!(pieces(&t, &ids), ["<s>", "▁hello", "\n", "▁hello"]);
    let ids = t.encode("<s>", false).unwrap();
    assert!(!ids.contains(&1));
}

// ------------------------------------------------------------------------------------------
// GGUF round trip
// ------------------------------------------------------------------------------------------

#[test]
fn parts_round_trip_through_gguf() {
    let parts = tiny_test_vocab();
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    parts.write_gguf(&mut w);
    let path = std::env::temp_dir().join(format!("alpaca-tok-{}.gguf", std::process::id()));
    w.write(&path).unwrap();
    let g = Gguf::open(&path).unwrap();
    let t = Tokenizer::from_gguf(&g).unwrap();
    let _ = std::fs::remove_file(&path);
    let direct = tiny();
    let text = "<|im_start|>the 12 things<|im_end|>";
    assert_eq!(
        t.encode(text, true).unwrap(),
        direct.encode(text, true).unwrap()
    );
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.vocab_size(), 283);
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}
