//! Every kernel on every backend this CPU runs, against dequantize-then-f64 on odd shapes: block
//! counts 1..=5 (odd and even, so the two-block steps have tails), 1..=9 activation rows (every
//! remainder of the four-row tiles), weights of 1..=41 rows split over threads.

use bedside_kernels::{
    dequantize_row, matmul, ActLayout, Activations, Backend, DenseMatrix, Input, Job, Parallel, QMatrix, QType, Serial, Weight,
};

/// Deterministic pseudo-random numbers (a fixed LCG, so failures reproduce).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 40) as u8
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 29) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn f16_bytes(&mut self, lo: f32, hi: f32) -> [u8; 2] {
        let v = lo + (hi - lo) * (self.unit() * 0.5 + 0.5);
        half::f16::from_f32(v).to_bits().to_le_bytes()
    }
}

/// Random but well-formed blocks: any quant bytes, scales of realistic magnitude (signed where
/// the format allows it, so sign handling is exercised).
fn random_row(ty: QType, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let nb = cols / ty.block_len();
    let mut out = Vec::with_capacity(ty.row_bytes(cols));
    for _ in 0..nb {
        let mut b: Vec<u8> = (0..ty.block_bytes()).map(|_| rng.byte()).collect();
        match ty {
            QType::Q4_0 | QType::Q8_0 => b[..2].copy_from_slice(&rng.f16_bytes(-0.05, 0.05)),
            QType::Q4_1 => {
                b[..2].copy_from_slice(&rng.f16_bytes(0.0, 0.02));
                b[2..4].copy_from_slice(&rng.f16_bytes(-0.15, 0.0));
            }
            QType::Q4K | QType::Q5K => {
                b[..2].copy_from_slice(&rng.f16_bytes(0.0, 0.004));
                b[2..4].copy_from_slice(&rng.f16_bytes(0.0, 0.004));
            }
            QType::Q6K => b[208..210].copy_from_slice(&rng.f16_bytes(-0.002, 0.002)),
        }
        out.extend_from_slice(&b);
    }
    out
}

/// Runs tasks on scoped threads, interleaved, to catch tasks that write outside their columns.
struct Threads(usize);

impl Parallel for Threads {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|s| {
            for t in 0..self.0 {
                s.spawn(move || (t..n).step_by(self.0).for_each(task));
            }
        });
    }
}

fn input<'a>(x: &'a [f32], acts: &'a Activations, rows: usize, cols: usize) -> Input<'a> {
    Input {
        rows,
        cols,
        f32: Some(x),
        blocks32: (acts.layout() == ActLayout::Blocks32).then_some(acts),
        blocks256: (acts.layout() == ActLayout::Blocks256).then_some(acts),
    }
}

