//! Activation rows quantized to 8 bits once per matmul and shared by every weight row.
//!
//! The rounding is llama.cpp's on x86 (`quantize_row_q8_0/q8_1` and `quantize_row_q8_K`), so the
//! kernels compute what llama.cpp computes: 32-value blocks scaled by `max|x| / 127` (the scale
//! kept as f16, as ggml stores it), values rounded half to even; 256-value super-blocks scaled by
//! `-max / 127` where `max` is the value of largest magnitude, with the sums of each 16 values.

use half::f16;

use crate::formats::ActLayout;

/// `rows` activation rows of `cols` values, quantized for one [`ActLayout`]. Buffers are kept
/// between calls ([`Activations::quantize`] reuses them), so a decode step allocates nothing.
#[derive(Debug, Clone)]
pub struct Activations {
    layout: ActLayout,
    rows: usize,
    cols: usize,
    /// `rows × cols` quants, row-major.
    pub(crate) qs: Vec<i8>,
    /// Blocks32: per block `[d, s]` with `s = f16(d·Σq)` (ggml's Q8_1, multiplied with Q4_1's min).
    pub(crate) ds_min: Vec<f32>,
    /// Blocks32: per block `[d, -8·d·Σq]` (Q4_0's offset of 8 folded out of the integer sum).
    pub(crate) ds_off8: Vec<f32>,
    /// Blocks32: per block `[d, -128·d·Σq]` (Q8_0 weights shifted to unsigned for `vpdpbusd`).
    pub(crate) ds_off128: Vec<f32>,
    /// Blocks256: per super-block scale.
    pub(crate) d: Vec<f32>,
    /// Blocks256: per super-block the 16 sums of 16 quants.
    pub(crate) bsums: Vec<i16>,
}

impl Activations {
    pub fn new(layout: ActLayout) -> Self {
        Self {
            layout,
            rows: 0,
            cols: 0,
            qs: Vec::new(),
            ds_min: Vec::new(),
            ds_off8: Vec::new(),
            ds_off128: Vec::new(),
            d: Vec::new(),
            bsums: Vec::new(),
        }
    }

    pub fn layout(&self) -> ActLayout {
        self.layout
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Quantize `rows` rows of `cols` values (`x` row-major, `cols` a multiple of the layout's
    /// block length), replacing what was held.
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert_eq!(x.len(), rows * cols, "{} activation values for {rows} rows of {cols}", x.len());
        self.reset(rows, cols);
        for r in 0..rows {
            self.quantize_row(r, &x[r * cols..(r + 1) * cols]);
        }
    }

    /// As [`Activations::quantize`], but row `r` is first written by `fill(r, row)` into a scratch
    /// row (e.g. normalised there), so callers need not hold the whole f32 input.
    pub fn quantize_with(&mut self, rows: usize, cols: usize, scratch: &mut Vec<f32>, mut fill: impl FnMut(usize, &mut [f32])) {
        self.reset(rows, cols);
        scratch.resize(cols, 0.0);
        for r in 0..rows {
            fill(r, scratch);
            self.quantize_row(r, scratch);
        }
    }

    /// Size the buffers for `rows × cols` (keeping their capacity).
    fn reset(&mut self, rows: usize, cols: usize) {
        let bl = self.layout.block_len();
        assert_eq!(cols % bl, 0, "activations of {cols} values are not whole {bl}-value blocks");
        self.rows = rows;
        self.cols = cols;
        let nb = rows * cols / bl;
        self.qs.resize(rows * cols, 0);
        match self.layout {
            ActLayout::Blocks32 => {
                for v in [&mut self.ds_min, &mut self.ds_off8, &mut self.ds_off128] {
                    v.resize(2 * nb, 0.0);
                }
            }
            ActLayout::Blocks256 => {
                self.d.resize(nb, 0.0);
                self.bsums.resize(16 * nb, 0);
            }
        }
    }

    fn quantize_row(&mut self, r: usize, x: &[f32]) {
        let bufs = self.row_buffers();
        // SAFETY: `bufs` addresses this object's buffers, sized by `reset`, and nothing else
        // touches them during the call.
        unsafe { bufs.quantize_row(r, x) }
    }

    fn row_buffers(&mut self) -> RowBuffers {
        RowBuffers {
            layout: self.layout,
            cols: self.cols,
            qs: self.qs.as_mut_ptr(),
            ds_min: self.ds_min.as_mut_ptr(),
            ds_off8: self.ds_off8.as_mut_ptr(),
            ds_off128: self.ds_off128.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            bsums: self.bsums.as_mut_ptr(),
        }
    }

    /// As [`Activations::quantize`], the rows split over `par`'s threads (for batches: each
    /// row is quantized on its own).
    pub fn quantize_on(&mut self, par: &dyn crate::Parallel, x: &[f32], rows: usize, cols: usize) {
        const ROWS_PER_TASK: usize = 4;
        if rows < 2 * ROWS_PER_TASK || par.threads() < 2 {
            return self.quantize(x, rows, cols);
        }
        assert_eq!(x.len(), rows * cols, "{} activation values for {rows} rows of {cols}", x.len());
        self.reset(rows, cols);
        let bufs = self.row_buffers();
        par.run(rows.div_ceil(ROWS_PER_TASK), &|task| {
            for r in task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(rows) {
                // SAFETY: each row's quants and scales are written by its task alone, into
                // buffers sized by `reset` that live until `par.run` returns.
                unsafe { bufs.quantize_row(r, &x[r * cols..(r + 1) * cols]) }
            }
        });
    }

    /// Blocks32: block `b` of row `r`'s `s = d·Σq` rounded to f16 (ggml's Q8_1 sum, which a
    /// Q4_1 block's min multiplies in place of the sum of the dequantized values).
    pub fn block_sum(&self, r: usize, b: usize) -> f32 {
        self.ds_min[2 * (r * self.cols / 32 + b) + 1]
    }

    /// Row `r`'s quants.
    pub(crate) fn row_qs(&self, r: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + 1) * self.cols]
    }

    /// The quantized values of row `r` turned back into floats (`d·q`), what the kernels multiply.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bl = self.layout.block_len();
        let per_row = self.cols / bl;
        for (b, (q, y)) in self.row_qs(r).chunks_exact(bl).zip(out.chunks_exact_mut(bl)).enumerate() {
            let i = r * per_row + b;
            let d = match self.layout {
                ActLayout::Blocks32 => self.ds_min[2 * i],
                ActLayout::Blocks256 => self.d[i],
            };
            for (y, &q) in y.iter_mut().zip(q) {
                *y = d * q as f32;
            }
        }
    }
}

