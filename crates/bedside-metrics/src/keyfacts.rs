//! Key-fact recall: the share of an item's key facts a response *states without contradicting*.
//!
//! Each sentence of the response is read against each fact:
//! - it **matches** the fact when its MiniLM cosine with the fact reaches the threshold (the
//!   semantic path) or when it holds every content word of the fact (stopwords and negation cues
//!   removed, Porter-stemmed: the lexical path). Matching is per sentence, so padding an answer
//!   with unrelated sentences cannot make a fact match;
//! - a matching sentence **contradicts** the fact when it holds at least half of the fact's
//!   content words and, on the words they share, their polarities (see [`crate::negation`])
//!   disagree more often than they agree — "Do not worry, you can drive after the sedative"
//!   against "Do not drive after the sedative"; a sentence whose polarity disagrees on fewer
//!   shared words is merely on the topic and neither states nor contradicts; otherwise it
//!   **states** the fact. When the fact itself negates something ("do not fly until the gas has gone"),
//!   the negated words are the claim and the vote is over them alone. With no shared content word
//!   a sentence can state the fact (when the two texts' overall polarities agree) but not
//!   contradict it. Questions and hypothetical clauses assert nothing and are skipped.
//!
//! A fact is conveyed when some sentence states it and no sentence contradicts it.
//!
//! The threshold is [`DEFAULT_THRESHOLD`], calibrated once (not per run) against hard negatives;
//! the data and the script are named at the constant.

use std::collections::{BTreeMap, HashSet};

use crate::negation::{self, Word};
use crate::porter;
use crate::text::split_sentences;

/// The cosine threshold of the semantic path. Calibrated once by `cargo run --release -p
/// bedside-eval --example calibrate_keyfacts` on `data/eval/keyfact-calibration.jsonl`: (fact,
/// answer) pairs from the train and validation splits (never the test split) whose positives are
/// the fact's own comforting and neutral answers and whose negatives are hard — a comfort-only
/// reply, the patient's message restated, the answer with the fact contradicted, and the answer
/// to another condition of the same specialty. The threshold maximises Youden's J of the whole
/// decision (semantic or lexical match, polarity); its figures are in
/// `data/eval/keyfact-calibration.json`. The corpus answers state their facts in the facts' own
/// words, so the positives need little of the semantic path and the threshold is high: a
/// paraphrase counts only when it is close.
pub const DEFAULT_THRESHOLD: f64 = 0.753;

/// English function words (NLTK's list, lightly trimmed of negations, which carry meaning in
/// medical facts: "do not take ibuprofen").
pub const STOPWORDS: &[&str] = &[
    "i",
    "me",
    "my",
    "myself",
    "we",
    "our",
    "ours",
    "ourselves",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "her",
    "hers",
    "herself",
    "it",
    "its",
    "itself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
    "what",
    "which",
    "who",
    "whom",
    "this",
    "that",
    "these",
    "those",
    "am",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "have",
    "has",
    "had",
    "having",
    "do",
    "does",
    "did",
    "doing",
    "a",
    "an",
    "the",
    "and",
    "but",
    "if",
    "or",
    "because",
    "as",
    "until",
    "while",
    "of",
    "at",
    "by",
    "for",
    "with",
    "about",
    "against",
    "between",
    "into",
    "through",
    "during",
    "before",
    "after",
    "above",
    "below",
    "to",
    "from",
    "up",
    "down",
    "in",
    "out",
    "on",
    "off",
    "over",
    "under",
    "again",
    "further",
    "then",
    "once",
    "here",
    "there",
    "when",
    "where",
    "why",
    "how",
    "all",
    "any",
    "both",
    "each",
    "few",
    "more",
    "most",
    "other",
    "some",
    "such",
    "only",
    "own",
    "same",
    "so",
    "than",
    "too",
    "very",
    "s",
    "t",
    "can",
    "will",
    "just",
    "should",
    "now",
    "d",
    "ll",
    "m",
    "o",
    "re",
    "ve",
    "y",
    "also",
    "may",
    "might",
    "could",
    "would",
    "must",
    "shall",
    "usually",
    "often",
];

fn is_stopword(w: &str) -> bool {
    STOPWORDS.contains(&w)
}

/// Stemmed content words of a text: lowercase alphanumeric runs (apostrophes dropped), minus
/// stopwords, Porter-stemmed. Negations ("not", "no", "never") are kept.
pub fn content_words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase().replace(['\'', '’'], "");
    lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty() && !is_stopword(w)).map(porter::stem).collect()
}

