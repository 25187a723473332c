//! Softmax attention for training, `softmax(scale · Q·Kᵀ + mask)·V` with the rotary embedding
//! applied to q and k inside, keeping only each query row's log-sum-exp for the backward; beside
//! it the same from candle's differentiable ops ([`attention_composed`], [`rope_composed`]).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};

use crate::cpu::{gemm_f32, par_fill};
use crate::error::Result;
use crate::ops::{applies, f32_data, held_f32};

/// `softmax(scale · Q·Kᵀ + mask) · V` for training, straight from the projections' outputs:
/// `q` `(b, t, nh, d)`, `k` and `v` `(b, kv, nkv, d)` (grouped-query attention: query head `h`
/// reads key/value head `h / (nh / nkv)`), `mask` an additive `(b, 1, 1, t, kv)` tensor (−∞ blocks
/// a position), and `rope` rotary tables `(cos, sin)`, `(t, d/2)` or per sequence `(b, t, d/2)`,
/// applied to `q` and `k` first in HF's "rotate half" pairing (needs `kv == t`). Returns
/// `(b, t, nh · d)`, the layout the output projection reads.
///
/// On the CPU in f32 this is one op that keeps only each query row's log-sum-exp from the
/// forward; the backward recomputes a head's probabilities from it (as FlashAttention does), so
/// no `(t × kv)` score or probability tensor lives from the forward to the backward (composed,
/// each layer keeps two of them). It reads the heads in the projections' layout and rotates them
/// as it goes, so neither head-major copies of q, k, v nor rotated q and k are kept for the
/// backward either. Elsewhere it is [`attention_composed`].
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: Option<(&Tensor, &Tensor)>,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, nh, d) = q.dims4()?;
    let (kb, kv, nkv, kd) = k.dims4()?;
    if kb != b || kd != d || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        return Err(candle_core::Error::Msg(format!("attention: q {:?}, k {:?}, v {:?} do not fit", q.dims(), k.dims(), v.dims())).into());
    }
    if let Some(m) = mask {
        if m.elem_count() != b * t * kv {
            return Err(candle_core::Error::Msg(format!("attention: mask {:?} does not cover (b {b}, t {t}, kv {kv})", m.dims())).into());
        }
    }
    if let Some((cos, sin)) = rope {
        let fits = cos.dims() == sin.dims()
            && kv == t
            && match cos.dims() {
                [ct, h] => *ct == t && *h * 2 == d,
                [cb, ct, h] => *cb == b && *ct == t && *h * 2 == d,
                _ => false,
            };
        if !fits {
            return Err(candle_core::Error::Msg(format!(
                "attention: rotary tables {:?} do not fit q {:?}, k {:?}",
                cos.dims(),
                q.dims(),
                k.dims()
            ))
            .into());
        }
    }
    let tensors = [q, k, v].into_iter().chain(mask).chain(rope.into_iter().flat_map(|(c, s)| [c, s]));
    if !tensors.into_iter().all(applies) {
        return attention_composed(q, k, v, rope, scale, mask);
    }
    let rope = match rope {
        Some((cos, sin)) => {
            Some(RopeTables { cos: held_f32(cos, "attention")?.into(), sin: held_f32(sin, "attention")?.into(), per_row: cos.rank() == 3 })
        }
        None => None,
    };
    let op = Attention { scale: scale as f32, mask: mask.map(|m| m.contiguous()).transpose()?, rope, lse: std::sync::OnceLock::new() };
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// The same from candle's ops (any device and dtype): scores in f32, the query heads that share
/// a key/value head folded into the row dimension so keys are not copied.
fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: Option<(&Tensor, &Tensor)>,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, nh, d) = q.dims4()?;
    let (_, kv, nkv, _) = k.dims4()?;
    let (q, k, v) = (q.transpose(1, 2)?.contiguous()?, k.transpose(1, 2)?.contiguous()?, v.transpose(1, 2)?.contiguous()?);
    let (q, k) = match rope {
        Some((cos, sin)) => (rope_composed(&q, cos, sin)?, rope_composed(&k, cos, sin)?),
        None => (q, k),
    };
    let rep = nh / nkv;
    let scores = q.reshape((b, nkv, rep * t, d))?.matmul(&k.t()?)?;
    let scores = (scores * scale)?.to_dtype(DType::F32)?.reshape((b, nkv, rep, t, kv))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.reshape((b, 1, 1, t, kv))?)?,
        None => scores,
    };
    let p = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?.reshape((b, nkv, rep * t, kv))?;
    Ok(p.matmul(&v)?.reshape((b, nh, t, d))?.transpose(1, 2)?.reshape((b, t, nh * d))?)
}

