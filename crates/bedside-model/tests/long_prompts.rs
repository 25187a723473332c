//! Long prompts and the f16 key/value cache: a prompt longer than one query chunk attends in
//! chunks (each over the keys up to its last position) and must compute what the same prompt
//! computes when fed in pieces no longer than a chunk; an f16 cache stores the rounded keys and
//! values, which both decode paths read alike and which moves the logits by little.

use bedside_model::{load_gguf, Cache, LoadOptions, Logits, Model};
use candle_core::{DType, Device, IndexOp, Tensor};

fn dequantized_smollm2() -> Option<Model> {
    let path = bedside_testutil::smollm2_gguf()?;
    Some(load_gguf(&path, &LoadOptions { dequantize: true, ..Default::default() }).unwrap().0)
}

/// Token ids that are a plausible mix (not one repeated token), deterministic.
fn prompt(n: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| (100 + (i * 7919 + seed * 104_729) % 40_000) as u32).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Every position's logits for `ids` (one row), fed through the cache in pieces of `piece`.
fn logits_in_pieces(model: &Model, ids: &[u32], piece: usize) -> Tensor {
    let mut cache = Cache::new(model);
    let parts: Vec<Tensor> = ids
        .chunks(piece)
        .map(|c| {
            let t = Tensor::new(c, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            model.forward(&t, Some(&mut cache), Logits::All).unwrap().squeeze(0).unwrap()
        })
        .collect();
    Tensor::cat(&parts, 0).unwrap()
}

/// 300 positions at once (query chunks of 64, the last of 44) against pieces of 100 and of 1:
/// the same logits at every position. Control: the same prompt with one early token changed
/// differs by far more, so the comparison can see a wrong mask or key range.
#[test]
fn a_long_prompt_attends_in_chunks_as_it_does_in_pieces() {
    let Some(model) = dequantized_smollm2() else { return };
    let ids = prompt(300, 1);
    let whole = logits_in_pieces(&model, &ids, ids.len());
    for piece in [100, 1] {
        let d = max_abs_diff(&whole, &logits_in_pieces(&model, &ids, piece));
        assert!(d < 2e-3, "pieces of {piece}: max |Δlogit| {d}");
    }
    let mut other = ids.clone();
    other[5] = 4242;
    let control = max_abs_diff(&whole.i(200..).unwrap(), &logits_in_pieces(&model, &other, ids.len()).i(200..).unwrap());
    assert!(control > 0.1, "changing token 5 moved later logits by only {control}");
}

/// Left-padded rows longer than a chunk, prompted together, give each row's logits alone.
#[test]
fn long_left_padded_rows_attend_in_chunks_as_they_do_alone() {
    let Some(model) = dequantized_smollm2() else { return };
    let prompts = [prompt(260, 2), prompt(140, 3), prompt(20, 4)];
    let max = prompts.iter().map(Vec::len).max().unwrap();
    let pads: Vec<usize> = prompts.iter().map(|p| max - p.len()).collect();
    let flat: Vec<u32> = prompts.iter().flat_map(|p| std::iter::repeat_n(0, max - p.len()).chain(p.iter().copied())).collect();
    let mut cache = Cache::with_padding(&model, pads);
    let batch = model.forward(&Tensor::from_vec(flat, (3, max), &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last).unwrap();
    for (r, p) in prompts.iter().enumerate() {
        let alone = model.forward(&Tensor::new(p.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), None, Logits::Last).unwrap();
        let d = max_abs_diff(&batch.i(r).unwrap(), &alone.squeeze(0).unwrap());
        assert!(d < 2e-3, "row {r} ({} tokens): batched vs alone differ by {d}", p.len());
    }
}

/// `steps` decode steps after `prompts` (left-padded), the logits of each; `kv` the cache type,
/// `fused` the decode path.
fn decode(model: &Model, prompts: &[Vec<u32>], steps: usize, kv: Option<DType>, fused: bool) -> (Vec<Vec<Vec<f32>>>, usize) {
    let mut model = model.clone();
    model.set_kv_cache_dtype(kv);
    model.set_fused_decode(fused);
    let max = prompts.iter().map(Vec::len).max().unwrap();
    let pads: Vec<usize> = prompts.iter().map(|p| max - p.len()).collect();
    let flat: Vec<u32> = prompts.iter().flat_map(|p| std::iter::repeat_n(0, max - p.len()).chain(p.iter().copied())).collect();
    let b = prompts.len();
    let mut cache = Cache::with_padding(&model, pads);
    model.forward(&Tensor::from_vec(flat, (b, max), &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last).unwrap();
    let mut out = Vec::new();
    for step in 0..steps {
        let next: Vec<u32> = (0..b).map(|r| (17 + 31 * r + 7 * step) as u32).collect();
        let l = model.forward(&Tensor::from_vec(next, (b, 1), &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last).unwrap();
        out.push(l.to_vec2::<f32>().unwrap());
    }
    assert_eq!(cache.fused_steps() as usize, if fused { steps } else { 0 });
    (out, cache.stored_bytes())
}

fn max_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    a.iter().flatten().flatten().zip(b.iter().flatten().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// An f16 cache holds half the bytes; the fused step and the composed path read the same
/// rounded values; and the rounding moves the logits measurably but by little against the f32
/// cache.
#[test]
fn an_f16_cache_is_half_the_memory_and_moves_logits_by_little() {
    let Some(model) = dequantized_smollm2() else { return };
    let prompts = vec![prompt(150, 5), prompt(40, 6)];
    let (f32_fused, bytes32) = decode(&model, &prompts, 6, None, true);
    let (f16_fused, bytes16) = decode(&model, &prompts, 6, Some(DType::F16), true);
    let (f16_composed, _) = decode(&model, &prompts, 6, Some(DType::F16), false);
    assert_eq!(bytes16 * 2, bytes32, "f16 cache {bytes16} bytes, f32 {bytes32}");
    let paths = max_diff(&f16_fused, &f16_composed);
    let rounding = max_diff(&f16_fused, &f32_fused);
    let max_logit = f32_fused.iter().flatten().flatten().fold(0f32, |m, x| m.max(x.abs()));
    eprintln!("f16 cache: fused vs composed {paths}; f16 vs f32 cache {rounding} (max |logit| {max_logit})");
    // The paths' f32 keys differ in their last bits (other summation orders), and now and then
    // that puts a key on the other side of an f16 rounding boundary (one f16 step is 2^-11 of
    // the value): more than the 1e-5 relative of an f32 cache, well under the rounding itself.
    assert!(paths < 2e-4 * max_logit && paths < 0.5 * rounding, "fused and composed paths differ by {paths} on an f16 cache");
    assert!(rounding > 1e-5, "an f16 cache changed nothing ({rounding}): is it really f16?");
    assert!(rounding < 0.05 * max_logit.max(1.0), "an f16 cache moved logits by {rounding}");
}