/// The content words of analysed text (stopwords and negation cues left out, hypothetical
/// clauses skipped), stemmed, each with whether it is negated.
fn polar_stems(words: &[Word]) -> Vec<(String, bool)> {
    words
        .iter()
        .filter(|w| !w.cue && !w.hypothetical)
        .filter_map(|w| {
            let bare = w.text.replace('\'', "");
            (!bare.is_empty() && !is_stopword(&bare)).then(|| (porter::stem(&bare), w.negated))
        })
        .collect()
}

/// A fact, read once.
#[derive(Debug, Clone)]
pub struct Fact {
    pub text: String,
    /// Content stem → negated (first occurrence).
    stems: BTreeMap<String, bool>,
    negated: bool,
}

impl Fact {
    pub fn new(text: &str) -> Self {
        let words = negation::analyse(text);
        let mut stems = BTreeMap::new();
        for (s, neg) in polar_stems(&words) {
            stems.entry(s).or_insert(neg);
        }
        Fact { text: text.to_string(), stems, negated: negation::text_negated(&words) }
    }
}

/// How a sentence relates to a fact, apart from the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Polarity {
    /// Says the same thing (or at least not the opposite) where it matches.
    Agrees,
    /// Says the opposite.
    Disagrees,
    /// No polarity evidence either way (no shared content word and different overall polarity),
    /// or a question: neither states nor contradicts.
    Neither,
}

/// One sentence's evidence about one fact: everything the decision needs except the threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    pub cosine: f64,
    /// Every content word of the fact is in the sentence.
    pub lexical: bool,
    pub polarity: Polarity,
}

impl Evidence {
    pub fn matches(&self, threshold: f64) -> bool {
        self.lexical || self.cosine >= threshold
    }
}

/// Read `sentence` against `fact` (`cosine`: their embedding similarity).
pub fn evidence(fact: &Fact, sentence: &str, cosine: f64) -> Evidence {
    if sentence.trim_end().ends_with('?') {
        return Evidence { cosine, lexical: false, polarity: Polarity::Neither };
    }
    let words = negation::analyse(sentence);
    let mut have: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for (s, neg) in polar_stems(&words) {
        have.entry(s).or_default().push(neg);
    }
    let lexical = !fact.stems.is_empty() && fact.stems.keys().all(|s| have.contains_key(s));
    let (mut agree, mut disagree) = (0usize, 0usize);
    let claim_words = fact.stems.iter().any(|(s, neg)| *neg && have.contains_key(s));
    for (s, fneg) in fact.stems.iter().filter(|(_, neg)| **neg || !claim_words) {
        if let Some(negs) = have.get(s) {
            if negs.contains(fneg) {
                agree += 1;
            } else {
                disagree += 1;
            }
        }
    }
    // Saying the opposite needs to be about the same thing: at least half the fact's content
    // words; a sentence that is merely on the topic (similar embedding, few shared words) and
    // negates something else is neither.
    let shared = fact.stems.keys().filter(|s| have.contains_key(*s)).count();
    let about_it = 2 * shared >= fact.stems.len();
    let polarity = if agree + disagree == 0 {
        if negation::text_negated(&words) == fact.negated {
            Polarity::Agrees
        } else {
            Polarity::Neither
        }
    } else if disagree > agree {
        if about_it {
            Polarity::Disagrees
        } else {
            Polarity::Neither
        }
    } else {
        Polarity::Agrees
    };
    Evidence { cosine, lexical, polarity }
}

/// Whether a fact is conveyed by sentences with this evidence at `threshold`: some matching
/// sentence agrees and none disagrees.
pub fn conveyed(evidence: &[Evidence], threshold: f64) -> bool {
    let matching = || evidence.iter().filter(|e| e.matches(threshold));
    matching().any(|e| e.polarity == Polarity::Agrees) && !matching().any(|e| e.polarity == Polarity::Disagrees)
}

/// How one fact fared.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FactMatch {
    pub fact: String,
    /// Best cosine over the response's sentences.
    pub best_cosine: f64,
    /// Index of the best-matching sentence, if any.
    pub best_sentence: Option<usize>,
    /// Some sentence matches through the embedding.
    pub semantic: bool,
    /// Some sentence holds every content word of the fact.
    pub lexical: bool,
    /// Some matching sentence says the opposite.
    pub contradicted: bool,
    pub conveyed: bool,
}

/// Key-fact recall of one response.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyFactRecall {
    /// Conveyed facts / all facts; `None` when the item has no key facts.
    pub recall: Option<f64>,
    pub facts: Vec<FactMatch>,
}

