//! Issue 18: a model whose weights drive its logits to NaN answered with an empty string and
//! exit 0. Generation stops with an error instead.

use std::collections::HashMap;

use bedside_generate::{Engine, EngineOptions, SamplingParams};
use candle_core::{Device, Tensor};

#[test]
fn non_finite_logits_stop_generation_with_an_error() {
    let Some(src) = bedside_testutil::fixture("tiny-llama") else { return };
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
    }
    // A projection weight (not checked at load time: only norms and embeddings are) with a NaN.
    let mut t: HashMap<String, Tensor> = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let k = "model.layers.1.mlp.down_proj.weight";
    let mut v = t[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter_mut().for_each(|x| *x = f32::NAN);
    t.insert(k.into(), Tensor::from_vec(v, t[k].dims(), &Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    let e = Engine::load(dir.path().to_str().unwrap(), &EngineOptions::default()).unwrap();
    let params = SamplingParams { max_tokens: 4, ..Default::default() };
    let err = e.generate(&[1, 37, 212, 5], &params, &mut |_| Ok(())).unwrap_err().to_string();
    assert!(err.contains("non-finite logits"), "{err}");
    let err = e.generate_batch(&[vec![1, 37], vec![1, 5, 6]], &[params.clone(), params]).unwrap_err().to_string();
    assert!(err.contains("non-finite logits"), "{err}");
}
