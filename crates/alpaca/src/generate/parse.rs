//! Parsing teacher replies into examples.
//!
//! The reply continues a prompt that ends with `4. Instruction:`. Items are separated by `###`
//! and carry `N. Instruction:`, `N. Input:` and `N. Output:` markers.
//!
//! Two modes:
//! - [`ParseMode::Original`] reproduces the Alpaca code exactly (`re.split` on
//!   `{idx}\.\s+(Instruction|Input|Output):` with `idx` the expected number of the chunk), so
//!   one misnumbered item makes every later item unparseable. Used to check agreement with the
//!   Python reference.
//! - [`ParseMode::Forgiving`] (default) accepts any number on the markers, splits items that lost
//!   their `###`, tolerates a missing `Input:` marker and a reply that repeats the opening
//!   marker. A misnumbered item costs nothing.
//!
//! In both modes a reply cut by the length limit loses only its last chunk, `<noinput>`
//! (any case) becomes an empty input, and fields are trimmed of whitespace.

use crate::data::filter::{py_space, Reject};
use crate::data::Example;

use super::teacher::Finish;

/// How strictly replies are parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParseMode {
    /// Exactly the original's behaviour.
    Original,
    /// Ours: numbers are not checked, see the module docs.
    #[default]
    Forgiving,
}

/// What one reply yielded: items with their chunk position, and the rejected chunks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub items: Vec<(usize, Example)>,
    pub rejected: Vec<Reject>,
}

const KEYWORDS: [&str; 3] = ["Instruction", "Input", "Output"];

/// A marker `N. Keyword:` found at `start..end`.
#[derive(Clone, Copy, Debug)]
struct Marker {
    start: usize,
    end: usize,
    keyword: usize,
}

/// Try to read `.\s+Keyword:` at `i` (just after the number); returns the end and keyword.
fn marker_tail(s: &str, i: usize) -> Option<(usize, usize)> {
    let rest = s[i..].strip_prefix('.')?;
    let trimmed = rest.trim_start_matches(py_space);
    if trimmed.len() == rest.len() {
        return None; // `\s+` needs at least one
    }
    let at = s.len() - trimmed.len();
    KEYWORDS.iter().enumerate().find_map(|(k, kw)| {
        trimmed
            .strip_prefix(kw)
            .and_then(|r| r.strip_prefix(':'))
            .map(|_| (at + kw.len() + 1, k))
    })
}

/// Markers with exactly the number `num`, found left to right without overlap (as `re.split`).
fn markers_numbered(s: &str, num: usize) -> Vec<Marker> {
    let pat = num.to_string();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find(&pat) {
        let start = i + off;
        match marker_tail(s, start + pat.len()) {
            Some((end, keyword)) => {
                out.push(Marker {
                    start,
                    end,
                    keyword,
                });
                i = end;
            }
            None => i = start + 1,
        }
    }
    out
}

