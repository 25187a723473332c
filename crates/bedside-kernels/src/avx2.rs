//! AVX2 kernels: one 32-value block (or one K-quant sub-block of 32 values) per 256-bit
//! register, unsigned weight quants times signed activation quants with `vpmaddubsw` +
//! `vpmaddwd` (Q8_0's signed weights through the sign trick), as in the AVX-512 kernels.

// Tiles index their per-row accumulators, scales and pointers by row in parallel arrays.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::activations::Activations;
use crate::formats::QType;
use crate::TILE;

/// Dispatch one weight row against `nr` activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must be one row of whole blocks of `ty` for
/// `x`'s column count, and `r0 + nr <= x.rows()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn row_dot(ty: QType, w: &[u8], x: &Activations, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    macro_rules! tiles {
        ($n:ident => $e:expr) => {
            match nr {
                1 => { const $n: usize = 1; $e }
                2 => { const $n: usize = 2; $e }
                3 => { const $n: usize = 3; $e }
                _ => { const $n: usize = 4; $e }
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        match ty {
            QType::Q4_0 => tiles!(N => blocks32::<Q4_0, N>(w, x, r0, out)),
            QType::Q4_1 => tiles!(N => blocks32::<Q4_1, N>(w, x, r0, out)),
            QType::Q8_0 => tiles!(N => blocks32::<Q8_0, N>(w, x, r0, out)),
            QType::Q4K => tiles!(N => q4k_like::<N, false>(w, x, r0, out)),
            QType::Q5K => tiles!(N => q4k_like::<N, true>(w, x, r0, out)),
            QType::Q6K => tiles!(N => q6k::<N>(w, x, r0, out)),
        }
    }
}

#[inline(always)]
unsafe fn read_u32(p: *const u8) -> i32 {
    unsafe { (p as *const i32).read_unaligned() }
}

#[inline(always)]
unsafe fn read_u16(p: *const u8) -> i32 {
    unsafe { (p as *const u16).read_unaligned() as i32 }
}

/// The 16-bit word at `p` in both halves of a 32-bit word.
#[inline(always)]
unsafe fn dup_u16(p: *const u8) -> i32 {
    unsafe { ((p as *const u16).read_unaligned() as u32 * 0x10001) as i32 }
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    unsafe { half::f16::from_bits((p as *const u16).read_unaligned()).to_f32() }
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)))
    }
}

#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

/// The 32 nibbles of a Q4 block's `qs` as 32 bytes in value order.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    unsafe {
        let q = _mm_loadu_si128(p as *const __m128i);
        let m = _mm_set1_epi8(0x0f);
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(_mm_and_si128(q, m)), _mm_and_si128(_mm_srli_epi16::<4>(q), m))
    }
}

/// One 32-value block type: its quants in a form `vpmaddubsw` can take (`weights`), the
/// activation made to match (`act`, Q8_0's sign trick), and the f16 words `[s, t]` whose products
/// with the activation's `[d, extra]` give `d_w · d_a` and the block's additive term.
trait Blocks32 {
    const BYTES: usize;
    fn act_ds(x: &Activations) -> &[f32];
    unsafe fn weights(p: *const u8) -> __m256i;
    #[inline(always)]
    unsafe fn act(_w_raw: *const u8, a: __m256i) -> __m256i {
        a
    }
    unsafe fn scales(p: *const u8) -> __m128i;
}

