//! Logits and greedy continuations against Hugging Face transformers and llama.cpp
//! (`../shared/fixtures`, produced outside bedside).

use std::collections::HashMap;
use std::path::Path;

use bedside_model::{load_gguf, load_hf_dir, Cache, LoadOptions, Logits, Mode, Model};
use candle_core::{DType, Device, IndexOp, Tensor};

fn refs(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn ids_u32(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap().into_iter().map(|x| x as u32).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn greedy(model: &Model, prompt: &[u32], n: usize, stop: Option<u32>) -> Vec<u32> {
    let mut cache = Cache::new(model);
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..n {
        let t = Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&t, Some(&mut cache), Logits::Last).unwrap();
        let next = logits.squeeze(0).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        if Some(next) == stop {
            break;
        }
        input = vec![next];
    }
    out
}

fn check_tiny(name: &str, model: &Model) {
    let dir = bedside_testutil::fixture(name).unwrap();
    let hf = refs(&dir.join("reference.safetensors"));
    let cpp = refs(&dir.join("llamacpp_gguf_f32_reference.safetensors"));
    let input = &hf["input_ids"];
    let ids = Tensor::from_vec(ids_u32(input), input.dims(), &Device::Cpu).unwrap();
    let logits = model.forward(&ids, None, Logits::All).unwrap();
    let d_hf = max_abs_diff(&logits, &hf["logits"]);
    assert!(d_hf < 2e-3, "{name} ({}): max |Δlogit| vs transformers = {d_hf}", model.source.format);
    for row in 0..2 {
        let d = max_abs_diff(&logits.i(row).unwrap(), &cpp[&format!("row{row}.logits")]);
        assert!(d < 2e-3, "{name} ({}): row {row} max |Δlogit| vs llama.cpp = {d}", model.source.format);
    }
    // Greedy continuation, token by token through the KV cache.
    let row0 = ids_u32(&input.i(0).unwrap());
    let got = greedy(model, &row0, 8, None);
    assert_eq!(got, ids_u32(&hf["greedy_ids"]), "{name}: greedy vs transformers");
    assert_eq!(got, ids_u32(&cpp["row0.greedy_ids"]), "{name}: greedy vs llama.cpp");
    let row1 = ids_u32(&input.i(1).unwrap());
    assert_eq!(greedy(model, &row1, 8, None), ids_u32(&cpp["row1.greedy_ids"]), "{name}: row 1 greedy vs llama.cpp");
}

#[test]
fn tiny_llama_safetensors_matches_references() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    check_tiny("tiny-llama", &load_hf_dir(&dir, &LoadOptions::default()).unwrap());
}

#[test]
fn tiny_llama_gguf_matches_references() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    check_tiny("tiny-llama", &load_gguf(&dir.join("model-f32.gguf"), &LoadOptions::default()).unwrap().0);
}

#[test]
fn tiny_mixtral_safetensors_matches_references() {
    let Some(dir) = bedside_testutil::fixture("tiny-mixtral") else { return };
    let m = load_hf_dir(&dir, &LoadOptions::default()).unwrap();
    assert!(m.cfg.moe.is_some());
    check_tiny("tiny-mixtral", &m);
}

#[test]
fn tiny_mixtral_gguf_matches_references() {
    let Some(dir) = bedside_testutil::fixture("tiny-mixtral") else { return };
    let (m, _) = load_gguf(&dir.join("model-f32.gguf"), &LoadOptions::default()).unwrap();
    assert_eq!(m.cfg.moe.as_ref().map(|m| (m.num_experts, m.top_k)), Some((4, 2)));
    check_tiny("tiny-mixtral", &m);
}

