//! Generation for bedside: a loaded [`Engine`] (model + tokenizer + chat template), seeded
//! [`sampling`], stop strings, UTF-8-safe streaming, batched generation of many prompts, and
//! continuous batching ([`batch`]) of requests that come and go, each with its own adapter.

pub mod adapters;
pub mod batch;
pub mod engine;
pub mod sampling;
pub mod sequence;
pub mod stop;

pub use adapters::RowAdapters;
pub use batch::{ContinuousBatch, Request, Update};
pub use engine::{Engine, EngineOptions, FinishReason, Generation};
pub use sampling::{Sampler, SamplingParams};
pub use sequence::{ChosenLogprob, Sequence, TokenLogprob};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] bedside_model::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] bedside_tokenizer::TokenizerError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Lora(#[from] bedside_lora::LoraError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Callback(String),
}

pub type Result<T> = std::result::Result<T, GenerateError>;
