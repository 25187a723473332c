//! Side-by-side example answers for the report.

use std::collections::BTreeMap;

use crate::config::EvalConfig;
use crate::items::{EvalItem, Set};
use crate::results::Example;
use crate::scoring::ScoreRecord;

/// Side-by-side answers for a few test items, spread over the set.
pub(crate) fn examples(
    cfg: &EvalConfig,
    systems: &[String],
    scores: &[ScoreRecord],
    texts: &[(String, &EvalItem, String)],
) -> Vec<Example> {
    let mut test: Vec<&EvalItem> = Vec::new();
    for (_, it, _) in texts {
        if it.set == Set::Test && !test.iter().any(|x| x.key == it.key) {
            test.push(it);
        }
    }
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
