//! An append-only JSONL file of records, the resumable output of long evaluation runs
//! (predictions, judgments).
//!
//! Each record is one line written with a single `write` and synced before the next, so a
//! killed run loses at most the record being written. On reopen a torn last line (no trailing
//! newline) is cut off, every complete line is parsed back (errors name the line), and writing
//! continues at the end. [`finish`] rewrites the file atomically in a chosen order once a run
//! is complete.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::data::append;
use crate::error::{Error, Result};

/// An open log, positioned at its end.
pub struct JsonlLog<T> {
    path: PathBuf,
    file: File,
    _t: PhantomData<fn(T)>,
}

/// What [`JsonlLog::open`] found.
pub struct Reopened<T> {
    pub log: JsonlLog<T>,
    /// Records already in the file, with their line numbers.
    pub records: Vec<(usize, T)>,
    /// Bytes of a torn last line that were cut off.
    pub torn_bytes: usize,
}

impl<T: Serialize + DeserializeOwned> JsonlLog<T> {
    /// Open `path`, continuing it (`overwrite` = false) or starting it over.
    pub fn open(path: &Path, overwrite: bool) -> Result<Reopened<T>> {
        let io = |e| Error::io(path, e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let (mut file, bytes) = append::open_and_read(path, overwrite)?;
        let good = append::complete_len(&bytes);
        // Parse everything before touching the file: a file that is not ours stays intact.
        let mut records = append::parse_lines(
            path,
            &bytes[..good],
            "invalid UTF-8",
            "not a record of this file",
        )?;
        // The last line has no newline: a complete record (another tool wrote the file) is
        // kept; a cut-off record (`{` and invalid JSON: a run killed mid-write) is removed;
        // anything else means the file is not ours and stays untouched.
        let tail = &bytes[good..];
        let mut torn_bytes = 0;
        if !tail.iter().all(u8::is_ascii_whitespace) {
            let line = 1 + bytes[..good].iter().filter(|&&b| b == b'\n').count();
            if let Ok(rec) = serde_json::from_slice::<T>(tail) {
                records.push((line, rec));
                file.seek(SeekFrom::End(0)).map_err(io)?;
                file.write_all(b"\n").map_err(io)?;
            } else if tail.first() == Some(&b'{')
                && serde_json::from_slice::<serde_json::Value>(tail).is_err()
            {
                torn_bytes = tail.len();
            } else {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    line,
                    reason: "not a record of this file".into(),
                });
            }
        } else {
            torn_bytes = tail.len();
        }
        if torn_bytes > 0 {
            append::cut_to(&file, path, good)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Reopened {
            log: JsonlLog {
                path: path.to_path_buf(),
                file,
                _t: PhantomData,
            },
            records,
            torn_bytes,
        })
    }

    /// Append one record durably.
    pub fn append(&mut self, rec: &T) -> Result<()> {
        append::append_line(&mut self.file, &self.path, rec, "a record")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Replace `path` atomically with `records`, one per line.
pub fn finish<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(
            &serde_json::to_string(r)
                .map_err(|e| Error::Internal(format!("serialising a record: {e}")))?,
        );
        text.push('\n');
    }
    crate::data::io::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn torn_line_is_cut_and_appends_continue() {
        let dir = std::env::temp_dir().join(format!("alpaca-eval-log-{}", std::process::id()));
        let path = dir.join("x.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = JsonlLog::<Vec<u32>>::open(&path, false).expect("open");
        assert!(r.records.is_empty());
        r.log.append(&vec![1, 2]).expect("append");
        drop(r);
        let mut f = OpenOptions::new().append(true).open(&path).expect("raw");
        f.write_all(b"{\"a\": [3, 4").expect("torn");
        drop(f);
        let mut r = JsonlLog::<Vec<u32>>::open(&path, false).expect("reopen");
        assert_eq!(r.torn_bytes, 11);
        assert_eq!(r.records, vec![(1, vec![1, 2])]);
        r.log.append(&vec![5]).expect("append");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "[1,2]\n[5]\n"
        );
        std::fs::write(&path, "[1]\n{\"a\": 1}\n").expect("write");
        let e = JsonlLog::<Vec<u32>>::open(&path, false)
            .err()
            .expect("bad")
            .to_string();
        assert!(e.contains("x.jsonl:2: not a record"), "{e}");
        // A file that is not ours (one JSON list, no newline) is refused and left as it was.
        std::fs::write(&path, "[[1], [2]]").expect("write");
        assert!(JsonlLog::<Vec<u32>>::open(&path, false).is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "[[1], [2]]");
        // A complete last record without a newline is kept.
        std::fs::write(&path, "[1]\n[2]").expect("write");
        let mut r = JsonlLog::<Vec<u32>>::open(&path, false).expect("no newline");
        assert_eq!(r.records, vec![(1, vec![1]), (2, vec![2])]);
        r.log.append(&vec![3]).expect("append");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "[1]\n[2]\n[3]\n"
        );
        drop(r);
        let r = JsonlLog::<Vec<u32>>::open(&path, true).expect("overwrite");
        assert!(r.records.is_empty());
        finish(&path, &[vec![9u32]]).expect("finish");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "[9]\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
