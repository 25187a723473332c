//! `merge_and_unload`: fold attached LoRA branches into the base weights and write an HF
//! checkpoint (`model.safetensors` + `config.json`) that any transformers-compatible tool loads.
//! [`write_hf_checkpoint`] assembles the whole directory: weights, config, tokenizer files and
//! the merge's provenance.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bedside_io::safetensors::TensorEntry;
use bedside_model::{Arch, Model, ModelConfig, ModelLocation, RopeScaling};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::error::{io_err, LoraError, Result};
use crate::peft::atomic_write;

fn dtype_name(d: DType) -> Result<(&'static str, &'static str)> {
    Ok(match d {
        DType::F32 => ("F32", "float32"),
        DType::F16 => ("F16", "float16"),
        DType::BF16 => ("BF16", "bfloat16"),
        other => return Err(LoraError::Mismatch(format!("cannot write merged weights as {other:?} (use f32, f16 or bf16)"))),
    })
}

/// What goes into the merged file, in HF names and order.
enum Item {
    Dense(Tensor),
    Linear(usize),
    LmHead,
}

/// Write every weight of `model` (LoRA branches merged: `W + Σ scale·B·A`) to `path` as one HF
/// safetensors file in `dtype`, streaming one tensor at a time (a large model never exists twice
/// in memory). `progress(done, total)` is called after each tensor. Atomic (`bedside_io`).
pub fn write_merged_safetensors(model: &mut Model, path: &Path, dtype: DType, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
    let (st_dtype, _) = dtype_name(dtype)?;
    let cfg = model.cfg.clone();
    let h = cfg.hidden_size;
    // Cheap clones (shared storage), so the projections can be borrowed mutably below.
    let embed = model.embed_tokens.to_dense(model.dtype())?;
    let final_norm = model.norm.weight.clone();
    let lm_head = model.lm_head.clone();
    let norms: Vec<(Tensor, Tensor)> =
        model.layers.iter().map(|b| (b.input_layernorm.weight.clone(), b.post_attention_layernorm.weight.clone())).collect();
    let linears = model.linears_mut();
    let per_layer = linears.len() / cfg.num_layers.max(1);
    let mut items: Vec<(String, Vec<usize>, Item)> = Vec::new();
    items.push(("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h], Item::Dense(embed)));
    for (i, (n_in, n_post)) in norms.into_iter().enumerate() {
        items.push((format!("model.layers.{i}.input_layernorm.weight"), vec![h], Item::Dense(n_in)));
        for (j, (n, l)) in linears.iter().enumerate().skip(i * per_layer).take(per_layer) {
            items.push((format!("{n}.weight"), vec![l.out_dim(), l.in_dim()], Item::Linear(j)));
        }
        items.push((format!("model.layers.{i}.post_attention_layernorm.weight"), vec![h], Item::Dense(n_post)));
    }
    items.push(("model.norm.weight".into(), vec![h], Item::Dense(final_norm)));
    if !cfg.tie_word_embeddings {
        items.push(("lm_head.weight".into(), vec![cfg.vocab_size, h], Item::LmHead));
    }
    // Header first: offsets follow from shapes alone.
    let elem = dtype.size_in_bytes();
    let entries: Vec<TensorEntry> = items
        .iter()
        .map(|(name, shape, _)| TensorEntry { name, dtype: st_dtype, shape, bytes: shape.iter().product::<usize>() * elem })
        .collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let hbytes = bedside_io::safetensors::header(&entries, Some(&meta)).map_err(|e| LoraError::Mismatch(e.to_string()))?;
    let total = items.len();
    bedside_io::write_atomic_with(path, |w| -> Result<()> {
        w.write_all(&hbytes).map_err(io_err(path))?;
        for (k, (tname, shape, item)) in items.iter().enumerate() {
            let t = match item {
                Item::Dense(t) => t.clone(),
                Item::Linear(j) => linears[*j].1.merged_weight(DType::F32)?,
                Item::LmHead => lm_head.merged_weight(DType::F32)?,
            };
            if t.dims() != shape.as_slice() {
                return Err(LoraError::Mismatch(format!("tensor '{tname}' has shape {:?}, expected {shape:?}", t.dims())));
            }
            let t = t.to_dtype(dtype)?;
            // A NaN or infinity (from the base, or an update too large for the dtype) would make
            // a checkpoint that loads and answers nothing: refuse it, and keep no partial file.
            let flat = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if let Some(i) = flat.iter().position(|x| !x.is_finite()) {
                return Err(LoraError::Mismatch(format!(
                    "merged tensor '{tname}' would hold a non-finite value ({}) at element {i} as {dtype:?}; nothing was written",
                    flat[i]
                )));
            }
            write_tensor(w, &t).map_err(io_err(path))?;
            progress(k + 1, total);
        }
        Ok(())
    })
    .map_err(|e| e.into_inner(io_err(path)))
}

fn write_tensor(w: &mut dyn Write, t: &Tensor) -> std::io::Result<()> {
    let flat = t.to_device(&Device::Cpu).and_then(|t| t.flatten_all()).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(flat.elem_count() * t.dtype().size_in_bytes());
    match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>().map_err(std::io::Error::other)?.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        DType::F16 => flat
            .to_vec1::<half::f16>()
            .map_err(std::io::Error::other)?
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_bits().to_le_bytes())),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()
            .map_err(std::io::Error::other)?
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_bits().to_le_bytes())),
        d => return Err(std::io::Error::other(format!("unsupported dtype {d:?}"))),
    }
    w.write_all(&buf)
}

