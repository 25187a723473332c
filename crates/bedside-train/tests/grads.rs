//! LoRA gradients against PyTorch + PEFT (`../shared/fixtures/tiny-*/{lora,rslora}/grads.safetensors`),
//! central finite differences, and the zero-gradient guard.

use std::collections::HashMap;
use std::path::Path;

use bedside_model::{DropoutRng, LoadOptions, Logits, Mode, Model};
use bedside_train::loss::{causal_lm_loss, collect_grads, ZeroGradGuard};
use bedside_train::{attach_adapter_trainable, TrainError};
use candle_core::{DType, Device, Tensor, Var};

fn load_st(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn model(fixture: &Path, gguf: bool) -> Model {
    let opts = LoadOptions::default();
    if gguf {
        bedside_model::load_gguf(&fixture.join("model-f32.gguf"), &opts).unwrap().0
    } else {
        bedside_model::load_hf_dir(fixture, &opts).unwrap()
    }
}

fn ids_labels(adapter_dir: &Path) -> (Tensor, Vec<Vec<i64>>, f32) {
    let r = load_st(&adapter_dir.join("reference.safetensors"));
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let labels = r["labels"].to_vec2::<i64>().unwrap();
    let loss = r["loss"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    (ids, labels, loss)
}

fn loss_of(m: &Model, ids: &Tensor, labels: &[Vec<i64>], mode: Mode) -> Tensor {
    let logits = m.forward_with(ids, None, Logits::All, mode).unwrap();
    causal_lm_loss(&logits, labels).unwrap()
}

/// Training without dropout (the adapters attached here have none).
fn train() -> Mode<'static> {
    Mode::Train { dropout: None }
}

/// Every LoRA gradient within 1e-4 relative (max-abs difference / max-abs reference) of PEFT's.
fn check_grads(name: &str, variant: &str, gguf: bool) {
    let Some(fx) = bedside_testutil::fixture(name) else { return };
    let ad = fx.join(variant);
    let mut m = model(&fx, gguf);
    let adapter = bedside_lora::load_peft(&ad, &Device::Cpu).unwrap();
    let vars = attach_adapter_trainable(&mut m, &adapter).unwrap();
    let (ids, labels, ref_loss) = ids_labels(&ad);
    let loss = loss_of(&m, &ids, &labels, train());
    let l = loss.to_scalar::<f32>().unwrap();
    assert!((l - ref_loss).abs() <= 1e-4 * ref_loss.abs(), "{name}/{variant} gguf={gguf}: loss {l} vs PEFT {ref_loss}");
    let store = loss.backward().unwrap();
    let (grads, missing) = collect_grads(&vars, &store).unwrap();
    assert!(missing.is_empty(), "no gradient reached {missing:?}");
    let reference = load_st(&ad.join("grads.safetensors"));
    assert_eq!(reference.len(), vars.len(), "{name}/{variant}: every reference gradient has a variable");
    let mut worst = 0f32;
    for ((k, _), g) in vars.iter().zip(&grads) {
        let want = reference.get(&format!("{k}.grad")).unwrap_or_else(|| panic!("no reference gradient for {k}"));
        assert_eq!(g.dims(), want.dims(), "{k}");
        let rel = max_abs(&(g - want).unwrap()) / max_abs(want);
        worst = worst.max(rel);
        assert!(rel < 1e-4, "{name}/{variant} gguf={gguf}: {k} differs by {rel} (relative)");
    }
    eprintln!("{name}/{variant} gguf={gguf}: {} gradients, worst relative difference {worst:.2e}", grads.len());

    // The trainer's own step, whose vocabulary head and loss are one fused op on the CPU,
    // against PEFT as well.
    let n = labels.iter().map(|l| l.iter().skip(1).filter(|&&y| y != bedside_train::loss::IGNORE).count()).sum::<usize>();
    let (l, grads) = bedside_train::trainer::loss_and_grads(&m, &vars, &ids, &labels, n as f64, false, &mut DropoutRng::new(0)).unwrap();
    assert!((l as f32 - ref_loss).abs() <= 1e-4 * ref_loss.abs(), "{name}/{variant} gguf={gguf}: trainer loss {l} vs PEFT {ref_loss}");
    for ((k, _), g) in vars.iter().zip(&grads) {
        let want = &reference[&format!("{k}.grad")];
        let rel = max_abs(&(g - want).unwrap()) / max_abs(want);
        assert!(rel < 1e-4, "{name}/{variant} gguf={gguf}: trainer step's {k} differs from PEFT by {rel}");
    }
}

#[test]
fn tiny_llama_lora_grads_hf() {
    check_grads("tiny-llama", "lora", false);
}
#[test]
fn tiny_llama_rslora_grads_hf() {
    check_grads("tiny-llama", "rslora", false);
}
#[test]
fn tiny_llama_lora_grads_gguf() {
    check_grads("tiny-llama", "lora", true);
}
#[test]
fn tiny_llama_rslora_grads_gguf() {
    check_grads("tiny-llama", "rslora", true);
}
#[test]
fn tiny_mixtral_lora_grads_hf() {
    check_grads("tiny-mixtral", "lora", false);
}
#[test]
fn tiny_mixtral_rslora_grads_hf() {
    check_grads("tiny-mixtral", "rslora", false);
}
#[test]
fn tiny_mixtral_lora_grads_gguf() {
    check_grads("tiny-mixtral", "lora", true);
}
#[test]
fn tiny_mixtral_rslora_grads_gguf() {
    check_grads("tiny-mixtral", "rslora", true);
}

/// Central finite differences of the loss agree with the analytic gradient on the entries with
/// the largest gradients of a few factors (f32 model, so eps is large and the tolerance loose).
#[test]
fn finite_differences_tiny_llama() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let ad = fx.join("lora");
    let mut m = model(&fx, false);
    let adapter = bedside_lora::load_peft(&ad, &Device::Cpu).unwrap();
    let vars = attach_adapter_trainable(&mut m, &adapter).unwrap();
    let (ids, labels, _) = ids_labels(&ad);
    let store = loss_of(&m, &ids, &labels, train()).backward().unwrap();
    let (grads, _) = collect_grads(&vars, &store).unwrap();
    let picks = [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
        "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
    ];
    let mut checked = 0;
    for key in picks {
        let i = vars.iter().position(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} not attached"));
        let var: &Var = &vars[i].1;
        let g = grads[i].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let j = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eps = 1e-2f32;
        let at = |delta: f32| -> f64 {
            let mut v = orig.clone();
            v[j] += delta;
            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap()).unwrap();
            loss_of(&m, &ids, &labels, train()).to_scalar::<f32>().unwrap() as f64
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        var.set(&Tensor::from_vec(orig.clone(), var.dims(), &Device::Cpu).unwrap()).unwrap();
        let an = g[j] as f64;
        assert!((fd - an).abs() <= 0.03 * an.abs() + 2e-4, "{key}[{j}]: finite difference {fd} vs analytic {an}");
        checked += 1;
    }
    assert_eq!(checked, 4);
}