/// `x · Wᵀ` in f64 from the dequantized weight and the dequantized activation quants, and the
/// sum of |terms| (the scale the kernels' f32 rounding is measured against).
fn reference(w: &QMatrix, acts: &Activations) -> (Vec<f64>, Vec<f64>) {
    let (n, k, m) = (w.rows(), w.cols(), acts.rows());
    let mut wd = vec![0f32; n * k];
    w.dequantize_rows(0, n, &mut wd);
    let mut xd = vec![0f32; k];
    let (mut want, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
    for r in 0..m {
        acts.dequantize_row(r, &mut xd);
        for j in 0..n {
            for c in 0..k {
                let t = wd[j * k + c] as f64 * xd[c] as f64;
                want[r * n + j] += t;
                mag[r * n + j] += t.abs();
            }
            if w.ty() == QType::Q4_1 {
                // ggml's Q4_1 · Q8_1: the min times the activation's f16-rounded `d·Σq` instead
                // of the sum of its dequantized values.
                for (b, block) in w.row(j).chunks_exact(20).enumerate() {
                    let m = half::f16::from_le_bytes([block[2], block[3]]).to_f64();
                    let dequantized: f64 = xd[32 * b..32 * (b + 1)].iter().map(|&v| v as f64).sum();
                    want[r * n + j] += m * (acts.block_sum(r, b) as f64 - dequantized);
                }
            }
        }
    }
    (want, mag)
}

fn check(backend: Backend, ty: QType, n: usize, nb: usize, m: usize, par: &dyn Parallel, seed: u64) {
    let mut rng = Rng(seed);
    let k = nb * ty.block_len();
    let data: Vec<u8> = (0..n).flat_map(|_| random_row(ty, k, &mut rng)).collect();
    let w = QMatrix::new(ty, &data, n, k).unwrap();
    let x: Vec<f32> = (0..m * k).map(|_| rng.unit() * 3.0).collect();
    let mut acts = Activations::new(ty.act_layout());
    acts.quantize(&x, m, k);
    let (want, mag) = reference(&w, &acts);
    // Start from garbage: every output must be written.
    let mut out = vec![f32::NAN; m * n];
    matmul(backend, par, input(&x, &acts, m, k), &mut [Job { weight: Weight::Quantized(w), out: &mut out, accumulate: false }]).unwrap();
    for i in 0..m * n {
        let err = (out[i] as f64 - want[i]).abs();
        assert!(
            err <= 2e-6 * mag[i] + 1e-6,
            "{} {}: n={n} blocks={nb} m={m}: out[{}][{}] = {} but the dequantized product is {} (|terms| {})",
            backend.name(),
            ty.name(),
            i / n,
            i % n,
            out[i],
            want[i],
            mag[i]
        );
    }
    // Accumulating adds the same product onto what is there.
    let mut acc = vec![1.5f32; m * n];
    matmul(backend, par, input(&x, &acts, m, k), &mut [Job { weight: Weight::Quantized(w), out: &mut acc, accumulate: true }]).unwrap();
    for i in 0..m * n {
        assert!((acc[i] - 1.5 - out[i]).abs() <= 1e-5 * (1.0 + out[i].abs()), "{} {} accumulate", backend.name(), ty.name());
    }
}

#[test]
fn every_backend_and_type_matches_the_dequantized_product_on_odd_shapes() {
    let backends = Backend::supported();
    eprintln!("backends: {:?}", backends.iter().map(|b| b.name()).collect::<Vec<_>>());
    for &backend in &backends {
        for ty in QType::ALL {
            for nb in 1..=5 {
                for m in 1..=9 {
                    check(backend, ty, 3, nb, m, &Serial, (nb * 31 + m) as u64);
                }
            }
            // Weights of every row count up to a few tasks' worth, split over threads.
            for n in [1, 2, 5, 16, 17, 33, 41] {
                check(backend, ty, n, 2, 5, &Threads(3), n as u64 + 1000);
            }
        }
    }
}

/// The backends agree with each other to f32 rounding on a realistic shape (SmolLM2's 576
/// columns, 18 blocks), so picking one at run time changes nothing measurable.
#[test]
fn backends_agree_on_a_model_sized_row() {
    for ty in QType::ALL {
        let k = if ty.block_len() == 32 { 576 } else { 1536 };
        let mut rng = Rng(ty as u64 + 7);
        let data: Vec<u8> = (0..8).flat_map(|_| random_row(ty, k, &mut rng)).collect();
        let w = QMatrix::new(ty, &data, 8, k).unwrap();
        let x: Vec<f32> = (0..2 * k).map(|_| rng.unit()).collect();
        let mut outs = Vec::new();
        for b in Backend::supported() {
            let mut out = vec![0f32; 16];
            bedside_kernels::matmul_f32(b, Weight::Quantized(w), &x, 2, &mut out).unwrap();
            outs.push((b, out));
        }
        let (b0, base) = &outs[0];
        for (b, o) in &outs[1..] {
            for (u, v) in base.iter().zip(o) {
                assert!((u - v).abs() <= 1e-4 * (1.0 + u.abs()), "{}: {} gives {u}, {} gives {v}", ty.name(), b0.name(), b.name());
            }
        }
    }
}

/// Quantizing the activation costs little: the product is within 1% of the exact f32 product
/// of the dequantized weight and the unquantized input.
#[test]
fn activation_quantization_error_is_small() {
    for ty in QType::ALL {
        let k = 512;
        let mut rng = Rng(99 + ty as u64);
        let data: Vec<u8> = (0..4).flat_map(|_| random_row(ty, k, &mut rng)).collect();
        let w = QMatrix::new(ty, &data, 4, k).unwrap();
        let x: Vec<f32> = (0..k).map(|_| rng.unit()).collect();
        let mut out = vec![0f32; 4];
        bedside_kernels::matmul_f32(Backend::detected(), Weight::Quantized(w), &x, 1, &mut out).unwrap();
        let mut wd = vec![0f32; 4 * k];
        w.dequantize_rows(0, 4, &mut wd);
        for j in 0..4 {
            let exact: f64 = (0..k).map(|c| wd[j * k + c] as f64 * x[c] as f64).sum();
            let mag: f64 = (0..k).map(|c| (wd[j * k + c] as f64 * x[c] as f64).abs()).sum();
            assert!((out[j] as f64 - exact).abs() < 0.01 * mag, "{}: {} vs exact {exact}", ty.name(), out[j]);
        }
    }
}

/// llama.cpp's rounding of activations: 32-value blocks scaled by max|x|/127 (kept as f16), ties
/// to even; 256-value blocks scaled by -max/127 with the sign of the largest value, clamped at 127.
#[test]
fn activation_rounding_is_llama_cpp_s() {
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5; // a tie: rounds to 2
    x[2] = -3.5; // rounds to -4
    x[3] = 0.49;
    let mut a = Activations::new(ActLayout::Blocks32);
    a.quantize(&x, 1, 32);
    let mut back = vec![0f32; 32];
    a.dequantize_row(0, &mut back);
    assert_eq!(&back[..4], &[127.0, 2.0, -4.0, 0.0]);

    // Largest magnitude -127/64: scale 1/64 exactly, its quant -127; 62.5/64 is a tie -> 62.
    let mut y = vec![0f32; 256];
    y[5] = -127.0 / 64.0;
    y[6] = 62.5 / 64.0;
    y[7] = 63.5 / 64.0;
    let mut b = Activations::new(ActLayout::Blocks256);
    b.quantize(&y, 1, 256);
    let mut back = vec![0f32; 256];
    b.dequantize_row(0, &mut back);
    let q: Vec<f32> = back[5..8].iter().map(|v| v * 64.0).collect();
    assert_eq!(q, vec![-127.0, 62.0, 64.0]);
}

/// The dense f32 kernel (merged or f32 models) against a plain f64 product.
#[test]
fn dense_rows_match_a_plain_product() {
    for &backend in &Backend::supported() {
        for k in [1, 7, 16, 63, 64, 65, 200] {
            let mut rng = Rng(k as u64);
            let (n, m) = (11, 6);
            let w: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
            let mut out = vec![f32::NAN; m * n];
            let weight = Weight::Dense(DenseMatrix::new(&w, n, k).unwrap());
            matmul(
                backend,
                &Threads(2),
                Input { rows: m, cols: k, f32: Some(&x), blocks32: None, blocks256: None },
                &mut [Job { weight, out: &mut out, accumulate: false }],
            )
            .unwrap();
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|c| w[j * k + c] as f64 * x[r * k + c] as f64).sum();
                    assert!((out[r * n + j] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{} k={k}", backend.name());
                }
            }
        }
    }
}

