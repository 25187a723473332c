//! Safety, equity, judge and example sections of `results.json`.

use std::collections::BTreeMap;

use crate::config::{EvalConfig, JudgeConfig, REFERENCE};
use crate::items::{EvalItem, Set};
use crate::judge::Rating;
use crate::measures;
use crate::results::{
    self, AggregateInput, EquitySystem, EquityVariant, Example, GoodComparison, GoodRate, JudgeResults, SafetyComparison,
    SafetyFailure, SafetySystem,
};
use crate::score::ScoreRecord;
use crate::stats;

pub fn safety(
    cfg: &EvalConfig,
    systems: &[String],
    scores: &[ScoreRecord],
    texts: &[(String, &EvalItem, String)],
) -> (BTreeMap<String, SafetySystem>, Vec<SafetyComparison>) {
    let base = cfg.base_system();
    let mut out = BTreeMap::new();
    let verdict = |sys: &str, key: &str| {
        scores.iter().find(|s| s.system == sys && s.key == key).and_then(|s| s.safety.as_ref()).map(|v| v.passed)
    };
    for sys in systems.iter().filter(|s| s.as_str() != REFERENCE) {
        let mine: Vec<&ScoreRecord> = scores.iter().filter(|s| &s.system == sys && s.set == Set::Safety).collect();
        if mine.is_empty() {
            continue;
        }
        let failures = mine
            .iter()
            .filter_map(|s| {
                let v = s.safety.as_ref()?;
                if v.passed {
                    return None;
                }
                let (_, it, text) = texts.iter().find(|(x, it, _)| x == sys && it.key == s.key)?;
                Some(SafetyFailure {
                    id: s.id.clone(),
                    category: it.safety.as_ref().map(|r| r.category.clone()).unwrap_or_default(),
                    missing: v.missing.clone(),
                    forbidden: v.forbidden.clone(),
                    answer: text.clone(),
                })
            })
            .collect::<Vec<_>>();
        let passed = mine.len() - failures.len();
        out.insert(sys.clone(), SafetySystem { n: mine.len(), passed, rate: passed as f64 / mine.len() as f64, failures });
    }
    let mut comps = Vec::new();
    for sys in systems.iter().filter(|s| s.as_str() != base && s.as_str() != REFERENCE) {
        let keys: Vec<&str> = scores.iter().filter(|s| &s.system == sys && s.set == Set::Safety).map(|s| s.key.as_str()).collect();
        let (mut only_s, mut only_b, mut n) = (0usize, 0usize, 0usize);
        let (mut ps, mut pb) = (0usize, 0usize);
        for k in keys {
            if let (Some(a), Some(b)) = (verdict(sys, k), verdict(base, k)) {
                n += 1;
                ps += a as usize;
                pb += b as usize;
                if a && !b {
                    only_s += 1;
                }
                if b && !a {
                    only_b += 1;
                }
            }
        }
        if n == 0 {
            continue;
        }
        let p = stats::sign_test(only_s as u64, only_b as u64);
        comps.push(SafetyComparison {
            system: sys.clone(),
            n,
            only_system: only_s,
            only_baseline: only_b,
            diff_pp: 100.0 * (ps as f64 - pb as f64) / n as f64,
            mcnemar_p: p,
            significant: p < cfg.stats.alpha,
        });
    }
    (out, comps)
}

/// Empathy (mean of ER/IP/EX levels, as Gabriel et al.) per demographic variant against the
/// unmarked control, with permutation p-values, Holm correction and the threshold flag.
pub fn equity(cfg: &EvalConfig, systems: &[String], scores: &[ScoreRecord]) -> BTreeMap<String, EquitySystem> {
    let base = cfg.base_system();
    let mut out: BTreeMap<String, EquitySystem> = BTreeMap::new();
    let order = |sys: &str| if sys == base { 0 } else { 1 };
    let mut ordered: Vec<&String> = systems.iter().filter(|s| s.as_str() != REFERENCE).collect();
    ordered.sort_by_key(|s| order(s));
    for sys in ordered {
        let mine: Vec<&ScoreRecord> = scores.iter().filter(|s| &s.system == sys && s.set == Set::Equity).collect();
        let mut by_variant: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for s in &mine {
            if let (Some(l), Some(e)) = (s.get("empathy"), &s.equity) {
                by_variant.entry(e.variant()).or_default().push(l);
            }
        }
        let Some(control) = by_variant.remove("control") else { continue };
        let cm = stats::summary(&control).mean;
        let mut variants: Vec<EquityVariant> = by_variant
            .iter()
            .enumerate()
            .map(|(i, (v, xs))| {
                let m = stats::summary(xs).mean;
                let gap = if cm.abs() > 1e-12 { 100.0 * (m - cm) / cm } else { f64::NAN };
                let p = measures::permutation_p(xs, &control, cfg.equity.permutations, cfg.stats.seed.wrapping_add(i as u64));
                EquityVariant {
                    variant: v.clone(),
                    n: xs.len(),
                    mean: m,
                    control_mean: cm,
                    gap_pct: gap,
                    permutation_p: p,
                    holm_p: f64::NAN,
                    flagged: gap.is_finite() && gap.abs() > cfg.equity.threshold_pct,
                    widened_pp: None,
                }
            })
            .collect();
        let holm = stats::holm(&variants.iter().map(|v| v.permutation_p).collect::<Vec<_>>());
        for (v, h) in variants.iter_mut().zip(holm) {
            v.holm_p = h;
            if sys != base {
                if let Some(b) = out.get(base).and_then(|b| b.variants.iter().find(|x| x.variant == v.variant)) {
                    v.widened_pp = Some(v.gap_pct.abs() - b.gap_pct.abs());
                }
            }
        }
        out.insert(sys.clone(), EquitySystem { control_n: control.len(), control_mean: cm, variants });
    }
    out
}

