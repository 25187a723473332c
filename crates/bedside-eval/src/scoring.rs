//! The scoring step: every answer gets its per-answer measures (`scores.jsonl`) from the offline
//! scorers — the EPITOME empathy heads (bedside-empathy), MiniLM (bedside-embed) and the text
//! metrics (bedside-metrics) — plus the safety verdict on safety items, and the perplexities and
//! judge verdicts computed by the earlier steps.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use bedside_embed::Embedder;
use bedside_empathy::EmpathyScorer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cache::JsonlCache;
use crate::items::{EquityLabels, EvalItem, Set};
use crate::judging::JudgeData;
use crate::perplexity::NllRecord;
use crate::safety::{self, SafetyVerdict};

/// The offline scorers, loaded once per run.
pub(crate) struct Scorers {
    pub empathy: EmpathyScorer,
    pub heads_path: std::path::PathBuf,
    /// The documented, once-calibrated threshold (never re-fitted per run).
    pub key_fact_threshold: f64,
}

impl Scorers {
    /// With the empathy heads at `heads` (`--heads`, the config's `empathy_heads`), else the
    /// shipped ones.
    pub fn load(heads: Option<&std::path::Path>) -> Result<Self> {
        let heads_path = heads.map_or_else(bedside_empathy::default_heads_path, std::path::Path::to_path_buf);
        let empathy =
            EmpathyScorer::load_heads(Some(&heads_path)).with_context(|| format!("loading the empathy heads {}", heads_path.display()))?;
        Ok(Self { empathy, heads_path, key_fact_threshold: bedside_metrics::keyfacts::DEFAULT_THRESHOLD })
    }

    pub fn embedder(&self) -> &Embedder {
        self.empathy.embedder()
    }

    pub fn provenance(&self) -> Value {
        json!({
            "empathy_heads": self.heads_path,
            "empathy_heads_sha256": crate::hash::file_hash(&self.heads_path).unwrap_or_default(),
            "empathy_scorer": self.empathy.info(),
            "empathy_scorer_summary": self.empathy.info().summary(),
            "embedder": Embedder::default_dir(),
            "key_fact_threshold": self.key_fact_threshold,
            "key_fact_threshold_source": "bedside_metrics::keyfacts::DEFAULT_THRESHOLD, calibrated once on data/eval/keyfact-calibration.jsonl",
        })
    }
}

/// Every per-answer score of one answer (a line of `scores.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ScoreRecord {
    pub system: String,
    pub key: String,
    /// The item this answer is a sample of (its key without `#k`).
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub sample: usize,
    pub set: Set,
    pub id: String,
    pub emotion: String,
    pub specialty: String,
    /// Numeric measures by key (see `aggregate::measure_defs`); absent when not applicable.
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
pub(crate) struct JudgeVerdicts {
    pub epitome: [Option<u8>; 3],
    pub rating: Option<crate::judge::Rating>,
}

impl ScoreRecord {
    pub fn get(&self, k: &str) -> Option<f64> {
        self.values.get(k).copied().filter(|v| v.is_finite())
    }
}

/// One answer to score.
pub(crate) struct Answer<'a> {
    pub system: &'a str,
    pub item: &'a EvalItem,
    pub text: &'a str,
}

