//! A frozen base projection that can carry LoRA branches.
//!
//! Every projection in the architecture is this type rather than candle-transformers' fixed
//! `Linear` fields, so adapters (for inference or training) attach to any of them by name.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Module, Shape, Tensor};

use crate::error::Result;

/// The frozen weight of a projection, `[out, in]` in HF layout.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// A plain tensor (f32/f16/bf16), from safetensors, a float GGUF or a dequantized GGUF.
    Dense(Tensor),
    /// Ggml-quantized blocks, multiplied without dequantizing.
    Quantized(Arc<QTensor>, QMatMul),
}

impl BaseWeight {
    pub fn quantized(q: QTensor) -> Result<Self> {
        let q = Arc::new(q);
        let mm = QMatMul::from_arc(q.clone())?;
        Ok(match mm {
            // Float GGUF tensors come back dequantized already.
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => BaseWeight::Dense(t),
            mm => BaseWeight::Quantized(q, mm),
        })
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        let d = match self {
            BaseWeight::Dense(t) => t.dims().to_vec(),
            BaseWeight::Quantized(q, _) => q.shape().dims().to_vec(),
        };
        (d[0], d[1])
    }

    /// Whether [`BaseWeight::rows`] can read this weight: a contiguous f32 tensor or a quantized
    /// one, on the CPU (what the fused training ops over pieces of rows need).
    pub(crate) fn readable_by_rows(&self) -> bool {
        match self {
            BaseWeight::Dense(w) => crate::fused::applies(w) && w.is_contiguous(),
            BaseWeight::Quantized(q, _) => q.device().is_cpu(),
        }
    }

    /// The weight read a block of rows at a time as f32 (on the CPU).
    pub(crate) fn rows(&self) -> WeightRows<'_> {
        match self {
            BaseWeight::Dense(w) => WeightRows::Dense(w),
            BaseWeight::Quantized(q, _) => WeightRows::Quantized(q),
        }
    }

    /// Name of the storage type, e.g. `F32` or `Q4_1`.
    pub fn type_name(&self) -> String {
        match self {
            BaseWeight::Dense(t) => format!("{:?}", t.dtype()).to_uppercase(),
            BaseWeight::Quantized(q, _) => format!("{:?}", q.dtype()).to_uppercase(),
        }
    }

    /// The weight as a dense tensor of `dtype` (dequantizing when needed).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            BaseWeight::Dense(t) => t.to_dtype(dtype)?,
            BaseWeight::Quantized(q, _) => q.dequantize(&q.device())?.to_dtype(dtype)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            BaseWeight::Dense(w) => matmul_wt(x, w)?,
            // Prompt processing on CPU: many rows go through the dequantize-and-GEMM path of
            // `qmatmul_train` (several times faster than candle's row-by-row quantized kernels);
            // decoding (a few rows) keeps the quantized kernels.
            BaseWeight::Quantized(q, _) if x.device().is_cpu() && dense_prefill_enabled() => qmatmul_train(x, q)?,
            BaseWeight::Quantized(_, mm) => mm.forward(x)?,
        })
    }

    /// As [`BaseWeight::forward`], but a quantized weight records a backward that gives the
    /// input its gradient (candle's `QMatMul` records none, which silently cuts every path through
    /// a quantized projection). The weight itself gets no gradient: it is frozen.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            BaseWeight::Dense(w) => frozen_matmul_wt(x, w)?,
            BaseWeight::Quantized(q, _) => qmatmul_train(x, q)?,
        })
    }
}

thread_local! {
    static DENSE_PREFILL: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether inference on CPU, on this thread, multiplies calls of at least [`DENSE_ROWS`] rows by
/// a quantized weight through a per-call dequantized f32 GEMM (default: yes). Off, every quantized
/// matmul uses ggml's kernels with 8-bit activations, as llama.cpp computes; tests comparing with
/// those kernels turn it off (per thread, so parallel tests do not see it).
pub fn set_dense_prefill(on: bool) {
    DENSE_PREFILL.with(|c| c.set(on));
}

fn dense_prefill_enabled() -> bool {
    DENSE_PREFILL.with(|c| c.get())
}

/// Row count from which a CPU quantized matmul dequantizes the weight and runs an f32 GEMM.
pub const DENSE_ROWS: usize = 16;

/// `(start, len)` row ranges of an `[n, k]` weight, each at most `budget` elements (one row at
/// least), covering all `n` rows in order.
pub(crate) fn row_blocks(n: usize, k: usize, budget: usize) -> Vec<(usize, usize)> {
    let per = (budget / k.max(1)).clamp(1, n.max(1));
    (0..n).step_by(per).map(|s| (s, per.min(n - s))).collect()
}

/// Rows `start..start + len` of a quantized `[n, k]` weight, dequantized to f32 on the CPU (each
/// row is a whole number of ggml blocks, so a row range is a byte range).
fn dequantize_rows(q: &QTensor, start: usize, len: usize) -> candle_core::Result<Tensor> {
    let cpu = candle_core::Device::Cpu;
    let (n, k) = q.shape().dims2()?;
    if start == 0 && len == n {
        return q.dequantize(&cpu);
    }
    let gd = q.dtype();
    let row_bytes = k / gd.block_size() * gd.type_size();
    let data = q.data()?;
    let bytes = data.get(start * row_bytes..(start + len) * row_bytes).ok_or_else(|| {
        candle_core::Error::Msg(format!("rows {start}..{} of a {n}-row quantized weight", start + len))
    })?;
    let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &cpu, gd)?;
    QTensor::new(storage, (len, k))?.dequantize(&cpu)
}

