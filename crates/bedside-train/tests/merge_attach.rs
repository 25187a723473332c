//! A merged adapter computes what the same adapter attached computes, for adapters from real
//! (short) training runs of several lengths, on safetensors and GGUF bases, module by module.
//!
//! Issue 18 reported `generate --adapter A` and `generate --adapter A --dequantize` (and the
//! model `adapter merge` writes) answering differently after a 6-step run. On the same base,
//! attached and merged agree to float rounding (checked here); the two commands differ in their
//! base: the first runs the Q4_1 weights with 8-bit activations in its one-row matmuls, the
//! others the dequantized f32 weights, and that run's adapter had left the first answer token a
//! near tie (0.04 logits between "C" and "A"). The last test bounds that difference: an adapter
//! on a quantized base adds no error beyond the base's own quantization error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bedside_data::Dialogue;
use bedside_lora::{attach, load_peft, merge_into, Adapter, Unmerge};
use bedside_model::{LoadOptions, Logits, Model};
use bedside_train::{RunOptions, TrainConfig};
use candle_core::{DType, Device, Tensor};

const PATIENTS: [(&str, &str); 4] = [
    ("My head hurts and I am scared.", "Rest, drink water, and call a doctor if it gets worse."),
    ("I feel dizzy when I stand up.", "Stand up slowly and drink fluids. See a doctor if you faint."),
    ("My child has a fever of 39.", "Give fluids and paracetamol. Call a doctor if she is drowsy."),
    ("My chest feels tight.", "Call emergency services now if the pain is severe."),
];

fn write_corpus(dir: &Path) -> PathBuf {
    let recs: Vec<Dialogue> = PATIENTS
        .iter()
        .enumerate()
        .map(|(i, (p, a))| Dialogue {
            id: format!("m-{i}"),
            patient: (*p).to_string(),
            answer: (*a).to_string(),
            split: if i == 3 { "validation".into() } else { "train".into() },
            ..Dialogue::default()
        })
        .collect();
    let f = dir.join("corpus.jsonl");
    bedside_data::write_jsonl_atomic(&f, &recs).unwrap();
    f
}

