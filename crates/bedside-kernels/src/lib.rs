//! Quantized CPU matrix kernels for bedside's inference: `y = x · Wᵀ` for a weight `W` held in
//! GGML's block layouts (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) or dense f32, and a few (decoding)
//! to many (prompt) activation rows.
//!
//! As llama.cpp does, the activation rows are quantized to 8 bits once per matmul
//! ([`Activations`]) and shared by every weight row, and each block's integer dot product runs
//! on SIMD integer instructions: AVX-512 with VNNI (`vpdpbusd`) or without, AVX2, NEON, or a
//! portable fallback, picked at run time ([`Backend::detected`]). Weights are read in place,
//! never repacked, so a model's memory is its file's.
//!
//! The crate knows nothing of tensors or threads: [`matmul`] splits the work into tasks and runs
//! them on whatever [`Parallel`] the caller provides (bedside runs them on candle's persistent
//! CPU pool).

mod activations;
mod attention;
mod formats;
mod generic;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

pub use activations::Activations;
pub use attention::{attend, KvSlice};
pub use formats::{dequantize_row, ActLayout, QMatrix, QType};

/// Activation rows one kernel call multiplies with a weight row (their quants and scales stay in
/// registers and L1 while the weight row streams past).
pub const TILE: usize = 4;

/// An instruction set the kernels can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Plain Rust, any CPU.
    Generic,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) without VNNI.
    Avx512,
    /// x86-64 AVX-512 with VNNI (`vpdpbusd`: Ice Lake, Zen 4 and later).
    Avx512Vnni,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Backend {
    /// The fastest backend this CPU supports (detected once).
    pub fn detected() -> Backend {
        static DETECTED: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| Backend::supported().last().copied().unwrap_or(Backend::Generic))
    }

    /// Every backend this CPU can run, slowest first (tests run each).
    pub fn supported() -> Vec<Backend> {
        let mut out = vec![Backend::Generic];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                out.push(Backend::Avx2);
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                    out.push(Backend::Avx512);
                    if has!("avx512vnni") {
                        out.push(Backend::Avx512Vnni);
                    }
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                out.push(Backend::Neon);
            }
        }
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Generic => "generic",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Avx512Vnni => "avx512-vnni",
            Backend::Neon => "neon",
        }
    }

    /// `out[t] = W[row] · x[r0 + t]` for `t < nr` (`nr <= TILE`).
    #[inline]
    fn row_dot(self, ty: QType, w: &[u8], x: &Activations, r0: usize, nr: usize, out: &mut [f32; TILE]) {
        debug_assert!((1..=TILE).contains(&nr) && r0 + nr <= x.rows());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: these variants are only constructed by `supported` when the CPU has the
            // features their kernels are compiled for; the row and activations were checked by
            // `matmul` to have matching lengths.
            Backend::Avx2 => unsafe { avx2::row_dot(ty, w, x, r0, nr, out) },
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe { avx512::row_dot::<false>(ty, w, x, r0, nr, out) },
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Vnni => unsafe { avx512::row_dot::<true>(ty, w, x, r0, nr, out) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            Backend::Neon => unsafe { neon::row_dot(ty, w, x, r0, nr, out) },
            _ => generic::row_dot(ty, w, x, r0, nr, out),
        }
    }

    #[inline]
    fn dense_row_dot(self, w: &[f32], x: &[f32], cols: usize, r0: usize, nr: usize, out: &mut [f32; TILE]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `row_dot`; `matmul` checked the lengths.
            Backend::Avx512 | Backend::Avx512Vnni => unsafe { avx512::dense_row_dot(w, x, cols, r0, nr, out) },
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => unsafe { avx2::dense_row_dot(w, x, cols, r0, nr, out) },
            _ => generic::dense_row_dot(w, x, cols, r0, nr, out),
        }
    }
}

