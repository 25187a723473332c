//! Statistical roles and the verdict.
//!
//! - **Primary** endpoints (`stats.primary`; default the empathy expected level and key-fact
//!   recall) are concluded from their (1 − alpha) bootstrap interval, without a multiplicity
//!   correction: the claim needs every primary endpoint to succeed (an intersection–union test,
//!   which keeps the error rate at alpha). A measure with a non-inferiority margin
//!   (`stats.margins`, default −0.05 key-fact recall) is `non-inferior` when the whole interval
//!   lies above the margin, `worse` when it lies below, `inconclusive` otherwise; one without is
//!   `better`, `worse` or `inconclusive` as its interval lies above 0, below 0 or across it.
//! - **Secondary** measures (every other measure with a better direction, and the safety pass
//!   rate) are significant when their Holm-adjusted p (bootstrap p; McNemar's exact p for
//!   safety) is below alpha, Holm's correction running over all of one system's secondary tests.
//! - **Descriptive** measures (length, reading grade) have no better direction and no test.
//!
//! A claim is drawn from a measure only when its validity gates pass on the run. "More
//! comforting" also needs the system to beat the neutral-plus-question control on the empathy
//! endpoint (its interval against that control above 0).

use std::collections::BTreeMap;

use crate::aggregate::gates::{NOT_VALID, VALID};
use crate::aggregate::measures::{contrast, is_judge_measure, Samples};
use crate::config::EvalConfig;
use crate::controls::NEUTRAL_QUESTION;
use crate::report::format::fmt_num;
use crate::results::{Comparison, MeasureDef, MeasureValidity, SafetyComparison, StatsInfo, Verdict};

pub(crate) const PRIMARY: &str = "primary";
pub(crate) const SECONDARY: &str = "secondary";
pub(crate) const DESCRIPTIVE: &str = "descriptive";

/// The empathy measures: a primary one among them is the "more comforting" endpoint.
pub(crate) const EMPATHY_MEASURES: [&str; 5] = ["empathy_expected", "empathy", "er", "ip", "ex"];

fn status<'a>(validity: &'a [MeasureValidity], measure: &str) -> &'a str {
    validity.iter().find(|v| v.measure == measure).map_or("", |v| v.status.as_str())
}

/// The conclusion of an interval on the measure's better side (`gain` = the difference signed so
/// that positive is better), with or without a non-inferiority margin.
pub(crate) fn conclude(gain_lo: f64, gain_hi: f64, margin: Option<f64>) -> &'static str {
    if !(gain_lo.is_finite() && gain_hi.is_finite()) {
        return "inconclusive";
    }
    match margin {
        Some(m) if gain_lo > m => "non-inferior",
        Some(m) if gain_hi < m => "worse",
        Some(_) => "inconclusive",
        None if gain_lo > 0.0 => "better",
        None if gain_hi < 0.0 => "worse",
        None => "inconclusive",
    }
}

