//! Negation and polarity of English clauses, for the knowledge and safety checks: "do not drive
//! after the sedative" and "you can drive after the sedative" share their words but say opposite
//! things.
//!
//! The rules (a small NegEx-style reading, Chapman et al. 2001, at clause level):
//! - Text is split into words and clauses. A clause ends at `, ; : . ! ? — –` and before a
//!   connective that starts a new proposition (`and`, `but`, `however`, `although`, `because`,
//!   `so`, `then`, `while`, `whereas`, `if`, `unless`, `when`, `until`, `which`, `who`, `otherwise`,
//!   `instead`, `rather`, `except`). `or` and `nor` never start one, even after a comma ("do not
//!   drive or cycle", "do not call them now, or 999"), nor do examples after a comma (`such as`,
//!   `including`, `especially`: "do not tell an adult, such as a parent"); brackets do not either.
//! - A clause's negation count is the number of cue words in it: `not`, `no`, `never`, `cannot`,
//!   every `…n't` (also written without the apostrophe: `dont`, `isnt`), `none`, `nothing`,
//!   `nobody`, `neither`, `nor`, `rarely`, `seldom`, `hardly`, `barely`, and the verbs
//!   that negate what follows them: `avoid`, `stop`, `quit`, `refrain`, `hesitate`, `delay`,
//!   `ignore`, `neglect`, `forget`, `fail` (in any inflection). A word is *negated* when its
//!   clause's count is odd, so "never stop suddenly" is not a negation of "suddenly" and "don't
//!   hesitate to call" asks to call. Such a verb after `to`, `by` or `from` starts its own
//!   clause ("press firmly to stop the bleeding" still asks to press). `without` negates only
//!   the words after it ("many settle on their own without treatment").
//! - A cue followed (directly or after `be`, `feel`, `get`) by a word about the reader's feelings
//!   (`worry`, `panic`, `fear`, `afraid`, `blame`, `ashamed`, …) negates only that word: "don't
//!   worry, you can drive" and "do not worry you can drive" both leave "drive" affirmed.
//! - A clause opened by `if`, `unless`, `whether` or `in case` is *hypothetical*: it asserts
//!   nothing ("if you stop them suddenly, …").
//!
//! Antonyms ("rare" against "common") and quantities ("always" against "occasionally") are not
//! polarity here; a contradiction written that way is not detected.

use crate::porter;

/// One word of a text with its clause's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// Lower case, typographic apostrophes folded to `'`.
    pub text: String,
    /// Byte range in the original text.
    pub start: usize,
    pub end: usize,
    /// Index of the clause the word belongs to.
    pub clause: usize,
    /// The word is a negation cue.
    pub cue: bool,
    /// An odd number of cues in its clause (see the module docs).
    pub negated: bool,
    /// The word sits in a hypothetical clause.
    pub hypothetical: bool,
}

const CLAUSE_PUNCT: &[char] = &[',', ';', ':', '.', '!', '?', '—', '–'];

const CONNECTIVES: &[&str] = &[
    "and",
    "but",
    "however",
    "although",
    "though",
    "because",
    "so",
    "then",
    "while",
    "whereas",
    "if",
    "unless",
    "when",
    "whenever",
    "until",
    "which",
    "who",
    "otherwise",
    "instead",
    "rather",
    "except",
    "whether",
];

const HYPOTHETICAL: &[&str] = &["if", "unless", "whether"];

const CUES: &[&str] = &[
    "not", "no", "never", "cannot", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without", "rarely", "seldom", "hardly",
    "barely", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "cant", "couldnt", "shouldnt", "wouldnt", "wont", "mustnt",
    "neednt", "havent", "hasnt", "hadnt",
];

/// Verbs that negate their complement, by Porter stem ("avoid", "avoiding", "avoided" → "avoid").
const CUE_VERB_STEMS: &[&str] = &["avoid", "stop", "quit", "refrain", "hesit", "delai", "ignor", "neglect", "forget", "fail"];

/// Words about the reader's feelings: a cue right before one negates only it.
const EMOTIVE_STEMS: &[&str] = &[
    "worri",
    "panic",
    "fear",
    "afraid",
    "blame",
    "asham",
    "embarrass",
    "guilti",
    "scare",
    "alarm",
    "apologis",
    "apolog",
    "fret",
    "stress",
    "feel",
];

