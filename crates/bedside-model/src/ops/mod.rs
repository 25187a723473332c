//! The training path's ops: each a CPU kernel in f32 with a backward written by hand from the
//! derivative, beside the composed reference it replaces and tested against it in the same file.
//!
//! candle's fused softmax, rms_norm, rope and quantized matmul record no backward, so training
//! would compose them from elementary ops; each of those allocates a tensor, makes its own pass
//! over memory, and adds a node whose backward makes more passes (and a zero-filled gradient
//! buffer). Here each block is one op: one pass forward, one pass backward. Every op falls back
//! to its composed reference off the CPU or for other dtypes.
//!
//! - [`attention`]: softmax attention with the rotary embedding inside, keeping only each query
//!   row's log-sum-exp for the backward.
//! - [`rms_norm`]: the RMS norm with a frozen weight.
//! - [`swiglu`]: Llama's gated activation `silu(gate) · up`.
//! - [`frozen_matmul`]: `x · Wᵀ` with a frozen dense or ggml-quantized weight (gradient for `x`).
//! - [`lora`]: a frozen projection and one LoRA branch as one op, with the norm before it, the
//!   gate or the residual after it inside.
//! - [`dropout`]: LoRA dropout from a seedable RNG, the masks regenerated in the backward.
//! - [`head_loss`]: the cross-entropy over logits, and the vocabulary head and that loss as one
//!   op whose logits never exist whole.
//!
//! The CPU helpers they share (threads, GEMM, weights read by rows) are in [`crate::cpu`].

pub(crate) mod attention;
pub(crate) mod dropout;
pub(crate) mod frozen_matmul;
pub(crate) mod head_loss;
pub(crate) mod lora;
pub(crate) mod rms_norm;
pub(crate) mod swiglu;

use candle_core::{CpuStorage, DType, Layout, Tensor};

/// Whether the fused kernels serve `x`: an f32 tensor on the CPU.
pub(crate) fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The contiguous f32 values an op was given.
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: expected a contiguous tensor"),
        _ => candle_core::bail!("{op}: expected f32 values"),
    }
}

/// The f32 values of a (frozen, untracked) tensor held by an op.
pub(crate) fn held_f32(t: &Tensor, op: &str) -> candle_core::Result<Vec<f32>> {
    if t.dtype() != DType::F32 {
        candle_core::bail!("{op}: expected an f32 operand, got {:?}", t.dtype());
    }
    t.flatten_all()?.to_vec1::<f32>()
}

/// What the op tests share: deterministic inputs, and the comparison of an op with its composed
/// reference in values and gradients.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor, Var};

    pub(crate) fn randn(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic values in about [-2, 2] without a seeded candle RNG.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Values of `fused(x)` and `composed(x)`, and the gradients of `Σ fused(x) ⊙ probe` and
    /// `Σ composed(x) ⊙ probe` with respect to each input, must agree.
    pub(crate) fn check(inputs: &[Tensor], fused: impl Fn(&[Tensor]) -> Tensor, composed: impl Fn(&[Tensor]) -> Tensor, tol: f32) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yc) = (fused(&ts), composed(&ts));
        assert_eq!(yf.dims(), yc.dims());
        let d = max_abs_diff(&yf, &yc);
        assert!(d < tol, "values differ by {d}");
        let probe = randn(yf.dims(), 99);
        let gf = (yf * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (yc * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (a, b) = (gf.get(v).expect("fused gradient"), gc.get(v).expect("composed gradient"));
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
            let d = max_abs_diff(a, b) / scale;
            assert!(d < tol, "gradient of input {i} differs by {d} (relative)");
            assert!(scale > 0.0);
        }
    }
}
