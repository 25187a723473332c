//! Arguments shared by every command that loads a model.

use std::path::PathBuf;

use anyhow::Result;
use bedside_generate::{Engine, EngineOptions, SamplingParams};
use bedside_model::LoadOptions;
use candle_core::DType;
use clap::{Args, ValueEnum};

/// The embedded default model, fetched by `scripts/setup.sh`.
pub const DEFAULT_MODEL: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl From<DtypeArg> for DType {
    fn from(d: DtypeArg) -> DType {
        match d {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
        }
    }
}

/// Element type of the key/value cache.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KvCacheArg {
    F32,
    F16,
}

impl From<KvCacheArg> for DType {
    fn from(d: KvCacheArg) -> DType {
        match d {
            KvCacheArg::F32 => DType::F32,
            KvCacheArg::F16 => DType::F16,
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// A GGUF file, an HF model directory, or a hub id org/name[@revision][:QUANT or :file.gguf]
    /// (a quant tag such as Q4_K_M picks the repository's GGUF file, as llama.cpp's -hf does).
    #[arg(short, long, env = "BEDSIDE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weight and activation dtype for safetensors models (and for --dequantize).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Dequantize GGUF weights instead of running quantized matmuls. The same weights, but
    /// activations are no longer rounded to 8 bits in one-row matmuls (decoding), so where two
    /// tokens are nearly tied the answer can differ from the quantized run's, with or without
    /// an adapter (f32 is also what training on a quantized base computes).
    #[arg(long)]
    pub dequantize: bool,
    /// Store the key/value cache as f16 (half the memory, llama.cpp's default; attention reads
    /// the rounded keys and values, so answers can differ slightly from an f32 cache's) or f32
    /// [default: the activations' type, f32 on the CPU].
    #[arg(long, value_enum, value_name = "TYPE")]
    pub kv_cache: Option<KvCacheArg>,
    /// Use only the local hub cache; no network code runs (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// A Jinja chat template to use instead of the model's own.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// A PEFT LoRA adapter directory (or hub id org/name[@revision] of an adapter repository) to
    /// apply, optionally with a weight (DIR:0.5; default 1.0).
    /// Repeatable: several adapters add up. On a dense f32 base (f32 safetensors, or a GGUF with
    /// --dequantize) it is merged into the weights; otherwise attached as LoRA branches.
    #[arg(long = "adapter", value_name = "DIR[:WEIGHT]", value_parser = parse_adapter)]
    pub adapters: Vec<(PathBuf, f64)>,
}

/// `DIR[:WEIGHT]`: a trailing `:NUMBER` is the weight; anything else is part of the path.
pub fn parse_adapter(s: &str) -> std::result::Result<(PathBuf, f64), String> {
    if s.is_empty() {
        return Err("expected an adapter directory, DIR or DIR:WEIGHT".into());
    }
    if let Some((dir, w)) = s.rsplit_once(':') {
        if let Ok(weight) = w.parse::<f64>() {
            if !weight.is_finite() {
                return Err(format!("adapter weight '{w}' must be a finite number"));
            }
            if dir.is_empty() {
                return Err(format!("'{s}': the adapter directory is missing before ':'"));
            }
            return Ok((PathBuf::from(dir), weight));
        }
    }
    Ok((PathBuf::from(s), 1.0))
}

impl ModelArgs {
    pub fn engine_options(&self) -> Result<EngineOptions> {
        Ok(EngineOptions {
            load: LoadOptions {
                device: bedside_model::parse_device(&self.device)?,
                dtype: self.dtype.map(Into::into),
                dequantize: self.dequantize,
                kv_cache: self.kv_cache.map(Into::into),
            },
            offline: self.offline,
            chat_template: self.chat_template.clone(),
            adapters: self.adapters.clone(),
        })
    }

    pub fn load(&self) -> Result<Engine> {
        Ok(Engine::load(&self.model, &self.engine_options()?)?)
    }
}

#[derive(Debug, Args, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 means greedy (plain argmax unless --repeat-penalty is given).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f64,
    /// Penalise recently used tokens (1.0 = off, the default, as in llama.cpp, transformers and
    /// OpenAI's API; llama.cpp's old default was 1.1).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed: the same seed, prompt and settings give the same answer.
    #[arg(long, default_value_t = 299792458)]
    pub seed: u64,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Stop when this string appears (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
        };
        p.validate().map_err(anyhow::Error::msg)?;
        Ok(p)
    }
}
