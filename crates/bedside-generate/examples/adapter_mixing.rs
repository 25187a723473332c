//! How to batch requests for different adapters: measured side by side, interleaved.
//!
//! Decode steps of a batch whose rows use two LoRA adapters (r = 8 on all seven projections,
//! random factors), three ways:
//! - `rows`: one forward pass, each adapter's branches applied to its own rows
//!   ([`bedside_generate::RowAdapters`], what `bedside serve` does);
//! - `groups`: one forward pass per adapter over that adapter's rows (grouping by adapter);
//! - `base`: the same rows with no adapter, for scale.
//!
//! ```sh
//! cargo run --release -p bedside-generate --example adapter_mixing -- [MODEL.gguf] [ROWS] [ROUNDS]
//! ```

use std::time::Instant;

use bedside_generate::RowAdapters;
use bedside_model::{Cache, LoadOptions, Logits, Model};
use candle_core::{DType, Device, Tensor};

const STEPS: usize = 16;
const PROMPT: usize = 64;

fn random_adapter(model: &Model, dir: &std::path::Path, seed: u64) -> bedside_lora::Adapter {
    let mut m = model.clone();
    bedside_lora::detach_all(&mut m);
    let cfg = bedside_lora::LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    let vars = bedside_lora::attach_trainable(&mut m, &cfg, seed, DType::F32).expect("attach");
    for (k, v) in &vars {
        if k.contains("lora_B") {
            v.set(&Tensor::randn(0f32, 0.02, v.as_tensor().shape(), &Device::Cpu).expect("randn")).expect("set");
        }
    }
    bedside_lora::save_peft(dir, &cfg, &vars).expect("save");
    bedside_lora::load_peft(dir, &Device::Cpu).expect("load")
}

/// A cache of `rows` prompts, and the time of `STEPS` decode steps over it.
fn decode_secs(model: &Model, rows: usize) -> f64 {
    let ids: Vec<u32> = (0..rows * PROMPT).map(|i| (1000 + i * 7 % 5000) as u32).collect();
    let mut cache = Cache::with_padding(model, vec![0; rows]);
    model.forward(&Tensor::from_vec(ids, (rows, PROMPT), &Device::Cpu).expect("ids"), Some(&mut cache), Logits::Last).expect("prefill");
    let start = Instant::now();
    for s in 0..STEPS {
        let toks: Vec<u32> = (0..rows).map(|r| (200 + r + s) as u32).collect();
        model.forward(&Tensor::from_vec(toks, (rows, 1), &Device::Cpu).expect("toks"), Some(&mut cache), Logits::Last).expect("decode");
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).cloned().unwrap_or_else(|| "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let rows: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let (base, _) = bedside_model::load_gguf(std::path::Path::new(&path), &LoadOptions::default()).expect("load the model");
    let tmp = std::env::temp_dir().join(format!("bedside-adapter-mixing-{}", std::process::id()));
    let adapters: Vec<bedside_lora::Adapter> = (0..2).map(|k| random_adapter(&base, &tmp.join(format!("a{k}")), 11 + k as u64)).collect();
    let named = |which: &[usize]| which.iter().map(|&k| (format!("a{k}"), adapters[k].clone(), 1.0)).collect::<Vec<_>>();
    // Rows: half each adapter, in one pass.
    let mut mixed = base.clone();
    let mut ra = RowAdapters::attach(&mut mixed, named(&[0, 1])).expect("attach");
    let selection: Vec<Option<usize>> = (0..rows).map(|r| Some(r % 2)).collect();
    ra.select(&mut mixed, &selection).expect("select");
    // Groups: one model per adapter (shared base weights), each over its half.
    let per_adapter: Vec<Model> = (0..2)
        .map(|k| {
            let mut m = base.clone();
            let mut a = RowAdapters::attach(&mut m, named(&[k])).expect("attach");
            a.select(&mut m, &vec![Some(0); rows / 2]).expect("select");
            m
        })
        .collect();
    let mut t = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..rounds {
        t[0].push(decode_secs(&mixed, rows));
        t[1].push(per_adapter.iter().map(|m| decode_secs(m, rows / 2)).sum::<f64>());
        t[2].push(decode_secs(&base, rows));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let tok_s = |v: &Vec<f64>| {
        let mut x: Vec<f64> = v.iter().map(|s| (rows * STEPS) as f64 / s).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    println!("{path}: {rows} rows, two adapters (r = 8, all projections), {STEPS} decode steps after {PROMPT}-token prompts, median of {rounds} interleaved rounds");
    for (name, v) in [("rows (one pass)", &t[0]), ("groups (a pass per adapter)", &t[1]), ("base, no adapter", &t[2])] {
        println!("{name:28} {:7.1} tok/s", tok_s(v));
    }
    println!("rows / groups: {:.2}x", tok_s(&t[0]) / tok_s(&t[1]));
}