/// Train `steps` steps, keeping a checkpoint (a PEFT adapter directory) every `save_every`
/// steps; returns the adapter directories (the checkpoints, then the final adapter), shortest
/// run first.
fn train(model: &Path, base: &str, targets: &str, steps: usize, save_every: usize, out: &Path, corpus: &Path) -> Vec<PathBuf> {
    let text = format!(
        r#"
[model]
path = {model:?}
base = "{base}"
[data]
paths = [{corpus:?}]
max_seq_len = 48
[lora]
r = 4
alpha = 8
dropout = 0.0
target_modules = [{targets}]
[optim]
lr = 1e-2
warmup_steps = 1
batch_size = 1
grad_accum = 1
[run]
output_dir = {out:?}
max_steps = {steps}
seed = 3
eval_every = 0
save_every = {save_every}
"#
    );
    let cfg = TrainConfig::from_toml_str(Path::new("test.toml"), &text, &[]).unwrap();
    bedside_train::train(&cfg, &RunOptions::default()).unwrap();
    let mut dirs: Vec<(usize, PathBuf)> = std::fs::read_dir(out.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let n = p.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    dirs.sort();
    dirs.push((steps, out.join("adapter")));
    dirs.into_iter().map(|(_, p)| p).collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn logits(m: &Model, ids: &Tensor) -> Tensor {
    m.forward(ids, None, Logits::All).unwrap()
}

/// The adapter restricted to the modules whose name ends with `.{kind}`.
fn only(adapter: &Adapter, kind: &str) -> Adapter {
    let tensors: BTreeMap<String, Tensor> =
        adapter.tensors.iter().filter(|(k, _)| k.contains(&format!(".{kind}.lora_"))).map(|(k, t)| (k.clone(), t.clone())).collect();
    Adapter { config: adapter.config.clone(), tensors }
}

/// Attached, merged into the weights ([`merge_into`]) and written as a merged checkpoint
/// (`adapter merge`), the adapter gives the same logits; and so does each module kind alone.
fn check_merge_equals_attach(load: &dyn Fn() -> Model, dir: &Path, ids: &Tensor, kinds: &[&str], what: &str) {
    let adapter = load_peft(dir, &Device::Cpu).unwrap();
    let base = load();
    let base_logits = logits(&base, ids);
    let tol = |reference: &Tensor| 2e-5 * reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);

    let mut attached = load();
    attach(&mut attached, &adapter, 1.0).unwrap();
    let la = logits(&attached, ids);
    let moved = max_abs(&la, &base_logits);
    assert!(moved > 1e-3, "{what}: the trained adapter does not change the logits ({moved})");

    let mut merged = load();
    assert!(merge_into(&mut merged, &adapter, 1.0, &mut Unmerge::default()).unwrap(), "{what}: a dense f32 base merges");
    let lm = logits(&merged, ids);
    let d = max_abs(&la, &lm);
    eprintln!("{what}: adapter moves logits by {moved:.3e}; merged vs attached {d:.2e}");
    assert!(d <= tol(&la), "{what}: merged differs from attached by {d}");

    let tmp = tempfile::tempdir().unwrap();
    bedside_lora::merge::write_merged_safetensors(&mut attached, &tmp.path().join("model.safetensors"), DType::F32, &mut |_, _| {})
        .unwrap();
    let cfg = bedside_lora::merge::hf_config_json(&attached.cfg, DType::F32).unwrap();
    std::fs::write(tmp.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let written = bedside_model::load_hf_dir(tmp.path(), &LoadOptions::default()).unwrap();
    let d = max_abs(&la, &logits(&written, ids));
    assert!(d <= tol(&la), "{what}: the merged checkpoint differs from attached by {d}");

    for kind in kinds {
        let part = only(&adapter, kind);
        assert!(!part.tensors.is_empty(), "{what}: the run trained no '{kind}' factors");
        let mut a = load();
        attach(&mut a, &part, 1.0).unwrap();
        let mut m = load();
        assert!(merge_into(&mut m, &part, 1.0, &mut Unmerge::default()).unwrap());
        let (la, lm) = (logits(&a, ids), logits(&m, ids));
        let moved = max_abs(&la, &base_logits);
        assert!(moved > 0.0, "{what}/{kind}: no effect");
        let d = max_abs(&la, &lm);
        assert!(d <= tol(&la), "{what}/{kind}: merged differs from attached by {d} (the module moves logits by {moved})");
    }
}

const LLAMA_TARGETS: &str = r#""q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj""#;
const LLAMA_KINDS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[test]
fn trained_adapters_merge_as_attached_on_tiny_bases() {
    for (fx, targets, kinds) in [
        ("tiny-llama", LLAMA_TARGETS, &LLAMA_KINDS[..]),
        (
            "tiny-mixtral",
            r#""q_proj", "k_proj", "v_proj", "o_proj", "gate", "w1", "w2", "w3""#,
            &["q_proj", "k_proj", "v_proj", "o_proj", "gate", "w1", "w2", "w3"][..],
        ),
    ] {
        let Some(dir) = bedside_testutil::fixture(fx) else { return };
        let tmp = tempfile::tempdir().unwrap();
        let corpus = write_corpus(tmp.path());
        let ids = Tensor::new(&[[1u32, 37, 212, 5, 88, 301, 17, 44, 120, 9, 250, 3]], &Device::Cpu).unwrap();
        for (base_kind, model) in [("safetensors", dir.clone()), ("gguf", dir.join("model-f32.gguf"))] {
            // Runs of 3 and 6 steps (a checkpoint and the end of one run).
            let out = tmp.path().join(format!("run-{base_kind}"));
            let mut all = train(&model, "f32", targets, 6, 3, &out, &corpus);
            let load = || -> Model {
                if base_kind == "gguf" {
                    bedside_model::load_gguf(&model, &LoadOptions::default()).unwrap().0
                } else {
                    bedside_model::load_hf_dir(&model, &LoadOptions::default()).unwrap()
                }
            };
            // A one-step run too.
            let out1 = tmp.path().join(format!("run1-{base_kind}"));
            all.extend(train(&model, "f32", targets, 1, 1, &out1, &corpus));
            for a in &all {
                check_merge_equals_attach(&load, a, &ids, kinds, &format!("{fx} {base_kind} {}", a.display()));
            }
        }
    }
}

/// The default model (Q4_1 GGUF, tied embeddings), trained on its quantized base as the demo
/// does: merged and attached agree on the dequantized base; the checkpoint `adapter merge`
/// writes from the quantized base is that same model; and on the quantized base the adapter
/// adds no error beyond what quantization already costs the base.
#[test]
fn adapter_trained_on_the_quantized_default_model_merges_as_attached() {
    let Some(path) = bedside_testutil::smollm2_gguf() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path());
    let out = tmp.path().join("run");
    let checkpoints = train(&path, "quantized", LLAMA_TARGETS, 2, 1, &out, &corpus);
    assert_eq!(checkpoints.len(), 2);
    // 12 positions: fewer than the rows from which the quantized path dequantizes for a GEMM,
    // so the quantized logits below come from the 8-bit-activation kernels.
    let ids = Tensor::new(&[[1u32, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 28, 339, 1345]], &Device::Cpu).unwrap();
    let deq = || bedside_model::load_gguf(&path, &LoadOptions { dequantize: true, ..Default::default() }).unwrap().0;
    let quant = || bedside_model::load_gguf(&path, &LoadOptions::default()).unwrap().0;
    let adapter_dir = &checkpoints[0];
    check_merge_equals_attach(&deq, adapter_dir, &ids, &[], "smollm2 dequantized");

    let adapter = load_peft(adapter_dir, &Device::Cpu).unwrap();
    let mut deq_tuned = deq();
    attach(&mut deq_tuned, &adapter, 1.0).unwrap();
    let want = logits(&deq_tuned, &ids);
    // `adapter merge` attaches on the quantized base and folds each branch into its dequantized
    // weight while writing.
    let mut q_tuned = quant();
    attach(&mut q_tuned, &adapter, 1.0).unwrap();
    let merged_dir = tmp.path().join("merged");
    std::fs::create_dir_all(&merged_dir).unwrap();
    bedside_lora::merge::write_merged_safetensors(&mut q_tuned, &merged_dir.join("model.safetensors"), DType::F32, &mut |_, _| {}).unwrap();
    let cfg = bedside_lora::merge::hf_config_json(&q_tuned.cfg, DType::F32).unwrap();
    std::fs::write(merged_dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let written = bedside_model::load_hf_dir(&merged_dir, &LoadOptions::default()).unwrap();
    let d = max_abs(&want, &logits(&written, &ids));
    assert!(d < 1e-3, "the merged checkpoint differs from the adapter on the dequantized base by {d}");
    drop(written);
    std::fs::remove_dir_all(&merged_dir).unwrap();

    // ggml's kernels for every row count, as llama.cpp runs them.
    let mut base_q = quant();
    base_q.set_dense_prefill(false);
    let base_q = logits(&base_q, &ids);
    q_tuned.set_dense_prefill(false);
    let tuned_q = logits(&q_tuned, &ids);
    let base_err = max_abs(&base_q, &logits(&deq(), &ids));
    let tuned_err = max_abs(&tuned_q, &want);
    let moved = max_abs(&want, &logits(&deq(), &ids));
    eprintln!("quantized vs dequantized: base {base_err:.3}, with the adapter {tuned_err:.3}; the adapter moves logits by {moved:.3}");
    assert!(moved > 0.1, "the trained adapter hardly changes the model ({moved})");
    // A branch missing or misapplied on the quantized path leaves an error the size of the
    // adapter's own effect; a working one leaves the base's rounding error, somewhat amplified
    // (the largest of 12 × 49,152 logits, so the bound on the ratio is loose).
    assert!(tuned_err < 0.5 * moved, "the adapter is not applied on the quantized base: error {tuned_err}, adapter effect {moved}");
    assert!(tuned_err <= 2.0 * base_err + 0.05, "the adapter on the quantized base adds error: {tuned_err} vs the base's {base_err}");
}
