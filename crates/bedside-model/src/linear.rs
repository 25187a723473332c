//! A frozen base projection that can carry LoRA branches.
//!
//! Every projection in the architecture is a [`Linear`] rather than candle-transformers' fixed
//! `Linear` fields, so adapters (for inference or training) attach to any of them by name. Its
//! frozen weight is one of two kinds ([`BaseWeight`]): a dense tensor, or ggml-quantized blocks
//! multiplied without dequantizing; each kind has its inference matmul, its training matmul (a
//! backward for the input only, [`crate::ops::frozen_matmul`]) and its reading by rows for the
//! fused training ops. The branches ([`LoraBranch`]) are composed from candle's ops, or in
//! training fused with the base into one op ([`crate::ops::lora`]) where that applies.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::cpu::WeightRows;
use crate::error::Result;
use crate::mode::Mode;
use crate::ops::dropout::{seeded_dropout, DropoutRng};
use crate::ops::frozen_matmul::{frozen_matmul_wt, qmatmul_train, DENSE_ROWS};
use crate::ops::{applies, head_loss, lora};

/// The frozen weight of a projection, `[out, in]` in HF layout.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// A plain tensor (f32/f16/bf16), from safetensors, a float GGUF or a dequantized GGUF.
    Dense(Tensor),
    /// Ggml-quantized blocks, multiplied without dequantizing.
    Quantized(Arc<QTensor>, QMatMul),
}

impl BaseWeight {
    pub fn quantized(q: QTensor) -> Result<Self> {
        let q = Arc::new(q);
        let mm = QMatMul::from_arc(q.clone())?;
        Ok(match mm {
            // Float GGUF tensors come back dequantized already.
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => BaseWeight::Dense(t),
            mm => BaseWeight::Quantized(q, mm),
        })
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        let d = match self {
            BaseWeight::Dense(t) => t.dims().to_vec(),
            BaseWeight::Quantized(q, _) => q.shape().dims().to_vec(),
        };
        (d[0], d[1])
    }

    /// Whether [`BaseWeight::rows`] can read this weight: a contiguous f32 tensor or a quantized
    /// one, on the CPU (what the fused training ops over pieces of rows need).
    pub(crate) fn readable_by_rows(&self) -> bool {
        match self {
            BaseWeight::Dense(w) => applies(w) && w.is_contiguous(),
            BaseWeight::Quantized(q, _) => q.device().is_cpu(),
        }
    }

    /// The weight read a block of rows at a time as f32 (on the CPU).
    pub(crate) fn rows(&self) -> WeightRows {
        match self {
            BaseWeight::Dense(w) => WeightRows::Dense(w.clone()),
            BaseWeight::Quantized(q, _) => WeightRows::Quantized(q.clone()),
        }
    }

    /// Name of the storage type, e.g. `F32` or `Q4_1`.
    pub fn type_name(&self) -> String {
        match self {
            BaseWeight::Dense(t) => format!("{:?}", t.dtype()).to_uppercase(),
            BaseWeight::Quantized(q, _) => format!("{:?}", q.dtype()).to_uppercase(),
        }
    }

    /// The weight as a dense tensor of `dtype` (dequantizing when needed).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            BaseWeight::Dense(t) => t.to_dtype(dtype)?,
            BaseWeight::Quantized(q, _) => q.dequantize(&q.device())?.to_dtype(dtype)?,
        })
    }

    /// Inference's `x · Wᵀ`. With `dense_prefill` (see [`crate::Model::set_dense_prefill`]), a
    /// quantized weight on the CPU multiplies [`DENSE_ROWS`](crate::DENSE_ROWS) rows or more
    /// through a per-call dequantized f32 GEMM (prompt processing), fewer rows (decoding) through
    /// bedside-kernels' integer dot products on 8-bit activations; without it, every row count
    /// goes through those kernels, as llama.cpp computes. Types the kernels do not multiply (and
    /// other devices or dtypes) use candle's quantized matmul.
    pub(crate) fn forward(&self, x: &Tensor, dense_prefill: bool) -> Result<Tensor> {
        Ok(match self {
            BaseWeight::Dense(w) => matmul_wt(x, w)?,
            BaseWeight::Quantized(q, _) if x.device().is_cpu() && dense_prefill && rows_of(x) >= DENSE_ROWS => qmatmul_train(x, q)?,
            // Otherwise bedside-kernels' 8-bit-activation kernels (llama.cpp's scheme, SIMD for
            // every type), where they apply.
            BaseWeight::Quantized(q, _) if crate::kernels::applies(x, q) => crate::kernels::quantized_matmul(x, q)?,
            BaseWeight::Quantized(_, mm) => mm.forward(x)?,
        })
    }

    /// As [`BaseWeight::forward`], but a quantized weight records a backward that gives the
    /// input its gradient (candle's `QMatMul` records none, which silently cuts every path through
    /// a quantized projection). The weight itself gets no gradient: it is frozen.
    pub(crate) fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            BaseWeight::Dense(w) => frozen_matmul_wt(x, w)?,
            BaseWeight::Quantized(q, _) => qmatmul_train(x, q)?,
        })
    }
}

