//! The loss at the vocabulary head, for training on the CPU in f32: the summed cross-entropy
//! over logits ([`cross_entropy_sum`], beside its composed reference), and the head and that
//! loss as one op ([`head_cross_entropy_sum`]) whose logits never exist whole.
//!
//! Composed, the head writes `(positions × vocabulary)` logits that the loss keeps for its
//! backward, and the backward writes as many again. The fused head reads its weight a block of
//! rows at a time; each block's logits live only while the block is processed, folded into each
//! position's running log-sum-exp and into `Σ_j exp(z_j − m)·W_j`, from which the forward also
//! derives the input gradient `dL/dx = softmax(z)·W − W_target` (the loss is the last node of
//! the graph, so the backward only scales it). The cost is the two GEMMs the composed head and
//! its backward would run.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};

use crate::cpu::{gemm_f32, par_fill, par_map, parallel_piece_elems, piece_groups, row_blocks, WeightRows};
use crate::error::Result;
use crate::ops::{applies, f32_data};

/// A position without a target: not scored.
pub const NO_TARGET: u32 = u32::MAX;

/// Upper bound on one block's logits (positions × block rows), 8 MB.
const LOGITS_BLOCK_ELEMS: usize = 1 << 21;

/// `Σ_r −log softmax(logits_r)[targets[r]]` over the rows of `logits` `(rows, vocab)` that have a
/// target ([`NO_TARGET`] skips a row), a scalar with a backward. On the CPU in f32 one op: the
/// composed log-softmax and its backward are about ten passes over vocabulary-wide tensors, each
/// freshly allocated; here the forward is one pass per row (max, then log-sum-exp) and the
/// backward writes `softmax − one-hot` once, reusing the forward's log-sum-exp. Elsewhere
/// [`cross_entropy_sum_composed`].
pub fn cross_entropy_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    check_targets(targets, rows, vocab, "cross-entropy")?;
    if targets.iter().all(|&y| y == NO_TARGET) {
        return Ok(Tensor::zeros((), DType::F32, logits.device())?);
    }
    if !applies(logits) {
        return cross_entropy_sum_composed(logits, targets);
    }
    let op = CrossEntropySum { targets: targets.to_vec(), vocab, lse: OnceLock::new() };
    Ok(logits.contiguous()?.apply_op1(op)?)
}

/// The same from candle's differentiable ops (any device and dtype): only the scored rows go
/// through the (vocabulary-wide) log-softmax, in f32.
pub(crate) fn cross_entropy_sum_composed(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let dev = logits.device();
    let (rows, ys): (Vec<u32>, Vec<u32>) = targets.iter().enumerate().filter(|(_, &y)| y != NO_TARGET).map(|(i, &y)| (i as u32, y)).unzip();
    let n = rows.len();
    let rows = Tensor::from_vec(rows, n, dev)?;
    let ys = Tensor::from_vec(ys, (n, 1), dev)?;
    let picked = logits.index_select(&rows, 0)?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
    Ok(logp.gather(&ys, 1)?.sum_all()?.neg()?)
}

/// One target per row, each in the vocabulary or [`NO_TARGET`].
fn check_targets(targets: &[u32], rows: usize, vocab: usize, op: &str) -> candle_core::Result<()> {
    if targets.len() != rows {
        candle_core::bail!("{op}: {} targets for {rows} rows", targets.len());
    }
    if let Some((r, y)) = targets.iter().enumerate().find(|(_, &y)| y != NO_TARGET && y as usize >= vocab) {
        candle_core::bail!("{op}: target {y} at row {r} is outside the vocabulary ({vocab})");
    }
    Ok(())
}

struct CrossEntropySum {
    targets: Vec<u32>,
    vocab: usize,
    /// Each row's log-sum-exp (0 for skipped rows), kept by the forward for the backward.
    lse: OnceLock<Vec<f32>>,
}

impl CrossEntropySum {
    /// Log-sum-exp of each scored row of `x` (`targets.len()` rows of `vocab`), on candle's CPU
    /// threads.
    fn log_sum_exp(&self, x: &[f32]) -> Vec<f32> {
        let v = self.vocab;
        par_fill(self.targets.len(), 1, |range, out| {
            for (r, o) in range.zip(out.iter_mut()) {
                if self.targets[r] == NO_TARGET {
                    continue;
                }
                let row = &x[r * v..(r + 1) * v];
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = row.iter().map(|&z| (z - m).exp()).sum();
                *o = m + s.ln();
            }
        })
    }
}

