//! PEFT → GGUF LoRA, as llama.cpp's `convert_lora_to_gguf.py` writes it, plus what that script
//! gets wrong: rsLoRA and per-module alpha are folded so llama.cpp's `alpha / r` scale is exact.
//!
//! llama.cpp applies `y = W·x + user_scale · (alpha / r) · B·(A·x)` (or `user_scale · B·(A·x)`
//! when `adapter.lora.alpha` is 0), with q/k rows in GGUF's interleaved-RoPE order.

use std::collections::BTreeMap;

use bedside_model::permute_tensor_rows;
use bedside_model::{Arch, ModelConfig};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::error::{LoraError, Result};
use crate::peft::Adapter;

/// Where an HF module lives in a GGUF model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTarget {
    /// Base tensor name, e.g. `blk.3.attn_q.weight` or `blk.0.ffn_gate_exps.weight`.
    pub tensor: String,
    /// Expert index for stacked Mixtral experts.
    pub expert: Option<usize>,
    /// Heads to permute q/k rows over (n_head for q, n_head_kv for k).
    pub permute_heads: Option<usize>,
    /// `[out, in]` of the module.
    pub dims: (usize, usize),
}

/// Map an HF module name to its GGUF tensor, checking it exists in a model of `cfg`.
pub fn gguf_target(module: &str, cfg: &ModelConfig) -> Option<GgufTarget> {
    let rest = module.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let i: usize = layer.parse().ok()?;
    if i >= cfg.num_layers {
        return None;
    }
    let (h, f, q, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim());
    let t = |name: &str, perm: Option<usize>, dims| {
        Some(GgufTarget { tensor: format!("blk.{i}.{name}.weight"), expert: None, permute_heads: perm, dims })
    };
    let dense = cfg.arch == Arch::Llama;
    match rest {
        "self_attn.q_proj" => t("attn_q", Some(cfg.num_heads), (q, h)),
        "self_attn.k_proj" => t("attn_k", Some(cfg.num_kv_heads), (kv, h)),
        "self_attn.v_proj" => t("attn_v", None, (kv, h)),
        "self_attn.o_proj" => t("attn_output", None, (h, q)),
        "mlp.gate_proj" if dense => t("ffn_gate", None, (f, h)),
        "mlp.up_proj" if dense => t("ffn_up", None, (f, h)),
        "mlp.down_proj" if dense => t("ffn_down", None, (h, f)),
        "block_sparse_moe.gate" => t("ffn_gate_inp", None, (cfg.moe.as_ref()?.num_experts, h)),
        _ => {
            let moe = cfg.moe.as_ref()?;
            let (e, w) = rest.strip_prefix("block_sparse_moe.experts.")?.split_once('.')?;
            let e: usize = e.parse().ok()?;
            if e >= moe.num_experts {
                return None;
            }
            let (name, dims) = match w {
                "w1" => ("ffn_gate_exps", (f, h)),
                "w3" => ("ffn_up_exps", (f, h)),
                "w2" => ("ffn_down_exps", (h, f)),
                _ => return None,
            };
            Some(GgufTarget { tensor: format!("blk.{i}.{name}.weight"), expert: Some(e), permute_heads: None, dims })
        }
    }
}

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct GgufExport {
    /// The GGUF file's bytes.
    pub bytes: Vec<u8>,
    /// `adapter.lora.alpha` as written.
    pub alpha: f32,
    /// Whether each module's PEFT scaling was multiplied into its `lora_b` (alpha written as 0).
    pub folded: bool,
    /// Number of `lora_a`/`lora_b` pairs written (stacked experts count once).
    pub pairs: usize,
    /// Experts with no factors in the adapter, written as zeros so each stack is complete.
    pub zero_filled_experts: usize,
}