/// HF tokenizer and generation files copied as they are from an HF base directory.
const HF_SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// The name `config.json` gives a dtype (`torch_dtype`); f32 for anything not f16 or bf16.
pub fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Write `model` (its LoRA branches attached) into the directory `out` as an HF checkpoint
/// that transformers loads: `model.safetensors` in `dtype` (see [`write_merged_safetensors`];
/// `progress` as there), `config.json`, the tokenizer, and `bedside_merge.json` recording the
/// base and `adapters` (directory, weight). From an HF base directory its `config.json` is kept
/// (dtype updated, `quantization_config` dropped: the weights are dense now) and its tokenizer
/// files are copied; from a GGUF base (`gguf` its header) both are rebuilt from the metadata.
/// Every file is written atomically; `out` is created if missing.
pub fn write_hf_checkpoint(
    model: &mut Model,
    base: &ModelLocation,
    gguf: Option<&gguf_file::Content>,
    adapters: &[(PathBuf, f64)],
    out: &Path,
    dtype: DType,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    write_merged_safetensors(model, &out.join("model.safetensors"), dtype, progress)?;
    let torch = torch_dtype_name(dtype);
    match (base, gguf) {
        (ModelLocation::Gguf(path), Some(content)) => write_gguf_side_files(&model.cfg, path, content, out, dtype)?,
        (base, _) => {
            let dir = base.path();
            let cfg_path = dir.join("config.json");
            let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
            let mut cfg: Value = serde_json::from_str(&text)
                .map_err(|e| LoraError::Invalid { path: cfg_path.clone(), msg: format!("malformed JSON: {e}") })?;
            cfg["torch_dtype"] = json!(torch);
            // Merged weights are plain dense tensors, whatever quantization the base declared.
            if let Some(o) = cfg.as_object_mut() {
                o.remove("quantization_config");
            }
            write_json(&out.join("config.json"), &cfg)?;
            for f in HF_SIDE_FILES {
                let src = dir.join(f);
                if src.is_file() {
                    let bytes = std::fs::read(&src).map_err(io_err(&src))?;
                    atomic_write(&out.join(f), &bytes)?;
                }
            }
        }
    }
    // Where the merge came from, kept out of config.json (see the PEFT notes in formats.md).
    let prov = json!({
        "bedside_version": env!("CARGO_PKG_VERSION"),
        "base_model": base.path().display().to_string(),
        "adapters": adapters.iter().map(|(d, w)| json!({"path": d.display().to_string(), "weight": w})).collect::<Vec<_>>(),
        "dtype": torch,
    });
    write_json(&out.join("bedside_merge.json"), &prov)
}

