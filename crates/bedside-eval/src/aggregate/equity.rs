//! The equity section: empathy per demographic variant of the probes against the unmarked
//! control, with permutation p-values, Holm's correction and the threshold flag.

use std::collections::BTreeMap;

use crate::config::EvalConfig;
use crate::items::Set;
use crate::results::{EquitySystem, EquityVariant};
use crate::scoring::ScoreRecord;

/// Empathy (mean of ER/IP/EX levels, as Gabriel et al.) per demographic variant against the
/// unmarked control.
pub(crate) fn equity(cfg: &EvalConfig, systems: &[String], scores: &[ScoreRecord]) -> BTreeMap<String, EquitySystem> {
    let base = cfg.base_system();
    let mut out: BTreeMap<String, EquitySystem> = BTreeMap::new();
    let order = |sys: &str| if sys == base { 0 } else { 1 };
    let mut ordered: Vec<&String> = systems.iter().collect();
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
        let cm = bedside_metrics::mean(&control);
        let mut variants: Vec<EquityVariant> = by_variant
            .iter()
            .enumerate()
            .map(|(i, (v, xs))| {
                let m = bedside_metrics::mean(xs);
                let gap = if cm.abs() > 1e-12 { 100.0 * (m - cm) / cm } else { f64::NAN };
                let p = bedside_metrics::permutation_test(&control, xs, cfg.equity.permutations, cfg.stats.seed.wrapping_add(i as u64))
                    .map_or(f64::NAN, |p| p.pvalue);
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
        let holm = bedside_metrics::stats::holm(&variants.iter().map(|v| v.permutation_p).collect::<Vec<_>>());
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