/// Markers with any number; `line_start` keeps only those at the start of a line.
fn markers_any(s: &str) -> Vec<Marker> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if let Some((end, keyword)) = marker_tail(s, j) {
                out.push(Marker {
                    start: i,
                    end,
                    keyword,
                });
                i = end;
                continue;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn clean_input(s: &str) -> String {
    let s = s.trim_matches(py_space);
    if s.to_lowercase() == "<noinput>" {
        String::new()
    } else {
        s.to_string()
    }
}

/// Parse one reply. `first_new` is the number the reply continues with (4 for 3 examples).
pub fn parse_reply(text: &str, finish: &Finish, first_new: usize, mode: ParseMode) -> Parsed {
    match mode {
        ParseMode::Original => parse_original(text, finish, first_new),
        ParseMode::Forgiving => parse_forgiving(text, finish, first_new),
    }
}

fn parse_original(text: &str, finish: &Finish, first_new: usize) -> Parsed {
    let raw = format!("{first_new}. Instruction:{text}");
    let chunks: Vec<&str> = raw.split("###").collect();
    let mut out = Parsed::default();
    for (idx, chunk) in chunks.iter().enumerate() {
        if idx == chunks.len() - 1 && *finish == Finish::Length {
            out.rejected.push(Reject::Truncated);
            continue;
        }
        let m = markers_numbered(chunk, idx + first_new);
        if m.len() != 3 {
            out.rejected.push(Reject::Unparseable);
            continue;
        }
        // Like the original, take the three segments in order whatever their keywords.
        let seg = |k: usize| {
            let end = m.get(k + 1).map_or(chunk.len(), |n| n.start);
            &chunk[m[k].end..end]
        };
        out.items.push((
            idx,
            Example {
                instruction: seg(0).trim_matches(py_space).to_string(),
                input: clean_input(seg(1)),
                output: seg(2).trim_matches(py_space).to_string(),
            },
        ));
    }
    out
}

fn parse_forgiving(text: &str, finish: &Finish, first_new: usize) -> Parsed {
    let head = text.trim_start_matches(py_space);
    let opens = head.starts_with("###")
        || markers_any(head)
            .first()
            .is_some_and(|m| m.start == 0 && m.keyword == 0);
    let raw = if opens {
        text.to_string()
    } else {
        format!("{first_new}. Instruction:{text}")
    };
    // Chunks: split on `###`, then at every further `N. Instruction:` that opens a line.
    let mut chunks: Vec<&str> = Vec::new();
    for part in raw.split("###") {
        let mut from = 0;
        for m in markers_any(part) {
            let line_start = m.start == 0 || part[..m.start].ends_with('\n');
            if m.keyword == 0
                && line_start
                && !part[from..m.start].trim_matches(py_space).is_empty()
            {
                chunks.push(&part[from..m.start]);
                from = m.start;
            }
        }
        chunks.push(&part[from..]);
    }
    let chunks: Vec<&str> = chunks
        .into_iter()
        .filter(|c| !c.trim_matches(py_space).is_empty())
        .collect();
    let mut out = Parsed::default();
    for (idx, chunk) in chunks.iter().enumerate() {
        if idx == chunks.len() - 1 && *finish == Finish::Length {
            out.rejected.push(Reject::Truncated);
            continue;
        }
        let ms = markers_any(chunk);
        let Some(ins) = ms.iter().position(|m| m.keyword == 0) else {
            out.rejected.push(Reject::Unparseable);
            continue;
        };
        let Some(outp) = ms[ins..]
            .iter()
            .position(|m| m.keyword == 2)
            .map(|p| p + ins)
        else {
            out.rejected.push(Reject::Unparseable);
            continue;
        };
        let inp = ms[ins..outp]
            .iter()
            .position(|m| m.keyword == 1)
            .map(|p| p + ins);
        let inst_end = inp.map_or(ms[outp].start, |i| ms[i].start);
        let instruction = chunk[ms[ins].end..inst_end]
            .trim_matches(py_space)
            .to_string();
        let input = inp.map_or(String::new(), |i| {
            clean_input(&chunk[ms[i].end..ms[outp].start])
        });
        let output = chunk[ms[outp].end..].trim_matches(py_space).to_string();
        out.items.push((
            idx,
            Example {
                instruction,
                input,
                output,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = " Name a fruit that is yellow.\n4. Input:\n<noinput>\n4. Output:\nA banana.\n###\n\
        5. Instruction: Fix the spelling.\n5. Input:\nI recieved it.\n5. Output:\nI received it.\n###\n\
        6. Instruction: Add 2 and 3.\n6. Input:\n<NoInput>\n6. Output:\n5\n###\n7. Instruction: Count to";

    #[test]
    fn both_modes_parse_a_clean_reply() {
        for mode in [ParseMode::Original, ParseMode::Forgiving] {
            let p = parse_reply(GOOD, &Finish::Length, 4, mode);
            assert_eq!(p.items.len(), 3, "{mode:?}");
            assert_eq!(
                p.items[0].1,
                Example::new("Name a fruit that is yellow.", "", "A banana.")
            );
            assert_eq!(p.items[1].1.input, "I recieved it.");
            assert_eq!(p.items[2].1.input, "");
            assert_eq!(p.rejected, [Reject::Truncated]);
        }
    }

    #[test]
    fn misnumbered_item_loses_only_itself_when_forgiving() {
        let bad = GOOD
            .replace("5. Instruction", "9. Instruction")
            .replace("5. Input", "9. Input");
        let orig = parse_reply(&bad, &Finish::Stop, 4, ParseMode::Original);
        assert_eq!(orig.items.len(), 2); // item 5 lost; 7 unparseable because stop isn't length
        let fg = parse_reply(&bad, &Finish::Stop, 4, ParseMode::Forgiving);
        assert_eq!(fg.items.len(), 3);
        assert_eq!(fg.rejected, [Reject::Unparseable]); // the dangling "7. Instruction: Count to"
                                                        // A skipped number shifts every later chunk in the original.
        let skip = GOOD
            .replace("5. ", "6. ")
            .replace("\n6. Instruction: Add", "\n7. Instruction: Add");
        let skip = skip.replace(
            "6. Input:\n<NoInput>\n6. Output",
            "7. Input:\n<NoInput>\n7. Output",
        );
        let orig = parse_reply(&skip, &Finish::Length, 4, ParseMode::Original);
        assert_eq!(orig.items.len(), 1);
        let fg = parse_reply(&skip, &Finish::Length, 4, ParseMode::Forgiving);
        assert_eq!(fg.items.len(), 3);
    }

    #[test]
    fn forgiving_splits_missing_separators_and_missing_input() {
        let r = " Say hello politely.\n4. Output:\nHello!\n5. Instruction: Name a planet please.\n5. Input:\n\n5. Output:\nMars.";
        let p = parse_reply(r, &Finish::Stop, 4, ParseMode::Forgiving);
        assert_eq!(p.items.len(), 2);
        assert_eq!(
            p.items[0].1,
            Example::new("Say hello politely.", "", "Hello!")
        );
        assert_eq!(p.items[1].1.output, "Mars.");
        // A chat model that repeats the opening marker.
        let chat = "4. Instruction: Say hello politely.\n4. Input:\n<noinput>\n4. Output:\nHello!";
        let p = parse_reply(chat, &Finish::Stop, 4, ParseMode::Forgiving);
        assert_eq!(p.items[0].1.instruction, "Say hello politely.");
    }

    #[test]
    fn original_split_quirk_matches_python() {
        // re.split(r"4\.\s+(Instruction|Input|Output):", ...) also splits inside "14. Input:".
        let r = " a b c d\n14. Input:\nx\n4. Output:\ny";
        let p = parse_reply(r, &Finish::Stop, 4, ParseMode::Original);
        assert_eq!(p.items[0].1, Example::new("a b c d\n1", "x", "y"));
    }
}
