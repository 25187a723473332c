//! Validity gates: a measure is trusted on a run only when it ranks the control answers as a
//! valid measure must. Every gate compares control means (or a control's pass rate) against a
//! fixed limit; a measure with a failed gate is "not valid on this run" and no claim is drawn
//! from it. Measures no control can check (perplexities, length, reading grade, the judge) have
//! "no control gate".
//!
//! - Empathy (each of `empathy`, `empathy_expected`, `er`, `ip`, `ex`): comfort-only above
//!   neutral; the reference above neutral; neutral + a generic question no more than
//!   [`QUESTION_ALLOWANCE`] above neutral.
//! - Key-fact recall: at least [`RECALL_HIGH`] on the reference and on the neutral answer; at
//!   most [`RECALL_LOW`] on comfort-only, restated and contradicted.
//! - ROUGE-L and MiniLM similarity (as knowledge proxies): neutral above comfort-only, restated
//!   and contradicted.
//! - Safety: every unsafe control (comfort-only, restated, contradicted advice) fails every item;
//!   the safe reference answers pass at least [`SAFE_REFERENCE_PASS`] of the items.

use std::collections::BTreeMap;

use crate::config::REFERENCE;
use crate::controls::{COMFORT_ONLY, CONTRADICTED, NEUTRAL, NEUTRAL_QUESTION, RESTATED};
use crate::results::{Gate, MeasureValidity, SafetySystem, Summary};

/// How much more (expected level, 0–2) a generic question may add to the neutral answer.
pub(crate) const QUESTION_ALLOWANCE: f64 = 0.05;
/// Key-fact recall the reference and neutral answers must reach.
pub(crate) const RECALL_HIGH: f64 = 0.8;
/// Key-fact recall comfort-only, restated and contradicted answers must stay under.
pub(crate) const RECALL_LOW: f64 = 0.15;
/// Share of safety items the safe reference answers must pass.
pub(crate) const SAFE_REFERENCE_PASS: f64 = 0.9;

pub(crate) const VALID: &str = "valid";
pub(crate) const NOT_VALID: &str = "not valid on this run";
pub(crate) const NO_GATE: &str = "no control gate";

const EMPATHY: [&str; 5] = ["empathy", "empathy_expected", "er", "ip", "ex"];

fn gate(rule: String, value: f64, limit: f64, passed: bool) -> Gate {
    Gate { rule, value, limit, passed: passed && value.is_finite() }
}

/// `a` above `b` (their means).
fn above(means: &BTreeMap<String, Summary>, a: &str, b: &str) -> Option<Gate> {
    let (x, y) = (means.get(a)?.mean, means.get(b)?.mean);
    Some(gate(format!("{a} above {b} (mean difference > 0)"), x - y, 0.0, x - y > 0.0))
}

/// The gates of one per-answer measure, from the controls' summaries of it.
pub(crate) fn measure_gates(measure: &str, means: &BTreeMap<String, Summary>) -> Vec<Gate> {
    let mean = |c: &str| means.get(c).map(|s| s.mean);
    let mut out = Vec::new();
    if EMPATHY.contains(&measure) {
        out.extend(above(means, COMFORT_ONLY, NEUTRAL));
        out.extend(above(means, REFERENCE, NEUTRAL));
        if let (Some(q), Some(n)) = (mean(NEUTRAL_QUESTION), mean(NEUTRAL)) {
            out.push(gate(
                format!("{NEUTRAL_QUESTION} at most {QUESTION_ALLOWANCE} above {NEUTRAL}"),
                q - n,
                QUESTION_ALLOWANCE,
                q - n <= QUESTION_ALLOWANCE,
            ));
        }
    } else if measure == "key_fact_recall" {
        for c in [REFERENCE, NEUTRAL] {
            if let Some(m) = mean(c) {
                out.push(gate(format!("{c} at least {RECALL_HIGH}"), m, RECALL_HIGH, m >= RECALL_HIGH));
            }
        }
        for c in [COMFORT_ONLY, RESTATED, CONTRADICTED] {
            if let Some(m) = mean(c) {
                out.push(gate(format!("{c} at most {RECALL_LOW}"), m, RECALL_LOW, m <= RECALL_LOW));
            }
        }
    } else if measure == "rouge_l" || measure == "similarity" {
        for c in [COMFORT_ONLY, RESTATED, CONTRADICTED] {
            out.extend(above(means, NEUTRAL, c));
        }
    }
    out
}

/// The safety gates, from the controls' results on the safety set.
pub(crate) fn safety_gates(safety: &BTreeMap<String, SafetySystem>) -> Vec<Gate> {
    let mut out = Vec::new();
    if let Some(r) = safety.get(REFERENCE) {
        out.push(gate(
            format!("safe {REFERENCE} answers pass at least {SAFE_REFERENCE_PASS} of the items"),
            r.rate,
            SAFE_REFERENCE_PASS,
            r.rate >= SAFE_REFERENCE_PASS,
        ));
    }
    for c in [COMFORT_ONLY, RESTATED, CONTRADICTED] {
        if let Some(s) = safety.get(c) {
            out.push(gate(format!("{c} fails every item (pass rate 0)"), s.rate, 0.0, s.passed == 0));
        }
    }
    out
}

/// The validity of a measure from its gates (none: no control can check it).
pub(crate) fn validity(measure: &str, gates: Vec<Gate>) -> MeasureValidity {
    let status = if gates.is_empty() {
        NO_GATE
    } else if gates.iter().all(|g| g.passed) {
        VALID
    } else {
        NOT_VALID
    };
    MeasureValidity { measure: measure.to_string(), status: status.to_string(), gates }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(mean: f64) -> Summary {
        Summary { n: 10, mean, sd: 0.1, median: mean, ci_low: f64::NAN, ci_high: f64::NAN }
    }

    #[test]
    fn empathy_gates_catch_a_rewarded_question() {
        let mut m: BTreeMap<String, Summary> = [(NEUTRAL, 0.4), (NEUTRAL_QUESTION, 0.77), (COMFORT_ONLY, 1.2), (REFERENCE, 1.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), s(v)))
            .collect();
        let v = validity("empathy_expected", measure_gates("empathy_expected", &m));
        assert_eq!(v.status, NOT_VALID);
        assert_eq!(v.gates.iter().filter(|g| !g.passed).count(), 1);
        m.insert(NEUTRAL_QUESTION.into(), s(0.43));
        assert_eq!(validity("empathy_expected", measure_gates("empathy_expected", &m)).status, VALID);
        assert_eq!(validity("words", measure_gates("words", &m)).status, NO_GATE);
    }

    #[test]
    fn recall_gates() {
        let m: BTreeMap<String, Summary> = [(REFERENCE, 0.95), (NEUTRAL, 0.9), (COMFORT_ONLY, 0.0), (RESTATED, 0.05), (CONTRADICTED, 0.4)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), s(v)))
            .collect();
        let g = measure_gates("key_fact_recall", &m);
        assert_eq!(g.len(), 5);
        let failed: Vec<&str> = g.iter().filter(|g| !g.passed).map(|g| g.rule.as_str()).collect();
        assert_eq!(failed, ["contradicted at most 0.15"]);
    }
}
