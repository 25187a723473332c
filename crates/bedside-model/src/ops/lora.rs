//! A frozen projection and one LoRA branch as one op for training on the CPU,
//! `x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ`, optionally with the RMS norm before it, the gated activation
//! before it or the residual after it inside. The composed reference is the projection written
//! with candle's ops (`base(x) + s·B(A(dropout(x)))`, what [`crate::linear::Linear`] composes
//! where the op does not apply); the tests compare the two with the same dropout masks.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::cpu::{gemm_by_pieces, input_grad_by_pieces, WeightRows};
use crate::error::Result;
use crate::ops::dropout::{DropoutDraw, DropoutRng};
use crate::ops::f32_data;
use crate::ops::rms_norm::RmsNormOp;
use crate::ops::swiglu::{swiglu_backward, swiglu_values};

/// A frozen weight with one LoRA branch, as the fused ops take them.
pub(crate) struct Branch<'a> {
    /// The frozen weight `[out, in]` (f32 or ggml-quantized), read by rows.
    pub(crate) w: WeightRows,
    /// `A: [r, in]` and `B: [out, r]`, as PEFT stores them.
    pub(crate) a: &'a Tensor,
    pub(crate) b: &'a Tensor,
    pub(crate) scale: f64,
    /// Dropout on the branch input: the drop probability and the RNG its mask is drawn from.
    pub(crate) dropout: Option<(f32, &'a mut DropoutRng)>,
}

impl Branch<'_> {
    /// The dropout mask over `n` input values, drawn now, if the branch has dropout.
    fn draw(&mut self, n: usize) -> Result<Option<DropoutDraw>> {
        self.dropout.as_mut().map(|(p, rng)| DropoutDraw::take(rng, n, *p)).transpose()
    }
}

/// `x·Wᵀ + s·(x·Aᵀ)·Bᵀ` for a frozen `W` (f32, or ggml-quantized and dequantized a block at a
/// time per call) and one LoRA branch on the CPU, as one op whose backward gives `x`, `A` and
/// `B` their gradients (never `W`'s). Composed, the branch is four nodes (two matmuls, the
/// scaling, the sum) whose backward writes three output-sized buffers and zero-fills as many
/// more for candle's gradient sums; here the forward adds the branch into the base product in
/// place and the backward writes only `dx` at full size. LoRA dropout on the branch input is
/// part of the op: the same mask [`crate::ops::dropout::seeded_dropout`] would draw, regenerated in the backward
/// (composed, the mask and the masked input are two more input-sized tensors per projection).
///
/// With `norm`, the op's input is `x` before the RMS norm that precedes the projection: the op
/// normalises it itself and again in the backward, so the normalised activations (which the
/// three attention or two MLP input projections share) are not kept from forward to backward.
pub(crate) fn lora_train(x: &Tensor, mut p: Branch, norm: Option<(&Tensor, f64)>) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.contiguous()?.reshape((rows, in_dim))?;
    let norm = norm.map(|(w, eps)| RmsNormOp::new(w, eps)).transpose()?;
    let out_dim = p.w.dims()?.0;
    let dropout = p.draw(rows * in_dim)?;
    let op = FusedLora { w: p.w, scale: p.scale, dropout, norm };
    let y = x2.apply_op3(&p.a.contiguous()?, &p.b.contiguous()?, op)?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = out_dim;
    Ok(y.reshape(out_dims)?)
}

/// `silu(g) ⊙ u` through the projection and its LoRA branch, as one op: the gated activations
/// (the MLP's widest tensor) are formed inside and again in the backward instead of being kept.
/// `A` and `B` travel packed in one tensor, since an op takes at most three inputs.
pub(crate) fn lora_train_gated(g: &Tensor, u: &Tensor, p: Branch) -> Result<Tensor> {
    if u.dims() != g.dims() {
        return Err(candle_core::Error::Msg(format!("gated projection: gate {:?} and up {:?} differ", g.dims(), u.dims())).into());
    }
    lora_train_packed(g, u, p, PackedInput::Gated)
}