/// `x` rounded to the nearest integer, ties to even, for |x| ≤ 2²² (quantized activations are
/// within ±127.5). `round_ties_even` compiles to a libm call per value on CPUs without SSE4.1
/// as the baseline; adding and subtracting 1.5·2²³ rounds the same way in the FPU's default
/// mode and vectorizes.
#[inline(always)]
fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// One 32-value block: quants into `q`; returns the f16-rounded scale, the quants' sum and
/// ggml's Q8_1 `s` (`f16(d·Σq)`, with the unrounded `d`).
#[inline]
fn quantize_block32(x: &[f32], q: &mut [i8]) -> (f32, i32, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = round_small(v * id) as i32;
        *q = r as i8;
        sum += r;
    }
    (f16::from_f32(d).to_f32(), sum, f16::from_f32(d * sum as f32).to_f32())
}

/// One 256-value super-block: quants into `q`, the 16 partial sums into `bsums`; returns the scale.
#[inline]
fn quantize_block256(x: &[f32], q: &mut [i8], bsums: &mut [i16]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (round_small(iscale * v) as i32).min(127) as i8;
    }
    for (s, qc) in bsums.iter_mut().zip(q.chunks_exact(16)) {
        *s = qc.iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}

/// Raw views of an [`Activations`]' buffers, so rows can be written from several threads.
#[derive(Clone, Copy)]
struct RowBuffers {
    layout: ActLayout,
    cols: usize,
    qs: *mut i8,
    ds_min: *mut f32,
    ds_off8: *mut f32,
    ds_off128: *mut f32,
    d: *mut f32,
    bsums: *mut i16,
}

// SAFETY: used only to write disjoint rows from the tasks of one `Parallel::run`.
unsafe impl Send for RowBuffers {}
unsafe impl Sync for RowBuffers {}

impl RowBuffers {
    /// Quantize `x` as row `r`.
    ///
    /// # Safety
    /// The buffers must be sized for at least `r + 1` rows of `cols`, and no one else may touch
    /// row `r`'s parts of them during the call.
    unsafe fn quantize_row(&self, r: usize, x: &[f32]) {
        let (bl, cols) = (self.layout.block_len(), self.cols);
        let per_row = cols / bl;
        // SAFETY: row r's slices, disjoint from every other row's, within the buffers.
        let qs = unsafe { std::slice::from_raw_parts_mut(self.qs.add(r * cols), cols) };
        for (b, (xb, qb)) in x.chunks_exact(bl).zip(qs.chunks_exact_mut(bl)).enumerate() {
            let i = r * per_row + b;
            // SAFETY: as above, block i's entries.
            unsafe {
                match self.layout {
                    ActLayout::Blocks32 => {
                        let (dq, sum, s) = quantize_block32(xb, qb);
                        *self.ds_min.add(2 * i) = dq;
                        *self.ds_min.add(2 * i + 1) = s;
                        *self.ds_off8.add(2 * i) = dq;
                        *self.ds_off8.add(2 * i + 1) = -8.0 * dq * sum as f32;
                        *self.ds_off128.add(2 * i) = dq;
                        *self.ds_off128.add(2 * i + 1) = -128.0 * dq * sum as f32;
                    }
                    ActLayout::Blocks256 => {
                        let bsums = std::slice::from_raw_parts_mut(self.bsums.add(16 * i), 16);
                        *self.d.add(i) = quantize_block256(xb, qb, bsums);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::round_small;

    #[test]
    fn round_small_rounds_as_round_ties_even() {
        let mut xs: Vec<f32> = (-300..=300).map(|i| i as f32 * 0.5).collect(); // every tie
        xs.extend((-2000..=2000).map(|i| i as f32 * 0.0637 + 0.001));
        xs.extend([0.49999997, -0.49999997, 127.49999, -127.50001, 4_194_303.5, -4_194_304.0]);
        xs.extend([-0.0, f32::MIN_POSITIVE, 1e-30]);
        for x in xs {
            assert_eq!(round_small(x), x.round_ties_even(), "{x}");
        }
        assert_eq!(round_small(f32::NAN) as i32, f32::NAN.round_ties_even() as i32);
    }
}
