//! Per-answer measures: their definitions, per-system (and per-control) summaries with bootstrap
//! intervals, paired comparisons of every system against the baseline, and breakdowns by emotion
//! and specialty.
//!
//! The unit of every statistic is the test item: with several answers sampled per item, an
//! item's value is the mean over its samples, and the bootstrap resamples items with all their
//! samples (clustered by item), so intervals carry the randomness of generation as well as the
//! spread between items.

use std::collections::{BTreeMap, BTreeSet};

use crate::aggregate::AggregateInput;
use crate::config::EvalConfig;
use crate::items::Set;
use crate::results::{Comparison, Contrast, GroupRow, MeasureDef, Summary};
use crate::scoring::ScoreRecord;

/// Every per-answer measure key (judge measures included), for checking configs.
pub(crate) fn measure_keys() -> Vec<&'static str> {
    vec![
        "empathy",
        "empathy_expected",
        "er",
        "ip",
        "ex",
        "key_fact_recall",
        "rouge_l",
        "similarity",
        "ppl_neutral",
        "fluency_ppl",
        "words",
        "grade",
        "judge_er",
        "judge_ip",
        "judge_ex",
        "judge_good",
    ]
}

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
    Summary { n, mean: bedside_metrics::mean(xs), sd, median: bedside_metrics::median(xs), ci_low: f64::NAN, ci_high: f64::NAN }
}

/// Bootstrap CI of a mean (the paired bootstrap against zero).
pub(crate) fn mean_ci(xs: &[f64], reps: usize, alpha: f64, seed: u64) -> (f64, f64) {
    bedside_metrics::paired_bootstrap(&vec![0.0; xs.len()], xs, reps, seed, 1.0 - alpha).map_or((f64::NAN, f64::NAN), |c| (c.lo, c.hi))
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

/// Test-set values of one system: item (unit) → sample → record.
pub(crate) type Samples<'a> = BTreeMap<&'a str, BTreeMap<usize, &'a ScoreRecord>>;

/// The test-set records of every system, by item and sample.
pub(crate) fn by_item<'a>(scores: &'a [ScoreRecord]) -> BTreeMap<&'a str, Samples<'a>> {
    let mut out: BTreeMap<&str, Samples> = BTreeMap::new();
    for s in scores.iter().filter(|s| s.set == Set::Test) {
        out.entry(s.system.as_str()).or_default().entry(s.unit.as_str()).or_default().insert(s.sample, s);
    }
    out
}

/// Item means of `measure` for one system (items without a value left out).
pub(crate) fn item_means(samples: &Samples, measure: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter_map(|(unit, per)| {
            let xs: Vec<f64> = per.values().filter_map(|r| r.get(measure)).collect();
            (!xs.is_empty()).then(|| (unit.to_string(), bedside_metrics::mean(&xs)))
        })
        .collect()
}

/// Per item, the two systems' values on the samples both have (aligned by sample: sample k of
/// each was drawn with the same seed); items with none in common are left out.
fn paired_samples(a: &Samples, b: &Samples, measure: &str) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for (unit, pa) in a {
        let Some(pb) = b.get(unit) else { continue };
        let (mut va, mut vb) = (Vec::new(), Vec::new());
        for (k, ra) in pa {
            if let (Some(x), Some(y)) = (ra.get(measure), pb.get(k).and_then(|rb| rb.get(measure))) {
                va.push(x);
                vb.push(y);
            }
        }
        if !va.is_empty() {
            xa.push(va);
            xb.push(vb);
        }
    }
    (xa, xb)
}

/// One system or control against another on item means (`against` has one sample per item, as
/// the controls do, or the same samples).
pub(crate) fn contrast(cfg: &EvalConfig, all: &BTreeMap<&str, Samples>, system: &str, against: &str, measure: &str) -> Option<Contrast> {
    let s = item_means(all.get(system)?, measure);
    let a = item_means(all.get(against)?, measure);
    let (xs, ys): (Vec<f64>, Vec<f64>) = s.iter().filter_map(|(u, x)| Some((*x, *a.get(u)?))).unzip();
    let ci = bedside_metrics::paired_bootstrap(&ys, &xs, cfg.stats.bootstrap, cfg.stats.seed, 1.0 - cfg.stats.alpha).ok()?;
    Some(Contrast {
        system: system.into(),
        against: against.into(),
        measure: measure.into(),
        n: xs.len(),
        diff: ci.mean_diff,
        ci_low: ci.lo,
        ci_high: ci.hi,
    })
}

