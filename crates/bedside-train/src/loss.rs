//! The causal language-modelling loss as Hugging Face computes it, and the zero-gradient guard.

use std::sync::OnceLock;

use candle_core::{backprop::GradStore, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, D};

use bedside_model::{Logits, Model};

use crate::error::{Result, TrainError};

/// Label value that takes a position out of the loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Summed cross-entropy of `logits` `(b, t, vocab)` against `labels` (`b` rows of `t` ids, or
/// [`IGNORE`]), with HF's causal shift: position `i` predicts `labels[i + 1]`. Returns the sum
/// (a scalar tensor with a backward) and the number of tokens it covers; divide by the count (or
/// a larger one, for gradient accumulation) to get HF's mean.
pub fn causal_lm_loss_sum(logits: &Tensor, labels: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    let (b, t, _) = logits.dims3()?;
    if labels.len() != b || labels.iter().any(|l| l.len() != t) {
        return Err(TrainError::Invalid(format!("labels must be {b} rows of {t}, matching the logits")));
    }
    aligned_lm_loss_sum(logits, &shift_labels(labels))
}

/// HF's causal shift: the target of position `i` is `labels[i + 1]`; the last position has none.
pub fn shift_labels(labels: &[Vec<i64>]) -> Vec<Vec<i64>> {
    labels.iter().map(|l| l.iter().skip(1).copied().chain(std::iter::once(IGNORE)).take(l.len()).collect()).collect()
}

/// Summed cross-entropy of `logits` `(b, t, vocab)` against `targets` already aligned with them
/// (`targets[r][i]` is what position `i` should predict, or [`IGNORE`]).
pub fn aligned_lm_loss_sum(logits: &Tensor, targets: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    let (flat, n) = flat_targets(targets, b, t, v)?;
    if n == 0 {
        return Ok((Tensor::zeros((), DType::F32, logits.device())?, 0));
    }
    let logits = logits.reshape((b * t, v))?;
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        let op = CrossEntropySum { targets: flat, vocab: v, lse: OnceLock::new() };
        return Ok((logits.contiguous()?.apply_op1(op)?, n));
    }
    composed_lm_loss_sum(&logits, &flat, n)
}

/// The same sum from the last decoder layer's output `x` `(b, t, hidden)`: the model's final
/// norm, vocabulary head and this loss. On the CPU in f32 one op folds the head into the loss
/// (`Model::head_cross_entropy_sum`), so the `(b · t, vocab)` logits and their gradient never
/// exist; elsewhere the head's logits go to [`aligned_lm_loss_sum`].
pub fn head_loss_sum(model: &Model, x: &Tensor, targets: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    let (b, t, _) = x.dims3()?;
    let (flat, n) = flat_targets(targets, b, t, model.lm_head.out_dim())?;
    if n == 0 {
        return Ok((Tensor::zeros((), DType::F32, x.device())?, 0));
    }
    match model.head_cross_entropy_sum(x, &flat)? {
        Some(sum) => Ok((sum, n)),
        None => aligned_lm_loss_sum(&model.head(x, Logits::All)?, targets),
    }
}

/// One target per position, row-major, [`SKIP`] where the position is not scored; and the
/// number scored. Checks the shape and that every target is in the vocabulary.
fn flat_targets(targets: &[Vec<i64>], b: usize, t: usize, v: usize) -> Result<(Vec<u32>, usize)> {
    if targets.len() != b || targets.iter().any(|l| l.len() != t) {
        return Err(TrainError::Invalid(format!("targets must be {b} rows of {t}, matching the logits")));
    }
    let mut flat = Vec::with_capacity(b * t);
    for (r, l) in targets.iter().enumerate() {
        for (i, &y) in l.iter().enumerate() {
            if y == IGNORE {
                flat.push(SKIP);
                continue;
            }
            if y < 0 || y as usize >= v {
                return Err(TrainError::Invalid(format!("label {y} predicted at row {r}, position {i} is outside the vocabulary ({v})")));
            }
            flat.push(y as u32);
        }
    }
    let n = flat.iter().filter(|&&y| y != SKIP).count();
    Ok((flat, n))
}

/// The same sum from candle's differentiable ops (any device and dtype): only the scored rows
/// go through the (vocabulary-wide) log-softmax.
fn composed_lm_loss_sum(logits: &Tensor, targets: &[u32], n: usize) -> Result<(Tensor, usize)> {
    let dev = logits.device();
    let (rows, ys): (Vec<u32>, Vec<u32>) =
        targets.iter().enumerate().filter(|(_, &y)| y != SKIP).map(|(i, &y)| (i as u32, y)).unzip();
    let rows = Tensor::from_vec(rows, n, dev)?;
    let ys = Tensor::from_vec(ys, (n, 1), dev)?;
    let picked = logits.index_select(&rows, 0)?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
    let nll = logp.gather(&ys, 1)?.sum_all()?.neg()?;
    Ok((nll, n))
}

