//! AVX-512 kernels (F, BW, VL; VNNI when `VNNI`): two 32-value blocks, or half a K-quant
//! sub-block row, per 512-bit register.
//!
//! Unsigned weight quants (4/5/6-bit, or Q8_0 shifted by 128) times signed activation quants are
//! summed four at a time into 32-bit lanes: `vpdpbusd` with VNNI, `vpmaddubsw` + `vpmaddwd`
//! without (safe from 16-bit saturation for quants below 64). Offsets the unsigned form adds
//! (Q4_0's 8, Q8_0's 128, K-quant mins, Q6_K's 32) are taken back out through the activation
//! sums. Per-block float scales are applied to a whole register of lanes at once, so there is one
//! horizontal sum per output.

// Tiles index their per-row accumulators, scales and pointers by row in parallel arrays.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::activations::Activations;
use crate::formats::QType;
use crate::TILE;

/// Dispatch one weight row against `nr` activation rows.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, F16C and FMA (and VNNI when `VNNI`); `w` must be one
/// row of whole blocks of `ty` for `x`'s column count, and `r0 + nr <= x.rows()`.
pub(crate) unsafe fn row_dot<const VNNI: bool>(ty: QType, w: &[u8], x: &Activations, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if VNNI {
            row_dot_vnni(ty, w, x, r0, nr, out)
        } else {
            row_dot_bw(ty, w, x, r0, nr, out)
        }
    }
}

// The kernels below are `#[inline(always)]` without target features of their own: each is
// compiled into these two entry points, once with VNNI and once without.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn row_dot_vnni(ty: QType, w: &[u8], x: &Activations, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    // SAFETY: forwarded from `row_dot`.
    unsafe { dispatch::<true>(ty, w, x, r0, nr, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn row_dot_bw(ty: QType, w: &[u8], x: &Activations, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    // SAFETY: forwarded from `row_dot`.
    unsafe { dispatch::<false>(ty, w, x, r0, nr, out) }
}

#[inline(always)]
unsafe fn dispatch<const VNNI: bool>(ty: QType, w: &[u8], x: &Activations, r0: usize, nr: usize, out: &mut [f32; TILE]) {
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
    // SAFETY: forwarded from `row_dot`.
    unsafe {
        match ty {
            QType::Q4_0 => tiles!(N => blocks32::<Q4_0, N, VNNI>(w, x, r0, out)),
            QType::Q4_1 => tiles!(N => blocks32::<Q4_1, N, VNNI>(w, x, r0, out)),
            QType::Q8_0 if VNNI => tiles!(N => blocks32::<Q8_0Shifted, N, VNNI>(w, x, r0, out)),
            QType::Q8_0 => tiles!(N => q8_0_signed::<N>(w, x, r0, out)),
            QType::Q4K => tiles!(N => q4k_like::<N, false>(w, x, r0, out)),
            QType::Q5K => tiles!(N => q4k_like::<N, true>(w, x, r0, out)),
            QType::Q6K => tiles!(N => q6k::<N>(w, x, r0, out)),
        }
    }
}

/// `Σ` of unsigned `w` bytes times signed `a` bytes, four products per 32-bit lane.
#[inline(always)]
unsafe fn dot_u8i8<const VNNI: bool>(w: __m512i, a: __m512i) -> __m512i {
    unsafe {
        if VNNI {
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a)
        } else {
            _mm512_madd_epi16(_mm512_maddubs_epi16(w, a), _mm512_set1_epi16(1))
        }
    }
}

#[inline(always)]
unsafe fn read_u32(p: *const u8) -> i32 {
    unsafe { (p as *const i32).read_unaligned() }
}

/// The 16-bit word at `p` in both halves of a 32-bit word.
#[inline(always)]
unsafe fn dup_u16(p: *const u8) -> i32 {
    unsafe { ((p as *const u16).read_unaligned() as u32 * 0x10001) as i32 }
}

/// The 32 nibbles of two Q4 blocks' `qs` (16 bytes each, at `p` and `p + stride`) as 64 bytes in
/// value order: block 0 values 0..32, then block 1's.
#[inline(always)]
unsafe fn nibbles_2blocks(p: *const u8, stride: usize) -> __m512i {
    unsafe {
        let q = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(p as *const __m128i)),
            _mm_loadu_si128(p.add(stride) as *const __m128i),
        );
        let m = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(q, m);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m);
        // [lo0 lo1 hi0 hi1] -> [lo0 hi0 lo1 hi1]
        let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z)
    }
}

