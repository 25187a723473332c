//! Broken files and impossible requests give errors that name the file and the problem, and
//! never panic.

use std::path::{Path, PathBuf};

use bedside_model::{load_gguf, load_hf_dir, Cache, LoadOptions, Logits, ModelError};
use candle_core::{Device, Tensor};

fn tiny(name: &str) -> Option<PathBuf> {
    bedside_testutil::fixture(name)
}

fn copy_dir(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

fn gguf_err(bytes: &[u8]) -> (PathBuf, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.gguf");
    std::fs::write(&p, bytes).unwrap();
    let e = match load_gguf(&p, &LoadOptions::default()) {
        Ok(_) => panic!("loading a broken GGUF succeeded"),
        Err(e) => e.to_string(),
    };
    (p, e, dir)
}

#[test]
fn truncated_gguf_names_file_and_tensor() {
    let Some(dir) = tiny("tiny-llama") else { return };
    let full = std::fs::read(dir.join("model-f32.gguf")).unwrap();
    // Cut in the tensor data: the header parses, a tensor runs off the end.
    let (p, e, _d) = gguf_err(&full[..full.len() - 1000]);
    assert!(e.contains(&p.display().to_string()), "{e}");
    assert!(e.contains("truncated") && e.contains("tensor '"), "{e}");
    // Cut in the header.
    let (p, e, _d) = gguf_err(&full[..200]);
    assert!(e.contains(&p.display().to_string()) && e.contains("truncated or corrupt"), "{e}");
    // Almost nothing.
    let (_, e, _d) = gguf_err(b"GG");
    assert!(e.contains("only 2 bytes"), "{e}");
}

#[test]
fn wrong_magic_is_reported() {
    let (p, e, _d) = gguf_err(b"PK\x03\x04 this is a zip file, not a model");
    assert!(e.contains(&p.display().to_string()) && e.contains("wrong magic"), "{e}");
}

#[test]
fn unknown_gguf_architecture_is_refused() {
    use candle_core::quantized::{gguf_file, QTensor};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gpt2.gguf");
    let t =
        QTensor::quantize(&Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(), candle_core::quantized::GgmlDType::F32)
            .unwrap();
    let arch = gguf_file::Value::String("gpt2".into());
    let mut f = std::fs::File::create(&p).unwrap();
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[("token_embd.weight", &t)]).unwrap();
    drop(f);
    let e = load_gguf(&p, &LoadOptions::default()).expect_err("gpt2 must be refused").to_string();
    assert!(e.contains("unsupported architecture 'gpt2'") && e.contains("gpt2.gguf"), "{e}");
}

#[test]
fn safetensors_header_that_lies_about_sizes() {
    let Some(src) = tiny("tiny-llama") else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    // A header promising 4096 bytes of data for a tensor, followed by 16.
    let header = br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[32,32],"data_offsets":[0,4096]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
    let e = load_hf_dir(dir.path(), &LoadOptions::default()).expect_err("must fail").to_string();
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");
}

#[test]
fn missing_and_malformed_config() {
    let Some(src) = tiny("tiny-llama") else { return };
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&src, dir.path());
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = load_hf_dir(dir.path(), &LoadOptions::default()).err().unwrap();
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");

    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"llama\", \"hidden_size\": 64,").unwrap();
    let e = load_hf_dir(dir.path(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("malformed JSON"), "{e}");

    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama", "hidden_size": "sixty-four"}"#).unwrap();
    let e = load_hf_dir(dir.path(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("'hidden_size'"), "{e}");

    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt_neox", "hidden_size": 64}"#).unwrap();
    let e = load_hf_dir(dir.path(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("unsupported architecture 'gpt_neox'"), "{e}");
}

#[test]
fn tensor_of_the_wrong_shape_is_named() {
    let Some(src) = tiny("tiny-llama") else { return };
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&src, dir.path());
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap().replace("\"intermediate_size\": 96", "\"intermediate_size\": 100");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let e = load_hf_dir(dir.path(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[96, 64]") && e.contains("expected [100, 64]"), "{e}");
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let Some(src) = tiny("tiny-llama") else { return };
    let model = load_hf_dir(&src, &LoadOptions::default()).unwrap();
    let ctx = model.context_length();
    let ids = Tensor::zeros((1, ctx + 1), candle_core::DType::U32, &Device::Cpu).unwrap();
    let e = model.forward(&ids, None, Logits::Last).err().unwrap();
    assert!(matches!(e, ModelError::ContextOverflow { needed, limit } if needed == ctx + 1 && limit == ctx), "{e}");
    // With a cache, the overflow comes at the step that crosses the limit.
    let mut cache = Cache::new(&model);
    model.forward(&Tensor::zeros((1, ctx), candle_core::DType::U32, &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last).unwrap();
    let e = model
        .forward(&Tensor::zeros((1, 1), candle_core::DType::U32, &Device::Cpu).unwrap(), Some(&mut cache), Logits::Last)
        .err()
        .unwrap();
    assert!(e.to_string().contains("context is 128 tokens"), "{e}");
}

#[test]
fn gguf_and_hf_layouts_agree_after_unpermuting() {
    // The q/k permutation helpers are inverses, and on the tiny model the GGUF q rows
    // un-permuted equal the HF rows.
    let Some(src) = tiny("tiny-llama") else { return };
    let hf = load_hf_dir(&src, &LoadOptions::default()).unwrap();
    let (gg, _) = load_gguf(&src.join("model-f32.gguf"), &LoadOptions::default()).unwrap();
    for (a, b) in
        [(&hf.layers[1].self_attn.q_proj, &gg.layers[1].self_attn.q_proj), (&hf.layers[1].self_attn.k_proj, &gg.layers[1].self_attn.k_proj)]
    {
        let (wa, wb) = (a.base.to_dense(candle_core::DType::F32).unwrap(), b.base.to_dense(candle_core::DType::F32).unwrap());
        let d = (wa - wb).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "q/k rows differ after un-permuting: {d}");
    }
    let w = hf.layers[0].self_attn.q_proj.base.to_dense(candle_core::DType::F32).unwrap();
    let there = bedside_model::permute_tensor_rows(&w, 4, false).unwrap();
    let back = bedside_model::permute_tensor_rows(&there, 4, true).unwrap();
    assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    assert_ne!(there.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
}