/// Rows of `x` (all dimensions but the last).
fn rows_of(x: &Tensor) -> usize {
    x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1)
}

/// `x @ wᵀ` for `x` of any rank, `w` of shape `[out, in]`.
pub(crate) fn matmul_wt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?;
    let y = if few_rows_on_wide_kernels(x, w, rows) {
        // (W · xᵀ)ᵀ: the weight's many rows fill the kernel, the few inputs become columns.
        w.matmul(&x2.t()?)?.t()?.contiguous()?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out_dims)
}

/// Whether `x @ wᵀ` with `rows` input rows is faster computed as `(w @ xᵀ)ᵀ` on this CPU.
/// gemm's AVX-512 f32 kernel computes 64 output rows at a time, so with fewer input rows
/// (batched decoding: one row per sequence) most of each kernel call is wasted. With AVX2 alone
/// (narrower kernels) the transposition gained too little to keep.
fn few_rows_on_wide_kernels(x: &Tensor, w: &Tensor, rows: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // std caches the feature detection: this is one atomic load.
        rows < 64
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && w.dtype() == DType::F32
            && w.dim(0).is_ok_and(|n| n >= 256)
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, rows);
        false
    }
}

/// One low-rank update `scale · B(A(x))`, with `a: [r, in]` and `b: [out, r]` as PEFT stores them.
#[derive(Debug, Clone)]
pub struct LoraBranch {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// Dropout on the branch input, applied only in training with a dropout RNG.
    pub dropout: f32,
    /// Inference only: the batch rows (`u32` indices into the first dimension of a
    /// `(batch, seq, in)` input) this branch applies to; `None` applies it to every row. A server
    /// that batches requests for different adapters gives each adapter's branches its rows.
    pub rows: Option<Tensor>,
}

impl LoraBranch {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The branch composed from candle's ops, with its dropout when `dropout` gives an RNG.
    fn forward(&self, x: &Tensor, dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        let x = match dropout {
            Some(rng) if self.dropout > 0.0 => seeded_dropout(x, self.dropout, rng)?,
            _ => x.clone(),
        };
        let x = x.to_dtype(self.a.dtype())?;
        // Scaling B (`out × r`) rather than the output (`rows × out`) saves a pass over the
        // output and, in training, another in the backward.
        let b = if self.scale == 1.0 { self.b.clone() } else { (&self.b * self.scale)? };
        Ok(matmul_wt(&matmul_wt(&x, &self.a)?, &b)?)
    }
}

/// A projection: frozen base plus any number of LoRA branches (PEFT forward:
/// `base(x) + Σ scale·B(A(dropout(x)))`; the base output itself is never scaled).
#[derive(Debug, Clone)]
pub struct Linear {
    pub base: BaseWeight,
    pub lora: Vec<LoraBranch>,
}

impl Linear {
    pub fn new(base: BaseWeight) -> Self {
        Self { base, lora: Vec::new() }
    }
    pub fn in_dim(&self) -> usize {
        self.base.dims().1
    }
    pub fn out_dim(&self) -> usize {
        self.base.dims().0
    }

    /// The projection of `x` in `mode` (`dense_prefill`: see [`BaseWeight::forward`]). In
    /// training, one LoRA branch over a base read by rows is one fused op ([`lora::lora_train`]);
    /// otherwise the base's matmul of the mode plus each branch composed.
    pub(crate) fn forward(&self, x: &Tensor, mode: &mut Mode, dense_prefill: bool) -> Result<Tensor> {
        if mode.is_train() && self.fuses_in_training(x) {
            return lora::lora_train(x, self.fused_branch(mode.dropout()), None);
        }
        let mut y = if mode.is_train() { self.base.forward_train(x)? } else { self.base.forward(x, dense_prefill)? };
        for l in &self.lora {
            match &l.rows {
                None => {
                    let d = l.forward(x, mode.dropout())?.to_dtype(y.dtype())?;
                    y = (y + d)?;
                }
                Some(rows) => {
                    let training = mode.is_train();
                    if training || x.rank() != 3 {
                        return Err(candle_core::Error::Msg(format!(
                            "a LoRA branch limited to some batch rows runs only for inference on (batch, seq, features) inputs, not {:?}{}",
                            x.dims(),
                            if training { " in training" } else { "" }
                        ))
                        .into());
                    }
                    if rows.elem_count() > 0 {
                        let d = l.forward(&x.index_select(rows, 0)?, None)?.to_dtype(y.dtype())?;
                        y = y.index_add(rows, &d, 0)?;
                    }
                }
            }
        }
        Ok(y)
    }