/// Runs independent tasks, possibly on several threads.
pub trait Parallel: Sync {
    /// Threads that may run tasks at once (to size the tasks).
    fn threads(&self) -> usize;
    /// Call `task(i)` once for every `i` in `0..n` and return when all calls have returned.
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync));
}

/// Every task on the calling thread.
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(task)
    }
}

/// A dense f32 weight `[rows, cols]`, row-major, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct DenseMatrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> DenseMatrix<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, String> {
        if data.len() != rows * cols {
            return Err(format!("a {rows} × {cols} f32 matrix has {} values, got {}", rows * cols, data.len()));
        }
        Ok(Self { data, rows, cols })
    }
}

/// A weight a matmul reads.
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    Quantized(QMatrix<'a>),
    Dense(DenseMatrix<'a>),
}

impl Weight<'_> {
    pub fn rows(&self) -> usize {
        match self {
            Weight::Quantized(q) => q.rows(),
            Weight::Dense(d) => d.rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Weight::Quantized(q) => q.cols(),
            Weight::Dense(d) => d.cols,
        }
    }
    /// The activation quantization this weight multiplies (`None`: the f32 rows themselves).
    pub fn act_layout(&self) -> Option<ActLayout> {
        match self {
            Weight::Quantized(q) => Some(q.ty().act_layout()),
            Weight::Dense(_) => None,
        }
    }
}

/// The input rows of a matmul in the forms its weights need: f32 for dense weights, quantized
/// for quantized ones (each present when some weight needs it).
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub rows: usize,
    pub cols: usize,
    pub f32: Option<&'a [f32]>,
    pub blocks32: Option<&'a Activations>,
    pub blocks256: Option<&'a Activations>,
}

/// The most weights one [`matmul`] call multiplies.
pub const MAX_JOBS: usize = 8;

/// One weight of a [`matmul`] and where its `rows × out` result goes.
pub struct Job<'a> {
    pub weight: Weight<'a>,
    /// `input.rows × weight.rows()` values, row-major.
    pub out: &'a mut [f32],
    /// Add the product to what `out` holds (a residual) instead of overwriting it.
    pub accumulate: bool,
}

