//! The run configuration: one TOML file holding every hyperparameter, with command-line
//! overrides (`--set section.key=value`, and the common ones as flags).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How the frozen base weights are held while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseMode {
    /// GGUF weights stay quantized; the backward dequantizes one weight at a time.
    Quantized,
    /// Dequantize (GGUF) or load (safetensors) the base in f32.
    F32,
    /// Dequantize or load the base in bf16.
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warmup, then cosine decay to `min_lr_ratio · lr`.
    Cosine,
    /// Linear warmup, then linear decay to `min_lr_ratio · lr`.
    Linear,
    /// Linear warmup, then constant.
    Constant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// GGUF file, HF model directory or hub id.
    pub path: String,
    #[serde(default = "default_base")]
    pub base: BaseMode,
    /// `auto`, `cpu`, `cuda`, `cuda:N`, `metal`.
    #[serde(default = "default_device")]
    pub device: String,
    /// A Jinja chat template used instead of the model's own (training and serving must agree).
    #[serde(default)]
    pub chat_template: Option<PathBuf>,
    #[serde(default)]
    pub offline: bool,
    /// Hub id written as `base_model_name_or_path` in adapter_config.json.
    #[serde(default)]
    pub base_model_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSONL files or directories of schema-v1 dialogues.
    pub paths: Vec<PathBuf>,
    #[serde(default = "default_train_split")]
    pub train_split: String,
    #[serde(default = "default_val_split")]
    pub validation_split: String,
    /// System message put before each patient message (none: the template's default).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Token length of a training sequence. A longer conversation loses the start of its context,
    /// never the end of its answer (an answer longer than this on its own is left out); training
    /// prints the share of examples that fit whole — keep it at 95% or more.
    #[serde(default = "default_max_seq")]
    pub max_seq_len: usize,
    /// Cap on validation examples scored at each evaluation (0 = all).
    #[serde(default)]
    pub max_val_examples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    pub r: usize,
    pub alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub dropout: f32,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub lr: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Final learning rate as a fraction of `lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Sequences per micro-batch (length-bucketed, right-padded).
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Global-norm gradient clipping (0 = off).
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub output_dir: PathBuf,
    pub max_steps: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Validation loss every N steps (0 = only before and after).
    #[serde(default)]
    pub eval_every: usize,
    /// Checkpoint every N steps (0 = only the final adapter).
    #[serde(default)]
    pub save_every: usize,
    /// Keep only each decoder layer's input during the forward pass and recompute the layer's
    /// activations during the backward (activation checkpointing): much less memory on long
    /// sequences and large models, for about one more forward pass of compute.
    #[serde(default)]
    pub activation_checkpointing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub lora: LoraSection,
    pub optim: OptimSection,
    pub run: RunSection,
}

fn default_base() -> BaseMode {
    BaseMode::Quantized
}
fn default_device() -> String {
    "auto".into()
}
fn default_train_split() -> String {
    "train".into()
}
fn default_val_split() -> String {
    "validation".into()
}
fn default_max_seq() -> usize {
    512
}
fn default_wd() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_schedule() -> Schedule {
    Schedule::Cosine
}
fn one() -> usize {
    1
}
fn default_clip() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}

/// Parse a command-line value as TOML (number, bool, array…), else take it as a string.
fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// A command-line change to one field of the config (`section.key`), applied to the TOML
/// before it is deserialized and checked, so an override may fill a field the file lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    key: Vec<String>,
    value: toml::Value,
}

impl Override {
    /// A typed value for `key` (`section.key`), as the command's flags give them: a string stays
    /// a string whatever quotes or backslashes it holds.
    pub fn new(key: &str, value: impl Into<toml::Value>) -> Self {
        Override { key: key.split('.').map(str::to_string).collect(), value: value.into() }
    }

    /// `section.key=value` as `--set` takes it: the value in TOML syntax (number, bool, array,
    /// quoted string), else the bare text as a string.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (key, raw) = text.split_once('=').ok_or_else(|| format!("override '{text}' is not KEY=VALUE"))?;
        let key: Vec<String> = key.trim().split('.').map(|s| s.trim().to_string()).collect();
        if key.iter().any(String::is_empty) {
            return Err(format!("override '{text}' has an empty key or section"));
        }
        Ok(Override { key, value: parse_value(raw.trim()) })
    }

    /// Set the field in `table`, creating sections that are missing.
    fn apply(&self, table: &mut toml::Table) -> std::result::Result<(), String> {
        let dotted = self.key.join(".");
        let (last, sections) = self.key.split_last().ok_or_else(|| format!("override of '{dotted}' has no key"))?;
        let mut t = table;
        for s in sections {
            t = t
                .entry(s.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| format!("override of '{dotted}': '{s}' is not a section"))?;
        }
        t.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

impl std::str::FromStr for Override {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Override::parse(s)
    }
}

impl TrainConfig {
    /// Read `path`, apply `overrides` in order (a later one wins), then check the values.
    pub fn load(path: &Path, overrides: &[Override]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| TrainError::Io { path: path.into(), err })?;
        Self::from_toml_str(path, &text, overrides)
    }

    pub fn from_toml_str(path: &Path, text: &str, overrides: &[Override]) -> Result<Self> {
        let err = |msg: String| TrainError::Config { path: path.into(), msg };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(format!("invalid TOML: {e}")))?;
        for o in overrides {
            o.apply(&mut table).map_err(err)?;
        }
        let cfg: TrainConfig =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| err(e.to_string().trim().replace('\n', " ")))?;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Value checks serde cannot express; the message names the field. (Negated comparisons
    /// on purpose: they also reject NaN.)
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn validate(&self) -> std::result::Result<(), String> {
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(format!("optim.lr must be a positive number, found {}", o.lr));
        }
        if !(o.weight_decay >= 0.0) {
            return Err("optim.weight_decay must be >= 0".into());
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return Err("optim.beta1 and optim.beta2 must be in [0, 1)".into());
        }
        if !(o.eps > 0.0) {
            return Err("optim.eps must be positive".into());
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return Err("optim.min_lr_ratio must be in [0, 1]".into());
        }
        if o.batch_size == 0 || o.grad_accum == 0 {
            return Err("optim.batch_size and optim.grad_accum must be at least 1".into());
        }
        if !(o.max_grad_norm >= 0.0) {
            return Err("optim.max_grad_norm must be >= 0 (0 turns clipping off)".into());
        }
        if self.run.max_steps == 0 {
            return Err("run.max_steps must be at least 1".into());
        }
        if self.data.max_seq_len < 8 {
            return Err("data.max_seq_len must be at least 8".into());
        }
        if self.data.paths.is_empty() {
            return Err("data.paths must name at least one JSONL file or directory".into());
        }
        if self.lora.r == 0 {
            return Err("lora.r must be positive".into());
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return Err("lora.dropout must be in [0, 1)".into());
        }
        if self.lora.target_modules.is_empty() {
            return Err("lora.target_modules must not be empty".into());
        }
        self.lora_config().validate().map_err(|m| format!("lora: {m}"))?;
        Ok(())
    }

    /// The PEFT config the adapter is saved with.
    pub fn lora_config(&self) -> bedside_lora::LoraConfig {
        let l = &self.lora;
        bedside_lora::LoraConfig {
            r: l.r,
            lora_alpha: l.alpha,
            use_rslora: l.use_rslora,
            lora_dropout: l.dropout,
            target_modules: l.target_modules.clone(),
            rank_pattern: l.rank_pattern.clone(),
            alpha_pattern: l.alpha_pattern.clone(),
            base_model_name_or_path: self.model.base_model_name.clone(),
        }
    }

    /// Resolve relative paths against `root` (the directory the command runs in stays the
    /// default; this is for tests and tools that run elsewhere).
    pub fn rebase_paths(&mut self, root: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = root.join(&*p);
            }
        };
        self.data.paths.iter_mut().for_each(fix);
        fix(&mut self.run.output_dir);
        if let Some(t) = self.model.chat_template.as_mut() {
            fix(t);
        }
        let mp = Path::new(&self.model.path);
        if mp.is_relative() && root.join(mp).exists() {
            self.model.path = root.join(mp).to_string_lossy().into_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[model]
path = "m.gguf"
[data]
paths = ["data/dialogues"]
[lora]
r = 8
alpha = 16
target_modules = ["q_proj"]
[optim]
lr = 2e-4
[run]
output_dir = "runs/x"
max_steps = 10
"#;

    #[test]
    fn defaults_and_overrides() {
        let sets = ["run.max_steps=3", "optim.schedule=linear", "model.base=f32"].map(|s| Override::parse(s).unwrap());
        let c = TrainConfig::from_toml_str(Path::new("c.toml"), MIN, &sets).unwrap();
        assert_eq!(c.run.max_steps, 3);
        assert_eq!(c.optim.schedule, Schedule::Linear);
        assert_eq!(c.model.base, BaseMode::F32);
        assert_eq!(c.optim.beta2, 0.999);
        assert_eq!(c.lora_config().lora_alpha, 16.0);
    }

    #[test]
    fn unknown_and_bad_fields_are_named() {
        let bad = MIN.replace("lr = 2e-4", "lr = 2e-4\nlearning_rate = 1");
        let e = TrainConfig::from_toml_str(Path::new("c.toml"), &bad, &[]).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("learning_rate"), "{e}");
        let bad = MIN.replace("max_steps = 10", "max_steps = \"ten\"");
        let e = TrainConfig::from_toml_str(Path::new("c.toml"), &bad, &[]).unwrap_err().to_string();
        assert!(e.contains("max_steps"), "{e}");
        let e = TrainConfig::from_toml_str(Path::new("c.toml"), MIN, &[Override::parse("optim.lr=-1").unwrap()]).unwrap_err().to_string();
        assert!(e.contains("optim.lr"), "{e}");
        let e =
            TrainConfig::from_toml_str(Path::new("c.toml"), MIN, &[Override::parse("model.base=int3").unwrap()]).unwrap_err().to_string();
        assert!(e.contains("base") || e.contains("int3"), "{e}");
    }

    #[test]
    fn overrides_parse_typed_values_and_keep_strings_verbatim() {
        // `--set` reads TOML syntax, and a bare word as a string.
        assert_eq!(Override::parse("optim.lr=1e-4").unwrap(), Override::new("optim.lr", 1e-4));
        assert_eq!(Override::parse(" lora.r = 16 ").unwrap(), Override::new("lora.r", 16));
        assert_eq!(Override::parse("model.device=cpu").unwrap(), Override::new("model.device", "cpu"));
        assert_eq!(Override::parse("model.device=\"cuda:1\"").unwrap(), Override::new("model.device", "cuda:1"));
        assert!(Override::parse("run.max_steps").unwrap_err().contains("KEY=VALUE"));
        assert!(Override::parse("run..max_steps=3").unwrap_err().contains("empty key"));
        assert!(Override::parse("=3").unwrap_err().contains("empty key"));
        // A typed string with quotes, backslashes and TOML syntax in it arrives as it was given.
        let odd = r#"C:\runs\"x" = [1]"#;
        let c = TrainConfig::from_toml_str(
            Path::new("c.toml"),
            MIN,
            &[Override::parse("run.max_steps=7").unwrap(), Override::new("run.output_dir", odd), Override::new("model.path", odd)],
        )
        .unwrap();
        assert_eq!(c.run.output_dir, PathBuf::from(odd));
        assert_eq!(c.model.path, odd);
        assert_eq!(c.run.max_steps, 7);
        // Later overrides win; a key under a non-section is named.
        let c =
            TrainConfig::from_toml_str(Path::new("c.toml"), MIN, &[Override::new("run.max_steps", 2), Override::new("run.max_steps", 5)])
                .unwrap();
        assert_eq!(c.run.max_steps, 5);
        let e = TrainConfig::from_toml_str(Path::new("c.toml"), MIN, &[Override::parse("optim.lr.x=1").unwrap()]).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("'lr' is not a section"), "{e}");
    }
}
