//! The aggregation step: from the per-answer scores to every section of `results.json` — per
//! system and per control summaries, paired comparisons against the baseline, breakdowns by
//! emotion and specialty ([`measures`]), the validity gates on the controls ([`gates`]), the
//! statistical roles of the measures and the verdict ([`verdict`]), safety ([`safety`]), equity
//! ([`equity`]), the judge ([`judge`]), example answers ([`examples`]) and the summary sentences
//! ([`summary`]). All statistics come from bedside-metrics; this module chooses which to apply
//! to what.

pub(crate) mod equity;
pub(crate) mod examples;
pub(crate) mod gates;
pub(crate) mod judge;
pub(crate) mod measures;
pub(crate) mod safety;
pub(crate) mod summary;
pub(crate) mod verdict;

use std::collections::BTreeMap;

use crate::config::EvalConfig;
use crate::items::EvalItem;
use crate::judging::PairwiseOutcomes;
use crate::results::{
    Comparison, EquitySystem, Example, GroupRow, JudgeResults, MeasureDef, MeasureValidity, SafetyComparison, SafetySystem, StatsInfo,
    Summary, Verdict,
};
use crate::scoring::ScoreRecord;

pub(crate) struct AggregateInput<'a> {
    pub cfg: &'a EvalConfig,
    /// The evaluated systems, the baseline among them.
    pub systems: &'a [String],
    /// The control answers scored next to them.
    pub controls: &'a [String],
    pub scores: &'a [ScoreRecord],
    /// (system or control, item, answer) of every scored answer.
    pub texts: &'a [(String, &'a EvalItem, String)],
    /// The judge's pairwise order outcomes (empty without a judge).
    pub pairwise: PairwiseOutcomes,
    pub judge_items: usize,
}

/// Every computed section of `results.json`.
pub(crate) struct Aggregated {
    pub stats: StatsInfo,
    pub verdict: Vec<Verdict>,
    pub validity: Vec<MeasureValidity>,
    pub measures: Vec<MeasureDef>,
    pub per_system: BTreeMap<String, BTreeMap<String, Summary>>,
    pub comparisons: Vec<Comparison>,
    pub breakdowns: BTreeMap<String, Vec<GroupRow>>,
    pub safety: BTreeMap<String, SafetySystem>,
    pub safety_comparisons: Vec<SafetyComparison>,
    pub equity: BTreeMap<String, EquitySystem>,
    pub judge: Option<JudgeResults>,
    pub examples: Vec<Example>,
    pub summary: Vec<String>,
}

pub(crate) fn aggregate(inp: &AggregateInput) -> Aggregated {
    let cfg = inp.cfg;
    let mut m = measures::measures(inp);
    let with_controls: Vec<String> = inp.systems.iter().chain(inp.controls).cloned().collect();
    let (safety, mut safety_comparisons) = safety::safety(cfg, &with_controls, inp.systems, inp.scores, inp.texts);
    // Validity of every measure on this run, from the controls.
    let mut validity: Vec<MeasureValidity> = m
        .defs
        .iter()
        .map(|d| {
            let controls: BTreeMap<String, Summary> = m
                .per_system
                .get(&d.key)
                .map(|row| row.iter().filter(|(k, _)| inp.controls.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            gates::validity(&d.key, gates::measure_gates(&d.key, &controls))
        })
        .collect();
    validity.push(gates::validity("safety", gates::safety_gates(&safety)));
    let stats = verdict::assign_roles(cfg, &m.defs, &mut m.comparisons, &mut safety_comparisons, &validity);
    let all = measures::by_item(inp.scores);
    let verdicts = verdict::verdicts(cfg, inp.systems, &m.defs, &m.comparisons, &validity, &all);
    let equity = equity::equity(cfg, inp.systems, inp.scores);
    let judge = cfg.judge.as_ref().map(|j| judge::judge_results(cfg, j, inp));
    let example_systems: Vec<String> =
        inp.systems.iter().chain(inp.controls.iter().filter(|c| c.as_str() == crate::config::REFERENCE)).cloned().collect();
    let examples = examples::examples(cfg, &example_systems, inp.scores, inp.texts);
    let summary = summary::summary_sentences(cfg, &m.defs, &m.comparisons, &safety_comparisons, &verdicts, &validity, judge.as_ref());
    Aggregated {
        stats,
        verdict: verdicts,
        validity,
        measures: m.defs,
        per_system: m.per_system,
        comparisons: m.comparisons,
        breakdowns: m.breakdowns,
        safety,
        safety_comparisons,
        equity,
        judge,
        examples,
        summary,
    }
}
