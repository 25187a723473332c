//! `x · Wᵀ` with a frozen weight `W: [out, in]`, differentiable with respect to `x` only: one op
//! for each weight kind, dense ([`frozen_matmul_wt`]) and ggml-quantized ([`qmatmul_train`]). The
//! weight gets no gradient (it is frozen), and a quantized one stays quantized in memory. The
//! composed reference is the plain matmul over the dense or dequantized weight
//! ([`crate::linear::matmul_wt`]), which the tests compare against.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::cpu::{gemm_by_pieces, input_grad_by_pieces, WeightRows};

/// Row count from which a CPU quantized matmul dequantizes the weight and runs an f32 GEMM.
pub const DENSE_ROWS: usize = 16;

/// `x @ wᵀ` for a frozen dense `w: [out, in]`, differentiable with respect to `x` only.
///
/// candle's matmul backward always computes the gradient of both operands, so a plain matmul
/// with a frozen weight spends a third of its backward (and a weight-sized buffer per layer, kept
/// to the end of the backward) on a gradient nobody uses. This op's backward returns only
/// `dL/dx = dL/dy · W`.
pub(crate) fn frozen_matmul_wt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.contiguous()?.reshape((rows, in_dim))?.apply_op1(FrozenMatMul(w.clone()))?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out_dims)
}

struct FrozenMatMul(Tensor);

