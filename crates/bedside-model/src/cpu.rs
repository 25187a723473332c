//! The CPU's share of the training kernels: candle's thread pool (parallel fills and maps), a
//! single-thread f32 GEMM, and frozen weights read a block of rows at a time (dense rows as they
//! are, quantized rows dequantized per block) so that a vocabulary-sized weight is never dense
//! whole. Results that fold pieces together merge them in a fixed order, so a training step
//! repeats bit for bit whatever thread ran what.

use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, DType, Layout, Tensor};

/// A new buffer of `n` values filled by `f(element_range, out)` over units of `unit` elements
/// (a row, or a block of an elementwise op), spread over candle's CPU threads.
pub(crate) fn par_fill(n: usize, unit: usize, f: impl Fn(Range<usize>, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let unit = unit.max(1);
    let ptr = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(unit), |units| {
        let lo = units.start * unit;
        let hi = (units.end * unit).min(n);
        // SAFETY: the units handed out are disjoint, so each element range is written by one
        // thread only, and `out` outlives the call.
        let dst = unsafe { std::slice::from_raw_parts_mut((ptr as *mut f32).add(lo), hi - lo) };
        f(lo..hi, dst);
    });
    out
}

/// Run `f` over `0..n_items` split in ranges on candle's CPU threads (see
/// `BarrierPool::execute_chunked`); returns the first error any call gave.
pub(crate) fn par_try(n_items: usize, f: impl Fn(Range<usize>) -> candle_core::Result<()> + Sync) -> candle_core::Result<()> {
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

/// `dst = (accumulate ? dst : 0) + lhs · rhs` for strided f32 matrices (`m × k` times `k × n`),
/// on the calling thread. Strides are (row, column) in elements.
///
/// # Safety
/// Every pointer must address its whole matrix under its strides, and `dst` must not overlap
/// the operands or be written by another thread during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// `(start, len)` row ranges of an `[n, k]` weight, each at most `budget` elements (one row at
/// least), covering all `n` rows in order.
pub(crate) fn row_blocks(n: usize, k: usize, budget: usize) -> Vec<(usize, usize)> {
    let per = (budget / k.max(1)).clamp(1, n.max(1));
    (0..n).step_by(per).map(|s| (s, per.min(n - s))).collect()
}

/// Rows `start..start + len` of a quantized `[n, k]` weight, dequantized to f32 on the CPU (each
/// row is a whole number of ggml blocks, so a row range is a byte range).
pub(crate) fn dequantize_rows(q: &QTensor, start: usize, len: usize) -> candle_core::Result<Tensor> {
    let cpu = candle_core::Device::Cpu;
    let (n, k) = q.shape().dims2()?;
    if start == 0 && len == n {
        return q.dequantize(&cpu);
    }
    let gd = q.dtype();
    let row_bytes = k / gd.block_size() * gd.type_size();
    let data = q.data()?;
    let bytes = data
        .get(start * row_bytes..(start + len) * row_bytes)
        .ok_or_else(|| candle_core::Error::Msg(format!("rows {start}..{} of a {n}-row quantized weight", start + len)))?;
    let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &cpu, gd)?;
    QTensor::new(storage, (len, k))?.dequantize(&cpu)
}

/// The most elements of one of [`parallel_pieces`]'s pieces: 4 MB as f32, so the pieces that
/// the threads hold dequantized at once stay a few MB whatever the weight, a vocabulary-sized
/// head included.
pub(crate) const PARALLEL_PIECE_MAX_ELEMS: usize = 1 << 20;

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
#[derive(Clone)]
pub(crate) enum WeightRows {
    /// A dense f32 weight: its own values, no copy.
    Dense(Tensor),
    /// A ggml-quantized weight: each block dequantized for the call that asks for it.
    Quantized(Arc<QTensor>),
}

impl WeightRows {
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
            WeightRows::Dense(t) => (t, start),
            WeightRows::Quantized(q) => {
                dequantized = dequantize_rows(q, start, len)?;
                (&dequantized, 0)
            }
        };
        let (ws, wl) = t.storage_and_layout();
        match (&*ws, wl.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, _))) => {
                let from = a + first * k;
                let rows = v
                    .get(from..from + len * k)
                    .ok_or_else(|| candle_core::Error::Msg(format!("rows {start}..{} outside the weight", start + len)))?;
                Ok(f(rows))
            }
            _ => candle_core::bail!("weight rows are not contiguous f32 on the CPU"),
        }
    }
}

/// `x · Wᵀ` for f32 `x: (rows, k)` (`xl` a 2-d layout) on the CPU and a frozen `W: [n, k]`
/// (dense f32, or quantized and dequantized piece by piece), as single-thread GEMMs over pieces of
/// `W`'s rows on candle's CPU threads, each writing its own output columns: a vocabulary-sized
/// weight is never dense whole. Returns the `(rows, n)` values, row-major.
pub(crate) fn gemm_by_pieces(w: &WeightRows, x: &CpuStorage, xl: &Layout) -> candle_core::Result<Vec<f32>> {
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
                    gemm_f32((rows, len, k), (y_ptr as *mut f32).add(start), (n, 1), false, xs.as_ptr(), (k, 1), wp.as_ptr(), (1, k));
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
pub(crate) fn input_grad_by_pieces(w: &WeightRows, g: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = w.dims()?;
    let rows = g.dim(0)?;
    if !(g.device().is_cpu() && g.dtype() == DType::F32) {
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
                    gemm_f32((rows, k, len), acc.as_mut_ptr(), (k, 1), j > 0, gv[start..].as_ptr(), (n, 1), wp.as_ptr(), (k, 1));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_cover_the_weight() {
        assert_eq!(row_blocks(10, 4, 12), vec![(0, 3), (3, 3), (6, 3), (9, 1)]);
        assert_eq!(row_blocks(10, 4, 1000), vec![(0, 10)]);
        // A row wider than the budget still makes progress, one row at a time.
        assert_eq!(row_blocks(2, 100, 10), vec![(0, 1), (1, 1)]);
    }
}