/// Prompts of different lengths, left-padded into one batch, give the same next-token logits
/// as each prompt alone, at prefill and over several decode steps.
#[test]
fn batched_left_padding_matches_single_rows() {
    for name in ["tiny-llama", "tiny-mixtral"] {
        let Some(dir) = bedside_testutil::fixture(name) else { return };
        let model = load_hf_dir(&dir, &LoadOptions::default()).unwrap();
        let hf = refs(&dir.join("reference.safetensors"));
        let all = ids_u32(&hf["input_ids"]);
        let prompts = [all[..12].to_vec(), all[12..19].to_vec(), all[3..6].to_vec()];
        let max = prompts.iter().map(Vec::len).max().unwrap();
        let pads: Vec<usize> = prompts.iter().map(|p| max - p.len()).collect();
        let flat: Vec<u32> = prompts.iter().flat_map(|p| std::iter::repeat_n(0, max - p.len()).chain(p.iter().copied())).collect();
        let mut cache = Cache::with_padding(&model, pads);
        let mut batch_logits =
            model.forward(&Tensor::from_vec(flat, (3, max), &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last).unwrap();
        let mut singles: Vec<(Cache, Tensor)> = prompts
            .iter()
            .map(|p| {
                let mut c = Cache::new(&model);
                let l = model
                    .forward(&Tensor::new(p.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut c), Logits::Last)
                    .unwrap();
                (c, l)
            })
            .collect();
        for step in 0..4 {
            for (r, (_, l)) in singles.iter().enumerate() {
                let d = max_abs_diff(&batch_logits.i(r).unwrap(), &l.squeeze(0).unwrap());
                assert!(d < 1e-4, "{name}: step {step} row {r}: batched vs single differ by {d}");
            }
            let next: Vec<u32> = (0..3).map(|r| (100 + 37 * r + step) as u32).collect();
            batch_logits =
                model.forward(&Tensor::from_vec(next.clone(), (3, 1), &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last).unwrap();
            for (r, (c, l)) in singles.iter_mut().enumerate() {
                *l = model.forward(&Tensor::new(&[next[r]], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(c), Logits::Last).unwrap();
            }
        }
        // Dropping a finished row keeps the others intact.
        cache.retain_rows(&[0, 2]).unwrap();
        let next = Tensor::from_vec(vec![7u32, 9], (2, 1), &Device::Cpu).unwrap();
        let b = model.forward(&next, Some(&mut cache), Logits::Last).unwrap();
        for (slot, (r, tok)) in [(0usize, 7u32), (2, 9)].into_iter().enumerate() {
            let (c, _) = &mut singles[r];
            let l = model.forward(&Tensor::new(&[tok], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(c), Logits::Last).unwrap();
            let d = max_abs_diff(&b.i(slot).unwrap(), &l.squeeze(0).unwrap());
            assert!(d < 1e-4, "{name}: after retain_rows row {r} differs by {d}");
        }
    }
}

/// The fused inference ops and the differentiable training ops compute the same function.
#[test]
fn training_mode_forward_matches_inference_forward() {
    for name in ["tiny-llama", "tiny-mixtral"] {
        let Some(dir) = bedside_testutil::fixture(name) else { return };
        let model = load_hf_dir(&dir, &LoadOptions::default()).unwrap();
        let hf = refs(&dir.join("reference.safetensors"));
        let ids = Tensor::from_vec(ids_u32(&hf["input_ids"]), (2, 12), &Device::Cpu).unwrap();
        let a = model.forward(&ids, None, Logits::All).unwrap();
        let b = model.forward_with(&ids, None, Logits::All, Mode::Train { dropout: None }).unwrap();
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-4, "{name}: training-mode forward differs by {d}");
    }
}

fn smollm2_f32() -> Option<Model> {
    let path = bedside_testutil::smollm2_gguf()?;
    bedside_testutil::fixture("smollm2")?;
    let opts = LoadOptions { dequantize: true, ..Default::default() };
    Some(load_gguf(&path, &opts).unwrap().0)
}

#[test]
fn smollm2_dequantized_matches_transformers_f32() {
    let Some(model) = smollm2_f32() else { return };
    let dir = bedside_testutil::fixture("smollm2").unwrap();
    let r = refs(&dir.join("logits_f32.safetensors"));
    let greedy_ref: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("greedy_f32.json")).unwrap()).unwrap();
    for p in 0..3 {
        let ids = ids_u32(&r[&format!("prompt{p}.input_ids")]);
        let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let all = model.forward(&t, None, Logits::All).unwrap().squeeze(0).unwrap();
        let last = all.i(ids.len() - 1).unwrap();
        let d = max_abs_diff(&last, &r[&format!("prompt{p}.last_logits")]);
        assert!(d < 2e-3, "prompt {p}: last-position logits differ from transformers by {d}");
        let argmax = ids_u32(&all.argmax(1).unwrap());
        assert_eq!(argmax, ids_u32(&r[&format!("prompt{p}.argmax")]), "prompt {p}: per-position argmax");
        let want: Vec<u32> = greedy_ref[p]["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got = greedy(&model, &ids, want.len(), Some(2));
        assert_eq!(got, want, "prompt {p}: greedy continuation vs transformers");
    }
}

#[test]
fn smollm2_answer_nll_matches_transformers() {
    let Some(model) = smollm2_f32() else { return };
    let dir = bedside_testutil::fixture("smollm2").unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("answer_nll.json")).unwrap()).unwrap();
    let ids: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let prompt_len = v["prompt_len"].as_u64().unwrap() as usize;
    let n = v["answer_tokens"].as_u64().unwrap() as usize;
    let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&t, None, Logits::All).unwrap().squeeze(0).unwrap();
    let lsm = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap();
    let nll: f64 = (prompt_len..prompt_len + n).map(|i| -lsm[i - 1][ids[i] as usize] as f64).sum::<f64>() / n as f64;
    let want = v["mean_answer_nll"].as_f64().unwrap();
    assert!((nll - want).abs() < 1e-3, "mean answer NLL {nll} vs transformers {want}");
}