/// `x @ Wᵀ` with a ggml-quantized `W: [out, in]`, differentiable with respect to `x`.
///
/// The forward is candle's quantized matmul (the exact kernels inference uses). The backward
/// computes `dL/dx = dL/dy · W`, dequantizing `W` for that one call only, so at most one layer's
/// dense weight exists at a time and the frozen base stays quantized in memory.
pub fn qmatmul_train(x: &Tensor, w: &Arc<QTensor>) -> candle_core::Result<Tensor> {
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
            None => gemm_by_pieces(WeightRows::Quantized(&self.0), storage, &Layout::contiguous_with_offset((rows, k), o))?,
            Some(t) => {
                let (ts, tl) = t.storage_and_layout();
                let candle_core::Storage::Cpu(tc) = &*ts else { candle_core::bail!("expected a CPU tensor") };
                gemm_by_pieces(WeightRows::Quantized(&self.0), tc, tl)?
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

    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.0.as_ref().cuda_fwd(storage, layout)
    }

    fn metal_fwd(
        &self,
        storage: &candle_core::MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        self.0.as_ref().metal_fwd(storage, layout)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dims = grad_res.dims();
        let out_dim = dims[dims.len() - 1];
        let rows = grad_res.elem_count() / out_dim.max(1);
        let g = input_grad_by_pieces(WeightRows::Quantized(&self.0), &grad_res.contiguous()?.reshape((rows, out_dim))?)?;
        Ok(Some(g.reshape(arg.dims())?.to_dtype(arg.dtype())?))
    }
}

/// The most elements of one of [`parallel_pieces`]'s pieces: 4 MB as f32, so the pieces that
/// the threads hold dequantized at once stay a few MB whatever the weight (SmolLM2's 49k × 576
/// tied head is 113 MB dense; with 16 MB pieces it added 21 MiB to a training step's peak).
const PARALLEL_PIECE_MAX_ELEMS: usize = 1 << 20;

/// Row ranges of a quantized `[n, k]` weight for the CPU's threads to dequantize and multiply
/// in parallel: at least a few per thread (candle's dequantization is one thread's loop, and at
/// training sizes it costs as much as the GEMM), none above [`PARALLEL_PIECE_MAX_ELEMS`].
pub(crate) fn parallel_pieces(n: usize, k: usize) -> Vec<(usize, usize)> {
    row_blocks(n, k, parallel_piece_elems(n, k))
}

/// The element budget of one of [`parallel_pieces`]'s pieces.
pub(crate) fn parallel_piece_elems(n: usize, k: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().max(1);
    (n * k / (4 * threads)).clamp(1 << 16, PARALLEL_PIECE_MAX_ELEMS)
}

/// A frozen weight `[n, k]` read a block of rows at a time as f32 on the CPU.
#[derive(Clone, Copy)]
pub(crate) enum WeightRows<'a> {
    /// A dense f32 weight: its own values, no copy.
    Dense(&'a Tensor),
    /// A ggml-quantized weight: each block dequantized for the call that asks for it.
    Quantized(&'a QTensor),
}

impl WeightRows<'_> {
    pub(crate) fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            WeightRows::Dense(t) => t.dims2(),
            WeightRows::Quantized(q) => q.shape().dims2(),
        }
    }

    /// `f` over rows `start..start + len` as a row-major f32 slice.
    pub(crate) fn with<R>(&self, start: usize, len: usize, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
        let (_, k) = self.dims()?;
        let dequantized;
        let (t, first) = match self {
            WeightRows::Dense(t) => (*t, start),
            WeightRows::Quantized(q) => {
                dequantized = dequantize_rows(q, start, len)?;
                (&dequantized, 0)
            }
        };
        let (ws, wl) = t.storage_and_layout();
        match (&*ws, wl.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, _))) => {
                let from = a + first * k;
                let rows = v.get(from..from + len * k).ok_or_else(|| candle_core::Error::Msg(format!("rows {start}..{} outside the weight", start + len)))?;
                Ok(f(rows))
            }
            _ => candle_core::bail!("weight rows are not contiguous f32 on the CPU"),
        }
    }
}

