//! LoRA dropout from a seedable RNG. candle's CPU `dropout` draws from an unseedable thread RNG,
//! so training runs could not be repeated or resumed exactly; here the trainer owns the RNG
//! ([`DropoutRng`]), seeds it, hands it to each training forward and saves it in its
//! checkpoints. A mask follows from where the RNG stood and the drop probability
//! ([`DropoutDraw`]), so the fused LoRA op regenerates it in the backward instead of keeping it.
//! [`seeded_dropout`] is the composed reference: the same masks applied with candle's ops.

use candle_core::{Shape, Tensor};

use crate::error::Result;

/// The SplitMix64 state LoRA dropout masks are drawn from. Drawing a mask of `n` values advances
/// it by `n` steps, so the same state and the same sequence of draws give the same masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropoutRng {
    state: u64,
}

impl DropoutRng {
    /// An RNG at `state` (a run's seed, or a state saved by [`DropoutRng::state`]).
    pub fn new(state: u64) -> Self {
        Self { state }
    }

    /// Where the RNG stands (to checkpoint a training run).
    pub fn state(&self) -> u64 {
        self.state
    }
}

/// One LoRA dropout mask: where the [`DropoutRng`] stood when it was drawn, and the drop
/// probability. The mask's values follow from these.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropoutDraw {
    state: u64,
    p: f32,
}

const SPLITMIX_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

impl DropoutDraw {
    /// Draw a mask of `n` values from `rng`: record its state and advance it past them.
    pub(crate) fn take(rng: &mut DropoutRng, n: usize, p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(candle_core::Error::Msg(format!("dropout probability must be in [0, 1), got {p}")).into());
        }
        let state = rng.state;
        rng.state = state.wrapping_add((n as u64).wrapping_mul(SPLITMIX_STEP));
        Ok(Self { state, p })
    }

    /// The mask's `n` values: `1 / (1 - p)` where kept, 0 where dropped (inverted dropout).
    pub(crate) fn values(&self, n: usize) -> Vec<f32> {
        let scale = 1.0 / (1.0 - self.p);
        let mut s = self.state;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(SPLITMIX_STEP);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 24) as f32;
                if u >= self.p {
                    scale
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The mask as a CPU tensor of `shape`.
    pub(crate) fn tensor(&self, shape: &Shape) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.values(shape.elem_count()), shape, &candle_core::Device::Cpu)
    }
}

/// Inverted dropout with a mask drawn from `rng` on the CPU (same masks on any device).
pub(crate) fn seeded_dropout(x: &Tensor, p: f32, rng: &mut DropoutRng) -> Result<Tensor> {
    let mask = DropoutDraw::take(rng, x.elem_count(), p)?.tensor(x.shape())?.to_device(x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// LoRA dropout masks come from a seedable state: same state, same mask; the kept fraction
    /// is about 1 - p and kept values are scaled by 1 / (1 - p) (PyTorch's inverted dropout).
    #[test]
    fn seeded_dropout_repeats() {
        let x = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
        let mut rng = DropoutRng::new(123);
        let a = seeded_dropout(&x, 0.25, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let after = rng.state();
        let mut rng = DropoutRng::new(123);
        let b = seeded_dropout(&x, 0.25, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_eq!(after, rng.state());
        let c = seeded_dropout(&x, 0.25, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(a, c);
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.75).abs() < 0.03, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    }
}
