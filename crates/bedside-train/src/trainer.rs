//! The SFT loop: load, tokenise, train with AdamW, evaluate, checkpoint, resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bedside_generate::{Engine, EngineOptions};
use bedside_model::{DropoutRng, LoadOptions, Mode, Model};
use candle_core::{DType, Tensor, Var};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::config::{BaseMode, TrainConfig};
use crate::data::{build_examples, epoch_batches, pad_batch, Example};
use crate::error::{io_err, Result, TrainError};
use crate::loss::{collect_grads, head_loss_sum, shift_labels, ZeroGradGuard, IGNORE};
use crate::optim::{clip_grad_norm, learning_rate, AdamW};
use crate::run_state::{self, TrainerState};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the latest checkpoint in the output directory.
    pub resume: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Stop (as if interrupted) after this many steps, without writing the final adapter.
    pub stop_after: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub steps: usize,
    /// How the training examples fit `data.max_seq_len`.
    pub train_fit: crate::data::Fit,
    pub resumed_from: Option<usize>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub val_loss_before: Option<f64>,
    pub val_loss_after: Option<f64>,
    pub last_train_loss: f64,
    pub tokens_per_sec: f64,
    pub secs_per_step: f64,
    pub adapter_dir: Option<PathBuf>,
    pub peak_rss_bytes: Option<u64>,
}

/// Peak resident memory of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// The process's resident memory now (Linux; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Load model, tokenizer and template as the config says.
pub fn load_engine(cfg: &TrainConfig) -> Result<Engine> {
    let device = bedside_model::parse_device(&cfg.model.device)?;
    let (dtype, dequantize) = match cfg.model.base {
        BaseMode::Quantized => (None, false),
        BaseMode::F32 => (Some(DType::F32), true),
        BaseMode::Bf16 => (Some(DType::BF16), true),
    };
    let opts = EngineOptions {
        load: LoadOptions { device, dtype, dequantize, kv_cache: None },
        offline: cfg.model.offline,
        chat_template: cfg.model.chat_template.clone(),
        adapters: Vec::new(),
    };
    Ok(Engine::load(&cfg.model.path, &opts)?)
}

/// Micro-batch tensors: `(ids (b, t), labels, real tokens)`.
fn batch_tensors(model: &Model, exs: &[&Example], pad: u32) -> Result<(Tensor, Vec<Vec<i64>>, usize)> {
    let (ids, labels, t) = pad_batch(exs, pad);
    let real = exs.iter().map(|e| e.ids.len()).sum();
    Ok((Tensor::from_vec(ids, (exs.len(), t), model.device())?, labels, real))
}

/// Mean validation loss (token-weighted) over `examples`: the loss a training step computes
/// (the same ops), without dropout.
pub fn evaluate(model: &Model, examples: &[Example], batch: usize, pad: u32) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (ids, labels, _) = batch_tensors(model, &refs, pad)?;
        let x = model.forward_hidden(&ids, None, Mode::Train { dropout: None })?;
        let (s, k) = head_loss_sum(model, &x, &shift_labels(&labels), Mode::Train { dropout: None })?;
        sum += s.to_scalar::<f32>()? as f64;
        n += k;
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// The summed loss of one batch divided by `scale`, and the gradient of every variable (in
/// `vars` order), with or without activation checkpointing; LoRA dropout draws from `rng`.
pub fn loss_and_grads(
    model: &Model,
    vars: &[(String, Var)],
    ids: &Tensor,
    labels: &[Vec<i64>],
    scale: f64,
    checkpointing: bool,
    rng: &mut DropoutRng,
) -> Result<(f64, Vec<Tensor>)> {
    if checkpointing {
        return crate::recompute::loss_and_grads(model, vars, ids, labels, scale, rng);
    }
    let (b, t) = ids.dims2()?;
    if labels.len() != b || labels.iter().any(|l| l.len() != t) {
        return Err(TrainError::Invalid(format!("labels must be {b} rows of {t}, matching the input ids")));
    }
    let x = model.forward_hidden(ids, None, Mode::Train { dropout: Some(&mut *rng) })?;
    let (s, _) = head_loss_sum(model, &x, &shift_labels(labels), Mode::Train { dropout: Some(&mut *rng) })?;
    let l = (s / scale)?;
    let loss = l.to_scalar::<f32>()? as f64;
    let store = l.backward()?;
    Ok((loss, collect_grads(vars, &store)?.0))
}

