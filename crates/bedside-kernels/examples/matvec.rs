//! Micro-benchmark of the matrix-vector kernels: GB/s of weights streamed per backend and type.
//!   cargo run --release -p bedside-kernels --example matvec [ROWS] [COLS] [ACT_ROWS]
use bedside_kernels::*;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, k, m) = (args.first().copied().unwrap_or(8192), args.get(1).copied().unwrap_or(1536), args.get(2).copied().unwrap_or(1));
    let mut s = 1u64;
    for ty in QType::ALL {
        let mut data: Vec<u8> = (0..n * ty.row_bytes(k))
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                (s >> 56) as u8
            })
            .collect();
        // sane f16 scales: clear the top bits of every byte pair (keeps values finite)
        for b in data.iter_mut().skip(1).step_by(2) {
            *b &= 0x3b;
        }
        let w = QMatrix::new(ty, &data, n, k).unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32) / 500.0 - 1.0).collect();
        let mut acts = Activations::new(ty.act_layout());
        acts.quantize(&x, m, k);
        let mut out = vec![0f32; m * n];
        for b in Backend::supported() {
            let input = Input {
                rows: m,
                cols: k,
                f32: None,
                blocks32: (acts.layout() == ActLayout::Blocks32).then_some(&acts),
                blocks256: (acts.layout() == ActLayout::Blocks256).then_some(&acts),
            };
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                matmul(b, &Serial, input, &mut [Job { weight: Weight::Quantized(w), out: &mut out, accumulate: false }]).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{:5} {:12} {:7.2} GB/s  {:8.1} GMAC/s",
                ty.name(),
                b.name(),
                data.len() as f64 / best / 1e9,
                (n * k * m) as f64 / best / 1e9
            );
        }
    }
}
