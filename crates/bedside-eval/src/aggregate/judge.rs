//! The judge section: Good/Okay/Bad rates with χ² and McNemar tests against the baseline, and
//! pairwise preferences per prompting setting, all gated on the judge agreeing with itself
//! across swapped answer orders.

use std::collections::BTreeMap;

use crate::aggregate::measures::delta_pct;
use crate::aggregate::AggregateInput;
use crate::config::{EvalConfig, JudgeConfig};
use crate::items::Set;
use crate::judge::{self, Outcome, Rating};
use crate::results::{GoodComparison, GoodRate, JudgeResults, PairwiseCounts, PairwiseResult};

/// Whether the judge's self-agreement across swapped orders (Cohen's kappa) reaches
/// `judge.min_kappa`; below it no judge-based difference is called significant.
pub(crate) fn significance_allowed(inp: &AggregateInput) -> bool {
    let Some(j) = &inp.cfg.judge else { return false };
    let pairs = all_order_pairs(inp);
    if pairs.is_empty() {
        return false;
    }
    judge::self_agreement(&pairs).kappa >= j.min_kappa
}

fn all_order_pairs(inp: &AggregateInput) -> Vec<(Outcome, Outcome)> {
    inp.pairwise.iter().flat_map(|(_, settings)| settings.values().flatten()).filter_map(|(_, a, b)| Some(((*a)?, (*b)?))).collect()
}

/// Pairwise results per system from the per-setting, per-item order outcomes.
fn pairwise_results(inp: &AggregateInput) -> (Vec<PairwiseResult>, bool) {
    let base = inp.cfg.base_system().to_string();
    let allowed = significance_allowed(inp);
    let mut out = Vec::new();
    for (sys, settings) in &inp.pairwise {
        let mut counts = BTreeMap::new();
        let mut per_item: BTreeMap<String, Vec<Option<Outcome>>> = BTreeMap::new();
        let mut pairs = Vec::new();
        for (setting, rows) in settings {
            let mut outcomes = Vec::new();
            for (item, a, b) in rows {
                if let (Some(a), Some(b)) = (a, b) {
                    pairs.push((*a, *b));
                }
                let combined = judge::combine_outcomes(*a, *b);
                per_item.entry(item.clone()).or_default().push(combined);
                outcomes.extend(combined);
            }
            counts.insert(setting.clone(), pairwise_counts(&outcomes, allowed, inp.cfg.stats.alpha));
        }
        let ensemble: Vec<Outcome> = per_item.values().filter_map(|v| judge::ensemble_outcome(v)).collect();
        counts.insert("ensemble".into(), pairwise_counts(&ensemble, allowed, inp.cfg.stats.alpha));
        out.push(PairwiseResult {
            system: sys.clone(),
            baseline: base.clone(),
            settings: counts,
            self_agreement: judge::self_agreement(&pairs),
        });
    }
    (out, allowed)
}

fn pairwise_counts(o: &[Outcome], allowed: bool, alpha: f64) -> PairwiseCounts {
    let wins = o.iter().filter(|x| **x == Outcome::Win).count();
    let losses = o.iter().filter(|x| **x == Outcome::Loss).count();
    let ties = o.len() - wins - losses;
    let sign_p = bedside_metrics::stats::sign_test(wins as u64, losses as u64);
    PairwiseCounts { n: o.len(), wins, losses, ties, win_rate: judge::win_rate(o), sign_p, significant: allowed && sign_p < alpha }
}

pub(crate) fn judge_results(cfg: &EvalConfig, j: &JudgeConfig, inp: &AggregateInput) -> JudgeResults {
    let base = cfg.base_system();
    let (pairwise, allowed) = pairwise_results(inp);
    let ratings = |sys: &str| -> Vec<(String, Option<Rating>)> {
        inp.scores
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
            let table = [[g.good as f64, (g.n - g.good) as f64], [b.good as f64, (b.n - b.good) as f64]];
            let (chi2, p) = bedside_metrics::chi2_yates(table).map_or((f64::NAN, f64::NAN), |c| (c.statistic, c.pvalue));
            let (mut only_s, mut only_b) = (0u64, 0u64);
            for (k, r) in ratings(&g.system) {
                if let (Some(a), Some(Some(bb))) = (r, base_r.get(&k)) {
                    let (ga, gb) = (a == Rating::Good, *bb == Rating::Good);
                    only_s += (ga && !gb) as u64;
                    only_b += (gb && !ga) as u64;
                }
            }
            let mc = bedside_metrics::stats::sign_test(only_s, only_b);
            good_comparisons.push(GoodComparison {
                system: g.system.clone(),
                baseline: base.to_string(),
                delta_pct: delta_pct(g.good_rate, b.good_rate),
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
