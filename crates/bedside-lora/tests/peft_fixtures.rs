//! PEFT adapters from `../shared/fixtures/tiny-{llama,mixtral}/{lora,rslora}` (saved by Python
//! PEFT 0.21) against the logits PEFT computed with them, on both the HF checkpoint and the
//! llama.cpp-converted GGUF of the same weights.

use std::path::{Path, PathBuf};

use bedside_lora::{attach, attach_trainable, load_peft, merge_into, save_peft, save_peft_tensors, unmerge, LoraConfig, Unmerge};
use bedside_model::{LoadOptions, Logits, Model};
use candle_core::{DType, Device, Tensor};

const MODELS: [&str; 2] = ["tiny-llama", "tiny-mixtral"];
const KINDS: [&str; 2] = ["lora", "rslora"];

fn load_ref(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn ids(reference: &std::collections::HashMap<String, Tensor>) -> Tensor {
    reference["input_ids"].to_dtype(DType::U32).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn hf(dir: &Path) -> Model {
    bedside_model::load_hf_dir(dir, &LoadOptions::default()).unwrap()
}

fn gguf(dir: &Path) -> Model {
    bedside_model::load_gguf(&dir.join("model-f32.gguf"), &LoadOptions::default()).unwrap().0
}

fn fixture(model: &str) -> Option<PathBuf> {
    bedside_testutil::fixture(model)
}

/// Every fixture adapter (tiny Llama and Mixtral, lora and rslora) with its PEFT reference, on
/// both bases (the HF checkpoint and the GGUF of the same weights), freshly loaded for each call.
fn each_adapter_on_both_bases(
    mut f: impl FnMut(&str, &str, &str, Model, &bedside_lora::Adapter, &std::collections::HashMap<String, Tensor>),
) {
    for m in MODELS {
        let Some(dir) = fixture(m) else { return };
        for kind in KINDS {
            let ad_dir = dir.join(kind);
            let adapter = load_peft(&ad_dir, &Device::Cpu).unwrap();
            let reference = load_ref(&ad_dir.join("reference.safetensors"));
            for (base, model) in [("hf", hf(&dir)), ("gguf", gguf(&dir))] {
                f(m, kind, base, model, &adapter, &reference);
            }
        }
    }
}

#[test]
fn fixture_adapters_reproduce_peft_logits_on_hf_and_gguf_bases() {
    each_adapter_on_both_bases(|m, kind, base, mut model, adapter, reference| {
        let want = &reference["logits"];
        let x = ids(reference);
        assert_eq!(adapter.config.r, 4);
        assert_eq!(adapter.config.lora_alpha, 8.0);
        assert_eq!(adapter.config.use_rslora, kind == "rslora");
        let before = model.forward(&x, None, Logits::All).unwrap();
        attach(&mut model, adapter, 1.0).unwrap();
        let got = model.forward(&x, None, Logits::All).unwrap();
        let d = max_abs(&got, want);
        eprintln!("{m}/{kind} on {base}: max |Δ| = {d:.2e} (base vs adapter {:.2e})", max_abs(&before, want));
        assert!(d < 1e-4, "{m}/{kind} on {base}: max abs diff {d}");
        // The adapter must matter, or the comparison proves nothing.
        assert!(max_abs(&before, want) > 1e-2, "{m}/{kind}: adapter has no visible effect");
    });
}

/// An adapter merged into dense f32 base weights gives PEFT's logits, as attaching it does; unmerge
/// restores the base bit for bit; a base that cannot be merged (bf16 here) is left untouched.
#[test]
fn merged_adapters_reproduce_peft_logits_and_unmerge_restores_the_base() {
    each_adapter_on_both_bases(|m, kind, base, mut model, adapter, reference| {
        let x = ids(reference);
        let before = model.forward(&x, None, Logits::All).unwrap();
        let mut saved = Unmerge::default();
        // Two halves merged one after the other add up to the whole adapter.
        assert!(merge_into(&mut model, adapter, 0.5, &mut saved).unwrap());
        assert!(merge_into(&mut model, adapter, 0.5, &mut saved).unwrap());
        let got = model.forward(&x, None, Logits::All).unwrap();
        let d = max_abs(&got, &reference["logits"]);
        assert!(d < 1e-4, "{m}/{kind} merged on {base}: max abs diff {d}");
        assert!(max_abs(&before, &reference["logits"]) > 1e-2);
        unmerge(&mut model, saved);
        let after = model.forward(&x, None, Logits::All).unwrap();
        assert_eq!(max_abs(&after, &before), 0.0, "{m}/{kind} on {base}: unmerge did not restore the base");
    });
    let Some(dir) = fixture("tiny-llama") else { return };
    let adapter = load_peft(&dir.join("lora"), &Device::Cpu).unwrap();
    let opts = LoadOptions { dtype: Some(DType::BF16), ..Default::default() };
    let mut model = bedside_model::load_hf_dir(&dir, &opts).unwrap();
    let mut saved = Unmerge::default();
    assert!(!merge_into(&mut model, &adapter, 1.0, &mut saved).unwrap());
    assert!(model.linears_mut().iter().all(|(_, l)| l.lora.is_empty()));
}

#[test]
fn rslora_scaling_differs_from_plain_by_sqrt_r() {
    let Some(dir) = fixture("tiny-llama") else { return };
    let a = load_peft(&dir.join("rslora"), &Device::Cpu).unwrap();
    let m = "model.layers.1.self_attn.v_proj";
    assert_eq!(a.config.scale_for(m), 8.0 / 2.0);
    let mut plain = a.config.clone();
    plain.use_rslora = false;
    assert_eq!(plain.scale_for(m), 2.0);
}

#[test]
fn two_adapters_with_weights_add_up() {
    // Attaching the same adapter twice with weights 0.25 and 0.75 equals attaching it once.
    let Some(dir) = fixture("tiny-llama") else { return };
    let adapter = load_peft(&dir.join("lora"), &Device::Cpu).unwrap();
    let reference = load_ref(&dir.join("lora/reference.safetensors"));
    let mut model = hf(&dir);
    attach(&mut model, &adapter, 0.25).unwrap();
    attach(&mut model, &adapter, 0.75).unwrap();
    let got = model.forward(&ids(&reference), None, Logits::All).unwrap();
    let d = max_abs(&got, &reference["logits"]);
    assert!(d < 1e-4, "{d}");
}

#[test]
fn save_load_round_trip_is_exact() {
    for m in MODELS {
        let Some(dir) = fixture(m) else { return };
        for kind in KINDS {
            let orig = load_peft(&dir.join(kind), &Device::Cpu).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let out1 = tmp.path().join("a");
            let out2 = tmp.path().join("b");
            let tensors: Vec<(String, Tensor)> = orig.tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            save_peft_tensors(&out1, &orig.config, &tensors).unwrap();
            let back = load_peft(&out1, &Device::Cpu).unwrap();
            assert_eq!(back.config, orig.config);
            assert_eq!(back.tensors.keys().collect::<Vec<_>>(), orig.tensors.keys().collect::<Vec<_>>());
            for (k, t) in &orig.tensors {
                let b = &back.tensors[k];
                assert_eq!(b.dims(), t.dims(), "{k}");
                assert_eq!(b.dtype(), t.dtype(), "{k}");
                let (x, y) = (t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{k} not bit-identical");
            }
            // Same input, same bytes.
            let tensors2: Vec<(String, Tensor)> = back.tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            save_peft_tensors(&out2, &back.config, &tensors2).unwrap();
            for f in ["adapter_model.safetensors", "adapter_config.json"] {
                assert_eq!(std::fs::read(out1.join(f)).unwrap(), std::fs::read(out2.join(f)).unwrap(), "{f}");
            }
            // Every tensor of the PEFT file is there with the same bytes, the header says "pt",
            // and no temp files are left.
            let hdr = read_header(&out1.join("adapter_model.safetensors"));
            assert_eq!(hdr["__metadata__"]["format"], "pt");
            let orig_hdr = read_header(&dir.join(kind).join("adapter_model.safetensors"));
            assert_eq!(hdr.as_object().unwrap().len(), orig_hdr.as_object().unwrap().len());
            for (k, v) in orig_hdr.as_object().unwrap() {
                assert_eq!(hdr[k]["shape"], v["shape"], "{k}");
                assert_eq!(hdr[k]["dtype"], v["dtype"], "{k}");
            }
            let leftovers: Vec<_> = std::fs::read_dir(&out1).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(leftovers.len(), 2, "{leftovers:?}");
            // The written config is what PEFT writes: sorted keys, peft_type LORA, integral alpha.
            let text = std::fs::read_to_string(out1.join("adapter_config.json")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["peft_type"], "LORA");
            assert_eq!(v["task_type"], "CAUSAL_LM");
            assert_eq!(v["bias"], "none");
            assert_eq!(v["lora_alpha"], serde_json::json!(8));
            assert_eq!(v["use_rslora"], serde_json::json!(kind == "rslora"));
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
            assert!(text.contains("\n  \"r\": 4,"), "{text}");
        }
    }
}

fn read_header(p: &Path) -> serde_json::Value {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&b[8..8 + n]).unwrap()
}

#[test]
fn trainable_init_is_peft_init() {
    let Some(dir) = fixture("tiny-llama") else { return };
    let reference = load_ref(&dir.join("reference.safetensors"));
    let x = ids(&reference);
    let mut model = hf(&dir);
    let base = model.forward(&x, None, Logits::All).unwrap();
    let cfg = LoraConfig { r: 4, lora_alpha: 8.0, ..LoraConfig::default() };
    let vars = attach_trainable(&mut model, &cfg, 7, DType::F32).unwrap();
    // 2 layers × 7 projections × (A, B).
    assert_eq!(vars.len(), 28);
    assert_eq!(vars[0].0, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    assert_eq!(vars[1].0, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    let fixture_adapter = load_peft(&dir.join("lora"), &Device::Cpu).unwrap();
    for (k, v) in &vars {
        // Shapes equal PEFT's own for the same config.
        assert_eq!(v.as_tensor().dims(), fixture_adapter.tensors[k].dims(), "{k}");
        let vals = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if k.contains("lora_B") {
            assert!(vals.iter().all(|&x| x == 0.0), "{k} not zero");
        } else {
            let fan_in = v.as_tensor().dims()[1] as f32;
            let bound = 1.0 / fan_in.sqrt();
            assert!(vals.iter().all(|x| x.abs() <= bound), "{k} outside ±{bound}");
            // Uniform on ±bound: the spread reaches most of the interval and the mean is near 0.
            let max = vals.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max > 0.8 * bound, "{k}: max {max} vs bound {bound}");
            let mean = vals.iter().sum::<f32>() / vals.len() as f32;
            assert!(mean.abs() < 0.2 * bound, "{k}: mean {mean}");
        }
    }
    // B = 0: the model computes exactly the base.
    let with = model.forward(&x, None, Logits::All).unwrap();
    assert_eq!(max_abs(&with, &base), 0.0);
    // Updating a Var reaches the model's forward.
    let (_, b0) = &vars[1];
    b0.set(&Tensor::ones(b0.as_tensor().dims(), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let moved = model.forward(&x, None, Logits::All).unwrap();
    assert!(max_abs(&moved, &base) > 1e-3);
    // Same seed, same draws; another seed, other draws.
    let mut m2 = hf(&dir);
    let again = attach_trainable(&mut m2, &cfg, 7, DType::F32).unwrap();
    let mut m3 = hf(&dir);
    let other = attach_trainable(&mut m3, &cfg, 8, DType::F32).unwrap();
    let a = |v: &[(String, candle_core::Var)]| v[0].1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a(&vars), a(&again));
    assert_ne!(a(&vars), a(&other));
    // Gradients reach every Var through the model's training path.
    let mut rng = bedside_model::DropoutRng::new(7);
    let logits = m2.forward_with(&x, None, Logits::All, bedside_model::Mode::Train { dropout: Some(&mut rng) }).unwrap();
    let loss = logits.sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    for (k, v) in &again {
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{k}: no gradient"));
        if k.contains("lora_B") {
            let n = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n > 0.0, "{k}: zero gradient");
        }
    }
}

#[test]
fn trainable_vars_save_as_loadable_peft_adapter() {
    let Some(dir) = fixture("tiny-mixtral") else { return };
    let mut model = hf(&dir);
    let mut cfg = LoraConfig { r: 4, lora_alpha: 16.0, use_rslora: true, ..LoraConfig::default() };
    cfg.target_modules = vec!["q_proj".into(), "v_proj".into(), "w1".into(), "w2".into(), "w3".into()];
    cfg.rank_pattern.insert("w2".into(), 2);
    cfg.alpha_pattern.insert(r"layers\.1\.self_attn\.q_proj".into(), 3.0);
    let vars = attach_trainable(&mut model, &cfg, 1, DType::F32).unwrap();
    // 2 layers × (q, v + 4 experts × 3) × 2.
    assert_eq!(vars.len(), 2 * (2 + 4 * 3) * 2);
    assert!(!vars.iter().any(|(k, _)| k.contains("block_sparse_moe.gate.")), "router must not be targeted");
    let w2 = vars.iter().find(|(k, _)| k.ends_with("layers.0.block_sparse_moe.experts.1.w2.lora_A.weight")).unwrap();
    assert_eq!(w2.1.as_tensor().dims(), [2, 96]);
    for (_, v) in &vars {
        v.set(&v.as_tensor().ones_like().unwrap().affine(0.01, 0.0).unwrap()).unwrap();
    }
    let x = Tensor::new(&[[1u32, 5, 9, 200, 3, 7]], &Device::Cpu).unwrap();
    let want = model.forward(&x, None, Logits::All).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    save_peft(tmp.path(), &cfg, &vars).unwrap();
    let back = load_peft(tmp.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config, cfg);
    let mut fresh = gguf(&dir);
    attach(&mut fresh, &back, 1.0).unwrap();
    let got = fresh.forward(&x, None, Logits::All).unwrap();
    assert!(max_abs(&got, &want) < 1e-4, "{}", max_abs(&got, &want));
}
