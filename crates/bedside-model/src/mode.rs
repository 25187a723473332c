//! What a forward pass is for, given at each call: inference, or training with or without LoRA
//! dropout. The model code is written once; the mode picks its ops.

use crate::ops::dropout::DropoutRng;

/// How a forward pass runs.
///
/// - `Infer`: candle's fused inference kernels (softmax, rms_norm, rope, quantized matmul), which
///   record no backward; no dropout. What [`crate::Model::forward`] runs.
/// - `Train`: every op records a backward (on the CPU in f32, the fused training ops of
///   [`crate::ops`] where they apply, else candle's differentiable ops). LoRA dropout draws its
///   masks from `dropout`, advancing it; with `None` the branches run without dropout (the loss
///   a training step computes, deterministically: validation).
#[derive(Debug)]
pub enum Mode<'a> {
    Infer,
    Train { dropout: Option<&'a mut DropoutRng> },
}

impl Mode<'_> {
    /// Whether this is a training mode (ops that record a backward).
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train { .. })
    }

    /// The RNG LoRA dropout draws from, when this is training with dropout.
    pub(crate) fn dropout(&mut self) -> Option<&mut DropoutRng> {
        match self {
            Mode::Train { dropout: Some(rng) } => Some(&mut **rng),
            _ => None,
        }
    }
}
