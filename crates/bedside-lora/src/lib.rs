//! LoRA adapters for bedside, PEFT-exact.
//!
//! - [`LoraConfig`] reads and writes PEFT's `adapter_config.json` (rsLoRA, rank/alpha patterns).
//! - [`attach_trainable`] puts fresh branches on a [`bedside_model::Model`] (A Kaiming-uniform,
//!   B zero, as PEFT) and returns the `Var`s to train; [`save_peft`] writes them as PEFT does.
//! - [`merge`] writes base + adapter as an HF checkpoint; [`gguf`] exports a llama.cpp GGUF LoRA.
//! - [`load_peft`] + [`attach`] serve saved adapters (several at once, each with a weight) on any
//!   base, safetensors or GGUF: bedside keeps weights in HF layout, so PEFT factors apply as is.

pub mod config;
pub mod error;
pub mod gguf;
pub mod merge;
pub mod peft;

pub use config::LoraConfig;
pub use error::{LoraError, Result};
pub use peft::{
    apply, atomic_write, attach, attach_trainable, detach_all, load_peft, merge_into, parse_key, peft_key, save_peft, save_peft_tensors,
    unmerge, Adapter, Applied, Factor, LoraPair, Unmerge, CONFIG_FILE, WEIGHTS_FILE,
};