/// The quantized path (Q4_1 weights, 8-bit activations, as llama.cpp does) stays close to
/// llama.cpp running the same file, and reproduces its first greedy tokens.
#[test]
fn smollm2_quantized_matches_llamacpp() {
    let Some(path) = bedside_testutil::smollm2_gguf() else { return };
    let Some(dir) = bedside_testutil::fixture("smollm2") else { return };
    let (mut model, _) = load_gguf(&path, &LoadOptions::default()).unwrap();
    // ggml's kernels for every row count, as llama.cpp runs them.
    model.set_dense_prefill(false);
    assert!(matches!(model.layers[0].self_attn.q_proj.base, bedside_model::BaseWeight::Quantized(..)));
    let f32r = refs(&dir.join("logits_f32.safetensors"));
    let cpp = refs(&dir.join("logits_llamacpp_q4_1.safetensors"));
    let greedy_cpp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("greedy_llamacpp_q4_1.json")).unwrap()).unwrap();
    for p in 0..3 {
        let ids = ids_u32(&f32r[&format!("prompt{p}.input_ids")]);
        let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let all = model.forward(&t, None, Logits::All).unwrap().squeeze(0).unwrap();
        let last = all.i(ids.len() - 1).unwrap();
        let d_cpp = max_abs_diff(&last, &cpp[&format!("prompt{p}.last_logits")]);
        let d_f32 = max_abs_diff(&last, &f32r[&format!("prompt{p}.last_logits")]);
        let d_refs = max_abs_diff(&f32r[&format!("prompt{p}.last_logits")], &cpp[&format!("prompt{p}.last_logits")]);
        eprintln!("prompt {p}: quantized vs llama.cpp {d_cpp:.4}, vs f32 {d_f32:.4}; llama.cpp vs f32 {d_refs:.4}");
        let mean_cpp =
            (&last - &cpp[&format!("prompt{p}.last_logits")]).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        let mean_refs = (&f32r[&format!("prompt{p}.last_logits")] - &cpp[&format!("prompt{p}.last_logits")])
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("prompt {p}: mean |Δ| vs llama.cpp {mean_cpp:.4}; llama.cpp vs f32 {mean_refs:.4}");
        // Quantized-matmul rounding differs between implementations (the two references differ
        // by up to ~1 logit); bound both the worst and the typical logit.
        assert!(d_cpp < 1.0, "prompt {p}: quantized logits differ from llama.cpp by {d_cpp} (f32 vs llama.cpp: {d_refs})");
        assert!(mean_cpp < 0.25, "prompt {p}: mean |Δlogit| vs llama.cpp is {mean_cpp}");
        let argmax = ids_u32(&all.argmax(1).unwrap());
        let want = ids_u32(&cpp[&format!("prompt{p}.argmax")]);
        let agree = argmax.iter().zip(&want).filter(|(a, b)| a == b).count() as f64 / want.len() as f64;
        assert!(agree >= 0.9, "prompt {p}: per-position argmax agrees with llama.cpp on only {agree:.2}");
    }
    // Decoding, teacher-forced along llama.cpp's own greedy continuation (on these prefixes
    // llama.cpp's f32 and Q4_1 runs agree, fixture README). Both engines round activations to 8
    // bits but add in different orders, and on this model one activation landing on the other
    // side of a rounding boundary moves logits by up to about one (see tests/decode.rs), so an
    // exact greedy match can break at a near-tie: bedside-kernels (ggml's Q8_1 rounding) pick
    // another token at prompt 2's step 18, where the two best logits are 0.17 apart. Bounded
    // instead: at every step llama.cpp's token is within `TIE` of our best logit, and nearly
    // always our best. Control: the same measure against the sequence shifted by one step fails.
    // The same bounds hold with an f16 key/value cache, the type llama.cpp kept for these.
    const TIE: f32 = 0.5;
    for kv in [None, Some(candle_core::DType::F16)] {
        model.set_kv_cache_dtype(kv);
        for p in [1usize, 2] {
            let ids = ids_u32(&f32r[&format!("prompt{p}.input_ids")]);
            let want: Vec<u32> = greedy_cpp[p]["ids"].as_array().unwrap().iter().take(24).map(|x| x.as_u64().unwrap() as u32).collect();
            let steps = teacher_forced(&model, &ids, &want);
            let worst = steps.iter().enumerate().map(|(i, l)| l[argmax(l)] - l[want[i] as usize]).fold(0f32, f32::max);
            let agree = steps.iter().enumerate().filter(|(i, l)| argmax(l) == want[*i] as usize).count();
            let control = steps.iter().enumerate().skip(1).map(|(i, l)| l[argmax(l)] - l[want[i - 1] as usize]).fold(0f32, f32::max);
            eprintln!(
                "cache {kv:?}, prompt {p}: llama.cpp's greedy token at most {worst:.3} below our best; our best on {agree}/24 steps; control {control:.2}"
            );
            assert!(worst < TIE, "cache {kv:?}, prompt {p}: llama.cpp's greedy token is {worst} logits below our best at some step");
            assert!(agree >= 22, "cache {kv:?}, prompt {p}: our greedy token is llama.cpp's on only {agree} of 24 steps");
            assert!(control > 4.0 * TIE, "cache {kv:?}, prompt {p}: the control gap is only {control}");
        }
    }
}

