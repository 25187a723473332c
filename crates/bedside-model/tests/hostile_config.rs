//! Issue 18: configs and weights a careless or hostile user hands over. Values no model can run
//! with, fields that would be ignored, layer counts that disagree with the files, huge sizes and
//! non-finite norms or embeddings are errors naming the file and field, from `load` and `inspect`
//! (`info`) alike, before anything is sized from them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bedside_model::{inspect, load_gguf, load_hf_dir, LoadOptions, ModelLocation};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

fn copy_hf(src: &Path, dst: &Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
}

/// A copy of tiny-llama's HF checkpoint with `edit` applied to its config.json; the errors of
/// loading and inspecting it.
fn hf_with_config(edit: impl Fn(&mut serde_json::Value)) -> Option<(String, String, PathBuf)> {
    let src = bedside_testutil::fixture("tiny-llama")?;
    let dir = tempfile::tempdir().unwrap().keep();
    copy_hf(&src, &dir);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let load = load_hf_dir(&dir, &LoadOptions::default()).expect_err("a bad config must not load").to_string();
    let info = inspect(&ModelLocation::HfDir(dir.clone())).expect_err("info must refuse what load refuses").to_string();
    Some((load, info, dir))
}

#[test]
fn hf_config_values_no_model_runs_with() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("hidden_act", serde_json::json!("gelu"), "silu"),
        ("tie_word_embeddings", serde_json::json!("yes"), "true or false"),
        ("rope_theta", serde_json::json!(0), "positive"),
        ("rms_norm_eps", serde_json::json!(-1), "positive"),
        ("rms_norm_eps", serde_json::json!(f64::MAX), "small number"),
        ("max_position_embeddings", serde_json::json!(1_000_000_000_000u64), "rotary tables"),
        ("hidden_size", serde_json::json!(1u64 << 40), "larger than any model"),
        ("vocab_size", serde_json::json!(1u64 << 40), "larger than any model"),
    ];
    for (field, value, why) in cases {
        let Some((load, info, dir)) = hf_with_config(|v| v[field] = value.clone()) else { return };
        for e in [&load, &info] {
            assert!(e.contains(field) && e.contains(why) && e.contains("config.json"), "{field} = {value}: {e}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// `num_hidden_layers: 1` with two layers on disk dropped one; 10^12 aborted on a 368 TB
/// allocation (and `info` printed it as fine).
#[test]
fn layer_count_must_match_the_weights() {
    for n in [1u64, 3, 1_000_000_000_000] {
        let Some((load, info, dir)) = hf_with_config(|v| v["num_hidden_layers"] = serde_json::json!(n)) else { return };
        for e in [&load, &info] {
            assert!(e.contains("num_hidden_layers"), "{n}: {e}");
            if n < 100 {
                assert!(e.contains(&format!("says {n} layers")) && e.contains("hold 2"), "{n}: {e}");
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// NaN or infinity in a norm or the embedding table is caught at load time, naming the tensor.
#[test]
fn non_finite_norms_and_embeddings_are_refused() {
    let Some(src) = bedside_testutil::fixture("tiny-llama") else { return };
    for (tensor, row) in
        [("model.layers.1.post_attention_layernorm.weight", 0), ("model.norm.weight", 0), ("model.embed_tokens.weight", 77)]
    {
        for bad in [f32::NAN, f32::INFINITY] {
            let dir = tempfile::tempdir().unwrap();
            copy_hf(&src, dir.path());
            let mut t: HashMap<String, Tensor> = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
            let w = t[tensor].clone();
            let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let per_row = if w.rank() == 2 { w.dims()[1] } else { 1 };
            v[row * per_row + 5] = bad;
            t.insert(tensor.into(), Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap());
            candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
            let e = load_hf_dir(dir.path(), &LoadOptions::default()).expect_err("non-finite weights must not load").to_string();
            assert!(e.contains(tensor) && e.contains("non-finite"), "{e}");
            if w.rank() == 2 {
                assert!(e.contains(&format!("row {row}")), "{e}");
            }
        }
    }
}

/// tiny-llama's GGUF rewritten with `edit` applied to its metadata and tensors.
fn gguf_with(
    edit_md: impl Fn(&mut HashMap<String, Value>),
    edit_t: impl Fn(&str, Tensor) -> Tensor,
) -> Option<(PathBuf, tempfile::TempDir)> {
    let src = bedside_testutil::fixture("tiny-llama")?.join("model-f32.gguf");
    let mut f = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut md = content.metadata.clone();
    edit_md(&mut md);
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let t = content.tensor(&mut f, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        let t = edit_t(name, t);
        tensors.push((name.clone(), QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32).unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("edited.gguf");
    let mut out = std::fs::File::create(&p).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
    Some((p, dir))
}

fn gguf_errors(p: &Path) -> (String, String) {
    let load = load_gguf(p, &LoadOptions::default()).expect_err("must not load").to_string();
    let info = inspect(&ModelLocation::Gguf(p.into())).expect_err("info must refuse what load refuses").to_string();
    (load, info)
}

#[test]
fn gguf_metadata_values_no_model_runs_with() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("llama.rope.freq_base", Value::F32(0.0), "positive"),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(-1.0), "positive"),
        ("llama.block_count", Value::U32(1), "says 1 layers"),
        ("llama.block_count", Value::U64(1_000_000_000_000), "block_count"),
        ("llama.context_length", Value::U64(1 << 40), "rotary tables"),
    ];
    for (key, value, why) in cases {
        let Some((p, _d)) = gguf_with(|md| drop(md.insert(key.into(), value.clone())), |_, t| t) else { return };
        let (load, info) = gguf_errors(&p);
        for e in [&load, &info] {
            assert!(e.contains(key.trim_start_matches("llama.")) && e.contains(why) && e.contains("edited.gguf"), "{key}: {e}");
        }
    }
}

#[test]
fn gguf_non_finite_norm_or_embedding_is_refused() {
    for tensor in ["output_norm.weight", "blk.0.attn_norm.weight", "token_embd.weight"] {
        let Some((p, _d)) = gguf_with(
            |_| {},
            |name, t| {
                if name != tensor {
                    return t;
                }
                let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v[7] = f32::NAN;
                Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
            },
        ) else {
            return;
        };
        let e = load_gguf(&p, &LoadOptions::default()).expect_err("must not load").to_string();
        assert!(e.contains(tensor) && e.contains("non-finite"), "{e}");
    }
}

/// `info` exited 0 on a GGUF cut short in its tensor data (printing `size 3.9 MB` beside
/// `parameters 134.5 M`) while `generate` refused it.
#[test]
fn info_refuses_a_truncated_gguf() {
    let Some(src) = bedside_testutil::fixture("tiny-llama") else { return };
    let full = std::fs::read(src.join("model-f32.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    let e = inspect(&ModelLocation::Gguf(p.clone())).expect_err("info must refuse a truncated file").to_string();
    assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");
}