/// Rotary tables held by an op: `(t, d/2)` shared by every sequence, or `(b, t, d/2)`.
struct RopeTables {
    cos: std::sync::Arc<[f32]>,
    sin: std::sync::Arc<[f32]>,
    per_row: bool,
}

impl RopeTables {
    /// The `(cos, sin)` halves for position `i` of sequence `bi` (of `t` positions).
    fn row(&self, bi: usize, t: usize, i: usize, half: usize) -> (&[f32], &[f32]) {
        let r = if self.per_row { bi * t + i } else { i };
        (&self.cos[r * half..(r + 1) * half], &self.sin[r * half..(r + 1) * half])
    }
}

/// Rotate one head vector `x` into `out` by the angles whose cosines and sines are `c` and `s`
/// ("rotate half" pairing), or by their negatives (`sign` −1: the transpose, for the backward).
fn rotate_half(x: &[f32], out: &mut [f32], c: &[f32], s: &[f32], sign: f32) {
    let half = c.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for j in 0..half {
        let sj = sign * s[j];
        o1[j] = x1[j] * c[j] - x2[j] * sj;
        o2[j] = x2[j] * c[j] + x1[j] * sj;
    }
}

struct Attention {
    scale: f32,
    /// Contiguous, `b · t · kv` values.
    mask: Option<Tensor>,
    /// Rotary embedding applied to q and k inside the op.
    rope: Option<RopeTables>,
    /// Log-sum-exp of each query row's scaled, masked scores, `(b, nh, t)`, from the forward.
    lse: std::sync::OnceLock<Vec<f32>>,
}

/// Shapes of one attention call: `(b, nh, nkv, t, kv, d)`.
#[derive(Clone, Copy)]
struct AttnDims {
    b: usize,
    nh: usize,
    nkv: usize,
    t: usize,
    kv: usize,
    d: usize,
}

impl AttnDims {
    fn of(ql: &Layout, kl: &Layout) -> candle_core::Result<Self> {
        let (b, t, nh, d) = ql.shape().dims4()?;
        let (_, kv, nkv, _) = kl.shape().dims4()?;
        Ok(AttnDims { b, nh, nkv, t, kv, d })
    }
    /// For work unit `unit` (query head `h` of sequence `bi`): `bi`, the offset of its first query
    /// row in q (and in the output; rows `nh · d` apart) and of its key/value head's first row in
    /// k and v (rows `nkv · d` apart).
    fn offsets(&self, unit: usize) -> (usize, usize, usize) {
        let (bi, h) = (unit / self.nh, unit % self.nh);
        let g = h / (self.nh / self.nkv);
        (bi, (bi * self.t * self.nh + h) * self.d, (bi * self.kv * self.nkv + g) * self.d)
    }
}

impl Attention {
    fn mask_data(&self) -> candle_core::Result<Option<Vec<f32>>> {
        // The mask is b · t · kv values, small beside the scores it stands for.
        self.mask.as_ref().map(|m| held_f32(m, "attention")).transpose()
    }

    /// Copy `rows` head vectors of sequence `bi` (`d` values each, `stride` apart in `src`) into
    /// `dst` (`rows × d`), rotated by the rotary tables when there are any.
    fn gather(&self, dm: AttnDims, bi: usize, src: &[f32], stride: usize, rows: usize, dst: &mut [f32]) {
        let d = dm.d;
        for (i, out) in dst[..rows * d].chunks_exact_mut(d).enumerate() {
            let x = &src[i * stride..i * stride + d];
            match &self.rope {
                Some(r) => {
                    let (c, s) = r.row(bi, dm.t, i, d / 2);
                    rotate_half(x, out, c, s, 1.0);
                }
                None => out.copy_from_slice(x),
            }
        }
    }