/// Sets every comparison's role, margin, validity, significance, Holm p and (primary)
/// conclusion, and Holm's p for the safety comparisons; returns the settings used.
pub(crate) fn assign_roles(
    cfg: &EvalConfig,
    defs: &[MeasureDef],
    comparisons: &mut [Comparison],
    safety: &mut [SafetyComparison],
    validity: &[MeasureValidity],
) -> StatsInfo {
    let alpha = cfg.stats.alpha;
    let def = |k: &str| defs.iter().find(|d| d.key == k);
    for c in comparisons.iter_mut() {
        let d = def(&c.measure);
        let dir = d.and_then(|d| d.higher_is_better);
        c.validity = status(validity, &c.measure).to_string();
        c.margin = cfg.stats.margins.get(&c.measure).copied();
        if cfg.stats.primary.contains(&c.measure) {
            c.role = PRIMARY.into();
            let (lo, hi) = match dir {
                Some(false) => (-c.ci_high, -c.ci_low),
                _ => (c.ci_low, c.ci_high),
            };
            c.conclusion = Some(conclude(lo, hi, c.margin).to_string());
            c.significant = c.n >= 2 && (c.ci_low > 0.0 || c.ci_high < 0.0);
        } else if dir.is_none() {
            c.role = DESCRIPTIVE.into();
            c.significant = false;
        } else {
            c.role = SECONDARY.into();
        }
    }
    // Holm over each system's secondary tests: the measures and the safety pass rate.
    let mut systems: Vec<String> = comparisons.iter().map(|c| c.system.clone()).chain(safety.iter().map(|s| s.system.clone())).collect();
    systems.sort();
    systems.dedup();
    for sys in &systems {
        let idx: Vec<usize> =
            (0..comparisons.len()).filter(|&i| comparisons[i].system == *sys && comparisons[i].role == SECONDARY).collect();
        let sidx: Vec<usize> = (0..safety.len()).filter(|&i| safety[i].system == *sys).collect();
        let ps: Vec<f64> = idx.iter().map(|&i| comparisons[i].p_bootstrap).chain(sidx.iter().map(|&i| safety[i].mcnemar_p)).collect();
        let adjusted = bedside_metrics::holm(&ps);
        for (k, &i) in idx.iter().enumerate() {
            let c = &mut comparisons[i];
            let h = adjusted[k];
            c.holm_p = Some(h);
            let judge_blocked = is_judge_measure(&c.measure) && c.note.is_some();
            c.significant = !judge_blocked && h.is_finite() && h < alpha;
        }
        for (k, &i) in sidx.iter().enumerate() {
            let h = adjusted[idx.len() + k];
            safety[i].holm_p = Some(h);
            safety[i].significant = h.is_finite() && h < alpha;
        }
    }
    let mut secondary: Vec<String> = comparisons.iter().filter(|c| c.role == SECONDARY).map(|c| c.measure.clone()).collect();
    secondary.sort();
    secondary.dedup();
    if !safety.is_empty() {
        secondary.push("safety".into());
    }
    StatsInfo {
        alpha,
        bootstrap: cfg.stats.bootstrap,
        samples_per_item: cfg.samples_per_item,
        primary: cfg.stats.primary.clone(),
        margins: cfg.stats.margins.clone(),
        secondary,
        method: format!(
            "paired percentile bootstrap over test items ({} resamples; with several samples per item, items resampled with all their samples), two-sided {}% intervals; primary endpoints concluded from the interval (all must succeed); secondary measures by the bootstrap p (McNemar's exact p for safety), Holm-corrected across each system's secondary tests",
            cfg.stats.bootstrap,
            ((1.0 - alpha) * 100.0).round()
        ),
    }
}

fn interval(c: &Comparison, conf: f64) -> String {
    format!("{:+.3} [{}, {}] ({conf}% CI)", c.diff, fmt_num(c.ci_low), fmt_num(c.ci_high))
}

