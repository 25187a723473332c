//! ROUGE-L as Google's `rouge-score` 0.1.2 computes it with
//! `RougeScorer(['rougeL'], use_stemmer=True)`: lowercase, every run of characters outside
//! `[a-z0-9]` becomes a space, tokens longer than 3 characters go through NLTK's Porter stemmer,
//! then precision/recall/F1 of the longest common subsequence.

use crate::porter;

/// Precision, recall and F-measure, as `rouge_score.scoring.Score`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

/// `rouge_score.tokenize.tokenize(text, stemmer)`.
pub fn rouge_tokenize(text: &str, use_stemmer: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    let cleaned: String = lower.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { ' ' }).collect();
    cleaned
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| if use_stemmer && t.len() > 3 { porter::stem(t) } else { t.to_string() })
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .collect()
}

/// Length of the longest common subsequence.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of `prediction` against `target` (the reference), stemmed as rouge-score does.
pub fn rouge_l(target: &str, prediction: &str) -> RougeScore {
    rouge_l_tokens(&rouge_tokenize(target, true), &rouge_tokenize(prediction, true))
}

/// ROUGE-L on already tokenized text.
pub fn rouge_l_tokens(target: &[String], prediction: &[String]) -> RougeScore {
    if target.is_empty() || prediction.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_len(target, prediction) as f64;
    let precision = lcs / prediction.len() as f64;
    let recall = lcs / target.len() as f64;
    let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    RougeScore { precision, recall, fmeasure }
}

/// ROUGE-L F1 (what evaluation reports).
pub fn rouge_l_f1(reference: &str, prediction: &str) -> f64 {
    rouge_l(reference, prediction).fmeasure
}