/// One optimizer step's forward/backward over `micro` batches: the loss is the mean over every
/// scored token of the step (so accumulation equals one big batch). Returns the gradients in
/// `vars` order, the loss and the number of real tokens.
pub fn accumulate_step(
    model: &Model,
    vars: &[(String, Var)],
    micro: &[Vec<&Example>],
    pad: u32,
    checkpointing: bool,
    rng: &mut DropoutRng,
) -> Result<(Vec<Tensor>, f64, usize)> {
    let total: usize = micro.iter().flat_map(|b| b.iter()).map(|e| e.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()).sum();
    let mut grads: Option<Vec<Tensor>> = None;
    let (mut loss, mut tokens) = (0f64, 0usize);
    for exs in micro {
        let (ids, labels, real) = batch_tensors(model, exs, pad)?;
        tokens += real;
        let (l, g) = loss_and_grads(model, vars, &ids, &labels, total.max(1) as f64, checkpointing, rng)?;
        loss += l;
        grads = Some(match grads {
            None => g,
            Some(acc) => acc.iter().zip(&g).map(|(a, b)| a + b).collect::<candle_core::Result<Vec<_>>>()?,
        });
    }
    Ok((grads.unwrap_or_default(), loss, tokens))
}

struct Metrics {
    path: PathBuf,
    train: Vec<(usize, f64)>,
    val: Vec<(usize, f64)>,
}

impl Metrics {
    /// Open `metrics.jsonl`, keeping only records up to `keep_step` (a resumed run rewrites the
    /// steps after its checkpoint).
    fn open(run_dir: &Path, keep_step: Option<usize>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let mut m = Metrics { path: path.clone(), train: Vec::new(), val: Vec::new() };
        let mut kept = String::new();
        if let (Some(k), Ok(text)) = (keep_step, std::fs::read_to_string(&path)) {
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let step = v["step"].as_u64().unwrap_or(u64::MAX) as usize;
                if step > k {
                    continue;
                }
                if let Some(l) = v["loss"].as_f64() {
                    m.train.push((step, l));
                }
                if let Some(l) = v["val_loss"].as_f64() {
                    m.val.push((step, l));
                }
                kept.push_str(line);
                kept.push('\n');
            }
        }
        bedside_lora::atomic_write(&path, kept.as_bytes())?;
        Ok(m)
    }

    fn append(&mut self, v: serde_json::Value) -> Result<()> {
        let step = v["step"].as_u64().unwrap_or(0) as usize;
        if let Some(l) = v["loss"].as_f64() {
            self.train.push((step, l));
        }
        if let Some(l) = v["val_loss"].as_f64() {
            self.val.push((step, l));
        }
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&self.path).map_err(io_err(&self.path))?;
        writeln!(f, "{v}").map_err(io_err(&self.path))?;
        Ok(())
    }

    fn write_svg(&self, run_dir: &Path, title: &str) -> Result<()> {
        let svg = crate::svg::loss_curve(&self.train, &self.val, title);
        bedside_lora::atomic_write(&run_dir.join("loss.svg"), svg.as_bytes())?;
        Ok(())
    }
}

