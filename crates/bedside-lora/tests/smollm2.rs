//! The default model (SmolLM2-135M Q4_1 GGUF: quantized, tied embeddings): an adapter trained on
//! the quantized base serves on it, merges into an HF checkpoint, and exports to GGUF.

use bedside_lora::{attach, attach_trainable, load_peft, save_peft, LoraConfig};
use bedside_model::{LoadOptions, Logits};
use candle_core::{DType, Device, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn smollm2_adapter_round_trip_merge_and_export() {
    let Some(path) = bedside_testutil::smollm2_gguf() else { return };
    let deq = LoadOptions { dequantize: true, ..Default::default() };
    let (mut model, header) = bedside_model::load_gguf(&path, &deq).unwrap();
    let cfg = LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() };
    let vars = attach_trainable(&mut model, &cfg, 42, DType::F32).unwrap();
    // formats.md §1.3: r = 8 on all seven modules of SmolLM2-135M is 2,442,240 parameters.
    let n: usize = vars.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    assert_eq!(n, 2_442_240);
    // Give B values so the adapter does something.
    for (i, (k, v)) in vars.iter().enumerate() {
        if k.contains("lora_B") {
            let t = Tensor::randn(0f32, 0.02, v.as_tensor().dims(), &Device::Cpu).unwrap();
            v.set(&(t * (1.0 + (i % 3) as f64)).unwrap()).unwrap();
        }
    }
    let ids = Tensor::new(&[[1u32, 9690, 198, 2683, 359, 253, 5356, 5646, 11173]], &Device::Cpu).unwrap();
    let want = model.forward(&ids, None, Logits::All).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ad_dir = tmp.path().join("adapter");
    save_peft(&ad_dir, &cfg, &vars).unwrap();
    let adapter = load_peft(&ad_dir, &Device::Cpu).unwrap();

    // Merge: the HF checkpoint with the LoRA folded in gives the same logits.
    let out = tmp.path().join("merged");
    std::fs::create_dir_all(&out).unwrap();
    bedside_lora::merge::write_merged_safetensors(&mut model, &out.join("model.safetensors"), DType::F32, &mut |_, _| {}).unwrap();
    let hf_cfg = bedside_lora::merge::hf_config_json(&model.cfg, DType::F32).unwrap();
    std::fs::write(out.join("config.json"), serde_json::to_vec(&hf_cfg).unwrap()).unwrap();
    let merged = bedside_model::load_hf_dir(&out, &LoadOptions::default()).unwrap();
    assert!(merged.cfg.tie_word_embeddings);
    let got = merged.forward(&ids, None, Logits::All).unwrap();
    let d = max_abs(&got, &want);
    assert!(d < 1e-3, "merged: {d}");

    // The same adapter on the still-quantized base: close to the dequantized run (the Q4_1
    // kernels quantize activations to 8 bits), and clearly moved from the base.
    let (mut q, _) = bedside_model::load_gguf(&path, &LoadOptions::default()).unwrap();
    let base_q = q.forward(&ids, None, Logits::All).unwrap();
    attach(&mut q, &adapter, 1.0).unwrap();
    let tuned_q = q.forward(&ids, None, Logits::All).unwrap();
    let moved = max_abs(&tuned_q, &base_q);
    let err = max_abs(&tuned_q, &want);
    eprintln!("quantized base: adapter moves logits by {moved:.3}, differs from f32 path by {err:.3}");
    assert!(err < moved, "quantized path error {err} vs adapter effect {moved}");

    // Export: one lora_a/lora_b pair per module, alpha 16.
    let mcfg = bedside_model::ModelConfig::from_gguf(&path, &header).unwrap();
    let g = bedside_lora::gguf::export_gguf(&adapter, &mcfg, "llama", None).unwrap();
    assert_eq!(g.pairs, 30 * 7);
    assert_eq!(g.alpha, 16.0);
}