struct Q4_1;
impl Blocks32 for Q4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    fn act_ds(x: &Activations) -> &[f32] {
        &x.ds_min
    }
    #[inline(always)]
    unsafe fn weights(p: *const u8) -> __m256i {
        unsafe { nibbles(p.add(4)) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m128i {
        unsafe { _mm_cvtsi32_si128(read_u32(p)) }
    }
}

struct Q4_0;
impl Blocks32 for Q4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    fn act_ds(x: &Activations) -> &[f32] {
        &x.ds_off8
    }
    #[inline(always)]
    unsafe fn weights(p: *const u8) -> __m256i {
        unsafe { nibbles(p.add(2)) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m128i {
        unsafe { _mm_cvtsi32_si128(dup_u16(p)) }
    }
}

/// Q8_0: `|w|` times `a` with the sign of `w` (`vpsignb`), no offset to take out: `[d, 0]`.
struct Q8_0;
impl Blocks32 for Q8_0 {
    const BYTES: usize = 34;
    #[inline(always)]
    fn act_ds(x: &Activations) -> &[f32] {
        &x.ds_min
    }
    #[inline(always)]
    unsafe fn weights(p: *const u8) -> __m256i {
        unsafe {
            let w = _mm256_loadu_si256(p.add(2) as *const __m256i);
            _mm256_sign_epi8(w, w)
        }
    }
    #[inline(always)]
    unsafe fn act(w_raw: *const u8, a: __m256i) -> __m256i {
        unsafe { _mm256_sign_epi8(a, _mm256_loadu_si256(w_raw.add(2) as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m128i {
        unsafe { _mm_cvtsi32_si128(read_u16(p)) }
    }
}

#[inline(always)]
unsafe fn blocks32<K: Blocks32, const NR: usize>(w: &[u8], x: &Activations, r0: usize, out: &mut [f32; TILE]) {
    unsafe {
        let nb = w.len() / K::BYTES;
        let cols = x.cols();
        let per_row = cols / 32;
        let act_ds = K::act_ds(x);
        let wp = w.as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); NR];
        let mut extra = [_mm_setzero_ps(); NR];
        for b in 0..nb {
            let p = wp.add(b * K::BYTES);
            let wy = K::weights(p);
            let ws = _mm_cvtph_ps(K::scales(p));
            for t in 0..NR {
                let r = r0 + t;
                let a = K::act(p, _mm256_loadu_si256(x.qs.as_ptr().add(r * cols + 32 * b) as *const __m256i));
                let s = _mm256_madd_epi16(_mm256_maddubs_epi16(wy, a), ones);
                let ad = _mm_castpd_ps(_mm_load_sd(act_ds.as_ptr().add(2 * (r * per_row + b)) as *const f64));
                let sc = _mm_mul_ps(ws, ad);
                extra[t] = _mm_add_ps(extra[t], sc);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_broadcastss_ps(sc), acc[t]);
            }
        }
        for t in 0..NR {
            let mut e = [0f32; 4];
            _mm_storeu_ps(e.as_mut_ptr(), extra[t]);
            out[t] = hsum_ps(acc[t]) + e[1];
        }
    }
}

/// `_mm256_shuffle_epi8` masks that spread 16-bit lane `j` of a 128-bit register over all of
/// the low half and lane `k` over the high half.
#[inline(always)]
unsafe fn spread16(j: i8, k: i8) -> __m256i {
    unsafe {
        let lo = _mm_set1_epi16(((2 * j + 1) as i16) << 8 | (2 * j) as i16);
        let hi = _mm_set1_epi16(((2 * k + 1) as i16) << 8 | (2 * k) as i16);
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi)
    }
}

/// Q4_K and Q5_K: each 32 bytes of `qs` hold sub-block `2c` in its low nibbles and `2c + 1` in
/// its high ones; Q5_K adds bit `j` of each `qh` byte as 16 to sub-block `j`.
#[inline(always)]
unsafe fn q4k_like<const NR: usize, const Q5: bool>(w: &[u8], x: &Activations, r0: usize, out: &mut [f32; TILE]) {
    unsafe {
        let bytes = if Q5 { 176 } else { 144 };
        let qs_at = if Q5 { 48 } else { 16 };
        let nb = w.len() / bytes;
        let cols = x.cols();
        let per_row = cols / 256;
        let wp = w.as_ptr();
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); NR];
        let mut mins_acc = [0f32; NR];
        for b in 0..nb {
            let p = wp.add(b * bytes);
            let (d, dmin) = (f16_at(p), f16_at(p.add(2)));
            let sm = crate::formats::k4_unpack(std::slice::from_raw_parts(p.add(4), 12));
            let sm_v = _mm_loadu_si128(sm.as_ptr() as *const __m128i);
            // Scales as 16-bit values, in both halves.
            let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm_v));
            let mins16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm_v, sm_v));
            let qh = if Q5 { _mm256_loadu_si256(p.add(16) as *const __m256i) } else { _mm256_setzero_si256() };
            let mut wy = [_mm256_setzero_si256(); 8];
            for c in 0..4 {
                let q = _mm256_loadu_si256(p.add(qs_at + 32 * c) as *const __m256i);
                wy[2 * c] = _mm256_and_si256(q, m4);
                wy[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            }
            if Q5 {
                for (j, wj) in wy.iter_mut().enumerate() {
                    let bit = _mm256_set1_epi8((1u8 << j) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    *wj = _mm256_or_si256(*wj, _mm256_and_si256(set, _mm256_set1_epi8(16)));
                }
            }
            let mut scv = [_mm256_setzero_si256(); 8];
            for (j, s) in scv.iter_mut().enumerate() {
                *s = _mm256_shuffle_epi8(sc, spread16(j as i8, j as i8));
            }
            for t in 0..NR {
                let r = r0 + t;
                let i = r * per_row + b;
                let a = x.qs.as_ptr().add(r * cols + 256 * b);
                let mut s = _mm256_setzero_si256();
                for j in 0..8 {
                    let av = _mm256_loadu_si256(a.add(32 * j) as *const __m256i);
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(wy[j], av), scv[j]));
                }
                let da = x.d[i];
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(da * d), acc[t]);
                let bs = _mm256_loadu_si256(x.bsums.as_ptr().add(16 * i) as *const __m256i);
                mins_acc[t] += da * dmin * hsum_i32(_mm256_madd_epi16(mins16, bs)) as f32;
            }
        }
        for t in 0..NR {
            out[t] = hsum_ps(acc[t]) - mins_acc[t];
        }
    }
}