/// A position that is not scored, in [`CrossEntropySum`]'s targets (the same value the fused
/// head's loss skips).
const SKIP: u32 = bedside_model::cross_entropy::NO_TARGET;

/// Summed cross-entropy of f32 logits `(rows, vocab)` on the CPU as one op with its own
/// backward. Composed from candle's ops, the log-softmax and its backward are about ten passes
/// over vocabulary-wide tensors, each freshly allocated (SmolLM2: 50 MB per pass at 256
/// positions); here the forward is one pass per row (max, then log-sum-exp) and the backward
/// writes `softmax − one-hot` once, reusing the forward's log-sum-exp.
struct CrossEntropySum {
    targets: Vec<u32>,
    vocab: usize,
    /// Each row's log-sum-exp (0 for skipped rows), kept by the forward for the backward.
    lse: OnceLock<Vec<f32>>,
}

impl CrossEntropySum {
    /// Log-sum-exp of each scored row of `x` (`targets.len()` rows of `vocab`).
    fn log_sum_exp(&self, x: &[f32]) -> Vec<f32> {
        let v = self.vocab;
        let mut lse = vec![0f32; self.targets.len()];
        for_row_chunks(&mut lse, 1, |first, out| {
            for (j, o) in out.iter_mut().enumerate() {
                let r = first + j;
                if self.targets[r] == SKIP {
                    continue;
                }
                let row = &x[r * v..(r + 1) * v];
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = row.iter().map(|&z| (z - m).exp()).sum();
                *o = m + s.ln();
            }
        });
        lse
    }
}

/// Run `f(first_row, chunk)` over `out` split into contiguous chunks of whole rows (`width`
/// values each), one chunk per candle CPU thread.
fn for_row_chunks<T: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = out.len() / width.max(1);
    let threads = candle_core::utils::get_num_threads().clamp(1, rows.max(1));
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (c, chunk) in out.chunks_mut(per * width).enumerate() {
            let f = &f;
            s.spawn(move || f(c * per, chunk));
        }
    });
}

fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("cross-entropy: expected contiguous f32 logits"),
    }
}

