//! `EngineOptions::adapters`: PEFT adapters attached at load time, checked against PEFT's logits.

use std::path::{Path, PathBuf};

use bedside_generate::{Engine, EngineOptions, SamplingParams};
use bedside_model::Logits;
use candle_core::{DType, Device, IndexOp, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn engine(spec: &Path, adapters: Vec<(PathBuf, f64)>) -> Engine {
    Engine::load(spec.to_str().unwrap(), &EngineOptions { adapters, ..Default::default() }).unwrap()
}

/// Greedy continuation by full re-forwards (no KV cache), an independent check of the cached path.
fn greedy_uncached(e: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let x = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let l = e.model.forward(&x, None, Logits::Last).unwrap().i(0).unwrap();
        let next = l.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        if e.tokenizer.eog_ids().contains(&next) {
            break;
        }
        out.push(next);
        ids.push(next);
    }
    out
}

#[test]
fn engine_with_fixture_adapter_gives_peft_logits() {
    for m in ["tiny-llama", "tiny-mixtral"] {
        let Some(dir) = bedside_testutil::fixture(m) else { return };
        let reference = candle_core::safetensors::load(dir.join("lora/reference.safetensors"), &Device::Cpu).unwrap();
        let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
        let base_ref = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
        for spec in [dir.clone(), dir.join("model-f32.gguf")] {
            let tuned = engine(&spec, vec![(dir.join("lora"), 1.0)]);
            let got = tuned.model.forward(&ids, None, Logits::All).unwrap();
            let d = max_abs(&got, &reference["logits"]);
            assert!(d < 1e-4, "{m} {}: {d}", spec.display());

            // Generation through the KV cache follows the adapter's own argmax path, and it is
            // not the base model's path.
            let prompt: Vec<u32> = ids.i(0).unwrap().to_vec1().unwrap();
            let params = SamplingParams { temperature: 0.0, repeat_penalty: 1.0, max_tokens: 8, ..Default::default() };
            let g = tuned.generate(&prompt, &params, &mut |_| Ok(())).unwrap();
            assert_eq!(g.tokens, greedy_uncached(&tuned, &prompt, 8), "{m}");
            let base_greedy: Vec<u32> = base_ref["greedy_ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
            let base = engine(&spec, vec![]);
            let gb = base.generate(&prompt, &params, &mut |_| Ok(())).unwrap();
            assert_eq!(gb.tokens[..], base_greedy[..gb.tokens.len()], "{m}: base greedy ids");
            assert_ne!(g.tokens, gb.tokens, "{m}: the adapter does not change the answer");
        }
    }
}

#[test]
fn adapter_weights_scale_the_update() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let reference = candle_core::safetensors::load(dir.join("lora/reference.safetensors"), &Device::Cpu).unwrap();
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let halves = engine(&dir, vec![(dir.join("lora"), 0.5), (dir.join("lora"), 0.5)]);
    let got = halves.model.forward(&ids, None, Logits::All).unwrap();
    assert!(max_abs(&got, &reference["logits"]) < 1e-4);
    let off = engine(&dir, vec![(dir.join("lora"), 0.0)]);
    let base = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let got = off.model.forward(&ids, None, Logits::All).unwrap();
    assert!(max_abs(&got, &base["logits"]) < 1e-4);
}

#[test]
fn missing_adapter_is_named() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let opts = EngineOptions { adapters: vec![(dir.join("no-such-adapter"), 1.0)], ..Default::default() };
    let e = Engine::load(dir.to_str().unwrap(), &opts).err().expect("must fail").to_string();
    assert!(e.contains("no-such-adapter"), "{e}");
}