    /// Write `src` (`rows × d`, gradients with respect to the rotated vectors) to `dst` rows
    /// `stride` apart, rotated back: the gradients with respect to the op's inputs.
    fn scatter(&self, dm: AttnDims, bi: usize, src: &[f32], dst: &mut [f32], stride: usize) {
        let d = dm.d;
        for (i, g) in src.chunks_exact(d).enumerate() {
            let out = &mut dst[i * stride..i * stride + d];
            match &self.rope {
                Some(r) => {
                    let (c, s) = r.row(bi, dm.t, i, d / 2);
                    rotate_half(g, out, c, s, -1.0);
                }
                None => out.copy_from_slice(g),
            }
        }
    }

    /// Fill `p` (`t × kv`) with one head's probabilities from its (rotated, contiguous) queries
    /// `qh` (`t × d`) and keys `kh` (`kv × d`): the scaled, masked scores, then a softmax per row.
    /// With `lse` given (this head's `t` values), rows are normalised by it (recomputing the
    /// forward's values); otherwise each row's log-sum-exp is written to `out_lse`.
    #[allow(clippy::too_many_arguments)]
    fn probabilities(
        &self,
        dm: AttnDims,
        bi: usize,
        qh: &[f32],
        kh: &[f32],
        mask: Option<&[f32]>,
        p: &mut [f32],
        lse: Option<&[f32]>,
        out_lse: &mut [f32],
    ) {
        let AttnDims { t, kv, d, .. } = dm;
        // SAFETY: qh holds t × d values, kh kv × d, p is t × kv and ours.
        unsafe { gemm_f32((t, kv, d), p.as_mut_ptr(), (kv, 1), false, qh.as_ptr(), (d, 1), kh.as_ptr(), (1, d)) };
        for (i, row) in p.chunks_exact_mut(kv).enumerate() {
            let mrow = mask.map(|m| &m[(bi * t + i) * kv..(bi * t + i + 1) * kv]);
            match mrow {
                Some(mr) => row.iter_mut().zip(mr).for_each(|(s, &a)| *s = *s * self.scale + a),
                None => row.iter_mut().for_each(|s| *s *= self.scale),
            }
            let l = match lse {
                Some(l) => l[i],
                None => {
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let l = if m == f32::NEG_INFINITY { m } else { m + row.iter().map(|&s| (s - m).exp()).sum::<f32>().ln() };
                    out_lse[i] = l;
                    l
                }
            };
            if l == f32::NEG_INFINITY {
                // Every position blocked: no distribution; zeros rather than NaN.
                row.fill(0.0);
            } else {
                row.iter_mut().for_each(|s| *s = (*s - l).exp());
            }
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (f32_data(qs, ql, self.name())?, f32_data(ks, kl, self.name())?, f32_data(vs, vl, self.name())?);
        let dm = AttnDims::of(ql, kl)?;
        let AttnDims { b, nh, nkv, t, kv, d } = dm;
        let mask = self.mask_data()?;
        let mut y = vec![0f32; b * t * nh * d];
        let y_ptr = y.as_mut_ptr() as usize;
        // One head per unit of work; each writes its own rows of `lse` and its own columns of `y`.
        let lse = par_fill(b * nh * t, t, |range, out_lse| {
            let (mut qh, mut kh, mut p) = (vec![0f32; t * d], vec![0f32; kv * d], vec![0f32; t * kv]);
            for (unit, lse_h) in (range.start / t..range.end / t).zip(out_lse.chunks_exact_mut(t)) {
                let (bi, qo, ko) = dm.offsets(unit);
                self.gather(dm, bi, &q[qo..], nh * d, t, &mut qh);
                self.gather(dm, bi, &k[ko..], nkv * d, kv, &mut kh);
                self.probabilities(dm, bi, &qh, &kh, mask.as_deref(), &mut p, None, lse_h);
                // SAFETY: this head's output is t rows of d from qo, nh · d apart, written by
                // this unit only; v holds kv rows of d from ko, nkv · d apart; y outlives the call.
                unsafe {
                    let dst = (y_ptr as *mut f32).add(qo);
                    gemm_f32((t, d, kv), dst, (nh * d, 1), false, p.as_ptr(), (kv, 1), v[ko..].as_ptr(), (nkv * d, 1));
                }
            }
        });
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(y), Shape::from((b, t, nh * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.get().ok_or_else(|| candle_core::Error::Msg("attention: backward before forward".into()))?;
        let (qd, kd, vd, dyd) =
            (held_f32(q, "attention")?, held_f32(k, "attention")?, held_f32(v, "attention")?, held_f32(dy, "attention")?);
        let dm = AttnDims::of(q.layout(), k.layout())?;
        let AttnDims { b, nh, nkv, t, kv, d } = dm;
        let mask = self.mask_data()?;
        // Per query head, in rotated coordinates: dK and dV of its share (summed over the heads
        // of a group below) and dQ (rotated back and scattered into q's layout below).
        let mut dk_h = vec![0f32; b * nh * kv * d];
        let mut dv_h = vec![0f32; b * nh * kv * d];
        let (dk_ptr, dv_ptr) = (dk_h.as_mut_ptr() as usize, dv_h.as_mut_ptr() as usize);
        let dq_h = par_fill(b * nh * t * d, t * d, |range, dq_h| {
            let (mut qh, mut kh) = (vec![0f32; t * d], vec![0f32; kv * d]);
            let (mut p, mut dp) = (vec![0f32; t * kv], vec![0f32; t * kv]);
            for (unit, dq_h) in (range.start / (t * d)..range.end / (t * d)).zip(dq_h.chunks_exact_mut(t * d)) {
                let (bi, qo, ko) = dm.offsets(unit);
                self.gather(dm, bi, &qd[qo..], nh * d, t, &mut qh);
                self.gather(dm, bi, &kd[ko..], nkv * d, kv, &mut kh);
                self.probabilities(dm, bi, &qh, &kh, mask.as_deref(), &mut p, Some(&lse[unit * t..(unit + 1) * t]), &mut []);
                let out = unit * kv * d;
                // SAFETY: operands address whole matrices under the strides given; dp, dq_h and
                // this unit's dk_h / dv_h blocks are written by this unit only.
                unsafe {
                    // dP = dY · Vᵀ
                    gemm_f32((t, kv, d), dp.as_mut_ptr(), (kv, 1), false, dyd[qo..].as_ptr(), (nh * d, 1), vd[ko..].as_ptr(), (1, nkv * d));
                }
                // dS = scale · P ⊙ (dP − Σ_j P ⊙ dP), in place of dP.
                for (pr, gr) in p.chunks_exact(kv).zip(dp.chunks_exact_mut(kv)) {
                    let dot: f32 = pr.iter().zip(gr.iter()).map(|(a, b)| a * b).sum();
                    gr.iter_mut().zip(pr).for_each(|(g, &p)| *g = self.scale * p * (*g - dot));
                }
                unsafe {
                    // dQ = dS · K
                    gemm_f32((t, d, kv), dq_h.as_mut_ptr(), (d, 1), false, dp.as_ptr(), (kv, 1), kh.as_ptr(), (d, 1));
                    // dK = dSᵀ · Q
                    gemm_f32((kv, d, t), (dk_ptr as *mut f32).add(out), (d, 1), false, dp.as_ptr(), (1, kv), qh.as_ptr(), (d, 1));
                    // dV = Pᵀ · dY
                    gemm_f32(
                        (kv, d, t),
                        (dv_ptr as *mut f32).add(out),
                        (d, 1),
                        false,
                        p.as_ptr(),
                        (1, kv),
                        dyd[qo..].as_ptr(),
                        (nh * d, 1),
                    );
                }
            }
        });
        // Rotate dQ back into q's layout; sum each group's query heads into its key/value head
        // and put dK (rotated back) and dV into k's and v's layout.
        let mut dq = vec![0f32; b * t * nh * d];
        for (unit, src) in dq_h.chunks_exact(t * d).enumerate() {
            let (bi, qo, _) = dm.offsets(unit);
            self.scatter(dm, bi, src, &mut dq[qo..], nh * d);
        }
        let rep = nh / nkv;
        let to_kv_layout = |per_head: &[f32], rotate: bool| -> Vec<f32> {
            let block = kv * d;
            let mut sum = vec![0f32; block];
            let mut out = vec![0f32; b * kv * nkv * d];
            for bi in 0..b {
                for g in 0..nkv {
                    sum.fill(0.0);
                    for h in g * rep..(g + 1) * rep {
                        let src = &per_head[(bi * nh + h) * block..][..block];
                        sum.iter_mut().zip(src).for_each(|(o, s)| *o += s);
                    }
                    let dst = &mut out[(bi * kv * nkv + g) * d..];
                    if rotate {
                        self.scatter(dm, bi, &sum, dst, nkv * d);
                    } else {
                        sum.chunks_exact(d).enumerate().for_each(|(j, s)| dst[j * nkv * d..j * nkv * d + d].copy_from_slice(s));
                    }
                }
            }
            out
        };
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(to_kv_layout(&dk_h, true), k.shape(), dev)?),
            Some(Tensor::from_vec(to_kv_layout(&dv_h, false), v.shape(), dev)?),
        ))
    }
}

