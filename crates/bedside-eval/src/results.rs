//! The schema of `results.json` (version [`SCHEMA_VERSION`]): everything the report shows. The
//! values are computed by the aggregation step (`aggregate`); this module only defines them.
//!
//! Numbers that are undefined (a p-value of an empty comparison, a mean of nothing) are written
//! as `null` and read back as NaN.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Bump when a field changes meaning or disappears; `bedside eval compare` checks it.
pub const SCHEMA_VERSION: u32 = 2;

/// A per-answer numeric measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeasureDef {
    pub key: String,
    pub label: String,
    pub higher_is_better: Option<bool>,
    /// The set it is computed on.
    pub set: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub system: String,
    pub baseline: String,
    pub measure: String,
    pub n: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean_baseline: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean_system: f64,
    /// Mean of the paired differences (system − baseline).
    #[serde(deserialize_with = "f64_or_nan")]
    pub diff: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub ci_low: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub ci_high: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub wilcoxon_p: f64,
    /// mean_system / mean_baseline − 1, in %.
    #[serde(deserialize_with = "f64_or_nan")]
    pub delta_pct: f64,
    /// `primary`: the difference is significant when the (1 − alpha) bootstrap interval excludes
    /// 0; `secondary`: when the Holm-adjusted bootstrap p is below alpha (and, for judge
    /// measures, the judge agrees with itself well enough); `descriptive` measures have no
    /// direction and are never significant.
    pub significant: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
    /// `primary`, `secondary` or `descriptive` (no better direction).
    #[serde(default)]
    pub role: String,
    /// Two-sided bootstrap p of "no difference" (from the same resamples as the interval).
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub p_bootstrap: f64,
    /// Holm-adjusted `p_bootstrap` across the secondary family (secondary measures only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub holm_p: Option<f64>,
    /// The non-inferiority margin, when the config gives the measure one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub margin: Option<f64>,
    /// Primary endpoints: `better`, `worse` or `inconclusive`; with a margin `non-inferior`,
    /// `worse` or `inconclusive`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conclusion: Option<String>,
    /// Whether the difference goes the measure's better way (`None`: no direction, or 0).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub better: Option<bool>,
    /// The measure's validity on this run (`valid`, `not valid on this run`, `no control gate`).
    #[serde(default)]
    pub validity: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRow {
    pub group: String,
    pub n: usize,
    /// measure → system → mean.
    pub means: BTreeMap<String, BTreeMap<String, f64>>,
    /// measure → system → mean paired difference vs the baseline.
    pub diffs: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafetyFailure {
    pub id: String,
    pub category: String,
    pub missing: Vec<String>,
    pub forbidden: Vec<String>,
    pub answer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafetySystem {
    pub n: usize,
    pub passed: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub rate: f64,
    pub failures: Vec<SafetyFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafetyComparison {
    pub system: String,
    pub n: usize,
    /// Items only the system passes / only the baseline passes.
    pub only_system: usize,
    pub only_baseline: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub diff_pp: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mcnemar_p: f64,
    /// Holm-adjusted McNemar p across the secondary family.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub holm_p: Option<f64>,
    pub significant: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EquityVariant {
    pub variant: String,
    pub n: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub control_mean: f64,
    /// (mean − control) / control, in %.
    #[serde(deserialize_with = "f64_or_nan")]
    pub gap_pct: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub permutation_p: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub holm_p: f64,
    pub flagged: bool,
    /// For tuned systems: |gap| − |baseline gap| (percentage points; > 0 = widened).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub widened_pp: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EquitySystem {
    pub control_n: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub control_mean: f64,
    pub variants: Vec<EquityVariant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairwiseResult {
    pub system: String,
    pub baseline: String,
    /// Per prompting setting and `ensemble`: wins, losses, ties, win rate, sign-test p.
    pub settings: BTreeMap<String, PairwiseCounts>,
    pub self_agreement: SelfAgreement,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairwiseCounts {
    pub n: usize,
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub win_rate: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub sign_p: f64,
    pub significant: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoodRate {
    pub system: String,
    pub n: usize,
    pub bad: usize,
    pub okay: usize,
    pub good: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub good_rate: f64,
    /// Parsed majority verdicts / items judged.
    #[serde(deserialize_with = "f64_or_nan")]
    pub parse_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoodComparison {
    pub system: String,
    pub baseline: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub delta_pct: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub chi2_yates: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub chi2_p: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mcnemar_p: f64,
    pub significant: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgeResults {
    pub model: String,
    pub same_as_generator: bool,
    pub shots: Vec<String>,
    pub items: usize,
    pub good_rates: Vec<GoodRate>,
    pub good_comparisons: Vec<GoodComparison>,
    pub pairwise: Vec<PairwiseResult>,
    /// False when the judge's agreement with itself across swapped orders is near chance: then
    /// no judge-based difference is called significant.
    pub significance_allowed: bool,
    #[serde(deserialize_with = "f64_or_nan")]
    pub min_kappa: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub emotion: String,
    pub specialty: String,
    pub prompt: String,
    /// system → answer.
    pub answers: BTreeMap<String, String>,
    /// system → empathy mean (0–2).
    #[serde(deserialize_with = "map_f64_or_nan")]
    pub empathy: BTreeMap<String, f64>,
}

/// One validity gate: a rule on the control answers, the value observed and the limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gate {
    pub rule: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub value: f64,
    pub limit: f64,
    pub passed: bool,
}

/// A measure's gates on this run and what they allow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeasureValidity {
    pub measure: String,
    /// `valid`, `not valid on this run` (a gate failed: no claim is drawn from the measure) or
    /// `no control gate`.
    pub status: String,
    pub gates: Vec<Gate>,
}

/// A system against another on one measure, outside the baseline comparisons (the tuned
/// system against the neutral-plus-question control).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contrast {
    pub system: String,
    pub against: String,
    pub measure: String,
    pub n: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub diff: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub ci_low: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub ci_high: f64,
}

/// What a system's run allows saying, from the primary endpoints and their gates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub system: String,
    pub baseline: String,
    /// One sentence per primary endpoint, then the overall claim.
    pub sentences: Vec<String>,
    /// `more comforting`: the empathy endpoint is better, valid, and above neutral + question.
    pub more_comforting: bool,
    /// The knowledge endpoint's conclusion, when valid (`non-inferior`, `worse`, `inconclusive`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub knowledge: Option<String>,
    /// The system against the neutral-plus-question control on the empathy endpoint.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vs_neutral_question: Option<Contrast>,
}

/// The statistical settings every number was computed with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsInfo {
    pub alpha: f64,
    pub bootstrap: usize,
    pub samples_per_item: usize,
    pub primary: Vec<String>,
    pub margins: BTreeMap<String, f64>,
    /// The secondary measures Holm's correction runs over.
    pub secondary: Vec<String>,
    pub method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    pub tool: String,
    pub created_unix: u64,
    pub name: String,
    pub provenance: Value,
    pub config: Value,
    /// The evaluated systems, the baseline among them.
    pub systems: Vec<String>,
    pub baseline: String,
    /// The control answers scored next to them (their means are in `per_system`).
    #[serde(default)]
    pub controls: Vec<String>,
    pub stats: StatsInfo,
    /// The verdict on the primary endpoints, per system other than the baseline.
    pub verdict: Vec<Verdict>,
    /// Each measure's validity gates on this run.
    pub validity: Vec<MeasureValidity>,
    pub counts: BTreeMap<String, usize>,
    pub measures: Vec<MeasureDef>,
    /// measure → system or control → summary.
    pub per_system: BTreeMap<String, BTreeMap<String, Summary>>,
    /// Corpus BLEU (sacreBLEU 13a) per system on the test split.
    #[serde(deserialize_with = "map_f64_or_nan")]
    pub bleu: BTreeMap<String, f64>,
    pub comparisons: Vec<Comparison>,
    /// `emotion` / `specialty` → rows.
    pub breakdowns: BTreeMap<String, Vec<GroupRow>>,
    /// Per system and safety control.
    pub safety: BTreeMap<String, SafetySystem>,
    pub safety_comparisons: Vec<SafetyComparison>,
    pub equity: BTreeMap<String, EquitySystem>,
    #[serde(deserialize_with = "f64_or_nan")]
    pub equity_threshold_pct: f64,
    pub judge: Option<JudgeResults>,
    pub examples: Vec<Example>,
    /// Sentences saying which differences are significant.
    pub summary: Vec<String>,
    pub timings: Value,
}

/// Mean, sample sd, median and the bootstrap interval of the mean of one measure for one system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub sd: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub median: f64,
    /// Bootstrap confidence interval of the mean (NaN when unknown).
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub ci_low: f64,
    #[serde(default = "nan", deserialize_with = "f64_or_nan")]
    pub ci_high: f64,
}

/// Agreement of the judge with itself across the two presentation orders: the share of
/// comparisons where both orders name the same winner (or both a tie), the agreement expected by
/// chance from the two orders' marginals, and Cohen's kappa.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfAgreement {
    pub n: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub observed: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub chance: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub kappa: f64,
}

impl Results {
    /// Reads a `results.json` (or the one in a run directory), checking its schema version.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let v = crate::compare::load(path)?;
        let p = crate::compare::results_path(path);
        serde_json::from_value(v).map_err(|e| anyhow::anyhow!("{}: not a results.json of this version: {e}", p.display()))
    }
}

fn nan() -> f64 {
    f64::NAN
}

/// A number, or `null` (how serde_json writes NaN) as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn map_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect())
}
