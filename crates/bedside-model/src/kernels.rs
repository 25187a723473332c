//! bedside-kernels' quantized CPU matmuls on candle's tensors, run on candle's persistent CPU
//! pool (its workers spin briefly, then park, between calls; nothing is spawned per matmul).

use std::borrow::Cow;

use bedside_kernels as bk;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Tensor};

/// candle's barrier pool as the kernels' [`bk::Parallel`]: the calling thread and the pool's
/// workers take tasks from a shared counter.
pub(crate) struct Pool;

impl bk::Parallel for Pool {
    fn threads(&self) -> usize {
        candle_core::utils::barrier_pool().n_workers() + 1
    }
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        if n == 1 {
            return task(0);
        }
        candle_core::utils::barrier_pool().execute_chunked(n, |range| range.for_each(task));
    }
}

/// The kernels' name for a ggml type they multiply.
pub(crate) fn qtype(dt: GgmlDType) -> Option<bk::QType> {
    Some(match dt {
        GgmlDType::Q4_0 => bk::QType::Q4_0,
        GgmlDType::Q4_1 => bk::QType::Q4_1,
        GgmlDType::Q8_0 => bk::QType::Q8_0,
        GgmlDType::Q4K => bk::QType::Q4K,
        GgmlDType::Q5K => bk::QType::Q5K,
        GgmlDType::Q6K => bk::QType::Q6K,
        _ => return None,
    })
}

/// A CPU-held quantized `[rows, cols]` weight of a type the kernels multiply, as their view of
/// its bytes (borrowed, never copied); `None` for anything else.
pub(crate) fn qmatrix(q: &QTensor) -> Option<bk::QMatrix<'_>> {
    let ty = qtype(q.dtype())?;
    if !q.device().is_cpu() {
        return None;
    }
    let (rows, cols) = q.shape().dims2().ok()?;
    match q.data().ok()? {
        Cow::Borrowed(bytes) => bk::QMatrix::new(ty, bytes, rows, cols).ok(),
        Cow::Owned(_) => None,
    }
}

/// Whether [`quantized_matmul`] takes this input and weight: f32 on the CPU and a type the
/// kernels multiply.
pub(crate) fn applies(x: &Tensor, q: &QTensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && qtype(q.dtype()).is_some() && q.device().is_cpu()
}

/// `x @ Wᵀ` for f32 `x` of any rank on the CPU: the rows quantized to 8 bits once, then every
/// weight row's integer dot products (llama.cpp's scheme) on the pool.
pub(crate) fn quantized_matmul(x: &Tensor, q: &QTensor) -> candle_core::Result<Tensor> {
    let w = qmatrix(q).ok_or_else(|| {
        candle_core::Error::Msg(format!("quantized matmul: {:?} weights on {:?} are not supported", q.dtype(), q.device()))
    })?;
    let dims = x.dims();
    let k = dims.last().copied().unwrap_or(0);
    if k != w.cols() {
        candle_core::bail!("quantized matmul: input has {k} features, weight expects {}", w.cols());
    }
    let rows = x.elem_count() / k.max(1);
    let x = x.contiguous()?;
    let (s, l) = x.storage_and_layout();
    let xs = match (&*s, l.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => &v[a..b],
        _ => candle_core::bail!("quantized matmul: expected a contiguous f32 CPU input"),
    };
    let mut acts = bk::Activations::new(w.ty().act_layout());
    acts.quantize_on(&Pool, xs, rows, k);
    let mut out = vec![0f32; rows * w.rows()];
    let input = bk::Input {
        rows,
        cols: k,
        f32: None,
        blocks32: (acts.layout() == bk::ActLayout::Blocks32).then_some(&acts),
        blocks256: (acts.layout() == bk::ActLayout::Blocks256).then_some(&acts),
    };
    bk::matmul(
        bk::Backend::detected(),
        &Pool,
        input,
        &mut [bk::Job { weight: bk::Weight::Quantized(w), out: &mut out, accumulate: false }],
    )
    .map_err(candle_core::Error::Msg)?;
    drop(s);
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = w.rows();
    }
    Tensor::from_vec(out, out_dims, x.device())
}

