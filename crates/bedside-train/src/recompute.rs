//! Activation checkpointing, by recomputation: the forward pass keeps only each decoder layer's
//! input; the backward recomputes one layer at a time from that input and pushes the output gradient
//! through it. Memory then holds one layer's graph (plus the vocabulary head's) instead of all
//! of them, for about one extra forward pass of compute.
//!
//! The vocabulary head and the loss never hold the `(t, vocab)` logits whole either: on the CPU
//! in f32 they are one op that reads the head a block of rows at a time (all positions at once);
//! elsewhere they run over chunks of positions.
//!
//! LoRA dropout masks are drawn from the step's RNG; each layer's recompute starts from a copy of
//! the RNG as the first pass found it, so the masks, and therefore the gradients, are the ones
//! an ordinary backward would give, and the RNG ends where an ordinary step leaves it (a LoRA on
//! the vocabulary head itself draws its masks per chunk, so its dropout differs from an
//! unchunked step's, though it is just as random).

use bedside_model::{DropoutRng, Mode, Model};
use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::{Result, TrainError};
use crate::loss::{head_loss_sum, shift_labels};

/// Positions per chunk of the vocabulary head: the loss keeps several `(chunk, vocabulary)`
/// tensors per chunk.
const HEAD_CHUNK: usize = 32;

/// The summed loss over `labels` divided by `scale`, and its gradient for every variable in
/// `vars` order (zeros where none flows), computed with activation checkpointing; LoRA dropout
/// draws from `rng`.
pub fn loss_and_grads(
    model: &Model,
    vars: &[(String, Var)],
    ids: &Tensor,
    labels: &[Vec<i64>],
    scale: f64,
    rng: &mut DropoutRng,
) -> Result<(f64, Vec<Tensor>)> {
    let (b, t) = ids.dims2()?;
    if labels.len() != b || labels.iter().any(|l| l.len() != t) {
        return Err(TrainError::Invalid(format!("labels must be {b} rows of {t}, matching the input ids")));
    }
    let pos = model.positions(b, t, 0, &vec![0; b])?;
    // 1. Forward without a graph, keeping each layer's input and the RNG state it started from.
    let mut inputs = Vec::with_capacity(model.layers.len());
    let mut x = model.embed(ids)?.detach();
    for i in 0..model.layers.len() {
        inputs.push((x.clone(), rng.clone()));
        x = model.block_forward(i, &x, &pos, None, Mode::Train { dropout: Some(&mut *rng) })?.detach();
    }
    // 2. The head and the loss, a chunk of positions at a time: only one chunk's
    //    vocabulary-wide logits and their gradients exist at once.
    let targets = shift_labels(labels);
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut loss = 0f64;
    let mut parts = Vec::new();
    // Where the head and the loss are one op (CPU, f32), no logits exist: one chunk.
    let chunk = if model.lm_head.fuses_cross_entropy(&x) { t } else { HEAD_CHUNK };
    for start in (0..t).step_by(chunk) {
        let len = chunk.min(t - start);
        let part = Var::from_tensor(&x.narrow(1, start, len)?.contiguous()?)?;
        let tg: Vec<Vec<i64>> = targets.iter().map(|r| r[start..start + len].to_vec()).collect();
        let (sum, n) = head_loss_sum(model, part.as_tensor(), &tg, Mode::Train { dropout: Some(&mut *rng) })?;
        if n == 0 {
            parts.push(part.as_tensor().zeros_like()?);
            continue;
        }
        let l = (sum / scale)?;
        loss += l.to_scalar::<f32>()? as f64;
        let store = l.backward()?;
        add_grads(vars, &store, &mut grads)?;
        parts.push(match store.get(part.as_tensor()) {
            Some(g) => g.detach(),
            None => part.as_tensor().zeros_like()?,
        });
    }
    let mut upstream = Some(Tensor::cat(&parts, 1)?);
    drop(parts);
    // 3. Layers in reverse: recompute (replaying the layer's dropout masks from its copy of the
    //    RNG), then backpropagate the output gradient.
    for (i, (input, mut layer_rng)) in inputs.into_iter().enumerate().rev() {
        let Some(g_out) = upstream.take() else { break };
        let xv = Var::from_tensor(&input)?;
        let y = model.block_forward(i, xv.as_tensor(), &pos, None, Mode::Train { dropout: Some(&mut layer_rng) })?;
        // d/dθ Σ(y ⊙ g_out) is the vector-Jacobian product g_outᵀ ∂y/∂θ.
        let store = (y * g_out)?.sum_all()?.backward()?;
        add_grads(vars, &store, &mut grads)?;
        upstream = store.get(xv.as_tensor()).map(Tensor::detach);
    }
    let grads = grads
        .into_iter()
        .zip(vars)
        .map(|(g, (_, v))| match g {
            Some(g) => Ok(g),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((loss, grads))
}

fn add_grads(vars: &[(String, Var)], store: &GradStore, acc: &mut [Option<Tensor>]) -> Result<()> {
    for ((_, v), slot) in vars.iter().zip(acc.iter_mut()) {
        if let Some(g) = store.get(v.as_tensor()) {
            let g = g.detach();
            *slot = Some(match slot.take() {
                Some(a) => (a + g)?,
                None => g,
            });
        }
    }
    Ok(())
}