    /// Whether a training forward on `x` takes the fused op ([`lora::lora_train`]): one LoRA
    /// branch over a base it reads by rows, f32 tensors on the CPU.
    pub(crate) fn fuses_in_training(&self, x: &Tensor) -> bool {
        match self.lora.as_slice() {
            [l] => l.rows.is_none() && self.base.readable_by_rows() && [x, &l.a, &l.b].iter().all(|t| applies(t)),
            _ => false,
        }
    }

    /// The base and the single LoRA branch as the fused ops take them (only called where
    /// [`Linear::fuses_in_training`] holds).
    fn fused_branch<'a>(&'a self, rng: Option<&'a mut DropoutRng>) -> lora::Branch<'a> {
        let l = &self.lora[0];
        let dropout = rng.filter(|_| l.dropout > 0.0).map(|rng| (l.dropout, rng));
        lora::Branch { w: self.base.rows(), a: &l.a, b: &l.b, scale: l.scale, dropout }
    }

    /// Training forward of `rms_norm(x, norm_weight, eps)`, with the norm inside the fused op when
    /// it applies (so the normalised input is not kept for the backward), else composed. LoRA
    /// dropout draws from `dropout` when given.
    pub(crate) fn forward_train_normed(
        &self,
        x: &Tensor,
        norm_weight: &Tensor,
        eps: f64,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        if self.fuses_in_training(x) && applies(norm_weight) {
            return lora::lora_train(x, self.fused_branch(dropout), Some((norm_weight, eps)));
        }
        self.forward(&crate::ops::rms_norm::rms_norm(x, norm_weight, eps)?, &mut Mode::Train { dropout }, true)
    }

    /// Training forward of `silu(g) ⊙ u`, formed inside the fused op when it applies (so the
    /// gated activations are not kept for the backward), else composed.
    pub(crate) fn forward_train_gated(&self, g: &Tensor, u: &Tensor, dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        if self.fuses_in_training(g) && applies(u) {
            return lora::lora_train_gated(g, u, self.fused_branch(dropout));
        }
        self.forward(&crate::ops::swiglu::swiglu(g, u)?, &mut Mode::Train { dropout }, true)
    }

    /// Training forward of `residual + self(x)`, the residual added inside the fused op when it
    /// applies (so the projection's own output is not kept for the backward), else composed.
    pub(crate) fn forward_train_residual(&self, x: &Tensor, residual: &Tensor, dropout: Option<&mut DropoutRng>) -> Result<Tensor> {
        if self.fuses_in_training(x) && applies(residual) {
            return lora::lora_train_residual(x, residual, self.fused_branch(dropout));
        }
        Ok((residual + self.forward(x, &mut Mode::Train { dropout }, true)?)?)
    }

    /// Whether [`Linear::cross_entropy_sum`] serves inputs like `x`: f32 on the CPU, a frozen f32
    /// or ggml-quantized base on the CPU, no LoRA branch.
    pub fn fuses_cross_entropy(&self, x: &Tensor) -> bool {
        self.base.readable_by_rows() && self.lora.is_empty() && applies(x)
    }

    /// `Σ_r −log softmax(x_r·Wᵀ)[targets[r]]` over the rows `r` of `x` `(rows, in)` that have a
    /// target ([`crate::NO_TARGET`] skips a row), differentiable with respect to `x`, without the
    /// `(rows, out)` logits ever existing ([`head_loss::head_cross_entropy_sum`]). `None` when
    /// [`Linear::fuses_cross_entropy`] does not hold: the caller computes the logits instead.
    pub(crate) fn cross_entropy_sum(&self, x: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
        if !self.fuses_cross_entropy(x) {
            return Ok(None);
        }
        head_loss::head_cross_entropy_sum(self.base.rows(), x, targets).map(Some)
    }

    /// Fold every LoRA branch into a dense base weight (`W + scale·B·A`) of `dtype`.
    pub fn merged_weight(&self, dtype: DType) -> Result<Tensor> {
        let mut w = self.base.to_dense(DType::F32)?;
        for l in &self.lora {
            let delta = (l.b.to_dtype(DType::F32)?.matmul(&l.a.to_dtype(DType::F32)?)? * l.scale)?;
            w = (w + delta)?;
        }
        Ok(w.to_dtype(dtype)?)
    }
}
