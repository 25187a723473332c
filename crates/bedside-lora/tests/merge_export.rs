//! Merging against PEFT's `merge_and_unload` logits, and GGUF export against llama.cpp's own
//! conversion of the base (model-f32.gguf holds q/k rows as llama.cpp's converter permuted them).

use std::path::Path;

use bedside_lora::gguf::{export_gguf, gguf_target};
use bedside_lora::merge::{hf_config_json, write_merged_safetensors};
use bedside_lora::{attach, load_peft, Adapter};
use bedside_model::{LoadOptions, Logits, ModelConfig};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn merged_checkpoint_reproduces_peft_merged_logits() {
    for m in ["tiny-llama", "tiny-mixtral"] {
        let Some(dir) = bedside_testutil::fixture(m) else { return };
        for kind in ["lora", "rslora"] {
            let adapter = load_peft(&dir.join(kind), &Device::Cpu).unwrap();
            let reference = candle_core::safetensors::load(dir.join(kind).join("reference.safetensors"), &Device::Cpu).unwrap();
            let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
            for base in ["hf", "gguf"] {
                let mut model = if base == "hf" {
                    bedside_model::load_hf_dir(&dir, &LoadOptions::default()).unwrap()
                } else {
                    bedside_model::load_gguf(&dir.join("model-f32.gguf"), &LoadOptions::default()).unwrap().0
                };
                attach(&mut model, &adapter, 1.0).unwrap();
                let tmp = tempfile::tempdir().unwrap();
                let mut calls = 0;
                write_merged_safetensors(&mut model, &tmp.path().join("model.safetensors"), DType::F32, &mut |_, _| calls += 1).unwrap();
                assert!(calls > 10);
                let cfg = hf_config_json(&model.cfg, DType::F32).unwrap();
                std::fs::write(tmp.path().join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
                let merged = bedside_model::load_hf_dir(tmp.path(), &LoadOptions::default()).unwrap();
                assert!(merged.clone().linears_mut().iter().all(|(_, l)| l.lora.is_empty()));
                let got = merged.forward(&ids, None, Logits::All).unwrap();
                let d = max_abs(&got, &reference["merged_logits"]);
                eprintln!("{m}/{kind} merged from {base}: max |Δ| = {d:.2e}");
                assert!(d < 1e-4, "{m}/{kind} from {base}: {d}");
                // The written config parses to the same hyperparameters.
                let back = ModelConfig::from_hf_file(&tmp.path().join("config.json")).unwrap();
                assert_eq!(back, model.cfg);
            }
        }
    }
}

/// Read a GGUF tensor as f32 in candle's row-major order.
fn read_t(content: &gguf_file::Content, f: &mut std::fs::File, name: &str) -> Tensor {
    content.tensor(f, name, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}")).dequantize(&Device::Cpu).unwrap()
}

/// Export `adapter`, read it back, and check that for every module llama.cpp's update
/// (scale · B_g·A_g, scale = alpha / r or 1 when alpha = 0) on llama.cpp's own base tensor equals
/// the GGUF-permuted PEFT-merged HF weight.
fn check_export(dir: &Path, adapter: &Adapter, expect_alpha: f32, expect_folded: bool) {
    let base_path = dir.join("model-f32.gguf");
    let header = bedside_model::read_gguf_header(&base_path).unwrap();
    let cfg = ModelConfig::from_gguf(&base_path, &header).unwrap();
    let out = export_gguf(adapter, &cfg, "llama", Some("test")).unwrap();
    assert_eq!(out.folded, expect_folded);
    assert!((out.alpha - expect_alpha).abs() < 1e-5, "alpha {} vs {expect_alpha}", out.alpha);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("lora.gguf");
    std::fs::write(&p, &out.bytes).unwrap();
    let mut f = std::fs::File::open(&p).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let md = |k: &str| content.metadata.get(k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(md("general.type").to_string().unwrap(), "adapter");
    assert_eq!(md("adapter.type").to_string().unwrap(), "lora");
    assert_eq!(md("general.architecture").to_string().unwrap(), "llama");
    let alpha = md("adapter.lora.alpha").to_f32().unwrap();
    assert_eq!(alpha, out.alpha);
    assert_eq!(content.tensor_infos.len(), 2 * out.pairs);
    for name in content.tensor_infos.keys() {
        assert!(name.ends_with(".weight.lora_a") || name.ends_with(".weight.lora_b"), "{name}");
        let base = name.trim_end_matches(".lora_a").trim_end_matches(".lora_b");
        assert!(header.tensor_infos.contains_key(base), "{name}: base tensor {base} not in the model GGUF");
    }
    let hf = bedside_model::load_hf_dir(dir, &LoadOptions::default()).unwrap();
    let mut hf_lin = hf.clone();
    let hf_w: std::collections::HashMap<String, Tensor> =
        hf_lin.linears_mut().into_iter().map(|(n, l)| (n, l.base.to_dense(DType::F32).unwrap())).collect();
    let mut base_f = std::fs::File::open(&base_path).unwrap();
    for pair in adapter.pairs() {
        let t = gguf_target(&pair.module, &cfg).unwrap();
        let a = read_t(&content, &mut f, &format!("{}.lora_a", t.tensor));
        let b = read_t(&content, &mut f, &format!("{}.lora_b", t.tensor));
        let w_gguf = read_t(&header, &mut base_f, &t.tensor);
        let (a, b, w_gguf) = match t.expert {
            Some(e) => (a.get(e).unwrap(), b.get(e).unwrap(), w_gguf.get(e).unwrap()),
            None => (a, b, w_gguf),
        };
        // ggml ne order: lora_a ne = [in, r], lora_b ne = [r, out].
        let r = b.dims()[1];
        assert_eq!(a.dims(), [r, t.dims.1]);
        let scale = if alpha == 0.0 { 1.0 } else { alpha as f64 / r as f64 };
        let llama_cpp = (w_gguf + (b.matmul(&a).unwrap() * scale).unwrap()).unwrap();
        let merged_hf = (&hf_w[&pair.module] + adapter.delta(&pair.module).unwrap().unwrap()).unwrap();
        let want = match t.permute_heads {
            Some(n) => bedside_model::permute_tensor_rows(&merged_hf, n, false).unwrap(),
            None => merged_hf,
        };
        let d = max_abs(&llama_cpp, &want);
        assert!(d < 1e-5, "{}: {d}", pair.module);
    }
}

#[test]
fn gguf_export_matches_peft_delta_in_llama_cpp_layout() {
    for m in ["tiny-llama", "tiny-mixtral"] {
        let Some(dir) = bedside_testutil::fixture(m) else { return };
        let plain = load_peft(&dir.join("lora"), &Device::Cpu).unwrap();
        check_export(&dir, &plain, 8.0, false);
        // rsLoRA with one rank: alpha·√r, so llama.cpp's alpha/r equals alpha/√r.
        let rs = load_peft(&dir.join("rslora"), &Device::Cpu).unwrap();
        check_export(&dir, &rs, 8.0 * 2.0, false);
        // Per-module alpha: folded into B, alpha written as 0.
        let mut pat = rs.clone();
        pat.config.alpha_pattern.insert("q_proj".into(), 3.0);
        pat.config.alpha_pattern.insert(r"layers\.1\.self_attn\.v_proj".into(), 11.0);
        check_export(&dir, &pat, 0.0, true);
    }
}

#[test]
fn gguf_export_stacks_experts() {
    // An adapter on Mixtral's experts (w1/w2/w3) with one expert left out: stacked into
    // ffn_*_exps with the missing expert as zeros.
    let Some(dir) = bedside_testutil::fixture("tiny-mixtral") else { return };
    let mut model = bedside_model::load_hf_dir(&dir, &LoadOptions::default()).unwrap();
    let cfg = bedside_lora::LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        target_modules: vec!["w1".into(), "w2".into(), "w3".into()],
        ..Default::default()
    };
    let vars = bedside_lora::attach_trainable(&mut model, &cfg, 3, DType::F32).unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    for (k, v) in &vars {
        if k.contains("experts.2.") {
            continue;
        }
        let t = if k.contains("lora_B") { v.as_tensor().ones_like().unwrap().affine(0.1, 0.0).unwrap() } else { v.as_tensor().clone() };
        tensors.insert(k.clone(), t);
    }
    let adapter = Adapter { config: cfg, tensors };
    check_export(&dir, &adapter, 4.0, false);
    let header = bedside_model::read_gguf_header(&dir.join("model-f32.gguf")).unwrap();
    let mc = ModelConfig::from_gguf(&dir.join("model-f32.gguf"), &header).unwrap();
    let out = export_gguf(&adapter, &mc, "llama", None).unwrap();
    assert_eq!(out.zero_filled_experts, 2 * 3);
    assert_eq!(out.pairs, 2 * 3);
}