/// Whether `w` (lower case, apostrophes folded) is a negation cue.
pub fn is_cue(w: &str) -> bool {
    if w.ends_with("n't") {
        return true;
    }
    CUES.contains(&w) || CUE_VERB_STEMS.contains(&porter::stem(w).as_str())
}

fn is_emotive(w: &str) -> bool {
    EMOTIVE_STEMS.contains(&porter::stem(w).as_str())
}

/// Lower-case and fold typographic apostrophes and quotes, so "don’t" reads as "don't".
pub fn normalise(s: &str) -> String {
    s.replace(['\u{2019}', '\u{2018}', '\u{02BC}'], "'").replace(['\u{201C}', '\u{201D}'], "\"").to_lowercase()
}

enum Piece {
    Word(String, usize, usize),
    Break,
}

fn pieces(text: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let c2 = match c {
            '\u{2019}' | '\u{2018}' | '\u{02BC}' => '\'',
            _ => c,
        };
        if c2.is_alphanumeric() || (c2 == '\'' && !cur.is_empty()) {
            if cur.is_empty() {
                start = i;
            }
            cur.extend(c2.to_lowercase());
        } else {
            if !cur.is_empty() {
                out.push(Piece::Word(std::mem::take(&mut cur).trim_end_matches('\'').to_string(), start, i));
            }
            if CLAUSE_PUNCT.contains(&c2) {
                out.push(Piece::Break);
            }
        }
    }
    if !cur.is_empty() {
        out.push(Piece::Word(cur.trim_end_matches('\'').to_string(), start, text.len()));
    }
    out
}

/// Words of `text` with their clause, cue and negation readings.
pub fn analyse(text: &str) -> Vec<Word> {
    // Words, and before each whether a clause break precedes it.
    let mut ws: Vec<(String, usize, usize, bool)> = Vec::new();
    let mut pending_break = false;
    for p in pieces(text) {
        match p {
            Piece::Break => pending_break = true,
            Piece::Word(w, s, e) => {
                ws.push((w, s, e, pending_break));
                pending_break = false;
            }
        }
    }
    let n = ws.len();
    // A comma before "or"/"nor" continues the clause: "do not call them now, or 999" negates both;
    // so does one before an example ("do not tell an adult, such as a parent").
    let mut breaks: Vec<bool> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let example =
                (w.0 == "such" && ws.get(i + 1).is_some_and(|x| x.0 == "as")) || ["including", "especially"].contains(&w.0.as_str());
            w.3 && w.0 != "or" && w.0 != "nor" && !example
        })
        .collect();
    for i in 0..n {
        let w = ws[i].0.as_str();
        let next = ws.get(i + 1).map(|x| x.0.as_str());
        if CONNECTIVES.contains(&w) || (w == "in" && next == Some("case")) {
            breaks[i] = true;
        }
        // "press to stop the bleeding", "reduce attacks by avoiding fat": the cue verb's clause
        // starts at its `to`/`by`/`from`.
        if ["to", "by", "from"].contains(&w) && next.is_some_and(|x| CUE_VERB_STEMS.contains(&porter::stem(x).as_str())) {
            breaks[i] = true;
        }
    }
    // A cue right before a feeling word (optionally after be/get/to) negates only that word.
    for i in 0..n {
        if !is_cue(&ws[i].0) {
            continue;
        }
        let mut j = i + 1;
        while j < n && !breaks[j] && ["be", "get", "to"].contains(&ws[j].0.as_str()) {
            j += 1;
        }
        if j < n && !breaks[j] && is_emotive(&ws[j].0) && j + 1 < n {
            breaks[j + 1] = true;
        }
    }
    let mut words: Vec<Word> = Vec::with_capacity(n);
    let mut clause = 0usize;
    for (i, (w, s, e, _)) in ws.into_iter().enumerate() {
        if i > 0 && breaks[i] {
            clause += 1;
        }
        let cue = is_cue(&w);
        words.push(Word { text: w, start: s, end: e, clause, cue, negated: false, hypothetical: false });
    }
    let n_clauses = words.last().map_or(0, |w| w.clause + 1);
    let mut cues = vec![0usize; n_clauses];
    let mut hypo = vec![false; n_clauses];
    // "without" is a preposition: it negates what follows it in its clause, not the clause.
    let mut forward = vec![0usize; words.len()];
    for i in 0..words.len() {
        if words[i].text == "without" {
            for j in i + 1..words.len() {
                if words[j].clause != words[i].clause {
                    break;
                }
                forward[j] += 1;
            }
        }
    }
    for (i, w) in words.iter().enumerate() {
        if w.cue && w.text != "without" {
            cues[w.clause] += 1;
        }
        let opens = i == 0 || words[i - 1].clause != w.clause;
        if opens {
            let next = words.get(i + 1).filter(|x| x.clause == w.clause).map(|x| x.text.as_str());
            hypo[w.clause] = HYPOTHETICAL.contains(&w.text.as_str()) || (w.text == "in" && next == Some("case"));
        }
    }
    for (w, f) in words.iter_mut().zip(forward) {
        w.negated = (cues[w.clause] + f) % 2 == 1;
        w.hypothetical = hypo[w.clause];
    }
    words
}

