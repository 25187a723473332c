//! The saved state of a training run, to resume it: `run_dir/checkpoints/step-N/` holds the
//! adapter (PEFT format), the AdamW moments and `trainer_state.json` (step, data position, RNG
//! states). The directory is written under a temporary name and renamed into place
//! (`bedside_io::replace_dir_atomic`), so a crash never leaves half a checkpoint; the next run
//! removes the temporary.

use std::path::{Path, PathBuf};

use candle_core::{Device, Var};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};
use crate::optim::AdamW;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Data position: the epoch and the next micro-batch within it.
    pub epoch: u64,
    pub batch_in_epoch: usize,
    /// LoRA dropout RNG state (`bedside_model::DropoutRng::state`).
    pub dropout_rng: u64,
    /// AdamW's step count.
    pub adam_t: u64,
    pub seed: u64,
    /// Learning rate of the last step taken and the next step's schedule position (informational).
    pub lr: f64,
    pub loss: f64,
    pub max_steps: usize,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn save(run_dir: &Path, lora: &bedside_lora::LoraConfig, vars: &[(String, Var)], opt: &AdamW, state: &TrainerState) -> Result<PathBuf> {
    let dir = checkpoints_dir(run_dir).join(format!("step-{}", state.step));
    let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Invalid(e.to_string()))?;
    bedside_io::replace_dir_atomic(&dir, |tmp| -> Result<()> {
        bedside_lora::save_peft(tmp, lora, vars)?;
        bedside_lora::peft::atomic_write_safetensors(&tmp.join(OPTIMIZER_FILE), &opt.state_tensors(vars), &Default::default())?;
        bedside_lora::atomic_write(&tmp.join(STATE_FILE), json.as_bytes())?;
        Ok(())
    })
    .map_err(|e| e.into_inner(io_err(&dir)))?;
    Ok(dir)
}

/// The checkpoint with the highest step that has a state file, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let root = checkpoints_dir(run_dir);
    if !root.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(&root).map_err(io_err(&root))? {
        let e = e.map_err(io_err(&root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()) else { continue };
        if e.path().join(STATE_FILE).is_file() && best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, e.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Restore adapter values and optimizer moments into `vars` / `opt`; return the state.
pub fn load(dir: &Path, vars: &[(String, Var)], opt: &mut AdamW, device: &Device) -> Result<TrainerState> {
    let sp = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&sp).map_err(io_err(&sp))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Config { path: sp.clone(), msg: e.to_string() })?;
    let ap = dir.join(bedside_lora::WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&ap, device)?;
    for (k, v) in vars {
        let t = tensors.get(k).ok_or_else(|| TrainError::Config {
            path: ap.clone(),
            msg: format!("checkpoint has no tensor '{k}' (was the LoRA config changed?)"),
        })?;
        if t.dims() != v.dims() {
            return Err(TrainError::Config {
                path: ap.clone(),
                msg: format!("tensor '{k}' has shape {:?}, the run expects {:?}", t.dims(), v.dims()),
            });
        }
        v.set(&t.to_dtype(v.dtype())?)?;
    }
    let op = dir.join(OPTIMIZER_FILE);
    let moments = candle_core::safetensors::load(&op, device)?;
    opt.load_state(vars, state.adam_t, &moments).map_err(|e| TrainError::Config { path: op.clone(), msg: e.to_string() })?;
    Ok(state)
}
