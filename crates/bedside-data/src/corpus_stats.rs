//! `bedside data stats`: counts per split, specialty and emotion, and length distributions.
//!
//! Word lengths are whitespace-separated word counts ([`crate::text::word_count`]). Token lengths
//! come from a caller-supplied counter (`Fn(&str) -> usize`, e.g. a model's tokenizer), so this
//! crate needs no tokenizer. Empty texts (imported records not rewritten yet) are left out of the
//! distributions. Percentiles are nearest-rank: the p-th percentile of n sorted values is the
//! value at rank ⌈p·n⌉ (the median is p = 0.5, the lower middle value for even n).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::record::Dialogue;
use crate::text::word_count;
use crate::validate::ordered_splits;

/// The text fields measured, in report order.
pub const MEASURED: [&str; 4] = ["patient", "answer", "patient_neutral", "answer_neutral"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LengthStats {
    /// Non-empty texts measured.
    pub count: usize,
    pub min: usize,
    pub median: usize,
    pub p90: usize,
    pub max: usize,
}

impl LengthStats {
    /// The distribution of `values` (`None` when empty).
    pub fn of(mut values: Vec<usize>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let n = values.len();
        let rank = |p: f64| values[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(LengthStats { count: n, min: values[0], median: rank(0.5), p90: rank(0.9), max: values[n - 1] })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub records: usize,
    /// split → count (`""`: unassigned).
    pub per_split: BTreeMap<String, usize>,
    /// specialty → split → count.
    pub per_specialty: BTreeMap<String, BTreeMap<String, usize>>,
    /// emotion → split → count.
    pub per_emotion: BTreeMap<String, BTreeMap<String, usize>>,
    /// field → word-length distribution (fields with no non-empty text are absent).
    pub words: BTreeMap<String, LengthStats>,
    /// field → token-length distribution, when a counter was given.
    pub tokens: Option<BTreeMap<String, LengthStats>>,
}

fn field<'a>(r: &'a Dialogue, name: &str) -> &'a str {
    match name {
        "patient" => &r.patient,
        "answer" => &r.answer,
        "patient_neutral" => &r.patient_neutral,
        _ => &r.answer_neutral,
    }
}

fn lengths(records: &[Dialogue], measure: &dyn Fn(&str) -> usize) -> BTreeMap<String, LengthStats> {
    MEASURED
        .iter()
        .filter_map(|f| {
            let v: Vec<usize> = records.iter().map(|r| field(r, f)).filter(|t| !t.trim().is_empty()).map(measure).collect();
            LengthStats::of(v).map(|s| (f.to_string(), s))
        })
        .collect()
}

/// Statistics of `records`; token lengths when `count_tokens` is given.
pub fn compute_stats(records: &[Dialogue], count_tokens: Option<&dyn Fn(&str) -> usize>) -> Stats {
    let mut per_split: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_specialty: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut per_emotion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in records {
        *per_split.entry(r.split.clone()).or_default() += 1;
        *per_specialty.entry(r.specialty.clone()).or_default().entry(r.split.clone()).or_default() += 1;
        *per_emotion.entry(r.emotion.clone()).or_default().entry(r.split.clone()).or_default() += 1;
    }
    Stats {
        records: records.len(),
        per_split,
        per_specialty,
        per_emotion,
        words: lengths(records, &word_count),
        tokens: count_tokens.map(|c| lengths(records, c)),
    }
}

fn label(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

impl Stats {
    fn table(&self, title: &str, rows: &BTreeMap<String, BTreeMap<String, usize>>, out: &mut String) {
        let splits = ordered_splits(self.per_split.keys());
        let w = rows.keys().map(|k| label(k).chars().count()).max().unwrap_or(0).max(title.len());
        let _ = write!(out, "\n{title:<w$}");
        for s in &splits {
            let _ = write!(out, " {:>10}", label(s));
        }
        let _ = writeln!(out, " {:>10}", "total");
        for (k, by) in rows {
            let _ = write!(out, "{:<w$}", label(k));
            for s in &splits {
                let _ = write!(out, " {:>10}", by.get(*s).copied().unwrap_or(0));
            }
            let _ = writeln!(out, " {:>10}", by.values().sum::<usize>());
        }
    }

    fn lengths_table(title: &str, rows: &BTreeMap<String, LengthStats>, out: &mut String) {
        let _ = writeln!(out, "\n{title:<16} {:>7} {:>7} {:>7} {:>7} {:>7}", "n", "min", "median", "p90", "max");
        for f in MEASURED {
            if let Some(s) = rows.get(f) {
                let _ = writeln!(out, "{f:<16} {:>7} {:>7} {:>7} {:>7} {:>7}", s.count, s.min, s.median, s.p90, s.max);
            }
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        let splits: Vec<String> =
            ordered_splits(self.per_split.keys()).into_iter().map(|k| format!("{} {}", label(k), self.per_split[k])).collect();
        let _ = writeln!(s, "{} records: {}", self.records, splits.join(", "));
        self.table("specialty", &self.per_specialty, &mut s);
        self.table("emotion", &self.per_emotion, &mut s);
        Stats::lengths_table("words", &self.words, &mut s);
        if let Some(t) = &self.tokens {
            Stats::lengths_table("tokens", t, &mut s);
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = LengthStats::of((1..=10).collect()).unwrap();
        assert_eq!((s.min, s.median, s.p90, s.max), (1, 5, 9, 10));
        let s = LengthStats::of(vec![7]).unwrap();
        assert_eq!((s.min, s.median, s.p90, s.max), (7, 7, 7, 7));
        assert!(LengthStats::of(vec![]).is_none());
    }

    #[test]
    fn counts_and_token_counter() {
        let mk = |split: &str, sp: &str, p: &str| Dialogue {
            split: split.into(),
            specialty: sp.into(),
            emotion: "sad".into(),
            patient: p.into(),
            ..Dialogue::default()
        };
        let rs = vec![mk("train", "ent", "a b c"), mk("train", "ent", "a b"), mk("test", "eye", "")];
        let chars = |s: &str| s.len();
        let st = compute_stats(&rs, Some(&chars));
        assert_eq!(st.per_split.get("train"), Some(&2));
        assert_eq!(st.per_specialty["ent"]["train"], 2);
        assert_eq!(st.words["patient"].count, 2);
        assert_eq!(st.words["patient"].max, 3);
        assert_eq!(st.tokens.as_ref().unwrap()["patient"].max, 5);
        assert!(!st.words.contains_key("answer"));
        assert!(st.to_string().contains("3 records: train 2, test 1"));
    }
}
