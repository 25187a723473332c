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

pub(crate) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
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
// Attention: softmax(scale · Q·Kᵀ + mask)·V, keeping only each row's log-sum-exp

/// `softmax(scale · Q·Kᵀ + mask) · V` for training, straight from the projections' outputs:
/// `q` `(b, t, nh, d)`, `k` and `v` `(b, kv, nkv, d)` (grouped-query attention: query head `h`
/// reads key/value head `h / (nh / nkv)`), `mask` an additive `(b, 1, 1, t, kv)` tensor (−∞ blocks
/// a position), and `rope` rotary tables `(cos, sin)`, `(t, d/2)` or per sequence `(b, t, d/2)`,
/// applied to `q` and `k` first in HF's "rotate half" pairing (needs `kv == t`). Returns
/// `(b, t, nh · d)`, the layout the output projection reads.
///
/// On the CPU in f32 this is one op that keeps only each query row's log-sum-exp from the
/// forward; the backward recomputes a head's probabilities from it (as FlashAttention does), so
/// no `(t × kv)` score or probability tensor lives from the forward to the backward: composed,
/// each layer kept two of them (SmolLM2 at 256 tokens: 2.4 MB each per layer, 140 MB in all).
/// It reads the heads in the projections' layout and rotates them as it goes, so neither
/// head-major copies of q, k, v nor rotated q and k are kept for the backward either (another
/// 1.7 MB per layer there). Elsewhere it composes candle's differentiable ops.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, rope: Option<(&Tensor, &Tensor)>, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
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
            return Err(candle_core::Error::Msg(format!("attention: rotary tables {:?} do not fit q {:?}, k {:?}", cos.dims(), q.dims(), k.dims())).into());
        }
    }
    let tensors = [q, k, v].into_iter().chain(mask).chain(rope.into_iter().flat_map(|(c, s)| [c, s]));
    if !tensors.into_iter().all(applies) {
        return attention_composed(q, k, v, rope, scale, mask);
    }
    let rope = match rope {
        Some((cos, sin)) => Some(RopeTables { cos: held_f32(cos, "attention")?.into(), sin: held_f32(sin, "attention")?.into(), per_row: cos.rank() == 3 }),
        None => None,
    };
    let op = Attention { scale: scale as f32, mask: mask.map(|m| m.contiguous()).transpose()?, rope, lse: std::sync::OnceLock::new() };
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// The same from candle's ops (any device and dtype): scores in f32, the query heads that share
/// a key/value head folded into the row dimension so keys are not copied.
fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, rope: Option<(&Tensor, &Tensor)>, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
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

/// `dst = (accumulate ? dst : 0) + lhs · rhs` for strided f32 matrices (`m × k` times `k × n`),
/// on the calling thread. Strides are (row, column) in elements.
///
/// # Safety
/// Every pointer must address its whole matrix under its strides, and `dst` must not overlap
/// the operands or be written by another thread during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
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
    fn probabilities(&self, dm: AttnDims, bi: usize, qh: &[f32], kh: &[f32], mask: Option<&[f32]>, p: &mut [f32], lse: Option<&[f32]>, out_lse: &mut [f32]) {
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

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.get().ok_or_else(|| candle_core::Error::Msg("attention: backward before forward".into()))?;
        let (qd, kd, vd, dyd) = (held_f32(q, "attention")?, held_f32(k, "attention")?, held_f32(v, "attention")?, held_f32(dy, "attention")?);
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
                    gemm_f32((kv, d, t), (dv_ptr as *mut f32).add(out), (d, 1), false, p.as_ptr(), (1, kv), dyd[qo..].as_ptr(), (nh * d, 1));
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

/// An RMS norm with a frozen weight, as the fused ops hold it.
pub(crate) struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// The norm of `weight` (f32) and `eps`.
    pub(crate) fn new(weight: &Tensor, eps: f64) -> candle_core::Result<Self> {
        Ok(RmsNorm { weight: held_f32(weight, "rms-norm")?, eps: eps as f32 })
    }

    fn inv_rms(&self, x: &[f32]) -> f32 {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }

    /// Normalised rows of `x` (rows of the weight's length), on candle's CPU threads.
    pub(crate) fn normalise(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let h = self.weight.len();
        if h == 0 || x.len() % h != 0 {
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
        Ok((CpuStorage::F32(self.normalise(x)?), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.backward(arg, grad_res)?))
    }
}

/// `dx = r · (dy ⊙ w) − r³/n · x · Σ (dy ⊙ w ⊙ x)` per row, with `r = 1/sqrt(mean(x²) + eps)`.
struct RmsNormBwd<'a>(&'a RmsNorm);

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

