//! The append-only JSONL store of kept items.
//!
//! Each kept item is one line, written with a single `write` and `fsync`ed before the next item
//! is considered, so a crash loses at most the item being written. On reopen a torn last line
//! (no trailing newline) is cut off, and the caller is told how many bytes went. Lines are
//! Alpaca records with extra fields, so the store is itself a valid JSONL data file.
//!
//! `prompt` and `position` say where an item came from (prompt number, chunk of the reply);
//! they let a resumed run skip exactly what is already stored.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::teacher::Usage;
use crate::data::append;
use crate::data::Example;
use crate::error::{Error, Result};

/// One similar instruction and its ROUGE-L score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Similar {
    pub instruction: String,
    pub score: f64,
}

/// A kept item with its provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredItem {
    pub instruction: String,
    pub input: String,
    pub output: String,
    /// Prompt number (the RNG stream of its seed examples).
    pub prompt: u64,
    /// Chunk index of the item within the reply.
    pub position: u32,
    /// `--seed` of the run.
    pub seed: u64,
    pub teacher: String,
    /// The prompt's share of the request's token usage.
    pub usage: Usage,
    /// The 10 most similar instructions (seeds and earlier items), best first.
    pub most_similar_instructions: Vec<Similar>,
    /// Mean ROUGE-L against every seed and earlier item.
    pub avg_similarity_score: f64,
}

impl StoredItem {
    pub fn example(&self) -> Example {
        Example::new(&self.instruction, &self.input, &self.output)
    }

    /// Where the item came from, for ordering and resume.
    pub fn origin(&self) -> (u64, u32) {
        (self.prompt, self.position)
    }
}

/// How to treat an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Fail if the file exists and is not empty.
    Create,
    /// Continue an existing store (or start a new one).
    Resume,
    /// Start over.
    Overwrite,
}

/// An open store, positioned at its end.
pub struct Store {
    path: PathBuf,
    file: File,
    len: usize,
}

/// What [`Store::open`] found.
pub struct Opened {
    pub store: Store,
    /// Items already in the file, in order.
    pub items: Vec<StoredItem>,
    /// Bytes of a torn last line that were cut off (0 when the file was clean).
    pub torn_bytes: usize,
}

impl Store {
    /// Open (and, when resuming, recover) a store.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Opened> {
        let io = |e| Error::io(path, e);
        let exists = path.exists();
        if exists && mode == OpenMode::Create && std::fs::metadata(path).map_err(io)?.len() > 0 {
            return Err(Error::InvalidArgument(format!(
                "{} already exists; pass --resume to continue it or --overwrite to start over",
                path.display()
            )));
        }
        let (mut file, bytes) = append::open_and_read(path, mode == OpenMode::Overwrite)?;
        if !exists {
            sync_parent(path);
        }
        let good = append::complete_len(&bytes);
        let torn_bytes = bytes.len() - good;
        if torn_bytes > 0 {
            append::cut_to(&file, path, good)?;
        }
        file.seek(SeekFrom::Start(good as u64)).map_err(io)?;
        let items: Vec<StoredItem> = append::parse_lines::<StoredItem>(
            path,
            &bytes[..good],
            "store is not valid UTF-8",
            "not a generated item",
        )?
        .into_iter()
        .map(|(_, item)| item)
        .collect();
        let store = Store {
            path: path.to_path_buf(),
            file,
            len: items.len(),
        };
        Ok(Opened {
            store,
            items,
            torn_bytes,
        })
    }

    /// Number of items in the store.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one item durably: one write of the whole line, then fsync.
    pub fn append(&mut self, item: &StoredItem) -> Result<()> {
        append::append_line(&mut self.file, &self.path, item, "a stored item")?;
        self.len += 1;
        Ok(())
    }
}

/// Make a new file's directory entry durable (best effort: not every platform allows it).
fn sync_parent(path: &Path) {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn item(p: u64) -> StoredItem {
        StoredItem {
            instruction: format!("Instruction {p}"),
            input: String::new(),
            output: "out".into(),
            prompt: p,
            position: 0,
            seed: 1,
            teacher: "t".into(),
            usage: Usage::default(),
            most_similar_instructions: vec![Similar {
                instruction: "x".into(),
                score: 0.25,
            }],
            avg_similarity_score: 0.1,
        }
    }

    #[test]
    fn torn_line_is_cut_and_appends_continue() {
        let dir = std::env::temp_dir().join(format!("alpaca-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.jsonl");
        let mut o = Store::open(&path, OpenMode::Overwrite).unwrap();
        o.store.append(&item(0)).unwrap();
        o.store.append(&item(1)).unwrap();
        drop(o);
        assert!(Store::open(&path, OpenMode::Create).is_err());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"instruction\": \"half").unwrap();
        drop(f);
        let mut o = Store::open(&path, OpenMode::Resume).unwrap();
        assert_eq!(o.torn_bytes, 21);
        assert_eq!(o.items, vec![item(0), item(1)]);
        o.store.append(&item(2)).unwrap();
        drop(o);
        let o = Store::open(&path, OpenMode::Resume).unwrap();
        assert_eq!(o.torn_bytes, 0);
        assert_eq!(o.items.len(), 3);
        // The store is a valid data file.
        let d = crate::data::io::read_examples(&path).unwrap();
        assert_eq!(d.examples[2], item(2).example());
        std::fs::write(&path, "{\"instruction\": 1}\n").unwrap();
        let err = Store::open(&path, OpenMode::Resume)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("s.jsonl:1: not a generated item"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
