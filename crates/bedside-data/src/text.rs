//! Word, content-word and number extraction, shared by `validate` (and by the rewrite checks).
//!
//! The rules are deliberately simple so that a person can apply them by hand:
//!
//! * **Words** ([`words`]): maximal runs of letters and digits, lower-cased; an apostrophe (`'`,
//!   `’`) between two such characters stays inside the word (`don't`, `patient's`). Everything
//!   else separates words, so `self-care` is `self`, `care` and `24-hour` is `24`, `hour`.
//! * **Content words** ([`content_words`]): words made only of letters (and inner apostrophes)
//!   with at least 3 letters that are not in [`STOP_WORDS`]. Matching is exact: no stemming.
//! * **Numbers** ([`numbers`]): a run of ASCII digits not glued to a preceding letter (so `B12`
//!   and `H2O` are not numbers, while `COVID-19` gives `19` and `58-year-old` gives `58`),
//!   with `,` thousands groups (`1,000`) and one decimal part (`38.5`). The value is normalised:
//!   thousands separators and leading zeros dropped, trailing decimal zeros dropped (`38.50` →
//!   `38.5`, `2.0` → `2`). A unit directly after the number (`400 mg`, `38.5 °C`, `3 days`,
//!   `5%`) is recorded in [`NumberMention::unit`] for information; comparisons use the value only.
//!   Number words (`two weeks`) are not numbers.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Function words ignored when matching key facts and red flags (only words of ≥3 letters
/// matter; shorter ones are ignored anyway).
pub const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "nor", "yet", "you", "your", "yours", "was", "were", "has", "have", "had", "having", "been",
    "being", "does", "did", "doing", "done", "this", "that", "these", "those", "there", "their", "theirs", "them", "they", "then", "than",
    "with", "from", "into", "onto", "upon", "about", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "its",
    "it's", "our", "ours", "out", "off", "who", "whom", "whose", "what", "when", "where", "which", "while", "why", "how", "all", "any",
    "some", "such", "each", "both", "also", "very", "just", "only", "own", "same", "too", "her", "hers", "his", "him", "she", "himself",
    "herself", "itself", "yourself", "let", "per", "via", "again", "once", "here", "because", "until", "against", "between", "through",
    "during", "before", "after", "above", "below", "whether", "either", "neither", "don't", "doesn't", "isn't", "aren't", "can't", "won't",
    "you're", "i'm",
];

/// Units recognised after a number (lower-case). Informational only.
const UNITS: &[&str] = &[
    "%", "mg", "g", "kg", "mcg", "µg", "ug", "ml", "l", "dl", "mmol", "mmol/l", "mg/dl", "mg/l", "µmol/l", "mmhg", "iu", "unit", "units",
    "c", "°c", "°f", "°", "cm", "mm", "m", "km", "ft", "lb", "lbs", "oz", "st", "bpm", "kcal", "h", "hr", "hrs", "hour", "hours", "min",
    "mins", "minute", "minutes", "sec", "secs", "second", "seconds", "day", "days", "week", "weeks", "wk", "wks", "month", "months",
    "year", "years", "yr", "yrs", "times", "x", "y/o", "puffs", "tablets", "doses",
];

/// `s` with runs of whitespace collapsed to one space and trimmed.
pub fn normalise_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A condition as compared between splits: lower-case, whitespace collapsed, trimmed.
pub fn normalise_condition(s: &str) -> String {
    normalise_ws(&s.to_lowercase())
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}' || c == '\u{02bc}'
}

/// The words of `s`, lower-cased (see the module docs).
pub fn words(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            cur.extend(c.to_lowercase());
        } else if is_apostrophe(c) && !cur.is_empty() && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric()) {
            cur.push('\'');
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether `w` (a lower-case word from [`words`]) is a content word.
pub fn is_content_word(w: &str) -> bool {
    w.chars().all(|c| c.is_alphabetic() || c == '\'') && w.chars().filter(|c| c.is_alphabetic()).count() >= 3 && !STOP_WORDS.contains(&w)
}

/// The content words of `s`, in order, without repeats.
pub fn content_words(s: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    words(s).into_iter().filter(|w| is_content_word(w) && seen.insert(w.clone())).collect()
}

/// The content words of `fact` that do not occur as words of `text`.
pub fn missing_words(fact: &str, text: &str) -> Vec<String> {
    let have: BTreeSet<String> = words(text).into_iter().collect();
    content_words(fact).into_iter().filter(|w| !have.contains(w)).collect()
}

/// Whitespace-separated word count (the unit of the length bounds and statistics).
pub fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

/// One number found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberMention {
    /// The normalised numeric token (`1,000` → `1000`, `38.50` → `38.5`).
    pub value: String,
    /// The unit written directly after it, as written (`mg`, `°C`, `days`, `%`), if recognised.
    pub unit: Option<String>,
    /// Byte range of the number (without the unit) in the text.
    pub start: usize,
    pub end: usize,
}

fn normalise_number(int: &str, frac: &str) -> String {
    let int: String = int.chars().filter(|c| *c != ',').collect();
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    }
}

