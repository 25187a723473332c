//! Per-answer scores (`scores.jsonl`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::items::{EquityLabels, EvalItem, Set};
use crate::measures::Scorers;
use crate::safety::{self, SafetyVerdict};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreRecord {
    pub system: String,
    pub key: String,
    pub set: Set,
    pub id: String,
    pub emotion: String,
    pub specialty: String,
    /// Numeric measures by key (see `results::measure_defs`); absent when not applicable.
    pub values: BTreeMap<String, f64>,
    /// EPITOME levels [ER, IP, EX] from the offline scorer.
    pub epitome: [u8; 3],
    /// Expected levels Σ p·level, continuous.
    pub epitome_expected: [f32; 3],
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub safety: Option<SafetyVerdict>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub equity: Option<EquityLabels>,
    /// Judge verdicts after majority over prompting settings.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub judge: Option<JudgeVerdicts>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JudgeVerdicts {
    pub epitome: [Option<u8>; 3],
    pub rating: Option<crate::judge::Rating>,
}

impl ScoreRecord {
    pub fn get(&self, k: &str) -> Option<f64> {
        self.values.get(k).copied().filter(|v| v.is_finite())
    }
}

/// One answer to score.
pub struct Answer<'a> {
    pub system: &'a str,
    pub item: &'a EvalItem,
    pub text: &'a str,
}

/// Scores every answer: empathy for all, knowledge measures where the item has a reference,
/// the safety verdict on safety items.
pub fn score_answers(scorers: &Scorers, answers: &[Answer]) -> Result<Vec<ScoreRecord>> {
    let pairs: Vec<(&str, &str)> = answers.iter().map(|a| (a.item.prompt.as_str(), a.text)).collect();
    let emp = scorers.empathy.score(&pairs).context("empathy scoring")?;
    // Embed each reference once, every answer once.
    let mut out = Vec::with_capacity(answers.len());
    let with_ref: Vec<usize> = (0..answers.len()).filter(|&i| answers[i].item.reference.is_some()).collect();
    let texts: Vec<&str> = with_ref
        .iter()
        .flat_map(|&i| [answers[i].text, answers[i].item.reference.as_deref().unwrap_or("")])
        .collect();
    let embs = if texts.is_empty() { Vec::new() } else { scorers.embedder().embed(&texts).context("embedding answers")? };
    let mut sim: BTreeMap<usize, f64> = BTreeMap::new();
    for (j, &i) in with_ref.iter().enumerate() {
        sim.insert(i, bedside_embed::cosine(&embs[2 * j], &embs[2 * j + 1]) as f64);
    }
    for (i, (a, e)) in answers.iter().zip(emp).enumerate() {
        let levels = e.levels();
        let mut values = BTreeMap::new();
        values.insert("er".into(), levels[0] as f64);
        values.insert("ip".into(), levels[1] as f64);
        values.insert("ex".into(), levels[2] as f64);
        values.insert("empathy".into(), levels.iter().map(|&l| l as f64).sum::<f64>() / 3.0);
        // The heads' expected level (sum of p * level): continuous, so a paired comparison of
        // two systems is far less noisy than with the rounded levels.
        values.insert("empathy_expected".into(), e.expected.iter().map(|&x| x as f64).sum::<f64>() / 3.0);
        values.insert("words".into(), a.text.split_whitespace().count() as f64);
        values.insert("grade".into(), measures_grade(a.text));
        if let Some(r) = &a.item.reference {
            values.insert("rouge_l".into(), crate::measures::rouge_l(a.text, r));
            values.insert("similarity".into(), sim[&i]);
            if !a.item.key_facts.is_empty() {
                values.insert("key_fact_recall".into(), scorers.key_fact_recall(a.text, &a.item.key_facts)?);
            }
        }
        let safety = a.item.safety.as_ref().map(|rules| safety::check(a.text, rules));
        out.push(ScoreRecord {
            system: a.system.to_string(),
            key: a.item.key.clone(),
            set: a.item.set,
            id: a.item.id.clone(),
            emotion: a.item.emotion.clone(),
            specialty: a.item.specialty.clone(),
            values,
            epitome: levels,
            epitome_expected: e.expected,
            safety,
            equity: a.item.equity.clone(),
            judge: None,
        });
    }
    Ok(out)
}

fn measures_grade(text: &str) -> f64 {
    crate::measures::reading_grade(text)
}
