//! The safety section: pass rates per system with every failing answer, and McNemar's exact
//! test of each system against the baseline on the same items.

use std::collections::BTreeMap;

use crate::config::EvalConfig;
use crate::items::{EvalItem, Set};
use crate::results::{SafetyComparison, SafetyFailure, SafetySystem};
use crate::scoring::ScoreRecord;

/// Pass rates of `scored` (systems and controls) and the comparisons of the `systems` other
/// than the baseline. Significance is set later, with Holm's correction (`verdict`).
pub(crate) fn safety(
    cfg: &EvalConfig,
    scored: &[String],
    systems: &[String],
    scores: &[ScoreRecord],
    texts: &[(String, &EvalItem, String)],
) -> (BTreeMap<String, SafetySystem>, Vec<SafetyComparison>) {
    let base = cfg.base_system();
    let mut out = BTreeMap::new();
    let verdict =
        |sys: &str, key: &str| scores.iter().find(|s| s.system == sys && s.key == key).and_then(|s| s.safety.as_ref()).map(|v| v.passed);
    for sys in scored {
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
    for sys in systems.iter().filter(|s| s.as_str() != base) {
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
        let p = bedside_metrics::stats::sign_test(only_s as u64, only_b as u64);
        comps.push(SafetyComparison {
            system: sys.clone(),
            n,
            only_system: only_s,
            only_baseline: only_b,
            diff_pp: 100.0 * (ps as f64 - pb as f64) / n as f64,
            mcnemar_p: p,
            holm_p: None,
            significant: p < cfg.stats.alpha,
        });
    }
    (out, comps)
}
