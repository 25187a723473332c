//! One Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Mixtral) for both weight formats.
//!
//! Weights are held in HF layout whatever the file format, so rotary embeddings use the
//! "rotate half" pairing and PEFT adapters apply unchanged. Every forward takes a [`Mode`]: in
//! training every op on the path is one that records a backward (candle's fused softmax,
//! rms_norm and rope do not), the training ops of [`crate::ops`] where they apply.

use candle_core::{DType, Device, IndexOp, Tensor, D};

use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::embedding::Embedding;
use crate::error::{ModelError, Result};
use crate::linear::{BaseWeight, Linear};
use crate::mode::Mode;
use crate::ops::attention::{attention, rope_composed};
use crate::ops::rms_norm::rms_norm;
use crate::ops::swiglu::{swiglu, swiglu_composed};
use crate::weights::WeightSource;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        if mode.is_train() {
            rms_norm(x, &self.weight, self.eps)
        } else {
            Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Expert {
    /// gate
    pub w1: Linear,
    /// down
    pub w2: Linear,
    /// up
    pub w3: Linear,
}

#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense { gate_proj: Linear, up_proj: Linear, down_proj: Linear },
    Moe { gate: Linear, experts: Vec<Expert>, top_k: usize },
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub ffn: FeedForward,
}

/// Which positions to project to vocabulary logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position: `(batch, vocab)`. What generation needs.
    Last,
    /// Every position: `(batch, seq, vocab)`. What scoring and training need.
    All,
}

/// Rotary tables and attention mask for one forward call (see [`Model::positions`]).
#[derive(Debug, Clone)]
pub struct Positions {
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    /// Each row's left padding (what the mask blocks), for the CPU decode kernel.
    pads: Vec<usize>,
}

/// Keys and values of earlier positions, for one batch of sequences.
///
/// Batches of prompts of different lengths are left-padded: row `b` starts with `pads[b]`
/// padding positions that no query may attend to, and its real tokens are numbered from 0.
#[derive(Debug, Clone)]
pub struct Cache {
    kv: Vec<Option<LayerKv>>,
    pads: Vec<usize>,
    len: usize,
    /// Positions appended by the fused CPU decode step (see [`Cache::fused_steps`]).
    fused_steps: u64,
    /// Element type the keys and values are stored in, when it differs from the activations'
    /// (see [`Model::set_kv_cache_dtype`]).
    dtype: Option<DType>,
}

/// Positions a layer's key/value buffers grow by beyond what is needed, rounded up to
/// [`KV_ROUND`]: appending a decoded token writes in place instead of copying the whole cache
/// (`Tensor::cat` per token per layer).
const KV_HEADROOM: usize = 128;
const KV_ROUND: usize = 64;

/// One layer's keys and values, `(b, kv_heads, capacity, head_dim)`; positions
/// `0..Cache::len` are filled.
#[derive(Debug)]
pub struct LayerKv {
    k: Tensor,
    v: Tensor,
    /// Set when the cache was cloned: the buffers are shared, so the next append copies them
    /// first (copy on write) instead of writing into the other clone's positions.
    shared: std::sync::atomic::AtomicBool,
}

impl Clone for LayerKv {
    fn clone(&self) -> Self {
        self.shared.store(true, std::sync::atomic::Ordering::Relaxed);
        Self { k: self.k.clone(), v: self.v.clone(), shared: std::sync::atomic::AtomicBool::new(true) }
    }
}

impl LayerKv {
    fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    /// Make `slot` hold buffers of `(b, kv_heads, ≥ len + t, head_dim)` that no clone shares, the
    /// first `len` positions kept (grown with headroom, or copied on write).
    fn reserve<'a>(
        slot: &'a mut Option<LayerKv>,
        len: usize,
        t: usize,
        (b, h, d): (usize, usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<&'a LayerKv> {
        let needed = len + t;
        let reuse = slot.as_ref().is_some_and(|s| s.capacity() >= needed && !s.shared.load(std::sync::atomic::Ordering::Relaxed));
        if !reuse {
            let cap = (needed + KV_HEADROOM).next_multiple_of(KV_ROUND);
            let nk = Tensor::zeros((b, h, cap, d), dtype, device)?;
            let nv = Tensor::zeros((b, h, cap, d), dtype, device)?;
            if let (Some(old), true) = (slot.as_ref(), len > 0) {
                nk.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(LayerKv { k: nk, v: nv, shared: std::sync::atomic::AtomicBool::new(false) });
        }
        slot.as_ref().ok_or_else(|| ModelError::Candle(candle_core::Error::Msg("key/value cache slot missing after allocation".into())))
    }

    /// Append `k`/`v` `(b, kv_heads, t, head_dim)` after `len` stored positions, stored as
    /// `dtype` (default: theirs); returns all `len + t` positions in `k`'s dtype (views, or
    /// copies when the stored type differs).
    fn append(slot: &mut Option<LayerKv>, len: usize, k: &Tensor, v: &Tensor, dtype: Option<DType>) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let needed = len + t;
        let stored = dtype.unwrap_or(k.dtype());
        let s = Self::reserve(slot, len, t, (b, h, d), stored, k.device())?;
        s.k.slice_set(&k.to_dtype(stored)?.contiguous()?, 2, len)?;
        s.v.slice_set(&v.to_dtype(stored)?.contiguous()?, 2, len)?;
        let (ks, vs) = (s.k.narrow(2, 0, needed)?, s.v.narrow(2, 0, needed)?);
        if stored == k.dtype() {
            return Ok((ks, vs));
        }
        Ok((ks.to_dtype(k.dtype())?, vs.to_dtype(k.dtype())?))
    }
}