/// Rotary embeddings in HF's "rotate half" pairing on `x` `(b, heads, t, d)` with `cos`/`sin`
/// `(t, d/2)` or `(b, t, d/2)`, from candle's differentiable ops (any device and dtype):
/// `y₁ = x₁·cos − x₂·sin`, `y₂ = x₂·cos + x₁·sin` on the two halves of the head dimension.
pub(crate) fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    // The tables are f32; a bf16 or f16 model rotates in its own dtype.
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.to_dtype(x.dtype())?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.to_dtype(x.dtype())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check, max_abs_diff, randn};
    use candle_core::Device;

    /// Causal mask `(b, 1, 1, t, t)`, with the first position of the second sequence blocked as
    /// left padding.
    fn causal_mask_with_padding(b: usize, t: usize) -> Tensor {
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
        Tensor::from_vec(m, (b, 1, 1, t, t), &Device::Cpu).unwrap()
    }

    #[test]
    fn attention_matches_composed_ops_with_grouped_heads_and_blocked_positions() {
        let (b, nh, nkv, t, d) = (2, 4, 2, 5, 8);
        let mask = causal_mask_with_padding(b, t);
        let scale = 0.35;
        let inputs = [randn(&[b, t, nh, d], 1), randn(&[b, t, nkv, d], 2), randn(&[b, t, nkv, d], 3)];
        check(
            &inputs,
            |v| attention(&v[0], &v[1], &v[2], None, scale, Some(&mask)).unwrap(),
            |v| attention_composed(&v[0], &v[1], &v[2], None, scale, Some(&mask)).unwrap(),
            1e-5,
        );
        // No mask, more keys than queries (a continuation after cached positions).
        let inputs = [randn(&[1, 3, nh, d], 4), randn(&[1, 7, nkv, d], 5), randn(&[1, 7, nkv, d], 6)];
        check(
            &inputs,
            |v| attention(&v[0], &v[1], &v[2], None, scale, None).unwrap(),
            |v| attention_composed(&v[0], &v[1], &v[2], None, scale, None).unwrap(),
            1e-5,
        );
    }

    /// With the rotary embedding applied inside the op, against rotating with candle's ops first:
    /// tables shared by every sequence and per sequence (left-padded batches).
    #[test]
    fn attention_with_rotary_embedding_matches_composed_ops() {
        let (b, nh, nkv, t, d) = (2, 6, 2, 5, 8);
        let mask = causal_mask_with_padding(b, t);
        let inputs = [randn(&[b, t, nh, d], 7), randn(&[b, t, nkv, d], 8), randn(&[b, t, nkv, d], 9)];
        for angles in [randn(&[t, d / 2], 10), randn(&[b, t, d / 2], 11)] {
            let (cos, sin) = ((&angles * 3.0).unwrap().cos().unwrap(), (&angles * 3.0).unwrap().sin().unwrap());
            let rope = Some((&cos, &sin));
            check(
                &inputs,
                |v| attention(&v[0], &v[1], &v[2], rope, 0.35, Some(&mask)).unwrap(),
                |v| attention_composed(&v[0], &v[1], &v[2], rope, 0.35, Some(&mask)).unwrap(),
                1e-5,
            );
            // The rotation mattered.
            let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
            let d =
                max_abs_diff(&attention(q, k, v, rope, 0.35, Some(&mask)).unwrap(), &attention(q, k, v, None, 0.35, Some(&mask)).unwrap());
            assert!(d > 1e-2, "rotary embedding changed nothing ({d})");
        }
        // Tables that do not fit are an error, not a silent misuse.
        let short = randn(&[t - 1, d / 2], 12);
        assert!(attention(&inputs[0], &inputs[1], &inputs[2], Some((&short, &short)), 0.35, None).is_err());
    }
}
