//! Hyperparameters of a Llama-family model, read from HF `config.json` or GGUF metadata into one
//! struct so the architecture code never asks where a model came from.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::Value;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mixtral,
}

/// How rotary frequencies are adjusted for long context.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1's piecewise frequency scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Context length the model was trained for; generation refuses to go past it.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub moe: Option<MoeConfig>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parse an HF `config.json` (Llama, Mistral, Mixtral).
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_err(path))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config { path: path.into(), msg: format!("malformed JSON: {e}") })?;
        Self::from_hf_json(path, &v)
    }

    pub fn from_hf_json(path: &Path, v: &Value) -> Result<Self> {
        let err = |msg: String| ModelError::Config { path: path.into(), msg };
        if !v.is_object() {
            return Err(err("expected a JSON object".into()));
        }
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let archs: Vec<&str> =
            v.get("architectures").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "mixtral" => Arch::Mixtral,
            "" if archs.iter().any(|a| *a == "LlamaForCausalLM" || *a == "MistralForCausalLM") => Arch::Llama,
            "" if archs.contains(&"MixtralForCausalLM") => Arch::Mixtral,
            "" => return Err(err("field 'model_type' is missing".into())),
            other => return Err(ModelError::UnsupportedArch { path: path.into(), arch: other.into() }),
        };
        let usize_field = |name: &str| -> Result<usize> {
            match v.get(name) {
                None | Some(Value::Null) => Err(err(format!("field '{name}' is missing"))),
                Some(x) => x
                    .as_u64()
                    .filter(|n| *n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| err(format!("field '{name}' must be a positive integer, found {x}"))),
            }
        };
        let opt_usize = |name: &str| -> Result<Option<usize>> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => usize_field(name).map(Some),
            }
        };
        let opt_f64 = |obj: &Value, name: &str| -> Result<Option<f64>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_f64().map(Some).ok_or_else(|| err(format!("field '{name}' must be a number, found {x}"))),
            }
        };
        let hidden_size = usize_field("hidden_size")?;
        let num_heads = usize_field("num_attention_heads")?;
        let num_kv_heads = opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(err(format!("num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})")));
        }
        if head_dim % 2 != 0 {
            return Err(err(format!("head_dim {head_dim} must be even for rotary embeddings")));
        }
        // Newer transformers keep rope settings in `rope_parameters`; older ones use `rope_theta`
        // plus `rope_scaling`.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_theta = match rope_params {
            Some(p) => opt_f64(p, "rope_theta")?,
            None => None,
        }
        .or(opt_f64(v, "rope_theta")?)
        .unwrap_or(10000.0);
        let scaling_obj = rope_params.or(v.get("rope_scaling").filter(|s| s.is_object()));
        let rope_scaling = match scaling_obj {
            None => None,
            Some(s) => {
                let kind = s.get("rope_type").or(s.get("type")).and_then(Value::as_str).unwrap_or("default");
                let factor = || opt_f64(s, "factor")?.ok_or_else(|| err("rope scaling: field 'factor' is missing".into()));
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear { factor: factor()? }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: factor()?,
                        low_freq_factor: opt_f64(s, "low_freq_factor")?.unwrap_or(1.0),
                        high_freq_factor: opt_f64(s, "high_freq_factor")?.unwrap_or(4.0),
                        original_max_position_embeddings: s
                            .get("original_max_position_embeddings")
                            .and_then(Value::as_u64)
                            .ok_or_else(|| err("rope scaling llama3: field 'original_max_position_embeddings' is missing".into()))?
                            as usize,
                    }),
                    other => return Err(err(format!("rope scaling type '{other}' is not supported (supported: default, linear, llama3)"))),
                }
            }
        };
        // The architecture code computes SiLU-gated MLPs; anything else would run silently wrong.
        for key in ["hidden_act", "hidden_activation"] {
            match v.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(a)) if a == "silu" || a == "swish" => {}
                Some(x) => return Err(err(format!("field '{key}' is {x}; bedside runs only \"silu\" (SwiGLU) MLPs"))),
            }
        }
        let tie_word_embeddings = match v.get("tie_word_embeddings") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(x) => return Err(err(format!("field 'tie_word_embeddings' must be true or false, found {x}"))),
        };
        let moe = match arch {
            Arch::Mixtral => Some(MoeConfig { num_experts: usize_field("num_local_experts")?, top_k: usize_field("num_experts_per_tok")? }),
            Arch::Llama => None,
        };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_layers: usize_field("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: usize_field("vocab_size")?,
            rms_norm_eps: opt_f64(v, "rms_norm_eps")?.unwrap_or(1e-5),
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_usize("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings,
            moe,
        };
        cfg.validate(|f| format!("field '{}'", f.hf())).map_err(err)?;
        Ok(cfg)
    }

    /// Check values no model can run with, before anything is sized from them: positive and
    /// finite rope base and norm epsilon, sizes whose products fit (a hostile `hidden_size` must
    /// not overflow into a small allocation), a context the rotary tables can be built for.
    /// `name` spells a field as the file does.
    fn validate(&self, name: impl Fn(Field) -> String) -> std::result::Result<(), String> {
        let positive = |f: Field, x: f64| -> std::result::Result<(), String> {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(format!("{} must be a positive finite number, found {x}", name(f)))
            }
        };
        positive(Field::RopeTheta, self.rope_theta)?;
        positive(Field::RmsNormEps, self.rms_norm_eps)?;
        if self.rms_norm_eps >= 1.0 {
            let eps = self.rms_norm_eps;
            return Err(format!("{} is {eps}; an RMS-norm epsilon is a small number (1e-5, 1e-6)", name(Field::RmsNormEps)));
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) => positive(Field::RopeScalingFactor, *factor)?,
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                positive(Field::RopeScalingFactor, *factor)?;
                positive(Field::RopeScalingFactor, *low_freq_factor)?;
                positive(Field::RopeScalingFactor, *high_freq_factor)?;
                if high_freq_factor <= low_freq_factor || *original_max_position_embeddings == 0 {
                    return Err(format!(
                        "{}: llama3 rope scaling needs high_freq_factor > low_freq_factor and original_max_position_embeddings > 0",
                        name(Field::RopeScalingFactor)
                    ));
                }
            }
            None => {}
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(format!("{} is {}; rotary embeddings need an even, positive head size", name(Field::HeadDim), self.head_dim));
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            let (h, kv) = (self.num_heads, self.num_kv_heads);
            return Err(format!("{} ({h}) is not a multiple of {} ({kv})", name(Field::Heads), name(Field::KvHeads)));
        }
        // Every size the loader multiplies must fit with room to spare; real models are far
        // below these (Llama 3 405B: hidden 16384, FFN 53248, vocabulary 128256, 126 layers).
        let sizes = [
            (Field::Hidden, self.hidden_size),
            (Field::Intermediate, self.intermediate_size),
            (Field::Heads, self.num_heads),
            (Field::HeadDim, self.head_dim),
            (Field::Vocab, self.vocab_size),
        ];
        for (f, n) in sizes {
            if n > MAX_DIM {
                return Err(format!("{} is {n}, larger than any model bedside can run (at most {MAX_DIM})", name(f)));
            }
        }
        if self.num_layers > MAX_LAYERS {
            let n = self.num_layers;
            return Err(format!("{} is {n}, larger than any model bedside can run (at most {MAX_LAYERS})", name(Field::Layers)));
        }
        if let Some(m) = &self.moe {
            if m.num_experts > MAX_EXPERTS {
                return Err(format!("{} is {}, more than bedside supports ({MAX_EXPERTS})", name(Field::Experts), m.num_experts));
            }
            if m.top_k == 0 || m.top_k > m.num_experts {
                let (k, n) = (m.top_k, m.num_experts);
                return Err(format!("{} ({k}) must be between 1 and {} ({n})", name(Field::TopK), name(Field::Experts)));
            }
        }
        if self.max_position_embeddings == 0 || self.max_position_embeddings > MAX_CONTEXT {
            return Err(format!(
                "{} is {}; bedside builds rotary tables for contexts of 1 to {MAX_CONTEXT} tokens",
                name(Field::Context),
                self.max_position_embeddings
            ));
        }
        Ok(())
    }

    /// Read hyperparameters from GGUF metadata (`llama.*` keys).
    pub fn from_gguf(path: &Path, content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let err = |msg: String| ModelError::Gguf { path: path.into(), msg };
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .ok_or_else(|| err("metadata key 'general.architecture' is missing".into()))?;
        if arch != "llama" && arch != "mistral" {
            return Err(ModelError::UnsupportedArch { path: path.into(), arch });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let get_u = |k: &str| -> Result<Option<usize>> {
            match md.get(&key(k)) {
                None => Ok(None),
                Some(v) => v
                    .to_u64()
                    .or_else(|_| v.to_u32().map(u64::from))
                    .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
                    .map(|x| Some(x as usize))
                    .map_err(|_| err(format!("metadata key '{}' must be an integer", key(k)))),
            }
        };
        let need_u = |k: &str| -> Result<usize> {
            get_u(k)?.filter(|x| *x > 0).ok_or_else(|| err(format!("metadata key '{}' is missing or zero", key(k))))
        };
        let get_f = |k: &str| -> Result<Option<f64>> {
            match md.get(&key(k)) {
                None => Ok(None),
                Some(v) => v
                    .to_f32()
                    .map(f64::from)
                    .or_else(|_| v.to_f64())
                    .map(Some)
                    .map_err(|_| err(format!("metadata key '{}' must be a float", key(k)))),
            }
        };
        let hidden_size = need_u("embedding_length")?;
        let num_heads = need_u("attention.head_count")?;
        let num_kv_heads = get_u("attention.head_count_kv")?.unwrap_or(num_heads);
        let head_dim = get_u("attention.key_length")?.or(get_u("rope.dimension_count")?).unwrap_or(hidden_size / num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(err(format!("head_count {num_heads} is not a multiple of head_count_kv {num_kv_heads}")));
        }
        let vocab_size = match get_u("vocab_size")? {
            Some(v) => v,
            None => match md.get("tokenizer.ggml.tokens").map(|v| v.to_vec()) {
                Some(Ok(t)) => t.len(),
                _ => content
                    .tensor_infos
                    .get("token_embd.weight")
                    .map(|t| t.shape.dims()[0])
                    .ok_or_else(|| err("cannot tell the vocabulary size".into()))?,
            },
        };
        let rope_scaling = match md.get(&key("rope.scaling.type")).and_then(|v| v.to_string().ok()) {
            Some(t) if t == "linear" => get_f("rope.scaling.factor")?.map(|factor| RopeScaling::Linear { factor }),
            // Llama 3.1 GGUFs carry the llama3 factors precomputed in `rope_freqs.weight`;
            // the loader applies that tensor directly.
            _ => None,
        };
        let expert_count = get_u("expert_count")?.unwrap_or(0);
        let moe = if expert_count > 1 { Some(MoeConfig { num_experts: expert_count, top_k: need_u("expert_used_count")? }) } else { None };
        let cfg = ModelConfig {
            arch: if moe.is_some() { Arch::Mixtral } else { Arch::Llama },
            hidden_size,
            intermediate_size: need_u("feed_forward_length")?,
            num_layers: need_u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            rope_theta: get_f("rope.freq_base")?.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: get_u("context_length")?.unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            moe,
        };
        cfg.validate(|f| format!("metadata key '{}'", key(f.gguf()))).map_err(err)?;
        Ok(cfg)
    }
}

