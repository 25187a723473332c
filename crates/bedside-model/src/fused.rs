//! Fused CPU kernels with their own backward, for the training path in f32.
//!
//! candle's fused softmax, rms_norm and rope record no backward, so training composes them from
//! elementary ops; each of those allocates a tensor, makes its own pass over memory, and adds a
//! node whose backward makes more passes (and a zero-filled gradient buffer). Here each block is
//! one op: one pass forward, one pass backward, written by hand from the derivative. Every
//! function falls back to the composed ops off the CPU or for other dtypes, and the tests below
//! check values and gradients against the composed versions.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};

use crate::error::Result;

/// Whether the fused kernels serve `x`: an f32 tensor on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: expected a contiguous tensor"),
        _ => candle_core::bail!("{op}: expected f32 values"),
    }
}

/// The f32 values of a (frozen, untracked) tensor held by an op.
fn held_f32(t: &Tensor, op: &str) -> candle_core::Result<Vec<f32>> {
    if t.dtype() != DType::F32 {
        candle_core::bail!("{op}: expected an f32 operand, got {:?}", t.dtype());
    }
    t.flatten_all()?.to_vec1::<f32>()
}

/// A new buffer of `n` values filled by `f(element_range, out)` over units of `unit` elements
/// (a row, or a block of an elementwise op), spread over candle's CPU threads.
fn par_fill(n: usize, unit: usize, f: impl Fn(Range<usize>, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let unit = unit.max(1);
    let ptr = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(unit), |units| {
        let lo = units.start * unit;
        let hi = (units.end * unit).min(n);
        // SAFETY: the units handed out are disjoint, so each element range is written by one
        // thread only, and `out` outlives the call.
        let dst = unsafe { std::slice::from_raw_parts_mut((ptr as *mut f32).add(lo), hi - lo) };
        f(lo..hi, dst);
    });
    out
}

// ---------------------------------------------------------------------------------------------
// softmax(scale · x + mask) over the last dimension

/// `softmax(scale · x + mask)` over the last dimension of `x` `(b, …, t, kv)`, with `mask` an
/// additive `(b, 1, …, t, kv)` tensor (−∞ blocks a position) broadcast over the middle
/// dimensions: attention probabilities from raw scores. Differentiable with respect to `x`.
pub fn softmax_scaled_masked(x: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if !applies(x) || dims.len() < 3 || mask.is_some_and(|m| !applies(m)) {
        let z = (x * scale)?;
        let z = match mask {
            Some(m) => z.broadcast_add(m)?,
            None => z,
        };
        return Ok(candle_nn::ops::softmax(&z, D::Minus1)?);
    }
    let (b, t, kv) = (dims[0], dims[dims.len() - 2], dims[dims.len() - 1]);
    if let Some(m) = mask {
        if m.elem_count() != b * t * kv {
            return Err(candle_core::Error::Msg(format!("attention mask {:?} does not match scores {:?}", m.dims(), dims)).into());
        }
    }
    let mask = mask.map(|m| m.contiguous()).transpose()?;
    Ok(x.contiguous()?.apply_op1(SoftmaxMasked { scale: scale as f32, mask, b, t })?)
}

struct SoftmaxMasked {
    scale: f32,
    /// Contiguous `(b, t, kv)` values, whatever the singleton dimensions.
    mask: Option<Tensor>,
    b: usize,
    t: usize,
}

