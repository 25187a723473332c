//! Per-answer measures: their definitions, per-system summaries with bootstrap intervals, paired
//! comparisons of every system against the baseline, and breakdowns by emotion and specialty.

use std::collections::{BTreeMap, BTreeSet};

use crate::aggregate::AggregateInput;
use crate::config::EvalConfig;
use crate::items::Set;
use crate::results::{Comparison, GroupRow, MeasureDef, Summary};
use crate::scoring::ScoreRecord;

/// The per-answer measures the report covers, in display order.
pub(crate) fn measure_defs(with_judge: bool) -> Vec<MeasureDef> {
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

pub(crate) fn is_judge_measure(k: &str) -> bool {
    k.starts_with("judge_")
}

pub(crate) struct MeasureSections {
    pub defs: Vec<MeasureDef>,
    pub per_system: BTreeMap<String, BTreeMap<String, Summary>>,
    pub comparisons: Vec<Comparison>,
    pub breakdowns: BTreeMap<String, Vec<GroupRow>>,
}

/// Mean, sample standard deviation (n − 1; 0 for one value) and median; NaN fields when empty.
pub(crate) fn summary(xs: &[f64]) -> Summary {
    let n = xs.len();
    let sd = if n == 1 { 0.0 } else { bedside_metrics::sd(xs) };
    Summary { n, mean: bedside_metrics::mean(xs), sd, median: bedside_metrics::stats::median(xs), ci_low: f64::NAN, ci_high: f64::NAN }
}

/// Paired percentile bootstrap CI of mean(system − baseline).
pub(crate) fn paired_ci(baseline: &[f64], system: &[f64], reps: usize, alpha: f64, seed: u64) -> (f64, f64) {
    bedside_metrics::paired_bootstrap(baseline, system, reps, seed, 1.0 - alpha).map_or((f64::NAN, f64::NAN), |c| (c.lo, c.hi))
}

/// Bootstrap CI of a mean (the paired bootstrap against zero).
pub(crate) fn mean_ci(xs: &[f64], reps: usize, alpha: f64, seed: u64) -> (f64, f64) {
    paired_ci(&vec![0.0; xs.len()], xs, reps, alpha, seed)
}

/// Two-sided Wilcoxon signed-rank p of system − baseline (scipy defaults); 1 when every
/// difference is zero, NaN when undefined.
pub(crate) fn wilcoxon_p(baseline: &[f64], system: &[f64]) -> f64 {
    if system.iter().zip(baseline).all(|(a, b)| a == b) {
        return 1.0;
    }
    bedside_metrics::wilcoxon(system, baseline).map_or(f64::NAN, |w| w.pvalue)
}

/// Δ% in Welivita & Pu's sense: new / base − 1, in % (NaN when base is 0).
pub(crate) fn delta_pct(new: f64, base: f64) -> f64 {
    bedside_metrics::delta_pct(new, base).unwrap_or(f64::NAN)
}

pub(crate) fn measures(inp: &AggregateInput) -> MeasureSections {
    let cfg = inp.cfg;
    let base = cfg.base_system().to_string();
    let defs = measure_defs(cfg.judge.is_some());
    // (system, item) → record for test items.
    let test: BTreeMap<(&str, &str), &ScoreRecord> =
        inp.scores.iter().filter(|s| s.set == Set::Test).map(|s| ((s.system.as_str(), s.key.as_str()), s)).collect();
    let mut per_system = BTreeMap::new();
    for m in &defs {
        let mut row = BTreeMap::new();
        for sys in inp.systems {
            let xs: Vec<f64> = test.iter().filter(|((s, _), _)| s == sys).filter_map(|(_, r)| r.get(&m.key)).collect();
            if !xs.is_empty() {
                let mut sm = summary(&xs);
                (sm.ci_low, sm.ci_high) = mean_ci(&xs, cfg.stats.bootstrap, cfg.stats.alpha, cfg.stats.seed);
                row.insert(sys.clone(), sm);
            }
        }
        per_system.insert(m.key.clone(), row);
    }
    let judge_ok = crate::aggregate::judge::significance_allowed(inp);
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
        breakdowns.insert(dim.to_string(), group_rows(inp.systems, &defs, &test, &base, dim));
    }
    MeasureSections { defs, per_system, comparisons, breakdowns }
}

pub(crate) fn compare_pairs(cfg: &EvalConfig, sys: &str, base: &str, measure: &str, pairs: &[(f64, f64)]) -> Comparison {
    let n = pairs.len();
    let b: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let s: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let diffs: Vec<f64> = pairs.iter().map(|(b, s)| s - b).collect();
    let (mb, ms) = (bedside_metrics::mean(&b), bedside_metrics::mean(&s));
    let (lo, hi) = paired_ci(&b, &s, cfg.stats.bootstrap, cfg.stats.alpha, cfg.stats.seed);
    let significant = n >= 2 && (lo > 0.0 || hi < 0.0);
    Comparison {
        system: sys.into(),
        baseline: base.into(),
        measure: measure.into(),
        n,
        mean_baseline: mb,
        mean_system: ms,
        diff: bedside_metrics::mean(&diffs),
        ci_low: lo,
        ci_high: hi,
        wilcoxon_p: wilcoxon_p(&b, &s),
        delta_pct: delta_pct(ms, mb),
        significant,
        note: None,
    }
}

fn group_rows(
    systems: &[String],
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
            for sys in systems {
                let xs: Vec<f64> = keys.iter().filter_map(|k| test.get(&(sys.as_str(), *k))?.get(&m.key)).collect();
                if !xs.is_empty() {
                    means.entry(m.key.clone()).or_default().insert(sys.clone(), bedside_metrics::mean(&xs));
                }
                if sys != base {
                    let d: Vec<f64> = keys
                        .iter()
                        .filter_map(|k| Some(test.get(&(sys.as_str(), *k))?.get(&m.key)? - test.get(&(base, *k))?.get(&m.key)?))
                        .collect();
                    if !d.is_empty() {
                        diffs.entry(m.key.clone()).or_default().insert(sys.clone(), bedside_metrics::mean(&d));
                    }
                }
            }
        }
        rows.push(GroupRow { group: g, n: keys.len(), means, diffs });
    }
    rows
}