/// The numbers in `s`, in order (see the module docs).
pub fn numbers(s: &str) -> Vec<NumberMention> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let byte = |i: usize| chars.get(i).map_or(s.len(), |&(b, _)| b);
    let digit = |i: usize| at(i).is_some_and(|c| c.is_ascii_digit());
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !digit(i) {
            i += 1;
            continue;
        }
        if i > 0 && at(i - 1).is_some_and(|c| c.is_alphabetic()) {
            // Glued to a letter (B12, H2O): part of a name, not a number.
            while at(i).is_some_and(|c| c.is_alphanumeric()) {
                i += 1;
            }
            continue;
        }
        let start = i;
        while digit(i) {
            i += 1;
        }
        // Thousands groups: `,` + exactly three digits.
        while at(i) == Some(',') && digit(i + 1) && digit(i + 2) && digit(i + 3) && !digit(i + 4) {
            i += 4;
        }
        let int_end = i;
        let mut frac_start = i;
        if at(i) == Some('.') && digit(i + 1) {
            i += 1;
            frac_start = i;
            while digit(i) {
                i += 1;
            }
        }
        let int = &s[byte(start)..byte(int_end)];
        let frac = if frac_start > int_end { &s[byte(frac_start)..byte(i)] } else { "" };
        let end = i;
        // Unit: directly attached or after one space.
        let mut j = i;
        if at(j) == Some(' ') {
            j += 1;
        }
        let unit_start = j;
        while at(j).is_some_and(|c| c.is_alphabetic() || matches!(c, '°' | '%' | 'µ' | '/')) {
            j += 1;
        }
        let token = s[byte(unit_start)..byte(j)].trim_end_matches('/');
        let unit = (!token.is_empty() && UNITS.contains(&token.to_lowercase().as_str())).then(|| token.to_string());
        out.push(NumberMention { value: normalise_number(int, frac), unit, start: byte(start), end: byte(end) });
        // Skip the rest of a glued alphanumeric token (`3rd`, `5mg`) so its digits are not re-read.
        while at(i).is_some_and(|c| c.is_alphanumeric()) {
            i += 1;
        }
    }
    out
}

/// The set of normalised number values in `s`.
pub fn number_set(s: &str) -> BTreeSet<String> {
    numbers(s).into_iter().map(|n| n.value).collect()
}

/// The word `n`-grams of `s` as sorted, de-duplicated 64-bit hashes (a text with fewer than `n`
/// words gives one shingle of all its words; an empty text gives none).
pub fn shingles(s: &str, n: usize) -> Vec<u64> {
    let w = words(s);
    let n = n.max(1);
    let hash = |ws: &[String]| {
        let mut h = DefaultHasher::new();
        ws.hash(&mut h);
        h.finish()
    };
    let mut out: Vec<u64> = if w.is_empty() {
        Vec::new()
    } else if w.len() < n {
        vec![hash(&w)]
    } else {
        w.windows(n).map(hash).collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Jaccard similarity of two sorted, de-duplicated sets.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    inter as f64 / (a.len() + b.len() - inter) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(s: &str) -> Vec<String> {
        numbers(s).into_iter().map(|n| n.value).collect()
    }

    #[test]
    fn words_keep_inner_apostrophes_and_split_hyphens() {
        assert_eq!(words("Don't stop self-care, it’s 24-hour!"), ["don't", "stop", "self", "care", "it's", "24", "hour"]);
        assert_eq!(content_words("The ECG is usually the next step and the ECG"), ["ecg", "usually", "next", "step"]);
    }

    #[test]
    fn numbers_with_units_are_normalised() {
        assert_eq!(values("Take 400 mg, a fever of 38.5 C for 3 days"), ["400", "38.5", "3"]);
        let n = numbers("400 mg and 38.5°C and 5% and 1,000 steps, at 140.");
        let units: Vec<Option<&str>> = n.iter().map(|m| m.unit.as_deref()).collect();
        assert_eq!(units, [Some("mg"), Some("°C"), Some("%"), None, None]);
        assert_eq!(values("1,000 and 38.50 and 2.0 and 007"), ["1000", "38.5", "2", "7"]);
        assert_eq!(
            values("vitamin B12, H2O, COVID-19, a 58-year-old, the 3rd day, 2–3 times, 1, 2"),
            ["19", "58", "3", "2", "3", "1", "2"]
        );
        assert_eq!(values("two weeks"), Vec::<String>::new());
        let m = &numbers("at 140 bpm")[0];
        assert_eq!(&"at 140 bpm"[m.start..m.end], "140");
    }

    #[test]
    fn shingles_and_jaccard() {
        let a = shingles("one two three four five six", 5);
        assert_eq!(a.len(), 2);
        assert_eq!(jaccard(&a, &a), 1.0);
        let b = shingles("one two three four five seven", 5);
        assert!((jaccard(&a, &b) - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(shingles("short text", 5).len(), 1);
        assert!(shingles("", 5).is_empty());
    }
}
