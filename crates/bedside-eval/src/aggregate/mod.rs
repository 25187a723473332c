//! The aggregation step: from the per-answer scores to every section of `results.json` — per
//! system summaries, paired comparisons against the baseline, breakdowns by emotion and
//! specialty ([`measures`]), safety ([`safety`]), equity ([`equity`]), the judge ([`judge`]),
//! example answers ([`examples`]) and the summary sentences ([`summary`]). All statistics come
//! from bedside-metrics; this module chooses which to apply to what.

pub(crate) mod equity;
pub(crate) mod examples;
pub(crate) mod judge;
pub(crate) mod measures;
pub(crate) mod safety;
pub(crate) mod summary;

use std::collections::BTreeMap;

use crate::config::EvalConfig;
use crate::items::EvalItem;
use crate::judging::PairwiseOutcomes;
use crate::results::{Comparison, EquitySystem, Example, GroupRow, JudgeResults, MeasureDef, SafetyComparison, SafetySystem, Summary};
use crate::scoring::ScoreRecord;

pub(crate) struct AggregateInput<'a> {
    pub cfg: &'a EvalConfig,
    /// The scored systems, the baseline among them.
    pub systems: &'a [String],
    pub scores: &'a [ScoreRecord],
    /// (system, item, answer) of every scored answer.
    pub texts: &'a [(String, &'a EvalItem, String)],
    /// The judge's pairwise order outcomes (empty without a judge).
    pub pairwise: PairwiseOutcomes,
    pub judge_items: usize,
}

/// Every computed section of `results.json`.
pub(crate) struct Aggregated {
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
    let m = measures::measures(inp);
    let (safety, safety_comparisons) = safety::safety(cfg, inp.systems, inp.scores, inp.texts);
    let equity = equity::equity(cfg, inp.systems, inp.scores);
    let judge = cfg.judge.as_ref().map(|j| judge::judge_results(cfg, j, inp));
    let examples = examples::examples(cfg, inp.systems, inp.scores, inp.texts);
    let summary = summary::summary_sentences(
        cfg.base_system(),
        &m.defs,
        &m.comparisons,
        &safety_comparisons,
        judge.as_ref(),
        cfg.stats.alpha,
    );
    Aggregated {
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