fn argmax(l: &[f32]) -> usize {
    l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|x| x.0).unwrap_or(0)
}

/// The logits before each token of `forced`, decoding through the cache after `prompt`.
fn teacher_forced(model: &Model, prompt: &[u32], forced: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = Cache::new(model);
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    for &tok in forced {
        let t = Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        out.push(model.forward(&t, Some(&mut cache), Logits::Last).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap());
        input = vec![tok];
    }
    out
}

/// The default CPU prompt path of a quantized model (dequantize each weight for the call, f32
/// GEMM) computes what the dequantized f32 model computes, and switching it off gives ggml's
/// 8-bit-activation kernels again (a different, measurably non-zero result).
#[test]
fn smollm2_quantized_prefill_equals_dequantized_model() {
    let Some(path) = bedside_testutil::smollm2_gguf() else { return };
    let Some(dir) = bedside_testutil::fixture("smollm2") else { return };
    let (mut q, _) = load_gguf(&path, &LoadOptions::default()).unwrap();
    let (f, _) = load_gguf(&path, &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    let f32r = refs(&dir.join("logits_f32.safetensors"));
    let ids = ids_u32(&f32r["prompt0.input_ids"]);
    assert!(ids.len() >= bedside_model::DENSE_ROWS, "the prompt must take the dense path");
    let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    // Logits::All so the output projection (tied embedding) also sees many rows.
    let last = |m: &bedside_model::Model| m.forward(&t, None, Logits::All).unwrap().squeeze(0).unwrap().i(ids.len() - 1).unwrap();
    let dense = last(&q);
    let want = last(&f);
    let d = max_abs_diff(&dense, &want);
    assert!(d < 1e-3, "dense prefill vs dequantized model: max |dlogit| {d}");
    q.set_dense_prefill(false);
    let kernels = last(&q);
    q.set_dense_prefill(true);
    let dk = max_abs_diff(&kernels, &want);
    assert!(dk > 1e-2, "ggml kernels should differ from f32 activations ({dk})");
}
