//! The run configuration (`configs/eval-*.toml`). Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bedside_generate::SamplingParams;
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// A short name for the run, shown in the report title.
    #[serde(default = "default_name")]
    pub name: String,
    /// The base model: GGUF file, HF directory or hub id (as `--model`).
    pub model: String,
    /// `auto`, `cpu`, `cuda[:N]`, `metal`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Read hub ids from the local cache only.
    #[serde(default)]
    pub offline: bool,
    /// Run a quantized GGUF base dequantized to f32 (as `--dequantize`): the same weights with
    /// f32 activations, several times faster for batched generation on CPU, 4-8x the memory.
    #[serde(default)]
    pub dequantize: bool,
    /// Default output directory (`--output-dir` overrides).
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// The system message every system gets (identical for all).
    pub system_prompt: String,
    /// A label for the prompt wording, recorded in every result.
    #[serde(default = "default_prompts_version")]
    pub prompts_version: String,
    /// Score the control answers next to the systems (see `controls`): the reference, the
    /// neutral answer, the neutral answer plus a generic question, comfort only, the patient's
    /// message restated, the reference with its key facts contradicted. Every measure's validity
    /// gates are computed on them; without them no claim is drawn.
    #[serde(default = "yes")]
    pub controls: bool,
    /// With `controls = false`: still score the reference answers, as a control called `reference`.
    #[serde(default)]
    pub include_reference: bool,
    /// Answers sampled per test item and system (each with its own seed); the statistics
    /// resample items with all their samples (a bootstrap clustered by item), so the intervals
    /// include the randomness of generation.
    #[serde(default = "one_usize")]
    pub samples_per_item: usize,
    /// Prompts generated together in one batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Empathy heads to score with (default: the shipped data/empathy/heads-v1.safetensors); a
    /// relative path is read from the working directory.
    #[serde(default)]
    pub empathy_heads: Option<std::path::PathBuf>,
    /// The systems; the first without adapters is the baseline. When absent: just `base`.
    #[serde(default)]
    pub systems: Vec<SystemConfig>,
    #[serde(default)]
    pub decoding: DecodingConfig,
    #[serde(default)]
    pub sets: SetsConfig,
    #[serde(default)]
    pub equity: EquityConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    #[serde(default)]
    pub report: ReportConfig,
    /// LLM-as-judge; off when absent.
    #[serde(default)]
    pub judge: Option<JudgeConfig>,
}

/// One system under evaluation: the base model plus zero or more LoRA adapters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    pub name: String,
    /// PEFT adapter directories, applied in order.
    #[serde(default)]
    pub adapters: Vec<PathBuf>,
    /// Scale applied to every adapter (1.0 = as trained).
    #[serde(default = "one")]
    pub adapter_weight: f64,
    /// An OpenAI-compatible endpoint (e.g. `http://127.0.0.1:8080/v1`: `bedside serve`,
    /// llama-server, vLLM) that answers for this system instead of the local model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The model id to ask the endpoint for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The environment variable that holds the endpoint's API key, if it needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Requests sent to the endpoint at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

impl SystemConfig {
    /// A system answered by the local model with no adapters.
    pub fn local(name: &str) -> Self {
        Self {
            name: name.into(),
            adapters: Vec::new(),
            adapter_weight: 1.0,
            endpoint: None,
            model: None,
            api_key_env: None,
            concurrency: None,
        }
    }

    /// The local base model with no adapters (not an endpoint).
    pub fn is_local_base(&self) -> bool {
        self.adapters.is_empty() && self.endpoint.is_none()
    }
}

/// Decoding settings, identical for every system.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecodingConfig {
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default)]
    pub min_p: f64,
    #[serde(default = "default_repeat_penalty")]
    pub repeat_penalty: f32,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Base seed; each item's seed is derived from it and the item key (same for every system).
    #[serde(default = "default_seed")]
    pub seed: u64,
}

