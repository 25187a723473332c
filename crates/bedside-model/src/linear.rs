//! A frozen base projection that can carry LoRA branches.
//!
//! Every projection in the architecture is this type rather than candle-transformers' fixed
//! `Linear` fields, so adapters (for inference or training) attach to any of them by name.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::error::Result;

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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            BaseWeight::Dense(w) => matmul_wt(x, w)?,
            BaseWeight::Quantized(_, mm) => mm.forward(x)?,
        })
    }
}

/// `x @ wᵀ` for `x` of any rank, `w` of shape `[out, in]`.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out_dims)
}

/// One low-rank update `scale · B(A(x))`, with `a: [r, in]` and `b: [out, r]` as PEFT stores them.
#[derive(Debug, Clone)]
pub struct LoraBranch {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// Dropout on the branch input, applied only while training.
    pub dropout: f32,
}

impl LoraBranch {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let x = if training && self.dropout > 0.0 { candle_nn::ops::dropout(x, self.dropout)? } else { x.clone() };
        let x = x.to_dtype(self.a.dtype())?;
        let h = matmul_wt(&matmul_wt(&x, &self.a)?, &self.b)?;
        Ok((h * self.scale)?)
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

    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let mut y = self.base.forward(x)?;
        for l in &self.lora {
            let d = l.forward(x, training)?.to_dtype(y.dtype())?;
            y = (y + d)?;
        }
        Ok(y)
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