/// Recall of `facts` in a response split into `sentences` (by [`split_sentences`]), with
/// `similarity[i][j]` the cosine of fact `i` and sentence `j`.
pub fn key_fact_recall_scored(facts: &[&str], sentences: &[String], similarity: &[Vec<f64>], threshold: f64) -> KeyFactRecall {
    let mut out = Vec::with_capacity(facts.len());
    for (i, fact) in facts.iter().enumerate() {
        let f = Fact::new(fact);
        let ev: Vec<Evidence> = sentences
            .iter()
            .enumerate()
            .map(|(j, s)| evidence(&f, s, similarity.get(i).and_then(|r| r.get(j)).copied().unwrap_or(-1.0)))
            .collect();
        let (best_cosine, best_sentence) =
            ev.iter().enumerate().map(|(j, e)| (e.cosine, Some(j))).fold((-1.0, None), |a, b| if b.0 > a.0 { b } else { a });
        out.push(FactMatch {
            fact: fact.to_string(),
            best_cosine,
            best_sentence,
            semantic: ev.iter().any(|e| e.cosine >= threshold),
            lexical: ev.iter().any(|e| e.lexical),
            contradicted: ev.iter().any(|e| e.matches(threshold) && e.polarity == Polarity::Disagrees),
            conveyed: conveyed(&ev, threshold),
        });
    }
    let recall = (!out.is_empty()).then(|| out.iter().filter(|f| f.conveyed).count() as f64 / out.len() as f64);
    KeyFactRecall { recall, facts: out }
}

/// Whether some sentence of `response` states `fact` with every content word of it (the lexical
/// path alone) and none contradicts it.
pub fn lexical_match(fact: &str, response: &str) -> bool {
    let f = Fact::new(fact);
    let ev: Vec<Evidence> = split_sentences(response).iter().map(|s| evidence(&f, s, -1.0)).collect();
    conveyed(&ev, f64::INFINITY)
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
    let sims: Vec<Vec<f64>> = embs.iter().map(|f| sentence_embs.iter().map(|s| bedside_embed::cosine(f, s) as f64).collect()).collect();
    Ok(key_fact_recall_scored(facts, &sentences, &sims, threshold))
}

/// What to maximise when choosing a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Criterion {
    /// F1 of the decision as a detector of positives (ties broken by Youden's J).
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
    /// Area under the ROC curve of the pairs' best cosine (a random positive outscoring a
    /// random negative); for the whole decision, see the rates above.
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
/// midpoints between consecutive distinct scores, for the rule "score ≥ threshold".
pub fn calibrate_threshold(positives: &[f64], negatives: &[f64]) -> Result<(f64, CalibrationStats), CalibrationError> {
    calibrate_threshold_by(positives, negatives, Criterion::F1)
}

/// [`calibrate_threshold`] with a chosen criterion.
pub fn calibrate_threshold_by(
    positives: &[f64],
    negatives: &[f64],
    criterion: Criterion,
) -> Result<(f64, CalibrationStats), CalibrationError> {
    let pos: Vec<Vec<Evidence>> =
        positives.iter().map(|&c| vec![Evidence { cosine: c, lexical: false, polarity: Polarity::Agrees }]).collect();
    let neg: Vec<Vec<Evidence>> =
        negatives.iter().map(|&c| vec![Evidence { cosine: c, lexical: false, polarity: Polarity::Agrees }]).collect();
    calibrate_decision(&pos, &neg, criterion)
}

/// Choose the threshold of the whole decision ([`conveyed`]) on labelled (fact, answer) pairs,
/// each given as its sentences' evidence: candidates are the midpoints between consecutive
/// distinct cosines (and both ends); the best by `criterion` wins (ties: the other criterion,
/// then the higher threshold).
pub fn calibrate_decision(
    positives: &[Vec<Evidence>],
    negatives: &[Vec<Evidence>],
    criterion: Criterion,
) -> Result<(f64, CalibrationStats), CalibrationError> {
    if positives.is_empty() || negatives.is_empty() {
        return Err(CalibrationError::Empty { positives: positives.len(), negatives: negatives.len() });
    }
    let all_ev = || positives.iter().chain(negatives).flatten();
    if let Some(e) = all_ev().find(|e| !e.cosine.is_finite()) {
        return Err(CalibrationError::NotFinite(e.cosine));
    }
    let mut all: Vec<f64> = all_ev().map(|e| e.cosine).collect();
    all.sort_by(f64::total_cmp);
    all.dedup();
    let mut candidates: Vec<f64> = all.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    candidates.push(all[0]); // every sentence matches
    candidates.push(all[all.len() - 1] + 1e-9); // only the lexical path
    let best_cos = |p: &[Vec<Evidence>]| -> Vec<f64> { p.iter().map(|ev| ev.iter().map(|e| e.cosine).fold(-1.0, f64::max)).collect() };
    let auc = auc(&best_cos(positives), &best_cos(negatives));
    let mut best: Option<CalibrationStats> = None;
    for t in candidates {
        let s = decision_stats(positives, negatives, t, criterion, auc);
        let key = |s: &CalibrationStats| match criterion {
            Criterion::F1 => (s.f1, s.youden_j),
            Criterion::Youden => (s.youden_j, s.f1),
        };
        let better = match &best {
            None => true,
            Some(b) => {
                let (k, kb) = (key(&s), key(b));
                k.0 > kb.0 + 1e-12
                    || ((k.0 - kb.0).abs() <= 1e-12 && (k.1 > kb.1 + 1e-12 || ((k.1 - kb.1).abs() <= 1e-12 && s.threshold > b.threshold)))
            }
        };
        if better {
            best = Some(s);
        }
    }
    let best = best.ok_or(CalibrationError::Empty { positives: positives.len(), negatives: negatives.len() })?;
    Ok((best.threshold, best))
}

