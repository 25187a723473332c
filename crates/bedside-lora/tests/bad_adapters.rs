//! Broken adapter directories give errors that name the file and the key or field at fault.

use std::collections::BTreeMap;
use std::path::Path;

use bedside_lora::{attach, load_peft, peft::safetensors_bytes};
use bedside_model::LoadOptions;
use candle_core::{DType, Device, Tensor};

fn copy_fixture(kind: &str, to: &Path) -> Option<()> {
    let src = bedside_testutil::fixture("tiny-llama")?.join(kind);
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), to.join(f)).unwrap();
    }
    Some(())
}

/// Rewrite the fixture adapter's tensors through `edit` and return the load error.
fn tensors_edit(edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> Option<String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ad");
    copy_fixture("lora", &dir)?;
    let raw = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let mut t: BTreeMap<String, Tensor> = raw.into_iter().collect();
    edit(&mut t);
    std::fs::write(dir.join("adapter_model.safetensors"), safetensors_bytes(&t, &BTreeMap::new()).unwrap()).unwrap();
    Some(load_peft(&dir, &Device::Cpu).unwrap_err().to_string())
}

const QA: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const QB: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

#[test]
fn missing_directory_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load_peft(&tmp.path().join("nope"), &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    let e = load_peft(tmp.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("missing"), "{e}");
    std::fs::write(tmp.path().join("adapter_config.json"), r#"{"peft_type": "LORA", "r": 4}"#).unwrap();
    let e = load_peft(tmp.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors") && e.contains("missing"), "{e}");
    std::fs::write(tmp.path().join("adapter_model.bin"), b"pickle").unwrap();
    let e = load_peft(tmp.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("pickle"), "{e}");
}

#[test]
fn bad_json_and_bad_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ad");
    if copy_fixture("lora", &dir).is_none() {
        return;
    }
    std::fs::write(dir.join("adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 4,").unwrap();
    let e = load_peft(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("malformed JSON"), "{e}");
    std::fs::write(dir.join("adapter_config.json"), r#"{"peft_type": "LORA", "r": "four"}"#).unwrap();
    let e = load_peft(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("'r'") && e.contains("four"), "{e}");
    std::fs::write(dir.join("adapter_config.json"), r#"{"peft_type": "PREFIX_TUNING"}"#).unwrap();
    let e = load_peft(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("PREFIX_TUNING"), "{e}");

    copy_fixture("lora", &dir).unwrap();
    let full = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), &full[..full.len() / 2]).unwrap();
    let e = load_peft(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors") && e.contains("not a valid safetensors"), "{e}");
}

#[test]
fn rank_mismatch_is_named() {
    let Some(e) = tensors_edit(|t| {
        let b = t[QB].narrow(1, 0, 3).unwrap().contiguous().unwrap();
        t.insert(QB.into(), b);
    }) else {
        return;
    };
    assert!(e.contains(QB) && e.contains("rank"), "{e}");
}

#[test]
fn config_rank_must_match_tensors() {
    let Some(e) = tensors_edit(|t| {
        let a = t[QA].narrow(0, 0, 2).unwrap().contiguous().unwrap();
        let b = t[QB].narrow(1, 0, 2).unwrap().contiguous().unwrap();
        t.insert(QA.into(), a);
        t.insert(QB.into(), b);
    }) else {
        return;
    };
    assert!(e.contains(QA) && e.contains("rank 2") && e.contains("rank 4"), "{e}");
}

#[test]
fn unpaired_and_unsupported_keys() {
    let Some(e) = tensors_edit(|t| {
        t.remove(QB);
    }) else {
        return;
    };
    assert!(e.contains(QA) && e.contains("no partner"), "{e}");
    let e = tensors_edit(|t| {
        t.insert(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias".into(),
            Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
        );
    })
    .unwrap();
    assert!(e.contains("lora_B.bias") && e.contains("bias"), "{e}");
    let e = tensors_edit(|t| {
        t.insert(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector".into(),
            Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
        );
    })
    .unwrap();
    assert!(e.contains("DoRA"), "{e}");
    let e = tensors_edit(|t| {
        t.insert("base_model.model.lm_head.weight".into(), Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap());
    })
    .unwrap();
    assert!(e.contains("lm_head.weight"), "{e}");
}

#[test]
fn modules_the_model_lacks_and_wrong_features() {
    let Some(llama) = bedside_testutil::fixture("tiny-llama") else { return };
    let mix = bedside_testutil::fixture("tiny-mixtral").unwrap();
    // tiny-llama's MLP adapter on Mixtral (which has experts, not mlp.*_proj).
    let ad = load_peft(&llama.join("lora"), &Device::Cpu).unwrap();
    let mut model = bedside_model::load_hf_dir(&mix, &LoadOptions::default()).unwrap();
    let e = attach(&mut model, &ad, 1.0).unwrap_err().to_string();
    assert!(e.contains("mlp.") && e.contains("does not have"), "{e}");
    // Nothing was attached by the failed call.
    assert!(model.linears_mut().iter().all(|(_, l)| l.lora.is_empty()));

    // A layer the model does not have.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ad");
    copy_fixture("lora", &dir).unwrap();
    let raw = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let mut t: BTreeMap<String, Tensor> = raw.into_iter().collect();
    let a = t[QA].clone();
    let b = t[QB].clone();
    t.insert(QA.replace("layers.0", "layers.7"), a);
    t.insert(QB.replace("layers.0", "layers.7"), b);
    std::fs::write(dir.join("adapter_model.safetensors"), safetensors_bytes(&t, &BTreeMap::new()).unwrap()).unwrap();
    let ad = load_peft(&dir, &Device::Cpu).unwrap();
    let mut model = bedside_model::load_hf_dir(&llama, &LoadOptions::default()).unwrap();
    let e = attach(&mut model, &ad, 1.0).unwrap_err().to_string();
    assert!(e.contains("layers.7.self_attn.q_proj") && e.contains("does not have"), "{e}");

    // Wrong in-features: q_proj's A with 32 columns instead of 64.
    let mut t2: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(llama.join("lora/adapter_model.safetensors"), &Device::Cpu).unwrap().into_iter().collect();
    let a = t2[QA].narrow(1, 0, 32).unwrap().contiguous().unwrap();
    t2.insert(QA.into(), a);
    std::fs::write(dir.join("adapter_model.safetensors"), safetensors_bytes(&t2, &BTreeMap::new()).unwrap()).unwrap();
    let ad = load_peft(&dir, &Device::Cpu).unwrap();
    let e = attach(&mut model, &ad, 1.0).unwrap_err().to_string();
    assert!(e.contains(QA) && e.contains("[4, 64]"), "{e}");
}

/// Issue 18: NaN, infinity and factors whose product overflows were loaded silently (generate
/// answered nothing, merge wrote NaN files). Every value is checked on load.
#[test]
fn non_finite_and_overflowing_factors_are_refused() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let Some(e) = tensors_edit(|t| {
            let mut v = t[QB].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[3] = bad;
            t.insert(QB.into(), Tensor::from_vec(v, t[QB].dims(), &Device::Cpu).unwrap());
        }) else {
            return;
        };
        assert!(e.contains(QB) && e.contains("non-finite") && e.contains("element 3"), "{e}");
    }
    // Finite factors of 1e30: B·A overflows f32.
    let Some(e) = tensors_edit(|t| {
        for k in [QA, QB] {
            t.insert(k.into(), (t[k].ones_like().unwrap() * 1e30).unwrap());
        }
    }) else {
        return;
    };
    assert!(e.contains("self_attn.q_proj") && e.contains("not usable"), "{e}");
}

/// A tensor for a module that adapter_config.json's target_modules leaves out was applied
/// anyway; now the mismatch names both sides.
#[test]
fn tensors_outside_target_modules_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ad");
    if copy_fixture("lora", &dir).is_none() {
        return;
    }
    let cfg = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["target_modules"] = serde_json::json!(["v_proj"]);
    std::fs::write(dir.join("adapter_config.json"), v.to_string()).unwrap();
    let e = load_peft(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("target_modules (v_proj) does not include") && e.contains("down_proj.lora_A.weight"), "{e}");
}

/// `--adapter DIR:-1e30` scaled a finite adapter into NaN logits; a weight whose update passes
/// the bound is refused by attach and merge alike.
#[test]
fn absurd_adapter_weights_are_refused() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let adapter = load_peft(&fx.join("lora"), &Device::Cpu).unwrap();
    let mut model = bedside_model::load_hf_dir(&fx, &LoadOptions::default()).unwrap();
    for w in [-1e30, 1e12, f64::NAN] {
        let e = attach(&mut model, &adapter, w).unwrap_err().to_string();
        assert!(e.contains("weight"), "{w}: {e}");
        let e = bedside_lora::merge_into(&mut model, &adapter, w, &mut Default::default()).unwrap_err().to_string();
        assert!(e.contains("weight"), "{w}: {e}");
    }
    assert!(model.linears_mut().iter().all(|(_, l)| l.lora.is_empty()), "a refused adapter changed the model");
    attach(&mut model, &adapter, -2.0).unwrap();
}
