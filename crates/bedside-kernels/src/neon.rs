//! aarch64 NEON kernels (Apple silicon, Graviton): sixteen 8-bit products per `smull`/`smlal`
//! pair into 16-bit lanes, widened into 32-bit sums per block (or K-quant sub-block); the block
//! scales are applied once per block.

// Tiles index their per-row accumulators, scales and pointers by row in parallel arrays.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;

use crate::activations::Activations;
use crate::formats::{f16_at, k4_unpack, QType};
use crate::TILE;

/// Dispatch one weight row against `nr` activation rows.
///
/// # Safety
/// The CPU must support NEON (every aarch64 CPU does); `w` must be one row of whole blocks of
/// `ty` for `x`'s column count, and `r0 + nr <= x.rows()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn row_dot(ty: QType, w: &[u8], x: &Activations, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        for (t, o) in out.iter_mut().enumerate().take(nr) {
            let r = r0 + t;
            *o = match ty {
                QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => dot32(ty, w, x, r),
                QType::Q4K | QType::Q5K => dot_q4k_like(ty == QType::Q5K, w, x, r),
                QType::Q6K => dot_q6k(w, x, r),
            };
        }
    }
}

/// `Σ w·a` over 16 signed bytes (weights below 128 in magnitude, so 16-bit pairs cannot overflow).
#[inline(always)]
unsafe fn dot16(w: int8x16_t, a: int8x16_t) -> int32x4_t {
    unsafe {
        let p = vmull_s8(vget_low_s8(w), vget_low_s8(a));
        let p = vmlal_s8(p, vget_high_s8(w), vget_high_s8(a));
        vpaddlq_s16(p)
    }
}

/// Low and high nibbles of 16 bytes.
#[inline(always)]
unsafe fn split_nibbles(q: uint8x16_t) -> (int8x16_t, int8x16_t) {
    unsafe { (vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(q))) }
}

#[inline(always)]
unsafe fn dot32(ty: QType, w: &[u8], x: &Activations, r: usize) -> f32 {
    unsafe {
        let cols = x.cols();
        let per_row = cols / 32;
        let bytes = ty.block_bytes();
        let mut acc = 0f32;
        for (b, wb) in w.chunks_exact(bytes).enumerate() {
            let a = x.qs.as_ptr().add(r * cols + 32 * b);
            let (a0, a1) = (vld1q_s8(a), vld1q_s8(a.add(16)));
            let i = r * per_row + b;
            let (d, da) = (f16_at(wb, 0), x.ds_min[2 * i]);
            acc += match ty {
                QType::Q4_0 => {
                    let (lo, hi) = split_nibbles(vld1q_u8(wb.as_ptr().add(2)));
                    let eight = vdupq_n_s8(8);
                    let s = vaddq_s32(dot16(vsubq_s8(lo, eight), a0), dot16(vsubq_s8(hi, eight), a1));
                    d * da * vaddvq_s32(s) as f32
                }
                QType::Q4_1 => {
                    let (lo, hi) = split_nibbles(vld1q_u8(wb.as_ptr().add(4)));
                    let s = vaddq_s32(dot16(lo, a0), dot16(hi, a1));
                    d * da * vaddvq_s32(s) as f32 + f16_at(wb, 2) * x.ds_min[2 * i + 1]
                }
                QType::Q8_0 => {
                    let p = wb.as_ptr().add(2) as *const i8;
                    // Products of two signed bytes reach 16384: sum pairs in 32 bits.
                    let (w0, w1) = (vld1q_s8(p), vld1q_s8(p.add(16)));
                    let s = vaddq_s32(wide_dot16(w0, a0), wide_dot16(w1, a1));
                    d * da * vaddvq_s32(s) as f32
                }
                _ => unreachable!(),
            };
        }
        acc
    }
}

/// `Σ w·a` over 16 signed bytes of any value, each product widened before it is added.
#[inline(always)]
unsafe fn wide_dot16(w: int8x16_t, a: int8x16_t) -> int32x4_t {
    unsafe {
        let lo = vmull_s8(vget_low_s8(w), vget_low_s8(a));
        let hi = vmull_s8(vget_high_s8(w), vget_high_s8(a));
        vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
    }
}