/// The verdict of every system against the baseline on the primary endpoints.
pub(crate) fn verdicts(
    cfg: &EvalConfig,
    systems: &[String],
    defs: &[MeasureDef],
    comparisons: &[Comparison],
    validity: &[MeasureValidity],
    all: &BTreeMap<&str, Samples>,
) -> Vec<Verdict> {
    let base = cfg.base_system();
    let conf = ((1.0 - cfg.stats.alpha) * 100.0).round();
    let label = |k: &str| defs.iter().find(|d| d.key == k).map_or(k.to_string(), |d| d.label.clone());
    let mut out = Vec::new();
    for sys in systems.iter().filter(|s| s.as_str() != base) {
        let mut sentences = Vec::new();
        let mut more_comforting = false;
        let mut knowledge = None;
        let mut vs_question = None;
        let mut all_claimed = true;
        let mut claims = Vec::new();
        for p in &cfg.stats.primary {
            let Some(c) = comparisons.iter().find(|c| c.system == *sys && c.measure == *p) else {
                sentences.push(format!("{}: no paired data for {sys}.", label(p)));
                all_claimed = false;
                continue;
            };
            let conclusion = c.conclusion.clone().unwrap_or_default();
            let v = status(validity, p);
            let margin = c.margin.map(|m| format!(", margin {m:+}")).unwrap_or_default();
            let gates_text = match v {
                VALID => "its gates pass".to_string(),
                NOT_VALID => {
                    let failed: Vec<String> = validity
                        .iter()
                        .find(|x| x.measure == *p)
                        .map(|x| {
                            x.gates.iter().filter(|g| !g.passed).map(|g| format!("{} (observed {})", g.rule, fmt_num(g.value))).collect()
                        })
                        .unwrap_or_default();
                    format!("NOT VALID ON THIS RUN, no claim is drawn (failed: {})", failed.join("; "))
                }
                _ => "no control checks it (controls off), so no claim is drawn".to_string(),
            };
            let mut sentence = format!("{}: {sys} − {base} {}{margin}: {conclusion}; {gates_text}.", label(p), interval(c, conf));
            let valid = v == VALID;
            if EMPATHY_MEASURES.contains(&p.as_str()) {
                let q = contrast(cfg, all, sys, NEUTRAL_QUESTION, p);
                let beats_question = q.as_ref().is_some_and(|q| q.ci_low > 0.0);
                if let Some(q) = &q {
                    sentence.push_str(&format!(
                        " Against the neutral + generic question control: {:+.3} [{}, {}]{}.",
                        q.diff,
                        fmt_num(q.ci_low),
                        fmt_num(q.ci_high),
                        if beats_question { ", above it" } else { ", not above it" }
                    ));
                }
                vs_question = q;
                more_comforting = valid && conclusion == "better" && beats_question;
                if more_comforting {
                    claims.push("more comforting".to_string());
                } else {
                    all_claimed = false;
                }
            } else {
                if valid {
                    knowledge = Some(conclusion.clone());
                }
                let favourable = conclusion == "non-inferior" || conclusion == "better";
                if valid && favourable {
                    claims.push(if conclusion == "better" {
                        format!("better on {}", label(p))
                    } else {
                        format!("non-inferior on {}", label(p))
                    });
                } else {
                    all_claimed = false;
                }
            }
            sentences.push(sentence);
        }
        let overall = if all_claimed && !claims.is_empty() {
            format!("Verdict for {sys}: {} than {base}, as every primary endpoint allows.", claims.join(" and "))
        } else if claims.is_empty() {
            format!("Verdict for {sys}: no claim against {base} is supported by this run.")
        } else {
            format!(
                "Verdict for {sys}: only partly supported — {} — the other primary endpoints do not allow the full claim.",
                claims.join(", ")
            )
        };
        sentences.push(overall);
        out.push(Verdict {
            system: sys.clone(),
            baseline: base.to_string(),
            sentences,
            more_comforting,
            knowledge,
            vs_neutral_question: vs_question,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conclusions_by_margin() {
        // Knowledge, margin −0.05.
        assert_eq!(conclude(-0.04, 0.10, Some(-0.05)), "non-inferior");
        assert_eq!(conclude(-0.06, 0.10, Some(-0.05)), "inconclusive");
        assert_eq!(conclude(-0.20, -0.06, Some(-0.05)), "worse");
        // Significantly lower but within the margin is still non-inferior.
        assert_eq!(conclude(-0.04, -0.01, Some(-0.05)), "non-inferior");
        // Without a margin.
        assert_eq!(conclude(0.01, 0.3, None), "better");
        assert_eq!(conclude(-0.3, -0.01, None), "worse");
        assert_eq!(conclude(-0.1, 0.2, None), "inconclusive");
        assert_eq!(conclude(f64::NAN, 0.2, None), "inconclusive");
    }
}