/// Q6_K: per 128-value half, two registers of low nibbles and one of 2-bit high parts give four
/// registers of 32 values; the quants' offset of 32 comes back through the partial sums.
#[inline(always)]
unsafe fn q6k<const NR: usize>(w: &[u8], x: &Activations, r0: usize, out: &mut [f32; TILE]) {
    unsafe {
        let nb = w.len() / 210;
        let cols = x.cols();
        let per_row = cols / 256;
        let wp = w.as_ptr();
        let m4 = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        let masks = [spread16(0, 1), spread16(2, 3), spread16(4, 5), spread16(6, 7)];
        let mut acc = [_mm256_setzero_ps(); NR];
        let mut off_acc = [0f32; NR];
        for b in 0..nb {
            let p = wp.add(b * 210);
            let d = f16_at(p.add(208));
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
            let mut wy = [_mm256_setzero_si256(); 8];
            let mut scv = [_mm256_setzero_si256(); 8];
            for h in 0..2 {
                let l0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
                let l1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
                wy[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30));
                wy[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30));
                wy[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), _mm256_and_si256(qh, m30));
                wy[4 * h + 3] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30));
                let half_scales =
                    _mm256_broadcastsi128_si256(if h == 0 { _mm256_castsi256_si128(sc16) } else { _mm256_extracti128_si256::<1>(sc16) });
                for (q, m) in masks.iter().enumerate() {
                    scv[4 * h + q] = _mm256_shuffle_epi8(half_scales, *m);
                }
            }
            for t in 0..NR {
                let r = r0 + t;
                let i = r * per_row + b;
                let a = x.qs.as_ptr().add(r * cols + 256 * b);
                let mut s = _mm256_setzero_si256();
                for j in 0..8 {
                    let av = _mm256_loadu_si256(a.add(32 * j) as *const __m256i);
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(wy[j], av), scv[j]));
                }
                let da = x.d[i];
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(da * d), acc[t]);
                let bs = _mm256_loadu_si256(x.bsums.as_ptr().add(16 * i) as *const __m256i);
                off_acc[t] += da * d * (32 * hsum_i32(_mm256_madd_epi16(sc16, bs))) as f32;
            }
        }
        for t in 0..NR {
            out[t] = hsum_ps(acc[t]) - off_acc[t];
        }
    }
}

/// Dense f32 rows: 8-wide FMAs, four accumulators per activation row.
///
/// # Safety
/// AVX2 and FMA; `w.len() == cols`, `x` holds rows `r0..r0 + nr` of `cols` values.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dense_row_dot(w: &[f32], x: &[f32], cols: usize, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    unsafe {
        for (t, o) in out.iter_mut().enumerate().take(nr) {
            let xr = x.as_ptr().add((r0 + t) * cols);
            let wp = w.as_ptr();
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut k = 0;
            while k + 32 <= cols {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(k + 8 * u)), _mm256_loadu_ps(xr.add(k + 8 * u)), *a);
                }
                k += 32;
            }
            while k + 8 <= cols {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(k)), _mm256_loadu_ps(xr.add(k)), acc[0]);
                k += 8;
            }
            let mut s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
            while k < cols {
                s += *wp.add(k) * *xr.add(k);
                k += 1;
            }
            *o = s;
        }
    }
}
