//! One query head's attention over cached keys and values in a single pass (online softmax over
//! blocks of positions, so no score buffer the length of the context is written), the
//! exponentials computed a register at a time.

use crate::Backend;

/// Positions scored, exponentiated and accumulated together.
const BLOCK: usize = 32;

/// `out = Σ_j softmax_j(scale · q·k_j) · v_j` over `n` positions, position `j`'s key at
/// `keys[j * stride..j * stride + d]` and its value likewise in `values` (`d = q.len()`).
#[allow(clippy::too_many_arguments)]
pub fn attend(backend: Backend, q: &[f32], keys: &[f32], values: &[f32], n: usize, stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    assert!(out.len() == d && n > 0, "attend: {n} positions, out of {} for d {d}", out.len());
    assert!(keys.len() >= (n - 1) * stride + d && values.len() >= (n - 1) * stride + d, "attend: cache slices shorter than {n} positions");
    match backend {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: these backends exist only on CPUs with the features enabled below.
        Backend::Avx512 | Backend::Avx512Vnni => unsafe { attend_avx512(q, keys, values, n, stride, scale, out) },
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => unsafe { attend_avx2(q, keys, values, n, stride, scale, out) },
        _ => attend_impl(q, keys, values, n, stride, scale, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx512(q: &[f32], keys: &[f32], values: &[f32], n: usize, stride: usize, scale: f32, out: &mut [f32]) {
    attend_impl(q, keys, values, n, stride, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(q: &[f32], keys: &[f32], values: &[f32], n: usize, stride: usize, scale: f32, out: &mut [f32]) {
    attend_impl(q, keys, values, n, stride, scale, out)
}

/// Written lane by lane (16 independent sums) so each target's vectoriser maps it onto its
/// registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_impl(q: &[f32], keys: &[f32], values: &[f32], n: usize, stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    out.fill(0.0);
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
    let mut scores = [0f32; BLOCK];
    let mut start = 0;
    while start < n {
        let len = (n - start).min(BLOCK);
        let mut block_max = f32::NEG_INFINITY;
        for (i, s) in scores.iter_mut().enumerate().take(len) {
            let k = &keys[(start + i) * stride..(start + i) * stride + d];
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
        for (i, &p) in scores.iter().enumerate().take(len) {
            sum += p;
            let v = &values[(start + i) * stride..(start + i) * stride + d];
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
            for n in [1usize, 2, 31, 32, 33, 100] {
                let d = 24;
                let stride = 40;
                let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
                let q: Vec<f32> = (0..d).map(|i| val(i + 3)).collect();
                let keys: Vec<f32> = (0..n * stride).map(|i| val(i * 3 + 1) * 2.0).collect();
                let values: Vec<f32> = (0..n * stride).map(|i| val(i * 5 + 2)).collect();
                let mut out = vec![0f32; d];
                attend(backend, &q, &keys, &values, n, stride, 0.3, &mut out);
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
}
