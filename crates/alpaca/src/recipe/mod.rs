//! The whole Alpaca recipe as one resumable pipeline of stages driven by a TOML config
//! (`alpaca recipe CONFIG.toml`).
//!
//! Stages: 1 models (locate), 2 generate (self-instruct with the teacher), 3 mix (existing data
//! files, the held-out split), 4 train, 5 eval (held-out response loss before and after),
//! 6 export (merged, quantized GGUF), 7 sample (an answer from the exported file, and its
//! speed).
//!
//! - [`config`]: the TOML config, defaults and validation;
//! - [`preflight`]: the checks that run before any long work (files, models, the teacher);
//! - [`state`]: stage hashes and the resume state;
//! - [`stages`]: the stage bodies, each a library call into its room;
//! - [`summary`]: the final table.
//!
//! Every stage is skipped when its record says it finished with the same hash (its config
//! section and the content of its inputs); an unfinished stage resumes its own partial work
//! (the generation store, the training checkpoint). The room never prints: it reports to an
//! [`Observer`].

pub mod config;
pub mod evalexport;
pub mod preflight;
pub mod stages;
pub mod state;
pub mod summary;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

pub use config::RecipeConfig;
pub use stages::{run, StageOutcome, STAGES};

use crate::generate::ProgressInfo;
use crate::train::Event;

/// What the recipe reports while it runs. Every method has a do-nothing default.
pub trait Observer {
    /// Stage `index` (1-based) of [`STAGES`] starts; `skipped`: its output is complete and
    /// its hash unchanged.
    fn stage_start(&mut self, _index: usize, _name: &str, _what: &str, _skipped: bool) {}
    /// A stage finished (or was skipped) with these numbers.
    fn stage_done(&mut self, _outcome: &StageOutcome) {}
    /// A one-line remark (resuming, starting over, where an output went).
    fn note(&mut self, _msg: &str) {}
    /// Generation progress, after every processed prompt.
    fn generate_progress(&mut self, _p: &ProgressInfo) {}
    /// A training event; `Break` stops training (the last checkpoint stays intact).
    fn train_event(&mut self, _e: &Event) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// Evaluation progress: `done` of `total` examples of the model `which` (before/after).
    fn eval_progress(&mut self, _which: &str, _done: usize, _total: usize) {}
    /// Text of the sample answer as it is generated.
    fn sample_text(&mut self, _text: &str) {}
}

/// Where a run keeps each artifact.
#[derive(Debug, Clone)]
pub struct Layout {
    pub out: PathBuf,
}

impl Layout {
    pub fn new(out: &Path) -> Self {
        Layout {
            out: out.to_path_buf(),
        }
    }
    pub fn store(&self) -> PathBuf {
        self.out.join("generate").join("store.jsonl")
    }
    pub fn train_data(&self) -> PathBuf {
        self.out.join("data").join("train.json")
    }
    pub fn held_out(&self) -> PathBuf {
        self.out.join("data").join("held_out.json")
    }
    pub fn train_dir(&self) -> PathBuf {
        self.out.join("train")
    }
    pub fn summary_md(&self) -> PathBuf {
        self.out.join("summary.md")
    }
}