/// Performance of the whole decision at `threshold` on labelled pairs.
pub fn decision_stats(pos: &[Vec<Evidence>], neg: &[Vec<Evidence>], threshold: f64, criterion: Criterion, auc: f64) -> CalibrationStats {
    let tp = pos.iter().filter(|e| conveyed(e, threshold)).count();
    let fp = neg.iter().filter(|e| conveyed(e, threshold)).count();
    let recall = tp as f64 / pos.len().max(1) as f64;
    let fpr = fp as f64 / neg.len().max(1) as f64;
    let precision = if tp + fp == 0 { 0.0 } else { tp as f64 / (tp + fp) as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    CalibrationStats {
        criterion,
        threshold,
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
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

/// Distinct content stems of a text (for tests and diagnostics).
pub fn content_stems(text: &str) -> HashSet<String> {
    content_words(text).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(fact: &str, sentence: &str) -> Evidence {
        evidence(&Fact::new(fact), sentence, -1.0)
    }

    #[test]
    fn polarity_both_ways() {
        // The example: the fact's words are all there, its polarity is not.
        let e = lex("Do not drive after the sedative.", "Do not worry, you can drive after the sedative.");
        assert!(e.lexical);
        assert_eq!(e.polarity, Polarity::Disagrees);
        assert_eq!(lex("Do not drive after the sedative.", "Please avoid driving after the sedative.").polarity, Polarity::Agrees);
        // And the other way: an affirmative fact negated.
        assert_eq!(lex("Ectopic beats are very common.", "Ectopic beats are not very common.").polarity, Polarity::Disagrees);
        assert_eq!(lex("Ectopic beats are very common.", "Don't worry: ectopic beats are very common.").polarity, Polarity::Agrees);
        assert_eq!(lex("It is not a sign of poor hygiene.", "It is a sign of poor hygiene.").polarity, Polarity::Disagrees);
        assert_eq!(
            lex("Prednisolone must never be stopped suddenly.", "You can stop prednisolone suddenly.").polarity,
            Polarity::Disagrees
        );
        assert_eq!(lex("Prednisolone must never be stopped suddenly.", "Never stop prednisolone suddenly.").polarity, Polarity::Agrees);
        assert_eq!(lex("Ordinary painkillers rarely help.", "Ordinary painkillers often help.").polarity, Polarity::Disagrees);
        // A negative fact's claim is its negated words; the context around them does not outvote it.
        assert_eq!(lex("do not fly until the gas has gone", "You can fly until the gas has gone.").polarity, Polarity::Disagrees);
        assert_eq!(
            lex("It cannot be cured, but it can be controlled", "It can be cured, but it can be controlled.").polarity,
            Polarity::Disagrees
        );
        // One negated mention among agreeing ones does not make a contradiction.
        assert_eq!(
            lex("the next step is usually an ECG", "An ECG is not painful, and it is usually the next step.").polarity,
            Polarity::Agrees
        );
    }

    #[test]
    fn a_fact_counts_only_when_stated_and_not_contradicted() {
        let s = |x: &str| x.to_string();
        let sentences = [s("You can drive after the sedative."), s("Do not drive after the sedative.")];
        let r = key_fact_recall_scored(&["Do not drive after the sedative."], &sentences, &[vec![0.9, 0.95]], 0.5);
        assert!(r.facts[0].contradicted && !r.facts[0].conveyed);
        let r = key_fact_recall_scored(&["Do not drive after the sedative."], &sentences[1..], &[vec![0.95]], 0.5);
        assert!(r.facts[0].conveyed);
        // Questions state nothing.
        let q = [s("Do you drive after the sedative?")];
        assert!(!key_fact_recall_scored(&["You drive after the sedative."], &q, &[vec![0.99]], 0.5).facts[0].conveyed);
    }
}
