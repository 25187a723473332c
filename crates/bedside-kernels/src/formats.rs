//! GGML block layouts of the weight types, and their dequantization (the reference every kernel
//! is tested against).
//!
//! | type | block | bytes | layout |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | `d: f16, qs: [u8; 16]`; value `(nibble - 8)·d`, low nibbles first |
//! | Q4_1 | 32 | 20 | `d: f16, m: f16, qs: [u8; 16]`; value `nibble·d + m` |
//! | Q8_0 | 32 | 34 | `d: f16, qs: [i8; 32]` |
//! | Q4_K | 256 | 144 | `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; 8 sub-blocks of 32 with 6-bit scale and min |
//! | Q5_K | 256 | 176 | as Q4_K plus `qh: [u8; 32]` (the fifth bit) before `qs` |
//! | Q6_K | 256 | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; 16 sub-blocks of 16, value `(q - 32)·d·scale` |

use half::f16;

/// A weight type the kernels multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// How the activation rows multiplied with a weight type are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActLayout {
    /// 32-value blocks with one scale (ggml's Q8_0 and Q8_1: the same values, Q8_1 adds the sum).
    Blocks32,
    /// 256-value super-blocks with an f32 scale and 16 partial sums (ggml's Q8_K).
    Blocks256,
}

impl QType {
    pub const ALL: [QType; 6] = [QType::Q4_0, QType::Q4_1, QType::Q8_0, QType::Q4K, QType::Q5K, QType::Q6K];

    /// Values per block.
    pub const fn block_len(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => 32,
            QType::Q4K | QType::Q5K | QType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q8_0 => 34,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
        }
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of [`QType::block_len`]).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// The activation quantization this type is multiplied with (as llama.cpp pairs them).
    pub const fn act_layout(self) -> ActLayout {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q8_0 => ActLayout::Blocks32,
            QType::Q4K | QType::Q5K | QType::Q6K => ActLayout::Blocks256,
        }
    }

    /// The ggml name (`Q4_1`, `Q4_K`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            QType::Q4_0 => "Q4_0",
            QType::Q4_1 => "Q4_1",
            QType::Q8_0 => "Q8_0",
            QType::Q4K => "Q4_K",
            QType::Q5K => "Q5_K",
            QType::Q6K => "Q6_K",
        }
    }
}

