use std::path::PathBuf;

/// What can go wrong with an adapter. Errors from files name the file (and the tensor key or
/// JSON field at fault).
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    /// An adapter that does not fit the model it is attached to (names the key).
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Model(#[from] bedside_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A GGUF base's tokenizer could not be rebuilt (writing a merged checkpoint).
    #[error(transparent)]
    Tokenizer(#[from] bedside_tokenizer::TokenizerError),
}

pub type Result<T> = std::result::Result<T, LoraError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LoraError + '_ {
    move |err| LoraError::Io { path: path.to_path_buf(), err }
}