/// Several weights sharing one input in one call give what separate calls give.
#[test]
fn fused_jobs_equal_separate_calls() {
    let mut rng = Rng(5);
    let k = 64;
    let q: Vec<u8> = (0..40).flat_map(|_| random_row(QType::Q4_1, k, &mut rng)).collect();
    let v: Vec<u8> = (0..12).flat_map(|_| random_row(QType::Q8_0, k, &mut rng)).collect();
    let (wq, wv) = (QMatrix::new(QType::Q4_1, &q, 40, k).unwrap(), QMatrix::new(QType::Q8_0, &v, 12, k).unwrap());
    let x: Vec<f32> = (0..3 * k).map(|_| rng.unit()).collect();
    let mut acts = Activations::new(ActLayout::Blocks32);
    acts.quantize(&x, 3, k);
    let (mut oq, mut ov) = (vec![0f32; 3 * 40], vec![0f32; 3 * 12]);
    let backend = Backend::detected();
    matmul(
        backend,
        &Threads(2),
        input(&x, &acts, 3, k),
        &mut [
            Job { weight: Weight::Quantized(wq), out: &mut oq, accumulate: false },
            Job { weight: Weight::Quantized(wv), out: &mut ov, accumulate: false },
        ],
    )
    .unwrap();
    let (mut sq, mut sv) = (vec![0f32; 3 * 40], vec![0f32; 3 * 12]);
    matmul(backend, &Serial, input(&x, &acts, 3, k), &mut [Job { weight: Weight::Quantized(wq), out: &mut sq, accumulate: false }])
        .unwrap();
    matmul(backend, &Serial, input(&x, &acts, 3, k), &mut [Job { weight: Weight::Quantized(wv), out: &mut sv, accumulate: false }])
        .unwrap();
    assert_eq!(oq, sq);
    assert_eq!(ov, sv);
}

