//! The RMS norm with a frozen weight, differentiable with respect to its input, beside its
//! composed reference [`rms_norm_composed`].

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::cpu::par_fill;
use crate::error::Result;
use crate::ops::{applies, f32_data, held_f32};

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension, differentiable with respect to
/// `x` (the norm's weight is frozen in LoRA training and gets no gradient). Other dtypes and
/// devices take [`rms_norm_composed`].
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !applies(x) || weight.dtype() != DType::F32 {
        return rms_norm_composed(x, weight, eps);
    }
    let op = RmsNormOp { weight: held_f32(weight, "rms-norm")?, eps: eps as f32 };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// The same from candle's differentiable ops (any device and dtype), normalising in f32.
pub(crate) fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let norm = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x32.broadcast_div(&(norm + eps)?.sqrt()?)?;
    Ok(y.to_dtype(dtype)?.broadcast_mul(&weight.to_dtype(dtype)?)?)
}

/// An RMS norm with a frozen weight, as the fused ops hold it.
pub(crate) struct RmsNormOp {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNormOp {
    /// The norm of `weight` (f32) and `eps`.
    pub(crate) fn new(weight: &Tensor, eps: f64) -> candle_core::Result<Self> {
        Ok(RmsNormOp { weight: held_f32(weight, "rms-norm")?, eps: eps as f32 })
    }

    fn inv_rms(&self, x: &[f32]) -> f32 {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }

    /// Normalised rows of `x` (rows of the weight's length), on candle's CPU threads.
    pub(crate) fn normalise(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let h = self.weight.len();
        if h == 0 || !x.len().is_multiple_of(h) {
            candle_core::bail!("rms-norm: {} values are not rows of the weight's {h}", x.len());
        }
        Ok(par_fill(x.len(), h, |range, out| {
            for (xr, o) in x[range].chunks_exact(h).zip(out.chunks_exact_mut(h)) {
                let r = self.inv_rms(xr);
                for ((o, &v), &w) in o.iter_mut().zip(xr).zip(&self.weight) {
                    *o = v * r * w;
                }
            }
        }))
    }

    /// The normalised tensor, recording no backward (for backward passes).
    pub(crate) fn forward_no_bwd(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    /// The gradient with respect to `x` from the gradient `dy` with respect to the norm's output.
    pub(crate) fn backward(&self, x: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &RmsNormBwd(self))
    }
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let h = self.weight.len();
        if layout.dims().last() != Some(&h) {
            candle_core::bail!("rms-norm: input {:?} does not end in the weight's {h}", layout.dims());
        }
        Ok((CpuStorage::F32(self.normalise(x)?), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.backward(arg, grad_res)?))
    }
}

/// `dx = r · (dy ⊙ w) − r³/n · x · Σ (dy ⊙ w ⊙ x)` per row, with `r = 1/sqrt(mean(x²) + eps)`.
struct RmsNormBwd<'a>(&'a RmsNormOp);

impl CustomOp2 for RmsNormBwd<'_> {
    fn name(&self) -> &'static str {
        "rms-norm-bwd"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let g = f32_data(gs, gl, self.name())?;
        let w = &self.0.weight;
        let h = w.len();
        let dx = par_fill(x.len(), h, |range, out| {
            let (xr, gr) = (&x[range.clone()], &g[range]);
            for ((o, x), g) in out.chunks_exact_mut(h).zip(xr.chunks_exact(h)).zip(gr.chunks_exact(h)) {
                let r = self.0.inv_rms(x);
                let dot: f32 = g.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
                let c = r * r * r * dot / h as f32;
                for (((o, &g), &w), &x) in o.iter_mut().zip(g).zip(w).zip(x) {
                    *o = r * g * w - c * x;
                }
            }
        });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check, randn};

    #[test]
    fn rms_norm_matches_composed_ops() {
        let x = randn(&[2, 5, 16], 3);
        let w = randn(&[16], 4);
        check(&[x], |v| rms_norm(&v[0], &w, 1e-5).unwrap(), |v| rms_norm_composed(&v[0], &w, 1e-5).unwrap(), 1e-5);
    }
}
