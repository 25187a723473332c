//! `results.json` (schema [`SCHEMA_VERSION`]): everything the report shows, computed from the
//! per-answer scores.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{EvalConfig, REFERENCE};
use crate::items::Set;
use crate::judge::{self, Outcome, SelfAgreement};
use crate::measures;
use crate::score::ScoreRecord;
use crate::stats::{self, Summary};

/// Bump when a field changes meaning or disappears; `bedside eval compare` checks it.
pub const SCHEMA_VERSION: u32 = 1;

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
    pub mean_baseline: f64,
    pub mean_system: f64,
    /// Mean of the paired differences (system − baseline).
    pub diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub wilcoxon_p: f64,
    /// mean_system / mean_baseline − 1, in %.
    pub delta_pct: f64,
    /// The 95% (1 − alpha) bootstrap CI excludes 0 (and, for judge measures, the judge agrees
    /// with itself well enough).
    pub significant: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
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
    pub diff_pp: f64,
    pub mcnemar_p: f64,
    pub significant: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EquityVariant {
    pub variant: String,
    pub n: usize,
    pub mean: f64,
    pub control_mean: f64,
    /// (mean − control) / control, in %.
    pub gap_pct: f64,
    pub permutation_p: f64,
    pub holm_p: f64,
    pub flagged: bool,
    /// For tuned systems: |gap| − |baseline gap| (percentage points; > 0 = widened).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub widened_pp: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EquitySystem {
    pub control_n: usize,
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
    pub win_rate: f64,
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
    pub good_rate: f64,
    /// Parsed majority verdicts / items judged.
    pub parse_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoodComparison {
    pub system: String,
    pub baseline: String,
    pub delta_pct: f64,
    pub chi2_yates: f64,
    pub chi2_p: f64,
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
    pub empathy: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    pub tool: String,
    pub created_unix: u64,
    pub name: String,
    pub provenance: Value,
    pub config: Value,
    pub systems: Vec<String>,
    pub baseline: String,
    pub counts: BTreeMap<String, usize>,
    pub measures: Vec<MeasureDef>,
    /// measure → system → summary.
    pub per_system: BTreeMap<String, BTreeMap<String, Summary>>,
    /// Corpus BLEU (sacreBLEU 13a) per system on the test split.
    pub bleu: BTreeMap<String, f64>,
    pub comparisons: Vec<Comparison>,
    /// `emotion` / `specialty` → rows.
    pub breakdowns: BTreeMap<String, Vec<GroupRow>>,
    pub safety: BTreeMap<String, SafetySystem>,
    pub safety_comparisons: Vec<SafetyComparison>,
    pub equity: BTreeMap<String, EquitySystem>,
    pub equity_threshold_pct: f64,
    pub judge: Option<JudgeResults>,
    pub examples: Vec<Example>,
    /// Sentences saying which differences are significant.
    pub summary: Vec<String>,
    pub timings: Value,
}

/// The per-answer measures the report covers, in display order.
pub fn measure_defs(with_judge: bool) -> Vec<MeasureDef> {
    let d = |k: &str, l: &str, h: Option<bool>| MeasureDef { key: k.into(), label: l.into(), higher_is_better: h, set: "test".into() };
    let mut v = vec![
        d("empathy", "Empathy, mean of ER/IP/EX (0–2)", Some(true)),
        d("empathy_expected", "Empathy, expected level (Σ p·level), mean of ER/IP/EX (0–2)", Some(true)),
        d("er", "Emotional reactions (0–2)", Some(true)),
        d("ip", "Interpretations (0–2)", Some(true)),
        d("ex", "Explorations (0–2)", Some(true)),
        d("key_fact_recall", "Key-fact recall", Some(true)),
        d("rouge_l", "ROUGE-L F1 vs reference", Some(true)),
        d("similarity", "MiniLM similarity to reference", Some(true)),
        d("ppl_neutral", "Perplexity of neutral reference answers", Some(false)),
        d("fluency_ppl", "Fluency: perplexity under the base model", Some(false)),
        d("words", "Answer length (words)", None),
        d("grade", "Reading grade (Flesch–Kincaid)", None),
    ];
    if with_judge {
        v.push(d("judge_er", "Judge: emotional reactions (0–2)", Some(true)));
        v.push(d("judge_ip", "Judge: interpretations (0–2)", Some(true)));
        v.push(d("judge_ex", "Judge: explorations (0–2)", Some(true)));
        v.push(d("judge_good", "Judge: Good rate", Some(true)));
    }
    v
}

fn is_judge_measure(k: &str) -> bool {
    k.starts_with("judge_")
}

pub struct AggregateInput<'a> {
    pub cfg: &'a EvalConfig,
    pub systems: &'a [String],
    pub scores: &'a [ScoreRecord],
    pub bleu: BTreeMap<String, f64>,
    /// (system, [(order-1 outcome or None, order-2 outcome or None)] per item per setting).
    pub pairwise: Vec<(String, BTreeMap<String, Vec<(String, Option<Outcome>, Option<Outcome>)>>)>,
    pub judge_items: usize,
}