/// The guard fails a run whose gradients were cut: in inference mode the model uses candle's
/// fused rms_norm / softmax / rope, which record no backward, so nothing reaches the adapter.
#[test]
fn zero_gradient_guard_triggers_on_the_fused_path() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let ad = fx.join("lora");
    let mut m = model(&fx, false);
    let adapter = bedside_lora::load_peft(&ad, &Device::Cpu).unwrap();
    let vars = attach_adapter_trainable(&mut m, &adapter).unwrap();
    let (ids, labels, _) = ids_labels(&ad);

    let store = loss_of(&m, &ids, &labels, Mode::Infer).backward().unwrap();
    let (grads, _) = collect_grads(&vars, &store).unwrap();
    let err = ZeroGradGuard::new(&vars).check(&vars, &grads).unwrap_err();
    match &err {
        TrainError::ZeroGradient(names) => {
            // The fused final norm cuts every path, so every parameter is named.
            assert_eq!(names.len(), vars.len(), "{err}");
            assert!(err.to_string().contains("layers.0.self_attn.q_proj.lora_A"), "{err}");
        }
        e => panic!("unexpected error {e}"),
    }

    let store = loss_of(&m, &ids, &labels, train()).backward().unwrap();
    let (grads, _) = collect_grads(&vars, &store).unwrap();
    let mut g = ZeroGradGuard::new(&vars);
    g.check(&vars, &grads).unwrap();
    assert!(g.done());
}

