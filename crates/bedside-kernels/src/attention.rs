//! One query head's attention over cached keys and values in a single pass (online softmax over
//! blocks of positions, so no score buffer the length of the context is written), the
//! exponentials computed a register at a time.

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

/// `out = Σ_j softmax_j(scale · q·k_j) · v_j` over `n` positions, position `j`'s key at
/// `keys[j * stride..j * stride + d]` and its value likewise in `values` (`d = q.len()`). Keys
/// and values are of one element type.
#[allow(clippy::too_many_arguments)]
pub fn attend(backend: Backend, q: &[f32], keys: KvSlice, values: KvSlice, n: usize, stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    assert!(out.len() == d && n > 0, "attend: {n} positions, out of {} for d {d}", out.len());
    assert!(keys.len() >= (n - 1) * stride + d && values.len() >= (n - 1) * stride + d, "attend: cache slices shorter than {n} positions");
    match (keys, values) {
        (KvSlice::F32(k), KvSlice::F32(v)) => {
            let (k, v) = (F32Rows { data: k, stride }, F32Rows { data: v, stride });
            match backend {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: these backends exist only on CPUs with the features enabled below.
                Backend::Avx512 | Backend::Avx512Vnni => unsafe { attend_avx512(q, k, v, n, scale, out, &mut [], &mut []) },
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2 => unsafe { attend_avx2(q, k, v, n, scale, out, &mut [], &mut []) },
                _ => attend_impl(q, k, v, n, scale, out, &mut [], &mut []),
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
                    attend_avx512(q, k, v, n, scale, out, kb, vb)
                },
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2 => unsafe {
                    let (k, v) =
                        (F16Rows::<WidenF16c> { data: k, stride, d, widen: WidenF16c }, F16Rows { data: v, stride, d, widen: WidenF16c });
                    attend_avx2(q, k, v, n, scale, out, kb, vb)
                },
                _ => {
                    let (k, v) =
                        (F16Rows { data: k, stride, d, widen: WidenPortable }, F16Rows { data: v, stride, d, widen: WidenPortable });
                    attend_impl(q, k, v, n, scale, out, kb, vb)
                }
            }
        }
        _ => panic!("attend: keys and values must be of one element type"),
    }
}

/// A block of positions as f32 rows: `(rows, stride)` with position `start + i` at
/// `rows[i * stride..i * stride + d]`, read in place or widened into `buf`.
trait Rows {
    /// Whether rows are widened (f16) rather than read in place.
    const WIDENS: bool;
    fn block<'s>(&'s self, start: usize, len: usize, buf: &'s mut [f32]) -> (&'s [f32], usize);
    /// Position `j`'s row of `D` values, read in place or widened into `buf`.
    fn row<'s, const D: usize>(&'s self, j: usize, buf: &'s mut [f32; D]) -> &'s [f32];
}

struct F32Rows<'a> {
    data: &'a [f32],
    stride: usize,
}