impl ActLayout {
    /// Values per activation block.
    pub const fn block_len(self) -> usize {
        match self {
            ActLayout::Blocks32 => 32,
            ActLayout::Blocks256 => 256,
        }
    }
}

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K/Q5_K block: six bits
/// each, the first four pairs in the low bits of bytes 0..8, the last four split over bytes 8..12
/// and the top bits of bytes 0..8.
#[inline(always)]
pub(crate) fn k4_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// All eight scales (bytes 0..8) and mins (bytes 8..16) of a Q4_K/Q5_K block from its 12 packed
/// bytes, unpacked four at a time with masks and shifts (as llama.cpp does; equal to
/// [`k4_scale_min`] for every `j`).
#[inline(always)]
pub(crate) fn k4_unpack(packed: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let u = [word(0), word(4), word(8)];
    let scales_lo = u[0] & KMASK1;
    let scales_hi = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    let mins_lo = u[1] & KMASK1;
    let mins_hi = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let mut out = [0u8; 16];
    for (o, v) in out.chunks_exact_mut(4).zip([scales_lo, scales_hi, mins_lo, mins_hi]) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K block.
#[inline(always)]
pub(crate) fn k4_scales_mins(scales: &[u8]) -> ([u8; 8], [u8; 8]) {
    let u = k4_unpack(scales);
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    sc.copy_from_slice(&u[..8]);
    mn.copy_from_slice(&u[8..]);
    (sc, mn)
}

/// The integer quant (before scales and offsets) of value `i` (0..256) of a K-quant block, and
/// the sub-block it belongs to: Q4_K/Q5_K values are unsigned (0..15 / 0..31, with a per-sub-block
/// min subtracted), Q6_K values are 0..63 with 32 subtracted.
#[inline(always)]
pub(crate) fn k_quant(ty: QType, block: &[u8], i: usize) -> u8 {
    match ty {
        QType::Q4K | QType::Q5K => {
            // Chunks of 64 values share 32 bytes of qs: low nibbles first, then high nibbles.
            let (chunk, l, high) = (i / 64, i % 32, (i % 64) >= 32);
            let qs = if ty == QType::Q4K { &block[16..] } else { &block[48..] };
            let byte = qs[chunk * 32 + l];
            let low4 = if high { byte >> 4 } else { byte & 0x0f };
            if ty == QType::Q4K {
                low4
            } else {
                let bit = (block[16 + l] >> (2 * chunk + high as usize)) & 1;
                low4 | (bit << 4)
            }
        }
        QType::Q6K => {
            // Halves of 128 values: ql 64 bytes, qh 32 bytes each; quarter q of the half.
            let (half, r) = (i / 128, i % 128);
            let (q, l) = (r / 32, r % 32);
            let ql = &block[half * 64..];
            let qh = &block[128 + half * 32..];
            let low4 = if q < 2 { ql[l + 32 * (q & 1)] & 0x0f } else { ql[l + 32 * (q & 1)] >> 4 };
            low4 | (((qh[l] >> (2 * q)) & 3) << 4)
        }
        _ => unreachable!("k_quant on a 32-value type"),
    }
}

/// Row `bytes` (a whole number of blocks of `ty`) dequantized into `out`.
pub fn dequantize_row(ty: QType, bytes: &[u8], out: &mut [f32]) {
    let bl = ty.block_len();
    assert_eq!(
        bytes.len(),
        out.len() / bl * ty.block_bytes(),
        "dequantize_row: {} bytes for {} values of {}",
        bytes.len(),
        out.len(),
        ty.name()
    );
    assert_eq!(out.len() % bl, 0, "dequantize_row: {} values is not a whole number of {} blocks", out.len(), ty.name());
    for (b, y) in bytes.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(bl)) {
        match ty {
            QType::Q4_0 => {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0x0f) as f32 - 8.0) * d;
                    y[j + 16] = ((b[2 + j] >> 4) as f32 - 8.0) * d;
                }
            }
            QType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0x0f) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
            QType::Q8_0 => {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = b[2 + j] as i8 as f32 * d;
                }
            }
            QType::Q4K | QType::Q5K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                for (i, v) in y.iter_mut().enumerate() {
                    let (sc, m) = k4_scale_min(&b[4..16], i / 32);
                    *v = d * sc as f32 * k_quant(ty, b, i) as f32 - dmin * m as f32;
                }
            }
            QType::Q6K => {
                let d = f16_at(b, 208);
                for (i, v) in y.iter_mut().enumerate() {
                    let sc = b[192 + i / 16] as i8;
                    *v = d * sc as f32 * (k_quant(ty, b, i) as i32 - 32) as f32;
                }
            }
        }
    }
}

/// A quantized weight matrix `[rows, cols]` in GGML's row-major block layout, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    ty: QType,
    data: &'a [u8],
    rows: usize,
    cols: usize,
}

impl<'a> QMatrix<'a> {
    /// A view of `data` as `rows × cols` values of `ty`; `None` (with the reason) when the sizes
    /// do not fit.
    pub fn new(ty: QType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self, String> {
        if !cols.is_multiple_of(ty.block_len()) {
            return Err(format!("{} rows of {cols} values are not whole {}-value blocks", ty.name(), ty.block_len()));
        }
        let want = rows * ty.row_bytes(cols);
        if data.len() != want {
            return Err(format!("a {rows} × {cols} {} matrix has {want} bytes, got {}", ty.name(), data.len()));
        }
        Ok(Self { ty, data, rows, cols })
    }
    pub fn ty(&self) -> QType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols)
    }
    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
    /// Rows `start..start + len` dequantized into `out` (`len × cols`, row-major).
    pub fn dequantize_rows(&self, start: usize, len: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        dequantize_row(self.ty, &self.data[start * rb..(start + len) * rb], &mut out[..len * self.cols]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time unpacking equals the per-index definition on every byte pattern of
    /// each position.
    #[test]
    fn k4_unpack_matches_the_definition() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut packed = [0u8; 12];
            for b in packed.iter_mut() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *b = (state >> 56) as u8;
            }
            let u = k4_unpack(&packed);
            for j in 0..8 {
                assert_eq!((u[j], u[8 + j]), k4_scale_min(&packed, j), "{packed:?} j={j}");
            }
        }
    }
}