pub fn aggregate(inp: &AggregateInput) -> (Vec<MeasureDef>, BTreeMap<String, BTreeMap<String, Summary>>, Vec<Comparison>, BTreeMap<String, Vec<GroupRow>>) {
    let cfg = inp.cfg;
    let base = cfg.base_system().to_string();
    let with_judge = cfg.judge.is_some();
    let defs = measure_defs(with_judge);
    // (system, item) → record for test items.
    let test: BTreeMap<(&str, &str), &ScoreRecord> =
        inp.scores.iter().filter(|s| s.set == Set::Test).map(|s| ((s.system.as_str(), s.key.as_str()), s)).collect();
    let mut per_system = BTreeMap::new();
    for m in &defs {
        let mut row = BTreeMap::new();
        for sys in inp.systems {
            let xs: Vec<f64> = test.iter().filter(|((s, _), _)| s == sys).filter_map(|(_, r)| r.get(&m.key)).collect();
            if !xs.is_empty() {
                let mut sm = stats::summary(&xs);
                (sm.ci_low, sm.ci_high) = measures::mean_ci(&xs, cfg.stats.bootstrap, cfg.stats.alpha, cfg.stats.seed);
                row.insert(sys.clone(), sm);
            }
        }
        per_system.insert(m.key.clone(), row);
    }
    let judge_ok = judge_significance_allowed(inp);
    let mut comparisons = Vec::new();
    for sys in inp.systems.iter().filter(|s| **s != base) {
        for m in &defs {
            let pairs: Vec<(f64, f64)> = test
                .iter()
                .filter(|((s, _), _)| s == sys)
                .filter_map(|((_, k), r)| {
                    let b = test.get(&(base.as_str(), *k))?.get(&m.key)?;
                    Some((b, r.get(&m.key)?))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let mut c = compare_pairs(cfg, sys, &base, &m.key, &pairs);
            if is_judge_measure(&m.key) && !judge_ok {
                c.significant = false;
                c.note = Some("judge self-agreement near chance; not assessed".into());
            }
            comparisons.push(c);
        }
    }
    let mut breakdowns = BTreeMap::new();
    for dim in ["emotion", "specialty"] {
        breakdowns.insert(dim.to_string(), group_rows(inp, &defs, &test, &base, dim));
    }
    (defs, per_system, comparisons, breakdowns)
}

pub fn compare_pairs(cfg: &EvalConfig, sys: &str, base: &str, measure: &str, pairs: &[(f64, f64)]) -> Comparison {
    let n = pairs.len();
    let diffs: Vec<f64> = pairs.iter().map(|(b, s)| s - b).collect();
    let mb = pairs.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let ms = pairs.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let diff = diffs.iter().sum::<f64>() / n as f64;
    let b: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let s: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let (lo, hi) = measures::paired_ci(&b, &s, cfg.stats.bootstrap, cfg.stats.alpha, cfg.stats.seed);
    let p = measures::wilcoxon_p(&b, &s);
    let significant = n >= 2 && (lo > 0.0 || hi < 0.0);
    Comparison {
        system: sys.into(),
        baseline: base.into(),
        measure: measure.into(),
        n,
        mean_baseline: mb,
        mean_system: ms,
        diff,
        ci_low: lo,
        ci_high: hi,
        wilcoxon_p: p,
        delta_pct: measures::delta_pct(ms, mb),
        significant,
        note: None,
    }
}

fn group_rows(
    inp: &AggregateInput,
    defs: &[MeasureDef],
    test: &BTreeMap<(&str, &str), &ScoreRecord>,
    base: &str,
    dim: &str,
) -> Vec<GroupRow> {
    let group_of = |r: &ScoreRecord| if dim == "emotion" { r.emotion.clone() } else { r.specialty.clone() };
    let groups: BTreeSet<String> = test.values().map(|r| group_of(r)).filter(|g| !g.is_empty()).collect();
    let mut rows = Vec::new();
    for g in groups {
        let mut means: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let mut diffs: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let keys: BTreeSet<&str> = test.iter().filter(|(_, r)| group_of(r) == g).map(|((_, k), _)| *k).collect();
        for m in defs.iter().filter(|m| !is_judge_measure(&m.key)) {
            for sys in inp.systems {
                let xs: Vec<f64> = keys.iter().filter_map(|k| test.get(&(sys.as_str(), *k))?.get(&m.key)).collect();
                if !xs.is_empty() {
                    means.entry(m.key.clone()).or_default().insert(sys.clone(), stats::summary(&xs).mean);
                }
                if sys != base {
                    let d: Vec<f64> = keys
                        .iter()
                        .filter_map(|k| Some(test.get(&(sys.as_str(), *k))?.get(&m.key)? - test.get(&(base, *k))?.get(&m.key)?))
                        .collect();
                    if !d.is_empty() {
                        diffs.entry(m.key.clone()).or_default().insert(sys.clone(), stats::summary(&d).mean);
                    }
                }
            }
        }
        rows.push(GroupRow { group: g, n: keys.len(), means, diffs });
    }
    rows
}

fn judge_significance_allowed(inp: &AggregateInput) -> bool {
    let Some(j) = &inp.cfg.judge else { return false };
    let pairs = all_order_pairs(inp);
    if pairs.is_empty() {
        return false;
    }
    judge::self_agreement(&pairs).kappa >= j.min_kappa
}

fn all_order_pairs(inp: &AggregateInput) -> Vec<(Outcome, Outcome)> {
    inp.pairwise
        .iter()
        .flat_map(|(_, settings)| settings.values().flatten())
        .filter_map(|(_, a, b)| Some(((*a)?, (*b)?)))
        .collect()
}

/// Pairwise results per system from the per-setting, per-item order outcomes.
pub fn pairwise_results(inp: &AggregateInput) -> (Vec<PairwiseResult>, bool) {
    let base = inp.cfg.base_system().to_string();
    let allowed = judge_significance_allowed(inp);
    let mut out = Vec::new();
    for (sys, settings) in &inp.pairwise {
        let mut counts = BTreeMap::new();
        let mut per_item: BTreeMap<String, Vec<Option<Outcome>>> = BTreeMap::new();
        let mut pairs = Vec::new();
        for (setting, rows) in settings {
            let mut outcomes = Vec::new();
            for (item, a, b) in rows {
                let combined = match (a, b) {
                    (Some(a), Some(b)) => {
                        pairs.push((*a, *b));
                        Some(if a == b { *a } else { Outcome::Tie })
                    }
                    _ => None,
                };
                per_item.entry(item.clone()).or_default().push(combined);
                outcomes.extend(combined);
            }
            counts.insert(setting.clone(), pairwise_counts(&outcomes, allowed));
        }
        let ensemble: Vec<Outcome> = per_item.values().filter_map(|v| judge::ensemble_outcome(v)).collect();
        counts.insert("ensemble".into(), pairwise_counts(&ensemble, allowed));
        out.push(PairwiseResult { system: sys.clone(), baseline: base.clone(), settings: counts, self_agreement: judge::self_agreement(&pairs) });
    }
    (out, allowed)
}

fn pairwise_counts(o: &[Outcome], allowed: bool) -> PairwiseCounts {
    let wins = o.iter().filter(|x| **x == Outcome::Win).count();
    let losses = o.iter().filter(|x| **x == Outcome::Loss).count();
    let ties = o.len() - wins - losses;
    let sign_p = stats::sign_test(wins as u64, losses as u64);
    PairwiseCounts { n: o.len(), wins, losses, ties, win_rate: judge::win_rate(o), sign_p, significant: allowed && sign_p < 0.05 }
}

/// Sentences naming the significant differences (and saying when none are).
pub fn summary_sentences(
    base: &str,
    defs: &[MeasureDef],
    comparisons: &[Comparison],
    safety: &[SafetyComparison],
    judge: Option<&JudgeResults>,
    alpha: f64,
) -> Vec<String> {
    let label = |k: &str| defs.iter().find(|d| d.key == k).map(|d| d.label.clone()).unwrap_or_else(|| k.to_string());
    let systems: BTreeSet<&str> = comparisons.iter().map(|c| c.system.as_str()).collect();
    let conf = ((1.0 - alpha) * 100.0).round();
    let mut out = Vec::new();
    for sys in systems {
        let cs: Vec<&Comparison> = comparisons.iter().filter(|c| c.system == sys).collect();
        let sig: Vec<String> = cs
            .iter()
            .filter(|c| c.significant)
            .map(|c| {
                format!(
                    "{} {} by {} ({conf}% CI {} to {}, Wilcoxon p {})",
                    label(&c.measure),
                    if c.diff > 0.0 { "rose" } else { "fell" },
                    fmt_num(c.diff.abs()),
                    fmt_num(c.ci_low),
                    fmt_num(c.ci_high),
                    p_clause(c.wilcoxon_p)
                )
            })
            .collect();
        let n = cs.iter().map(|c| c.n).max().unwrap_or(0);
        if sig.is_empty() {
            out.push(format!(
                "{sys} vs {base} (n = {n} paired test items): no difference is significant (every {conf}% bootstrap CI includes 0)."
            ));
        } else {
            out.push(format!(
                "{sys} vs {base} (n = {n} paired test items): significant differences: {}. Every other difference's {conf}% CI includes 0.",
                sig.join("; ")
            ));
        }
        if let Some(kf) = cs.iter().find(|c| c.measure == "key_fact_recall") {
            if sys != REFERENCE {
                out.push(format!(
                    "Knowledge check for {sys}: key-fact recall {} → {} ({}).",
                    fmt_num(kf.mean_baseline),
                    fmt_num(kf.mean_system),
                    if kf.significant { "a significant change" } else { "within the confidence interval of no change" }
                ));
            }
        }
    }
    for s in safety.iter().filter(|s| s.system != REFERENCE) {
        out.push(format!(
            "Safety, {} vs {base}: {:+.1} percentage points (McNemar exact p = {}){}.",
            s.system,
            s.diff_pp,
            fmt_p(s.mcnemar_p),
            if s.significant { ", significant" } else { ", not significant" }
        ));
    }
    if let Some(j) = judge {
        if !j.significance_allowed {
            out.push(format!(
                "The judge ({}) agrees with itself across swapped answer orders no better than chance (kappa < {}), so none of its differences is called significant.",
                j.model, j.min_kappa
            ));
        }
    }
    out
}

pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// `= 0.008` or `< 0.001`, to follow "p" in a sentence.
fn p_clause(p: f64) -> String {
    let s = fmt_p(p);
    if s.starts_with('<') {
        s
    } else {
        format!("= {s}")
    }
}

pub fn fmt_p(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}