/// `residual + x·Wᵀ + s·(x·Aᵀ)·Bᵀ` as one op, so the projection's own output (which the sum
/// would keep as an input) is never a tensor; `A` and `B` packed as in [`lora_train_gated`].
pub(crate) fn lora_train_residual(x: &Tensor, residual: &Tensor, p: Branch) -> Result<Tensor> {
    let dims = x.dims();
    let out_dims: Vec<usize> = dims[..dims.len() - 1].iter().copied().chain([p.w.dims()?.0]).collect();
    if residual.dims() != out_dims.as_slice() {
        return Err(
            candle_core::Error::Msg(format!("residual {:?} does not match the projection's output {out_dims:?}", residual.dims())).into()
        );
    }
    lora_train_packed(x, residual, p, PackedInput::Residual)
}

/// A [`FusedPackedLora`] op over `x` (`(…, in)`) and `z` (the up projection's output or the
/// residual), returning `(…, out)`.
fn lora_train_packed(x: &Tensor, z: &Tensor, mut p: Branch, input: PackedInput) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let z_dim = z.dims()[z.rank() - 1];
    let (x2, z2) = (x.contiguous()?.reshape((rows, in_dim))?, z.contiguous()?.reshape((rows, z_dim))?);
    let ab = Tensor::cat(&[&p.a.flatten_all()?, &p.b.flatten_all()?], 0)?;
    let (out_dim, r) = (p.w.dims()?.0, p.a.dims()[0]);
    let dropout = p.draw(rows * in_dim)?;
    let core = FusedLora { w: p.w, scale: p.scale, dropout, norm: None };
    let y = x2.apply_op3(&z2, &ab, FusedPackedLora { core, r, input })?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = out_dim;
    Ok(y.reshape(out_dims)?)
}

struct FusedLora {
    /// The frozen base weight `[out, in]`.
    w: WeightRows,
    scale: f64,
    /// The dropout mask on the branch input `(rows, in)`, if any.
    dropout: Option<DropoutDraw>,
    /// The RMS norm applied to the op's input first, if any.
    norm: Option<RmsNormOp>,
}