impl CustomOp1 for CrossEntropySum {
    fn name(&self) -> &'static str {
        "cross-entropy-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(storage, layout, self.name())?;
        if x.len() != self.targets.len() * self.vocab {
            candle_core::bail!("cross-entropy: {} logits for {} rows of {}", x.len(), self.targets.len(), self.vocab);
        }
        let lse = self.log_sum_exp(x);
        let v = self.vocab;
        let nll: f64 =
            (self.targets.iter().enumerate()).filter(|(_, &y)| y != NO_TARGET).map(|(r, &y)| (lse[r] - x[r * v + y as usize]) as f64).sum();
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(vec![nll as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let (storage, layout) = arg.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("cross-entropy: logits left the CPU");
        };
        let x = f32_data(cpu, layout, self.name())?;
        let recomputed;
        let lse = match self.lse.get() {
            Some(l) => l,
            None => {
                recomputed = self.log_sum_exp(x);
                &recomputed
            }
        };
        let v = self.vocab;
        // d(Σ nll)/dx = softmax(x) − one-hot(target) on scored rows, zero elsewhere.
        let dx = par_fill(x.len(), v, |range, out| {
            for (row_out, r) in out.chunks_exact_mut(v).zip(range.start / v..) {
                let y = self.targets[r];
                if y == NO_TARGET {
                    continue;
                }
                let row = &x[r * v..(r + 1) * v];
                for (o, &z) in row_out.iter_mut().zip(row) {
                    *o = g * (z - lse[r]).exp();
                }
                row_out[y as usize] -= g;
            }
        });
        drop(storage);
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `Σ_r −log softmax(x_r·Wᵀ)[targets[r]]` over the rows `r` of `x` `(rows, in)` that have a
/// target ([`NO_TARGET`] skips a row) for a frozen head `W` read by rows, differentiable with
/// respect to `x`, without the `(rows, out)` logits ever existing. `x` must be f32 on the CPU.
pub(crate) fn head_cross_entropy_sum(w: WeightRows, x: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (rows, _) = x.dims2()?;
    if targets.len() != rows {
        return Err(candle_core::Error::Msg(format!("cross-entropy: {} targets for {rows} rows", targets.len())).into());
    }
    let op = HeadCrossEntropy { w, targets: targets.to_vec(), dx: OnceLock::new() };
    Ok(x.contiguous()?.apply_op1(op)?)
}

struct HeadCrossEntropy {
    w: WeightRows,
    targets: Vec<u32>,
    /// `dL/dx` for an upstream gradient of one, computed by the forward.
    dx: OnceLock<Vec<f32>>,
}

/// One group of weight blocks' share: per scored row the running maximum `m`, `s = Σ exp(z − m)`,
/// `acc = Σ exp(z − m)·W_j`, and the target logits (with their weight rows) the group held.
struct Partial {
    m: Vec<f32>,
    s: Vec<f32>,
    acc: Vec<f32>,
    picked: Vec<(usize, f32, Vec<f32>)>,
}

impl CustomOp1 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("{}: expected a contiguous f32 input", self.name()),
        };
        let rows_of = &self.w;
        let (n, k) = rows_of.dims()?;
        let (rows, xk) = layout.shape().dims2()?;
        if xk != k {
            candle_core::bail!("{}: input has {xk} features, the head expects {k}", self.name());
        }
        // Only scored rows go through the head.
        let mut scored = Vec::new();
        for (r, &y) in self.targets.iter().enumerate() {
            if y == NO_TARGET {
                continue;
            }
            if y as usize >= n {
                candle_core::bail!("{}: target {y} at row {r} is outside the vocabulary ({n})", self.name());
            }
            scored.push(r);
        }
        let ns = scored.len();
        let mut dx = vec![0f32; rows * k];
        if ns == 0 {
            let _ = self.dx.set(dx);
            return Ok((CpuStorage::F32(vec![0.0]), Shape::from(())));
        }
        let xs: Vec<f32> = scored.iter().flat_map(|&r| x[r * k..(r + 1) * k].iter().copied()).collect();
        let max_len = (LOGITS_BLOCK_ELEMS / ns).max(64);
        let budget = parallel_piece_elems(n, k).min(max_len * k);
        let pieces = row_blocks(n, k, budget);
        // Each group of blocks is folded by one call in block order; groups merge in order.
        let groups = piece_groups(&pieces);
        let mut partials = par_map(groups.len(), |g| {
            let mut p = Partial { m: vec![f32::NEG_INFINITY; ns], s: vec![0.0; ns], acc: vec![0.0; ns * k], picked: Vec::new() };
            let mut z = vec![0f32; ns * groups[g].iter().map(|b| b.1).max().unwrap_or(0)];
            for &(start, len) in groups[g] {
                rows_of.with(start, len, |w| {
                    // SAFETY: z holds ns × len values and is ours; xs is ns × k and w is
                    // len × k, both contiguous.
                    unsafe { gemm_f32((ns, len, k), z.as_mut_ptr(), (len, 1), false, xs.as_ptr(), (k, 1), w.as_ptr(), (1, k)) };
                    for (i, &r) in scored.iter().enumerate() {
                        let y = self.targets[r] as usize;
                        if (start..start + len).contains(&y) {
                            p.picked.push((i, z[i * len + y - start], w[(y - start) * k..(y - start + 1) * k].to_vec()));
                        }
                    }
                    for (i, zr) in z[..ns * len].chunks_exact_mut(len).enumerate() {
                        let m_new = zr.iter().copied().fold(p.m[i], f32::max);
                        if p.m[i] != f32::NEG_INFINITY && m_new > p.m[i] {
                            let f = (p.m[i] - m_new).exp();
                            p.s[i] *= f;
                            p.acc[i * k..(i + 1) * k].iter_mut().for_each(|a| *a *= f);
                        }
                        p.m[i] = m_new;
                        let mut sum = 0f32;
                        for v in zr.iter_mut() {
                            *v = (*v - m_new).exp();
                            sum += *v;
                        }
                        p.s[i] += sum;
                    }
                    // SAFETY: acc is ns × k and ours; z is ns × len, w len × k.
                    unsafe { gemm_f32((ns, k, len), p.acc.as_mut_ptr(), (k, 1), true, z.as_ptr(), (len, 1), w.as_ptr(), (k, 1)) };
                })?;
            }
            Ok(p)
        })?;
        let mut loss = 0f64;
        let mut target_logit = vec![0f32; ns];
        let mut target_row: Vec<Option<Vec<f32>>> = vec![None; ns];
        for p in &mut partials {
            for (i, z, w) in p.picked.drain(..) {
                target_logit[i] = z;
                target_row[i] = Some(w);
            }
        }
        for (i, &r) in scored.iter().enumerate() {
            let m = partials.iter().map(|p| p.m[i]).fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0f32;
            let out = &mut dx[r * k..(r + 1) * k];
            for p in &partials {
                if p.m[i] == f32::NEG_INFINITY {
                    continue;
                }
                let f = (p.m[i] - m).exp();
                s += p.s[i] * f;
                out.iter_mut().zip(&p.acc[i * k..(i + 1) * k]).for_each(|(o, a)| *o += f * a);
            }
            loss += (m + s.ln() - target_logit[i]) as f64;
            let wy = target_row[i]
                .as_deref()
                .ok_or_else(|| candle_core::Error::Msg(format!("{}: no block held target of row {r}", self.name())))?;
            let inv = 1.0 / s;
            out.iter_mut().zip(wy).for_each(|(o, w)| *o = *o * inv - w);
        }
        let _ = self.dx.set(dx);
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = self.dx.get().ok_or_else(|| candle_core::Error::Msg(format!("{}: backward before forward", self.name())))?;
        let dx = Tensor::from_slice(dx, arg.shape(), arg.device())?;
        Ok(Some(dx.broadcast_mul(grad_res)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::{BaseWeight, Linear};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amp
            })
            .collect()
    }

    /// The composed loss over the dense weight: logits, log-softmax, the targets picked.
    fn composed(x: &Tensor, w: &Tensor, targets: &[u32]) -> Tensor {
        let logp = candle_nn::ops::log_softmax(&x.matmul(&w.t().unwrap()).unwrap(), D::Minus1).unwrap();
        let mut terms = Vec::new();
        for (r, &y) in targets.iter().enumerate() {
            if y != NO_TARGET {
                terms.push(logp.get(r).unwrap().get(y as usize).unwrap());
            }
        }
        Tensor::stack(&terms, 0).unwrap().sum_all().unwrap().neg().unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Loss and input gradient equal the composed ones, for a dense and a quantized head, with
    /// skipped rows and a vocabulary folded in many blocks and groups.
    #[test]
    fn fused_head_loss_matches_composed_logits_and_log_softmax() {
        let dev = Device::Cpu;
        let (rows, k) = (7, 64);
        for n in [50, 9000] {
            let w = Tensor::from_vec(values(n * k, 1, 1.0), (n, k), &dev).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
            let wq = q.dequantize(&dev).unwrap();
            let targets: Vec<u32> = (0..rows).map(|r| if r == 2 { NO_TARGET } else { ((r * 7919 + 13) % n) as u32 }).collect();
            for (base, dense) in [(BaseWeight::Dense(w.clone()), w.clone()), (BaseWeight::quantized(q).unwrap(), wq)] {
                let head = Linear::new(base);
                let x = Var::from_vec(values(rows * k, 2, 0.5), (rows, k), &dev).unwrap();
                let probe = 0.7;
                let fused = head.cross_entropy_sum(x.as_tensor(), &targets).unwrap().expect("fused path on the CPU");
                let want = composed(x.as_tensor(), &dense, &targets);
                let (a, b) = (fused.to_scalar::<f32>().unwrap(), want.to_scalar::<f32>().unwrap());
                assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "n {n}: loss {a} vs {b}");
                let g = (fused * probe).unwrap().backward().unwrap().get(x.as_tensor()).cloned().unwrap();
                let gw = (want * probe).unwrap().backward().unwrap().get(x.as_tensor()).cloned().unwrap();
                let d = max_abs(&(&g - &gw).unwrap()) / max_abs(&gw);
                assert!(d < 1e-4, "n {n}: gradient differs by {d} (relative)");
                assert_eq!(max_abs(&g.get(2).unwrap()), 0.0, "a skipped row gets no gradient");
            }
        }
    }

    #[test]
    fn targets_outside_the_vocabulary_are_an_error() {
        let dev = Device::Cpu;
        let head = Linear::new(BaseWeight::Dense(Tensor::zeros((10, 4), candle_core::DType::F32, &dev).unwrap()));
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let err = head.cross_entropy_sum(&x, &[1, 10]).unwrap_err().to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
        // The loss over logits checks the same, on and off the fused path.
        let logits = Tensor::zeros((2, 10), candle_core::DType::F32, &dev).unwrap();
        for logits in [logits.clone(), logits.to_dtype(candle_core::DType::F64).unwrap()] {
            let err = cross_entropy_sum(&logits, &[NO_TARGET, 10]).unwrap_err().to_string();
            assert!(err.contains("target 10 at row 1 is outside the vocabulary (10)"), "{err}");
        }
    }

    /// The fused CPU op against candle's composed log-softmax: the same loss and the same
    /// gradient, with unscored positions, several rows and a non-unit upstream gradient.
    #[test]
    fn fused_cross_entropy_matches_the_composed_ops() {
        let (rows, v) = (10, 300);
        let dev = Device::Cpu;
        let logits = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (rows, v), &dev).unwrap())).unwrap();
        let targets = [3, NO_TARGET, 299, 0, 17, NO_TARGET, NO_TARGET, 42, 150, NO_TARGET];
        assert_eq!(targets.iter().filter(|&&y| y != NO_TARGET).count(), 6);
        let fused = cross_entropy_sum(logits.as_tensor(), &targets).unwrap();
        let composed = cross_entropy_sum_composed(logits.as_tensor(), &targets).unwrap();
        let (f, c) = (fused.to_scalar::<f32>().unwrap(), composed.to_scalar::<f32>().unwrap());
        assert!((f - c).abs() <= 1e-5 * c.abs(), "loss {f} vs {c}");
        assert!(c > 0.0);

        let gf =
            (fused * 2.5).unwrap().backward().unwrap().get(logits.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gc =
            (composed * 2.5).unwrap().backward().unwrap().get(logits.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gf.len(), gc.len());
        let worst = gf.iter().zip(&gc).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Gradients here reach 2.5 in magnitude (the upstream factor); a few f32 ulps apart.
        assert!(worst < 1e-5, "largest gradient difference {worst}");
        // Unscored positions get exactly zero; scored rows sum to zero (softmax minus one-hot).
        assert!(gf[v..2 * v].iter().all(|&g| g == 0.0));
        let row0: f32 = gf[..v].iter().sum();
        assert!(row0.abs() < 1e-5 && gf[3] < 0.0, "row sum {row0}, target gradient {}", gf[3]);
    }
}