/// Run training as `cfg` says. See [`RunOptions`].
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<RunSummary> {
    let run_dir = cfg.run.output_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(io_err(&run_dir))?;
    // One run per directory: two would interleave metrics.jsonl and both write adapter/.
    let _lock = bedside_io::DirLock::acquire(&run_dir, "another training run").map_err(|e| TrainError::Invalid(e.to_string()))?;
    // Checkpoints (and files) a killed run was writing: with the lock held, nobody else is.
    let mut stale = Vec::new();
    for dir in [run_dir.clone(), run_state::checkpoints_dir(&run_dir)] {
        stale.extend(bedside_io::remove_stale_temps(&dir).map_err(io_err(&dir))?);
    }
    if !stale.is_empty() {
        let names: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
        tracing::warn!(removed = %names.join(", "), "removed what an interrupted run left half-written");
    }
    let resume_from = if opts.resume { run_state::latest(&run_dir)? } else { None };
    if opts.resume {
        let msg = match &resume_from {
            Some(dir) => format!("resuming from {}", dir.display()),
            None => format!("--resume: no complete checkpoint in {}: starting at step 0", run_state::checkpoints_dir(&run_dir).display()),
        };
        if resume_from.is_none() {
            tracing::warn!("{msg}");
        } else {
            tracing::info!("{msg}");
        }
        if opts.progress {
            eprintln!("{msg}");
        }
    }
    if !opts.resume && run_state::latest(&run_dir)?.is_some() {
        return Err(TrainError::Invalid(format!(
            "{} already holds checkpoints of a run; pass --resume to continue it, or choose another --output-dir",
            run_dir.display()
        )));
    }
    let cfg_json = serde_json::to_string_pretty(cfg).map_err(|e| TrainError::Invalid(e.to_string()))?;
    bedside_lora::atomic_write(&run_dir.join("train_config.json"), cfg_json.as_bytes())?;

    let t_load = Instant::now();
    let mut engine = load_engine(cfg)?;
    tracing::info!(secs = t_load.elapsed().as_secs_f64(), "model loaded");
    let dialogues = bedside_data::read_dialogues(&cfg.data.paths)?;
    let sys = cfg.data.system_prompt.as_deref();
    let max_len = cfg.data.max_seq_len.min(engine.model.context_length());
    let (train_ex, fit) = build_examples(&engine, &dialogues, &cfg.data.train_split, sys, max_len)?;
    let (mut val_ex, _) = build_examples(&engine, &dialogues, &cfg.data.validation_split, sys, max_len)?;
    if cfg.data.max_val_examples > 0 {
        val_ex.truncate(cfg.data.max_val_examples);
    }
    if train_ex.is_empty() {
        return Err(TrainError::Data(format!(
            "no training examples with split '{}' in {:?} ({} answers are longer than {max_len} tokens on their own)",
            cfg.data.train_split, cfg.data.paths, fit.skipped
        )));
    }
    // Whole answers matter (the urgent-care advice sits at their end): say how many fit.
    let fit_line = format!(
        "training examples: {} of {} fit {max_len} tokens whole ({:.1}%); {} lost the start of their context, {} were left out (answer alone longer)",
        fit.whole,
        fit.examples,
        100.0 * fit.whole_share(),
        fit.context_cut,
        fit.skipped
    );
    if opts.progress {
        eprintln!("{fit_line}");
    }
    tracing::info!(whole = fit.whole, examples = fit.examples, context_cut = fit.context_cut, skipped = fit.skipped, "{fit_line}");
    if fit.whole_share() < 0.95 {
        tracing::warn!(share = fit.whole_share(), "fewer than 95% of the training examples fit data.max_seq_len whole; raise it");
    }
    let pad = engine.tokenizer.eos_id().unwrap_or(0);

    let lora_cfg = cfg.lora_config();
    let vars = bedside_lora::attach_trainable(&mut engine.model, &lora_cfg, cfg.run.seed, DType::F32)?;
    let n_params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    tracing::info!(params = n_params, tensors = vars.len(), train = train_ex.len(), val = val_ex.len(), "LoRA attached");
    let mut opt = AdamW::new(&cfg.optim, &vars)?;
    let mut state = TrainerState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        dropout_rng: cfg.run.seed ^ 0x5eed_d80f,
        adam_t: 0,
        seed: cfg.run.seed,
        lr: 0.0,
        loss: f64::NAN,
        max_steps: cfg.run.max_steps,
    };
    let mut last_ckpt: Option<PathBuf> = None;
    if let Some(dir) = &resume_from {
        state = run_state::load(dir, &vars, &mut opt, engine.model.device())?;
        last_ckpt = Some(dir.clone());
        tracing::info!(step = state.step, "resumed");
    }
    let mut dropout_rng = DropoutRng::new(state.dropout_rng);
    let resumed_from = resume_from.as_ref().map(|_| state.step);
    let mut metrics = Metrics::open(&run_dir, resumed_from)?;
    let title = format!(
        "LoRA r={} on {}",
        cfg.lora.r,
        Path::new(&cfg.model.path).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    );

    let bs = cfg.optim.batch_size;
    let mut val_before = None;
    if resumed_from.is_none() && !val_ex.is_empty() {
        let v = evaluate(&engine.model, &val_ex, bs, pad)?;
        val_before = Some(v);
        metrics.append(json!({"step": 0, "val_loss": v}))?;
    }

    let max_steps = cfg.run.max_steps;
    let pb = if opts.progress {
        ProgressBar::with_draw_target(Some(max_steps as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} elapsed {elapsed} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_position(state.step as u64);

    let mut guard = ZeroGradGuard::new(&vars);
    let mut batches = epoch_batches(&train_ex, bs, cfg.run.seed, state.epoch);
    let (mut tok_total, mut secs_total, mut steps_run) = (0usize, 0f64, 0usize);
    let mut last_val = val_before;
    while state.step < max_steps {
        if opts.stop_after.is_some_and(|s| state.step >= s) {
            pb.finish_and_clear();
            return Ok(RunSummary {
                steps: state.step,
                train_fit: fit,
                resumed_from,
                train_examples: train_ex.len(),
                val_examples: val_ex.len(),
                val_loss_before: val_before,
                val_loss_after: None,
                last_train_loss: state.loss,
                tokens_per_sec: tok_total as f64 / secs_total.max(1e-9),
                secs_per_step: secs_total / steps_run.max(1) as f64,
                adapter_dir: None,
                peak_rss_bytes: peak_rss_bytes(),
            });
        }
        let t0 = Instant::now();
        let mut micro: Vec<Vec<&Example>> = Vec::with_capacity(cfg.optim.grad_accum);
        for _ in 0..cfg.optim.grad_accum {
            if state.batch_in_epoch >= batches.len() {
                state.epoch += 1;
                state.batch_in_epoch = 0;
                batches = epoch_batches(&train_ex, bs, cfg.run.seed, state.epoch);
            }
            micro.push(batches[state.batch_in_epoch].iter().map(|&i| &train_ex[i]).collect());
            state.batch_in_epoch += 1;
        }
        let (mut grads, loss, tokens) =
            accumulate_step(&engine.model, &vars, &micro, pad, cfg.run.activation_checkpointing, &mut dropout_rng)?;
        let step_no = state.step + 1;
        if !loss.is_finite() {
            pb.abandon();
            return Err(TrainError::NonFinite(format!(
                "the training loss is {loss} at step {step_no}; stopping without saving. {} Lower optim.lr or check the data.",
                match &last_ckpt {
                    Some(p) => format!("The last good checkpoint is {} (resume with --resume).", p.display()),
                    None => "No checkpoint was written yet.".to_string(),
                }
            )));
        }
        guard.check(&vars, &grads)?;
        let norm = clip_grad_norm(&mut grads, cfg.optim.max_grad_norm)?;
        if !norm.is_finite() {
            pb.abandon();
            return Err(TrainError::NonFinite(format!(
                "the gradient norm is {norm} at step {step_no}; stopping without saving.{}",
                last_ckpt.as_ref().map(|p| format!(" The last good checkpoint is {}.", p.display())).unwrap_or_default()
            )));
        }
        let lr = learning_rate(&cfg.optim, state.step, max_steps);
        opt.step(&vars, &grads, lr)?;
        state.step = step_no;
        state.adam_t = opt.t;
        state.lr = lr;
        state.loss = loss;
        let dt = t0.elapsed().as_secs_f64();
        tok_total += tokens;
        secs_total += dt;
        steps_run += 1;
        let tps = tokens as f64 / dt.max(1e-9);

        let eval_now =
            !val_ex.is_empty() && ((cfg.run.eval_every > 0 && state.step.is_multiple_of(cfg.run.eval_every)) || state.step == max_steps);
        let val = if eval_now { Some(evaluate(&engine.model, &val_ex, bs, pad)?) } else { None };
        if val.is_some() {
            last_val = val;
        }
        metrics.append(json!({
            "step": state.step, "loss": loss, "lr": lr, "grad_norm": norm,
            "tokens": tokens, "tokens_per_sec": tps, "secs": dt, "val_loss": val,
        }))?;
        pb.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s{}",
            last_val.map(|v| format!(" val {v:.4}")).unwrap_or_default()
        ));
        pb.set_position(state.step as u64);
        if val.is_some() {
            metrics.write_svg(&run_dir, &title)?;
        }
        if cfg.run.save_every > 0 && state.step.is_multiple_of(cfg.run.save_every) && state.step < max_steps {
            state.dropout_rng = dropout_rng.state();
            last_ckpt = Some(run_state::save(&run_dir, &lora_cfg, &vars, &opt, &state)?);
        }
    }
    pb.finish_and_clear();
    let adapter_dir = run_dir.join("adapter");
    bedside_lora::save_peft(&adapter_dir, &lora_cfg, &vars)?;
    let meta = json!({
        "bedside_version": env!("CARGO_PKG_VERSION"),
        "base_model_path": cfg.model.path,
        "base": cfg.model.base,
        "chat_template": engine.template.as_ref().map(|t| t.source().to_string()),
        "system_prompt": cfg.data.system_prompt,
        "steps": state.step,
        "seed": cfg.run.seed,
    });
    bedside_lora::atomic_write(
        &adapter_dir.join("bedside_training.json"),
        serde_json::to_string_pretty(&meta).unwrap_or_default().as_bytes(),
    )?;
    metrics.write_svg(&run_dir, &title)?;
    Ok(RunSummary {
        steps: state.step,
        train_fit: fit,
        resumed_from,
        train_examples: train_ex.len(),
        val_examples: val_ex.len(),
        val_loss_before: val_before,
        val_loss_after: last_val,
        last_train_loss: state.loss,
        tokens_per_sec: tok_total as f64 / secs_total.max(1e-9),
        secs_per_step: secs_total / steps_run.max(1) as f64,
        adapter_dir: Some(adapter_dir),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Attach a saved adapter's factors as trainable variables (to continue training it, or to
/// check gradients against a reference). Dropout is off on these branches.
pub fn attach_adapter_trainable(model: &mut Model, adapter: &bedside_lora::Adapter) -> Result<Vec<(String, Var)>> {
    use bedside_lora::{peft_key, Factor};
    let device = model.device().clone();
    let mut vars = Vec::new();
    let mut used = 0usize;
    for (name, lin) in model.linears_mut() {
        let (ka, kb) = (peft_key(&name, Factor::A), peft_key(&name, Factor::B));
        let (Some(a), Some(b)) = (adapter.tensors.get(&ka), adapter.tensors.get(&kb)) else { continue };
        if a.dims() != [a.dim(0)?, lin.in_dim()] || b.dims() != [lin.out_dim(), a.dim(0)?] {
            return Err(TrainError::Invalid(format!(
                "adapter factors of '{name}' have shapes {:?} / {:?}, which do not fit a {}→{} projection",
                a.dims(),
                b.dims(),
                lin.in_dim(),
                lin.out_dim()
            )));
        }
        let va = Var::from_tensor(&a.to_device(&device)?.to_dtype(DType::F32)?)?;
        let vb = Var::from_tensor(&b.to_device(&device)?.to_dtype(DType::F32)?)?;
        lin.lora.push(bedside_model::LoraBranch {
            a: va.as_tensor().clone(),
            b: vb.as_tensor().clone(),
            scale: adapter.config.scale_for(&name),
            dropout: 0.0,
            rows: None,
        });
        vars.push((ka, va));
        vars.push((kb, vb));
        used += 2;
    }
    if used != adapter.tensors.len() {
        return Err(TrainError::Invalid(format!(
            "only {used} of the adapter's {} tensors match projections of this model",
            adapter.tensors.len()
        )));
    }
    Ok(vars)
}
