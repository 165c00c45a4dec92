//! `alpaca`: make and run your own instruction-following language model.
//!
//! Rooms (see `docs/DESIGN.md` of the shared documents): `model` (formats, kernels, the
//! LLaMA forward), `tokenizer`, `infer` (sampling, generation), `data` (examples, templates,
//! filters, ROUGE-L), `generate` (self-instruct). The library never parses argv, never exits
//! and never prints: it reports through return values and callbacks.

pub mod assets;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod generate;
pub mod infer;
pub mod model;
pub mod recipe;
pub mod rng;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
