//! AdamW with PyTorch's decoupled weight decay, learning-rate schedules and global-norm
//! clipping. The moments are kept here (candle_nn::AdamW does not expose them) so checkpoints
//! can save and restore them exactly.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use crate::config::{OptimSection, Schedule};
use crate::error::{Result, TrainError};

/// AdamW as `torch.optim.AdamW` computes it (amsgrad off, not maximising):
/// `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
/// `p ← p − lr · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)`.
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken (t in the bias corrections).
    pub t: u64,
    /// First and second moments, one pair per variable (f32, on the variable's device).
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(o: &OptimSection, vars: &[(String, Var)]) -> Result<Self> {
        let mut m = Vec::with_capacity(vars.len());
        let mut v = Vec::with_capacity(vars.len());
        for (_, var) in vars {
            m.push(var.as_tensor().zeros_like()?.to_dtype(DType::F32)?);
            v.push(var.as_tensor().zeros_like()?.to_dtype(DType::F32)?);
        }
        Ok(Self { beta1: o.beta1, beta2: o.beta2, eps: o.eps, weight_decay: o.weight_decay, t: 0, m, v })
    }

    /// One update of every variable with its gradient (same order as `vars`).
    pub fn step(&mut self, vars: &[(String, Var)], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, ((_, var), g)) in vars.iter().zip(grads).enumerate() {
            let p = var.as_tensor().detach().to_dtype(DType::F32)?;
            let g = g.detach().to_dtype(DType::F32)?;
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            let p = ((p * (1.0 - lr * self.weight_decay))? - (upd * lr)?)?;
            var.set(&p.to_dtype(var.dtype())?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments keyed `<var key>.exp_avg` / `.exp_avg_sq` (PyTorch's state names).
    pub fn state_tensors(&self, vars: &[(String, Var)]) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (k, _)) in vars.iter().enumerate() {
            out.insert(format!("{k}.exp_avg"), self.m[i].clone());
            out.insert(format!("{k}.exp_avg_sq"), self.v[i].clone());
        }
        out
    }

    pub fn load_state(&mut self, vars: &[(String, Var)], t: u64, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (i, (k, var)) in vars.iter().enumerate() {
            for (suffix, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let key = format!("{k}.{suffix}");
                let t = state.get(&key).ok_or_else(|| TrainError::Invalid(format!("optimizer state has no '{key}'")))?;
                if t.dims() != var.dims() {
                    return Err(TrainError::Invalid(format!(
                        "optimizer state '{key}' has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                *slot = t.to_device(var.device())?.to_dtype(DType::F32)?;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// The learning rate for optimizer step `step` (0-based) of `total`: linear warmup from
/// `lr/warmup` to `lr` over the first `warmup` steps, then the schedule down to
/// `min_lr_ratio·lr` at the last step.
pub fn learning_rate(o: &OptimSection, step: usize, total: usize) -> f64 {
    let base = o.lr;
    let w = o.warmup_steps;
    if step < w {
        return base * (step + 1) as f64 / w as f64;
    }
    let min = base * o.min_lr_ratio;
    let span = total.saturating_sub(w).saturating_sub(1).max(1) as f64;
    let progress = ((step - w) as f64 / span).clamp(0.0, 1.0);
    match o.schedule {
        Schedule::Constant => base,
        Schedule::Linear => min + (base - min) * (1.0 - progress),
        Schedule::Cosine => min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads {
        sq += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(sq.sqrt())
}

/// `torch.nn.utils.clip_grad_norm_`: scale by `max / (norm + 1e-6)` when that is below 1.
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn opt() -> OptimSection {
        OptimSection {
            lr: 1e-3,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 2,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.0,
            batch_size: 1,
            grad_accum: 1,
            max_grad_norm: 1.0,
        }
    }

    /// Three steps with lr=1e-3, betas=(0.9,0.999), eps=1e-8, weight_decay=0.01 against a scalar
    /// f64 transcription of the algorithm box in PyTorch's `torch.optim.AdamW` documentation.
    #[test]
    fn adamw_matches_the_reference_formula() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 0.5], &dev).unwrap()).unwrap();
        let vars = vec![("p".to_string(), var)];
        let o = opt();
        let mut a = AdamW::new(&o, &vars).unwrap();
        let gs = [[0.1f64, -0.2, 0.3], [0.05, 0.1, -0.1], [-0.3, 0.0, 0.2]];
        // Scalar re-implementation in f64, written independently of the tensor code.
        let mut p = [1.0f64, -2.0, 0.5];
        let (mut m, mut v) = ([0f64; 3], [0f64; 3]);
        for (t, g) in gs.iter().enumerate() {
            let t = t as i32 + 1;
            for j in 0..3 {
                p[j] *= 1.0 - 1e-3 * 0.01;
                m[j] = 0.9 * m[j] + 0.1 * g[j];
                v[j] = 0.999 * v[j] + 0.001 * g[j] * g[j];
                let mh = m[j] / (1.0 - 0.9f64.powi(t));
                let vh = v[j] / (1.0 - 0.999f64.powi(t));
                p[j] -= 1e-3 * mh / (vh.sqrt() + 1e-8);
            }
            let gt = Tensor::new(&[g[0] as f32, g[1] as f32, g[2] as f32], &dev).unwrap();
            a.step(&vars, &[gt], 1e-3).unwrap();
        }
        let got = vars[0].1.as_tensor().to_vec1::<f32>().unwrap();
        for j in 0..3 {
            assert!((got[j] as f64 - p[j]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
        // Adam's first step moves each weight by ~lr against its gradient's sign.
        assert!((got[0] as f64) < 1.0 - 1e-3);
    }

    #[test]
    fn schedules() {
        let mut o = opt();
        o.warmup_steps = 4;
        let lrs: Vec<f64> = (0..10).map(|s| learning_rate(&o, s, 10)).collect();
        assert!((lrs[0] - 0.25e-3).abs() < 1e-12 && (lrs[3] - 1e-3).abs() < 1e-12);
        assert!((lrs[4] - 1e-3).abs() < 1e-12, "decay starts from the peak");
        assert!(lrs[9].abs() < 1e-12, "cosine ends at min");
        // Decay runs over steps 4..=9 (progress 0 to 1): step 6 is at 2/5 of the cosine.
        let want = 0.5e-3 * (1.0 + (std::f64::consts::PI * 0.4).cos());
        assert!((lrs[6] - want).abs() < 1e-12, "cosine: {} vs {want}", lrs[6]);
        o.schedule = Schedule::Linear;
        o.min_lr_ratio = 0.1;
        assert!((learning_rate(&o, 9, 10) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn clipping_matches_torch_rule() {
        let dev = Device::Cpu;
        let mut g = vec![Tensor::new(&[3.0f32, 0.0], &dev).unwrap(), Tensor::new(&[4.0f32], &dev).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let after = global_norm(&g).unwrap();
        assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-6);
    }
}