impl FusedLora {
    /// `x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ` for `x` `(rows, k)`.
    #[allow(clippy::too_many_arguments)]
    fn forward_values(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (rows, k) = xl.shape().dims2()?;
        let (n, wk) = self.w.dims()?;
        let (r, ak) = al.shape().dims2()?;
        let (bn, br) = bl.shape().dims2()?;
        if wk != k || ak != k || bn != n || br != r {
            candle_core::bail!("fused-lora: x {:?}, W {:?}, A {:?}, B {:?} do not chain", xl.dims(), (n, wk), al.dims(), bl.dims());
        }
        let y = CpuStorage::F32(gemm_by_pieces(&self.w, x, xl)?);
        let h = match &self.dropout {
            None => x.matmul(a, (1, rows, r, k), xl, &al.transpose(0, 1)?)?,
            Some(d) => {
                let xm: Vec<f32> = f32_data(x, xl, "fused-lora")?.iter().zip(d.values(rows * k)).map(|(x, m)| x * m).collect();
                CpuStorage::F32(xm).matmul(a, (1, rows, r, k), &Layout::contiguous((rows, k)), &al.transpose(0, 1)?)?
            }
        };
        let hb = h.matmul(b, (1, rows, n, r), &Layout::contiguous((rows, r)), &bl.transpose(0, 1)?)?;
        let (CpuStorage::F32(mut y), CpuStorage::F32(hb)) = (y, hb) else { candle_core::bail!("fused-lora: expected f32") };
        let s = self.scale as f32;
        y.iter_mut().zip(&hb).for_each(|(y, d)| *y += s * d);
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    /// Gradients `(dx, dA, dB)` of the product above for `x` `(rows, k)` from `dy` `(rows, n)`.
    fn backward(&self, x: Tensor, a: &Tensor, b: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        // Detached: the backward builds no graph of its own.
        let (x, a, b, dy) = (x.detach(), a.detach(), b.detach(), dy.detach().contiguous()?);
        let mask = self.dropout.map(|d| d.tensor(x.shape())).transpose()?;
        // The branch's input: x, or x with the forward's dropout mask.
        let xb = match &mask {
            Some(m) => (&x * m)?,
            None => x,
        };
        let dyb = (dy.matmul(&b)? * self.scale)?; // (rows, r), tiny
        let h = xb.matmul(&a.t()?)?; // (rows, r), tiny
        let base = input_grad_by_pieces(&self.w, &dy)?;
        let branch = dyb.matmul(&a)?;
        let branch = match &mask {
            Some(m) => (branch * m)?,
            None => branch,
        };
        let dx = (base + branch)?;
        let da = dyb.t()?.matmul(&xb)?;
        let db = (dy.t()?.matmul(&h)? * self.scale)?;
        Ok((dx, da, db))
    }
}

impl CustomOp3 for FusedLora {
    fn name(&self) -> &'static str {
        "fused-lora"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match &self.norm {
            None => self.forward_values(x, xl, a, al, b, bl),
            Some(norm) => {
                let h = CpuStorage::F32(norm.normalise(f32_data(x, xl, "fused-lora")?)?);
                self.forward_values(&h, &Layout::contiguous(xl.shape()), a, al, b, bl)
            }
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, da, db) = match &self.norm {
            None => self.backward(x.clone(), a, b, dy)?,
            Some(norm) => {
                let (dh, da, db) = self.backward(norm.forward_no_bwd(&x.detach())?, a, b, dy)?;
                (norm.backward(&x.detach(), &dh)?, da, db)
            }
        };
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// What a [`FusedPackedLora`] op's first two inputs are.
#[derive(Clone, Copy)]
enum PackedInput {
    /// `g` and `u`: the projection multiplies `silu(g) ⊙ u`.
    Gated,
    /// `x` and a residual: the projection multiplies `x` and adds the residual to its output.
    Residual,
}

/// [`FusedLora`] with two inputs besides the LoRA factors, `A` and `B` packed in the third (an
/// op takes at most three inputs).
struct FusedPackedLora {
    core: FusedLora,
    /// LoRA rank: `A` is the first `r · in` packed values, `B` the remaining `out · r`.
    r: usize,
    input: PackedInput,
}

impl FusedPackedLora {
    fn factor_layouts(&self, k: usize, abl: &Layout) -> candle_core::Result<(Layout, Layout)> {
        let (r, n) = (self.r, self.core.w.dims()?.0);
        let o = abl
            .contiguous_offsets()
            .map(|(o, _)| o)
            .ok_or_else(|| candle_core::Error::Msg("fused-lora: packed factors not contiguous".into()))?;
        if abl.shape().elem_count() != r * (k + n) {
            candle_core::bail!("fused-lora: {} packed factor values for rank {r}, in {k}, out {n}", abl.shape().elem_count());
        }
        Ok((Layout::contiguous_with_offset((r, k), o), Layout::contiguous_with_offset((n, r), o + r * k)))
    }
}

impl CustomOp3 for FusedPackedLora {
    fn name(&self) -> &'static str {
        "fused-packed-lora"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        z: &CpuStorage,
        zl: &Layout,
        ab: &CpuStorage,
        abl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (al, bl) = self.factor_layouts(xl.shape().dims2()?.1, abl)?;
        match self.input {
            PackedInput::Gated => {
                let p = CpuStorage::F32(swiglu_values(f32_data(x, xl, "fused-lora")?, f32_data(z, zl, "fused-lora")?)?);
                self.core.forward_values(&p, &Layout::contiguous(xl.shape()), ab, &al, ab, &bl)
            }
            PackedInput::Residual => {
                let (y, shape) = self.core.forward_values(x, xl, ab, &al, ab, &bl)?;
                let (CpuStorage::F32(mut y), res) = (y, f32_data(z, zl, "fused-lora")?) else {
                    candle_core::bail!("fused-lora: expected f32")
                };
                if res.len() != y.len() {
                    candle_core::bail!("fused-lora: residual of {} values for an output of {}", res.len(), y.len());
                }
                // Added last, as `y + residual` composed would: the same values bit for bit.
                y.iter_mut().zip(res).for_each(|(y, r)| *y += r);
                Ok((CpuStorage::F32(y), shape))
            }
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        z: &Tensor,
        ab: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, z, ab) = (x.detach(), z.detach(), ab.detach());
        let (rows, k) = x.dims2()?;
        let (r, n) = (self.r, self.core.w.dims()?.0);
        let a = ab.narrow(0, 0, r * k)?.reshape((r, k))?;
        let b = ab.narrow(0, r * k, n * r)?.reshape((n, r))?;
        let (dx, dz, da, db) = match self.input {
            PackedInput::Gated => {
                let p = swiglu_values(&x.flatten_all()?.to_vec1::<f32>()?, &z.flatten_all()?.to_vec1::<f32>()?)?;
                let (dp, da, db) = self.core.backward(Tensor::from_vec(p, (rows, k), x.device())?, &a, &b, dy)?;
                let (dg, du) = swiglu_backward(&x, &z, &dp)?;
                (dg, du, da, db)
            }
            PackedInput::Residual => {
                let (dx, da, db) = self.core.backward(x, &a, &b, dy)?;
                (dx, dy.clone(), da, db)
            }
        };
        let dab = Tensor::cat(&[&da.flatten_all()?, &db.flatten_all()?], 0)?;
        Ok((Some(dx), Some(dz), Some(dab)))
    }
}

#[cfg(test)]
mod tests {
    use crate::linear::{BaseWeight, Linear, LoraBranch};
    use crate::mode::Mode;
    use crate::ops::dropout::{seeded_dropout, DropoutRng};
    use crate::ops::testing::{check, max_abs_diff, randn};
    use candle_core::{Device, Tensor, D};

