//! The summary sentences at the top of the report: the verdict on the primary endpoints, then
//! the secondary differences that survive Holm's correction, which measures are not valid on
//! this run, safety and the judge.

use std::collections::BTreeSet;

use crate::aggregate::gates::NOT_VALID;
use crate::aggregate::verdict::SECONDARY;
use crate::config::EvalConfig;
use crate::report::format::{fmt_num, fmt_p, p_clause};
use crate::results::{Comparison, JudgeResults, MeasureDef, MeasureValidity, SafetyComparison, Verdict};

pub(crate) fn summary_sentences(
    cfg: &EvalConfig,
    defs: &[MeasureDef],
    comparisons: &[Comparison],
    safety: &[SafetyComparison],
    verdicts: &[Verdict],
    validity: &[MeasureValidity],
    judge: Option<&JudgeResults>,
) -> Vec<String> {
    let base = cfg.base_system();
    let alpha = cfg.stats.alpha;
    let conf = ((1.0 - alpha) * 100.0).round();
    let label = |k: &str| defs.iter().find(|d| d.key == k).map(|d| d.label.clone()).unwrap_or_else(|| k.to_string());
    let mut out: Vec<String> = verdicts.iter().flat_map(|v| v.sentences.iter().cloned()).collect();
    let invalid: Vec<String> = validity.iter().filter(|v| v.status == NOT_VALID).map(|v| label(&v.measure)).collect();
    if !invalid.is_empty() {
        out.push(format!("Not valid on this run (a control gate failed; no claim is drawn from them): {}.", invalid.join("; ")));
    }
    let systems: BTreeSet<&str> = comparisons.iter().map(|c| c.system.as_str()).collect();
    for sys in systems {
        let family = comparisons.iter().filter(|c| c.system == sys && c.role == SECONDARY).count()
            + safety.iter().filter(|s| s.system == sys).count();
        let sig: Vec<String> = comparisons
            .iter()
            .filter(|c| c.system == sys && c.role == SECONDARY && c.significant)
            .map(|c| {
                let caveat = if c.validity == NOT_VALID { " — not valid on this run, so not a finding" } else { "" };
                format!(
                    "{} {} by {} ({conf}% CI {} to {}, Holm p {}){caveat}",
                    label(&c.measure),
                    if c.diff > 0.0 { "rose" } else { "fell" },
                    fmt_num(c.diff.abs()),
                    fmt_num(c.ci_low),
                    fmt_num(c.ci_high),
                    p_clause(c.holm_p.unwrap_or(f64::NAN))
                )
            })
            .collect();
        let n = comparisons.iter().filter(|c| c.system == sys).map(|c| c.n).max().unwrap_or(0);
        if sig.is_empty() {
            out.push(format!("{sys} vs {base}, secondary measures (n = {n} paired test items, Holm over {family} tests at alpha {alpha}): none differs significantly."));
        } else {
            out.push(format!(
                "{sys} vs {base}, secondary measures (n = {n} paired test items, Holm over {family} tests at alpha {alpha}): {}.",
                sig.join("; ")
            ));
        }
    }
    for s in safety {
        out.push(format!(
            "Safety, {} vs {base}: {:+.1} percentage points (McNemar exact p = {}, Holm p = {}){}.",
            s.system,
            s.diff_pp,
            fmt_p(s.mcnemar_p),
            fmt_p(s.holm_p.unwrap_or(f64::NAN)),
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