impl Rows for F32Rows<'_> {
    const WIDENS: bool = false;
    #[inline(always)]
    fn block<'s>(&'s self, start: usize, _len: usize, _buf: &'s mut [f32]) -> (&'s [f32], usize) {
        (&self.data[start * self.stride..], self.stride)
    }
    #[inline(always)]
    fn row<'s, const D: usize>(&'s self, j: usize, _buf: &'s mut [f32; D]) -> &'s [f32] {
        &self.data[j * self.stride..j * self.stride + D]
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
    const WIDENS: bool = true;
    #[inline(always)]
    fn block<'s>(&'s self, start: usize, len: usize, buf: &'s mut [f32]) -> (&'s [f32], usize) {
        let d = self.d;
        for (i, dst) in buf.chunks_exact_mut(d).take(len).enumerate() {
            let at = (start + i) * self.stride;
            self.widen.widen(&self.data[at..at + d], dst);
        }
        (buf, d)
    }
    #[inline(always)]
    fn row<'s, const D: usize>(&'s self, j: usize, buf: &'s mut [f32; D]) -> &'s [f32] {
        self.widen.widen(&self.data[j * self.stride..j * self.stride + D], buf);
        buf
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
    keys: K,
    values: V,
    n: usize,
    scale: f32,
    out: &mut [f32],
    kb: &mut [f32],
    vb: &mut [f32],
) {
    attend_impl(q, keys, values, n, scale, out, kb, vb)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2<K: Rows, V: Rows>(
    q: &[f32],
    keys: K,
    values: V,
    n: usize,
    scale: f32,
    out: &mut [f32],
    kb: &mut [f32],
    vb: &mut [f32],
) {
    attend_impl(q, keys, values, n, scale, out, kb, vb)
}

/// Written lane by lane (16 independent sums) so each target's vectoriser maps it onto its
/// registers. `kb`/`vb` hold one block of widened rows where the rows need widening. Widened
/// rows of the common head sizes run [`attend_fixed`], which keeps the accumulator and each
/// widened row in registers instead of storing and reloading them at every position (f32 rows,
/// read in place, measured no faster that way, and slower in batched decoding); the arithmetic
/// is the same.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_impl<K: Rows, V: Rows>(q: &[f32], keys: K, values: V, n: usize, scale: f32, out: &mut [f32], kb: &mut [f32], vb: &mut [f32]) {
    if !K::WIDENS {
        attend_into(q, keys, values, n, scale, out, kb, vb)
    } else if let (Ok(q), Ok(o)) = (<&[f32; 64]>::try_from(q), <&mut [f32; 64]>::try_from(&mut *out)) {
        *o = attend_fixed(q, &keys, &values, n, scale);
    } else if let (Ok(q), Ok(o)) = (<&[f32; 128]>::try_from(q), <&mut [f32; 128]>::try_from(&mut *out)) {
        *o = attend_fixed(q, &keys, &values, n, scale);
    } else {
        attend_into(q, keys, values, n, scale, out, kb, vb)
    }
}

