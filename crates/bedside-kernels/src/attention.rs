//! Attention of the query heads that share one key/value head over its cached keys and values,
//! in a single pass (online softmax over blocks of positions, so no score buffer the length of
//! the context is written), each block read once for all the heads, the exponentials computed a
//! register at a time.

use half::f16;

use crate::Backend;

/// Positions scored, exponentiated and accumulated together.
const BLOCK: usize = 32;

/// Head dimensions whose f16 blocks are widened into a stack buffer (larger ones use the heap).
const STACK_HEAD_DIM: usize = 128;

/// Cached keys or values as the kernel reads them: f32, or f16 as llama.cpp keeps its cache by
/// default (half the memory; each block of positions is widened to f32 before it is used, so
/// the arithmetic is the f32 kernel's on the rounded values).
#[derive(Debug, Clone, Copy)]
pub enum KvSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> KvSlice<'a> {
    /// The same rows from element `start` on.
    pub fn from(self, start: usize) -> KvSlice<'a> {
        match self {
            KvSlice::F32(s) => KvSlice::F32(&s[start..]),
            KvSlice::F16(s) => KvSlice::F16(&s[start..]),
        }
    }
    fn len(&self) -> usize {
        match self {
            KvSlice::F32(s) => s.len(),
            KvSlice::F16(s) => s.len(),
        }
    }
}

/// For each of the `heads` query heads in `q` (`heads × d` values, `d = q.len() / heads`) that
/// share one key/value head: `out_h = Σ_j softmax_j(scale · q_h·k_j) · v_j` over `n` positions,
/// position `j`'s key at `keys[j * stride..j * stride + d]` and its value likewise in `values`.
/// The heads go through each block of positions together, so every key and value is read (and
/// widened, for f16) once for all of them; each head's arithmetic is what it would be alone.
/// Keys and values are of one element type.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    backend: Backend,
    q: &[f32],
    heads: usize,
    keys: KvSlice,
    values: KvSlice,
    n: usize,
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    assert!(
        heads > 0 && q.len().is_multiple_of(heads) && out.len() == q.len() && n > 0,
        "attend: {n} positions, {heads} heads, q {} out {}",
        q.len(),
        out.len()
    );
    let d = q.len() / heads;
    assert!(keys.len() >= (n - 1) * stride + d && values.len() >= (n - 1) * stride + d, "attend: cache slices shorter than {n} positions");
    match (keys, values) {
        (KvSlice::F32(k), KvSlice::F32(v)) => {
            let (k, v) = (F32Rows { data: k, stride }, F32Rows { data: v, stride });
            match backend {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: these backends exist only on CPUs with the features enabled below.
                Backend::Avx512 | Backend::Avx512Vnni => unsafe { attend_avx512(q, d, k, v, n, scale, out, &mut [], &mut []) },
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2 => unsafe { attend_avx2(q, d, k, v, n, scale, out, &mut [], &mut []) },
                #[cfg(target_arch = "aarch64")]
                Backend::Neon => attend_impl(q, d, k, v, n, scale, out, &mut [], &mut [], DotNeon),
                _ => attend_impl(q, d, k, v, n, scale, out, &mut [], &mut [], DotPortable),
            }
        }
        (KvSlice::F16(k), KvSlice::F16(v)) => {
            let mut stack = [0f32; 2 * BLOCK * STACK_HEAD_DIM];
            let mut heap = Vec::new();
            let buf: &mut [f32] = if d <= STACK_HEAD_DIM {
                &mut stack[..2 * BLOCK * d]
            } else {
                heap.resize(2 * BLOCK * d, 0.0);
                &mut heap
            };
            let (kb, vb) = buf.split_at_mut(BLOCK * d);
            match backend {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: these backends exist only on CPUs with the features enabled below, and
                // the widening each picks needs no more than that.
                Backend::Avx512 | Backend::Avx512Vnni => unsafe {
                    let (k, v) = (
                        F16Rows::<WidenAvx512> { data: k, stride, d, widen: WidenAvx512 },
                        F16Rows { data: v, stride, d, widen: WidenAvx512 },
                    );
                    attend_avx512(q, d, k, v, n, scale, out, kb, vb)
                },
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2 => unsafe {
                    let (k, v) =
                        (F16Rows::<WidenF16c> { data: k, stride, d, widen: WidenF16c }, F16Rows { data: v, stride, d, widen: WidenF16c });
                    attend_avx2(q, d, k, v, n, scale, out, kb, vb)
                },
                #[cfg(target_arch = "aarch64")]
                Backend::Neon => {
                    let (k, v) =
                        (F16Rows { data: k, stride, d, widen: WidenPortable }, F16Rows { data: v, stride, d, widen: WidenPortable });
                    attend_impl(q, d, k, v, n, scale, out, kb, vb, DotNeon)
                }
                _ => {
                    let (k, v) =
                        (F16Rows { data: k, stride, d, widen: WidenPortable }, F16Rows { data: v, stride, d, widen: WidenPortable });
                    attend_impl(q, d, k, v, n, scale, out, kb, vb, DotPortable)
                }
            }
        }
        _ => panic!("attend: keys and values must be of one element type"),
    }
}

