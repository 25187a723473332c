//! Throughput of one LoRA training step (forward, backward, clipping, AdamW) on a synthetic
//! sequence, and the process's peak memory.

use std::time::Instant;

use bedside_model::LoadOptions;
use candle_core::{DType, Tensor};

use crate::config::BaseMode;
use crate::error::{Result, TrainError};
use crate::optim::{clip_grad_norm, AdamW};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: String,
    pub base: BaseMode,
    pub device: String,
    pub seq_len: usize,
    pub batch: usize,
    pub r: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Recompute each layer in the backward (see [`crate::recompute`]).
    pub checkpointing: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub model: String,
    pub base: BaseMode,
    pub device: String,
    pub seq_len: usize,
    pub batch: usize,
    pub r: usize,
    pub checkpointing: bool,
    pub trainable_params: usize,
    /// Median over the measured steps.
    pub secs_per_step: f64,
    pub tokens_per_sec: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Resident memory once the model is loaded and the adapter attached, before the first step:
    /// the peak minus this is what the step itself holds (activations, gradients, optimizer).
    pub loaded_rss_bytes: Option<u64>,
}

pub fn bench_step(o: &BenchOptions) -> Result<BenchResult> {
    let device = bedside_model::parse_device(&o.device)?;
    let (dtype, dequantize) = match o.base {
        BaseMode::Quantized => (None, false),
        BaseMode::F32 => (Some(DType::F32), true),
        BaseMode::Bf16 => (Some(DType::BF16), true),
    };
    let opts = bedside_generate::EngineOptions { load: LoadOptions { device, dtype, dequantize, kv_cache: None }, ..Default::default() };
    let mut engine = bedside_generate::Engine::load(&o.model, &opts)?;
    let text = "A patient writes that her chest has felt tight for three days, worse on the stairs, and she is frightened it is her heart. \
                She takes a statin and her father had a heart attack at 58. What should she watch for, and when should she call emergency services? ";
    let piece = engine.tokenizer.encode(text, false)?;
    if piece.is_empty() {
        return Err(TrainError::Invalid("tokenizer produced no tokens".into()));
    }
    let ids: Vec<u32> = piece.iter().copied().cycle().take(o.seq_len).collect();
    let labels: Vec<Vec<i64>> = (0..o.batch).map(|_| ids.iter().map(|&t| t as i64).collect()).collect();
    let all: Vec<u32> = (0..o.batch).flat_map(|_| ids.clone()).collect();
    let x = Tensor::from_vec(all, (o.batch, o.seq_len), engine.model.device())?;
    let cfg = bedside_lora::LoraConfig { r: o.r, lora_alpha: 2.0 * o.r as f64, ..Default::default() };
    let vars = bedside_lora::attach_trainable(&mut engine.model, &cfg, 0, DType::F32)?;
    let optim = crate::config::OptimSection {
        lr: 1e-4,
        weight_decay: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        warmup_steps: 0,
        schedule: crate::config::Schedule::Constant,
        min_lr_ratio: 0.0,
        batch_size: o.batch,
        grad_accum: 1,
        max_grad_norm: 1.0,
    };
    let mut opt = AdamW::new(&optim, &vars)?;
    let loaded_rss_bytes = crate::trainer::rss_bytes();
    let mut rng = bedside_model::DropoutRng::new(0);
    let mut times = Vec::new();
    for i in 0..o.warmup + o.steps.max(1) {
        let t0 = Instant::now();
        let n = labels.iter().map(|l| l.len() - 1).sum::<usize>() as f64;
        let (_, mut g) = crate::trainer::loss_and_grads(&engine.model, &vars, &x, &labels, n, o.checkpointing, &mut rng)?;
        clip_grad_norm(&mut g, 1.0)?;
        opt.step(&vars, &g, 1e-4)?;
        engine.model.device().synchronize()?;
        if i >= o.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    Ok(BenchResult {
        model: o.model.clone(),
        base: o.base,
        device: o.device.clone(),
        seq_len: o.seq_len,
        batch: o.batch,
        r: o.r,
        checkpointing: o.checkpointing,
        trainable_params: vars.iter().map(|(_, v)| v.elem_count()).sum(),
        secs_per_step: med,
        tokens_per_sec: (o.seq_len * o.batch) as f64 / med,
        peak_rss_bytes: crate::trainer::peak_rss_bytes(),
        loaded_rss_bytes,
    })
}
