//! The causal language-modelling loss as Hugging Face computes it, and the zero-gradient guard.

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var, D};

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
    if targets.len() != b || targets.iter().any(|l| l.len() != t) {
        return Err(TrainError::Invalid(format!("targets must be {b} rows of {t}, matching the logits")));
    }
    let mut rows = Vec::new();
    let mut ys = Vec::new();
    for (r, l) in targets.iter().enumerate() {
        for (i, &y) in l.iter().enumerate() {
            if y == IGNORE {
                continue;
            }
            if y < 0 || y as usize >= v {
                return Err(TrainError::Invalid(format!("label {y} predicted at row {r}, position {i} is outside the vocabulary ({v})")));
            }
            rows.push((r * t + i) as u32);
            ys.push(y as u32);
        }
    }
    let n = rows.len();
    if n == 0 {
        return Ok((Tensor::zeros((), DType::F32, logits.device())?, 0));
    }
    let dev = logits.device();
    let rows = Tensor::from_vec(rows, n, dev)?;
    let ys = Tensor::from_vec(ys, (n, 1), dev)?;
    // Only the scored rows go through the (vocab-wide) log-softmax.
    let picked = logits.reshape((b * t, v))?.index_select(&rows, 0)?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
    let nll = logp.gather(&ys, 1)?.sum_all()?.neg()?;
    Ok((nll, n))
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