/// A block of positions as f32 rows: `(rows, stride)` with position `start + i` at
/// `rows[i * stride..i * stride + d]`, read in place or widened into `buf`.
trait Rows {
    fn block<'s>(&'s self, start: usize, len: usize, buf: &'s mut [f32]) -> (&'s [f32], usize);
}

struct F32Rows<'a> {
    data: &'a [f32],
    stride: usize,
}

impl Rows for F32Rows<'_> {
    #[inline(always)]
    fn block<'s>(&'s self, start: usize, _len: usize, _buf: &'s mut [f32]) -> (&'s [f32], usize) {
        (&self.data[start * self.stride..], self.stride)
    }
}

/// Converts f16 values to f32 (`src.len() == dst.len()`).
trait Widen {
    fn widen(&self, src: &[f16], dst: &mut [f32]);
}

struct F16Rows<'a, W> {
    data: &'a [f16],
    stride: usize,
    d: usize,
    widen: W,
}

impl<W: Widen> Rows for F16Rows<'_, W> {
    #[inline(always)]
    fn block<'s>(&'s self, start: usize, len: usize, buf: &'s mut [f32]) -> (&'s [f32], usize) {
        let d = self.d;
        for (i, dst) in buf.chunks_exact_mut(d).take(len).enumerate() {
            let at = (start + i) * self.stride;
            self.widen.widen(&self.data[at..at + d], dst);
        }
        (buf, d)
    }
}

/// half's slice conversion (hardware conversion where the CPU has it, found at run time).
struct WidenPortable;