#[inline(always)]
fn attend_fixed<const D: usize, K: Rows, V: Rows>(q: &[f32; D], keys: &K, values: &V, n: usize, scale: f32) -> [f32; D] {
    let mut out = [0f32; D];
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
    let mut scores = [0f32; BLOCK];
    let mut start = 0;
    while start < n {
        let len = (n - start).min(BLOCK);
        let mut block_max = f32::NEG_INFINITY;
        for (i, s) in scores.iter_mut().enumerate().take(len) {
            let mut buf = [0f32; D];
            *s = dot(q, keys.row(start + i, &mut buf)) * scale;
            block_max = block_max.max(*s);
        }
        if block_max > max {
            let c = if max == f32::NEG_INFINITY { 0.0 } else { (max - block_max).exp() };
            sum *= c;
            out.iter_mut().for_each(|o| *o *= c);
            max = block_max;
        }
        exp_shifted(&mut scores[..len], max);
        for (i, &p) in scores.iter().enumerate().take(len) {
            sum += p;
            let mut buf = [0f32; D];
            for (o, &vv) in out.iter_mut().zip(values.row(start + i, &mut buf)) {
                *o += p * vv;
            }
        }
        start += len;
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
    out
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_into<K: Rows, V: Rows>(q: &[f32], keys: K, values: V, n: usize, scale: f32, out: &mut [f32], kb: &mut [f32], vb: &mut [f32]) {
    let d = q.len();
    out.fill(0.0);
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
    let mut scores = [0f32; BLOCK];
    let mut start = 0;
    while start < n {
        let len = (n - start).min(BLOCK);
        let (kr, ks) = keys.block(start, len, kb);
        let mut block_max = f32::NEG_INFINITY;
        for (i, s) in scores.iter_mut().enumerate().take(len) {
            let k = &kr[i * ks..i * ks + d];
            *s = dot(q, k) * scale;
            block_max = block_max.max(*s);
        }
        if block_max > max {
            // Rescale what was accumulated under the old maximum.
            let c = if max == f32::NEG_INFINITY { 0.0 } else { (max - block_max).exp() };
            sum *= c;
            out.iter_mut().for_each(|o| *o *= c);
            max = block_max;
        }
        exp_shifted(&mut scores[..len], max);
        let (vr, vs) = values.block(start, len, vb);
        for (i, &p) in scores.iter().enumerate().take(len) {
            sum += p;
            let v = &vr[i * vs..i * vs + d];
            for (o, &vv) in out.iter_mut().zip(v) {
                *o += p * vv;
            }
        }
        start += len;
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = [0f32; 8];
    for l in 0..8 {
        s[l] = acc[l] + acc[l + 8];
    }
    (s[0] + s[4]) + (s[1] + s[5]) + (s[2] + s[6]) + (s[3] + s[7]) + tail
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
                let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
                let q: Vec<f32> = (0..d).map(|i| val(i + 3)).collect();
                let keys: Vec<f32> = (0..n * stride).map(|i| val(i * 3 + 1) * 2.0).collect();
                let values: Vec<f32> = (0..n * stride).map(|i| val(i * 5 + 2)).collect();
                let mut out = vec![0f32; d];
                attend(backend, &q, KvSlice::F32(&keys), KvSlice::F32(&values), n, stride, 0.3, &mut out);
                let s: Vec<f64> = (0..n).map(|j| (0..d).map(|c| q[c] as f64 * keys[j * stride + c] as f64).sum::<f64>() * 0.3).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let want: f64 = (0..n).map(|j| e[j] / z * values[j * stride + c] as f64).sum();
                    assert!((out[c] as f64 - want).abs() < 1e-5, "{} n={n} c={c}: {} vs {want}", backend.name(), out[c]);
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
                    let q: Vec<f32> = (0..d).map(|i| val(i + 3)).collect();
                    let k16: Vec<f16> = (0..n * stride).map(|i| f16::from_f32(val(i * 3 + 1) * 2.0)).collect();
                    let v16: Vec<f16> = (0..n * stride).map(|i| f16::from_f32(val(i * 5 + 2))).collect();
                    let (k32, v32): (Vec<f32>, Vec<f32>) =
                        (k16.iter().map(|x| x.to_f32()).collect(), v16.iter().map(|x| x.to_f32()).collect());
                    let (mut a, mut b) = (vec![0f32; d], vec![0f32; d]);
                    attend(backend, &q, KvSlice::F16(&k16), KvSlice::F16(&v16), n, stride, 0.3, &mut a);
                    attend(backend, &q, KvSlice::F32(&k32), KvSlice::F32(&v32), n, stride, 0.3, &mut b);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a), bits(&b), "{} d={d} n={n}", backend.name());
                }
            }
        }
    }

    /// The fixed-size path (head sizes 64 and 128) computes what the general one does, bit for
    /// bit, so decoding is unchanged by which one runs.
    #[test]
    fn fixed_head_sizes_equal_the_general_path_bit_for_bit() {
        for (d, stride) in [(64usize, 64usize), (64, 192), (128, 136)] {
            for n in [1usize, 31, 32, 65, 300] {
                let val = |i: usize| (((i * 7919 + 13) % 1000) as f32 / 250.0) - 2.0;
                let q: Vec<f32> = (0..d).map(|i| val(i + 5)).collect();
                let keys: Vec<f32> = (0..n * stride).map(|i| val(i * 3 + 1)).collect();
                let values: Vec<f32> = (0..n * stride).map(|i| val(i * 11 + 2)).collect();
                let mut general = vec![0f32; d];
                let (k, v) = (F32Rows { data: &keys, stride }, F32Rows { data: &values, stride });
                let fixed: Vec<f32> = match d {
                    64 => attend_fixed::<64, _, _>(q.as_slice().try_into().unwrap(), &k, &v, n, 0.125).to_vec(),
                    _ => attend_fixed::<128, _, _>(q.as_slice().try_into().unwrap(), &k, &v, n, 0.125).to_vec(),
                };
                attend_into(
                    &q,
                    F32Rows { data: &keys, stride },
                    F32Rows { data: &values, stride },
                    n,
                    0.125,
                    &mut general,
                    &mut [],
                    &mut [],
                );
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fixed), bits(&general), "d={d} n={n}");
            }
        }
    }
}
