//! The summary sentences at the top of the report: which differences are significant.

use std::collections::BTreeSet;

use crate::config::REFERENCE;
use crate::report::format::{fmt_num, fmt_p, p_clause};
use crate::results::{Comparison, JudgeResults, MeasureDef, SafetyComparison};

/// Sentences naming the significant differences (and saying when none are).
pub(crate) fn summary_sentences(
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