impl Widen for WidenPortable {
    #[inline(always)]
    fn widen(&self, src: &[f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

/// `src` widened into `dst` `LANES` values at a time by `block`, the tail one by one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn widen_by<const LANES: usize>(src: &[f16], dst: &mut [f32], block: impl Fn(&[f16; LANES], &mut [f32; LANES])) {
    let (mut s, mut d) = (src.chunks_exact(LANES), dst.chunks_exact_mut(LANES));
    for (a, b) in (&mut s).zip(&mut d) {
        if let (Ok(a), Ok(b)) = (a.try_into(), b.try_into()) {
            block(a, b);
        }
    }
    for (x, y) in s.remainder().iter().zip(d.into_remainder()) {
        *y = x.to_f32();
    }
}

/// `vcvtph2ps` on 16 values at a time. Only built inside [`attend`]'s AVX-512 branch.
#[cfg(target_arch = "x86_64")]
struct WidenAvx512;

#[cfg(target_arch = "x86_64")]
impl Widen for WidenAvx512 {
    #[inline(always)]
    fn widen(&self, src: &[f16], dst: &mut [f32]) {
        use std::arch::x86_64::*;
        // SAFETY: a WidenAvx512 exists only on CPUs with AVX-512 F (see `attend`); each block
        // reads and writes its own 16 values.
        widen_by::<16>(src, dst, |a, b| unsafe {
            _mm512_storeu_ps(b.as_mut_ptr(), _mm512_cvtph_ps(_mm256_loadu_si256(a.as_ptr().cast())))
        });
    }
}

/// F16C's `vcvtph2ps` on 8 values at a time. Only built inside [`attend`]'s AVX2 branch.
#[cfg(target_arch = "x86_64")]
struct WidenF16c;

#[cfg(target_arch = "x86_64")]
impl Widen for WidenF16c {
    #[inline(always)]
    fn widen(&self, src: &[f16], dst: &mut [f32]) {
        use std::arch::x86_64::*;
        // SAFETY: a WidenF16c exists only on CPUs with AVX2 and F16C (see `attend`); each block
        // reads and writes its own 8 values.
        widen_by::<8>(src, dst, |a, b| unsafe { _mm256_storeu_ps(b.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().cast()))) });
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx512<K: Rows, V: Rows>(
    q: &[f32],
    d: usize,
    keys: K,
    values: V,
    n: usize,
    scale: f32,
    out: &mut [f32],
    kb: &mut [f32],
    vb: &mut [f32],
) {
    attend_impl(q, d, keys, values, n, scale, out, kb, vb, DotAvx512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2<K: Rows, V: Rows>(
    q: &[f32],
    d: usize,
    keys: K,
    values: V,
    n: usize,
    scale: f32,
    out: &mut [f32],
    kb: &mut [f32],
    vb: &mut [f32],
) {
    attend_impl(q, d, keys, values, n, scale, out, kb, vb, DotAvx2)
}

/// Query heads that go through the positions together; a larger group is taken in pieces.
const MAX_HEADS: usize = 8;

/// The heads in groups of at most [`MAX_HEADS`]. `kb`/`vb` hold one block of widened rows where
/// the rows need widening; `dot` is the target's form of the one scoring product (see [`Dot`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_impl<K: Rows, V: Rows, P: Dot>(
    q: &[f32],
    d: usize,
    keys: K,
    values: V,
    n: usize,
    scale: f32,
    out: &mut [f32],
    kb: &mut [f32],
    vb: &mut [f32],
    dot: P,
) {
    for (q, out) in q.chunks(MAX_HEADS * d).zip(out.chunks_mut(MAX_HEADS * d)) {
        attend_heads(q, d, &keys, &values, n, scale, out, kb, vb, &dot);
    }
}

/// Online softmax over blocks of [`BLOCK`] positions: each block's keys and values are read (or
/// widened) once, then every head scores it, rescales what it accumulated if its maximum rose,
/// and adds the block's values weighted by its probabilities.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_heads<K: Rows, V: Rows, P: Dot>(
    q: &[f32],
    d: usize,
    keys: &K,
    values: &V,
    n: usize,
    scale: f32,
    out: &mut [f32],
    kb: &mut [f32],
    vb: &mut [f32],
    dot: &P,
) {
    let heads = q.len() / d;
    out.fill(0.0);
    let (mut max, mut sum) = ([f32::NEG_INFINITY; MAX_HEADS], [0f32; MAX_HEADS]);
    let mut scores = [0f32; BLOCK];
    let mut start = 0;
    while start < n {
        let len = (n - start).min(BLOCK);
        let (kr, ks) = keys.block(start, len, kb);
        let (vr, vs) = values.block(start, len, vb);
        for h in 0..heads {
            let (qh, oh) = (&q[h * d..(h + 1) * d], &mut out[h * d..(h + 1) * d]);
            let mut block_max = f32::NEG_INFINITY;
            for (i, s) in scores.iter_mut().enumerate().take(len) {
                *s = dot.dot(qh, &kr[i * ks..i * ks + d]) * scale;
                block_max = block_max.max(*s);
            }
            if block_max > max[h] {
                // Rescale what was accumulated under the old maximum.
                let c = if max[h] == f32::NEG_INFINITY { 0.0 } else { (max[h] - block_max).exp() };
                sum[h] *= c;
                oh.iter_mut().for_each(|o| *o *= c);
                max[h] = block_max;
            }
            exp_shifted(&mut scores[..len], max[h]);
            for &p in &scores[..len] {
                sum[h] += p;
            }
            if let Ok(o) = <&mut [f32; 64]>::try_from(&mut *oh) {
                accumulate_fixed(o, &scores[..len], vr, vs);
            } else if let Ok(o) = <&mut [f32; 128]>::try_from(&mut *oh) {
                accumulate_fixed(o, &scores[..len], vr, vs);
            } else {
                accumulate(oh, &scores[..len], vr, vs);
            }
        }
        start += len;
    }
    for (oh, s) in out.chunks_exact_mut(d).zip(sum) {
        let inv = 1.0 / s;
        oh.iter_mut().for_each(|o| *o *= inv);
    }
}

/// `out += Σ_i p_i · v_i`, row `i` at `rows[i * stride..]`.
#[inline(always)]
fn accumulate(out: &mut [f32], p: &[f32], rows: &[f32], stride: usize) {
    let d = out.len();
    for (i, &p) in p.iter().enumerate() {
        for (o, &vv) in out.iter_mut().zip(&rows[i * stride..i * stride + d]) {
            *o += p * vv;
        }
    }
}

/// [`accumulate`] for the common head sizes, the sums kept in registers through the
/// block instead of stored and reloaded at every position (same operations, same order).
#[inline(always)]
fn accumulate_fixed<const D: usize>(out: &mut [f32; D], p: &[f32], rows: &[f32], stride: usize) {
    let mut acc = *out;
    for (i, &p) in p.iter().enumerate() {
        for (o, &vv) in acc.iter_mut().zip(&rows[i * stride..i * stride + D]) {
            *o += p * vv;
        }
    }
    *out = acc;
}

/// `a · b` as sixteen lane sums (`acc[l] += a[16c + l] · b[16c + l]`, a product then a sum, not
/// fused), folded as `(s0 + s4) + (s1 + s5) + (s2 + s6) + (s3 + s7)` with `s_l = acc[l] +
/// acc[l + 8]`, then the tail beyond the last 16 added. Every implementation does exactly these
/// operations, so the backends' results agree to the bit.
trait Dot {
    fn dot(&self, a: &[f32], b: &[f32]) -> f32;
}

/// Plain Rust, for any CPU.
struct DotPortable;

impl Dot for DotPortable {
    #[inline(always)]
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        dot_by(
            a,
            b,
            [0f32; 16],
            |mut acc, x, y| {
                for l in 0..16 {
                    acc[l] += x[l] * y[l];
                }
                acc
            },
            |acc| std::array::from_fn(|l| (acc[l] + acc[l + 8]) + (acc[l + 4] + acc[l + 12])),
        )
    }
}

/// The frame every [`Dot`] shares: `acc = step(acc, a16, b16)` over each whole chunk of sixteen
/// values, `fold` to the four sums `s_l + s_{l+4}`, added left to right, then the tail.
#[inline(always)]
fn dot_by<A>(a: &[f32], b: &[f32], zero: A, step: impl Fn(A, &[f32; 16], &[f32; 16]) -> A, fold: impl Fn(A) -> [f32; 4]) -> f32 {
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = zero;
    for (x, y) in ac.zip(bc) {
        if let (Ok(x), Ok(y)) = (x.try_into(), y.try_into()) {
            acc = step(acc, x, y);
        }
    }
    let u = fold(acc);
    u[0] + u[1] + u[2] + u[3] + tail
}

/// The eight sums `s_l` (a register) to the four `s_l + s_{l+4}`. Only called by the x86-64
/// forms of [`Dot`], which exist on CPUs with AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn fold8(s: std::arch::x86_64::__m256) -> [f32; 4] {
    use std::arch::x86_64::*;
    let mut u = [0f32; 4];
    // SAFETY: see above; the store writes the four values of `u`.
    unsafe { _mm_storeu_ps(u.as_mut_ptr(), _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))) };
    u
}