    /// A projection with one LoRA branch in training (the fused op) against the composed ops over
    /// `dense`, the base weight's values: outputs and the gradients of the input, A and B. With
    /// `dropout`, both start from the same dropout RNG state: the fused op must apply the mask the
    /// composed [`seeded_dropout`] draws and leave the RNG where it does.
    fn check_lora_projection(base: BaseWeight, dense: &Tensor, r: usize, scale: f64, dropout: f32, seed: u64) {
        let (n, k) = base.dims();
        let state = 0x5eed ^ seed;
        let states = std::cell::RefCell::new(Vec::new());
        let inputs = [randn(&[2, 3, k], seed), randn(&[r, k], seed + 1), randn(&[n, r], seed + 2)];
        let fused = |v: &[Tensor], p: f32| {
            let mut rng = DropoutRng::new(state);
            let lin =
                Linear { base: base.clone(), lora: vec![LoraBranch { a: v[1].clone(), b: v[2].clone(), scale, dropout: p, rows: None }] };
            assert!(lin.fuses_in_training(&v[0]), "the fused op must apply");
            let y = lin.forward(&v[0], &mut Mode::Train { dropout: Some(&mut rng) }, true).unwrap();
            states.borrow_mut().push(rng.state());
            y
        };
        check(
            &inputs,
            |v| fused(v, dropout),
            |v| {
                let mut rng = DropoutRng::new(state);
                let xb = if dropout > 0.0 { seeded_dropout(&v[0], dropout, &mut rng).unwrap() } else { v[0].clone() };
                states.borrow_mut().push(rng.state());
                let base = v[0].broadcast_matmul(&dense.t().unwrap()).unwrap();
                let branch = xb.broadcast_matmul(&v[1].t().unwrap()).unwrap().broadcast_matmul(&v[2].t().unwrap()).unwrap();
                (base + (branch * scale).unwrap()).unwrap()
            },
            1e-5,
        );
        let states = states.borrow().clone();
        assert!(states.windows(2).all(|w| w[0] == w[1]), "the dropout RNG advanced differently: {states:?}");
        if dropout > 0.0 {
            assert_ne!(states[0], state, "no mask was drawn");
            // The mask mattered: without it the output differs.
            let d = max_abs_diff(&fused(&inputs, dropout), &fused(&inputs, 0.0));
            assert!(d > 1e-3, "dropout changed nothing ({d})");
        }
    }