/// Run `f` over `0..n_items` split in ranges on candle's CPU threads (see
/// `BarrierPool::execute_chunked`); returns the first error any call gave.
pub(crate) fn par_try(n_items: usize, f: impl Fn(std::ops::Range<usize>) -> candle_core::Result<()> + Sync) -> candle_core::Result<()> {
    let failed = std::sync::Mutex::new(None);
    candle_core::utils::barrier_pool().execute_chunked(n_items, |range| {
        if let Err(e) = f(range) {
            failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `f(i)` for every `i` in `0..n` on candle's CPU threads, the results in index order whatever
/// thread ran what; the first error if any.
pub(crate) fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> candle_core::Result<T> + Sync) -> candle_core::Result<Vec<T>> {
    let out = std::sync::Mutex::new(Vec::with_capacity(n));
    par_try(n, |range| {
        for i in range {
            let v = f(i)?;
            out.lock().unwrap_or_else(|p| p.into_inner()).push((i, v));
        }
        Ok(())
    })?;
    let mut out = out.into_inner().unwrap_or_else(|p| p.into_inner());
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// `pieces` split into a fixed number of consecutive groups (a few per CPU thread), for work
/// that folds a group's pieces into one buffer: results merged in group order do not depend on
/// which thread ran what, so a step repeats bit for bit.
pub(crate) fn piece_groups(pieces: &[(usize, usize)]) -> Vec<&[(usize, usize)]> {
    let groups = pieces.len().min(2 * candle_core::utils::get_num_threads().max(1)).max(1);
    (0..groups).map(|g| &pieces[g * pieces.len() / groups..(g + 1) * pieces.len() / groups]).collect()
}

/// `x · Wᵀ` for f32 `x: (rows, k)` (`xl` a 2-d layout) on the CPU and a frozen `W: [n, k]`
/// (dense f32, or quantized and dequantized piece by piece), as single-thread GEMMs over pieces of
/// `W`'s rows on candle's CPU threads, each writing its own output columns: a vocabulary-sized
/// weight is never dense whole. Returns the `(rows, n)` values, row-major.
fn gemm_by_pieces(w: WeightRows, x: &CpuStorage, xl: &Layout) -> candle_core::Result<Vec<f32>> {
    let (n, k) = w.dims()?;
    let (rows, xk) = xl.shape().dims2()?;
    if xk != k {
        candle_core::bail!("frozen matmul: input has {xk} features, weight expects {k}");
    }
    let xs = match (x, xl.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
        _ => candle_core::bail!("frozen matmul: expected a contiguous f32 input"),
    };
    let mut y = vec![0f32; rows * n];
    let y_ptr = y.as_mut_ptr() as usize;
    let pieces = parallel_pieces(n, k);
    par_try(pieces.len(), |range| {
        for &(start, len) in &pieces[range] {
            w.with(start, len, |wp| {
                // SAFETY: y[:, start..start + len] (row stride n) is this piece's alone; x is
                // rows × k and wp is len × k, both contiguous.
                unsafe {
                    crate::fused::gemm_f32((rows, len, k), (y_ptr as *mut f32).add(start), (n, 1), false, xs.as_ptr(), (k, 1), wp.as_ptr(), (1, k));
                }
            })?;
        }
        Ok(())
    })?;
    Ok(y)
}

/// `dL/dx = dL/dy · W` for a frozen `W: [n, k]` (dense, or quantized and dequantized for this
/// call only) and `dy: (rows, n)`. On the CPU in f32 each group of row pieces folds
/// `Σ dy[:, piece] · W[piece]` into its own buffer, in parallel, and the buffers are summed in
/// group order; a vocabulary-sized head adds a few pieces, not a dense copy of itself, to the
/// step's peak memory.
fn input_grad_by_pieces(w: WeightRows, g: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = w.dims()?;
    let rows = g.dim(0)?;
    if !crate::fused::applies(g) {
        return match w {
            WeightRows::Dense(w) => g.matmul(&w.to_dtype(g.dtype())?),
            WeightRows::Quantized(q) => g.matmul(&q.dequantize(g.device())?.to_dtype(g.dtype())?),
        };
    }
    let g = g.contiguous()?;
    let (gs, gl) = g.storage_and_layout();
    let gv = match (&*gs, gl.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => &v[a..b],
        _ => candle_core::bail!("frozen matmul backward: expected a contiguous f32 gradient"),
    };
    let pieces = parallel_pieces(n, k);
    let groups = piece_groups(&pieces);
    let parts = par_map(groups.len(), |gi| {
        let mut acc = vec![0f32; rows * k];
        for (j, &(start, len)) in groups[gi].iter().enumerate() {
            w.with(start, len, |wp| {
                // SAFETY: acc is rows × k and ours; dy[:, start..start + len] has row stride n;
                // wp is len × k, contiguous.
                unsafe {
                    crate::fused::gemm_f32((rows, k, len), acc.as_mut_ptr(), (k, 1), j > 0, gv[start..].as_ptr(), (n, 1), wp.as_ptr(), (k, 1));
                }
            })?;
        }
        Ok(acc)
    })?;
    let mut parts = parts.into_iter();
    let mut dx = parts.next().ok_or_else(|| candle_core::Error::Msg("a weight with no rows".into()))?;
    for p in parts {
        dx.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    Tensor::from_vec(dx, (rows, k), g.device())
}

/// `x @ wᵀ` for a frozen dense `w: [out, in]`, differentiable with respect to `x` only.
///
/// candle's matmul backward always computes the gradient of both operands, so a plain matmul
/// with a frozen weight spends a third of its backward (and a weight-sized buffer per layer, kept
/// to the end of the backward) on a gradient nobody uses. This op's backward returns only
/// `dL/dx = dL/dy · W`.
pub fn frozen_matmul_wt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
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

    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.fwd(storage, layout, |s| match s {
            candle_core::Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn metal_fwd(
        &self,
        storage: &candle_core::MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        self.fwd(storage, layout, |s| match s {
            candle_core::Storage::Metal(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.0)?))
    }
}

/// `x @ wᵀ` for `x` of any rank, `w` of shape `[out, in]`.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?;
    let y = if few_rows_on_wide_kernels(x, w, rows) {
        // (W · xᵀ)ᵀ: the weight's many rows fill the kernel, the few inputs become columns.
        w.matmul(&x2.t()?)?.t()?.contiguous()?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    y.reshape(out_dims)
}

/// Whether `x @ wᵀ` with `rows` input rows is faster computed as `(w @ xᵀ)ᵀ` on this CPU.
/// gemm's AVX-512 f32 kernel computes 64 output rows at a time, so with fewer input rows
/// (batched decoding: one row per sequence) most of each kernel call is wasted; measured on
/// SmolLM2 (2 cores, Zen 4, dense f32), decoding 8 rows ran at 51 tok/s this way round and 100
/// transposed, 32 rows 141 vs 198. With AVX2 alone (narrower kernels) the transposition gained
/// too little to keep.
fn few_rows_on_wide_kernels(x: &Tensor, w: &Tensor, rows: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // std caches the feature detection: this is one atomic load.
        rows < 64
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && w.dtype() == DType::F32
            && w.dim(0).is_ok_and(|n| n >= 256)
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, rows);
        false
    }
}

thread_local! {
    /// SplitMix64 state for LoRA dropout masks. candle's CPU `dropout` draws from an unseedable
    /// thread RNG, so training runs could not be repeated or resumed exactly; this state is
    /// seeded by the trainer and saved in its checkpoints.
    static DROPOUT_RNG: std::cell::Cell<u64> = const { std::cell::Cell::new(0x853c_49e6_748f_ea9b) };
}

/// The dropout RNG state of this thread (to checkpoint a training run).
pub fn dropout_rng_state() -> u64 {
    DROPOUT_RNG.with(|c| c.get())
}

/// Set this thread's dropout RNG state (seed a run, or restore it from a checkpoint).
pub fn set_dropout_rng_state(state: u64) {
    DROPOUT_RNG.with(|c| c.set(state));
}

/// One LoRA dropout mask: where [`DROPOUT_RNG`] stood when it was drawn, and the drop
/// probability. The mask's values follow from these, so the fused LoRA op regenerates it in the
/// backward instead of holding a mask the size of its input.
#[derive(Debug, Clone, Copy)]
struct DropoutDraw {
    state: u64,
    p: f32,
}

const SPLITMIX_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

impl DropoutDraw {
    /// Draw a mask of `n` values: record the state and advance it past them.
    fn take(n: usize, p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(candle_core::Error::Msg(format!("dropout probability must be in [0, 1), got {p}")).into());
        }
        let state = DROPOUT_RNG.with(|c| {
            let s = c.get();
            c.set(s.wrapping_add((n as u64).wrapping_mul(SPLITMIX_STEP)));
            s
        });
        Ok(Self { state, p })
    }

    /// The mask of branch `l` over `n` input values while training, if it has dropout.
    fn for_branch(l: &LoraBranch, n: usize) -> Result<Option<Self>> {
        Ok(if l.dropout > 0.0 { Some(Self::take(n, l.dropout)?) } else { None })
    }

    /// The mask's `n` values: `1 / (1 - p)` where kept, 0 where dropped (inverted dropout).
    fn values(&self, n: usize) -> Vec<f32> {
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
    fn tensor(&self, shape: &Shape) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.values(shape.elem_count()), shape, &candle_core::Device::Cpu)
    }
}

/// Inverted dropout with a mask drawn from [`DROPOUT_RNG`] on the CPU (same masks on any device).
pub(crate) fn seeded_dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    let mask = DropoutDraw::take(x.elem_count(), p)?.tensor(x.shape())?.to_device(x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// `x·Wᵀ + s·(x·Aᵀ)·Bᵀ` for a frozen `W` (f32, or ggml-quantized and dequantized a block at a
/// time per call) and one LoRA branch on the CPU, as one op whose backward gives `x`, `A` and
/// `B` their gradients (never `W`'s). Composed, the branch is four nodes (two matmuls, the
/// scaling, the sum) whose backward writes three output-sized buffers and zero-fills as many
/// more for candle's gradient sums; here the forward adds the branch into the base product in
/// place and the backward writes only `dx` at full size. LoRA dropout on the branch input is
/// part of the op: the same mask [`seeded_dropout`] would draw, regenerated in the backward
/// (composed, the mask and the masked input are two more input-sized tensors per projection).
///
/// With `norm`, the op's input is `x` before the RMS norm that precedes the projection: the op
/// normalises it itself and again in the backward, so the normalised activations (which the
/// three attention or two MLP input projections share) are not kept from forward to backward.
fn lora_train(x: &Tensor, w: &BaseWeight, l: &LoraBranch, norm: Option<(&Tensor, f64)>) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.contiguous()?.reshape((rows, in_dim))?;
    let norm = norm.map(|(w, eps)| crate::fused::RmsNorm::new(w, eps)).transpose()?;
    let op = FusedLora { w: w.clone(), scale: l.scale, dropout: DropoutDraw::for_branch(l, rows * in_dim)?, norm };
    let y = x2.apply_op3(&l.a.contiguous()?, &l.b.contiguous()?, op)?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = w.dims().0;
    Ok(y.reshape(out_dims)?)
}

/// `silu(g) ⊙ u` through the projection and its LoRA branch, as one op: the gated activations
/// (the MLP's widest tensor) are formed inside and again in the backward instead of being kept.
/// `A` and `B` travel packed in one tensor, since an op takes at most three inputs.
fn lora_train_gated(g: &Tensor, u: &Tensor, w: &BaseWeight, l: &LoraBranch) -> Result<Tensor> {
    if u.dims() != g.dims() {
        return Err(candle_core::Error::Msg(format!("gated projection: gate {:?} and up {:?} differ", g.dims(), u.dims())).into());
    }
    lora_train_packed(g, u, w, l, PackedInput::Gated)
}

/// `residual + x·Wᵀ + s·(x·Aᵀ)·Bᵀ` as one op, so the projection's own output (which the sum
/// would keep as an input) is never a tensor; `A` and `B` packed as in [`lora_train_gated`].
fn lora_train_residual(x: &Tensor, residual: &Tensor, w: &BaseWeight, l: &LoraBranch) -> Result<Tensor> {
    let dims = x.dims();
    let out_dims: Vec<usize> = dims[..dims.len() - 1].iter().copied().chain([w.dims().0]).collect();
    if residual.dims() != out_dims.as_slice() {
        return Err(candle_core::Error::Msg(format!("residual {:?} does not match the projection's output {out_dims:?}", residual.dims())).into());
    }
    lora_train_packed(x, residual, w, l, PackedInput::Residual)
}

/// A [`FusedPackedLora`] op over `x` (`(…, in)`) and `z` (the up projection's output or the
/// residual), returning `(…, out)`.
fn lora_train_packed(x: &Tensor, z: &Tensor, w: &BaseWeight, l: &LoraBranch, input: PackedInput) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let z_dim = z.dims()[z.rank() - 1];
    let (x2, z2) = (x.contiguous()?.reshape((rows, in_dim))?, z.contiguous()?.reshape((rows, z_dim))?);
    let ab = Tensor::cat(&[&l.a.flatten_all()?, &l.b.flatten_all()?], 0)?;
    let core = FusedLora { w: w.clone(), scale: l.scale, dropout: DropoutDraw::for_branch(l, rows * in_dim)?, norm: None };
    let y = x2.apply_op3(&z2, &ab, FusedPackedLora { core, r: l.rank(), input })?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = w.dims().0;
    Ok(y.reshape(out_dims)?)
}

struct FusedLora {
    /// The frozen base weight `[out, in]`.
    w: BaseWeight,
    scale: f64,
    /// The dropout mask on the branch input `(rows, in)`, if any.
    dropout: Option<DropoutDraw>,
    /// The RMS norm applied to the op's input first, if any.
    norm: Option<crate::fused::RmsNorm>,
}

impl FusedLora {
    /// `x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ` for `x` `(rows, k)`.
    #[allow(clippy::too_many_arguments)]
    fn forward_values(&self, x: &CpuStorage, xl: &Layout, a: &CpuStorage, al: &Layout, b: &CpuStorage, bl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (rows, k) = xl.shape().dims2()?;
        let (n, wk) = self.w.dims();
        let (r, ak) = al.shape().dims2()?;
        let (bn, br) = bl.shape().dims2()?;
        if wk != k || ak != k || bn != n || br != r {
            candle_core::bail!("fused-lora: x {:?}, W {:?}, A {:?}, B {:?} do not chain", xl.dims(), self.w.dims(), al.dims(), bl.dims());
        }
        let y = CpuStorage::F32(gemm_by_pieces(self.w.rows(), x, xl)?);
        let h = match &self.dropout {
            None => x.matmul(a, (1, rows, r, k), xl, &al.transpose(0, 1)?)?,
            Some(d) => {
                let xm: Vec<f32> = crate::fused::f32_data(x, xl, "fused-lora")?.iter().zip(d.values(rows * k)).map(|(x, m)| x * m).collect();
                CpuStorage::F32(xm).matmul(a, (1, rows, r, k), &Layout::contiguous((rows, k)), &al.transpose(0, 1)?)?
            }
        };
        let hb = h.matmul(b, (1, rows, n, r), &Layout::contiguous((rows, r)), &bl.transpose(0, 1)?)?;
        let (CpuStorage::F32(mut y), CpuStorage::F32(hb)) = (y, hb) else { candle_core::bail!("fused-lora: expected f32") };
        let s = self.scale as f32;
        y.iter_mut().zip(&hb).for_each(|(y, d)| *y += s * d);
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }

    /// Gradients `(dx, dA, dB)` of the product above for `x` `(rows, k)` from `dy` `(rows, n)`.
    fn backward(&self, x: Tensor, a: &Tensor, b: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        // Detached: the backward builds no graph of its own.
        let (x, a, b, dy) = (x.detach(), a.detach(), b.detach(), dy.detach().contiguous()?);
        let mask = self.dropout.map(|d| d.tensor(x.shape())).transpose()?;
        // The branch's input: x, or x with the forward's dropout mask.
        let xb = match &mask {
            Some(m) => (&x * m)?,
            None => x,
        };
        let dyb = (dy.matmul(&b)? * self.scale)?; // (rows, r), tiny
        let h = xb.matmul(&a.t()?)?; // (rows, r), tiny
        let base = input_grad_by_pieces(self.w.rows(), &dy)?;
        let branch = dyb.matmul(&a)?;
        let branch = match &mask {
            Some(m) => (branch * m)?,
            None => branch,
        };
        let dx = (base + branch)?;
        let da = dyb.t()?.matmul(&xb)?;
        let db = (dy.t()?.matmul(&h)? * self.scale)?;
        Ok((dx, da, db))
    }
}

impl CustomOp3 for FusedLora {
    fn name(&self) -> &'static str {
        "fused-lora"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match &self.norm {
            None => self.forward_values(x, xl, a, al, b, bl),
            Some(norm) => {
                let h = CpuStorage::F32(norm.normalise(crate::fused::f32_data(x, xl, "fused-lora")?)?);
                self.forward_values(&h, &Layout::contiguous(xl.shape()), a, al, b, bl)
            }
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, da, db) = match &self.norm {
            None => self.backward(x.clone(), a, b, dy)?,
            Some(norm) => {
                let (dh, da, db) = self.backward(norm.forward_no_bwd(&x.detach())?, a, b, dy)?;
                (norm.backward(&x.detach(), &dh)?, da, db)
            }
        };
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// What a [`FusedPackedLora`] op's first two inputs are.
#[derive(Clone, Copy)]
enum PackedInput {
    /// `g` and `u`: the projection multiplies `silu(g) ⊙ u`.
    Gated,
    /// `x` and a residual: the projection multiplies `x` and adds the residual to its output.
    Residual,
}

/// [`FusedLora`] with two inputs besides the LoRA factors, `A` and `B` packed in the third (an
/// op takes at most three inputs).
struct FusedPackedLora {
    core: FusedLora,
    /// LoRA rank: `A` is the first `r · in` packed values, `B` the remaining `out · r`.
    r: usize,
    input: PackedInput,
}

impl FusedPackedLora {
    fn factor_layouts(&self, k: usize, abl: &Layout) -> candle_core::Result<(Layout, Layout)> {
        let (r, n) = (self.r, self.core.w.dims().0);
        let o = abl.contiguous_offsets().map(|(o, _)| o).ok_or_else(|| candle_core::Error::Msg("fused-lora: packed factors not contiguous".into()))?;
        if abl.shape().elem_count() != r * (k + n) {
            candle_core::bail!("fused-lora: {} packed factor values for rank {r}, in {k}, out {n}", abl.shape().elem_count());
        }
        Ok((Layout::contiguous_with_offset((r, k), o), Layout::contiguous_with_offset((n, r), o + r * k)))
    }
}

impl CustomOp3 for FusedPackedLora {
    fn name(&self) -> &'static str {
        "fused-packed-lora"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        z: &CpuStorage,
        zl: &Layout,
        ab: &CpuStorage,
        abl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (al, bl) = self.factor_layouts(xl.shape().dims2()?.1, abl)?;
        match self.input {
            PackedInput::Gated => {
                let p = CpuStorage::F32(crate::fused::swiglu_values(crate::fused::f32_data(x, xl, "fused-lora")?, crate::fused::f32_data(z, zl, "fused-lora")?)?);
                self.core.forward_values(&p, &Layout::contiguous(xl.shape()), ab, &al, ab, &bl)
            }
            PackedInput::Residual => {
                let (y, shape) = self.core.forward_values(x, xl, ab, &al, ab, &bl)?;
                let (CpuStorage::F32(mut y), res) = (y, crate::fused::f32_data(z, zl, "fused-lora")?) else { candle_core::bail!("fused-lora: expected f32") };
                if res.len() != y.len() {
                    candle_core::bail!("fused-lora: residual of {} values for an output of {}", res.len(), y.len());
                }
                // Added last, as `y + residual` composed would: the same values bit for bit.
                y.iter_mut().zip(res).for_each(|(y, r)| *y += r);
                Ok((CpuStorage::F32(y), shape))
            }
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        z: &Tensor,
        ab: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, z, ab) = (x.detach(), z.detach(), ab.detach());
        let (rows, k) = x.dims2()?;
        let (r, n) = (self.r, self.core.w.dims().0);
        let a = ab.narrow(0, 0, r * k)?.reshape((r, k))?;
        let b = ab.narrow(0, r * k, n * r)?.reshape((n, r))?;
        let (dx, dz, da, db) = match self.input {
            PackedInput::Gated => {
                let p = crate::fused::swiglu_values(&x.flatten_all()?.to_vec1::<f32>()?, &z.flatten_all()?.to_vec1::<f32>()?)?;
                let (dp, da, db) = self.core.backward(Tensor::from_vec(p, (rows, k), x.device())?, &a, &b, dy)?;
                let (dg, du) = crate::fused::swiglu_backward(&x, &z, &dp)?;
                (dg, du, da, db)
            }
            PackedInput::Residual => {
                let (dx, da, db) = self.core.backward(x, &a, &b, dy)?;
                (dx, dy.clone(), da, db)
            }
        };
        let dab = Tensor::cat(&[&da.flatten_all()?, &db.flatten_all()?], 0)?;
        Ok((Some(dx), Some(dz), Some(dab)))
    }
}

/// One low-rank update `scale · B(A(x))`, with `a: [r, in]` and `b: [out, r]` as PEFT stores them.
#[derive(Debug, Clone)]
pub struct LoraBranch {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// Dropout on the branch input, applied only while training.
    pub dropout: f32,
}

impl LoraBranch {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let x = if training && self.dropout > 0.0 { seeded_dropout(x, self.dropout)? } else { x.clone() };
        let x = x.to_dtype(self.a.dtype())?;
        // Scaling B (`out × r`) rather than the output (`rows × out`) saves a pass over the
        // output and, in training, another in the backward.
        let b = if self.scale == 1.0 { self.b.clone() } else { (&self.b * self.scale)? };
        Ok(matmul_wt(&matmul_wt(&x, &self.a)?, &b)?)
    }
}