/// The 32 nibbles of one Q4 block's `qs` as 32 bytes in value order.
#[inline(always)]
unsafe fn nibbles_1block(p: *const u8) -> __m256i {
    unsafe {
        let q = _mm_loadu_si128(p as *const __m128i);
        let m = _mm_set1_epi8(0x0f);
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(_mm_and_si128(q, m)), _mm_and_si128(_mm_srli_epi16::<4>(q), m))
    }
}

#[inline(always)]
unsafe fn hsum_i32_256(v: __m256i) -> i32 {
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)))
    }
}

#[inline(always)]
unsafe fn dot_u8i8_256<const VNNI: bool>(w: __m256i, a: __m256i) -> __m256i {
    unsafe {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
        }
    }
}

/// How one 32-value block type is read: two blocks' quants as unsigned bytes in value order
/// (`unpack`, and `unpack1` for a single block), and the f16 words `[s0, t0, s1, t1]` whose
/// products with the activation's `[d, extra]` pairs (from `act_ds`) give each block's
/// `d_w · d_a` (lanes 0, 2) and additive term (lanes 1, 3).
trait Blocks32 {
    const BYTES: usize;
    fn act_ds(x: &Activations) -> &[f32];
    unsafe fn unpack(p: *const u8) -> __m512i;
    unsafe fn unpack1(p: *const u8) -> __m256i;
    unsafe fn scales(p: *const u8) -> __m128i;
}