/// `out = input · Wᵀ` (or `out += ...`) for every job, the weights' rows split into tasks run on
/// `par`. Several weights sharing one input (q/k/v, gate/up) are one call: one round of the
/// pool, one quantization of the input.
pub fn matmul(backend: Backend, par: &dyn Parallel, input: Input, jobs: &mut [Job]) -> Result<(), String> {
    let m = input.rows;
    for j in jobs.iter() {
        let w = &j.weight;
        if w.cols() != input.cols {
            return Err(format!("matmul: weight of {} columns for input rows of {}", w.cols(), input.cols));
        }
        if j.out.len() != m * w.rows() {
            return Err(format!("matmul: output of {} values for {m} × {} results", j.out.len(), w.rows()));
        }
        let have = match w.act_layout() {
            None => input.f32.map(|x| x.len() == m * input.cols),
            Some(ActLayout::Blocks32) => input.blocks32.map(|a| a.rows() == m && a.cols() == input.cols),
            Some(ActLayout::Blocks256) => input.blocks256.map(|a| a.rows() == m && a.cols() == input.cols),
        };
        match have {
            Some(true) => {}
            Some(false) => return Err(format!("matmul: input in the form {:?} does not have {m} rows of {}", w.act_layout(), input.cols)),
            None => return Err(format!("matmul: a weight needs its input as {:?}, which was not given", w.act_layout())),
        }
    }
    if jobs.len() > MAX_JOBS {
        return Err(format!("matmul: {} weights in one call, at most {MAX_JOBS}", jobs.len()));
    }
    if m == 0 || jobs.is_empty() {
        return Ok(());
    }
    // Tasks of `chunk` weight rows: a few per thread, so a slow thread's share is taken up by
    // the others, and a multiple of 4 rows.
    let total: usize = jobs.iter().map(|j| j.weight.rows()).sum();
    let threads = par.threads().max(1);
    let chunk = if threads == 1 { total.max(1) } else { (total / (threads * 8)).clamp(16, 512).next_multiple_of(4) };
    // Fixed-size tables: a matmul allocates nothing.
    let mut starts = [usize::MAX; MAX_JOBS + 1];
    let mut outs = [SendPtr(std::ptr::null_mut()); MAX_JOBS];
    let mut n_tasks = 0;
    for (i, j) in jobs.iter_mut().enumerate() {
        starts[i] = n_tasks;
        outs[i] = SendPtr(j.out.as_mut_ptr());
        n_tasks += j.weight.rows().div_ceil(chunk);
    }
    starts[jobs.len()] = n_tasks;
    let jobs = &*jobs;
    par.run(n_tasks, &|t| {
        let ji = starts[..=jobs.len()].partition_point(|&s| s <= t) - 1;
        let job = &jobs[ji];
        let n = job.weight.rows();
        let r0 = (t - starts[ji]) * chunk;
        let rows = r0..(r0 + chunk).min(n);
        // SAFETY: task `t` writes only columns `rows` of job `ji`'s `m × n` output, which no
        // other task writes; `jobs` (and so the output buffers) outlive `par.run`.
        unsafe { rows_task(backend, input, &job.weight, rows, outs[ji].0, n, job.accumulate) };
    });
    Ok(())
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only written through at disjoint offsets by the tasks of one `matmul`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Columns `rows` of every input row's result.
///
/// # Safety
/// `out` must address `input.rows × n` f32 values that no one else touches at columns `rows`.
unsafe fn rows_task(backend: Backend, input: Input, w: &Weight, rows: std::ops::Range<usize>, out: *mut f32, n: usize, accumulate: bool) {
    let m = input.rows;
    let mut res = [0f32; TILE];
    let mut r0 = 0;
    while r0 < m {
        let nr = (m - r0).min(TILE);
        for j in rows.clone() {
            match w {
                Weight::Quantized(q) => {
                    let x = match q.ty().act_layout() {
                        ActLayout::Blocks32 => input.blocks32,
                        ActLayout::Blocks256 => input.blocks256,
                    };
                    let Some(x) = x else { return };
                    backend.row_dot(q.ty(), q.row(j), x, r0, nr, &mut res);
                }
                Weight::Dense(d) => {
                    let Some(x) = input.f32 else { return };
                    backend.dense_row_dot(&d.data[j * d.cols..(j + 1) * d.cols], x, d.cols, r0, nr, &mut res);
                }
            }
            for (t, &v) in res.iter().enumerate().take(nr) {
                // SAFETY: row r0 + t < m, column j < n, as the caller guarantees.
                let o = unsafe { &mut *out.add((r0 + t) * n + j) };
                *o = if accumulate { *o + v } else { v };
            }
        }
        r0 += nr;
    }
}

/// `out = x · Wᵀ` on the calling thread, quantizing `x` (`rows × W.cols()`) as the weight needs:
/// a convenience for tests and one-off products.
pub fn matmul_f32(backend: Backend, w: Weight, x: &[f32], rows: usize, out: &mut [f32]) -> Result<(), String> {
    let cols = w.cols();
    if x.len() != rows * cols {
        return Err(format!("matmul_f32: {} input values for {rows} rows of {cols}", x.len()));
    }
    let mut acts = w.act_layout().map(Activations::new);
    if let Some(a) = acts.as_mut() {
        a.quantize(x, rows, cols);
    }
    let input = Input {
        rows,
        cols,
        f32: Some(x),
        blocks32: acts.as_ref().filter(|a| a.layout() == ActLayout::Blocks32),
        blocks256: acts.as_ref().filter(|a| a.layout() == ActLayout::Blocks256),
    };
    matmul(backend, &Serial, input, &mut [Job { weight: w, out, accumulate: false }])
}