impl Cache {
    pub fn new(model: &Model) -> Self {
        Self::with_padding(model, vec![0])
    }
    /// A cache for `pads.len()` rows with the given left padding.
    pub fn with_padding(model: &Model, pads: Vec<usize>) -> Self {
        Self { kv: vec![None; model.cfg.num_layers], pads, len: 0, fused_steps: 0, dtype: model.kv_cache_dtype }
    }
    /// Positions stored so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn batch_size(&self) -> usize {
        self.pads.len()
    }
    pub fn pads(&self) -> &[usize] {
        &self.pads
    }
    /// Bytes the key and value buffers hold (capacity, not only the filled positions).
    pub fn stored_bytes(&self) -> usize {
        self.kv.iter().flatten().map(|s| (s.k.elem_count() + s.v.elem_count()) * s.k.dtype().size_in_bytes()).sum()
    }
    /// The element type keys and values are stored in, for activations of `activations`.
    pub fn stored_dtype(&self, activations: DType) -> DType {
        self.dtype.unwrap_or(activations)
    }
    /// Layer `i`'s key and value buffers `(b, kv_heads, capacity, head_dim)`, ready for `t` more
    /// positions after those stored (see [`LayerKv::reserve`]); the CPU decode step writes them
    /// in place.
    pub(crate) fn reserve_layer(
        &mut self,
        i: usize,
        t: usize,
        dims: (usize, usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let len = self.len;
        let slot = self.kv.get_mut(i).ok_or_else(|| ModelError::Candle(candle_core::Error::Msg(format!("the cache has no layer {i}"))))?;
        let s = LayerKv::reserve(slot, len, t, dims, dtype, device)?;
        Ok((s.k.clone(), s.v.clone()))
    }
    /// Count one more stored position, written by the fused decode step.
    pub(crate) fn advance_fused(&mut self) {
        self.len += 1;
        self.fused_steps += 1;
    }
    /// How many of the stored positions the fused CPU decode step appended (the rest went through
    /// the composed path: prompts, other devices, training, MoE, or [`Model::set_fused_decode`]
    /// off).
    pub fn fused_steps(&self) -> u64 {
        self.fused_steps
    }
    /// Keep only the given rows (e.g. drop finished sequences from a batch).
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &Device::Cpu)?;
        for slot in self.kv.iter_mut().flatten() {
            let i = idx.to_device(slot.k.device())?;
            // index_select makes new buffers, so they are no longer shared with any clone.
            *slot = LayerKv {
                k: slot.k.index_select(&i, 0)?,
                v: slot.v.index_select(&i, 0)?,
                shared: std::sync::atomic::AtomicBool::new(false),
            };
        }
        self.pads = rows.iter().map(|&r| self.pads[r]).collect();
        Ok(())
    }

    /// Append the rows of `other` (e.g. a prompt just processed on its own) to this cache, so
    /// they decode in the same batch from the next step: whichever side holds fewer positions is
    /// left-padded to the other's length. Each row keeps its own token positions, so the rows
    /// continue exactly as they would have alone.
    pub fn join(&mut self, other: Cache) -> Result<()> {
        if self.kv.len() != other.kv.len() {
            return Err(cache_err(format!("cannot join caches of {} and {} layers", self.kv.len(), other.kv.len())));
        }
        if other.pads.is_empty() {
            return Ok(());
        }
        if self.pads.is_empty() {
            *self = other;
            return Ok(());
        }
        let len = self.len.max(other.len);
        let (shift_self, shift_other) = (len - self.len, len - other.len);
        let cap = (len + KV_HEADROOM).next_multiple_of(KV_ROUND);
        for (mine, theirs) in self.kv.iter_mut().zip(other.kv) {
            let (Some(a), Some(b)) = (mine.as_ref(), theirs.as_ref()) else {
                if self.len == 0 && other.len == 0 {
                    continue;
                }
                return Err(cache_err("cannot join a cache that holds no keys for a layer".into()));
            };
            let placed =
                |t: &Tensor, n: usize, shift: usize| -> Result<Tensor> { Ok(t.narrow(2, 0, n)?.pad_with_zeros(2, shift, cap - len)?) };
            let k = Tensor::cat(&[placed(&a.k, self.len, shift_self)?, placed(&b.k, other.len, shift_other)?], 0)?;
            let v = Tensor::cat(&[placed(&a.v, self.len, shift_self)?, placed(&b.v, other.len, shift_other)?], 0)?;
            *mine = Some(LayerKv { k, v, shared: std::sync::atomic::AtomicBool::new(false) });
        }
        self.pads.iter_mut().for_each(|p| *p += shift_self);
        self.pads.extend(other.pads.iter().map(|p| p + shift_other));
        self.len = len;
        Ok(())
    }

    /// Drop the leading positions that are padding in every row (left when the longest rows
    /// leave a batch), so the batch's length is its longest remaining row's.
    pub fn trim_padding(&mut self) -> Result<()> {
        let drop = self.pads.iter().copied().min().unwrap_or(0).min(self.len);
        if drop == 0 {
            return Ok(());
        }
        for slot in self.kv.iter_mut().flatten() {
            let cap = slot.capacity();
            *slot = LayerKv {
                k: slot.k.narrow(2, drop, cap - drop)?.contiguous()?,
                v: slot.v.narrow(2, drop, cap - drop)?.contiguous()?,
                // A single row's view is already contiguous and keeps sharing its buffer.
                shared: std::sync::atomic::AtomicBool::new(slot.shared.load(std::sync::atomic::Ordering::Relaxed)),
            };
        }
        self.pads.iter_mut().for_each(|p| *p -= drop);
        self.len -= drop;
        Ok(())
    }
}

