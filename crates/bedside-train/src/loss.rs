//! The causal language-modelling loss as Hugging Face computes it, and the zero-gradient guard.

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};

use bedside_model::{Logits, Mode, Model, NO_TARGET};

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
/// (`targets[r][i]` is what position `i` should predict, or [`IGNORE`]). On the CPU in f32 one op
/// with its own backward ([`bedside_model::cross_entropy_sum`]).
pub fn aligned_lm_loss_sum(logits: &Tensor, targets: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    let (flat, n) = flat_targets(targets, b, t, v)?;
    if n == 0 {
        return Ok((Tensor::zeros((), DType::F32, logits.device())?, 0));
    }
    Ok((bedside_model::cross_entropy_sum(&logits.reshape((b * t, v))?, &flat)?, n))
}

/// The same sum from the last decoder layer's output `x` `(b, t, hidden)` in the training
/// `mode`: the model's final norm, vocabulary head and this loss. On the CPU in f32 one op folds
/// the head into the loss (`Model::head_cross_entropy_sum`), so the `(b · t, vocab)` logits and
/// their gradient never exist; elsewhere the head's logits go to [`aligned_lm_loss_sum`].
pub fn head_loss_sum(model: &Model, x: &Tensor, targets: &[Vec<i64>], mode: Mode) -> Result<(Tensor, usize)> {
    let (b, t, _) = x.dims3()?;
    let (flat, n) = flat_targets(targets, b, t, model.lm_head.out_dim())?;
    if n == 0 {
        return Ok((Tensor::zeros((), DType::F32, x.device())?, 0));
    }
    match model.head_cross_entropy_sum(x, &flat)? {
        Some(sum) => Ok((sum, n)),
        None => aligned_lm_loss_sum(&model.head(x, Logits::All, mode)?, targets),
    }
}

/// One target per position, row-major, [`NO_TARGET`] where the position is not scored; and the
/// number scored. Checks the shape and that every target is in the vocabulary.
fn flat_targets(targets: &[Vec<i64>], b: usize, t: usize, v: usize) -> Result<(Vec<u32>, usize)> {
    if targets.len() != b || targets.iter().any(|l| l.len() != t) {
        return Err(TrainError::Invalid(format!("targets must be {b} rows of {t}, matching the logits")));
    }
    let mut flat = Vec::with_capacity(b * t);
    for (r, l) in targets.iter().enumerate() {
        for (i, &y) in l.iter().enumerate() {
            if y == IGNORE {
                flat.push(NO_TARGET);
                continue;
            }
            if y < 0 || y as usize >= v {
                return Err(TrainError::Invalid(format!("label {y} predicted at row {r}, position {i} is outside the vocabulary ({v})")));
            }
            flat.push(y as u32);
        }
    }
    let n = flat.iter().filter(|&&y| y != NO_TARGET).count();
    Ok((flat, n))
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

    /// The count covers the scored positions only, and the sum is the model crate's loss over
    /// the flattened logits with unscored positions skipped.
    #[test]
    fn aligned_loss_counts_and_sums_the_scored_positions() {
        let (b, t, v) = (2, 5, 300);
        let logits = Tensor::randn(0f32, 3.0, (b, t, v), &Device::Cpu).unwrap();
        let targets = vec![vec![3, IGNORE, 299, 0, 17], vec![IGNORE, IGNORE, 42, 150, IGNORE]];
        let (sum, n) = aligned_lm_loss_sum(&logits, &targets).unwrap();
        assert_eq!(n, 6);
        let flat: Vec<u32> = targets.iter().flatten().map(|&y| if y == IGNORE { NO_TARGET } else { y as u32 }).collect();
        let want = bedside_model::cross_entropy_sum(&logits.reshape((b * t, v)).unwrap(), &flat).unwrap();
        assert_eq!(sum.to_scalar::<f32>().unwrap(), want.to_scalar::<f32>().unwrap());
        assert!(want.to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn labels_outside_the_vocabulary_are_an_error() {
        let logits = Tensor::zeros((1, 2, 10), DType::F32, &Device::Cpu).unwrap();
        let err = aligned_lm_loss_sum(&logits, &[vec![1, 10]]).unwrap_err().to_string();
        assert!(err.contains("label 10") && err.contains("position 1"), "{err}");
    }
}
