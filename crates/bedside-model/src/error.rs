use std::path::PathBuf;

/// Everything that can go wrong turning files on disk into a runnable model.
///
/// Every variant that comes from user input names the file (and tensor or field) at fault, so a
/// hospital admin looking at a log line knows which download is broken without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a valid GGUF file: {msg}")]
    Gguf { path: PathBuf, msg: String },
    #[error("{path}: truncated or corrupt: tensor '{tensor}' needs bytes {start}..{end} but the file has {file_len} bytes")]
    Truncated { path: PathBuf, tensor: String, start: u64, end: u64, file_len: u64 },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: tensor '{tensor}' is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has shape {got:?}, expected {expected:?}")]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("{path}: unsupported architecture '{arch}' (bedside runs llama, mistral and mixtral)")]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("{path}: tensor '{tensor}' has type {dtype}, which bedside cannot run")]
    UnsupportedDType { path: PathBuf, tensor: String, dtype: String },
    #[error("the sequence needs {needed} positions but the model's context is {limit} tokens")]
    ContextOverflow { needed: usize, limit: usize },
    #[error("model hub: {0}")]
    Hub(String),
    #[error("device: {0}")]
    Device(String),
    #[error("adapter {path}: {msg}")]
    Adapter { path: PathBuf, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |err| ModelError::Io { path: path.to_path_buf(), err }
}