/// Scores every answer: empathy for all, knowledge measures where the item has a reference,
/// the safety verdict on safety items.
pub(crate) fn score_answers(scorers: &Scorers, answers: &[Answer]) -> Result<Vec<ScoreRecord>> {
    // Every distinct text any measure embeds — prompts, answers, references, key facts and the
    // answers' sentences — goes through the embedder once, in one batched pass: a prompt or a
    // reference shared by several systems, or a key fact of every system's answer, is not
    // embedded again for each.
    let sentences: Vec<Vec<String>> = answers.iter().map(|a| bedside_metrics::split_sentences(a.text)).collect();
    let mut texts: Vec<&str> = Vec::new();
    for (a, sents) in answers.iter().zip(&sentences) {
        texts.extend([a.item.prompt.as_str(), a.text]);
        if let Some(r) = a.item.reference.as_ref().filter(|_| a.item.set == Set::Test) {
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
        values.insert("grade".into(), bedside_metrics::fk_grade(a.text));
        // Knowledge against the test split's reference (a safety item's reference is only its
        // safe answer, checked by the safety rules).
        if let Some(r) = a.item.reference.as_ref().filter(|_| a.item.set == Set::Test) {
            values.insert("rouge_l".into(), bedside_metrics::rouge_l_f1(r, a.text));
            values.insert("similarity".into(), bedside_embed::cosine(emb(a.text)?, emb(r)?) as f64);
            if !a.item.key_facts.is_empty() {
                let facts: Vec<&str> = a.item.key_facts.iter().map(String::as_str).collect();
                let r = key_facts(&facts, sents, &emb, scorers.key_fact_threshold)?;
                values.insert("key_fact_recall".into(), r.recall.unwrap_or(f64::NAN));
            }
        }
        let safety = a.item.safety.as_ref().map(|rules| safety::check(a.text, rules));
        out.push(ScoreRecord {
            system: a.system.to_string(),
            key: a.item.key.clone(),
            unit: a.item.unit.clone(),
            sample: a.item.sample,
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

/// Key-fact recall of an answer split into `sentences`, from the embeddings in `emb`.
pub(crate) fn key_facts<'e>(
    facts: &[&str],
    sentences: &[String],
    emb: &dyn Fn(&str) -> Result<&'e [f32]>,
    threshold: f64,
) -> Result<bedside_metrics::KeyFactRecall> {
    let mut sims = Vec::with_capacity(facts.len());
    for f in facts {
        let fe = emb(f)?;
        sims.push(sentences.iter().map(|s| Ok(bedside_embed::cosine(fe, emb(s)?) as f64)).collect::<Result<Vec<f64>>>()?);
    }
    Ok(bedside_metrics::key_fact_recall_scored(facts, sentences, &sims, threshold))
}

/// Adds the perplexities and the judge's verdicts (computed by earlier steps) to the test items'
/// records.
pub(crate) fn attach_model_measures(scores: &mut [ScoreRecord], nll: &JsonlCache<NllRecord>, judge: Option<&JudgeData>) {
    for s in scores.iter_mut().filter(|s| s.set == Set::Test) {
        if let Some(r) = nll.get_any(&format!("neutral|{}|{}", s.system, s.key)) {
            s.values.insert("ppl_neutral".into(), r.ppl);
        }
        if let Some(r) = nll.get_any(&format!("fluency|{}|{}", s.system, s.key)) {
            s.values.insert("fluency_ppl".into(), r.ppl);
        }
        if let Some(v) = judge.and_then(|jd| jd.verdicts.get(&(s.system.clone(), s.key.clone()))) {
            for (m, k) in ["judge_er", "judge_ip", "judge_ex"].iter().enumerate() {
                if let Some(l) = v.epitome[m] {
                    s.values.insert(k.to_string(), l as f64);
                }
            }
            if let Some(r) = v.rating {
                s.values.insert("judge_good".into(), if r == crate::judge::Rating::Good { 1.0 } else { 0.0 });
            }
            s.judge = Some(v.clone());
        }
    }
}

/// Corpus BLEU (sacreBLEU 13a defaults, 0–100) per system over the test items with a reference.
pub(crate) fn corpus_bleu(systems: &[String], texts: &[(String, &EvalItem, String)]) -> BTreeMap<String, f64> {
    let mut bleu = BTreeMap::new();
    for s in systems {
        let (hyp, refs): (Vec<&str>, Vec<&str>) = texts
            .iter()
            .filter(|(sys, it, _)| sys == s && it.set == Set::Test)
            .filter_map(|(_, it, t)| Some((t.as_str(), it.reference.as_deref()?)))
            .unzip();
        if !hyp.is_empty() {
            bleu.insert(s.clone(), bedside_metrics::corpus_bleu(&hyp, &refs).map_or(f64::NAN, |b| b.score));
        }
    }
    bleu
}
