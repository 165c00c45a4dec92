//! One error type for the whole library, grouped by room.
//!
//! Variants carry the operation and the offending values (file path, line, field, GGUF key,
//! tensor name, shape) so that the CLI can print a one-line message that names the problem.
//! Classification for exit codes lives in [`Error::is_user_error`].

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---------------------------------------------------------------- I/O
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---------------------------------------------------------------- model files
    #[error("model not found at {path}. {hint}")]
    ModelNotFound { path: PathBuf, hint: String },
    #[error("{path}: not a valid GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("{path}: missing GGUF metadata key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: GGUF metadata key `{key}` has type {found}, expected {expected}")]
    KeyType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("unsupported architecture `{0}` (supported: llama, gemma3)")]
    UnsupportedArch(String),
    #[error("tensor `{name}`: unsupported weight type {ty}")]
    UnsupportedType { name: String, ty: String },
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    #[error("model config: {0}")]
    Config(String),

    // ---------------------------------------------------------------- tokenizer
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    // ---------------------------------------------------------------- inference
    #[error("prompt is {prompt} tokens but the context holds {ctx} (with {max_new} new tokens requested); shorten the prompt or lower -n")]
    ContextOverflow {
        prompt: usize,
        max_new: usize,
        ctx: usize,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("template: {0}")]
    Template(String),

    // ---------------------------------------------------------------- data
    #[error("{path}:{line}: {reason}")]
    Data {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    // ---------------------------------------------------------------- generate (teachers)
    #[error("teacher: {0}")]
    Teacher(String),

    // ---------------------------------------------------------------- train
    #[error("train: {0}")]
    Train(String),
    #[error("{path}: the data set has no examples")]
    EmptyDataset { path: PathBuf },
    #[error("--cutoff-len {cutoff} is shorter than every prompt (the shortest prompt is {shortest} tokens, and one target token is needed)")]
    CutoffTooShort { cutoff: usize, shortest: usize },
    #[error("loss is {loss} at step {step}: stopping (the last checkpoint is intact); lower --lr or raise --max-grad-norm")]
    NonFiniteLoss { step: usize, loss: f64 },
    #[error("this build has no CUDA support (use --device cpu, or rebuild with --features cuda: scripts/build-cuda.sh)")]
    NoCuda,

    // ---------------------------------------------------------------- internal
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Attach a path to an I/O error.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the user can fix the cause (bad input, missing file): exit code 1.
    /// Everything else is an internal error: exit code 2.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Internal(_))
    }
}