/// Mismatched shapes are errors, not panics or wrong answers.
#[test]
fn shape_errors_are_reported() {
    assert!(QMatrix::new(QType::Q4_1, &[0u8; 40], 2, 33).is_err());
    assert!(QMatrix::new(QType::Q4_1, &[0u8; 39], 2, 32).is_err());
    let data = vec![0u8; 40];
    let w = QMatrix::new(QType::Q4_1, &data, 2, 32).unwrap();
    let x = vec![0f32; 64];
    let mut acts = Activations::new(ActLayout::Blocks32);
    acts.quantize(&x, 2, 32);
    let mut out = vec![0f32; 3];
    let err = matmul(
        Backend::Generic,
        &Serial,
        input(&x, &acts, 2, 32),
        &mut [Job { weight: Weight::Quantized(w), out: &mut out, accumulate: false }],
    )
    .unwrap_err();
    assert!(err.contains("output"), "{err}");
    let mut out = vec![0f32; 4];
    let none = Input { rows: 2, cols: 32, f32: Some(&x), blocks32: None, blocks256: None };
    let err =
        matmul(Backend::Generic, &Serial, none, &mut [Job { weight: Weight::Quantized(w), out: &mut out, accumulate: false }]).unwrap_err();
    assert!(err.contains("not given"), "{err}");
}

/// `dequantize_row` on hand-built blocks of each 32-value type (values worked out by hand).
#[test]
fn dequantize_known_blocks() {
    let h = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
    // Q4_0: d = 0.5, byte 0x1f: value 0 = (15 - 8)·0.5 = 3.5, value 16 = (1 - 8)·0.5 = -3.5.
    let mut b = vec![0u8; 18];
    b[..2].copy_from_slice(&h(0.5));
    b[2] = 0x1f;
    let mut y = vec![0f32; 32];
    dequantize_row(QType::Q4_0, &b, &mut y);
    assert_eq!((y[0], y[16], y[1]), (3.5, -3.5, -4.0));
    // Q4_1: d = 0.25, m = -1: nibble 4 -> 0.
    let mut b = vec![0u8; 20];
    b[..2].copy_from_slice(&h(0.25));
    b[2..4].copy_from_slice(&h(-1.0));
    b[4] = 0x04;
    dequantize_row(QType::Q4_1, &b, &mut y);
    assert_eq!((y[0], y[16]), (0.0, -1.0));
    // Q8_0: d = 2, q = -3 -> -6.
    let mut b = vec![0u8; 34];
    b[..2].copy_from_slice(&h(2.0));
    b[2] = (-3i8) as u8;
    dequantize_row(QType::Q8_0, &b, &mut y);
    assert_eq!(y[0], -6.0);
}

/// Quantizing rows on several threads gives what quantizing them on one does.
#[test]
fn parallel_quantization_equals_serial() {
    for layout in [ActLayout::Blocks32, ActLayout::Blocks256] {
        let (rows, cols) = (37, 512);
        let mut rng = Rng(11);
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        let (mut a, mut b) = (Activations::new(layout), Activations::new(layout));
        a.quantize(&x, rows, cols);
        b.quantize_on(&Threads(3), &x, rows, cols);
        let (mut ra, mut rb) = (vec![0f32; cols], vec![0f32; cols]);
        for r in 0..rows {
            a.dequantize_row(r, &mut ra);
            b.dequantize_row(r, &mut rb);
            assert_eq!(ra, rb, "{layout:?} row {r}");
            if layout == ActLayout::Blocks32 {
                assert_eq!(a.block_sum(r, 3), b.block_sum(r, 3));
            }
        }
        // Products through every weight type agree too (all the per-block sums are written).
        for ty in QType::ALL.into_iter().filter(|t| t.act_layout() == layout) {
            let data: Vec<u8> = (0..5).flat_map(|_| random_row(ty, cols, &mut rng)).collect();
            let w = QMatrix::new(ty, &data, 5, cols).unwrap();
            let (mut oa, mut ob) = (vec![0f32; rows * 5], vec![0f32; rows * 5]);
            matmul(
                Backend::detected(),
                &Serial,
                input(&x, &a, rows, cols),
                &mut [Job { weight: Weight::Quantized(w), out: &mut oa, accumulate: false }],
            )
            .unwrap();
            matmul(
                Backend::detected(),
                &Serial,
                input(&x, &b, rows, cols),
                &mut [Job { weight: Weight::Quantized(w), out: &mut ob, accumulate: false }],
            )
            .unwrap();
            assert_eq!(oa, ob, "{}", ty.name());
        }
    }
}
