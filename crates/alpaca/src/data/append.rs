//! Primitives for append-only JSONL files (the generation store, evaluation logs).
//!
//! Each record is one line written with a single `write` and synced before the next, so a
//! killed run loses at most the record being written: on reopen everything up to the last
//! newline is complete, and what follows it is a torn line the caller decides about.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::io::json_lines;
use crate::error::{Error, Result};

/// Open `path` for reading and appending (created if missing, emptied when `truncate`) and
/// read its whole contents.
pub fn open_and_read(path: &Path, truncate: bool) -> Result<(File, Vec<u8>)> {
    let io = |e| Error::io(path, e);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
        .map_err(io)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok((file, bytes))
}

/// Length of the complete lines of `bytes`: up to and including the last newline.
pub fn complete_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// Parse the complete lines `bytes` (see [`complete_len`]) as one `T` per non-blank line,
/// with its 1-based line number. Errors name `path` and the line: `utf8_reason` for bytes
/// that are not UTF-8, `"{what}: {serde error}"` for a line that is not a `T`.
pub fn parse_lines<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    utf8_reason: &str,
    what: &str,
) -> Result<Vec<(usize, T)>> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        reason: utf8_reason.into(),
    })?;
    json_lines(text, path, what).collect()
}

/// Cut a torn last line off: shorten the file to `len` bytes and sync it.
pub fn cut_to(file: &File, path: &Path, len: usize) -> Result<()> {
    let io = |e| Error::io(path, e);
    file.set_len(len as u64).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Append `rec` as one line with a single write, then sync the data.
pub fn append_line<T: Serialize>(file: &mut File, path: &Path, rec: &T, what: &str) -> Result<()> {
    let mut line = serde_json::to_string(rec)
        .map_err(|e| Error::Internal(format!("serialising {what}: {e}")))?;
    line.push('\n');
    let io = |e| Error::io(path, e);
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_data().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_parse_and_errors_name_the_line() {
        assert_eq!(complete_len(b""), 0);
        assert_eq!(complete_len(b"[1]\n[2"), 4);
        let p = Path::new("x.jsonl");
        let recs: Vec<(usize, Vec<u32>)> =
            parse_lines(p, b"[1]\n\n[2]\n", "bad utf8", "not a list").expect("parse");
        assert_eq!(recs, vec![(1, vec![1]), (3, vec![2])]);
        let e = parse_lines::<Vec<u32>>(p, b"[1]\n{}\n", "bad utf8", "not a list")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("x.jsonl:2: not a list"), "{e}");
        let e = parse_lines::<Vec<u32>>(p, b"[1]\n\xff\n", "bad utf8", "not a list")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("x.jsonl:2: bad utf8"), "{e}");
    }
}
