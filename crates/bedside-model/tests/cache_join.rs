//! Continuous batching's cache operations: sequences that join a running batch at different
//! times, each with its own length, and leave it, decode exactly as they would alone.

use bedside_model::{load_hf_dir, Cache, LoadOptions, Logits, Model};
use candle_core::{Device, IndexOp, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// A sequence decoded alone, as the reference.
struct Single {
    cache: Cache,
    logits: Tensor,
}

impl Single {
    fn new(model: &Model, prompt: &[u32]) -> Self {
        let mut cache = Cache::new(model);
        let logits =
            model.forward(&Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut cache), Logits::Last).unwrap();
        Self { cache, logits: logits.squeeze(0).unwrap() }
    }
    fn step(&mut self, model: &Model, tok: u32) {
        let l =
            model.forward(&Tensor::new(&[tok], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut self.cache), Logits::Last).unwrap();
        self.logits = l.squeeze(0).unwrap();
    }
}

#[test]
fn rows_join_and_leave_a_running_batch() {
    for name in ["tiny-llama", "tiny-mixtral"] {
        let Some(dir) = bedside_testutil::fixture(name) else {
            return;
        };
        let model = load_hf_dir(&dir, &LoadOptions::default()).unwrap();
        let prompts: [Vec<u32>; 3] = [(3..15).collect(), (40..45).collect(), (100..119).collect()];
        let mut singles: Vec<Single> = Vec::new();
        // `rows[i]`: which single sequence batch row i is.
        let mut rows: Vec<usize> = Vec::new();
        let mut batch = Cache::with_padding(&model, Vec::new());
        let mut batch_logits: Option<Tensor> = None;
        let mut step = 0u32;
        let mut decode =
            |model: &Model, batch: &mut Cache, rows: &[usize], singles: &mut [Single], logits: &mut Option<Tensor>, n: usize| {
                for _ in 0..n {
                    let toks: Vec<u32> = rows.iter().map(|&r| 200 + 7 * r as u32 + step).collect();
                    step += 1;
                    let l = model
                        .forward(&Tensor::from_vec(toks.clone(), (rows.len(), 1), &Device::Cpu).unwrap(), Some(batch), Logits::Last)
                        .unwrap();
                    for (slot, &r) in rows.iter().enumerate() {
                        singles[r].step(model, toks[slot]);
                        let d = max_abs_diff(&l.i(slot).unwrap(), &singles[r].logits);
                        assert!(d < 1e-4, "{name}: step {step}, sequence {r} in the batch differs from alone by {d}");
                    }
                    *logits = Some(l);
                }
            };
        for (i, p) in prompts.iter().enumerate() {
            // Prefill alone, then join: the first row starts the batch, the second is shorter
            // than the batch (padded), the third longer (the batch is padded).
            let s = Single::new(&model, p);
            let mut own = Cache::new(&model);
            let l = model
                .forward(&Tensor::new(p.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut own), Logits::Last)
                .unwrap();
            assert!(max_abs_diff(&l.squeeze(0).unwrap(), &s.logits) < 1e-6);
            singles.push(s);
            batch.join(own).unwrap();
            rows.push(i);
            assert_eq!(batch.batch_size(), rows.len());
            decode(&model, &mut batch, &rows, &mut singles, &mut batch_logits, 2);
        }
        assert_eq!(batch.pads().iter().copied().min(), Some(0));
        // The longest row leaves: every remaining row's padding goes.
        let len_before = batch.len();
        batch.retain_rows(&[0, 1]).unwrap();
        rows.truncate(2);
        batch.trim_padding().unwrap();
        assert!(batch.len() < len_before, "{name}: trimming kept {} of {len_before} positions", batch.len());
        assert_eq!(batch.pads().iter().copied().min(), Some(0));
        decode(&model, &mut batch, &rows, &mut singles, &mut batch_logits, 3);
        // Joining into an empty batch is the same as starting one.
        let mut empty = Cache::with_padding(&model, Vec::new());
        empty.join(batch).unwrap();
        assert_eq!(empty.batch_size(), 2);
    }
}

/// The tiny Llama with one key/value head (multi-query attention): its first head's k/v rows.
fn one_kv_head_model(dir: &std::path::Path) -> (tempfile::TempDir, Model) {
    let out = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let head_dim = cfg["head_dim"].as_u64().unwrap() as usize;
    cfg["num_key_value_heads"] = 1.into();
    std::fs::write(out.path().join("config.json"), cfg.to_string()).unwrap();
    let mut tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
            *t = t.narrow(0, 0, head_dim).unwrap().contiguous().unwrap();
        }
    }
    candle_core::safetensors::save(&tensors, out.path().join("model.safetensors")).unwrap();
    let model = load_hf_dir(out.path(), &LoadOptions::default()).unwrap();
    (out, model)
}

/// With one key/value head, a single row's trimmed cache is a view that starts past its buffer's
/// first element (no copy is needed): decoding must read from where the view starts.
#[test]
fn a_trimmed_single_row_with_one_kv_head_decodes_as_alone() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else { return };
    let (_keep, model) = one_kv_head_model(&dir);
    let (long, short): (Vec<u32>, Vec<u32>) = ((3..20).collect(), (40..46).collect());
    let pads = vec![0, long.len() - short.len()];
    let mut ids = long.clone();
    ids.extend(std::iter::repeat_n(0u32, pads[1]));
    ids.extend(&short);
    let mut batch = Cache::with_padding(&model, pads);
    model.forward(&Tensor::from_vec(ids, (2, long.len()), &Device::Cpu).unwrap(), Some(&mut batch), Logits::Last).unwrap();
    batch.retain_rows(&[1]).unwrap();
    batch.trim_padding().unwrap();
    assert_eq!(batch.len(), short.len());
    let mut alone = Single::new(&model, &short);
    for step in 0..4u32 {
        let tok = 300 + step;
        let l = model.forward(&Tensor::new(&[tok], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), Some(&mut batch), Logits::Last).unwrap();
        alone.step(&model, tok);
        let d = max_abs_diff(&l.squeeze(0).unwrap(), &alone.logits);
        assert!(d < 1e-4, "step {step}: the trimmed row differs from alone by {d}");
    }
}