/// The sixteen lanes in one register. Only built inside [`attend`]'s AVX-512 branch.
#[cfg(target_arch = "x86_64")]
struct DotAvx512;

#[cfg(target_arch = "x86_64")]
impl Dot for DotAvx512 {
    #[inline(always)]
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        // SAFETY: a DotAvx512 exists only on CPUs with AVX-512 F (see `attend`); each step
        // reads its own sixteen values of `a` and `b`.
        unsafe {
            dot_by(
                a,
                b,
                _mm512_setzero_ps(),
                |acc, x, y| _mm512_add_ps(acc, _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(y.as_ptr()))),
                |acc| {
                    fold8(_mm256_add_ps(_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)))))
                },
            )
        }
    }
}

/// The sixteen lanes in two registers (lanes 0–7 and 8–15). Only built inside [`attend`]'s
/// AVX2 branch.
#[cfg(target_arch = "x86_64")]
struct DotAvx2;

#[cfg(target_arch = "x86_64")]
impl Dot for DotAvx2 {
    #[inline(always)]
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        // SAFETY: a DotAvx2 exists only on CPUs with AVX2 (see `attend`); each step reads its
        // own sixteen values of `a` and `b`, eight at a time.
        unsafe {
            let mul = |x: &[f32], y: &[f32]| _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr()));
            dot_by(
                a,
                b,
                (_mm256_setzero_ps(), _mm256_setzero_ps()),
                |(lo, hi), x, y| (_mm256_add_ps(lo, mul(&x[..8], &y[..8])), _mm256_add_ps(hi, mul(&x[8..], &y[8..]))),
                |(lo, hi)| fold8(_mm256_add_ps(lo, hi)),
            )
        }
    }
}

