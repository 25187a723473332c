//! The fused CPU decode step against the composed path it replaces: the same logits, step after
//! step through the cache, for left-padded batches, with LoRA branches left unmerged, on f32
//! and on quantized weights.

use bedside_model::{load_gguf, load_hf_dir, Cache, LoadOptions, Logits, LoraBranch, Model};
use candle_core::{Device, Tensor};

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    bedside_testutil::lcg_values(n, seed).into_iter().map(|v| v * scale).collect()
}

/// Prompts of different lengths, left-padded, then `steps` decode steps feeding fixed tokens;
/// the logits of every step, from the fused step (`fused`) or the composed path.
fn run(model: &Model, prompts: &[Vec<u32>], steps: usize, fused: bool) -> Vec<Vec<Vec<f32>>> {
    // A clone shares the weights; only the setting differs.
    let mut model = model.clone();
    model.set_fused_decode(fused);
    let model = &model;
    let max = prompts.iter().map(Vec::len).max().unwrap();
    let pads: Vec<usize> = prompts.iter().map(|p| max - p.len()).collect();
    let flat: Vec<u32> = prompts.iter().flat_map(|p| std::iter::repeat_n(0, max - p.len()).chain(p.iter().copied())).collect();
    let mut cache = Cache::with_padding(model, pads);
    let b = prompts.len();
    model.forward(&Tensor::from_vec(flat, (b, max), &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last).unwrap();
    let before = cache.fused_steps();
    let mut out = Vec::new();
    for step in 0..steps {
        let next: Vec<u32> = (0..b).map(|r| (17 + 31 * r + 7 * step) as u32).collect();
        let l = model.forward(&Tensor::from_vec(next, (b, 1), &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last).unwrap();
        out.push(l.to_vec2::<f32>().unwrap());
    }
    assert_eq!(
        cache.fused_steps() - before,
        if fused { steps as u64 } else { 0 },
        "fused = {fused}: the fused step ran the wrong number of times"
    );
    out
}

fn max_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> (f32, f32) {
    let (mut d, mut m) = (0f32, 0f32);
    for (sa, sb) in a.iter().zip(b) {
        for (ra, rb) in sa.iter().zip(sb) {
            for (x, y) in ra.iter().zip(rb) {
                d = d.max((x - y).abs());
                m = m.max(y.abs());
            }
        }
    }
    (d, m)
}

#[test]
fn fused_decode_equals_the_composed_path_on_f32_weights_with_lora_branches() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else {
        return;
    };
    let mut model = load_hf_dir(&dir, &LoadOptions::default()).unwrap();
    let prompts = vec![vec![5u32, 9, 200, 31, 7, 8, 99], vec![3, 4], vec![11, 12, 13, 14]];
    let plain = (run(&model, &prompts, 5, true), run(&model, &prompts, 5, false));
    let (d, m) = max_diff(&plain.0, &plain.1);
    assert!(d < 1e-4 * m.max(1.0), "plain model: fused vs composed differ by {d} (max |logit| {m})");
    // Branches on some projections (two on one of them), none on the others.
    for (i, (name, lin)) in model.linears_mut().into_iter().enumerate() {
        if name.ends_with("k_proj") || name.ends_with("up_proj") {
            continue;
        }
        let (o, inp) = (lin.out_dim(), lin.in_dim());
        let branches = if name.ends_with("v_proj") { 2 } else { 1 };
        for j in 0..branches {
            let r = 4;
            let seed = (i * 10 + j) as u64;
            lin.lora.push(LoraBranch {
                a: Tensor::from_vec(values(r * inp, seed, 0.3), (r, inp), &Device::Cpu).unwrap(),
                b: Tensor::from_vec(values(o * r, seed + 5, 0.3), (o, r), &Device::Cpu).unwrap(),
                scale: 1.5,
                dropout: 0.1,
                rows: None,
            });
        }
    }
    let lora = (run(&model, &prompts, 5, true), run(&model, &prompts, 5, false));
    let (d, m) = max_diff(&lora.0, &lora.1);
    assert!(d < 1e-4 * m.max(1.0), "with LoRA: fused vs composed differ by {d} (max |logit| {m})");
    // The branches matter: the logits moved.
    let (moved, _) = max_diff(&lora.0, &plain.0);
    assert!(moved > 1e-2, "LoRA branches changed the logits by only {moved}");

    // A server mixing adapters in one batch limits branches to rows: the fused step applies each
    // to its rows only (rows 0 and 2; row 1; none), as the composed path does.
    let limits: [&[u32]; 3] = [&[0, 2], &[1], &[]];
    for (i, (_, lin)) in model.linears_mut().into_iter().enumerate() {
        for (j, br) in lin.lora.iter_mut().enumerate() {
            let sel = limits[(i + j) % limits.len()];
            br.rows = Some(Tensor::new(sel, &Device::Cpu).unwrap());
        }
    }
    let limited = (run(&model, &prompts, 5, true), run(&model, &prompts, 5, false));
    let (d, m) = max_diff(&limited.0, &limited.1);
    assert!(d < 1e-4 * m.max(1.0), "with row-limited LoRA: fused vs composed differ by {d} (max |logit| {m})");
    for r in 0..prompts.len() {
        let row = |x: &[Vec<Vec<f32>>]| -> Vec<Vec<Vec<f32>>> { x.iter().map(|s| vec![s[r].clone()]).collect() };
        let (from_all, _) = max_diff(&row(&limited.0), &row(&lora.0));
        assert!(from_all > 1e-3, "row {r}: limiting the branches changed nothing ({from_all})");
    }
}

/// SmolLM2's own shapes (grouped-query heads 9:3, head_dim 64, rotary base 1e5), dequantized so
/// the comparison is exact up to f32 rounding.
#[test]
fn fused_decode_equals_the_composed_path_on_the_default_model_dequantized() {
    let Some(path) = bedside_testutil::smollm2_gguf() else {
        return;
    };
    let (model, _) = load_gguf(&path, &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    for prompts in [vec![PROMPTS[0].to_vec()], PROMPTS.iter().map(|p| p.to_vec()).collect()] {
        let (d, m) = max_diff(&run(&model, &prompts, 4, true), &run(&model, &prompts, 4, false));
        assert!(d < 1e-5 * m, "{} rows: fused vs composed differ by {d} (max |logit| {m})", prompts.len());
    }
}

const PROMPTS: [&[u32]; 3] = [&[1, 504, 3575, 282, 4649, 314, 7042, 30, 2, 57, 5248], &[57, 5248, 588], &[4875, 338, 30, 657, 506, 4036]];

/// On quantized weights every projection's input is rounded to 8 bits, so the two paths agree
/// bit for bit until some activation lands on the other side of a rounding boundary (their f32
/// attention and norms add in different orders); SmolLM2's outlier activations make one such
/// flip worth up to about a logit, the size of the gap between llama.cpp and the f32 model
/// (see `parity.rs`). Bounded here: the typical logit, the worst one, and most greedy choices.
#[test]
fn fused_decode_stays_close_to_the_composed_path_on_quantized_weights() {
    let Some(path) = bedside_testutil::smollm2_gguf() else {
        return;
    };
    let (model, _) = load_gguf(&path, &LoadOptions::default()).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| p.to_vec()).collect();
    let fused = run(&model, &prompts, 4, true);
    let composed = run(&model, &prompts, 4, false);
    let (d, m) = max_diff(&fused, &composed);
    let (mut sum, mut n, mut same, mut rows) = (0f64, 0usize, 0, 0);
    let am = |r: &Vec<f32>| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|x| x.0);
    for (sf, sc) in fused.iter().zip(&composed) {
        for (rf, rc) in sf.iter().zip(sc) {
            sum += rf.iter().zip(rc).map(|(a, b)| (a - b).abs() as f64).sum::<f64>();
            n += rf.len();
            same += (am(rf) == am(rc)) as usize;
            rows += 1;
        }
    }
    let mean = sum / n as f64;
    // Control: the same measure between consecutive steps (other inputs) is far above the bound.
    let (mut csum, mut cn) = (0f64, 0usize);
    for (sf, sc) in fused.iter().zip(composed.iter().skip(1)) {
        for (rf, rc) in sf.iter().zip(sc) {
            csum += rf.iter().zip(rc).map(|(a, b)| (a - b).abs() as f64).sum::<f64>();
            cn += rf.len();
        }
    }
    let control = csum / cn as f64;
    eprintln!("quantized: fused vs composed max |Δlogit| {d}, mean {mean:.4} (control {control:.3}; max |logit| {m}); greedy agrees on {same}/{rows}");
    assert!(control > 1.0, "the control differs by only {control}");
    assert!(d < 1.5 && mean < 0.2, "fused vs composed: max |Δ| {d}, mean {mean}");
    assert!(same * 10 >= rows * 9, "greedy agrees on only {same} of {rows}");
}
