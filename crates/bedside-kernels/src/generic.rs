//! Portable kernels: the integer sums of each block in plain Rust, one weight row against up to
//! [`TILE`] activation rows. Every SIMD path computes these same sums.

use crate::activations::Activations;
use crate::formats::{f16_at, k4_scales_mins, k_quant, QType};
use crate::TILE;

/// Dot products of one weight row (`w`, whole blocks of `ty`) with activation rows
/// `r0..r0 + nr` (`nr <= TILE`), into `out[..nr]`.
pub(crate) fn row_dot(ty: QType, w: &[u8], x: &Activations, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    for (t, o) in out.iter_mut().enumerate().take(nr) {
        *o = match ty {
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => dot32(ty, w, x, r0 + t),
            QType::Q4K | QType::Q5K | QType::Q6K => dot256(ty, w, x, r0 + t),
        };
    }
}

fn dot32(ty: QType, w: &[u8], x: &Activations, r: usize) -> f32 {
    let q = x.row_qs(r);
    let per_row = x.cols() / 32;
    let mut acc = 0f32;
    for (b, wb) in w.chunks_exact(ty.block_bytes()).enumerate() {
        let a = &q[32 * b..32 * (b + 1)];
        let i = r * per_row + b;
        acc += match ty {
            QType::Q4_0 => {
                let mut s = 0i32;
                for j in 0..16 {
                    s += ((wb[2 + j] & 0x0f) as i32 - 8) * a[j] as i32 + ((wb[2 + j] >> 4) as i32 - 8) * a[j + 16] as i32;
                }
                f16_at(wb, 0) * x.ds_min[2 * i] * s as f32
            }
            QType::Q4_1 => {
                let mut s = 0i32;
                for j in 0..16 {
                    s += (wb[4 + j] & 0x0f) as i32 * a[j] as i32 + (wb[4 + j] >> 4) as i32 * a[j + 16] as i32;
                }
                f16_at(wb, 0) * x.ds_min[2 * i] * s as f32 + f16_at(wb, 2) * x.ds_min[2 * i + 1]
            }
            QType::Q8_0 => {
                let s: i32 = (0..32).map(|j| wb[2 + j] as i8 as i32 * a[j] as i32).sum();
                f16_at(wb, 0) * x.ds_min[2 * i] * s as f32
            }
            _ => unreachable!(),
        };
    }
    acc
}

fn dot256(ty: QType, w: &[u8], x: &Activations, r: usize) -> f32 {
    let q = x.row_qs(r);
    let per_row = x.cols() / 256;
    let mut acc = 0f32;
    for (b, wb) in w.chunks_exact(ty.block_bytes()).enumerate() {
        let a = &q[256 * b..256 * (b + 1)];
        let i = r * per_row + b;
        let (da, bsums) = (x.d[i], &x.bsums[16 * i..16 * (i + 1)]);
        acc += match ty {
            QType::Q4K | QType::Q5K => {
                let (sc, mn) = k4_scales_mins(&wb[4..16]);
                let (mut sum, mut mins) = (0i32, 0i32);
                for j in 0..8 {
                    let s: i32 = (32 * j..32 * (j + 1)).map(|v| k_quant(ty, wb, v) as i32 * a[v] as i32).sum();
                    sum += sc[j] as i32 * s;
                    mins += mn[j] as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32);
                }
                da * f16_at(wb, 0) * sum as f32 - da * f16_at(wb, 2) * mins as f32
            }
            QType::Q6K => {
                let mut sum = 0i32;
                for j in 0..16 {
                    let sc = wb[192 + j] as i8 as i32;
                    let s: i32 = (16 * j..16 * (j + 1)).map(|v| k_quant(ty, wb, v) as i32 * a[v] as i32).sum();
                    sum += sc * (s - 32 * bsums[j] as i32);
                }
                da * f16_at(wb, 208) * sum as f32
            }
            _ => unreachable!(),
        };
    }
    acc
}

/// Dot products of one dense f32 weight row with activation rows `r0..r0 + nr` of `x`
/// (`cols` values each), into `out[..nr]`.
pub(crate) fn dense_row_dot(w: &[f32], x: &[f32], cols: usize, r0: usize, nr: usize, out: &mut [f32; TILE]) {
    for (t, o) in out.iter_mut().enumerate().take(nr) {
        let xr = &x[(r0 + t) * cols..(r0 + t + 1) * cols];
        // Eight partial sums: independent chains the compiler can keep in registers.
        let mut acc = [0f32; 8];
        let (wc, xc) = (w.chunks_exact(8), xr.chunks_exact(8));
        let (wt, xt) = (wc.remainder(), xc.remainder());
        for (a, b) in wc.zip(xc) {
            for l in 0..8 {
                acc[l] += a[l] * b[l];
            }
        }
        let tail: f32 = wt.iter().zip(xt).map(|(a, b)| a * b).sum();
        *o = acc.iter().sum::<f32>() + tail;
    }
}
