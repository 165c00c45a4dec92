//! Resume state: `<out_dir>/recipe_state.json`, one record per stage.
//!
//! A stage's hash covers its own config section and the content of its inputs (upstream
//! outputs, data files, models). A stage is skipped when its record says `done` with the
//! current hash. A stage that started with the current hash but did not finish resumes its
//! own partial work (the generation store, the training checkpoint); a stage whose hash
//! changed starts over. The file is rewritten atomically after every change.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What is known about one stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Hash of the config and inputs the stage last started with.
    pub hash: String,
    /// True once the stage finished with that hash.
    pub done: bool,
    /// Wall seconds of the run that finished it (all attempts added up).
    pub wall_s: f64,
    /// Stage numbers for the summary table.
    pub summary: serde_json::Value,
}

/// The state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub stages: BTreeMap<String, StageRecord>,
    #[serde(skip)]
    path: PathBuf,
}

impl State {
    /// Load `<dir>/recipe_state.json`, or start empty.
    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join("recipe_state.json");
        let mut st = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<State>(&text).map_err(|e| Error::Data {
                path: path.clone(),
                line: e.line(),
                reason: format!("not a recipe state file ({e}); delete it to start over"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        st.path = path;
        Ok(st)
    }

    pub fn get(&self, stage: &str) -> Option<&StageRecord> {
        self.stages.get(stage)
    }

    /// True when `stage` finished with this hash.
    pub fn is_done(&self, stage: &str, hash: &str) -> bool {
        self.get(stage).is_some_and(|r| r.done && r.hash == hash)
    }

    /// True when `stage` started (and maybe stopped half-way) with this hash.
    pub fn started_with(&self, stage: &str, hash: &str) -> bool {
        self.get(stage).is_some_and(|r| r.hash == hash)
    }

    /// Record that `stage` starts with `hash`. Keeps the wall time of earlier attempts with
    /// the same hash; returns it.
    pub fn start(&mut self, stage: &str, hash: &str) -> Result<f64> {
        let prev = self
            .get(stage)
            .filter(|r| r.hash == hash)
            .map_or(0.0, |r| r.wall_s);
        self.stages.insert(
            stage.to_string(),
            StageRecord {
                hash: hash.to_string(),
                done: false,
                wall_s: prev,
                summary: serde_json::Value::Null,
            },
        );
        self.save()?;
        Ok(prev)
    }

    /// Add wall time to an unfinished stage (saved, so a later kill keeps it).
    pub fn add_wall(&mut self, stage: &str, secs: f64) -> Result<()> {
        if let Some(r) = self.stages.get_mut(stage) {
            r.wall_s += secs;
        }
        self.save()
    }

    /// Record that `stage` finished.
    pub fn finish(&mut self, stage: &str, wall_s: f64, summary: serde_json::Value) -> Result<()> {
        if let Some(r) = self.stages.get_mut(stage) {
            r.done = true;
            r.wall_s = wall_s;
            r.summary = summary;
        }
        self.save()
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("serialising the recipe state: {e}")))?;
        crate::data::io::write_atomic(&self.path, text.as_bytes())
    }
}

/// A running hash over a stage's config and inputs (FNV-1a 64 folded over 64-bit words;
/// not cryptographic: it only has to notice a change).
#[derive(Debug, Clone)]
pub struct StageHash(u64);

impl Default for StageHash {
    fn default() -> Self {
        StageHash(0xcbf2_9ce4_8422_2325)
    }
}

impl StageHash {
    pub fn new(stage: &str) -> Self {
        let mut h = StageHash::default();
        h.bytes(stage.as_bytes());
        h
    }

    pub fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Length-delimit so that ("ab", "c") and ("a", "bc") differ.
        for x in (b.len() as u64).to_le_bytes() {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Any serializable value (a config section).
    pub fn value<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let s = serde_json::to_string(v)
            .map_err(|e| Error::Internal(format!("hashing a config section: {e}")))?;
        self.bytes(s.as_bytes());
        Ok(())
    }

    /// A file's whole content (a missing file hashes as such, so creating it changes the hash).
    pub fn file(&mut self, path: &Path) -> Result<()> {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.bytes(b"<missing>");
                return Ok(());
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            let (words, rest) = buf[..n].split_at(n - n % 8);
            for w in words.chunks_exact(8) {
                let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                h = (h ^ x).wrapping_mul(0x0000_0100_0000_01b3);
                h ^= h >> 29;
            }
            for &x in rest {
                h = (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        self.bytes(&h.to_le_bytes());
        self.bytes(&total.to_le_bytes());
        Ok(())
    }

    pub fn finish(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_sees_config_and_content_changes() {
        let dir = std::env::temp_dir().join(format!("alpaca-recipe-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("in.txt");
        std::fs::write(&f, "hello world, some bytes").expect("write");
        let h = |cfg: u32| {
            let mut h = StageHash::new("train");
            h.value(&cfg).expect("value");
            h.file(&f).expect("file");
            h.finish()
        };
        let a = h(1);
        assert_eq!(a, h(1));
        assert_ne!(a, h(2));
        std::fs::write(&f, "hello world, some bytez").expect("write");
        assert_ne!(a, h(1));

        let mut st = State::load(&dir).expect("load");
        assert!(!st.is_done("train", &a));
        st.start("train", &a).expect("start");
        st.add_wall("train", 2.0).expect("wall");
        assert!(st.started_with("train", &a) && !st.is_done("train", &a));
        // A restart with the same hash keeps the time already spent.
        let mut st = State::load(&dir).expect("load");
        assert_eq!(st.start("train", &a).expect("start"), 2.0);
        st.finish("train", 5.0, serde_json::json!({"loss": 1.5}))
            .expect("finish");
        let st = State::load(&dir).expect("reload");
        assert!(st.is_done("train", &a));
        assert!(!st.is_done("train", "other"));
        assert_eq!(st.get("train").expect("rec").summary["loss"], 1.5);
        std::fs::remove_dir_all(&dir).ok();
    }
}