/// A fresh adapter (B = 0): A's gradient is structurally zero at step 1, so the guard defers
/// A until B moves, but still fails a B whose gradient is zero.
#[test]
fn guard_defers_a_while_b_is_zero() {
    let dev = Device::Cpu;
    let a = Var::from_tensor(&Tensor::ones((2, 3), DType::F32, &dev).unwrap()).unwrap();
    let b = Var::zeros((4, 2), DType::F32, &dev).unwrap();
    let vars = vec![("m.lora_A.weight".to_string(), a), ("m.lora_B.weight".to_string(), b.clone())];
    let zeros_a = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let ones_b = Tensor::ones((4, 2), DType::F32, &dev).unwrap();
    let mut g = ZeroGradGuard::new(&vars);
    g.check(&vars, &[zeros_a.clone(), ones_b.clone()]).unwrap();
    assert!(!g.done());
    b.set(&ones_b).unwrap();
    let e = g.check(&vars, &[zeros_a.clone(), ones_b.clone()]).unwrap_err().to_string();
    assert!(e.contains("m.lora_A.weight") && !e.contains("m.lora_B.weight"), "{e}");
    let e = ZeroGradGuard::new(&vars)
        .check(
            &vars,
            &[
                ones_b.clone().narrow(0, 0, 2).unwrap().narrow(1, 0, 2).unwrap().pad_with_zeros(1, 0, 1).unwrap(),
                ones_b.zeros_like().unwrap(),
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.lora_B.weight"), "{e}");
}

/// Activation checkpointing gives PEFT's loss and gradients, and with LoRA dropout on it gives
/// exactly the ordinary backward's gradients: each layer's recompute replays its dropout masks.
fn checkpointed_matches(name: &str, gguf: bool) {
    let Some(fx) = bedside_testutil::fixture(name) else { return };
    let ad = fx.join("lora");
    let mut m = model(&fx, gguf);
    let adapter = bedside_lora::load_peft(&ad, &Device::Cpu).unwrap();
    let vars = attach_adapter_trainable(&mut m, &adapter).unwrap();
    let (ids, labels, ref_loss) = ids_labels(&ad);
    let n = labels.iter().map(|l| l.iter().skip(1).filter(|&&y| y != bedside_train::loss::IGNORE).count()).sum::<usize>();
    let (l, grads) = bedside_train::recompute::loss_and_grads(&m, &vars, &ids, &labels, n as f64, &mut DropoutRng::new(0)).unwrap();
    assert!((l as f32 - ref_loss).abs() <= 1e-4 * ref_loss.abs(), "{name} gguf={gguf}: checkpointed loss {l} vs PEFT {ref_loss}");
    let reference = load_st(&ad.join("grads.safetensors"));
    for ((k, _), g) in vars.iter().zip(&grads) {
        let want = &reference[&format!("{k}.grad")];
        let rel = max_abs(&(g - want).unwrap()) / max_abs(want);
        assert!(rel < 1e-4, "{name} gguf={gguf}: checkpointed {k} differs from PEFT by {rel}");
    }

    for (_, lin) in m.linears_mut() {
        for br in lin.lora.iter_mut() {
            br.dropout = 0.3;
        }
    }
    let mut rng = DropoutRng::new(0x5eed);
    let store = loss_of(&m, &ids, &labels, Mode::Train { dropout: Some(&mut rng) }).backward().unwrap();
    let (plain, _) = collect_grads(&vars, &store).unwrap();
    let after_plain = rng.state();
    assert_ne!(after_plain, 0x5eed, "dropout masks were drawn");
    let mut rng = DropoutRng::new(0x5eed);
    let (_, ckpt) = bedside_train::recompute::loss_and_grads(&m, &vars, &ids, &labels, n as f64, &mut rng).unwrap();
    assert_eq!(rng.state(), after_plain, "the RNG must end where an ordinary step leaves it");
    let mut dropout_changed = false;
    for (((k, _), p), (c, nodrop)) in vars.iter().zip(&plain).zip(ckpt.iter().zip(&grads)) {
        let scale = max_abs(p).max(1e-12);
        let rel = max_abs(&(p - c).unwrap()) / scale;
        assert!(rel < 1e-5, "{name} gguf={gguf}: with dropout, checkpointed {k} differs from the plain backward by {rel}");
        dropout_changed |= max_abs(&(p - nodrop).unwrap()) / scale > 1e-3;
    }
    assert!(dropout_changed, "dropout 0.3 should have changed the gradients");
}

#[test]
fn checkpointed_grads_tiny_llama() {
    checkpointed_matches("tiny-llama", false);
    checkpointed_matches("tiny-llama", true);
}

#[test]
fn checkpointed_grads_tiny_mixtral() {
    checkpointed_matches("tiny-mixtral", false);
}

/// A bf16 base (activations in bf16, LoRA parameters in f32) trains: every LoRA parameter gets a
/// gradient close to PEFT's f32 one, within what bf16's 8-bit mantissa allows.
fn bf16_base_follows_peft(name: &str) {
    let Some(fx) = bedside_testutil::fixture(name) else { return };
    let ad = fx.join("lora");
    let opts = LoadOptions { dtype: Some(DType::BF16), ..LoadOptions::default() };
    let mut m = bedside_model::load_hf_dir(&fx, &opts).unwrap();
    let adapter = bedside_lora::load_peft(&ad, &Device::Cpu).unwrap();
    let vars = attach_adapter_trainable(&mut m, &adapter).unwrap();
    let (ids, labels, ref_loss) = ids_labels(&ad);
    let n = labels.iter().map(|l| l.iter().skip(1).filter(|&&y| y != bedside_train::loss::IGNORE).count()).sum::<usize>();
    let (l, grads) = bedside_train::trainer::loss_and_grads(&m, &vars, &ids, &labels, n as f64, false, &mut DropoutRng::new(0)).unwrap();
    assert!((l as f32 - ref_loss).abs() <= 2e-2 * ref_loss.abs(), "{name} bf16: loss {l} vs PEFT {ref_loss}");
    let reference = load_st(&ad.join("grads.safetensors"));
    let mut worst = 0f32;
    for ((k, _), g) in vars.iter().zip(&grads) {
        assert_eq!(g.dtype(), DType::F32, "{k}: LoRA parameters and their gradients stay f32");
        let want = &reference[&format!("{k}.grad")];
        let rel = max_abs(&(g - want).unwrap()) / max_abs(want);
        worst = worst.max(rel);
        assert!(rel < 0.1, "{name} bf16: {k} differs from PEFT's f32 gradient by {rel}");
    }
    eprintln!("{name} bf16: worst relative difference {worst:.2e}");
}

#[test]
fn bf16_base_grads_tiny_llama() {
    bf16_base_follows_peft("tiny-llama");
}

#[test]
fn bf16_base_grads_tiny_mixtral() {
    bf16_base_follows_peft("tiny-mixtral");
}