impl CustomOp1 for SoftmaxMasked {
    fn name(&self) -> &'static str {
        "softmax-scaled-masked"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let kv = layout.dims()[layout.dims().len() - 1];
        let mask = self.mask.as_ref().map(|m| held_f32(m, self.name())).transpose()?;
        let rows = x.len() / kv.max(1);
        let rows_per_batch = rows / self.b.max(1);
        let (scale, t) = (self.scale, self.t);
        let y = par_fill(x.len(), kv, |range, out| {
            for (r, o) in (range.start / kv..range.end / kv).zip(out.chunks_exact_mut(kv)) {
                let xr = &x[r * kv..(r + 1) * kv];
                let mut m = f32::NEG_INFINITY;
                match &mask {
                    Some(mask) => {
                        let (bi, i) = (r / rows_per_batch, r % t);
                        let mr = &mask[(bi * t + i) * kv..(bi * t + i + 1) * kv];
                        for ((o, &v), &a) in o.iter_mut().zip(xr).zip(mr) {
                            *o = v * scale + a;
                            m = m.max(*o);
                        }
                    }
                    None => {
                        for (o, &v) in o.iter_mut().zip(xr) {
                            *o = v * scale;
                            m = m.max(*o);
                        }
                    }
                }
                if m == f32::NEG_INFINITY {
                    // Every position blocked: no distribution; zeros rather than NaN.
                    o.fill(0.0);
                    continue;
                }
                let mut s = 0f32;
                for o in o.iter_mut() {
                    *o = (*o - m).exp();
                    s += *o;
                }
                let inv = 1.0 / s;
                o.iter_mut().for_each(|o| *o *= inv);
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(g.apply_op2_no_bwd(&res.contiguous()?, &SoftmaxBwd { scale: self.scale })?))
    }
}

/// `dx = scale · y ⊙ (dy − Σ dy ⊙ y)` per row, from the output `y` and its gradient `dy`.
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "softmax-scaled-masked-bwd"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ys: &CpuStorage, yl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_data(gs, gl, self.name())?;
        let y = f32_data(ys, yl, self.name())?;
        let kv = gl.dims()[gl.dims().len() - 1];
        let scale = self.scale;
        let dx = par_fill(g.len(), kv, |range, out| {
            let (gr, yr) = (&g[range.clone()], &y[range]);
            for ((o, g), y) in out.chunks_exact_mut(kv).zip(gr.chunks_exact(kv)).zip(yr.chunks_exact(kv)) {
                let dot: f32 = g.iter().zip(y).map(|(a, b)| a * b).sum();
                for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
                    *o = scale * y * (g - dot);
                }
            }
        });
        Ok((CpuStorage::F32(dx), gl.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// RMS norm with a frozen weight

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension, differentiable with respect to
/// `x` (the norm's weight is frozen in LoRA training and gets no gradient). Other dtypes and
/// devices compose it from candle's ops, normalising in f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !applies(x) || weight.dtype() != DType::F32 {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let norm = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let y = x32.broadcast_div(&(norm + eps)?.sqrt()?)?;
        return Ok(y.to_dtype(dtype)?.broadcast_mul(&weight.to_dtype(dtype)?)?);
    }
    let op = RmsNorm { weight: held_f32(weight, "rms-norm")?, eps: eps as f32 };
    Ok(x.contiguous()?.apply_op1(op)?)
}

struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    fn inv_rms(&self, x: &[f32]) -> f32 {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let h = self.weight.len();
        if layout.dims().last() != Some(&h) {
            candle_core::bail!("rms-norm: input {:?} does not end in the weight's {h}", layout.dims());
        }
        let y = par_fill(x.len(), h, |range, out| {
            for (xr, o) in x[range].chunks_exact(h).zip(out.chunks_exact_mut(h)) {
                let r = self.inv_rms(xr);
                for ((o, &v), &w) in o.iter_mut().zip(xr).zip(&self.weight) {
                    *o = v * r * w;
                }
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let bwd = RmsNormBwd(RmsNorm { weight: self.weight.clone(), eps: self.eps });
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &bwd)?))
    }
}

/// `dx = r · (dy ⊙ w) − r³/n · x · Σ (dy ⊙ w ⊙ x)` per row, with `r = 1/sqrt(mean(x²) + eps)`.
struct RmsNormBwd(RmsNorm);

impl CustomOp2 for RmsNormBwd {
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

// ---------------------------------------------------------------------------------------------
// rotary embeddings, "rotate half" pairing

/// Rotary embeddings in HF's "rotate half" pairing on `x` `(b, heads, t, d)` with `cos`/`sin`
/// `(t, d/2)` or `(b, t, d/2)`: `y₁ = x₁·cos − x₂·sin`, `y₂ = x₂·cos + x₁·sin` on the two halves
/// of the head dimension. Differentiable with respect to `x` (the backward rotates back).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, _, t, d) = x.dims4()?;
    let tables_fit = match cos.dims() {
        [ct, h] => *ct == t && *h * 2 == d,
        [cb, ct, h] => *cb == b && *ct == t && *h * 2 == d,
        _ => false,
    };
    if !applies(x) || !applies(cos) || !applies(sin) || !tables_fit || cos.dims() != sin.dims() {
        return rope_composed(x, cos, sin);
    }
    let op = Rope { cos: held_f32(cos, "rope")?.into(), sin: held_f32(sin, "rope")?.into(), per_row: cos.rank() == 3, inverse: false };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// The same rotation from candle's differentiable ops (any device and dtype).
fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    let (cos, sin) = if cos.rank() == 2 {
        (cos.unsqueeze(0)?.unsqueeze(0)?, sin.unsqueeze(0)?.unsqueeze(0)?)
    } else {
        (cos.unsqueeze(1)?, sin.unsqueeze(1)?)
    };
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
}

