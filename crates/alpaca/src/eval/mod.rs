//! The evaluation room (`alpaca eval`): what fine-tuning changed.
//!
//! - [`loss`]: held-out loss and perplexity on response tokens only, on the very split
//!   `alpaca train` held out ([`loss::response_loss`], [`loss::RunSplit`]);
//! - [`items`]: instruction sets (Self-Instruct `user_oriented_instructions.jsonl`, Alpaca
//!   files) with stable ids;
//! - [`predict`]: answers of a model to an instruction set, batched, resumable JSONL;
//! - [`judge`]: judges that compare two answers (any teacher, a log-probability judge on a
//!   local model, a length heuristic);
//! - [`pairwise`]: AlpacaEval-style comparison of two prediction files, both orders,
//!   resumable, with wins/ties/losses and disagreements;
//! - [`bootstrap`]: the win rate's bootstrap confidence interval;
//! - [`rouge`]: ROUGE-L of predictions against references;
//! - [`report`]: the Markdown report and its SVG picture;
//! - [`log`]: the append-only JSONL file under predictions and judgments.
//!
//! The library never prints; progress goes through callbacks.

pub mod bootstrap;
pub mod items;
pub mod judge;
pub mod log;
pub mod loss;
pub mod pairwise;
pub mod predict;
pub mod report;
pub mod rouge;

pub use items::{read_items, EvalItem};
pub use loss::{response_loss, LossReport, RunSplit};
pub use predict::{predict, read_predictions, GenSettings, PredictConfig, Prediction};