/// `config.json`, `tokenizer.json` and `tokenizer_config.json` rebuilt from a GGUF base's
/// metadata (`path` the file, `content` its header).
fn write_gguf_side_files(cfg: &ModelConfig, path: &Path, content: &gguf_file::Content, out: &Path, dtype: DType) -> Result<()> {
    let mut cfg_model = cfg.clone();
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        let mut f = std::fs::File::open(path).map_err(io_err(path))?;
        let freqs = content.tensor(&mut f, "rope_freqs.weight", &Device::Cpu)?.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let scaling = llama3_scaling_from_freqs(&cfg_model, &freqs).ok_or_else(|| LoraError::Invalid {
            path: path.to_path_buf(),
            msg: "rope_freqs.weight matches no standard llama3 rope scaling, so config.json cannot describe it".into(),
        })?;
        cfg_model.rope_scaling = Some(scaling);
    }
    let mut hf_cfg = hf_config_json(&cfg_model, dtype)?;
    let tok = bedside_tokenizer::ModelTokenizer::from_gguf(path, content)?;
    if let Some(id) = tok.bos_id() {
        hf_cfg["bos_token_id"] = json!(id);
    }
    if let Some(id) = tok.eos_id() {
        hf_cfg["eos_token_id"] = json!(id);
    }
    write_json(&out.join("config.json"), &hf_cfg)?;
    // The tokenizer rebuilt from GGUF metadata, saved as tokenizer.json, with the chat
    // template and special tokens in tokenizer_config.json.
    let tokenizer_path = out.join("tokenizer.json");
    let json = serde_json::to_string_pretty(tok.inner())
        .map_err(|e| LoraError::Invalid { path: tokenizer_path.clone(), msg: format!("serializing the tokenizer: {e}") })?;
    atomic_write(&tokenizer_path, json.as_bytes())?;
    let mut tc = json!({
        "add_bos_token": tok.add_bos(),
        "add_eos_token": false,
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
        "model_max_length": cfg_model.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(t) = bedside_tokenizer::ChatTemplate::from_gguf(content) {
        tc["chat_template"] = json!(t);
    }
    write_json(&out.join("tokenizer_config.json"), &tc)
}

/// `value` as pretty-printed JSON, written atomically.
fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| LoraError::Invalid { path: path.to_path_buf(), msg: e.to_string() })?;
    atomic_write(path, text.as_bytes())
}

/// An HF `config.json` for `cfg` (used when the base was a GGUF file and has none).
pub fn hf_config_json(cfg: &ModelConfig, dtype: DType) -> Result<Value> {
    let (_, torch) = dtype_name(dtype)?;
    let (arch, model_type) = match cfg.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Mixtral => ("MixtralForCausalLM", "mixtral"),
    };
    let mut v = json!({
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "torch_dtype": torch,
    });
    if let Some(m) = &cfg.moe {
        v["num_local_experts"] = json!(m.num_experts);
        v["num_experts_per_tok"] = json!(m.top_k);
    }
    match &cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => v["rope_scaling"] = json!({"rope_type": "linear", "factor": factor}),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            v["rope_scaling"] = json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            })
        }
        None => {}
    }
    Ok(v)
}

/// Llama 3.1/3.2 GGUFs carry their rope scaling only as precomputed divisors
/// (`rope_freqs.weight`); an HF config needs the parameters. Find the standard llama3 parameters
/// that reproduce the divisors, or `None`.
pub fn llama3_scaling_from_freqs(cfg: &ModelConfig, divisors: &[f32]) -> Option<RopeScaling> {
    let d = cfg.head_dim;
    for factor in [8.0, 32.0, 16.0, 4.0, 2.0] {
        for old in [8192usize, 4096, 2048, 16384, 32768] {
            let (low, high) = (1.0, 4.0);
            let ok = (0..d / 2).all(|j| {
                let f = 1.0 / cfg.rope_theta.powf(2.0 * j as f64 / d as f64);
                let wl = 2.0 * std::f64::consts::PI / f;
                let (low_wl, high_wl) = (old as f64 / low, old as f64 / high);
                let scaled = if wl > low_wl {
                    f / factor
                } else if wl >= high_wl {
                    let smooth = (old as f64 / wl - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                } else {
                    f
                };
                divisors.get(j).is_some_and(|&div| ((f / scaled) - div as f64).abs() <= 1e-3 * div.abs().max(1.0) as f64)
            });
            if ok {
                return Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: old,
                });
            }
        }
    }
    None
}