/// Q4_1: nibbles times the activation, plus the block min times the activation's `s`.
struct Q4_1;
impl Blocks32 for Q4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    fn act_ds(x: &Activations) -> &[f32] {
        &x.ds_min
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> __m512i {
        unsafe { nibbles_2blocks(p.add(4), 20) }
    }
    #[inline(always)]
    unsafe fn unpack1(p: *const u8) -> __m256i {
        unsafe { nibbles_1block(p.add(4)) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m128i {
        // [d0, m0, d1, m1] times the activation's [d, s].
        unsafe { _mm_set_epi32(0, 0, read_u32(p.add(20)), read_u32(p)) }
    }
}

/// Q4_0: nibbles times the activation; their offset of 8 comes back through `-8·d·Σq`.
struct Q4_0;
impl Blocks32 for Q4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    fn act_ds(x: &Activations) -> &[f32] {
        &x.ds_off8
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> __m512i {
        unsafe { nibbles_2blocks(p.add(2), 18) }
    }
    #[inline(always)]
    unsafe fn unpack1(p: *const u8) -> __m256i {
        unsafe { nibbles_1block(p.add(2)) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m128i {
        unsafe { _mm_set_epi32(0, 0, dup_u16(p.add(18)), dup_u16(p)) }
    }
}

/// Q8_0 for `vpdpbusd`: signed weights shifted to unsigned (`w + 128`), the shift taken back
/// out through `-128·d·Σq`.
struct Q8_0Shifted;
impl Blocks32 for Q8_0Shifted {
    const BYTES: usize = 34;
    #[inline(always)]
    fn act_ds(x: &Activations) -> &[f32] {
        &x.ds_off128
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> __m512i {
        unsafe {
            let z = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(p.add(2) as *const __m256i)),
                _mm256_loadu_si256(p.add(36) as *const __m256i),
            );
            _mm512_xor_si512(z, _mm512_set1_epi8(-128))
        }
    }
    #[inline(always)]
    unsafe fn unpack1(p: *const u8) -> __m256i {
        unsafe { _mm256_xor_si256(_mm256_loadu_si256(p.add(2) as *const __m256i), _mm256_set1_epi8(-128)) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m128i {
        unsafe { _mm_set_epi32(0, 0, dup_u16(p.add(34)), dup_u16(p)) }
    }
}

/// The loop of the 32-value block types: two blocks per step.
#[inline(always)]
unsafe fn blocks32<K: Blocks32, const NR: usize, const VNNI: bool>(w: &[u8], x: &Activations, r0: usize, out: &mut [f32; TILE]) {
    unsafe {
        let nb = w.len() / K::BYTES;
        let cols = x.cols();
        let per_row = cols / 32;
        let act_ds = K::act_ds(x);
        let wp = w.as_ptr();
        let mut acc = [_mm512_setzero_ps(); NR];
        let mut extra = [_mm_setzero_ps(); NR];
        let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut b = 0;
        while b + 2 <= nb {
            let p = wp.add(b * K::BYTES);
            let wz = K::unpack(p);
            let ws = _mm_cvtph_ps(K::scales(p));
            for t in 0..NR {
                let r = r0 + t;
                let a = _mm512_loadu_si512(x.qs.as_ptr().add(r * cols + 32 * b) as *const __m512i);
                let s = dot_u8i8::<VNNI>(wz, a);
                let sc = _mm_mul_ps(ws, _mm_loadu_ps(act_ds.as_ptr().add(2 * (r * per_row + b))));
                extra[t] = _mm_add_ps(extra[t], sc);
                let scz = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scz, acc[t]);
            }
            b += 2;
        }
        let mut tail = [0f32; NR];
        if b < nb {
            let p = wp.add(b * K::BYTES);
            let wy = K::unpack1(p);
            let mut ws = [0f32; 4];
            _mm_storeu_ps(ws.as_mut_ptr(), _mm_cvtph_ps(K::scales(p)));
            for (t, tl) in tail.iter_mut().enumerate() {
                let r = r0 + t;
                let a = _mm256_loadu_si256(x.qs.as_ptr().add(r * cols + 32 * b) as *const __m256i);
                let s = hsum_i32_256(dot_u8i8_256::<VNNI>(wy, a));
                let i = 2 * (r * per_row + b);
                *tl = ws[0] * act_ds[i] * s as f32 + ws[1] * act_ds[i + 1];
            }
        }
        for t in 0..NR {
            let mut e = [0f32; 4];
            _mm_storeu_ps(e.as_mut_ptr(), extra[t]);
            out[t] = _mm512_reduce_add_ps(acc[t]) + e[1] + e[3] + tail[t];
        }
    }
}

/// Q8_0 without VNNI: `vpmaddubsw` would saturate on `w + 128`, so the sign of each weight moves
/// onto its activation instead (`|w| · ±a`), as llama.cpp's AVX2 path does.
#[inline(always)]
unsafe fn q8_0_signed<const NR: usize>(w: &[u8], x: &Activations, r0: usize, out: &mut [f32; TILE]) {
    unsafe {
        let nb = w.len() / 34;
        let cols = x.cols();
        let per_row = cols / 32;
        let wp = w.as_ptr();
        let mut acc = [_mm512_setzero_ps(); NR];
        let mut tail = [0f32; NR];
        let ones = _mm512_set1_epi16(1);
        let mut b = 0;
        while b + 2 <= nb {
            let p = wp.add(b * 34);
            let wz = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(p.add(2) as *const __m256i)),
                _mm256_loadu_si256(p.add(36) as *const __m256i),
            );
            let neg = _mm512_movepi8_mask(wz);
            let aw = _mm512_abs_epi8(wz);
            let (d0, d1) = (f16_at(p), f16_at(p.add(34)));
            for t in 0..NR {
                let r = r0 + t;
                let a = _mm512_loadu_si512(x.qs.as_ptr().add(r * cols + 32 * b) as *const __m512i);
                let sa = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
                let s = _mm512_madd_epi16(_mm512_maddubs_epi16(aw, sa), ones);
                let i = r * per_row + b;
                let sc = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(d0 * x.ds_min[2 * i]), _mm512_set1_ps(d1 * x.ds_min[2 * i + 2]));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[t]);
            }
            b += 2;
        }
        if b < nb {
            let p = wp.add(b * 34);
            for (t, tl) in tail.iter_mut().enumerate() {
                let r = r0 + t;
                let a = x.qs.as_ptr().add(r * cols + 32 * b);
                let s: i32 = (0..32).map(|j| *p.add(2 + j) as i8 as i32 * *a.add(j) as i32).sum();
                *tl = f16_at(p) * x.ds_min[2 * (r * per_row + b)] * s as f32;
            }
        }
        for t in 0..NR {
            out[t] = _mm512_reduce_add_ps(acc[t]) + tail[t];
        }
    }
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    unsafe { half::f16::from_bits((p as *const u16).read_unaligned()).to_f32() }
}