pub fn judge_results(cfg: &EvalConfig, j: &JudgeConfig, inp: &AggregateInput, scores: &[ScoreRecord]) -> JudgeResults {
    let base = cfg.base_system();
    let (pairwise, allowed) = results::pairwise_results(inp);
    let ratings = |sys: &str| -> Vec<(String, Option<Rating>)> {
        scores
            .iter()
            .filter(|s| s.system == sys && s.set == Set::Test)
            .filter_map(|s| Some((s.key.clone(), s.judge.as_ref()?.rating)))
            .collect()
    };
    let mut good_rates = Vec::new();
    for sys in inp.systems {
        let r = ratings(sys);
        if r.is_empty() {
            continue;
        }
        let parsed: Vec<Rating> = r.iter().filter_map(|x| x.1).collect();
        let c = |k: Rating| parsed.iter().filter(|x| **x == k).count();
        good_rates.push(GoodRate {
            system: sys.clone(),
            n: parsed.len(),
            bad: c(Rating::Bad),
            okay: c(Rating::Okay),
            good: c(Rating::Good),
            good_rate: if parsed.is_empty() { f64::NAN } else { c(Rating::Good) as f64 / parsed.len() as f64 },
            parse_rate: parsed.len() as f64 / r.len() as f64,
        });
    }
    let mut good_comparisons = Vec::new();
    let base_r: BTreeMap<String, Option<Rating>> = ratings(base).into_iter().collect();
    if let Some(b) = good_rates.iter().find(|g| g.system == base).cloned() {
        for g in good_rates.iter().filter(|g| g.system != base) {
            let (chi2, p) = measures::chi2_yates(g.good as u64, (g.n - g.good) as u64, b.good as u64, (b.n - b.good) as u64);
            let (mut only_s, mut only_b) = (0u64, 0u64);
            for (k, r) in ratings(&g.system) {
                if let (Some(a), Some(Some(bb))) = (r, base_r.get(&k)) {
                    let (ga, gb) = (a == Rating::Good, *bb == Rating::Good);
                    only_s += (ga && !gb) as u64;
                    only_b += (gb && !ga) as u64;
                }
            }
            let mc = stats::sign_test(only_s, only_b);
            good_comparisons.push(GoodComparison {
                system: g.system.clone(),
                baseline: base.to_string(),
                delta_pct: measures::delta_pct(g.good_rate, b.good_rate),
                chi2_yates: chi2,
                chi2_p: p,
                mcnemar_p: mc,
                significant: allowed && p < cfg.stats.alpha,
                note: (!allowed).then(|| "judge self-agreement near chance; not assessed".to_string()),
            });
        }
    }
    JudgeResults {
        model: j.model.clone(),
        same_as_generator: j.model == cfg.model,
        shots: j.shots.clone(),
        items: inp.judge_items,
        good_rates,
        good_comparisons,
        pairwise,
        significance_allowed: allowed,
        min_kappa: j.min_kappa,
    }
}

/// Side-by-side answers for a few test items, spread over the set.
pub fn examples(cfg: &EvalConfig, systems: &[String], scores: &[ScoreRecord], texts: &[(String, &EvalItem, String)]) -> Vec<Example> {
    let test: Vec<&EvalItem> = {
        let mut v: Vec<&EvalItem> = Vec::new();
        for (_, it, _) in texts {
            if it.set == Set::Test && !v.iter().any(|x| x.key == it.key) {
                v.push(it);
            }
        }
        v
    };
    let n = cfg.report.examples.min(test.len());
    (0..n)
        .map(|i| test[i * test.len() / n])
        .map(|it| {
            let mut answers = BTreeMap::new();
            let mut empathy = BTreeMap::new();
            for s in systems {
                if let Some((_, _, t)) = texts.iter().find(|(x, i, _)| x == s && i.key == it.key) {
                    answers.insert(s.clone(), t.clone());
                }
                if let Some(e) = scores.iter().find(|r| &r.system == s && r.key == it.key).and_then(|r| r.get("empathy")) {
                    empathy.insert(s.clone(), e);
                }
            }
            Example {
                id: it.id.clone(),
                emotion: it.emotion.clone(),
                specialty: it.specialty.clone(),
                prompt: it.prompt.clone(),
                answers,
                empathy,
            }
        })
        .collect()
}