/// Whether the whole text reads as negated: an odd number of cues outside hypothetical clauses.
pub fn text_negated(words: &[Word]) -> bool {
    words.iter().filter(|w| w.cue && !w.hypothetical).count() % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negated(text: &str, word: &str) -> bool {
        analyse(text).iter().find(|w| w.text == word).unwrap_or_else(|| panic!("{word} not in {text}")).negated
    }

    #[test]
    fn clause_level_negation() {
        assert!(negated("Do not drive after the sedative.", "drive"));
        assert!(!negated("Do not worry, you can drive after the sedative.", "drive"));
        assert!(!negated("Do not worry you can drive after the sedative.", "drive"));
        assert!(!negated("Don't be afraid: you can drive after the sedative.", "drive"));
        assert!(negated("Ectopic beats are not very common.", "ectopic"));
        assert!(negated("You shouldn’t drive today.", "drive"));
        assert!(negated("Avoid driving for a day.", "driving"));
        assert!(!negated("Prednisolone must never be stopped suddenly.", "suddenly"));
        assert!(negated("You can stop prednisolone suddenly.", "suddenly"));
        assert!(!negated("Don't hesitate to call 999.", "999"));
        assert!(negated("Don't call 999, just rest.", "999"));
        assert!(!negated("Don't call 999, just rest.", "rest"));
        assert!(!negated("Most are benign and do not produce hormones.", "benign"));
        assert!(negated("Most are benign and do not produce hormones.", "hormones"));
        assert!(negated("Do not drive or operate machinery.", "machinery"));
        assert!(!negated("I'm sorry you feel so depressed.", "depressed"));
        assert!(!negated("Press firmly on the wound to stop the bleeding.", "press"));
        assert!(negated("Press firmly on the wound to stop the bleeding.", "bleeding"));
        assert!(negated("Do not try to remove it with tweezers.", "tweezers"));
        assert!(!negated("Don't forget to call your GP.", "gp"));
        assert!(!negated("Call 999 without delay.", "999"));
        assert!(negated("Do not call a crisis line (US) now, or emergency services on 911.", "911"));
        assert!(negated("Do not tell a trusted adult, such as a parent or the school nurse.", "parent"));
        assert!(!negated("Tell a trusted adult, such as a parent, today.", "parent"));
        assert!(!negated("Plan a taper with your GP rather than stopping all at once.", "gp"));
        assert!(!negated("Many settle on their own without treatment.", "settle"));
        assert!(negated("Many settle on their own without treatment.", "treatment"));
    }

    #[test]
    fn hypothetical_clauses() {
        let w = analyse("If you stop them suddenly, seizures can return.");
        assert!(w.iter().filter(|w| w.clause == 0).all(|w| w.hypothetical));
        assert!(w.iter().find(|w| w.text == "seizures").is_some_and(|w| !w.hypothetical && !w.negated));
        assert!(analyse("In case of chest pain, call 999.").iter().find(|w| w.text == "chest").is_some_and(|w| w.hypothetical));
        assert!(!analyse("In most people it settles.").iter().any(|w| w.hypothetical));
    }

    #[test]
    fn whole_text_polarity() {
        assert!(text_negated(&analyse("Do not drive.")));
        assert!(!text_negated(&analyse("Never stop suddenly.")));
        assert!(!text_negated(&analyse("If it doesn't settle, call us.")));
        assert!(text_negated(&analyse("It heals without surgery.")));
    }
}