/// Lanes `[j × 16, (j + 1) × 16]` of 16-bit values: the index pattern that spreads sub-block
/// scales `j` and `j + 1` over the 32-value halves of a register.
#[inline(always)]
unsafe fn pair_index(j: i16) -> __m512i {
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi16(j)), _mm256_set1_epi16(j + 1)) }
}

/// Lanes `[j × 8, (j + 1) × 8, (j + 2) × 8, (j + 3) × 8]` of 16-bit values (Q6_K's 16-value
/// sub-blocks, four per register).
#[inline(always)]
unsafe fn quad_index(j: i16) -> __m512i {
    unsafe {
        let lo = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(_mm_set1_epi16(j)), _mm_set1_epi16(j + 1));
        let hi = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(_mm_set1_epi16(j + 2)), _mm_set1_epi16(j + 3));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// Q4_K and Q5_K: each 64-byte step of `qs` holds sub-blocks `4c, 4c + 2` in its low nibbles
/// and `4c + 1, 4c + 3` in its high ones; Q5_K adds bit `j` of each `qh` byte as 16 to
/// sub-block `j`. Products are summed per sub-block in 16 bits, times the 6-bit scales, into 32.
#[inline(always)]
unsafe fn q4k_like<const NR: usize, const Q5: bool>(w: &[u8], x: &Activations, r0: usize, out: &mut [f32; TILE]) {
    unsafe {
        let bytes = if Q5 { 176 } else { 144 };
        let qs_at = if Q5 { 48 } else { 16 };
        let nb = w.len() / bytes;
        let cols = x.cols();
        let per_row = cols / 256;
        let wp = w.as_ptr();
        let m4 = _mm512_set1_epi8(0x0f);
        let idx = [pair_index(0), pair_index(2), pair_index(4), pair_index(6)];
        let mut acc = [_mm512_setzero_ps(); NR];
        let mut mins_acc = [0f32; NR];
        for b in 0..nb {
            let p = wp.add(b * bytes);
            let (d, dmin) = (f16_at(p), f16_at(p.add(2)));
            let sm = crate::formats::k4_unpack(std::slice::from_raw_parts(p.add(4), 12));
            let sm_v = _mm_loadu_si128(sm.as_ptr() as *const __m128i);
            // Scales as 16-bit values in lanes 0..8 (mins in 8..16, unused there).
            let sm16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm_v));
            // Registers of sub-blocks (0, 1), (2, 3), (4, 5), (6, 7) as unsigned bytes in value order.
            let mut wz = [_mm512_setzero_si512(); 4];
            for c in 0..2 {
                let q = _mm512_loadu_si512(p.add(qs_at + 64 * c) as *const __m512i);
                let lo = _mm512_and_si512(q, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
                wz[2 * c] = _mm512_shuffle_i64x2::<0b01_00_01_00>(lo, hi);
                wz[2 * c + 1] = _mm512_shuffle_i64x2::<0b11_10_11_10>(lo, hi);
            }
            if Q5 {
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16) as *const __m256i));
                let sixteen = _mm512_set1_epi8(16);
                for (k, wk) in wz.iter_mut().enumerate() {
                    let bits = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_set1_epi8((1u8 << (2 * k)) as i8)),
                        _mm256_set1_epi8((1u8 << (2 * k + 1)) as i8),
                    );
                    *wk = _mm512_mask_add_epi8(*wk, _mm512_test_epi8_mask(qh, bits), *wk, sixteen);
                }
            }
            let scv = [
                _mm512_permutexvar_epi16(idx[0], sm16),
                _mm512_permutexvar_epi16(idx[1], sm16),
                _mm512_permutexvar_epi16(idx[2], sm16),
                _mm512_permutexvar_epi16(idx[3], sm16),
            ];
            // Each min twice, against the activation's 16 partial sums.
            let mins16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm_v, sm_v));
            for t in 0..NR {
                let r = r0 + t;
                let i = r * per_row + b;
                let a = x.qs.as_ptr().add(r * cols + 256 * b);
                let mut s = _mm512_setzero_si512();
                for k in 0..4 {
                    let av = _mm512_loadu_si512(a.add(64 * k) as *const __m512i);
                    s = _mm512_add_epi32(s, _mm512_madd_epi16(_mm512_maddubs_epi16(wz[k], av), scv[k]));
                }
                let da = x.d[i];
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(da * d), acc[t]);
                let bs = _mm256_loadu_si256(x.bsums.as_ptr().add(16 * i) as *const __m256i);
                mins_acc[t] += da * dmin * hsum_i32_256(_mm256_madd_epi16(mins16, bs)) as f32;
            }
        }
        for t in 0..NR {
            out[t] = _mm512_reduce_add_ps(acc[t]) - mins_acc[t];
        }
    }
}