/// The largest hidden, FFN, head or vocabulary size accepted (2^20).
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 4096;
const MAX_EXPERTS: usize = 1024;
/// The longest context accepted: the rotary tables are built for all of it at load time.
pub const MAX_CONTEXT: usize = 1 << 21;

/// A hyperparameter, for naming it in an error as HF `config.json` or GGUF metadata spells it.
#[derive(Debug, Clone, Copy)]
enum Field {
    RopeTheta,
    RmsNormEps,
    RopeScalingFactor,
    HeadDim,
    Heads,
    KvHeads,
    Hidden,
    Intermediate,
    Vocab,
    Layers,
    Experts,
    TopK,
    Context,
}

impl Field {
    fn hf(self) -> &'static str {
        match self {
            Field::RopeTheta => "rope_theta",
            Field::RmsNormEps => "rms_norm_eps",
            Field::RopeScalingFactor => "rope_scaling",
            Field::HeadDim => "head_dim",
            Field::Heads => "num_attention_heads",
            Field::KvHeads => "num_key_value_heads",
            Field::Hidden => "hidden_size",
            Field::Intermediate => "intermediate_size",
            Field::Vocab => "vocab_size",
            Field::Layers => "num_hidden_layers",
            Field::Experts => "num_local_experts",
            Field::TopK => "num_experts_per_tok",
            Field::Context => "max_position_embeddings",
        }
    }

    /// The key after `{arch}.`.
    fn gguf(self) -> &'static str {
        match self {
            Field::RopeTheta => "rope.freq_base",
            Field::RmsNormEps => "attention.layer_norm_rms_epsilon",
            Field::RopeScalingFactor => "rope.scaling.factor",
            Field::HeadDim => "attention.key_length",
            Field::Heads => "attention.head_count",
            Field::KvHeads => "attention.head_count_kv",
            Field::Hidden => "embedding_length",
            Field::Intermediate => "feed_forward_length",
            Field::Vocab => "vocab_size",
            Field::Layers => "block_count",
            Field::Experts => "expert_count",
            Field::TopK => "expert_used_count",
            Field::Context => "context_length",
        }
    }
}