/// The sixteen lanes in four registers. Only built inside [`attend`]'s NEON branch.
#[cfg(target_arch = "aarch64")]
struct DotNeon;

#[cfg(target_arch = "aarch64")]
impl Dot for DotNeon {
    #[inline(always)]
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        use std::arch::aarch64::*;
        // SAFETY: every aarch64 CPU has NEON; each step reads its own sixteen values of `a`
        // and `b`.
        unsafe {
            dot_by(
                a,
                b,
                [vdupq_n_f32(0.0); 4],
                |acc, x, y| {
                    std::array::from_fn(|j| {
                        vaddq_f32(acc[j], vmulq_f32(vld1q_f32(x.as_ptr().add(4 * j)), vld1q_f32(y.as_ptr().add(4 * j))))
                    })
                },
                |acc| {
                    // Lanes 0–3 with 8–11 and 4–7 with 12–15, then the two halves.
                    let mut u = [0f32; 4];
                    vst1q_f32(u.as_mut_ptr(), vaddq_f32(vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3])));
                    u
                },
            )
        }
    }
}

/// `x ← exp(x - shift)` for `x <= shift`: `2^n · p(r)` with `n = round(t · log2 e)` and a
/// degree-6 polynomial for `e^r` on `|r| <= ln 2 / 2` (relative error below 2e-7), in plain
/// arithmetic that vectorises.
#[inline(always)]
pub(crate) fn exp_shifted(x: &mut [f32], shift: f32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to the nearest integer in float arithmetic (valid for |v| < 2^22).
    const ROUNDER: f32 = 12_582_912.0;
    for v in x.iter_mut() {
        let t = (*v - shift).max(-87.0);
        let n = (t * LOG2E + ROUNDER) - ROUNDER;
        let r = t - n * LN2_HI - n * LN2_LO;
        let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        let bits = ((n as i32 + 127) as u32) << 23;
        *v = p * f32::from_bits(bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut xs: Vec<f32> = (0..2000).map(|i| -(i as f32) * 0.04).collect();
        let want: Vec<f64> = xs.iter().map(|&v| (v as f64).exp()).collect();
        exp_shifted(&mut xs, 0.0);
        for (g, w) in xs.iter().zip(&want) {
            assert!(((*g as f64) - w).abs() <= 4e-7 * w + 1e-38, "{g} vs {w}");
        }
    }

    #[test]
    fn attend_matches_a_plain_softmax() {
        for &backend in &Backend::supported() {
            for (n, (d, stride)) in
                [1usize, 2, 31, 32, 33, 100].into_iter().flat_map(|n| [(24usize, 40usize), (64, 72), (128, 128)].map(|ds| (n, ds)))
            {
                for heads in [1usize, 3] {
                    let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
                    let q: Vec<f32> = (0..heads * d).map(|i| val(i + 3)).collect();
                    let keys: Vec<f32> = (0..n * stride).map(|i| val(i * 3 + 1) * 2.0).collect();
                    let values: Vec<f32> = (0..n * stride).map(|i| val(i * 5 + 2)).collect();
                    let mut out = vec![0f32; heads * d];
                    attend(backend, &q, heads, KvSlice::F32(&keys), KvSlice::F32(&values), n, stride, 0.3, &mut out);
                    for h in 0..heads {
                        let qh = &q[h * d..(h + 1) * d];
                        let s: Vec<f64> =
                            (0..n).map(|j| (0..d).map(|c| qh[c] as f64 * keys[j * stride + c] as f64).sum::<f64>() * 0.3).collect();
                        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for c in 0..d {
                            let want: f64 = (0..n).map(|j| e[j] / z * values[j * stride + c] as f64).sum();
                            let got = out[h * d + c] as f64;
                            assert!((got - want).abs() < 1e-5, "{} n={n} head {h} c={c}: {got} vs {want}", backend.name());
                        }
                    }
                }
            }
        }
    }

    /// The f16 cache's result is the f32 kernel's on the same (f16-representable) values, to
    /// the bit: widening is exact and the arithmetic is shared. Head sizes cover the 16- and
    /// 8-wide conversions' tails and the heap buffer for heads above the stack's.
    #[test]
    fn attend_on_f16_rows_equals_attend_on_their_f32_values() {
        for &backend in &Backend::supported() {
            for (d, stride) in [(24usize, 40usize), (64, 64), (64, 80), (128, 128), (13, 13), (136, 150)] {
                for n in [1usize, 5, 32, 33, 70] {
                    let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
                    let q: Vec<f32> = (0..2 * d).map(|i| val(i + 3)).collect();
                    let k16: Vec<f16> = (0..n * stride).map(|i| f16::from_f32(val(i * 3 + 1) * 2.0)).collect();
                    let v16: Vec<f16> = (0..n * stride).map(|i| f16::from_f32(val(i * 5 + 2))).collect();
                    let (k32, v32): (Vec<f32>, Vec<f32>) =
                        (k16.iter().map(|x| x.to_f32()).collect(), v16.iter().map(|x| x.to_f32()).collect());
                    let (mut a, mut b) = (vec![0f32; 2 * d], vec![0f32; 2 * d]);
                    attend(backend, &q, 2, KvSlice::F16(&k16), KvSlice::F16(&v16), n, stride, 0.3, &mut a);
                    attend(backend, &q, 2, KvSlice::F32(&k32), KvSlice::F32(&v32), n, stride, 0.3, &mut b);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a), bits(&b), "{} d={d} n={n}", backend.name());
                }
            }
        }
    }

    /// Heads attending together compute, bit for bit, what each computes alone: which way the
    /// decode step groups its heads does not change the answer. Nine heads cross the group
    /// size the kernel takes at once.
    #[test]
    fn heads_together_equal_heads_alone_bit_for_bit() {
        for &backend in &Backend::supported() {
            for (d, stride) in [(64usize, 64usize), (128, 136), (24, 24)] {
                for heads in [2usize, 3, 9] {
                    for n in [1usize, 31, 65, 300] {
                        let val = |i: usize| (((i * 7919 + 13) % 1000) as f32 / 250.0) - 2.0;
                        let q: Vec<f32> = (0..heads * d).map(|i| val(i * 7 + 5)).collect();
                        let keys: Vec<f32> = (0..n * stride).map(|i| val(i * 3 + 1)).collect();
                        let values: Vec<f32> = (0..n * stride).map(|i| val(i * 11 + 2)).collect();
                        let k16: Vec<f16> = keys.iter().map(|&x| f16::from_f32(x)).collect();
                        let v16: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                        for (k, v) in [(KvSlice::F32(&keys), KvSlice::F32(&values)), (KvSlice::F16(&k16), KvSlice::F16(&v16))] {
                            let mut together = vec![0f32; heads * d];
                            attend(backend, &q, heads, k, v, n, stride, 0.125, &mut together);
                            let mut alone = vec![0f32; heads * d];
                            for (qh, oh) in q.chunks_exact(d).zip(alone.chunks_exact_mut(d)) {
                                attend(backend, qh, 1, k, v, n, stride, 0.125, oh);
                            }
                            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&together), bits(&alone), "{} d={d} heads={heads} n={n}", backend.name());
                        }
                    }
                }
            }
        }
    }

    /// Every backend's kernel gives the portable one's result to the bit (head sizes with and
    /// without a tail beyond the last 16 values), so a model decodes the same on every CPU.
    #[test]
    fn backends_agree_bit_for_bit() {
        for (d, stride) in [(64usize, 64usize), (128, 136), (24, 24), (13, 17), (136, 150)] {
            for n in [1usize, 33, 100] {
                let val = |i: usize| (((i * 7919 + 13) % 1000) as f32 / 250.0) - 2.0;
                let q: Vec<f32> = (0..3 * d).map(|i| val(i * 7 + 5)).collect();
                let keys: Vec<f32> = (0..n * stride).map(|i| val(i * 3 + 1)).collect();
                let values: Vec<f32> = (0..n * stride).map(|i| val(i * 11 + 2)).collect();
                let k16: Vec<f16> = keys.iter().map(|&x| f16::from_f32(x)).collect();
                let v16: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                for (k, v) in [(KvSlice::F32(&keys), KvSlice::F32(&values)), (KvSlice::F16(&k16), KvSlice::F16(&v16))] {
                    let run = |backend| {
                        let mut out = vec![0f32; 3 * d];
                        attend(backend, &q, 3, k, v, n, stride, 0.2, &mut out);
                        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    };
                    let portable = run(Backend::Generic);
                    for &backend in &Backend::supported() {
                        assert_eq!(run(backend), portable, "{} d={d} n={n}", backend.name());
                    }
                }
            }
        }
    }

    /// The register-held sums of the common head sizes are the plain loop's, bit for bit.
    #[test]
    fn fixed_head_sizes_accumulate_as_the_plain_loop_does() {
        fn check<const D: usize>(stride: usize) {
            let val = |i: usize| (((i * 7919 + 13) % 1000) as f32 / 250.0) - 2.0;
            for len in [1usize, 7, BLOCK] {
                let p: Vec<f32> = (0..len).map(|i| val(i + 9).abs()).collect();
                let rows: Vec<f32> = (0..len * stride).map(|i| val(i * 11 + 2)).collect();
                let start: Vec<f32> = (0..D).map(|i| val(i * 5)).collect();
                let mut fixed: [f32; D] = start.clone().try_into().unwrap();
                accumulate_fixed(&mut fixed, &p, &rows, stride);
                let mut plain = start;
                accumulate(&mut plain, &p, &rows, stride);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fixed), bits(&plain), "D={D} stride={stride} len={len}");
            }
        }
        check::<64>(64);
        check::<64>(192);
        check::<128>(136);
    }
}
