//! The data room: instruction examples and everything that can be done to them without a model.
//!
//! - [`Example`] is the Alpaca record `{instruction, input, output}`.
//! - [`io`] reads and writes Alpaca JSON lists, JSONL, ShareGPT and OpenAI `messages` files
//!   (optionally gzip-compressed) and the Self-Instruct seed format.
//! - [`filter`] holds the self-instruct instruction filters of the original and our output filters.
//! - [`rouge`] is a bit-exact re-implementation of Google's `rouge_score` ROUGE-L (no stemming).
//! - [`dedup`] is the ROUGE-L near-duplicate index: bit-parallel LCS, cheap bounds, all cores.
//! - [`stats`] and [`svg`] summarise a data set and draw it as a hand-written SVG.
//!
//! This room is pure: no network, no tensors, no printing. Prompt templates for training live in
//! `data/template.rs` (another room's file).

pub mod append;
pub mod dedup;
pub mod filter;
pub mod io;
pub mod rouge;
pub mod stats;
pub mod svg;
pub mod template;

use serde::{Deserialize, Serialize};

/// One instruction-following demonstration, the unit of every Alpaca-style data set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// What the user asks for.
    pub instruction: String,
    /// Optional context for the instruction; empty when the task needs none.
    #[serde(default)]
    pub input: String,
    /// The demonstration answer.
    pub output: String,
}

impl Example {
    pub fn new(
        instruction: impl Into<String>,
        input: impl Into<String>,
        output: impl Into<String>,
    ) -> Self {
        Example {
            instruction: instruction.into(),
            input: input.into(),
            output: output.into(),
        }
    }
}