fn cache_err(msg: String) -> ModelError {
    ModelError::Candle(candle_core::Error::Msg(msg))
}

/// Where a model was loaded from, for `info` and run records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSource {
    pub path: std::path::PathBuf,
    pub format: &'static str,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: ModelConfig,
    pub embed_tokens: Embedding,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
    device: Device,
    /// Inference multiplies many rows by a quantized weight through a dequantized f32 GEMM (see
    /// [`Model::set_dense_prefill`]).
    dense_prefill: bool,
    /// Inference decodes one position per row through the fused CPU step (see
    /// [`Model::set_fused_decode`]).
    fused_decode: bool,
    /// Element type of new caches' keys and values; `None` keeps the activations' (see
    /// [`Model::set_kv_cache_dtype`]).
    kv_cache_dtype: Option<DType>,
    pub source: ModelSource,
}

fn rope_tables(cfg: &ModelConfig, freqs: Option<&[f32]>, max_pos: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let d = cfg.head_dim;
    let mut inv: Vec<f64> = (0..d / 2).map(|j| 1.0 / cfg.rope_theta.powf(2.0 * j as f64 / d as f64)).collect();
    match &cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => inv.iter_mut().for_each(|f| *f /= factor),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let old = *original_max_position_embeddings as f64;
            let low_wl = old / low_freq_factor;
            let high_wl = old / high_freq_factor;
            for f in inv.iter_mut() {
                let wl = 2.0 * std::f64::consts::PI / *f;
                if wl > low_wl {
                    *f /= factor;
                } else if wl >= high_wl {
                    let smooth = (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
        None => {}
    }
    if let Some(fr) = freqs {
        for (f, div) in inv.iter_mut().zip(fr) {
            *f /= *div as f64;
        }
    }
    let mut cos = Vec::with_capacity(max_pos * d / 2);
    let mut sin = Vec::with_capacity(max_pos * d / 2);
    for p in 0..max_pos {
        for f in &inv {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok((Tensor::from_vec(cos, (max_pos, d / 2), device)?, Tensor::from_vec(sin, (max_pos, d / 2), device)?))
}

/// One decoded position's attention on the CPU, `q` `(b, heads, 1, d)` over cached `k`/`v`
/// `(b, kv_heads, len, d)` (strided views are fine), skipping each row's left padding; returns
/// `(b, 1, heads, d)`. candle-nn's fused CPU kernel (online softmax, grouped-query heads) runs
/// per row: as batched matmuls this was 2·b·kv_heads GEMMs of 3 rows each, per layer and token.
fn decode_attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, pads: &[usize]) -> Result<Tensor> {
    let (b, _, _, d) = q.dims4()?;
    let len = k.dim(2)?;
    let scale = 1.0 / (d as f32).sqrt();
    let mut rows = Vec::with_capacity(b);
    for (r, &pad) in pads.iter().enumerate().take(b) {
        let pad = pad.min(len - 1);
        // (1, 1, heads, d) and (1, len - pad, kv_heads, d): the layouts the kernel indexes by stride.
        let qr = q.narrow(0, r, 1)?.transpose(1, 2)?;
        let kr = k.narrow(0, r, 1)?.narrow(2, pad, len - pad)?.transpose(1, 2)?;
        let vr = v.narrow(0, r, 1)?.narrow(2, pad, len - pad)?.transpose(1, 2)?;
        rows.push(candle_nn::attention::flash_attn::<f32>(&qr, &kr, &vr, scale, candle_nn::attention::AttnMask::None, None, None)?);
    }
    Ok(Tensor::cat(&rows, 0)?.transpose(1, 2)?)
}

/// The input of the projections that follow an RMS norm: normalised, or (training, when every
/// one of them takes the fused op) the hidden states before the norm, which each fused op
/// normalises itself so the normalised copy is not kept for the backward.
enum Input<'a> {
    Plain(Tensor),
    Normed(&'a Tensor, &'a RmsNorm),
}

impl<'a> Input<'a> {
    fn new(norm: &'a RmsNorm, x: &'a Tensor, projections: &[&Linear], mode: &Mode) -> Result<Self> {
        Ok(if mode.is_train() && projections.iter().all(|l| l.fuses_in_training(x)) {
            Input::Normed(x, norm)
        } else {
            Input::Plain(norm.forward(x, mode)?)
        })
    }
    fn tensor(&self) -> &Tensor {
        match self {
            Input::Plain(x) => x,
            Input::Normed(x, _) => x,
        }
    }
    fn project(&self, l: &Linear, mode: &mut Mode, dense_prefill: bool) -> Result<Tensor> {
        match self {
            Input::Plain(x) => l.forward(x, mode, dense_prefill),
            Input::Normed(x, n) => l.forward_train_normed(x, &n.weight, n.eps, mode.dropout()),
        }
    }
}

/// `silu(gate) · up`; in training on the CPU in f32 one fused op with its own backward.
fn gated(gate: &Tensor, up: &Tensor, mode: &Mode) -> Result<Tensor> {
    if mode.is_train() {
        swiglu(gate, up)
    } else {
        swiglu_composed(gate, up)
    }
}

/// Query positions attended together when a prompt is processed (see [`Model::attention`]).
const PREFILL_QUERY_CHUNK: usize = 64;

/// `softmax(q·kᵀ/√d + mask)·v` for `q (b, heads, t, d)` over `k`, `v (b, kv_heads, kv, d)`, as
/// `(b, heads, t, d)`. Grouped-query attention without copying keys: the query heads that share
/// a key/value head are folded into the row dimension.
fn attend_composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, mode: &Mode) -> Result<Tensor> {
    let (b, nh, t, d) = q.dims4()?;
    let (nkv, kv_len) = (k.dim(1)?, k.dim(2)?);
    let rep = nh / nkv;
    let qg = q.reshape((b, nkv, rep * t, d))?;
    let scores = (qg.matmul(&k.t()?)? / (d as f64).sqrt())?.to_dtype(DType::F32)?.reshape((b, nkv, rep, t, kv_len))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let p = softmax(&scores, mode)?;
    let p = p.to_dtype(v.dtype())?.reshape((b, nkv, rep * t, kv_len))?;
    Ok(p.matmul(v)?.reshape((b, nh, t, d))?)
}

fn softmax(x: &Tensor, mode: &Mode) -> Result<Tensor> {
    Ok(if mode.is_train() { candle_nn::ops::softmax(x, D::Minus1)? } else { candle_nn::ops::softmax_last_dim(x)? })
}

impl Model {
    pub(crate) fn load(src: &mut dyn WeightSource, cfg: ModelConfig, device: &Device, format: &'static str) -> Result<Self> {
        let h = cfg.hidden_size;
        let (embed_tokens, embed_stored) = src.embedding(cfg.vocab_size, h)?;
        let lm_head = match src.lm_head(cfg.vocab_size, h)? {
            Some(w) => Linear::new(w),
            None if cfg.tie_word_embeddings || format == "gguf" => Linear::new(embed_stored),
            None => {
                return Err(ModelError::MissingTensor { path: src.path().into(), tensor: "lm_head.weight".into() });
            }
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |n: &str, o: usize, inp: usize| -> Result<Linear> { Ok(Linear::new(src.linear(&format!("{p}.{n}"), o, inp)?)) };
            let self_attn = Attention {
                q_proj: lin("self_attn.q_proj", cfg.q_dim(), h)?,
                k_proj: lin("self_attn.k_proj", cfg.kv_dim(), h)?,
                v_proj: lin("self_attn.v_proj", cfg.kv_dim(), h)?,
                o_proj: lin("self_attn.o_proj", h, cfg.q_dim())?,
            };
            let f = cfg.intermediate_size;
            let ffn = match &cfg.moe {
                None => FeedForward::Dense {
                    gate_proj: lin("mlp.gate_proj", f, h)?,
                    up_proj: lin("mlp.up_proj", f, h)?,
                    down_proj: lin("mlp.down_proj", h, f)?,
                },
                Some(moe) => {
                    let gate = lin("block_sparse_moe.gate", moe.num_experts, h)?;
                    let mut experts = Vec::with_capacity(moe.num_experts);
                    for e in 0..moe.num_experts {
                        let pe = format!("block_sparse_moe.experts.{e}");
                        experts.push(Expert {
                            w1: lin(&format!("{pe}.w1"), f, h)?,
                            w2: lin(&format!("{pe}.w2"), h, f)?,
                            w3: lin(&format!("{pe}.w3"), f, h)?,
                        });
                    }
                    FeedForward::Moe { gate, experts, top_k: moe.top_k }
                }
            };
            let norm = |src: &mut dyn WeightSource, n: &str| -> Result<RmsNorm> {
                Ok(RmsNorm { weight: src.vector(&format!("{p}.{n}"), h)?, eps: cfg.rms_norm_eps })
            };
            layers.push(Block {
                input_layernorm: norm(src, "input_layernorm")?,
                self_attn,
                post_attention_layernorm: norm(src, "post_attention_layernorm")?,
                ffn,
            });
        }
        let norm = RmsNorm { weight: src.vector("model.norm", h)?, eps: cfg.rms_norm_eps };
        let freqs = src.rope_freqs()?;
        let (cos, sin) = rope_tables(&cfg, freqs.as_deref(), cfg.max_position_embeddings, device)?;
        Ok(Model {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            dtype: src.dtype(),
            device: device.clone(),
            dense_prefill: true,
            fused_decode: true,
            kv_cache_dtype: None,
            source: ModelSource { path: src.path().into(), format },
            cfg,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn context_length(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    /// Whether inference on the CPU multiplies calls of at least [`DENSE_ROWS`](crate::DENSE_ROWS)
    /// rows by a quantized weight through a per-call dequantized f32 GEMM (the default), or, off,
    /// every quantized matmul through ggml's kernels with 8-bit activations, as llama.cpp
    /// computes (tests comparing with llama.cpp turn it off). Training is unaffected.
    pub fn set_dense_prefill(&mut self, on: bool) {
        self.dense_prefill = on;
    }
    /// Whether inference on the CPU decodes one new position per row (f32, no MoE) through the
    /// fused decode step (the default), or, off, through the composed per-op path it replaces
    /// (tests comparing the two turn it off). Training is unaffected.
    /// Store the keys and values of caches made from now on as `dtype` (`Some(F16)`: half the
    /// memory of an f32 cache, the type llama.cpp keeps by default; the attention reads the
    /// rounded values) or, with `None`, in the activations' type, which reproduces earlier runs
    /// exactly.
    pub fn set_kv_cache_dtype(&mut self, dtype: Option<DType>) {
        self.kv_cache_dtype = dtype;
    }
    pub fn kv_cache_dtype(&self) -> Option<DType> {
        self.kv_cache_dtype
    }
    pub fn set_fused_decode(&mut self, on: bool) {
        self.fused_decode = on;
    }
    pub(crate) fn fused_decode(&self) -> bool {
        self.fused_decode
    }

    /// Every projection with its HF module name (for attaching adapters).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut b.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            match &mut b.ffn {
                FeedForward::Dense { gate_proj, up_proj, down_proj } => {
                    out.push((format!("{p}.mlp.gate_proj"), gate_proj));
                    out.push((format!("{p}.mlp.up_proj"), up_proj));
                    out.push((format!("{p}.mlp.down_proj"), down_proj));
                }
                FeedForward::Moe { gate, experts, .. } => {
                    out.push((format!("{p}.block_sparse_moe.gate"), gate));
                    for (e, x) in experts.iter_mut().enumerate() {
                        out.push((format!("{p}.block_sparse_moe.experts.{e}.w1"), &mut x.w1));
                        out.push((format!("{p}.block_sparse_moe.experts.{e}.w2"), &mut x.w2));
                        out.push((format!("{p}.block_sparse_moe.experts.{e}.w3"), &mut x.w3));
                    }
                }
            }
        }
        out
    }

    /// Parameter count and the storage types of the projection weights.
    pub fn weight_summary(&self) -> (usize, std::collections::BTreeMap<String, usize>) {
        let mut types = std::collections::BTreeMap::new();
        let mut params = self.embed_tokens.elem_count() + self.norm.weight.elem_count();
        let mut add = |l: &Linear| {
            let (o, i) = l.base.dims();
            *types.entry(l.base.type_name()).or_insert(0) += 1;
            o * i
        };
        let tied = self.cfg.tie_word_embeddings;
        let head = add(&self.lm_head);
        if !tied {
            params += head;
        }
        let mut me = self.clone();
        for (_, l) in me.linears_mut() {
            params += add(l);
        }
        for b in &self.layers {
            params += b.input_layernorm.weight.elem_count() + b.post_attention_layernorm.weight.elem_count();
        }
        (params, types)
    }

    /// Run the decoder over `ids` `(batch, seq)` for inference ([`Mode::Infer`]).
    ///
    /// With a cache, positions continue from what it holds and the new keys/values are appended;
    /// without one, the sequence starts at position 0 and nothing is kept (scoring).
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut Cache>, which: Logits) -> Result<Tensor> {
        self.forward_with(ids, cache, which, Mode::Infer)
    }

    /// [`Model::forward`] in any [`Mode`]: the training entry point (`Mode::Train`, usually
    /// without a cache).
    pub fn forward_with(&self, ids: &Tensor, cache: Option<&mut Cache>, which: Logits, mut mode: Mode) -> Result<Tensor> {
        let cache = match cache {
            // Inference of one new position per row on the CPU: the decode step without per-op
            // overhead (`None` when it does not apply; then the composed path runs).
            Some(c) if !mode.is_train() => {
                if let Some(logits) = crate::decode::step(self, ids, c)? {
                    return Ok(match which {
                        Logits::Last => logits,
                        Logits::All => logits.unsqueeze(1)?,
                    });
                }
                Some(c)
            }
            c => c,
        };
        let x = self.hidden(ids, cache, &mut mode)?;
        self.head_in(&x, which, &mut mode)
    }

    /// The rotary tables `(max_pos, head_dim / 2)`: cosines and sines.
    pub(crate) fn rope_tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// The last decoder layer's output `(b, t, hidden)` for `ids` in `mode`, before the final norm
    /// and the vocabulary head (see [`Model::forward`]; training feeds it to
    /// [`Model::head_cross_entropy_sum`]).
    pub fn forward_hidden(&self, ids: &Tensor, cache: Option<&mut Cache>, mut mode: Mode) -> Result<Tensor> {
        self.hidden(ids, cache, &mut mode)
    }

    fn hidden(&self, ids: &Tensor, cache: Option<&mut Cache>, mode: &mut Mode) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let (offset, pads) = match &cache {
            Some(c) => {
                if c.batch_size() != b {
                    return Err(ModelError::Candle(candle_core::Error::Msg(format!(
                        "cache holds {} rows but the input has {b}",
                        c.batch_size()
                    ))));
                }
                (c.len, c.pads.clone())
            }
            None => (0, vec![0; b]),
        };
        let needed = offset + t;
        if needed > self.cfg.max_position_embeddings {
            return Err(ModelError::ContextOverflow { needed, limit: self.cfg.max_position_embeddings });
        }
        let pos = self.positions(b, t, offset, &pads)?;
        let mut x = self.embed(ids)?;
        let mut cache = cache;
        for i in 0..self.layers.len() {
            let kv = cache.as_deref_mut().map(|c| (&mut c.kv[i], c.len, c.dtype));
            x = self.block(i, &x, &pos, kv, mode)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        Ok(x)
    }

    /// Rotary tables and attention mask for `b` rows of `t` new positions after `offset` cached
    /// ones (`pads`: each row's left padding).
    pub fn positions(&self, b: usize, t: usize, offset: usize, pads: &[usize]) -> Result<Positions> {
        let padded = pads.iter().any(|&p| p > 0);
        let (cos, sin) = if padded {
            let pos: Vec<u32> = pads.iter().flat_map(|&p| (0..t).map(move |i| (offset + i).saturating_sub(p) as u32)).collect();
            let pos = Tensor::from_vec(pos, b * t, &self.device)?;
            let half = self.cfg.head_dim / 2;
            (self.cos.index_select(&pos, 0)?.reshape((b, t, half))?, self.sin.index_select(&pos, 0)?.reshape((b, t, half))?)
        } else {
            (self.cos.narrow(0, offset, t)?, self.sin.narrow(0, offset, t)?)
        };
        let mask = if t > 1 || padded { Some(self.mask(b, t, offset, pads)?) } else { None };
        Ok(Positions { cos, sin, mask, pads: pads.to_vec() })
    }

    /// Token embeddings `(b, t, hidden)` of `ids` `(b, t)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self.embed_tokens.rows(ids, self.dtype)?.reshape((b, t, self.cfg.hidden_size))?)
    }

    /// Decoder layer `i` over hidden states `x` `(b, t, hidden)` in `mode`; with `kv`, keys and
    /// values are appended to that layer's cache slot. Training code that recomputes activations
    /// layer by layer (activation checkpointing) calls this directly.
    pub fn block_forward(
        &self,
        i: usize,
        x: &Tensor,
        pos: &Positions,
        kv: Option<(&mut Option<LayerKv>, usize, Option<DType>)>,
        mut mode: Mode,
    ) -> Result<Tensor> {
        self.block(i, x, pos, kv, &mut mode)
    }

    fn block(
        &self,
        i: usize,
        x: &Tensor,
        pos: &Positions,
        kv: Option<(&mut Option<LayerKv>, usize, Option<DType>)>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let layer = self.layers.get(i).ok_or_else(|| ModelError::Candle(candle_core::Error::Msg(format!("no layer {i}"))))?;
        let a = &layer.self_attn;
        let y = self.attention(a, &Input::new(&layer.input_layernorm, x, &[&a.q_proj, &a.k_proj, &a.v_proj], mode)?, pos, kv, mode)?;
        let x = if mode.is_train() {
            // The residual added inside the fused op, so o_proj's own output is not kept.
            a.o_proj.forward_train_residual(&y, x, mode.dropout())?
        } else {
            (x + a.o_proj.forward(&y, mode, self.dense_prefill)?)?
        };
        drop(y);
        let h = self.feed_forward(&layer.ffn, &layer.post_attention_layernorm, &x, mode)?;
        Ok((x + h)?)
    }

    /// Final norm and the vocabulary projection of the last layer's output, in `mode`.
    pub fn head(&self, x: &Tensor, which: Logits, mut mode: Mode) -> Result<Tensor> {
        self.head_in(x, which, &mut mode)
    }

    fn head_in(&self, x: &Tensor, which: Logits, mode: &mut Mode) -> Result<Tensor> {
        let t = x.dim(1)?;
        let x = match which {
            Logits::Last => x.i((.., t - 1..t, ..))?,
            Logits::All => x.clone(),
        };
        let x = self.norm.forward(&x, mode)?;
        let logits = self.lm_head.forward(&x, mode, self.dense_prefill)?.to_dtype(DType::F32)?;
        Ok(match which {
            Logits::Last => logits.squeeze(1)?,
            Logits::All => logits,
        })
    }

    /// The summed cross-entropy of the vocabulary head over hidden states `x` `(b, t, hidden)`
    /// against one target per position (row-major, [`crate::NO_TARGET`] skips a position), for
    /// training: the final norm, then the head and the loss as one op whose logits never exist
    /// whole. `None` where that op does not apply (off the CPU, not f32, a LoRA on the head): the
    /// caller takes [`Model::head`]'s logits instead.
    pub fn head_cross_entropy_sum(&self, x: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
        let (b, t, h) = x.dims3()?;
        if !self.lm_head.fuses_cross_entropy(x) {
            return Ok(None);
        }
        let x = rms_norm(x, &self.norm.weight, self.norm.eps)?;
        self.lm_head.cross_entropy_sum(&x.reshape((b * t, h))?, targets)
    }

    /// Additive mask `(b, 1, 1, t, kv)`: causal, and no attention to left padding. A padding
    /// query may see itself, so no softmax row is empty.
    fn mask(&self, b: usize, t: usize, offset: usize, pads: &[usize]) -> Result<Tensor> {
        let kv = offset + t;
        let mut m = vec![0f32; b * t * kv];
        for (row, &pad) in pads.iter().enumerate() {
            for i in 0..t {
                let qpos = offset + i;
                for j in 0..kv {
                    let blocked = j > qpos || (j < pad && j != qpos);
                    if blocked {
                        m[(row * t + i) * kv + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, 1, 1, t, kv), &self.device)?)
    }

    /// Self-attention's heads `(b, t, nh · d)`, before the output projection.
    fn attention(
        &self,
        a: &Attention,
        x: &Input,
        pos: &Positions,
        kv: Option<(&mut Option<LayerKv>, usize, Option<DType>)>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (cos, sin, mask) = (&pos.cos, &pos.sin, pos.mask.as_ref());
        let (b, t, _) = x.tensor().dims3()?;
        let (nh, nkv, d) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let dp = self.dense_prefill;
        let q = x.project(&a.q_proj, mode, dp)?.reshape((b, t, nh, d))?;
        let k = x.project(&a.k_proj, mode, dp)?.reshape((b, t, nkv, d))?;
        let v = x.project(&a.v_proj, mode, dp)?.reshape((b, t, nkv, d))?;
        let tr = mode.is_train();
        if tr && kv.is_none() {
            // One op with its own backward (on the CPU in f32; candle's differentiable ops
            // elsewhere) that reads the heads in the projections' layout, rotates q and k itself
            // and keeps no score tensor for the backward.
            let y = attention(&q, &k, &v, Some((cos, sin)), 1.0 / (d as f64).sqrt(), mask)?;
            return Ok(y);
        }
        // Each step takes its inputs by value, so a long prompt's earlier forms of q, k and v
        // are released as soon as the next exists (a shadowed binding would live to the end).
        let heads_first = |t: Tensor| -> Result<Tensor> { Ok(t.transpose(1, 2)?.contiguous()?) };
        let (q, k) = (heads_first(q)?, heads_first(k)?);
        let v = v.transpose(1, 2)?;
        let rotate = |t: Tensor| -> Result<Tensor> {
            Ok(if tr {
                rope_composed(&t, cos, sin)?
            } else {
                candle_nn::rotary_emb::rope(&t, &cos.to_dtype(t.dtype())?, &sin.to_dtype(t.dtype())?)?
            })
        };
        let (q, k) = (rotate(q)?, rotate(k)?);
        let cached = kv.is_some();
        let (k, v) = match kv {
            Some((slot, len, dtype)) => LayerKv::append(slot, len, &k, &v, dtype)?,
            None => (k, v.contiguous()?),
        };
        // Batched decoding on the CPU. One row gains nothing measurable, so single-sequence
        // decoding keeps the matmul path and its exact numerics.
        if t == 1 && b > 1 && cached && !tr && q.device().is_cpu() && q.dtype() == DType::F32 {
            let y = decode_attention_cpu(&q, &k, &v, &pos.pads)?;
            return Ok(y.reshape((b, t, nh * d))?);
        }
        let y = match mask {
            Some(m) if !tr && t > PREFILL_QUERY_CHUNK => {
                // A long prompt's queries in chunks: each chunk scores only the keys up to its
                // last position (the rest are masked), so no `(heads, t, kv)` score tensor is
                // held at once and the masked half of the products is never computed.
                let offset = k.dim(2)? - t;
                let mut parts = Vec::with_capacity(t.div_ceil(PREFILL_QUERY_CHUNK));
                for start in (0..t).step_by(PREFILL_QUERY_CHUNK) {
                    let n = PREFILL_QUERY_CHUNK.min(t - start);
                    let keys = offset + start + n;
                    let m = m.narrow(3, start, n)?.narrow(4, 0, keys)?;
                    let q = q.narrow(2, start, n)?.contiguous()?;
                    parts.push(attend_composed(&q, &k.narrow(2, 0, keys)?, &v.narrow(2, 0, keys)?, Some(&m), mode)?);
                }
                Tensor::cat(&parts, 2)?
            }
            _ => attend_composed(&q, &k, &v, mask, mode)?,
        };
        Ok(y.transpose(1, 2)?.reshape((b, t, nh * d))?)
    }

    /// The MLP on `norm(x)`.
    fn feed_forward(&self, f: &FeedForward, norm: &RmsNorm, x: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let dp = self.dense_prefill;
        match f {
            FeedForward::Dense { gate_proj, up_proj, down_proj } => {
                let input = Input::new(norm, x, &[gate_proj, up_proj], mode)?;
                let g = input.project(gate_proj, mode, dp)?;
                let u = input.project(up_proj, mode, dp)?;
                if mode.is_train() && down_proj.fuses_in_training(&g) {
                    // silu(g)·u formed inside the down projection (see `Linear::forward_train_gated`).
                    return down_proj.forward_train_gated(&g, &u, mode.dropout());
                }
                let h = if mode.is_train() {
                    gated(&g, &u, mode)?
                } else {
                    // `swiglu_composed`, each input released as soon as it is used: a long
                    // prompt's MLP holds two of its `t × intermediate` tensors at a time, not four.
                    drop(input);
                    let s = candle_nn::ops::silu(&g)?;
                    drop(g);
                    (s * u)?
                };
                down_proj.forward(&h, mode, dp)
            }
            FeedForward::Moe { gate, experts, top_k } => {
                let h = norm.forward(x, mode)?;
                self.moe(gate, experts, *top_k, &h, mode)
            }
        }
    }

    /// Mixtral routing as Hugging Face does it: softmax over the router logits (in f32), top-k,
    /// renormalise the kept weights to sum to one. The weights stay tensors so gradients reach
    /// the router input.
    fn moe(&self, gate: &Linear, experts: &[Expert], top_k: usize, x: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let dp = self.dense_prefill;
        let (b, t, h) = x.dims3()?;
        let n = b * t;
        let xs = x.reshape((n, h))?;
        let logits = gate.forward(&xs, mode, dp)?.to_dtype(DType::F32)?;
        let probs = softmax(&logits, mode)?;
        let rows = probs.to_vec2::<f32>()?;
        let mut top_idx = Vec::with_capacity(n * top_k);
        let mut per_expert: Vec<(Vec<u32>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); experts.len()];
        for (r, p) in rows.iter().enumerate() {
            let mut order: Vec<usize> = (0..p.len()).collect();
            // Stable sort: equal weights keep the lower expert first, as torch.topk does.
            order.sort_by(|&i, &j| p[j].total_cmp(&p[i]));
            for (slot, &e) in order.iter().take(top_k).enumerate() {
                top_idx.push(e as u32);
                per_expert[e].0.push(r as u32);
                per_expert[e].1.push((r * top_k + slot) as u32);
            }
        }
        let idx = Tensor::from_vec(top_idx, (n, top_k), &self.device)?;
        let w = probs.gather(&idx, 1)?;
        let w = w.broadcast_div(&w.sum_keepdim(1)?)?.flatten_all()?;
        let mut out = xs.zeros_like()?;
        for (e, (rows_e, slots_e)) in per_expert.into_iter().enumerate() {
            if rows_e.is_empty() {
                continue;
            }
            let m = rows_e.len();
            let rows_t = Tensor::from_vec(rows_e, m, &self.device)?;
            let slots_t = Tensor::from_vec(slots_e, m, &self.device)?;
            let xe = xs.index_select(&rows_t, 0)?;
            let ex = &experts[e];
            let g = ex.w1.forward(&xe, mode, dp)?;
            let u = ex.w3.forward(&xe, mode, dp)?;
            let ye = ex.w2.forward(&gated(&g, &u, mode)?, mode, dp)?;
            let we = w.index_select(&slots_t, 0)?.to_dtype(ye.dtype())?.unsqueeze(1)?;
            out = out.index_add(&rows_t, &ye.broadcast_mul(&we)?, 0)?;
        }
        Ok(out.reshape((b, t, h))?)
    }
}

impl Arch {
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mixtral => "mixtral",
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Model>();
    let _ = BaseWeight::Dense;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.dims() == b.dims() && (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() == 0.0
    }

    #[test]
    fn kv_buffers_append_in_place_grow_and_copy_on_write() {
        let dev = Device::Cpu;
        let prompt = Tensor::arange(0f32, 120.0, &dev).unwrap().reshape((2, 3, 5, 4)).unwrap();
        let mut slot = None;
        let (mut want_k, mut want_v) = (prompt.clone(), (&prompt * 2.0).unwrap());
        let mut len = 0;
        let mut caps = Vec::new();
        // A 5-position prompt, then 300 single positions: the buffers must grow past their first
        // capacity and still hold every position in order.
        for i in 0..301 {
            let x = if i == 0 { prompt.clone() } else { Tensor::full(i as f32, (2, 3, 1, 4), &dev).unwrap() };
            let (k, v) = LayerKv::append(&mut slot, len, &x, &(&x * 2.0).unwrap(), None).unwrap();
            if i > 0 {
                want_k = Tensor::cat(&[&want_k, &x], 2).unwrap();
                want_v = Tensor::cat(&[&want_v, &(&x * 2.0).unwrap()], 2).unwrap();
            }
            len += x.dim(2).unwrap();
            assert!(same(&k, &want_k) && same(&v, &want_v), "after {len} positions");
            caps.push(slot.as_ref().unwrap().capacity());
        }
        caps.dedup();
        assert!(caps.len() >= 2 && caps[0] < len && caps.iter().all(|c| c % KV_ROUND == 0), "capacities {caps:?}");
        // A clone shares the buffers until either side appends: each then keeps its own values.
        let mut other = slot.clone();
        let (a, b) = (Tensor::full(-1f32, (2, 3, 1, 4), &dev).unwrap(), Tensor::full(-2f32, (2, 3, 1, 4), &dev).unwrap());
        let (ka, _) = LayerKv::append(&mut slot, len, &a, &a, None).unwrap();
        let (kb, _) = LayerKv::append(&mut other, len, &b, &b, None).unwrap();
        assert!(same(&ka, &Tensor::cat(&[&want_k, &a], 2).unwrap()));
        assert!(same(&kb, &Tensor::cat(&[&want_k, &b], 2).unwrap()));
        // Stored as f16, handed back in the activations' f32: these small integers survive the
        // rounding exactly, and the buffers are f16.
        let mut half_slot = None;
        let (k, v) = LayerKv::append(&mut half_slot, 0, &want_k, &want_v, Some(DType::F16)).unwrap();
        assert_eq!((k.dtype(), half_slot.as_ref().unwrap().k.dtype()), (DType::F32, DType::F16));
        assert!(same(&k, &want_k) && same(&v, &want_v));
    }
}
