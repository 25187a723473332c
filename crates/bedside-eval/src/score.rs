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
    // Every distinct text any measure embeds — prompts, answers, references, key facts and the
    // answers' sentences — goes through the embedder once, in one batched pass: a prompt or a
    // reference shared by several systems, or a key fact of every system's answer, is not
    // embedded again for each.
    let sentences: Vec<Vec<String>> = answers.iter().map(|a| bedside_metrics::split_sentences(a.text)).collect();
    let mut texts: Vec<&str> = Vec::new();
    for (a, sents) in answers.iter().zip(&sentences) {
        texts.extend([a.item.prompt.as_str(), a.text]);
        if let Some(r) = &a.item.reference {
            texts.push(r);
            texts.extend(a.item.key_facts.iter().map(String::as_str));
            texts.extend(sents.iter().map(String::as_str));
        }
    }
    let table = scorers.embedder().embed_distinct(texts).context("embedding answers")?;
    tracing::debug!(distinct_texts = table.len(), "embedded");
    let pairs: Vec<(&str, &str)> = answers.iter().map(|a| (a.item.prompt.as_str(), a.text)).collect();
    let emp = scorers.empathy.score_embedded(&pairs, &table).context("empathy scoring")?;
    let emb = |t: &str| table.get(t).context("a text to score was not embedded");
    let mut out = Vec::with_capacity(answers.len());
    for ((a, e), sents) in answers.iter().zip(emp).zip(&sentences) {
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
            values.insert("similarity".into(), bedside_embed::cosine(emb(a.text)?, emb(r)?) as f64);
            if !a.item.key_facts.is_empty() {
                let facts: Vec<&str> = a.item.key_facts.iter().map(String::as_str).collect();
                let fact_embs = facts.iter().map(|f| emb(f).map(<[f32]>::to_vec)).collect::<Result<Vec<_>>>()?;
                let sent_embs = sents.iter().map(|s| emb(s).map(<[f32]>::to_vec)).collect::<Result<Vec<_>>>()?;
                let r = bedside_metrics::key_fact_recall_embedded(&facts, &fact_embs, a.text, &sent_embs, scorers.key_fact_threshold);
                values.insert("key_fact_recall".into(), r.recall.unwrap_or(f64::NAN));
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
