//! `merge_and_unload`: fold attached LoRA branches into the base weights and write an HF
//! checkpoint (`model.safetensors` + `config.json`) that any transformers-compatible tool loads.

use std::io::Write;
use std::path::Path;

use bedside_model::{Arch, Model, ModelConfig, RopeScaling};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::error::{io_err, LoraError, Result};

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
pub fn write_merged_safetensors(
    model: &mut Model,
    path: &Path,
    dtype: DType,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
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
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for (name, shape, _) in &items {
        let n: usize = shape.iter().product::<usize>() * elem;
        header.insert(name.clone(), json!({"dtype": st_dtype, "shape": shape, "data_offsets": [off, off + n]}));
        off += n;
    }
    let mut hbytes = serde_json::to_vec(&Value::Object(header)).map_err(|e| LoraError::Mismatch(e.to_string()))?;
    while hbytes.len() % 8 != 0 {
        hbytes.push(b' ');
    }
    let total = items.len();
    bedside_io::write_atomic_with(path, |w| -> Result<()> {
        w.write_all(&(hbytes.len() as u64).to_le_bytes()).map_err(io_err(path))?;
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