/// Convert a PEFT adapter for a base of `cfg` into a llama.cpp GGUF LoRA.
///
/// `architecture` is the base GGUF's `general.architecture` (`llama` for Llama and Mixtral).
pub fn export_gguf(adapter: &Adapter, cfg: &ModelConfig, architecture: &str, name: Option<&str>) -> Result<GgufExport> {
    let c = &adapter.config;
    let pairs = adapter.pairs();
    if pairs.is_empty() {
        return Err(LoraError::Mismatch("the adapter holds no LoRA pairs".into()));
    }
    let ranks: std::collections::BTreeSet<usize> = pairs.iter().map(|p| p.rank()).collect();
    // llama.cpp multiplies by alpha / r with r from each lora_b, so one alpha is exact for plain
    // LoRA; rsLoRA with one rank becomes alpha·√r. Anything else is folded into B.
    let (alpha, folded) = if c.lora_alpha != 0.0 && c.alpha_pattern.is_empty() && !c.use_rslora {
        (c.lora_alpha, false)
    } else if c.lora_alpha != 0.0 && c.alpha_pattern.is_empty() && c.use_rslora && ranks.len() == 1 {
        let r = *ranks.iter().next().unwrap_or(&1) as f64;
        (c.lora_alpha * r.sqrt(), false)
    } else {
        (0.0, true)
    };
    // (tensor, expert) → (A [r, in], B [out, r]) in GGUF layout.
    let mut plain: BTreeMap<String, (Tensor, Tensor)> = BTreeMap::new();
    let mut experts: BTreeMap<String, BTreeMap<usize, (Tensor, Tensor)>> = BTreeMap::new();
    for p in &pairs {
        let key_a = crate::peft::peft_key(&p.module, crate::peft::Factor::A);
        let t = gguf_target(&p.module, cfg).ok_or_else(|| {
            LoraError::Mismatch(format!(
                "adapter tensor '{key_a}' is for module '{}', which a {} model with {} layers does not have",
                p.module,
                cfg.arch.name(),
                cfg.num_layers
            ))
        })?;
        let r = p.rank();
        let (o, i) = t.dims;
        if p.a.dims() != [r, i] || p.b.dims() != [o, r] {
            return Err(LoraError::Mismatch(format!(
                "adapter tensors for '{}' have shapes {:?} / {:?}, but the base needs [{r}, {i}] / [{o}, {r}]",
                p.module,
                p.a.dims(),
                p.b.dims()
            )));
        }
        let a = p.a.to_dtype(DType::F32)?.contiguous()?;
        let mut b = p.b.to_dtype(DType::F32)?;
        if folded {
            b = (b * c.scale_for(&p.module))?;
        }
        if let Some(n) = t.permute_heads {
            // Row permutation commutes with B·A: P·(B·A) = (P·B)·A, so only B moves.
            b = permute_tensor_rows(&b, n, false)?;
        }
        let b = b.contiguous()?;
        match t.expert {
            None => {
                plain.insert(t.tensor, (a, b));
            }
            Some(e) => {
                experts.entry(t.tensor).or_default().insert(e, (a, b));
            }
        }
    }
    let mut zero_filled = 0;
    for (tensor, per) in experts {
        let n_exp = cfg.moe.as_ref().map(|m| m.num_experts).unwrap_or(0);
        let r_set: std::collections::BTreeSet<usize> = per.values().map(|(a, _)| a.dims()[0]).collect();
        if r_set.len() != 1 {
            return Err(LoraError::Mismatch(format!(
                "experts of {tensor} have ranks {r_set:?}; llama.cpp stacks them into one tensor, which needs one rank"
            )));
        }
        let (a0, b0) = per.values().next().ok_or_else(|| LoraError::Mismatch(format!("{tensor}: no experts")))?.clone();
        let mut as_ = Vec::with_capacity(n_exp);
        let mut bs = Vec::with_capacity(n_exp);
        for e in 0..n_exp {
            match per.get(&e) {
                Some((a, b)) => {
                    as_.push(a.clone());
                    bs.push(b.clone());
                }
                None => {
                    // An expert the adapter leaves alone: zero factors add nothing.
                    zero_filled += 1;
                    as_.push(a0.zeros_like()?);
                    bs.push(b0.zeros_like()?);
                }
            }
        }
        plain.insert(tensor, (Tensor::stack(&as_, 0)?, Tensor::stack(&bs, 0)?));
    }
    let mut qts: Vec<(String, QTensor)> = Vec::new();
    for (tensor, (a, b)) in &plain {
        qts.push((format!("{tensor}.lora_a"), QTensor::quantize(a, GgmlDType::F32)?));
        qts.push((format!("{tensor}.lora_b"), QTensor::quantize(b, GgmlDType::F32)?));
    }
    use gguf_file::Value;
    let mut md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(architecture.to_string())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(alpha as f32)),
    ];
    if let Some(n) = name {
        md.push(("general.name", Value::String(n.to_string())));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut cur = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut cur, &md_refs, &t_refs)?;
    let mut bytes = cur.into_inner();
    // candle writes version 2; v3 is the same layout for little-endian files and what
    // current llama.cpp writes.
    bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
    Ok(GgufExport { bytes, alpha: alpha as f32, folded, pairs: plain.len(), zero_filled_experts: zero_filled })
}
