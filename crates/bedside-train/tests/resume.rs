//! End-to-end runs on the tiny fixture model: an interrupted and resumed run ends with exactly
//! the adapter of an uninterrupted one; the same seed gives the same run; the loss falls; and
//! the run directory holds what it should.

use std::collections::HashMap;
use std::path::Path;

use bedside_data::Dialogue;
use bedside_train::{RunOptions, TrainConfig};
use candle_core::{Device, Tensor};

const PATIENTS: [(&str, &str); 6] = [
    ("My head hurts and I am scared.", "Rest, drink water, and call a doctor if it gets worse."),
    ("I feel dizzy when I stand up.", "Stand up slowly and drink fluids. See a doctor if you faint."),
    ("My child has a fever of 39.", "Give fluids and paracetamol. Call a doctor if she is drowsy."),
    ("I have a rash on my arm.", "Keep it clean and dry. See a doctor if it spreads."),
    ("My chest feels tight.", "Call emergency services now if the pain is severe."),
    ("I cannot sleep at night.", "Keep a regular bedtime and avoid screens before sleep."),
];

fn write_corpus(dir: &Path) -> std::path::PathBuf {
    let mut recs = Vec::new();
    for (i, (p, a)) in PATIENTS.iter().enumerate() {
        for k in 0..2 {
            recs.push(Dialogue {
                id: format!("t-{i}-{k}"),
                patient: format!("{p} ({k})"),
                answer: (*a).to_string(),
                split: if i == 5 { "validation".into() } else { "train".into() },
                ..Dialogue::default()
            });
        }
    }
    let f = dir.join("corpus.jsonl");
    bedside_data::write_jsonl_atomic(&f, &recs).unwrap();
    f
}

fn config(model: &Path, corpus: &Path, out: &Path, extra: &str) -> TrainConfig {
    let text = format!(
        r#"
[model]
path = {model:?}
base = "f32"
device = "cpu"
[data]
paths = [{corpus:?}]
max_seq_len = 96
[lora]
r = 4
alpha = 8
dropout = 0.1
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
[optim]
lr = 5e-3
warmup_steps = 2
batch_size = 2
grad_accum = 2
[run]
output_dir = {out:?}
max_steps = 6
seed = 7
eval_every = 3
save_every = 2
{extra}"#
    );
    TrainConfig::from_toml_str(Path::new("test.toml"), &text, &[]).unwrap()
}

fn adapter(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("adapter/adapter_model.safetensors"), &Device::Cpu).unwrap()
}

fn assert_same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    assert_eq!(a.len(), b.len());
    for (k, t) in a {
        let u = &b[k];
        let x = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = u.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x == y, "{what}: tensor {k} differs");
    }
}

#[test]
fn interrupted_and_resumed_run_matches_uninterrupted() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path());
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));

    let full = bedside_train::train(&config(&fx, &corpus, &a, ""), &RunOptions::default()).unwrap();
    assert_eq!(full.steps, 6);
    assert_eq!(full.train_examples, 10);
    let va = adapter(&a);
    // The run learned something: B left zero, validation loss fell.
    let b0 = &va["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    assert!(b0.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    let (before, after) = (full.val_loss_before.unwrap(), full.val_loss_after.unwrap());
    assert!(after < before, "validation loss {before} -> {after}");

    // Interrupted after step 3: the checkpoint at step 2 is the last one; step 3 is redone.
    let cfg = config(&fx, &corpus, &b, "");
    let part = bedside_train::train(&cfg, &RunOptions { stop_after: Some(3), ..Default::default() }).unwrap();
    assert_eq!(part.steps, 3);
    assert!(!b.join("adapter").exists());
    assert!(b.join("checkpoints/step-2/adapter_model.safetensors").is_file());
    assert!(b.join("checkpoints/step-2/optimizer.safetensors").is_file());
    // Without --resume a run refuses to overwrite.
    assert!(bedside_train::train(&cfg, &RunOptions::default()).is_err());
    let resumed = bedside_train::train(&cfg, &RunOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
    assert_eq!(resumed.steps, 6);
    assert_same(&va, &adapter(&b), "resumed vs uninterrupted");

    // metrics.jsonl has each step once, in order, after the resume rewrote steps 3..
    let m = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = m
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    assert!(std::fs::read_to_string(b.join("loss.svg")).unwrap().contains("<polyline"));
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["r"], 4);
    assert_eq!(cfg_json["peft_type"], "LORA");

    // Same seed, same run; another seed, another adapter.
    bedside_train::train(&config(&fx, &corpus, &c, ""), &RunOptions::default()).unwrap();
    assert_same(&va, &adapter(&c), "same seed");
    let d = tmp.path().join("d");
    let mut other = config(&fx, &corpus, &d, "");
    other.run.seed = 8;
    bedside_train::train(&other, &RunOptions::default()).unwrap();
    let vd = adapter(&d);
    let k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    assert_ne!(va[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(), vd[k].flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

/// A whole run with activation checkpointing (dropout, batches of 2, accumulation) ends with the
/// adapter of the same run without it, up to float rounding.
#[test]
fn activation_checkpointing_run_matches_plain_run() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path());
    let (a, b) = (tmp.path().join("plain"), tmp.path().join("ckpt"));
    let plain = bedside_train::train(&config(&fx, &corpus, &a, ""), &RunOptions::default()).unwrap();
    let cfg = config(&fx, &corpus, &b, "activation_checkpointing = true");
    assert!(cfg.run.activation_checkpointing);
    let ckpt = bedside_train::train(&cfg, &RunOptions::default()).unwrap();
    let (la, lb) = (plain.val_loss_after.unwrap(), ckpt.val_loss_after.unwrap());
    assert!((la - lb).abs() <= 1e-4 * la.abs(), "validation loss {la} vs {lb}");
    let (va, vb) = (adapter(&a), adapter(&b));
    assert_eq!(va.len(), vb.len());
    for (k, t) in &va {
        let d = (t - &vb[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let m = t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-4 * m.max(1e-6), "{k}: differs by {d} (max {m})");
    }
}

/// A loss that overflows stops the run with a message naming the step and the last checkpoint.
#[test]
fn non_finite_loss_stops_with_a_clear_message() {
    let Some(fx) = bedside_testutil::fixture("tiny-llama") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let corpus = write_corpus(tmp.path());
    let out = tmp.path().join("nan");
    let mut cfg = config(&fx, &corpus, &out, "");
    cfg.optim.lr = 1e30;
    cfg.optim.max_grad_norm = 0.0;
    cfg.optim.warmup_steps = 0;
    cfg.optim.schedule = bedside_train::Schedule::Constant;
    let err = bedside_train::train(&cfg, &RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("at step") && (err.contains("NaN") || err.contains("inf")), "{err}");
    assert!(err.contains("checkpoint"), "{err}");
    assert!(!out.join("adapter").exists());
}

/// The shipped configs parse (every field known) and point where the docs say.
#[test]
fn shipped_configs_parse() {
    let root = bedside_testutil::workspace_root();
    let mut n = 0;
    for e in std::fs::read_dir(root.join("configs")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("train-") && name.ends_with(".toml") {
            let c = TrainConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.lora_config().target_modules.len(), 7, "{name}");
            n += 1;
        }
    }
    assert!(n >= 3);
}