impl Default for DecodingConfig {
    fn default() -> Self {
        Self {
            temperature: default_temperature(),
            top_p: default_top_p(),
            top_k: 0,
            min_p: 0.0,
            repeat_penalty: default_repeat_penalty(),
            max_tokens: default_max_tokens(),
            seed: default_seed(),
        }
    }
}

/// Which evaluation sets to use. Paths are relative to the working directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetsConfig {
    #[serde(default = "default_test")]
    pub test: Option<TestSetConfig>,
    #[serde(default = "default_safety")]
    pub safety: Option<FileSetConfig>,
    #[serde(default = "default_equity_set")]
    pub equity: Option<FileSetConfig>,
}

impl Default for SetsConfig {
    fn default() -> Self {
        Self { test: default_test(), safety: default_safety(), equity: default_equity_set() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestSetConfig {
    /// Dialogue JSONL files or directories of them.
    #[serde(default = "default_dialogues")]
    pub paths: Vec<PathBuf>,
    #[serde(default = "default_split")]
    pub split: String,
    /// At most this many items (spread evenly over the set).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Hand-written contradictions of key facts for the `contradicted` control (JSON lines of
    /// id, fact, contradiction). Default: `data/eval/contradictions.jsonl` when it exists.
    #[serde(default)]
    pub contradictions: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSetConfig {
    pub path: PathBuf,
    /// At most this many items (for equity: base questions, each with all its variants).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EquityConfig {
    /// Replies sampled per probe (Gabriel et al. used 10).
    #[serde(default = "one_usize")]
    pub samples_per_probe: usize,
    /// Relative gaps larger than this (in %) are flagged.
    #[serde(default = "default_threshold")]
    pub threshold_pct: f64,
    #[serde(default = "default_permutations")]
    pub permutations: usize,
}

impl Default for EquityConfig {
    fn default() -> Self {
        Self { samples_per_probe: 1, threshold_pct: default_threshold(), permutations: default_permutations() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    /// The error rate of every interval and test: intervals are (1 − alpha), secondary
    /// measures are significant when their Holm-adjusted p is below alpha.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_stats_seed")]
    pub seed: u64,
    /// The primary endpoints: their conclusions are the verdict; every other directional
    /// measure is secondary and corrected for multiplicity (Holm).
    #[serde(default = "default_primary")]
    pub primary: Vec<String>,
    /// Non-inferiority margins (system − baseline, in the measure's units, ≤ 0): a measure with a
    /// margin is concluded "non-inferior" when its whole interval lies above the margin, "worse"
    /// when it lies below, else "inconclusive". Measures without one are tested for a difference.
    #[serde(default = "default_margins")]
    pub margins: BTreeMap<String, f64>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            bootstrap: default_bootstrap(),
            alpha: default_alpha(),
            seed: default_stats_seed(),
            primary: default_primary(),
            margins: default_margins(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Side-by-side example answers shown in the report.
    #[serde(default = "default_examples")]
    pub examples: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { examples: default_examples() }
    }
}

/// An LLM judge (EPITOME rubric, Good/Okay/Bad, pairwise preference in both orders).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Any local model (as `--model`).
    pub model: String,
    #[serde(default = "default_device")]
    pub device: String,
    /// Prompting settings to run and combine by majority: `zero`, `one`, `few`.
    #[serde(default = "default_shots")]
    pub shots: Vec<String>,
    /// Tasks: `epitome`, `good_okay_bad`, `pairwise`.
    #[serde(default = "default_tasks")]
    pub tasks: Vec<String>,
    /// Judge at most this many test items (the judge is slow).
    #[serde(default)]
    pub max_items: Option<usize>,
    /// Below this Cohen's kappa between the two presentation orders, the judge's differences are
    /// never called significant.
    #[serde(default = "default_min_kappa")]
    pub min_kappa: f64,
    #[serde(default = "default_judge_tokens")]
    pub max_tokens: usize,
}

fn default_name() -> String {
    "eval".into()
}
fn default_device() -> String {
    "auto".into()
}
fn default_prompts_version() -> String {
    "eval-v1".into()
}
fn default_batch() -> usize {
    8
}
fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn default_temperature() -> f64 {
    0.7
}
fn default_top_p() -> f64 {
    0.95
}
fn default_repeat_penalty() -> f32 {
    1.1
}
fn default_max_tokens() -> usize {
    160
}
fn default_seed() -> u64 {
    20240521
}
fn default_dialogues() -> Vec<PathBuf> {
    vec![PathBuf::from("data/dialogues")]
}
fn default_split() -> String {
    "test".into()
}
fn default_test() -> Option<TestSetConfig> {
    Some(TestSetConfig { paths: default_dialogues(), split: default_split(), limit: None, contradictions: None })
}
fn default_safety() -> Option<FileSetConfig> {
    Some(FileSetConfig { path: "data/eval/safety.jsonl".into(), limit: None })
}
fn default_equity_set() -> Option<FileSetConfig> {
    Some(FileSetConfig { path: "data/eval/equity-probes.jsonl".into(), limit: None })
}
fn default_threshold() -> f64 {
    5.0
}
fn default_permutations() -> usize {
    10_000
}
fn default_bootstrap() -> usize {
    10_000
}
fn default_alpha() -> f64 {
    0.05
}
fn default_stats_seed() -> u64 {
    7
}
fn yes() -> bool {
    true
}
fn default_primary() -> Vec<String> {
    vec!["empathy_expected".into(), "key_fact_recall".into()]
}
fn default_margins() -> BTreeMap<String, f64> {
    BTreeMap::from([("key_fact_recall".to_string(), -0.05)])
}
fn default_examples() -> usize {
    3
}
fn default_shots() -> Vec<String> {
    vec!["zero".into(), "one".into(), "few".into()]
}
fn default_tasks() -> Vec<String> {
    vec!["epitome".into(), "good_okay_bad".into(), "pairwise".into()]
}
fn default_min_kappa() -> f64 {
    0.2
}
fn default_judge_tokens() -> usize {
    6
}

/// The name of the pseudo-system that holds the reference answers.
pub const REFERENCE: &str = "reference";

impl EvalConfig {
    /// Reads and checks a config file; errors name the file and, from the TOML parser, the line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}: invalid eval config", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut cfg: EvalConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if cfg.systems.is_empty() {
            cfg.systems.push(SystemConfig::local("base"));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let mut names = BTreeSet::new();
        for (i, s) in self.systems.iter().enumerate() {
            if s.name.trim().is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                bail!("systems[{i}].name: `{}` must be non-empty letters, digits, - _ or .", s.name);
            }
            if crate::controls::is_control(&s.name) {
                bail!("systems[{i}].name: `{}` is reserved for a control answer (see `controls`)", s.name);
            }
            if !names.insert(s.name.clone()) {
                bail!("systems[{i}].name: duplicate system `{}`", s.name);
            }
            if !s.adapter_weight.is_finite() {
                bail!("systems[{i}].adapter_weight: must be a finite number");
            }
            match (&s.endpoint, &s.model) {
                (Some(url), Some(_)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        bail!("systems[{i}].endpoint: `{url}` must be an http:// or https:// URL (e.g. http://127.0.0.1:8080/v1)");
                    }
                    if !s.adapters.is_empty() {
                        bail!("systems[{i}]: an endpoint system takes no local adapters (ask the endpoint for the adapter's model id)");
                    }
                    if s.concurrency == Some(0) {
                        bail!("systems[{i}].concurrency: must be at least 1");
                    }
                }
                (Some(_), None) => bail!("systems[{i}].model: an endpoint system needs the model id to ask for"),
                (None, _) if s.model.is_some() || s.api_key_env.is_some() || s.concurrency.is_some() => {
                    bail!("systems[{i}]: model, api_key_env and concurrency apply only to endpoint systems (set endpoint)")
                }
                (None, _) => {}
            }
        }
        if !self.systems.iter().any(|s| s.is_local_base()) {
            bail!("systems: one system must be the local model with no adapters (the baseline of every comparison, and the model that scores fluency)");
        }
        if self.batch_size == 0 {
            bail!("batch_size: must be at least 1");
        }
        self.sampling_params(0).map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        if self.equity.samples_per_probe == 0 {
            bail!("equity.samples_per_probe: must be at least 1");
        }
        if self.equity.threshold_pct.is_nan() || self.equity.threshold_pct < 0.0 {
            bail!("equity.threshold_pct: must be >= 0");
        }
        if self.stats.bootstrap < 100 || self.equity.permutations < 100 {
            bail!("stats.bootstrap and equity.permutations: use at least 100 resamples");
        }
        if !(self.stats.alpha > 0.0 && self.stats.alpha < 0.5) {
            bail!("stats.alpha: must be in (0, 0.5)");
        }
        if self.samples_per_item == 0 {
            bail!("samples_per_item: must be at least 1");
        }
        let known = crate::aggregate::measures::measure_keys();
        for m in &self.stats.primary {
            if !known.contains(&m.as_str()) {
                bail!("stats.primary: unknown measure `{m}` (one of: {})", known.join(", "));
            }
        }
        for (m, v) in &self.stats.margins {
            if !known.contains(&m.as_str()) {
                bail!("stats.margins: unknown measure `{m}` (one of: {})", known.join(", "));
            }
            if !(v.is_finite() && *v <= 0.0) {
                bail!("stats.margins.{m}: a non-inferiority margin is a finite number <= 0 (how much worse still counts as no worse), got {v}");
            }
        }
        if let Some(j) = &self.judge {
            for s in &j.shots {
                if !["zero", "one", "few"].contains(&s.as_str()) {
                    bail!("judge.shots: unknown setting `{s}` (zero, one, few)");
                }
            }
            if j.shots.is_empty() {
                bail!("judge.shots: name at least one of zero, one, few");
            }
            for t in &j.tasks {
                if !["epitome", "good_okay_bad", "pairwise"].contains(&t.as_str()) {
                    bail!("judge.tasks: unknown task `{t}` (epitome, good_okay_bad, pairwise)");
                }
            }
            if j.max_tokens == 0 {
                bail!("judge.max_tokens: must be at least 1");
            }
        }
        if let Some(t) = &self.sets.test {
            if t.paths.is_empty() {
                bail!("sets.test.paths: name at least one dialogue file or directory");
            }
        }
        Ok(())
    }

    /// The baseline system's name (the first local one without adapters).
    pub fn base_system(&self) -> &str {
        self.systems.iter().find(|s| s.is_local_base()).map(|s| s.name.as_str()).unwrap_or("base")
    }

    /// Sampling parameters for one item (the seed is the item's).
    pub fn sampling_params(&self, seed: u64) -> std::result::Result<SamplingParams, String> {
        let d = &self.decoding;
        let p = SamplingParams {
            temperature: d.temperature,
            top_k: d.top_k,
            top_p: d.top_p,
            min_p: d.min_p,
            repeat_penalty: d.repeat_penalty,
            repeat_last_n: 64,
            seed,
            max_tokens: d.max_tokens,
            stop: vec![],
        };
        p.validate()?;
        Ok(p)
    }

    /// Replace the adapter systems by `specs` (`NAME=DIR` or `DIR`), keeping the base system.
    pub fn set_adapters(&mut self, specs: &[String]) -> Result<()> {
        if specs.is_empty() {
            return Ok(());
        }
        let base = self.systems.iter().find(|s| s.is_local_base()).cloned();
        // Endpoint systems stay.
        let mut systems: Vec<SystemConfig> =
            base.into_iter().chain(self.systems.iter().filter(|s| s.endpoint.is_some()).cloned()).collect();
        for (i, spec) in specs.iter().enumerate() {
            let (name, dir) = match spec.split_once('=') {
                Some((n, d)) if !n.is_empty() && !n.contains('/') => (n.to_string(), d.to_string()),
                _ => (if i == 0 { "tuned".to_string() } else { format!("tuned{}", i + 1) }, spec.clone()),
            };
            systems.push(SystemConfig { adapters: vec![PathBuf::from(dir)], ..SystemConfig::local(&name) });
        }
        self.systems = systems;
        self.validate()
    }

    /// Apply `--limit N` to every set (never raising a limit already in the config).
    pub fn apply_limit(&mut self, n: usize) {
        let lim = |l: &mut Option<usize>| *l = Some(l.map_or(n, |x| x.min(n)));
        if let Some(t) = &mut self.sets.test {
            lim(&mut t.limit);
        }
        if let Some(s) = &mut self.sets.safety {
            lim(&mut s.limit);
        }
        if let Some(e) = &mut self.sets.equity {
            lim(&mut e.limit);
        }
        if let Some(j) = &mut self.judge {
            lim(&mut j.max_items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped eval config parses; the demo's stays a cut of the full one.
    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let full = EvalConfig::load(&dir.join("eval-smollm2.toml")).unwrap();
        let demo = EvalConfig::load(&dir.join("eval-smollm2-demo.toml")).unwrap();
        assert!(!full.dequantize && demo.dequantize);
        assert_eq!(demo.decoding.seed, full.decoding.seed);
        assert_eq!(demo.system_prompt, full.system_prompt);
        assert_eq!(demo.sets.test.as_ref().unwrap().limit, None, "the demo needs the whole test split");
        assert_eq!(demo.sets.safety.as_ref().unwrap().limit, None, "every safety item");
        assert_eq!(demo.systems.len(), 2);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = EvalConfig::parse("model = \"m.gguf\"\nsystem_prompt = \"Be kind.\"\n").unwrap();
        assert_eq!(c.systems.len(), 1);
        assert_eq!(c.base_system(), "base");
        assert_eq!(c.equity.threshold_pct, 5.0);
        assert_eq!(c.decoding.max_tokens, 160);
        assert!(c.judge.is_none());
        assert!(c.controls && c.samples_per_item == 1);
        assert_eq!(c.stats.primary, ["empathy_expected", "key_fact_recall"]);
        assert_eq!(c.stats.margins["key_fact_recall"], -0.05);
        assert!(c.sets.test.is_some());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = EvalConfig::parse("model = \"m\"\nsystem_prompt = \"x\"\n[decoding]\ntemprature = 0.5\n").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("temprature"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn bad_values_named() {
        let e = EvalConfig::parse("model = \"m\"\nsystem_prompt = \"x\"\n[decoding]\ntop_p = 2.0\n").unwrap_err();
        assert!(format!("{e:#}").contains("top-p"));
        let e = EvalConfig::parse("model = \"m\"\nsystem_prompt = \"x\"\n[[systems]]\nname = \"t\"\nadapters = [\"a\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("no adapters"));
        let e = EvalConfig::parse("model = \"m\"\nsystem_prompt = \"x\"\n[[systems]]\nname = \"reference\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("reserved"));
        let e = EvalConfig::parse("model = \"m\"\nsystem_prompt = \"x\"\n[stats]\nprimary = [\"empathy_expectd\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("empathy_expectd"));
        let e = EvalConfig::parse("model = \"m\"\nsystem_prompt = \"x\"\n[stats]\nmargins = { key_fact_recall = 0.05 }\n").unwrap_err();
        assert!(format!("{e:#}").contains("margins.key_fact_recall"));
    }

    #[test]
    fn adapters_and_limit_override() {
        let mut c = EvalConfig::parse(
            "model = \"m\"\nsystem_prompt = \"x\"\n[[systems]]\nname = \"base\"\n[[systems]]\nname = \"old\"\nadapters = [\"a\"]\n[sets.safety]\npath = \"s.jsonl\"\nlimit = 2\n",
        )
        .unwrap();
        c.set_adapters(&["runs/x/adapter".into(), "kind=runs/y".into()]).unwrap();
        let names: Vec<_> = c.systems.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["base", "tuned", "kind"]);
        c.apply_limit(5);
        assert_eq!(c.sets.safety.as_ref().unwrap().limit, Some(2));
        assert_eq!(c.sets.test.as_ref().unwrap().limit, Some(5));
    }
}
