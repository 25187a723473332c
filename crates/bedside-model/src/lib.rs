//! Llama-family models (Llama 2/3, SmolLM2, Mistral, Mixtral) for bedside.
//!
//! - [`load`] turns a [`ModelLocation`] (GGUF file or HF directory, see [`resolve`]) into a
//!   [`Model`] whose every projection is a LoRA-ready [`Linear`].
//! - GGUF weights stay quantized (or are dequantized on request); q/k rows are put in HF order at
//!   load time so one code path serves both formats.
//! - Every forward pass says what it is for ([`Mode`]): [`Model::forward`] is inference;
//!   training passes `Mode::Train` with the [`DropoutRng`] LoRA dropout draws from, and its ops
//!   record a backward.
//!
//! Modules (all internal; what other crates use is re-exported here):
//! - `model`: the decoder, its key/value cache and rotary tables; `embedding`: the token table;
//!   `linear`: the weight kinds and the LoRA branch; `mode`: inference or training.
//! - `kernels`: bedside-kernels' quantized CPU matmuls (8-bit activations) on candle's tensors
//!   and thread pool; `decode`: the fused CPU decode step (one position per row) built on them.
//! - `ops`: the training ops, each a CPU kernel with its own backward beside the composed
//!   reference it is tested against (attention, RMS norm, SwiGLU, frozen matmuls, the fused LoRA
//!   projection, dropout, the head's loss); `cpu`: the thread-pool, GEMM and weight-by-rows
//!   helpers they share.
//! - `weights`: reading GGUF and safetensors checkpoints; `config`, `hub` (finding model files),
//!   `inspect`, `device`, `error`.

mod config;
mod cpu;
mod decode;
mod device;
mod embedding;
mod error;
mod hub;
mod inspect;
mod kernels;
mod linear;
mod mode;
mod model;
mod ops;
mod weights;

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};

pub use config::{Arch, ModelConfig, MoeConfig, RopeScaling};
pub use device::{device_name, parse_device};
pub use embedding::Embedding;
pub use error::{ModelError, Result};
pub use hub::{offline_from_env, resolve, resolve_adapter, ModelLocation};
pub use inspect::{inspect, ModelInfo};
pub use linear::{BaseWeight, Linear, LoraBranch};
pub use mode::Mode;
pub use model::{Attention, Block, Cache, Expert, FeedForward, LayerKv, Logits, Model, ModelSource, Positions, RmsNorm};
pub use ops::dropout::DropoutRng;
pub use ops::frozen_matmul::DENSE_ROWS;
pub use ops::head_loss::{cross_entropy_sum, NO_TARGET};
pub use weights::permute_tensor_rows;

/// How to load weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Dtype of dense weights and activations for HF checkpoints (default f32). For GGUF it only
    /// applies together with `dequantize`.
    pub dtype: Option<DType>,
    /// Dequantize GGUF weights instead of running quantized matmuls.
    pub dequantize: bool,
    /// Element type of the key/value cache (see [`Model::set_kv_cache_dtype`]); `None` keeps
    /// the activations'.
    pub kv_cache: Option<DType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: None, dequantize: false, kv_cache: None }
    }
}

/// A loaded model and, for GGUF, its parsed header (tokenizer and chat template live there).
pub struct Loaded {
    pub model: Model,
    pub gguf: Option<gguf_file::Content>,
}

pub fn load(loc: &ModelLocation, opts: &LoadOptions) -> Result<Loaded> {
    match loc {
        ModelLocation::Gguf(p) => {
            let (model, content) = load_gguf(p, opts)?;
            Ok(Loaded { model, gguf: Some(content) })
        }
        ModelLocation::HfDir(d) => Ok(Loaded { model: load_hf_dir(d, opts)?, gguf: None }),
    }
}

pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<(Model, gguf_file::Content)> {
    let deq = opts.dequantize.then(|| opts.dtype.unwrap_or(DType::F32));
    let (mut src, cfg) = weights::GgufSource::open(path, &opts.device, deq)?;
    let mut model = Model::load(&mut src, cfg, &opts.device, "gguf")?;
    model.set_kv_cache_dtype(opts.kv_cache);
    Ok((model, src.content))
}

pub fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Model> {
    let cfg_path = dir.join("config.json");
    let cfg = ModelConfig::from_hf_file(&cfg_path)?;
    let mut src = weights::SafetensorsSource::open(dir, &opts.device, opts.dtype.unwrap_or(DType::F32))?;
    weights::check_layer_count(&cfg_path, "field 'num_hidden_layers'", cfg.num_layers, src.layers_on_disk())?;
    let mut model = Model::load(&mut src, cfg, &opts.device, "safetensors")?;
    model.set_kv_cache_dtype(opts.kv_cache);
    Ok(model)
}

/// Read only a GGUF header (for `info` and tokenizers) with file-naming errors.
pub fn read_gguf_header(path: &Path) -> Result<gguf_file::Content> {
    let mut f = std::fs::File::open(path).map_err(error::io_err(path))?;
    weights::read_gguf_content(path, &mut f)
}
