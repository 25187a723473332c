//! LoRA supervised fine-tuning for bedside models.
//!
//! - [`config`]: every hyperparameter in one TOML file ([`TrainConfig`]), with overrides.
//! - [`data`]: dialogues → chat-template token ids with a loss mask on the assistant's answer.
//! - [`loss`]: HF's shifted, masked cross-entropy and the zero-gradient guard.
//! - [`optim`]: AdamW (PyTorch's decoupled weight decay), warmup + cosine/linear decay, clipping.
//! - [`run_state`]: the saved state of a run (atomic checkpoints to resume from).
//! - [`recompute`]: activation checkpointing (recompute layers in the backward).
//! - [`trainer`]: the loop, validation, `metrics.jsonl` and the loss-curve SVG.
//!
//! Every forward pass runs in `bedside_model::Mode::Train`, with the run's
//! `bedside_model::DropoutRng` (seeded from the config, saved in each checkpoint) or, for the
//! validation loss, without dropout. The base stays frozen, quantized or not: a quantized GGUF
//! base trains through a matmul whose backward dequantizes one weight at a time.

pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod loss;
pub mod optim;
pub mod recompute;
pub mod run_state;
pub mod svg;
pub mod trainer;

pub use config::{BaseMode, Override, Schedule, TrainConfig};
pub use error::{Result, TrainError};
pub use trainer::{attach_adapter_trainable, load_engine, peak_rss_bytes, rss_bytes, train, RunOptions, RunSummary};
