//! Errors. Every variant that comes from a file names the file, and where it can, the key.

use std::path::PathBuf;

/// The `pre` values this crate can rebuild a byte-level BPE tokenizer for.
pub(crate) const SUPPORTED_PRE: &str = "smollm, llama-bpe/llama3/llama-v3, gpt-2";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A GGUF or JSON key that is missing, has the wrong type, or holds a bad value.
    #[error("{path}: {key}: {message}")]
    Field { path: PathBuf, key: String, message: String },

    #[error(
        "{path}: tokenizer.ggml.pre = '{pre}' is not supported (supported: {SUPPORTED_PRE}); \
         supply a tokenizer.json"
    )]
    UnsupportedPre { path: PathBuf, pre: String },

    #[error(
        "{path}: tokenizer.ggml.pre is missing, so the pre-tokenizer of this gpt2 (byte-level BPE) \
         vocabulary is unknown (supported: {SUPPORTED_PRE}); supply a tokenizer.json"
    )]
    MissingPre { path: PathBuf },

    #[error(
        "{path}: tokenizer.ggml.model = '{model}' is not supported (supported: gpt2, llama); \
         supply a tokenizer.json"
    )]
    UnsupportedModel { path: PathBuf, model: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },

    /// The `tokenizers` crate refused to build or load the tokenizer.
    #[error("{path}: cannot build the tokenizer: {message}")]
    Build { path: PathBuf, message: String },

    #[error("encoding failed: {0}")]
    Encode(String),

    #[error("decoding failed: {0}")]
    Decode(String),

    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    IdOutOfRange { id: u32, vocab_size: usize },

    /// The chat template does not compile.
    #[error("chat template: syntax error: {0}")]
    TemplateSyntax(String),

    /// The chat template failed while rendering (including `raise_exception`).
    #[error("chat template: rendering failed: {0}")]
    TemplateRender(String),
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

impl TokenizerError {
    pub(crate) fn field(path: impl Into<PathBuf>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field { path: path.into(), key: key.into(), message: message.into() }
    }

    pub(crate) fn build(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::Build { path: path.into(), message: message.to_string() }
    }
}
