//! Switching systems: a tuned system's adapter is merged into a dense f32 base (the tiny Llama
//! fixture, PEFT's own adapter and logits) and the base weights come back for the next system.

use bedside_eval::config::EvalConfig;
use bedside_eval::systems::{system_fingerprint, LocalSystems as Systems};
use bedside_model::Logits;
use candle_core::{DType, Device, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn adapters_merge_into_a_dense_base_and_come_out_between_systems() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let q = |p: std::path::PathBuf| p.display().to_string().replace('\\', "/");
    let text = format!(
        "name = \"systems\"\nmodel = \"{}\"\ndevice = \"cpu\"\nsystem_prompt = \"s\"\n\n[[systems]]\nname = \"base\"\n\n[[systems]]\nname = \"tuned\"\nadapters = [\"{}\"]\n",
        q(dir.join("model-f32.gguf")),
        q(dir.join("lora"))
    );
    let cfg = EvalConfig::parse(&text).unwrap();
    let reference = candle_core::safetensors::load(dir.join("lora/reference.safetensors"), &Device::Cpu).unwrap();
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let want = &reference["logits"];

    let mut sys = Systems::load(&cfg).unwrap();
    let logits = |s: &Systems| s.engine.model.forward(&ids, None, Logits::All).unwrap();
    sys.select(&cfg.systems[0]).unwrap();
    assert!(!sys.merged);
    let base = logits(&sys);
    let fp_base = system_fingerprint(&cfg, &sys, &cfg.systems[0]).unwrap();

    sys.select(&cfg.systems[1]).unwrap();
    assert!(sys.merged, "an f32 GGUF base takes the adapter merged");
    let tuned = logits(&sys);
    assert!(max_abs(&tuned, want) < 1e-4, "merged adapter vs PEFT: {}", max_abs(&tuned, want));
    assert!(max_abs(&base, want) > 1e-2, "the adapter must change the logits");
    assert!(sys.engine.model.linears_mut().iter().all(|(_, l)| l.lora.is_empty()), "merged, not attached");
    assert_ne!(system_fingerprint(&cfg, &sys, &cfg.systems[1]).unwrap(), fp_base);

    sys.select(&cfg.systems[0]).unwrap();
    assert!(!sys.merged);
    assert_eq!(max_abs(&logits(&sys), &base), 0.0, "the base weights came back exactly");
    assert_eq!(system_fingerprint(&cfg, &sys, &cfg.systems[0]).unwrap(), fp_base);
}
