//! Sentence splitting, word counts and the Flesch–Kincaid grade level.

/// Abbreviations whose trailing period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "dr", "mr", "mrs", "ms", "prof", "st", "vs", "etc", "e.g", "i.e", "eg", "ie", "approx", "no", "fig", "jr", "sr", "inc", "ltd", "cf",
    "al", "min", "max", "hr", "hrs", "wk", "wks", "mo", "yr", "yrs",
];

/// Split text into sentences: at `.`, `!`, `?` (runs of them, plus closing quotes/brackets)
/// followed by whitespace, and at line breaks; not after common abbreviations, single initials or
/// inside numbers ("2.5 mg"). Bullet markers at line starts are kept with their sentence.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let chars: Vec<char> = line.chars().collect();
        let mut start = 0;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if matches!(c, '.' | '!' | '?') {
                let mut j = i + 1;
                while j < chars.len() && matches!(chars[j], '.' | '!' | '?' | '"' | '\'' | ')' | ']' | '”' | '’') {
                    j += 1;
                }
                let at_break = j >= chars.len() || chars[j].is_whitespace();
                if at_break && !(c == '.' && j == i + 1 && is_abbreviation(&chars[start..i])) {
                    push_sentence(&mut out, &chars[start..j]);
                    start = j;
                }
                i = j;
            } else {
                i += 1;
            }
        }
        push_sentence(&mut out, &chars[start..]);
    }
    out
}

fn is_abbreviation(before: &[char]) -> bool {
    let word: String = before.iter().rev().take_while(|c| !c.is_whitespace() && **c != '(').collect::<Vec<_>>().into_iter().rev().collect();
    let w = word.to_lowercase();
    (w.chars().count() == 1 && w.chars().all(|c| c.is_alphabetic())) || ABBREVIATIONS.contains(&w.as_str())
}

fn push_sentence(out: &mut Vec<String>, chars: &[char]) {
    let s: String = chars.iter().collect();
    let s = s.trim();
    if s.chars().any(|c| c.is_alphanumeric()) {
        out.push(s.to_string());
    }
}

/// Words: whitespace-separated tokens containing at least one letter or digit.
pub fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().filter(|w| w.chars().any(|c| c.is_alphanumeric())).collect()
}

pub fn word_count(text: &str) -> usize {
    words(text).len()
}

/// Syllables of one English word by the usual vowel-group heuristic: count groups of vowels
/// (y counts as a vowel after the first letter), drop a silent final "e" (but not "-le" after a
/// consonant), count "-ed"/"-es" endings as silent after most consonants, at least one per word.
pub fn syllables(word: &str) -> usize {
    let w: Vec<char> = word.to_lowercase().chars().filter(|c| c.is_ascii_alphabetic()).collect();
    if w.is_empty() {
        // Numbers and symbols: one "syllable" per token keeps the formula defined.
        return usize::from(word.chars().any(|c| c.is_alphanumeric()));
    }
    if w.len() <= 3 {
        return 1;
    }
    let vowel = |i: usize| matches!(w[i], 'a' | 'e' | 'i' | 'o' | 'u') || (w[i] == 'y' && i > 0);
    let mut count = 0;
    let mut prev = false;
    for i in 0..w.len() {
        let v = vowel(i);
        if v && !prev {
            count += 1;
        }
        prev = v;
    }
    let n = w.len();
    let ends = |s: &str| w.iter().collect::<String>().ends_with(s);
    if w[n - 1] == 'e' && !vowel(n - 2) && !(w[n - 2] == 'l' && n >= 3 && !vowel(n - 3)) {
        count -= 1; // silent e: "make", "care"; but "table" keeps it
    } else if (ends("ed") || ends("es")) && n >= 4 && !vowel(n - 3) {
        // "asked", "hopes" are one fewer; "wanted", "needed", "boxes", "pieces" are not
        let c = w[n - 3];
        let keeps = if ends("ed") { matches!(c, 't' | 'd') } else { matches!(c, 's' | 'x' | 'z' | 'c' | 'g' | 'h') };
        if !keeps {
            count -= 1;
        }
    }
    count.max(1)
}

/// Readability of a text.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Readability {
    pub words: usize,
    pub sentences: usize,
    pub syllables: usize,
    /// 0.39·(words/sentence) + 11.8·(syllables/word) − 15.59; 0 for empty text.
    pub fk_grade: f64,
}

/// Flesch–Kincaid grade level (Kincaid et al. 1975) with [`split_sentences`] and [`syllables`].
pub fn readability(text: &str) -> Readability {
    let ws = words(text);
    let sentences = split_sentences(text).len().max(usize::from(!ws.is_empty()));
    let syl: usize = ws.iter().map(|w| syllables(w)).sum();
    let fk_grade = if ws.is_empty() { 0.0 } else { fk_grade_from_counts(ws.len(), sentences, syl) };
    Readability { words: ws.len(), sentences, syllables: syl, fk_grade }
}

/// The formula on counts.
pub fn fk_grade_from_counts(words: usize, sentences: usize, syllables: usize) -> f64 {
    0.39 * words as f64 / sentences.max(1) as f64 + 11.8 * syllables as f64 / words.max(1) as f64 - 15.59
}

pub fn fk_grade(text: &str) -> f64 {
    readability(text).fk_grade
}
