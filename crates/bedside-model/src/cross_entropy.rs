//! The vocabulary head and the cross-entropy loss as one op, for training on the CPU in f32.
//!
//! Composed, the head writes `(positions × vocabulary)` logits that the loss keeps for its
//! backward, and the backward writes as many again (SmolLM2 at 256 positions: 50 MB each). Here
//! the head's weight is read a block of rows at a time; each block's logits live only while the
//! block is processed, folded into each position's running log-sum-exp and into
//! `Σ_j exp(z_j − m)·W_j`, from which the forward also derives the input gradient
//! `dL/dx = softmax(z)·W − W_target` (the loss is the last node of the graph, so the backward
//! only scales it). The cost is the two GEMMs the composed head and its backward would run.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::error::Result;
use crate::fused::{applies, gemm_f32};
use crate::linear::{par_map, parallel_piece_elems, piece_groups, row_blocks, BaseWeight, Linear};

/// A position without a target in [`Linear::cross_entropy_sum`]: not scored.
pub const NO_TARGET: u32 = u32::MAX;

/// Upper bound on one block's logits (positions × block rows), 8 MB.
const LOGITS_BLOCK_ELEMS: usize = 1 << 21;

impl Linear {
    /// Whether [`Linear::cross_entropy_sum`] serves inputs like `x`: f32 on the CPU, a frozen f32
    /// or ggml-quantized base on the CPU, no LoRA branch.
    pub fn fuses_cross_entropy(&self, x: &Tensor) -> bool {
        self.base.readable_by_rows() && self.lora.is_empty() && applies(x)
    }

    /// `Σ_r −log softmax(x_r·Wᵀ)[targets[r]]` over the rows `r` of `x` `(rows, in)` that have a
    /// target ([`NO_TARGET`] skips a row), differentiable with respect to `x`, without the
    /// `(rows, out)` logits ever existing. `None` when [`Linear::fuses_cross_entropy`] does not
    /// hold: the caller computes the logits instead.
    pub fn cross_entropy_sum(&self, x: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
        if !self.fuses_cross_entropy(x) {
            return Ok(None);
        }
        let (rows, _) = x.dims2()?;
        if targets.len() != rows {
            return Err(candle_core::Error::Msg(format!("cross-entropy: {} targets for {rows} rows", targets.len())).into());
        }
        let op = HeadCrossEntropy { w: self.base.clone(), targets: targets.to_vec(), dx: OnceLock::new() };
        Ok(Some(x.contiguous()?.apply_op1(op)?))
    }
}

struct HeadCrossEntropy {
    w: BaseWeight,
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
        let rows_of = self.w.rows();
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
            let wy = target_row[i].as_deref().ok_or_else(|| candle_core::Error::Msg(format!("{}: no block held target of row {r}", self.name())))?;
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
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Var, D};

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
    }
}
