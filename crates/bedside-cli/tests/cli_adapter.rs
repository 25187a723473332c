//! `bedside adapter info|merge|export-gguf` and `--adapter` on generate, run as the real binary
//! against the PEFT fixtures (outputs of Python PEFT, not of bedside).

use std::path::Path;
use std::process::Command;

use bedside_model::{LoadOptions, Logits};
use candle_core::{DType, Device, Tensor};

fn bedside(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bedside")).args(args).env_remove("BEDSIDE_MODEL").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn info_reports_what_the_adapter_holds() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let (ok, out, err) = bedside(&["adapter", "info", s(&dir.join("rslora")), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["r"], 4);
    assert_eq!(v["lora_alpha"], 8.0);
    assert_eq!(v["use_rslora"], true);
    assert_eq!(v["pairs"], 14);
    assert_eq!(v["layers"], 2);
    // Parameter count straight from the safetensors header.
    let b = std::fs::read(dir.join("rslora/adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let params: u64 = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, t)| t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product::<u64>())
        .sum();
    assert_eq!(v["parameters"], params);
    let q = v["modules"].as_array().unwrap().iter().find(|m| m["module"] == "q_proj").unwrap();
    assert_eq!(q["scales"], serde_json::json!([4.0]));
    let (ok, out, _) = bedside(&["adapter", "info", s(&dir.join("rslora"))]);
    assert!(ok && out.contains("rsLoRA") && out.contains("down_proj"), "{out}");
    let (ok, _, err) = bedside(&["adapter", "info", s(&dir.join("nope"))]);
    assert!(!ok && err.contains("nope"), "{err}");
}

#[test]
fn merge_from_gguf_and_hf_reproduces_peft_merged_logits() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let reference = candle_core::safetensors::load(dir.join("lora/reference.safetensors"), &Device::Cpu).unwrap();
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let gguf = dir.join("model-f32.gguf");
    for base in [gguf.as_path(), dir.as_path()] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let (ok, _, err) = bedside(&["adapter", "merge", "--model", s(base), "--adapter", s(&dir.join("lora")), "--output", s(&out)]);
        assert!(ok, "{err}");
        let merged = bedside_model::load_hf_dir(&out, &LoadOptions::default()).unwrap();
        let got = merged.forward(&ids, None, Logits::All).unwrap();
        let d = max_abs(&got, &reference["merged_logits"]);
        assert!(d < 1e-4, "{}: {d}", base.display());
        // The merged directory tokenizes like the original HF tokenizer (tokenizer.json rebuilt
        // from GGUF metadata for the GGUF base, copied for the HF base).
        let tok = bedside_tokenizer::ModelTokenizer::from_hf_dir(&out).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_cases.json")).unwrap()).unwrap();
        for c in cases.as_array().unwrap() {
            let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(c["text"].as_str().unwrap(), false).unwrap(), want, "{}", c["text"]);
        }
        assert!(bedside_tokenizer::ChatTemplate::from_hf_dir(&out).unwrap().is_some());
        // A second merge into the same place needs --force.
        let (ok, _, err) = bedside(&["adapter", "merge", "--model", s(base), "--adapter", s(&dir.join("lora")), "--output", s(&out)]);
        assert!(!ok && err.contains("--force"), "{err}");
    }
}

#[test]
fn export_gguf_writes_llama_cpp_adapter() {
    let Some(dir) = bedside_testutil::fixture("tiny-mixtral") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rs.gguf");
    let (ok, _, err) = bedside(&[
        "adapter",
        "export-gguf",
        "--adapter",
        s(&dir.join("rslora")),
        "--model",
        s(&dir.join("model-f32.gguf")),
        "--output",
        s(&out),
    ]);
    assert!(ok, "{err}");
    let mut f = std::fs::File::open(&out).unwrap();
    let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    assert_eq!(c.metadata["general.type"].to_string().unwrap(), "adapter");
    assert_eq!(c.metadata["adapter.type"].to_string().unwrap(), "lora");
    // rsLoRA r=4, alpha=8: llama.cpp's alpha/r must equal 8/√4, so alpha is written as 16.
    assert_eq!(c.metadata["adapter.lora.alpha"].to_f32().unwrap(), 16.0);
    assert_eq!(c.tensor_infos["blk.1.attn_k.weight.lora_b"].shape.dims(), [32, 4]);
    assert_eq!(c.tensor_infos.len(), 2 * 2 * 4);
}

/// llama.cpp's own GGUF reader (gguf-py) reads the exported file, and the update llama.cpp
/// computes from it (alpha / r · B·A, q/k rows in its RoPE order) equals PEFT's update
/// (`scripts/check_gguf_lora.py`). Needs python3 with `gguf` (scripts/reference-requirements.txt);
/// CI installs it and sets BEDSIDE_REQUIRE_PYREF=1 so this cannot skip there.
#[test]
fn export_gguf_update_matches_peft_under_llama_cpp_reader() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let has_gguf = Command::new("python3").args(["-c", "import gguf, numpy"]).output().is_ok_and(|o| o.status.success());
    if !has_gguf {
        assert!(
            std::env::var("BEDSIDE_REQUIRE_PYREF").as_deref() != Ok("1"),
            "BEDSIDE_REQUIRE_PYREF=1 but python3 lacks gguf (pip install -r scripts/reference-requirements.txt)"
        );
        eprintln!("skipping: python3 with gguf-py is not available");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_gguf_lora.py");
    let tmp = tempfile::tempdir().unwrap();
    for variant in ["lora", "rslora"] {
        let out = tmp.path().join(format!("{variant}.gguf"));
        let adapter = dir.join(variant);
        let base = dir.join("model-f32.gguf");
        let (ok, _, err) = bedside(&["adapter", "export-gguf", "--adapter", s(&adapter), "--model", s(&base), "--output", s(&out)]);
        assert!(ok, "{err}");
        let run = Command::new("python3").arg(&script).arg(&base).arg(&adapter).arg(&out).output().unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{variant}: {stdout}{}", String::from_utf8_lossy(&run.stderr));
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["modules"], 14, "{variant}: {v}");
        assert!(v["worst_relative_difference"].as_f64().unwrap() <= 1e-5, "{variant}: {v}");
    }
}

#[test]
fn generate_takes_adapters() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let run = |adapter: Option<String>| {
        let mut args =
            vec!["generate", "--model", s(&dir), "--prompt", "Hello, world", "--temperature", "0", "--max-tokens", "8", "--json"];
        let a;
        if let Some(x) = adapter {
            a = x;
            args.push("--adapter");
            args.push(&a);
        }
        let (ok, out, err) = bedside(&args);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["text"].as_str().unwrap().to_string()
    };
    let lora = dir.join("lora").display().to_string();
    let base = run(None);
    let tuned = run(Some(lora.clone()));
    let off = run(Some(format!("{lora}:0")));
    assert_eq!(base, off);
    assert_ne!(base, tuned);
    let (ok, _, err) = bedside(&["generate", "--model", s(&dir), "--prompt", "x", "--adapter", "/no/such/adapter"]);
    assert!(!ok && err.contains("/no/such/adapter"), "{err}");
}
