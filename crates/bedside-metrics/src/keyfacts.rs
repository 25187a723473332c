//! Key-fact recall: the share of an item's key facts a response conveys. A fact counts as
//! conveyed when some sentence of the response has MiniLM cosine similarity at or above a
//! threshold with it, or when every content word of the fact (stopwords removed, Porter-stemmed)
//! appears in the response. The threshold comes from [`calibrate_threshold`] on labelled pairs.

use std::collections::HashSet;

use crate::porter;
#[cfg(feature = "embed")]
use crate::text::split_sentences;

/// Used when no calibration is available. Chosen by `examples/calibrate_keyfacts.rs` on the
/// shipped corpus (320 dialogues, 977 key facts; each fact against its own answer vs an answer
/// about another condition, all-MiniLM-L6-v2): the Youden-optimal threshold 0.471 gives
/// precision 0.968, recall 0.884, FPR 0.030 (AUC 0.977); the F1-optimal one (0.391) admits 8%
/// false positives on these easy negatives, so the stricter Youden point is the default.
pub const DEFAULT_THRESHOLD: f64 = 0.47;

/// English function words (NLTK's list, lightly trimmed of negations, which carry meaning in
/// medical facts: "do not take ibuprofen").
pub const STOPWORDS: &[&str] = &[
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself",
    "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its", "itself",
    "they", "them", "their", "theirs", "themselves", "what", "which", "who", "whom", "this", "that",
    "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had",
    "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if", "or", "because", "as",
    "until", "while", "of", "at", "by", "for", "with", "about", "against", "between", "into", "through",
    "during", "before", "after", "above", "below", "to", "from", "up", "down", "in", "out", "on", "off",
    "over", "under", "again", "further", "then", "once", "here", "there", "when", "where", "why", "how",
    "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "only", "own", "same",
    "so", "than", "too", "very", "s", "t", "can", "will", "just", "should", "now", "d", "ll", "m", "o",
    "re", "ve", "y", "also", "may", "might", "could", "would", "must", "shall", "usually", "often",
];

/// Stemmed content words of a text: lowercase alphanumeric runs (apostrophes dropped), minus
/// stopwords, Porter-stemmed. Negations ("not", "no", "never") are kept.
pub fn content_words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase().replace(['\'', '’'], "");
    lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !STOPWORDS.contains(w))
        .map(porter::stem)
        .collect()
}

/// Whether every content word of `fact` occurs in `response` (false when the fact has none).
pub fn lexical_match(fact: &str, response: &str) -> bool {
    let need = content_words(fact);
    if need.is_empty() {
        return false;
    }
    let have: HashSet<String> = content_words(response).into_iter().collect();
    need.iter().all(|w| have.contains(w))
}

/// Highest cosine between a fact embedding and any sentence embedding (−1 when there are none).
pub fn max_cosine(fact: &[f32], sentences: &[Vec<f32>]) -> f64 {
    sentences.iter().map(|s| cosine(fact, s)).fold(-1.0, f64::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += x as f64 * y as f64;
        na += x as f64 * x as f64;
        nb += y as f64 * y as f64;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        d / (na.sqrt() * nb.sqrt())
    }
}

/// How one fact fared.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FactMatch {
    pub fact: String,
    /// Best cosine over the response's sentences.
    pub best_cosine: f64,
    /// Index into the response's sentences of the best match, if any.
    pub best_sentence: Option<usize>,
    pub semantic: bool,
    pub lexical: bool,
    pub conveyed: bool,
}

/// Key-fact recall of one response.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyFactRecall {
    /// Conveyed facts / all facts; `None` when the item has no key facts.
    pub recall: Option<f64>,
    pub facts: Vec<FactMatch>,
}

/// Recall from precomputed embeddings: `fact_embs[i]` embeds `facts[i]`, `sentence_embs[j]`
/// embeds the j-th sentence of `split_sentences(response)`.
pub fn key_fact_recall_embedded(
    facts: &[&str],
    fact_embs: &[Vec<f32>],
    response: &str,
    sentence_embs: &[Vec<f32>],
    threshold: f64,
) -> KeyFactRecall {
    let mut out = Vec::with_capacity(facts.len());
    for (i, fact) in facts.iter().enumerate() {
        let (best_cosine, best_sentence) = match fact_embs.get(i) {
            Some(fe) => sentence_embs
                .iter()
                .enumerate()
                .map(|(j, s)| (cosine(fe, s), Some(j)))
                .fold((-1.0, None), |a, b| if b.0 > a.0 { b } else { a }),
            None => (-1.0, None),
        };
        let semantic = best_cosine >= threshold;
        let lexical = lexical_match(fact, response);
        out.push(FactMatch {
            fact: fact.to_string(),
            best_cosine,
            best_sentence,
            semantic,
            lexical,
            conveyed: semantic || lexical,
        });
    }
    let recall = if out.is_empty() {
        None
    } else {
        Some(out.iter().filter(|f| f.conveyed).count() as f64 / out.len() as f64)
    };
    KeyFactRecall { recall, facts: out }
}

