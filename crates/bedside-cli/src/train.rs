//! `bedside train`: LoRA fine-tuning from a TOML config, and `--bench` for step throughput.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bedside_train::bench::{bench_step, BenchOptions};
use bedside_train::{BaseMode, Override, RunOptions, TrainConfig};
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BaseArg {
    Quantized,
    F32,
    Bf16,
    /// Bench only: quantized and f32, each in its own process (peak memory is per process).
    Both,
}

#[derive(Args)]
#[command(
    about = "Fine-tune a LoRA adapter on the dialogue corpus (or benchmark a training step)",
    after_help = "Examples:\n  bedside train --config configs/train-smollm2-cpu.toml\n  bedside train --config configs/train-smollm2-cpu.toml --max-steps 2 --output-dir runs/t\n  bedside train --config configs/train-smollm2-cpu.toml --resume          # continue from the last checkpoint\n  bedside train --config configs/train-smollm2-cpu.toml --set optim.lr=1e-4 --set lora.r=16\n  bedside train --config configs/train-llama3-8b-q4km-cuda.toml --device cuda\n  bedside train --bench --base both                                       # tokens/s and peak memory, f32 vs quantized base\n  bedside train --bench --base both --bench-checkpointing                 # the same with activation checkpointing\n  bedside train --config configs/train-smollm2-cpu.toml --set run.activation_checkpointing=true\n\nEvery hyperparameter lives in the TOML file; --set SECTION.KEY=VALUE overrides any of them.\nThe run directory gets metrics.jsonl, loss.svg, checkpoints/step-N/ and the final adapter/ (PEFT format)."
)]
pub struct TrainArgs {
    /// The run configuration (TOML).
    #[arg(long, short = 'c', value_name = "FILE", required_unless_present = "bench")]
    pub config: Option<PathBuf>,
    /// Override run.max_steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Override run.output_dir.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Override model.device (auto, cpu, cuda, cuda:N, metal).
    #[arg(long)]
    pub device: Option<String>,
    /// Override run.seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override model.path.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Override model.base (quantized, f32, bf16); with --bench, `both` compares quantized and f32.
    #[arg(long, value_enum)]
    pub base: Option<BaseArg>,
    /// Continue from the latest checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
    /// Override any field: SECTION.KEY=VALUE (TOML value syntax), repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the run summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Measure tokens/s of one LoRA step (r=8 on all seven projections, AdamW), peak memory and
    /// the memory after loading (the step holds the difference).
    #[arg(long)]
    pub bench: bool,
    /// Bench: sequence length.
    #[arg(long, default_value_t = 256)]
    pub bench_seq: usize,
    /// Bench: measured steps (median reported).
    #[arg(long, default_value_t = 5)]
    pub bench_steps: usize,
    /// Bench: with activation checkpointing (training: `--set run.activation_checkpointing=true`).
    #[arg(long)]
    pub bench_checkpointing: bool,
}