#[inline(always)]
unsafe fn dot_q4k_like(q5: bool, w: &[u8], x: &Activations, r: usize) -> f32 {
    unsafe {
        let (bytes, qs_at) = if q5 { (176, 48) } else { (144, 16) };
        let cols = x.cols();
        let per_row = cols / 256;
        let mut acc = 0f32;
        for (b, wb) in w.chunks_exact(bytes).enumerate() {
            let i = r * per_row + b;
            let a = x.qs.as_ptr().add(r * cols + 256 * b);
            let sm = k4_unpack(&wb[4..16]);
            let qh = if q5 { [vld1q_u8(wb.as_ptr().add(16)), vld1q_u8(wb.as_ptr().add(32))] } else { [vdupq_n_u8(0); 2] };
            let mut sum = 0i32;
            for c in 0..4 {
                let q = wb.as_ptr().add(qs_at + 32 * c);
                for (half, sub) in [(0usize, 2 * c), (1, 2 * c + 1)] {
                    let mut s = vdupq_n_s32(0);
                    for k in 0..2 {
                        let raw = vld1q_u8(q.add(16 * k));
                        let (lo, hi) = split_nibbles(raw);
                        let mut v = if half == 0 { lo } else { hi };
                        if q5 {
                            // Bit `sub` of each qh byte, as 16.
                            let bit = vandq_u8(vshlq_u8(qh[k], vdupq_n_s8(4 - sub as i8)), vdupq_n_u8(0x10));
                            v = vaddq_s8(v, vreinterpretq_s8_u8(bit));
                        }
                        s = vaddq_s32(s, dot16(v, vld1q_s8(a.add(32 * sub + 16 * k))));
                    }
                    sum += sm[sub] as i32 * vaddvq_s32(s);
                }
            }
            let bs = &x.bsums[16 * i..16 * (i + 1)];
            let mins: i32 = (0..8).map(|j| sm[8 + j] as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32)).sum();
            let da = x.d[i];
            acc += da * f16_at(wb, 0) * sum as f32 - da * f16_at(wb, 2) * mins as f32;
        }
        acc
    }
}

#[inline(always)]
unsafe fn dot_q6k(w: &[u8], x: &Activations, r: usize) -> f32 {
    unsafe {
        let cols = x.cols();
        let per_row = cols / 256;
        let mut acc = 0f32;
        for (b, wb) in w.chunks_exact(210).enumerate() {
            let i = r * per_row + b;
            let a = x.qs.as_ptr().add(r * cols + 256 * b);
            let mut sum = 0i32;
            for h in 0..2 {
                let ql = wb.as_ptr().add(64 * h);
                let qh = wb.as_ptr().add(128 + 32 * h);
                for k in 0..2 {
                    let l0 = vld1q_u8(ql.add(16 * k));
                    let l1 = vld1q_u8(ql.add(32 + 16 * k));
                    let hb = vld1q_u8(qh.add(16 * k));
                    let m4 = vdupq_n_u8(0x0f);
                    let m30 = vdupq_n_u8(0x30);
                    let quarters = [
                        vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8::<4>(hb), m30)),
                        vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8::<2>(hb), m30)),
                        vorrq_u8(vshrq_n_u8::<4>(l0), vandq_u8(hb, m30)),
                        vorrq_u8(vshrq_n_u8::<4>(l1), vandq_u8(vshrq_n_u8::<2>(hb), m30)),
                    ];
                    for (q, v) in quarters.into_iter().enumerate() {
                        // Values 128h + 32q + 16k .. + 16: one sub-block of 16.
                        let j = 8 * h + 2 * q + k;
                        let s = vaddvq_s32(dot16(vreinterpretq_s8_u8(v), vld1q_s8(a.add(16 * j))));
                        sum += wb[192 + j] as i8 as i32 * (s - 32 * x.bsums[16 * i + j] as i32);
                    }
                }
            }
            acc += x.d[i] * f16_at(wb, 208) * sum as f32;
        }
        acc
    }
}