/// Recall computed with the embedder (embeds the facts and the response's sentences).
#[cfg(feature = "embed")]
pub fn key_fact_recall(
    embedder: &bedside_embed::Embedder,
    facts: &[&str],
    response: &str,
    threshold: f64,
) -> Result<KeyFactRecall, bedside_embed::EmbedError> {
    let sentences = split_sentences(response);
    let mut texts: Vec<&str> = facts.to_vec();
    texts.extend(sentences.iter().map(String::as_str));
    let mut embs = embedder.embed(&texts)?;
    let sentence_embs = embs.split_off(facts.len());
    Ok(key_fact_recall_embedded(facts, &embs, response, &sentence_embs, threshold))
}

/// Best cosine between `fact` and any sentence of `response`, with the embedder: the score fed
/// to [`calibrate_threshold`].
#[cfg(feature = "embed")]
pub fn fact_response_score(
    embedder: &bedside_embed::Embedder,
    fact: &str,
    response: &str,
) -> Result<f64, bedside_embed::EmbedError> {
    let sentences = split_sentences(response);
    let mut texts = vec![fact];
    texts.extend(sentences.iter().map(String::as_str));
    let mut embs = embedder.embed(&texts)?;
    let rest = embs.split_off(1);
    Ok(max_cosine(&embs[0], &rest))
}

/// What to maximise when choosing a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Criterion {
    /// F1 of "score ≥ threshold" as a detector of positives (ties broken by Youden's J).
    F1,
    /// Youden's J = TPR − FPR (ties broken by F1).
    Youden,
}

/// How a calibrated threshold performs on the pairs it was chosen on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CalibrationStats {
    pub criterion: Criterion,
    pub threshold: f64,
    pub n_positive: usize,
    pub n_negative: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub precision: f64,
    /// True-positive rate.
    pub recall: f64,
    pub false_positive_rate: f64,
    pub f1: f64,
    pub youden_j: f64,
    /// Area under the ROC curve (probability a random positive outscores a random negative).
    pub auc: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CalibrationError {
    #[error("calibration needs at least one positive and one negative pair (got {positives} and {negatives})")]
    Empty { positives: usize, negatives: usize },
    #[error("calibration score {0} is not a finite number")]
    NotFinite(f64),
}

/// Pick the threshold maximising F1 (ties: higher Youden's J, then the higher threshold) among
/// midpoints between consecutive distinct scores.
pub fn calibrate_threshold(positives: &[f64], negatives: &[f64]) -> Result<(f64, CalibrationStats), CalibrationError> {
    calibrate_threshold_by(positives, negatives, Criterion::F1)
}

/// [`calibrate_threshold`] with a chosen criterion.
pub fn calibrate_threshold_by(
    positives: &[f64],
    negatives: &[f64],
    criterion: Criterion,
) -> Result<(f64, CalibrationStats), CalibrationError> {
    if positives.is_empty() || negatives.is_empty() {
        return Err(CalibrationError::Empty { positives: positives.len(), negatives: negatives.len() });
    }
    if let Some(&x) = positives.iter().chain(negatives).find(|x| !x.is_finite()) {
        return Err(CalibrationError::NotFinite(x));
    }
    let mut all: Vec<f64> = positives.iter().chain(negatives).copied().collect();
    all.sort_by(f64::total_cmp);
    all.dedup();
    let mut candidates: Vec<f64> = all.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    candidates.push(all[0]); // everything predicted positive
    candidates.push(all[all.len() - 1] + 1e-9); // nothing predicted positive
    let auc = auc(positives, negatives);
    let mut best: Option<CalibrationStats> = None;
    for t in candidates {
        let s = stats_at(positives, negatives, t, criterion, auc);
        let key = |s: &CalibrationStats| match criterion {
            Criterion::F1 => (s.f1, s.youden_j),
            Criterion::Youden => (s.youden_j, s.f1),
        };
        let better = match &best {
            None => true,
            Some(b) => {
                let (k, kb) = (key(&s), key(b));
                k.0 > kb.0 + 1e-12 || ((k.0 - kb.0).abs() <= 1e-12 && (k.1 > kb.1 + 1e-12 || ((k.1 - kb.1).abs() <= 1e-12 && s.threshold > b.threshold)))
            }
        };
        if better {
            best = Some(s);
        }
    }
    let best = best.expect("at least two candidates");
    Ok((best.threshold, best))
}

/// Performance of a given threshold on labelled scores.
pub fn threshold_stats(positives: &[f64], negatives: &[f64], threshold: f64, criterion: Criterion) -> CalibrationStats {
    stats_at(positives, negatives, threshold, criterion, auc(positives, negatives))
}

fn stats_at(pos: &[f64], neg: &[f64], t: f64, criterion: Criterion, auc: f64) -> CalibrationStats {
    let tp = pos.iter().filter(|&&x| x >= t).count();
    let fp = neg.iter().filter(|&&x| x >= t).count();
    let recall = tp as f64 / pos.len().max(1) as f64;
    let fpr = fp as f64 / neg.len().max(1) as f64;
    let precision = if tp + fp == 0 { 0.0 } else { tp as f64 / (tp + fp) as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    CalibrationStats {
        criterion,
        threshold: t,
        n_positive: pos.len(),
        n_negative: neg.len(),
        true_positives: tp,
        false_positives: fp,
        precision,
        recall,
        false_positive_rate: fpr,
        f1,
        youden_j: recall - fpr,
        auc,
    }
}

/// ROC AUC by the Mann–Whitney count (ties count one half).
pub fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut wins = 0.0;
    for &p in pos {
        for &n in neg {
            wins += if p > n { 1.0 } else if p == n { 0.5 } else { 0.0 };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}