struct Rope {
    cos: std::sync::Arc<[f32]>,
    sin: std::sync::Arc<[f32]>,
    /// Tables are `(b, t, d/2)` (one set per sequence) rather than `(t, d/2)`.
    per_row: bool,
    /// Rotate by −θ: the backward of the forward rotation.
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        let (_, heads, t, d) = layout.shape().dims4()?;
        let half = d / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let y = par_fill(x.len(), d, |range, out| {
            for (r, (xr, o)) in (range.start / d..).zip(x[range].chunks_exact(d).zip(out.chunks_exact_mut(d))) {
                let i = r % t;
                let table_row = if self.per_row { (r / (heads * t)) * t + i } else { i };
                let c = &self.cos[table_row * half..(table_row + 1) * half];
                let s = &self.sin[table_row * half..(table_row + 1) * half];
                let (x1, x2) = xr.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for j in 0..half {
                    let sj = sign * s[j];
                    o1[j] = x1[j] * c[j] - x2[j] * sj;
                    o2[j] = x2[j] * c[j] + x1[j] * sj;
                }
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // The rotation is orthogonal: its transpose is the rotation by −θ.
        let back = Rope { cos: self.cos.clone(), sin: self.sin.clone(), per_row: self.per_row, inverse: !self.inverse };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: silu(gate) · up

/// Elements per unit of work of the elementwise kernels.
const ELEMWISE_UNIT: usize = 16 * 1024;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `silu(gate) · up`, the gated activation of Llama's MLP, differentiable with respect to both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !applies(gate) || !applies(up) || gate.dims() != up.dims() {
        return Ok((candle_nn::ops::silu(gate)? * up)?);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)?)
}

struct Swiglu;

fn same_len(a: &[f32], b: &[f32], op: &str) -> candle_core::Result<()> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: operands of {} and {} elements", a.len(), b.len());
    }
    Ok(())
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_data(gs, gl, self.name())?;
        let u = f32_data(us, ul, self.name())?;
        same_len(g, u, self.name())?;
        let y = par_fill(g.len(), ELEMWISE_UNIT, |range, out| {
            for ((o, &g), &u) in out.iter_mut().zip(&g[range.clone()]).zip(&u[range]) {
                *o = g * sigmoid(g) * u;
            }
        });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = grad_res.contiguous()?;
        let d_gate = dy.apply_op3_no_bwd(gate, up, &SwigluBwdGate)?;
        let d_up = dy.apply_op2_no_bwd(gate, &SwigluBwdUp)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// `d gate = dy · up · σ(g) · (1 + g · (1 − σ(g)))`.
struct SwigluBwdGate;

impl CustomOp3 for SwigluBwdGate {
    fn name(&self) -> &'static str {
        "swiglu-bwd-gate"
    }

    fn cpu_fwd(
        &self,
        ds: &CpuStorage,
        dl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (dy, g, u) = (f32_data(ds, dl, self.name())?, f32_data(gs, gl, self.name())?, f32_data(us, ul, self.name())?);
        same_len(dy, g, self.name())?;
        same_len(dy, u, self.name())?;
        let dg = par_fill(dy.len(), ELEMWISE_UNIT, |range, out| {
            for (((o, &d), &g), &u) in out.iter_mut().zip(&dy[range.clone()]).zip(&g[range.clone()]).zip(&u[range]) {
                let s = sigmoid(g);
                *o = d * u * s * (1.0 + g * (1.0 - s));
            }
        });
        Ok((CpuStorage::F32(dg), dl.shape().clone()))
    }
}

/// `d up = dy · silu(g)`.
struct SwigluBwdUp;