/// bedside-kernels on the real default model's tensors: against the dequantized weight (what
/// candle's own dequantization gives, an implementation bedside did not write) and against
/// candle's quantized matmul.
#[cfg(test)]
mod tests {
    use crate::{load_gguf, BaseWeight, LoadOptions};
    use bedside_testutil::lcg_values as values;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// `x · Wᵀ` through the kernels (few rows, the decode path) against the dense product with
    /// candle's dequantization of the same weight, and against candle's quantized matmul.
    fn check(name: &str, q: &std::sync::Arc<QTensor>, rows: usize) -> (f32, f32, f32) {
        let dev = Device::Cpu;
        let (_, k) = q.shape().dims2().unwrap();
        let x = Tensor::from_vec(values(rows * k, 3), (rows, k), &dev).unwrap();
        let base = BaseWeight::quantized(QTensor::quantize(&q.dequantize(&dev).unwrap(), q.dtype()).unwrap()).unwrap();
        let _ = base;
        let w = BaseWeight::Quantized(q.clone(), QMatMul::from_arc(q.clone()).unwrap());
        let got = w.forward(&x, false).unwrap();
        let dense = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
        let candle = QMatMul::from_arc(q.clone()).unwrap().forward(&x).unwrap();
        let scale = max_abs(&dense);
        let vs_dense = max_abs(&(&got - &dense).unwrap()) / scale;
        let vs_candle = max_abs(&(&got - &candle).unwrap()) / scale;
        let candle_vs_dense = max_abs(&(&candle - &dense).unwrap()) / scale;
        eprintln!(
            "{name} {:?}: kernels vs dense {vs_dense:.2e}, vs candle {vs_candle:.2e}; candle vs dense {candle_vs_dense:.2e}",
            q.dtype()
        );
        (vs_dense, candle_vs_dense, vs_candle)
    }

    #[test]
    fn kernels_on_the_default_model_match_the_dequantized_weights() {
        let Some(path) = bedside_testutil::smollm2_gguf() else {
            return;
        };
        let (model, _) = load_gguf(&path, &LoadOptions::default()).unwrap();
        let mut seen = Vec::new();
        for (i, l) in [(0usize, "q"), (7, "down"), (29, "gate")] {
            let layer = &model.layers[i];
            let lin = match l {
                "q" => &layer.self_attn.q_proj,
                _ => match &layer.ffn {
                    crate::model::FeedForward::Dense { gate_proj, down_proj, .. } => {
                        if l == "down" {
                            down_proj
                        } else {
                            gate_proj
                        }
                    }
                    _ => unreachable!(),
                },
            };
            let BaseWeight::Quantized(q, _) = &lin.base else { panic!("{l} is not quantized") };
            seen.push(q.dtype());
            for rows in [1, 3, 7] {
                let (vs_dense, candle_vs_dense, _) = check(&format!("layer {i} {l} ({rows} rows)"), q, rows);
                // Rounding the activations to 8 bits costs about what it costs candle and llama.cpp.
                assert!(
                    vs_dense < 0.02 && vs_dense < 2.0 * candle_vs_dense + 1e-3,
                    "layer {i} {l}: {vs_dense} (candle: {candle_vs_dense})"
                );
            }
        }
        let BaseWeight::Quantized(head, _) = &model.lm_head.base else { panic!("head is not quantized") };
        assert_eq!(head.dtype(), GgmlDType::Q8_0);
        let (vs_dense, candle_vs_dense, _) = check("tied head", head, 2);
        assert!(vs_dense < 0.02 && vs_dense < 2.0 * candle_vs_dense + 1e-3);
        assert!(seen.contains(&GgmlDType::Q4_1));
    }

    /// Every type the kernels multiply, quantized by candle (an implementation bedside did not
    /// write): the kernels against the dense product with candle's dequantization, and against
    /// candle's quantized matmul (its vec_dot on 8-bit activations; scalar for Q4_1), on a few rows,
    /// weight rows that split unevenly over threads, and every K-quant super-block count up to 3.
    #[test]
    fn every_kernel_type_matches_candle_s_quantization() {
        let dev = Device::Cpu;
        for dt in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            for cols in [256, 512, 768] {
                let rows = 37;
                let w = Tensor::from_vec(values(rows * cols, cols as u64), (rows, cols), &dev).unwrap();
                let q = std::sync::Arc::new(QTensor::quantize(&w, dt).unwrap());
                for x_rows in [1, 2, 5] {
                    let (vs_dense, candle_vs_dense, vs_candle) = check(&format!("{dt:?} {rows}x{cols} ({x_rows} rows)"), &q, x_rows);
                    assert!(
                        vs_dense < 0.02 && vs_dense < 2.0 * candle_vs_dense + 1e-3,
                        "{dt:?} {cols}: {vs_dense} (candle: {candle_vs_dense})"
                    );
                    // The same 8-bit activations as candle's, so only the summation order differs
                    // (seen: ≤ 3.3e-7), except Q4_1's Q8_1 block sums, which candle rounds in f16
                    // arithmetic and ggml (and the kernels) as d·Σq rounded once (seen: ≤ 5.7e-4).
                    let tol = if dt == GgmlDType::Q4_1 { 2e-3 } else { 2e-6 };
                    assert!(vs_candle < tol, "{dt:?} {cols}: vs candle {vs_candle}");
                }
            }
        }
    }
}
