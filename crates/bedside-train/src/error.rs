use std::path::PathBuf;

/// What can stop a training run. Errors about user input name the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Data(String),
    /// The loss stopped being a finite number.
    #[error("{0}")]
    NonFinite(String),
    /// Trainable parameters whose gradient is missing or exactly zero at the first step.
    #[error(
        "{} trainable parameter(s) got an exactly-zero gradient at the first step (an op on their path records no backward, e.g. a fused kernel or a quantized matmul): {}",
        .0.len(),
        .0.join(", ")
    )]
    ZeroGradient(Vec<String>),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] bedside_model::ModelError),
    #[error(transparent)]
    Generate(#[from] bedside_generate::GenerateError),
    #[error(transparent)]
    Tokenizer(#[from] bedside_tokenizer::TokenizerError),
    #[error(transparent)]
    Lora(#[from] bedside_lora::LoraError),
    #[error(transparent)]
    DataCorpus(#[from] bedside_data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |err| TrainError::Io { path: path.to_path_buf(), err }
}