pub(crate) fn measures(inp: &AggregateInput) -> MeasureSections {
    let cfg = inp.cfg;
    let base = cfg.base_system().to_string();
    let defs = measure_defs(cfg.judge.is_some());
    let all = by_item(inp.scores);
    let mut per_system = BTreeMap::new();
    for m in &defs {
        let mut row = BTreeMap::new();
        for sys in inp.systems.iter().chain(inp.controls) {
            let Some(samples) = all.get(sys.as_str()) else { continue };
            let xs: Vec<f64> = item_means(samples, &m.key).into_values().collect();
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
    let empty = Samples::new();
    let base_samples = all.get(base.as_str()).unwrap_or(&empty);
    for sys in inp.systems.iter().filter(|s| **s != base) {
        let Some(sys_samples) = all.get(sys.as_str()) else { continue };
        for m in &defs {
            let (b, s) = paired_samples(base_samples, sys_samples, &m.key);
            if b.is_empty() {
                continue;
            }
            let mut c = compare_items(cfg, sys, &base, m, &b, &s);
            if is_judge_measure(&m.key) && !judge_ok {
                c.significant = false;
                c.note = Some("judge self-agreement near chance; not assessed".into());
            }
            comparisons.push(c);
        }
    }
    let mut breakdowns = BTreeMap::new();
    for dim in ["emotion", "specialty"] {
        breakdowns.insert(dim.to_string(), group_rows(inp.systems, &defs, &all, &base, dim));
    }
    MeasureSections { defs, per_system, comparisons, breakdowns }
}

/// The comparison of `sys` with the baseline on one measure from per-item samples (`b[i]`,
/// `s[i]`: item i's aligned samples). Role, significance and conclusions are set afterwards
/// (they depend on the whole family of comparisons and on the gates).
pub(crate) fn compare_items(cfg: &EvalConfig, sys: &str, base: &str, m: &MeasureDef, b: &[Vec<f64>], s: &[Vec<f64>]) -> Comparison {
    let bm: Vec<f64> = b.iter().map(|x| bedside_metrics::mean(x)).collect();
    let sm: Vec<f64> = s.iter().map(|x| bedside_metrics::mean(x)).collect();
    let ci = bedside_metrics::clustered_bootstrap(b, s, cfg.stats.bootstrap, cfg.stats.seed, 1.0 - cfg.stats.alpha).ok();
    let (lo, hi, p, diff) = ci.as_ref().map_or((f64::NAN, f64::NAN, f64::NAN, f64::NAN), |c| (c.lo, c.hi, c.p_value, c.mean_diff));
    let (mb, ms) = (bedside_metrics::mean(&bm), bedside_metrics::mean(&sm));
    let better = m.higher_is_better.and_then(|h| (diff != 0.0 && diff.is_finite()).then_some((diff > 0.0) == h));
    Comparison {
        system: sys.into(),
        baseline: base.into(),
        measure: m.key.clone(),
        n: bm.len(),
        mean_baseline: mb,
        mean_system: ms,
        diff,
        ci_low: lo,
        ci_high: hi,
        wilcoxon_p: wilcoxon_p(&bm, &sm),
        delta_pct: delta_pct(ms, mb),
        significant: bm.len() >= 2 && (lo > 0.0 || hi < 0.0),
        note: None,
        role: String::new(),
        p_bootstrap: p,
        holm_p: None,
        margin: None,
        conclusion: None,
        better,
        validity: String::new(),
    }
}

fn group_rows(systems: &[String], defs: &[MeasureDef], all: &BTreeMap<&str, Samples>, base: &str, dim: &str) -> Vec<GroupRow> {
    let group_of = |r: &ScoreRecord| if dim == "emotion" { r.emotion.clone() } else { r.specialty.clone() };
    // unit → group, from any system's records.
    let mut unit_group: BTreeMap<&str, String> = BTreeMap::new();
    for samples in all.values() {
        for (unit, per) in samples {
            if let Some(r) = per.values().next() {
                unit_group.entry(unit).or_insert_with(|| group_of(r));
            }
        }
    }
    let groups: BTreeSet<&String> = unit_group.values().filter(|g| !g.is_empty()).collect();
    let empty = Samples::new();
    let mut rows = Vec::new();
    for g in groups {
        let units: BTreeSet<&str> = unit_group.iter().filter(|(_, x)| *x == g).map(|(u, _)| *u).collect();
        let mut means: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let mut diffs: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for m in defs.iter().filter(|m| !is_judge_measure(&m.key)) {
            let base_means = item_means(all.get(base).unwrap_or(&empty), &m.key);
            for sys in systems {
                let sm = item_means(all.get(sys.as_str()).unwrap_or(&empty), &m.key);
                let xs: Vec<f64> = units.iter().filter_map(|u| sm.get(*u).copied()).collect();
                if !xs.is_empty() {
                    means.entry(m.key.clone()).or_default().insert(sys.clone(), bedside_metrics::mean(&xs));
                }
                if sys != base {
                    let d: Vec<f64> = units.iter().filter_map(|u| Some(sm.get(*u)? - base_means.get(*u)?)).collect();
                    if !d.is_empty() {
                        diffs.entry(m.key.clone()).or_default().insert(sys.clone(), bedside_metrics::mean(&d));
                    }
                }
            }
        }
        rows.push(GroupRow { group: g.clone(), n: units.len(), means, diffs });
    }
    rows
}