    /// The RMS norm before the projection, `silu(g) ⊙ u`, or the residual after it, formed inside
    /// the fused op (with dropout on the branch): against the norm, the gate or the sum composed
    /// from candle's ops around the composed projection.
    #[test]
    fn lora_projection_with_the_norm_gate_or_residual_inside_matches_composed_ops() {
        let (n, k, r, scale, p) = (7, 10, 3, 1.5, 0.2);
        let w = randn(&[n, k], 30);
        let norm_w = randn(&[k], 31);
        let lin = |a: &Tensor, b: &Tensor| Linear {
            base: BaseWeight::Dense(w.clone()),
            lora: vec![LoraBranch { a: a.clone(), b: b.clone(), scale, dropout: p, rows: None }],
        };
        let composed = |x: &Tensor, a: &Tensor, b: &Tensor, rng: &mut DropoutRng| {
            let xb = seeded_dropout(x, p, rng).unwrap();
            let branch = xb.broadcast_matmul(&a.t().unwrap()).unwrap().broadcast_matmul(&b.t().unwrap()).unwrap();
            (x.broadcast_matmul(&w.t().unwrap()).unwrap() + (branch * scale).unwrap()).unwrap()
        };
        check(
            &[randn(&[2, 3, k], 32), randn(&[r, k], 33), randn(&[n, r], 34)],
            |v| lin(&v[1], &v[2]).forward_train_normed(&v[0], &norm_w, 1e-5, Some(&mut DropoutRng::new(7))).unwrap(),
            |v| {
                let ms = v[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let h = v[0].broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&norm_w).unwrap();
                composed(&h, &v[1], &v[2], &mut DropoutRng::new(7))
            },
            1e-5,
        );
        check(
            &[randn(&[2, 3, k], 35), randn(&[2, 3, k], 36), randn(&[r, k], 37), randn(&[n, r], 38)],
            |v| lin(&v[2], &v[3]).forward_train_gated(&v[0], &v[1], Some(&mut DropoutRng::new(8))).unwrap(),
            |v| {
                let h = (candle_nn::ops::silu(&v[0]).unwrap() * &v[1]).unwrap();
                composed(&h, &v[2], &v[3], &mut DropoutRng::new(8))
            },
            1e-5,
        );
        check(
            &[randn(&[2, 3, k], 39), randn(&[2, 3, n], 40), randn(&[r, k], 41), randn(&[n, r], 42)],
            |v| lin(&v[2], &v[3]).forward_train_residual(&v[0], &v[1], Some(&mut DropoutRng::new(9))).unwrap(),
            |v| (&v[1] + composed(&v[0], &v[2], &v[3], &mut DropoutRng::new(9))).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn dense_lora_projection_matches_composed_ops_for_input_and_both_factors() {
        let w = randn(&[7, 10], 10);
        check_lora_projection(BaseWeight::Dense(w.clone()), &w, 3, 2.5, 0.0, 11);
    }

    /// LoRA dropout inside the fused op: the same mask as the composed dropout, in the forward
    /// and (regenerated) in the backward.
    #[test]
    fn lora_projection_with_dropout_matches_composed_dropout() {
        let w = randn(&[7, 10], 12);
        check_lora_projection(BaseWeight::Dense(w.clone()), &w, 3, 2.5, 0.3, 13);
        let q = candle_core::quantized::QTensor::quantize(&randn(&[40, 64], 14), candle_core::quantized::GgmlDType::Q4_1).unwrap();
        let wd = q.dequantize(&Device::Cpu).unwrap();
        check_lora_projection(BaseWeight::quantized(q).unwrap(), &wd, 4, 0.75, 0.5, 15);
    }

    /// The same op over a ggml-quantized base: equal to the composed ops over the dequantized
    /// weight (what the quantized base means in training), also for a head wide enough to be
    /// dequantized in many pieces.
    #[test]
    fn quantized_lora_projection_matches_composed_ops_over_the_dequantized_weight() {
        use candle_core::quantized::{GgmlDType, QTensor};
        for (n, k) in [(40, 64), ((1 << 22) / 64 + 24, 64)] {
            let q = QTensor::quantize(&randn(&[n, k], 20), GgmlDType::Q4_1).unwrap();
            let wd = q.dequantize(&Device::Cpu).unwrap();
            let base = BaseWeight::quantized(q).unwrap();
            assert!(matches!(base, BaseWeight::Quantized(..)));
            check_lora_projection(base, &wd, 4, 0.75, 0.0, 21);
        }
    }
}