impl CustomOp2 for SwigluBwdUp {
    fn name(&self) -> &'static str {
        "swiglu-bwd-up"
    }

    fn cpu_fwd(&self, ds: &CpuStorage, dl: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (dy, g) = (f32_data(ds, dl, self.name())?, f32_data(gs, gl, self.name())?);
        same_len(dy, g, self.name())?;
        let du = par_fill(dy.len(), ELEMWISE_UNIT, |range, out| {
            for ((o, &d), &g) in out.iter_mut().zip(&dy[range.clone()]).zip(&g[range]) {
                *o = d * g * sigmoid(g);
            }
        });
        Ok((CpuStorage::F32(du), dl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
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

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Values of `fused(x)` and `composed(x)`, and the gradients of `Σ fused(x) ⊙ probe` and
    /// `Σ composed(x) ⊙ probe` with respect to each input, must agree.
    fn check(inputs: &[Tensor], fused: impl Fn(&[Tensor]) -> Tensor, composed: impl Fn(&[Tensor]) -> Tensor, tol: f32) {
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

    #[test]
    fn masked_softmax_matches_composed_ops_with_blocked_positions() {
        let (b, g, r, t) = (2, 3, 2, 5);
        let x = randn(&[b, g, r, t, t], 1);
        // Causal mask, and the first position of the second row blocked as left padding.
        let mut m = vec![0f32; b * t * t];
        for row in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if j > i || (row == 1 && j == 0 && i != 0) {
                        m[(row * t + i) * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, 1, t, t), &Device::Cpu).unwrap();
        let scale = 0.125;
        check(
            &[x],
            |v| softmax_scaled_masked(&v[0], scale, Some(&mask)).unwrap(),
            |v| candle_nn::ops::softmax(&(&v[0] * scale).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap(),
            1e-5,
        );
        // Without a mask too.
        let x = randn(&[1, 2, 3, 4, 7], 2);
        check(
            &[x],
            |v| softmax_scaled_masked(&v[0], 0.5, None).unwrap(),
            |v| candle_nn::ops::softmax(&(&v[0] * 0.5).unwrap(), D::Minus1).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn rms_norm_matches_composed_ops() {
        let x = randn(&[2, 5, 16], 3);
        let w = randn(&[16], 4);
        check(
            &[x],
            |v| rms_norm(&v[0], &w, 1e-5).unwrap(),
            |v| {
                let norm = v[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                v[0].broadcast_div(&(norm + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&w).unwrap()
            },
            1e-5,
        );
    }

    #[test]
    fn rope_matches_composed_ops_with_shared_and_per_row_tables() {
        let (b, h, t, d) = (2, 3, 5, 8);
        let x = randn(&[b, h, t, d], 5);
        let angles = randn(&[t, d / 2], 6);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        check(&[x.clone()], |v| rope(&v[0], &cos, &sin).unwrap(), |v| rope_composed(&v[0], &cos, &sin).unwrap(), 1e-5);
        let angles = randn(&[b, t, d / 2], 7);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        check(&[x], |v| rope(&v[0], &cos, &sin).unwrap(), |v| rope_composed(&v[0], &cos, &sin).unwrap(), 1e-5);
    }

    #[test]
    fn dense_lora_projection_matches_composed_ops_for_input_and_both_factors() {
        use crate::linear::{BaseWeight, Linear, LoraBranch};
        let (rows, k, n, r) = (6, 10, 7, 3);
        let w = randn(&[n, k], 10);
        let scale = 2.5;
        check(
            &[randn(&[2, rows / 2, k], 11), randn(&[r, k], 12), randn(&[n, r], 13)],
            |v| {
                let lin = Linear { base: BaseWeight::Dense(w.clone()), lora: vec![LoraBranch { a: v[1].clone(), b: v[2].clone(), scale, dropout: 0.0 }] };
                lin.forward(&v[0], true).unwrap()
            },
            |v| {
                let base = v[0].broadcast_matmul(&w.t().unwrap()).unwrap();
                let branch = v[0].broadcast_matmul(&v[1].t().unwrap()).unwrap().broadcast_matmul(&v[2].t().unwrap()).unwrap();
                (base + (branch * scale).unwrap()).unwrap()
            },
            1e-5,
        );
    }

    #[test]
    fn swiglu_matches_composed_ops_for_both_inputs() {
        // More elements than one unit of work, so the kernel runs in several pieces.
        let g = randn(&[3, 7000], 8);
        let u = randn(&[3, 7000], 9);
        check(
            &[g, u],
            |v| swiglu(&v[0], &v[1]).unwrap(),
            |v| (candle_nn::ops::silu(&v[0]).unwrap() * &v[1]).unwrap(),
            1e-5,
        );
    }
}