// ---------------------------------------------------------------------------------------------
// rotary embeddings, "rotate half" pairing (the fused attention rotates q and k itself)

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
        Ok((CpuStorage::F32(swiglu_values(g, u)?), gl.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_gate, d_up) = swiglu_backward(gate, up, grad_res)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// `silu(g) · u` elementwise, on candle's CPU threads.
pub(crate) fn swiglu_values(g: &[f32], u: &[f32]) -> candle_core::Result<Vec<f32>> {
    same_len(g, u, "swiglu")?;
    Ok(par_fill(g.len(), ELEMWISE_UNIT, |range, out| {
        for ((o, &g), &u) in out.iter_mut().zip(&g[range.clone()]).zip(&u[range]) {
            *o = g * sigmoid(g) * u;
        }
    }))
}

/// The gradients with respect to `gate` and `up` of `silu(gate) · up` from the gradient `dy` of
/// its output (contiguous f32 CPU tensors of one shape).
pub(crate) fn swiglu_backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let dy = dy.contiguous()?;
    let d_gate = dy.apply_op3_no_bwd(gate, up, &SwigluBwdGate)?;
    let d_up = dy.apply_op2_no_bwd(gate, &SwigluBwdUp)?;
    Ok((d_gate, d_up))
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
            let d = max_abs_diff(&attention(q, k, v, rope, 0.35, Some(&mask)).unwrap(), &attention(q, k, v, None, 0.35, Some(&mask)).unwrap());
            assert!(d > 1e-2, "rotary embedding changed nothing ({d})");
        }
        // Tables that do not fit are an error, not a silent misuse.
        let short = randn(&[t - 1, d / 2], 12);
        assert!(attention(&inputs[0], &inputs[1], &inputs[2], Some((&short, &short)), 0.35, None).is_err());
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

    /// A projection with one LoRA branch in training (the fused op) against the composed ops over
    /// `dense`, the base weight's values: outputs and the gradients of the input, A and B. With
    /// `dropout`, both start from the same dropout RNG state: the fused op must apply the mask the
    /// composed [`crate::linear::seeded_dropout`] draws and leave the state where it does.
    fn check_lora_projection(base: crate::linear::BaseWeight, dense: &Tensor, r: usize, scale: f64, dropout: f32, seed: u64) {
        use crate::linear::{dropout_rng_state, seeded_dropout, set_dropout_rng_state, Linear, LoraBranch};
        let (n, k) = base.dims();
        let state = 0x5eed ^ seed;
        let states = std::cell::RefCell::new(Vec::new());
        let inputs = [randn(&[2, 3, k], seed), randn(&[r, k], seed + 1), randn(&[n, r], seed + 2)];
        let fused = |v: &[Tensor], p: f32| {
            set_dropout_rng_state(state);
            let lin = Linear { base: base.clone(), lora: vec![LoraBranch { a: v[1].clone(), b: v[2].clone(), scale, dropout: p }] };
            let y = lin.forward(&v[0], true).unwrap();
            states.borrow_mut().push(dropout_rng_state());
            y
        };
        check(&inputs, |v| fused(v, dropout), |v| {
            set_dropout_rng_state(state);
            let xb = if dropout > 0.0 { seeded_dropout(&v[0], dropout).unwrap() } else { v[0].clone() };
            states.borrow_mut().push(dropout_rng_state());
            let base = v[0].broadcast_matmul(&dense.t().unwrap()).unwrap();
            let branch = xb.broadcast_matmul(&v[1].t().unwrap()).unwrap().broadcast_matmul(&v[2].t().unwrap()).unwrap();
            (base + (branch * scale).unwrap()).unwrap()
        }, 1e-5);
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
        use crate::linear::{seeded_dropout, set_dropout_rng_state, BaseWeight, Linear, LoraBranch};
        let (n, k, r, scale, p) = (7, 10, 3, 1.5, 0.2);
        let w = randn(&[n, k], 30);
        let norm_w = randn(&[k], 31);
        let lin = |a: &Tensor, b: &Tensor| Linear { base: BaseWeight::Dense(w.clone()), lora: vec![LoraBranch { a: a.clone(), b: b.clone(), scale, dropout: p }] };
        let composed = |x: &Tensor, a: &Tensor, b: &Tensor| {
            let xb = seeded_dropout(x, p).unwrap();
            let branch = xb.broadcast_matmul(&a.t().unwrap()).unwrap().broadcast_matmul(&b.t().unwrap()).unwrap();
            (x.broadcast_matmul(&w.t().unwrap()).unwrap() + (branch * scale).unwrap()).unwrap()
        };
        check(
            &[randn(&[2, 3, k], 32), randn(&[r, k], 33), randn(&[n, r], 34)],
            |v| {
                set_dropout_rng_state(7);
                lin(&v[1], &v[2]).forward_train_normed(&v[0], &norm_w, 1e-5).unwrap()
            },
            |v| {
                let ms = v[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let h = v[0].broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&norm_w).unwrap();
                set_dropout_rng_state(7);
                composed(&h, &v[1], &v[2])
            },
            1e-5,
        );
        check(
            &[randn(&[2, 3, k], 35), randn(&[2, 3, k], 36), randn(&[r, k], 37), randn(&[n, r], 38)],
            |v| {
                set_dropout_rng_state(8);
                lin(&v[2], &v[3]).forward_train_gated(&v[0], &v[1]).unwrap()
            },
            |v| {
                let h = (candle_nn::ops::silu(&v[0]).unwrap() * &v[1]).unwrap();
                set_dropout_rng_state(8);
                composed(&h, &v[2], &v[3])
            },
            1e-5,
        );
        check(
            &[randn(&[2, 3, k], 39), randn(&[2, 3, n], 40), randn(&[r, k], 41), randn(&[n, r], 42)],
            |v| {
                set_dropout_rng_state(9);
                lin(&v[2], &v[3]).forward_train_residual(&v[0], &v[1]).unwrap()
            },
            |v| {
                set_dropout_rng_state(9);
                (&v[1] + composed(&v[0], &v[2], &v[3])).unwrap()
            },
            1e-5,
        );
    }

    #[test]
    fn dense_lora_projection_matches_composed_ops_for_input_and_both_factors() {
        let w = randn(&[7, 10], 10);
        check_lora_projection(crate::linear::BaseWeight::Dense(w.clone()), &w, 3, 2.5, 0.0, 11);
    }

    /// LoRA dropout inside the fused op: the same mask as the composed dropout, in the forward
    /// and (regenerated) in the backward.
    #[test]
    fn lora_projection_with_dropout_matches_composed_dropout() {
        let w = randn(&[7, 10], 12);
        check_lora_projection(crate::linear::BaseWeight::Dense(w.clone()), &w, 3, 2.5, 0.3, 13);
        let q = candle_core::quantized::QTensor::quantize(&randn(&[40, 64], 14), candle_core::quantized::GgmlDType::Q4_1).unwrap();
        let wd = q.dequantize(&Device::Cpu).unwrap();
        check_lora_projection(crate::linear::BaseWeight::quantized(q).unwrap(), &wd, 4, 0.75, 0.5, 15);
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
            let base = crate::linear::BaseWeight::quantized(q).unwrap();
            assert!(matches!(base, crate::linear::BaseWeight::Quantized(..)));
            check_lora_projection(base, &wd, 4, 0.75, 0.0, 21);
        }
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