/// A projection: frozen base plus any number of LoRA branches (PEFT forward:
/// `base(x) + Σ scale·B(A(dropout(x)))`; the base output itself is never scaled).
#[derive(Debug, Clone)]
pub struct Linear {
    pub base: BaseWeight,
    pub lora: Vec<LoraBranch>,
}

impl Linear {
    pub fn new(base: BaseWeight) -> Self {
        Self { base, lora: Vec::new() }
    }
    pub fn in_dim(&self) -> usize {
        self.base.dims().1
    }
    pub fn out_dim(&self) -> usize {
        self.base.dims().0
    }

    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        if training && self.fuses_in_training(x) {
            return lora_train(x, &self.base, &self.lora[0], None);
        }
        let mut y = if training { self.base.forward_train(x)? } else { self.base.forward(x)? };
        for l in &self.lora {
            let d = l.forward(x, training)?.to_dtype(y.dtype())?;
            y = (y + d)?;
        }
        Ok(y)
    }

    /// Whether a training forward on `x` takes the fused op ([`lora_train`]): one LoRA branch over
    /// a base it reads by rows, f32 tensors on the CPU.
    pub fn fuses_in_training(&self, x: &Tensor) -> bool {
        match self.lora.as_slice() {
            [l] => self.base.readable_by_rows() && [x, &l.a, &l.b].iter().all(|t| crate::fused::applies(t)),
            _ => false,
        }
    }

    /// Training forward of `rms_norm(x, norm_weight, eps)`, with the norm inside the fused op when
    /// it applies (so the normalised input is not kept for the backward), else composed.
    pub fn forward_train_normed(&self, x: &Tensor, norm_weight: &Tensor, eps: f64) -> Result<Tensor> {
        if self.fuses_in_training(x) && crate::fused::applies(norm_weight) {
            return lora_train(x, &self.base, &self.lora[0], Some((norm_weight, eps)));
        }
        self.forward(&crate::fused::rms_norm(x, norm_weight, eps)?, true)
    }

    /// Training forward of `silu(g) ⊙ u`, formed inside the fused op when it applies (so the
    /// gated activations are not kept for the backward), else composed.
    pub fn forward_train_gated(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        if self.fuses_in_training(g) && crate::fused::applies(u) {
            return lora_train_gated(g, u, &self.base, &self.lora[0]);
        }
        self.forward(&crate::fused::swiglu(g, u)?, true)
    }

    /// Training forward of `residual + self(x)`, the residual added inside the fused op when it
    /// applies (so the projection's own output is not kept for the backward), else composed.
    pub fn forward_train_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if self.fuses_in_training(x) && crate::fused::applies(residual) {
            return lora_train_residual(x, residual, &self.base, &self.lora[0]);
        }
        Ok((residual + self.forward(x, true)?)?)
    }

    /// Fold every LoRA branch into a dense base weight (`W + scale·B·A`) of `dtype`.
    pub fn merged_weight(&self, dtype: DType) -> Result<Tensor> {
        let mut w = self.base.to_dense(DType::F32)?;
        for l in &self.lora {
            let delta = (l.b.to_dtype(DType::F32)?.matmul(&l.a.to_dtype(DType::F32)?)? * l.scale)?;
            w = (w + delta)?;
        }
        Ok(w.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Var};

    /// Deterministic values in [-1, 1) (a fixed LCG, so failures reproduce).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

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

    #[test]
    fn row_blocks_cover_the_weight() {
        assert_eq!(row_blocks(10, 4, 12), vec![(0, 3), (3, 3), (6, 3), (9, 1)]);
        assert_eq!(row_blocks(10, 4, 1000), vec![(0, 10)]);
        // A row wider than the budget still makes progress, one row at a time.
        assert_eq!(row_blocks(2, 100, 10), vec![(0, 1), (1, 1)]);
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
        assert_eq!(dequantize_rows(&q, out - 128, 128).unwrap().to_vec2::<f32>().unwrap(), wd.narrow(0, out - 128, 128).unwrap().to_vec2::<f32>().unwrap());
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

    /// LoRA dropout masks come from a seedable state: same state, same mask; the kept fraction
    /// is about 1 - p and kept values are scaled by 1 / (1 - p) (PyTorch's inverted dropout).
    #[test]
    fn seeded_dropout_repeats() {
        let x = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
        set_dropout_rng_state(123);
        let a = seeded_dropout(&x, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let after = dropout_rng_state();
        set_dropout_rng_state(123);
        let b = seeded_dropout(&x, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_eq!(after, dropout_rng_state());
        let c = seeded_dropout(&x, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(a, c);
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.75).abs() < 0.03, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
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
