//! SwiGLU, the gated activation of Llama's MLP, `silu(gate) · up`, differentiable with respect
//! to both inputs, beside its composed reference [`swiglu_composed`].

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::cpu::par_fill;
use crate::error::Result;
use crate::ops::{applies, f32_data};

/// Elements per unit of work of the elementwise kernels.
const ELEMWISE_UNIT: usize = 16 * 1024;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `silu(gate) · up` as one op on the CPU in f32; elsewhere [`swiglu_composed`].
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !applies(gate) || !applies(up) || gate.dims() != up.dims() {
        return swiglu_composed(gate, up);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)?)
}

/// The same from candle's ops (any device and dtype).
pub(crate) fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
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
    use crate::ops::testing::{check, randn};

    #[test]
    fn swiglu_matches_composed_ops_for_both_inputs() {
        // More elements than one unit of work, so the kernel runs in several pieces.
        let g = randn(&[3, 7000], 8);
        let u = randn(&[3, 7000], 9);
        check(&[g, u], |v| swiglu(&v[0], &v[1]).unwrap(), |v| swiglu_composed(&v[0], &v[1]).unwrap(), 1e-5);
    }
}