/// Q6_K: per 128-value half, 64 bytes of low nibbles and 32 bytes of 2-bit high parts make
/// registers of values 0..64 and 64..128; 16 signed 8-bit scales of 16 values each; the quants'
/// offset of 32 comes back through the activation's partial sums.
#[inline(always)]
unsafe fn q6k<const NR: usize>(w: &[u8], x: &Activations, r0: usize, out: &mut [f32; TILE]) {
    unsafe {
        let nb = w.len() / 210;
        let cols = x.cols();
        let per_row = cols / 256;
        let wp = w.as_ptr();
        let m4 = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi8(0x30);
        // Per 64-bit lane rotations that bring qh bit pairs (0,1) (2,3) | (4,5) (6,7) to bits 4, 5.
        let rot_lo = _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4);
        let rot_hi = _mm512_set_epi64(62, 62, 62, 62, 0, 0, 0, 0);
        let idx = [quad_index(0), quad_index(4), quad_index(8), quad_index(12)];
        let mut acc = [_mm512_setzero_ps(); NR];
        let mut off_acc = [0f32; NR];
        for b in 0..nb {
            let p = wp.add(b * 210);
            let d = f16_at(p.add(208));
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
            let sc16z = _mm512_castsi256_si512(sc16);
            let mut wz = [_mm512_setzero_si512(); 4];
            for h in 0..2 {
                let ql = _mm512_loadu_si512(p.add(64 * h) as *const __m512i);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i));
                let lo = _mm512_and_si512(ql, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4);
                wz[2 * h] = _mm512_or_si512(lo, _mm512_and_si512(_mm512_rolv_epi64(qh, rot_lo), m30));
                wz[2 * h + 1] = _mm512_or_si512(hi, _mm512_and_si512(_mm512_rolv_epi64(qh, rot_hi), m30));
            }
            let scv = [
                _mm512_permutexvar_epi16(idx[0], sc16z),
                _mm512_permutexvar_epi16(idx[1], sc16z),
                _mm512_permutexvar_epi16(idx[2], sc16z),
                _mm512_permutexvar_epi16(idx[3], sc16z),
            ];
            for t in 0..NR {
                let r = r0 + t;
                let i = r * per_row + b;
                let a = x.qs.as_ptr().add(r * cols + 256 * b);
                let mut s = _mm512_setzero_si512();
                for k in 0..4 {
                    let av = _mm512_loadu_si512(a.add(64 * k) as *const __m512i);
                    s = _mm512_add_epi32(s, _mm512_madd_epi16(_mm512_maddubs_epi16(wz[k], av), scv[k]));
                }
                let da = x.d[i];
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(da * d), acc[t]);
                let bs = _mm256_loadu_si256(x.bsums.as_ptr().add(16 * i) as *const __m256i);
                off_acc[t] += da * d * (32 * hsum_i32_256(_mm256_madd_epi16(sc16, bs))) as f32;
            }
        }
        for t in 0..NR {
            out[t] = _mm512_reduce_add_ps(acc[t]) - off_acc[t];
        }
    }
}

/// Dense f32 rows: 16-wide FMAs, four accumulators per activation row.
///
/// # Safety
/// AVX-512 F and FMA; `w.len() == cols`, `x` holds rows `r0..r0 + nr` of `cols` values.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn dense_row_dot(w: &[f32], x: &[f32], cols: usize, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    unsafe {
        for (t, o) in out.iter_mut().enumerate().take(nr) {
            let xr = x.as_ptr().add((r0 + t) * cols);
            let wp = w.as_ptr();
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut k = 0;
            while k + 64 <= cols {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(k + 16 * u)), _mm512_loadu_ps(xr.add(k + 16 * u)), *a);
                }
                k += 64;
            }
            while k + 16 <= cols {
                acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(k)), _mm512_loadu_ps(xr.add(k)), acc[0]);
                k += 16;
            }
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
            while k < cols {
                s += *wp.add(k) * *xr.add(k);
                k += 1;
            }
            *o = s;
        }
    }
}