fn base_name(b: BaseArg) -> &'static str {
    match b {
        BaseArg::Quantized => "quantized",
        BaseArg::F32 => "f32",
        BaseArg::Bf16 => "bf16",
        BaseArg::Both => "both",
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    if a.bench {
        return bench(&a);
    }
    let path = a.config.clone().context("--config is required")?;
    // `--set` first, then the flags, so a flag wins over a `--set` of the same field.
    let mut sets = a.set.iter().map(|s| Override::parse(s).map_err(|m| anyhow!("{}: {m}", path.display()))).collect::<Result<Vec<_>>>()?;
    if let Some(n) = a.max_steps {
        sets.push(Override::new("run.max_steps", i64::try_from(n).context("--max-steps is too large")?));
    }
    if let Some(d) = &a.output_dir {
        sets.push(Override::new("run.output_dir", d.to_string_lossy().into_owned()));
    }
    if let Some(d) = &a.device {
        sets.push(Override::new("model.device", d.as_str()));
    }
    if let Some(s) = a.seed {
        sets.push(Override::new("run.seed", i64::try_from(s).context("--seed must be below 2^63")?));
    }
    if let Some(m) = &a.model {
        sets.push(Override::new("model.path", m.as_str()));
    }
    if let Some(b) = a.base {
        if b == BaseArg::Both {
            bail!("--base both is only for --bench");
        }
        sets.push(Override::new("model.base", base_name(b)));
    }
    let cfg = TrainConfig::load(&path, &sets)?;
    let opts = RunOptions { resume: a.resume, progress: !a.quiet, stop_after: None };
    let s = bedside_train::train(&cfg, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let fmt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
        eprintln!(
            "done: {} steps ({} train / {} validation examples), {:.2} s/step, {:.0} tokens/s, last train loss {:.4}, validation loss {} -> {}",
            s.steps,
            s.train_examples,
            s.val_examples,
            s.secs_per_step,
            s.tokens_per_sec,
            s.last_train_loss,
            fmt(s.val_loss_before),
            fmt(s.val_loss_after)
        );
        if let Some(d) = &s.adapter_dir {
            eprintln!("adapter: {}", d.display());
        }
    }
    Ok(())
}

fn bench(a: &TrainArgs) -> Result<()> {
    let base = a.base.unwrap_or(BaseArg::Quantized);
    let model = a.model.clone().unwrap_or_else(|| crate::args::DEFAULT_MODEL.to_string());
    let device = a.device.clone().unwrap_or_else(|| "auto".into());
    if base == BaseArg::Both {
        // One process per base: peak RSS (VmHWM) never goes down within a process.
        let exe = std::env::current_exe()?;
        let mut rows = Vec::new();
        for b in ["quantized", "f32"] {
            let out = std::process::Command::new(&exe)
                .args(["train", "--bench", "--json", "--base", b, "--model", &model, "--device", &device])
                .args(["--bench-seq", &a.bench_seq.to_string(), "--bench-steps", &a.bench_steps.to_string()])
                .args(a.bench_checkpointing.then_some("--bench-checkpointing"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !out.status.success() {
                bail!("the {b} bench failed");
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            rows.push(v);
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            for v in &rows {
                println!(
                    "base {:<9} {:>8.1} tok/s  {:>6.2} s/step  peak RSS {:>7.1} MiB ({:.1} MiB loaded){}",
                    v["base"].as_str().unwrap_or("?"),
                    v["tokens_per_sec"].as_f64().unwrap_or(f64::NAN),
                    v["secs_per_step"].as_f64().unwrap_or(f64::NAN),
                    v["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
                    v["loaded_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
                    if v["checkpointing"].as_bool() == Some(true) { "  (activation checkpointing)" } else { "" }
                );
            }
        }
        return Ok(());
    }
    let base = match base {
        BaseArg::Quantized => BaseMode::Quantized,
        BaseArg::F32 => BaseMode::F32,
        BaseArg::Bf16 => BaseMode::Bf16,
        BaseArg::Both => unreachable!("handled above"),
    };
    let r = bench_step(&BenchOptions {
        model,
        base,
        device,
        seq_len: a.bench_seq,
        batch: 1,
        r: 8,
        steps: a.bench_steps,
        warmup: 1,
        checkpointing: a.bench_checkpointing,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "base {:?}{}: {:.1} tok/s ({:.2} s/step, seq {}, r {}, {} trainable params), peak RSS {:.1} MiB ({:.1} MiB after loading)",
            r.base,
            if r.checkpointing { " with activation checkpointing" } else { "" },
            r.tokens_per_sec,
            r.secs_per_step,
            r.seq_len,
            r.r,
            r.trainable_params,
            r.peak_rss_bytes.unwrap_or(0) as f64 / 1048576.0,
            r.loaded_rss_bytes.unwrap_or(0) as f64 / 1048576.0
        );
    }
    Ok(())
}