impl CustomOp1 for CrossEntropySum {
    fn name(&self) -> &'static str {
        "cross-entropy-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout)?;
        if x.len() != self.targets.len() * self.vocab {
            candle_core::bail!("cross-entropy: {} logits for {} rows of {}", x.len(), self.targets.len(), self.vocab);
        }
        let lse = self.log_sum_exp(x);
        let v = self.vocab;
        let nll: f64 = (self.targets.iter().enumerate())
            .filter(|(_, &y)| y != SKIP)
            .map(|(r, &y)| (lse[r] - x[r * v + y as usize]) as f64)
            .sum();
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(vec![nll as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let (storage, layout) = arg.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("cross-entropy: logits left the CPU");
        };
        let x = cpu_f32(cpu, layout)?;
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
        let mut dx = vec![0f32; x.len()];
        for_row_chunks(&mut dx, v, |first, out| {
            for (j, row_out) in out.chunks_exact_mut(v).enumerate() {
                let r = first + j;
                let y = self.targets[r];
                if y == SKIP {
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

/// HF's mean masked cross-entropy.
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<Tensor> {
    let (sum, n) = causal_lm_loss_sum(logits, labels)?;
    Ok((sum / n.max(1) as f64)?)
}

/// The gradient of every variable, in order. A variable the backward did not reach gets zeros
/// (so accumulation works) and is reported in the second value.
pub fn collect_grads(vars: &[(String, Var)], grads: &GradStore) -> Result<(Vec<Tensor>, Vec<String>)> {
    let mut out = Vec::with_capacity(vars.len());
    let mut missing = Vec::new();
    for (k, v) in vars {
        match grads.get(v.as_tensor()) {
            Some(g) => out.push(g.detach()),
            None => {
                missing.push(k.clone());
                out.push(v.as_tensor().zeros_like()?);
            }
        }
    }
    Ok((out, missing))
}

/// Fail when any trainable parameter's gradient is exactly zero everywhere: an op on its path
/// records no backward (candle's fused softmax, rms_norm, rope and quantized matmul cut
/// gradients silently). Run it on the first step.
pub fn check_nonzero_grads(vars: &[(String, Var)], grads: &[Tensor]) -> Result<()> {
    let mut zero = Vec::new();
    for ((k, _), g) in vars.iter().zip(grads) {
        let m = g.to_dtype(DType::F32)?.abs()?.flatten_all()?.max(0)?.to_device(&Device::Cpu)?.to_scalar::<f32>()?;
        if m == 0.0 {
            zero.push(k.clone());
        }
    }
    if zero.is_empty() {
        Ok(())
    } else {
        Err(TrainError::ZeroGradient(zero))
    }
}

/// The zero-gradient guard over the first steps of a run. A LoRA `A` factor has an exactly zero
/// gradient while its `B` is still zero (PEFT's initialisation), so it is checked at the first
/// step where its `B` is not; every other parameter is checked at the first step.
pub struct ZeroGradGuard {
    pending: Vec<usize>,
}

impl ZeroGradGuard {
    pub fn new(vars: &[(String, Var)]) -> Self {
        Self { pending: (0..vars.len()).collect() }
    }
    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Check this step's gradients (before clipping and the update).
    pub fn check(&mut self, vars: &[(String, Var)], grads: &[Tensor]) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let max_abs = |t: &Tensor| -> Result<f32> {
            Ok(t.to_dtype(DType::F32)?.abs()?.flatten_all()?.max(0)?.to_device(&Device::Cpu)?.to_scalar::<f32>()?)
        };
        let mut zero = Vec::new();
        let mut still = Vec::new();
        for &i in &self.pending {
            let (k, _) = &vars[i];
            if max_abs(&grads[i])? != 0.0 {
                continue;
            }
            let b_key = k.replace(".lora_A.", ".lora_B.");
            let b_is_zero = match vars.iter().find(|(kb, _)| *kb == b_key && b_key != *k) {
                Some((_, b)) => max_abs(b.as_tensor())? == 0.0,
                None => false,
            };
            if b_is_zero {
                still.push(i);
            } else {
                zero.push(k.clone());
            }
        }
        if !zero.is_empty() {
            return Err(TrainError::ZeroGradient(zero));
        }
        self.pending = still;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused CPU op against candle's composed log-softmax: the same loss and the same
    /// gradient, with unscored positions, several rows and a non-unit upstream gradient.
    #[test]
    fn fused_cross_entropy_matches_the_composed_ops() {
        let (b, t, v) = (2, 5, 300);
        let dev = Device::Cpu;
        let logits = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (b, t, v), &dev).unwrap())).unwrap();
        let targets = vec![vec![3, IGNORE, 299, 0, 17], vec![IGNORE, IGNORE, 42, 150, IGNORE]];
        let (fused, n) = aligned_lm_loss_sum(logits.as_tensor(), &targets).unwrap();
        assert_eq!(n, 6);
        let flat: Vec<u32> = targets.iter().flatten().map(|&y| if y == IGNORE { SKIP } else { y as u32 }).collect();
        let (composed, _) = composed_lm_loss_sum(&logits.as_tensor().reshape((b * t, v)).unwrap(), &flat, n).unwrap();
        let (f, c) = (fused.to_scalar::<f32>().unwrap(), composed.to_scalar::<f32>().unwrap());
        assert!((f - c).abs() <= 1e-5 * c.abs(), "loss {f} vs {c}");
        assert!(c > 0.0);

        let gf = (fused * 2.5).unwrap().backward().unwrap().get(logits.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gc = (composed * 2.5).unwrap().backward().unwrap().get(logits.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gf.len(), gc.len());
        let worst = gf.iter().zip(&gc).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Gradients here reach 2.5 in magnitude (the upstream factor); a few f32 ulps apart.
        assert!(worst < 1e-5, "largest gradient difference {worst}");
        // Unscored positions get exactly zero; scored rows sum to zero (softmax minus one-hot).
        assert!(gf[v..2 * v].iter().all(|&g| g == 0.0));
        let row0: f32 = gf[..v].iter().sum();
        assert!(row0.abs() < 1e-5 && gf[3] < 0.0, "row sum {row0}, target gradient {}", gf[3]);
    }

    #[test]
    fn labels_outside_the_vocabulary_are_an_error() {
        let logits = Tensor::zeros((1, 2, 10), DType::F32, &Device::Cpu).unwrap();
        let err = aligned_lm_loss_sum(&logits, &[vec![1, 10]]).unwrap_err().to_string();
        assert!(err.contains("label 10") && err.contains("position 1"), "{err}");
    }
}