impl FrozenMatMul {
    /// `(rows, k) @ (n, k)ᵀ` on whatever backend holds both operands.
    fn fwd<S: candle_core::backend::BackendStorage>(
        &self,
        x: &S,
        xl: &Layout,
        pick: impl Fn(&candle_core::Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let (rows, k) = xl.shape().dims2()?;
        let (n, wk) = self.0.dims2()?;
        if wk != k {
            candle_core::bail!("frozen matmul: input has {k} features, weight expects {wk}");
        }
        let (ws, wl) = self.0.storage_and_layout();
        let w = pick(&ws).ok_or_else(|| candle_core::Error::Msg("frozen matmul: weight and input are on different devices".into()))?;
        let wt = wl.transpose(0, 1)?;
        Ok((x.matmul(w, (1, rows, n, k), xl, &wt)?, Shape::from((rows, n))))
    }
}

impl CustomOp1 for FrozenMatMul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd(storage, layout, |s| match s {
            candle_core::Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.fwd(storage, layout, |s| match s {
            candle_core::Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn metal_fwd(&self, storage: &candle_core::MetalStorage, layout: &Layout) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        self.fwd(storage, layout, |s| match s {
            candle_core::Storage::Metal(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.0)?))
    }
}

/// `x @ Wᵀ` with a ggml-quantized `W: [out, in]`, differentiable with respect to `x`.
///
/// The forward is candle's quantized matmul (the exact kernels inference uses). The backward
/// computes `dL/dx = dL/dy · W`, dequantizing `W` for that one call only, so at most one layer's
/// dense weight exists at a time and the frozen base stays quantized in memory.
pub(crate) fn qmatmul_train(x: &Tensor, w: &Arc<QTensor>) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(QMatMulTrain(w.clone()))
}

struct QMatMulTrain(Arc<QTensor>);

impl CustomOp1 for QMatMulTrain {
    fn name(&self) -> &'static str {
        "qmatmul-train"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // Few rows: the quantized kernel. Many rows (training sequences): candle's CPU quantized
        // kernels are row-by-row dot products that are far slower than a blocked f32 GEMM, so
        // dequantize this one weight for the call (the same GGUF values; activations stay f32
        // instead of being rounded to 8 bit) and drop it afterwards.
        let (n, k) = self.0.shape().dims2()?;
        let rows = layout.shape().elem_count() / k.max(1);
        if rows < DENSE_ROWS || !layout.is_contiguous() {
            return self.0.as_ref().cpu_fwd(storage, layout);
        }
        let (o, cpu) = (layout.start_offset(), candle_core::Device::Cpu);
        let x32 = match storage {
            CpuStorage::F32(_) => None,
            CpuStorage::BF16(v) => Some(Tensor::from_slice(&v[o..o + rows * k], (rows, k), &cpu)?.to_dtype(DType::F32)?),
            CpuStorage::F16(v) => Some(Tensor::from_slice(&v[o..o + rows * k], (rows, k), &cpu)?.to_dtype(DType::F32)?),
            _ => return self.0.as_ref().cpu_fwd(storage, layout),
        };
        let y = match &x32 {
            None => gemm_by_pieces(&WeightRows::Quantized(self.0.clone()), storage, &Layout::contiguous_with_offset((rows, k), o))?,
            Some(t) => {
                let (ts, tl) = t.storage_and_layout();
                let candle_core::Storage::Cpu(tc) = &*ts else { candle_core::bail!("expected a CPU tensor") };
                gemm_by_pieces(&WeightRows::Quantized(self.0.clone()), tc, tl)?
            }
        };
        let mut dims = layout.shape().dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = n;
        let out = match storage {
            CpuStorage::BF16(_) => CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect()),
            CpuStorage::F16(_) => CpuStorage::F16(y.into_iter().map(half::f16::from_f32).collect()),
            _ => CpuStorage::F32(y),
        };
        Ok((out, Shape::from(dims)))
    }

    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.0.as_ref().cuda_fwd(storage, layout)
    }

    fn metal_fwd(&self, storage: &candle_core::MetalStorage, layout: &Layout) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        self.0.as_ref().metal_fwd(storage, layout)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dims = grad_res.dims();
        let out_dim = dims[dims.len() - 1];
        let rows = grad_res.elem_count() / out_dim.max(1);
        let g = input_grad_by_pieces(&WeightRows::Quantized(self.0.clone()), &grad_res.contiguous()?.reshape((rows, out_dim))?)?;
        Ok(Some(g.reshape(arg.dims())?.to_dtype(arg.dtype())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{dequantize_rows, parallel_pieces, PARALLEL_PIECE_MAX_ELEMS};
    use crate::linear::{matmul_wt, BaseWeight};
    use bedside_testutil::lcg_values as values;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Module, Var};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The input gradient through a quantized weight equals the one through its dequantized dense
    /// copy (the straight-through gradient of the frozen weight), for a 3-d input like the model's.
    fn check(dtype: GgmlDType) {
        let dev = Device::Cpu;
        let (out, inp) = (48, 64);
        let w = Tensor::from_vec(values(out * inp, 1), (out, inp), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
        let wd = q.dequantize(&dev).unwrap();
        let x = Var::from_tensor(&Tensor::from_vec(values(2 * 5 * inp, 2), (2, 5, inp), &dev).unwrap()).unwrap();
        let r = Tensor::from_vec(values(2 * 5 * out, 3), (2, 5, out), &dev).unwrap();

        let y = qmatmul_train(x.as_tensor(), &q).unwrap();
        let loss = (&y * &r).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap().get(x.as_tensor()).cloned().expect("input has a gradient");

        let yd = matmul_wt(x.as_tensor(), &wd).unwrap();
        let loss_d = (&yd * &r).unwrap().sum_all().unwrap();
        let gd = loss_d.backward().unwrap().get(x.as_tensor()).cloned().unwrap();
        let rel = max_abs(&(&g - &gd).unwrap()) / max_abs(&gd);
        assert!(rel < 1e-5, "{dtype:?}: gradient differs from the dense path by {rel} (relative)");
        assert!(max_abs(&g) > 0.1, "{dtype:?}: gradient is (near) zero");

        // The forward is the quantized kernel (activations rounded to 8 bit), close to dense.
        let fwd = max_abs(&(&y - &yd).unwrap()) / max_abs(&yd);
        assert!(fwd < 0.02, "{dtype:?}: quantized forward differs from dense by {fwd}");
        // Many rows take the dequantize-per-call GEMM: equal to the dense path.
        let xl = Tensor::from_vec(values(40 * inp, 9), (2, 20, inp), &dev).unwrap();
        let yl = qmatmul_train(&xl, &q).unwrap();
        let yld = matmul_wt(&xl, &wd).unwrap();
        assert_eq!(yl.dims(), &[2, 20, out]);
        assert!(max_abs(&(&yl - &yld).unwrap()) < 1e-5 * max_abs(&yld));

        // Central finite differences of the dense loss agree with the analytic gradient.
        let xv = x.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let loss_at = |v: &[f32]| -> f64 {
            let xt = Tensor::from_vec(v.to_vec(), (2, 5, inp), &dev).unwrap();
            let y = matmul_wt(&xt.to_dtype(DType::F64).unwrap(), &wd.to_dtype(DType::F64).unwrap()).unwrap();
            (&y * &r.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        for i in [0usize, 17, 63, 64, 300, 639] {
            let eps = 1e-2f32;
            let mut p = xv.clone();
            p[i] += eps;
            let mut m = xv.clone();
            m[i] -= eps;
            let fd = (loss_at(&p) - loss_at(&m)) / (2.0 * eps as f64);
            assert!((fd - gv[i] as f64).abs() < 1e-3 * (1.0 + fd.abs()), "{dtype:?} x[{i}]: fd {fd} vs grad {}", gv[i]);
        }
    }

    #[test]
    fn quantized_matmul_backward_q8_0() {
        check(GgmlDType::Q8_0);
    }

    #[test]
    fn quantized_matmul_backward_q4_1() {
        check(GgmlDType::Q4_1);
    }

    #[test]
    fn quantized_matmul_backward_q4k() {
        // K-quants have 256-wide blocks.
        let dev = Device::Cpu;
        let w = Tensor::from_vec(values(32 * 256, 4), (32, 256), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4K).unwrap());
        let x = Var::from_tensor(&Tensor::from_vec(values(3 * 256, 5), (3, 256), &dev).unwrap()).unwrap();
        let y = qmatmul_train(x.as_tensor(), &q).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap().get(x.as_tensor()).cloned().unwrap();
        let want = Tensor::ones((3, 32), DType::F32, &dev).unwrap().matmul(&q.dequantize(&dev).unwrap()).unwrap();
        assert!(max_abs(&(&g - &want).unwrap()) < 1e-4 * max_abs(&want));
    }

    /// The dense op: the plain matmul's values and input gradient, and no gradient for the weight
    /// (the plain matmul gives it one).
    #[test]
    fn frozen_dense_matmul_matches_matmul_without_a_weight_gradient() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::from_vec(values(48 * 64, 11), (48, 64), &dev).unwrap()).unwrap();
        let x = Var::from_tensor(&Tensor::from_vec(values(2 * 5 * 64, 12), (2, 5, 64), &dev).unwrap()).unwrap();
        let r = Tensor::from_vec(values(2 * 5 * 48, 13), (2, 5, 48), &dev).unwrap();
        let y = frozen_matmul_wt(x.as_tensor(), w.as_tensor()).unwrap();
        let yd = matmul_wt(x.as_tensor(), w.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[2, 5, 48]);
        assert!(max_abs(&(&y - &yd).unwrap()) < 1e-5 * max_abs(&yd));
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gd = (&yd * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (gx, gxd) = (g.get(x.as_tensor()).expect("input gradient"), gd.get(x.as_tensor()).unwrap());
        assert!(max_abs(&(gx - gxd).unwrap()) < 1e-5 * max_abs(gxd));
        assert!(max_abs(gxd) > 0.1);
        assert!(gd.get(w.as_tensor()).is_some());
        assert!(g.get(w.as_tensor()).is_none(), "the frozen weight got a gradient");
    }

    /// A weight above the block budget (a vocabulary head) is dequantized a block of rows at a
    /// time in the dense forward and in the backward: both equal the whole-weight dense results.
    #[test]
    fn blocked_dequantization_matches_the_dense_weight() {
        let dev = Device::Cpu;
        let (out, inp) = (PARALLEL_PIECE_MAX_ELEMS / 512 + 128, 512);
        assert!(parallel_pieces(out, inp).len() >= 2);
        let w = Tensor::from_vec(values(out * inp, 6), (out, inp), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        let wd = q.dequantize(&dev).unwrap();
        assert_eq!(
            dequantize_rows(&q, out - 128, 128).unwrap().to_vec2::<f32>().unwrap(),
            wd.narrow(0, out - 128, 128).unwrap().to_vec2::<f32>().unwrap()
        );
        let x = Var::from_tensor(&Tensor::from_vec(values(20 * inp, 7), (1, 20, inp), &dev).unwrap()).unwrap();
        let r = Tensor::from_vec(values(20 * out, 8), (1, 20, out), &dev).unwrap();
        let y = qmatmul_train(x.as_tensor(), &q).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).cloned().unwrap();
        let yd = matmul_wt(x.as_tensor(), &wd).unwrap();
        let gd = (&yd * &r).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).cloned().unwrap();
        assert!(max_abs(&(&y - &yd).unwrap()) < 1e-5 * max_abs(&yd));
        assert!(max_abs(&(&g - &gd).unwrap()) < 1e-5 * max_abs(&gd));
        assert!(max_abs(&gd) > 0.1);
    }

    /// Why the op exists: candle's own quantized matmul records no backward at all.
    #[test]
    fn plain_qmatmul_cuts_the_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(values(32 * 64, 6), (32, 64), &dev).unwrap();
        let base = BaseWeight::quantized(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        assert!(matches!(base, BaseWeight::Quantized(..)));
        let x = Var::from_tensor(&Tensor::from_vec(values(4 * 64, 7), (1, 4, 64), &dev).unwrap()).unwrap();
        let BaseWeight::Quantized(_, mm) = &base else { unreachable!() };
        let eval = mm.forward(x.as_tensor()).unwrap().sum_all().unwrap();
        assert!(eval.backward().unwrap().get(x.as_tensor()).is_none());
        let train = base.forward_train(x.as_tensor()).unwrap().sum_all().unwrap();
        assert!(train.backward().unwrap().get(x.as_tensor()).is_some());
    }
}
