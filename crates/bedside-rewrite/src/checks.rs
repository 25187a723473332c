//! Acceptance checks for one rewrite. Each failure is a [`Reason`] with a stable `code`:
//!
//! | code | rule |
//! |---|---|
//! | `empty` | the patient turn or the answer is empty |
//! | `truncated` | generation hit its token limit (the text is cut off) |
//! | `answer-number-missing` | a number of `answer_neutral` is absent from `answer` |
//! | `answer-number-added` | `answer` has a number found in none of `answer_neutral`, `patient_neutral`, `patient` |
//! | `patient-number-missing` | a number of `patient_neutral` is absent from `patient` |
//! | `patient-number-added` | `patient` has a number absent from `patient_neutral` |
//! | `patient-question-missing` | a question of `patient_neutral` has no counterpart in `patient` |
//! | `key-fact-missing` | a fact of the check set did not survive in `answer` |
//! | `red-flag-missing` | a red flag's content words are not all in `answer` |
//! | `emotion-missing` | `patient` has no lexicon word of the target emotion ([`crate::emotions`]) |
//! | `not-more-comforting` | the [`ComfortScorer`] does not score `answer` above `answer_neutral` |
//! | `patient-length`, `answer-length` | word count outside `[min_ratio, max_ratio]` × the neutral text's |
//!
//! **Facts.** The check set is the record's `key_facts`; when it has none, it is derived from
//! `answer_neutral` ([`check_set`]): each sentence with salient words (content words of ≥ 5
//! letters outside [`GENERIC_WORDS`]) is a derived fact. A fact survives lexically when all its
//! content words occur in the answer (for `key_facts`: the rule of `bedside data validate`) or, for
//! a derived fact, at least two thirds of its salient words; or semantically when a
//! [`Similarity`] (MiniLM) is configured and the best cosine between the fact and a sentence of the
//! answer reaches `fact_similarity`. Semantic survival counts for `key_facts` only with
//! `semantic_key_facts` (off by default, because such a record then fails `validate`'s lexical
//! `key-fact` rule).
//!
//! **Questions.** A question is a sentence of `patient_neutral` ending in `?`. It survives when at
//! least half of its content words occur in `patient` and `patient` asks something (has a `?`),
//! or the semantic rule above holds against `patient`'s sentences.

use std::collections::BTreeSet;

use anyhow::Result;
use bedside_data::text::{content_words, is_content_word, missing_words, number_set, word_count, words};
use bedside_data::Dialogue;
use serde::{Deserialize, Serialize};

use crate::emotions;

/// Why an attempt was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: String,
    pub detail: String,
}

impl Reason {
    fn new(code: &str, detail: impl Into<String>) -> Self {
        Reason { code: code.to_string(), detail: detail.into() }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// Words too common in clinical prose to identify a fact.
pub const GENERIC_WORDS: &[&str] = &[
    "usually",
    "often",
    "sometimes",
    "people",
    "person",
    "important",
    "really",
    "common",
    "commonly",
    "things",
    "something",
    "however",
    "although",
    "because",
    "which",
    "there",
    "other",
    "others",
    "another",
    "might",
    "could",
    "would",
    "should",
    "these",
    "those",
    "their",
    "about",
    "doctor",
    "doctors",
    "worth",
    "helpful",
    "help",
    "likely",
    "unlikely",
    "possible",
    "possibly",
    "times",
    "while",
    "where",
    "whether",
    "including",
    "include",
    "includes",
    "check",
    "checked",
    "checks",
    "first",
    "next",
    "several",
    "certain",
    "generally",
    "especially",
    "usual",
    "reason",
    "reasons",
    "simple",
    "different",
    "mostly",
    "still",
    "today",
    "always",
    "rather",
    "quite",
];

/// A fact to check in the rewritten answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub text: String,
    /// From `key_facts` (true) or derived from `answer_neutral` (false).
    pub explicit: bool,
    /// The words that must be present: all content words (explicit) or the salient words (derived).
    pub words: Vec<String>,
}

/// Sentences of `text`: split after `.`, `!` or `?` followed by whitespace (so `38.5` stays whole).
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        cur.push(c);
        let end = matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        if end {
            let s = cur.trim().to_string();
            if !s.is_empty() {
                out.push(s);
            }
            cur.clear();
        }
    }
    let s = cur.trim().to_string();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// The question sentences of `text`.
pub fn questions(text: &str) -> Vec<String> {
    sentences(text).into_iter().filter(|s| s.trim_end().ends_with('?')).collect()
}

fn salient_words(s: &str) -> Vec<String> {
    content_words(s)
        .into_iter()
        .filter(|w| w.chars().filter(|c| c.is_alphabetic()).count() >= 5 && !GENERIC_WORDS.contains(&w.as_str()))
        .collect()
}

/// The facts a rewrite must keep: the record's `key_facts`, or, when it has none, one derived fact
/// per sentence of `answer_neutral` that has salient words.
pub fn check_set(d: &Dialogue) -> Vec<Fact> {
    let explicit: Vec<Fact> = d
        .key_facts
        .iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| Fact { text: f.trim().to_string(), explicit: true, words: content_words(f) })
        .collect();
    if !explicit.is_empty() {
        return explicit;
    }
    sentences(&d.answer_neutral)
        .into_iter()
        .filter_map(|s| {
            let w = salient_words(&s);
            (!w.is_empty()).then_some(Fact { text: s, explicit: false, words: w })
        })
        .collect()
}

/// Semantic similarity (MiniLM sentence embeddings in the CLI).
pub trait Similarity {
    /// The highest cosine similarity between `query` and any of `candidates` (−1 when none).
    fn max_similarity(&self, query: &str, candidates: &[String]) -> Result<f32>;
}

/// Scores how comforting answers are; higher is more comforting. The project's empathy scorer can
/// stand in for [`HeuristicComfort`].
pub trait ComfortScorer {
    /// A short name, recorded with rejections.
    fn name(&self) -> &str;
    /// One score per `(patient, answer)` pair.
    fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f64>>;
}

/// Phrases that validate or acknowledge a feeling (matched on lower-cased text with straight
/// apostrophes).
pub const VALIDATION_PHRASES: &[&str] = &[
    "i understand",
    "understandable",
    "it makes sense",
    "makes sense that",
    "that sounds",
    "sounds really",
    "sounds very",
    "sounds so",
    "i'm sorry",
    "i am sorry",
    "sorry to hear",
    "you're not alone",
    "you are not alone",
    "it's natural",
    "it is natural",
    "completely natural",
    "normal to feel",
    "many people feel",
    "i can hear",
    "i can see why",
    "i can imagine",
    "must be",
    "must feel",
    "thank you for telling",
    "thank you for sharing",
    "glad you asked",
    "glad you reached out",
    "okay to feel",
    "ok to feel",
    "that's a lot",
    "takes courage",
    "you did the right thing",
    "right to ask",
    "right to get",
    "here to help",
    "i hear you",
    "of course you",
    "no wonder",
    "so hard",
    "really hard",
    "very hard",
    "difficult for you",
    "hard for you",
    "together",
    "reassur",
    "you're doing",
    "you are doing",
    "go easy on yourself",
    "very human",
    "far from alone",
    "not alone",
    "good that you",
    "good you're",
    "right step",
    "sound so",
    "sounds painful",
    "it's hard",
    "it is hard",
    "is hard",
    "so common",
    "common to feel",
    "fair to feel",
    "it's fair",
    "it is fair",
    "easy for your mind",
    "don't blame",
    "not your fault",
    "nothing you did",
    "not something you",
    "please don't",
    "completely normal",
    "entirely normal",
    "understand why",
    "that must",
    "a lot to take in",
    "a lot to carry",
    "you're right",
    "you are right",
    "well done",
    "brave",
    "care about",
    "loving",
    "sorry",
    "take this one step",
    "step by step",
    "not a failure",
    "not weak",
    "nothing to be ashamed",
    "nothing to be embarrassed",
    "no need to feel",
];

/// The documented heuristic comfort score of an answer:
/// `min(3, distinct validation phrases) + 1 if it names a feeling (any emotion-lexicon word) +
/// 1 if it asks the patient a question (any sentence ending in `?`)`.
/// The patient text is not used.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeuristicComfort;

impl HeuristicComfort {
    pub fn score_one(answer: &str) -> f64 {
        let t = answer.to_lowercase().replace(['\u{2019}', '\u{2018}'], "'");
        let phrases = VALIDATION_PHRASES.iter().filter(|p| t.contains(*p)).count().min(3);
        let feeling = emotions::names_a_feeling(answer) as usize;
        let explores = !questions(answer).is_empty() as usize;
        (phrases + feeling + explores) as f64
    }
}

impl ComfortScorer for HeuristicComfort {
    fn name(&self) -> &str {
        "heuristic-v1"
    }
    fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f64>> {
        Ok(pairs.iter().map(|(_, a)| Self::score_one(a)).collect())
    }
}

/// Thresholds of the checks.
#[derive(Debug, Clone)]
pub struct AcceptOptions {
    /// Word-count ratio bounds (inclusive) against the neutral text, for both turns.
    pub min_ratio: f64,
    pub max_ratio: f64,
    /// MiniLM cosine at or above which a fact or question counts as kept.
    pub fact_similarity: f32,
    /// Let semantic similarity rescue `key_facts` too (not only derived facts).
    pub semantic_key_facts: bool,
    /// Share of a derived fact's salient words that must be present.
    pub derived_word_share: f64,
    /// Share of a question's content words that must be present.
    pub question_word_share: f64,
}

impl Default for AcceptOptions {
    fn default() -> Self {
        AcceptOptions {
            min_ratio: 0.8,
            max_ratio: 2.5,
            fact_similarity: 0.8,
            semantic_key_facts: false,
            derived_word_share: 2.0 / 3.0,
            question_word_share: 0.5,
        }
    }
}

/// Runs the checks.
pub struct Checker {
    pub opts: AcceptOptions,
    pub similarity: Option<Box<dyn Similarity>>,
    pub comfort: Box<dyn ComfortScorer>,
}

impl Checker {
    /// Lexical checks and the heuristic comfort score only.
    pub fn lexical(opts: AcceptOptions) -> Self {
        Checker { opts, similarity: None, comfort: Box::new(HeuristicComfort) }
    }

    fn semantic(&self, text: &str, against: &str) -> Result<Option<f32>> {
        match &self.similarity {
            Some(s) => Ok(Some(s.max_similarity(text, &sentences(against))?)),
            None => Ok(None),
        }
    }

    /// Every reason the rewrite (`patient`, `answer` for `d` with target `emotion`) fails; empty
    /// when it is accepted.
    pub fn check(&self, d: &Dialogue, emotion: &str, patient: &str, answer: &str) -> Result<Vec<Reason>> {
        let o = &self.opts;
        let mut r = Vec::new();
        if patient.trim().is_empty() {
            r.push(Reason::new("empty", "the rewritten patient turn is empty"));
        }
        if answer.trim().is_empty() {
            r.push(Reason::new("empty", "the rewritten answer is empty"));
        }
        if !r.is_empty() {
            return Ok(r);
        }

        // Numbers.
        let (pn, an) = (number_set(&d.patient_neutral), number_set(&d.answer_neutral));
        let (pr, ar) = (number_set(patient), number_set(answer));
        let missing: Vec<&String> = an.difference(&ar).collect();
        if !missing.is_empty() {
            r.push(Reason::new("answer-number-missing", format!("numbers of the neutral answer missing: {}", join(&missing))));
        }
        let allowed: BTreeSet<&String> = an.iter().chain(&pn).chain(&pr).collect();
        let added: Vec<&String> = ar.iter().filter(|n| !allowed.contains(n)).collect();
        if !added.is_empty() {
            r.push(Reason::new("answer-number-added", format!("numbers not in the source texts: {}", join(&added))));
        }
        let missing: Vec<&String> = pn.difference(&pr).collect();
        if !missing.is_empty() {
            r.push(Reason::new("patient-number-missing", format!("numbers of the neutral patient turn missing: {}", join(&missing))));
        }
        let added: Vec<&String> = pr.difference(&pn).collect();
        if !added.is_empty() {
            r.push(Reason::new("patient-number-added", format!("numbers not in the neutral patient turn: {}", join(&added))));
        }

        // Questions of the patient.
        let have: BTreeSet<String> = words(patient).into_iter().collect();
        let asks = patient.contains('?');
        for (i, q) in questions(&d.patient_neutral).iter().enumerate() {
            let cw = content_words(q);
            let present = cw.iter().filter(|w| have.contains(*w)).count();
            let lexical = asks && (cw.is_empty() || present as f64 >= o.question_word_share * cw.len() as f64);
            if lexical {
                continue;
            }
            let sim = self.semantic(q, patient)?;
            if sim.is_some_and(|s| s >= o.fact_similarity) && asks {
                continue;
            }
            r.push(Reason::new(
                "patient-question-missing",
                format!(
                    "question {} ({present} of {} content words kept{}{})",
                    i + 1,
                    cw.len(),
                    if asks { "" } else { "; the rewrite asks nothing" },
                    sim.map(|s| format!("; similarity {s:.2}")).unwrap_or_default()
                ),
            ));
        }

        // Facts and red flags of the answer.
        for (i, f) in check_set(d).iter().enumerate() {
            let (ok, detail) = if f.explicit {
                let miss = missing_words(&f.text, answer);
                (miss.is_empty(), format!("key fact {} missing words: {}", i + 1, miss.join(", ")))
            } else {
                let ah: BTreeSet<String> = words(answer).into_iter().collect();
                let miss: Vec<&String> = f.words.iter().filter(|w| !ah.contains(*w)).collect();
                let kept = f.words.len() - miss.len();
                (
                    kept as f64 >= o.derived_word_share * f.words.len() as f64,
                    format!("derived fact {} ({kept} of {} salient words kept; missing: {})", i + 1, f.words.len(), join(&miss)),
                )
            };
            if ok {
                continue;
            }
            let sim = if f.explicit && !o.semantic_key_facts { None } else { self.semantic(&f.text, answer)? };
            if sim.is_some_and(|s| s >= o.fact_similarity) {
                continue;
            }
            let detail = match sim {
                Some(s) => format!("{detail}; best similarity {s:.2} < {:.2}", o.fact_similarity),
                None => detail,
            };
            r.push(Reason::new("key-fact-missing", detail));
        }
        for (i, flag) in d.red_flags.iter().enumerate() {
            let miss = missing_words(flag, answer);
            if !miss.is_empty() {
                r.push(Reason::new("red-flag-missing", format!("red flag {} missing words: {}", i + 1, miss.join(", "))));
            }
        }

        // Emotion.
        if !emotions::expresses(emotion, patient) {
            let examples: Vec<&str> = emotions::lexicon(emotion).unwrap_or(&[]).iter().take(4).copied().collect();
            r.push(Reason::new("emotion-missing", format!("no word expressing `{emotion}` (e.g. {})", examples.join(", "))));
        }

        // Comfort.
        let scores = self.comfort.score(&[(patient, answer), (patient, &d.answer_neutral)])?;
        if let [new, old] = scores[..] {
            if new.partial_cmp(&old) != Some(std::cmp::Ordering::Greater) {
                r.push(Reason::new(
                    "not-more-comforting",
                    format!("{} score {new:.2} is not above the neutral answer's {old:.2}", self.comfort.name()),
                ));
            }
        }

        // Lengths.
        for (code, new, old) in [("patient-length", patient, &d.patient_neutral), ("answer-length", answer, &d.answer_neutral)] {
            let (n, m) = (word_count(new), word_count(old));
            let ratio = n as f64 / m.max(1) as f64;
            if ratio < o.min_ratio || ratio > o.max_ratio {
                r.push(Reason::new(code, format!("{n} words is {ratio:.2}× the neutral {m}, outside {}–{}×", o.min_ratio, o.max_ratio)));
            }
        }
        Ok(r)
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Whether a word list contains only content words (used by tests and docs).
pub fn all_content(ws: &[String]) -> bool {
    ws.iter().all(|w| is_content_word(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neutral() -> Dialogue {
        Dialogue {
            id: "t-1".into(),
            patient_neutral: "I am 58 and my heart rate was 140 during an episode of palpitations lasting an hour. \
                              What could this be, and what should I do?"
                .into(),
            answer_neutral: "A fast irregular heartbeat can be caused by atrial fibrillation. The next step is an ECG \
                             and a heart monitor worn for several days. Call emergency services if you have chest pain \
                             or fainting. A heart rate of 140 at rest needs a prompt review."
                .into(),
            key_facts: vec!["a fast irregular heartbeat can be caused by atrial fibrillation".into(), "an ECG is the next step".into()],
            red_flags: vec!["chest pain".into(), "fainting".into()],
            ..Dialogue::default()
        }
    }

    const PATIENT: &str = "I'm really scared. I am 58 and my heart rate was 140 during an episode of palpitations \
                           lasting an hour, and I can't stop thinking about it. What could this be, and what should I do?";
    const ANSWER: &str = "It's completely understandable that this frightened you, and I'm glad you asked. A fast \
                          irregular heartbeat can be caused by atrial fibrillation. The next step is an ECG and a heart \
                          monitor worn for several days. Call emergency services if you have chest pain or fainting. \
                          A heart rate of 140 at rest needs a prompt review. Have you noticed what tends to set the \
                          episodes off?";

    fn codes(r: &[Reason]) -> Vec<&str> {
        r.iter().map(|x| x.code.as_str()).collect()
    }

    #[test]
    fn a_faithful_comforting_rewrite_passes() {
        let c = Checker::lexical(AcceptOptions::default());
        let r = c.check(&neutral(), "afraid", PATIENT, ANSWER).unwrap();
        assert!(r.is_empty(), "{r:?}");
        assert!(HeuristicComfort::score_one(ANSWER) >= 3.0);
        assert_eq!(HeuristicComfort::score_one(&neutral().answer_neutral), 0.0);
    }

    #[test]
    fn dropped_numbers_facts_and_red_flags_are_named() {
        let c = Checker::lexical(AcceptOptions::default());
        let answer = ANSWER.replace("140", "150").replace("atrial fibrillation", "a rhythm problem").replace(" or fainting", "");
        let r = c.check(&neutral(), "afraid", PATIENT, &answer).unwrap();
        assert_eq!(codes(&r), ["answer-number-missing", "answer-number-added", "key-fact-missing", "red-flag-missing"], "{r:?}");
        assert!(r[0].detail.contains("140") && r[1].detail.contains("150"));
        assert!(r[2].detail.contains("key fact 1") && r[2].detail.contains("atrial") && r[2].detail.contains("fibrillation"));
        assert!(r[3].detail.contains("red flag 2") && r[3].detail.contains("fainting"));
    }

    #[test]
    fn patient_numbers_questions_and_emotion() {
        let c = Checker::lexical(AcceptOptions::default());
        let patient = "I am 58 and my heart rate was 104 during an episode of palpitations lasting an hour. It happens \
                       a lot and I would like to understand it better because it keeps coming back to me.";
        let r = c.check(&neutral(), "afraid", patient, ANSWER).unwrap();
        assert_eq!(codes(&r), ["patient-number-missing", "patient-number-added", "patient-question-missing", "emotion-missing"], "{r:?}");
        // The right emotion word for another target is still missing.
        let r = c.check(&neutral(), "lonely", PATIENT, ANSWER).unwrap();
        assert_eq!(codes(&r), ["emotion-missing"]);
        assert!(r[0].detail.contains("`lonely`"));
    }

    #[test]
    fn comfort_and_length_bounds() {
        let c = Checker::lexical(AcceptOptions::default());
        let d = neutral();
        // The neutral answer itself is not more comforting than itself.
        let r = c.check(&d, "afraid", PATIENT, &d.answer_neutral).unwrap();
        assert_eq!(codes(&r), ["not-more-comforting"]);
        let long = format!("{ANSWER} {}", "More words here. ".repeat(60));
        let r = c.check(&d, "afraid", PATIENT, &long).unwrap();
        assert_eq!(codes(&r), ["answer-length"]);
        let r = c.check(&d, "afraid", "Scared. 58 140?", ANSWER).unwrap();
        assert!(codes(&r).contains(&"patient-length"), "{r:?}");
        assert_eq!(codes(&c.check(&d, "afraid", " ", ANSWER).unwrap()), ["empty"]);
    }

    #[test]
    fn derived_facts_when_key_facts_are_empty() {
        let mut d = neutral();
        d.key_facts.clear();
        let set = check_set(&d);
        assert_eq!(set.len(), 4);
        assert!(set.iter().all(|f| !f.explicit && all_content(&f.words)));
        assert!(set[0].words.contains(&"fibrillation".to_string()));
        let c = Checker::lexical(AcceptOptions::default());
        assert!(c.check(&d, "afraid", PATIENT, ANSWER).unwrap().is_empty());
        let cut = ANSWER.replace(" The next step is an ECG and a heart monitor worn for several days.", "");
        let r = c.check(&d, "afraid", PATIENT, &cut).unwrap();
        assert_eq!(codes(&r), ["key-fact-missing"]);
        assert!(r[0].detail.starts_with("derived fact 2"), "{r:?}");
    }

    struct Fixed(f32);
    impl Similarity for Fixed {
        fn max_similarity(&self, _: &str, _: &[String]) -> Result<f32> {
            Ok(self.0)
        }
    }

    #[test]
    fn similarity_rescues_derived_facts_and_key_facts_only_when_allowed() {
        let mut d = neutral();
        let paraphrase = ANSWER.replace("atrial fibrillation", "an irregular rhythm called AF");
        let mut c = Checker::lexical(AcceptOptions::default());
        c.similarity = Some(Box::new(Fixed(0.9)));
        assert_eq!(codes(&c.check(&d, "afraid", PATIENT, &paraphrase).unwrap()), ["key-fact-missing"]);
        c.opts.semantic_key_facts = true;
        assert!(c.check(&d, "afraid", PATIENT, &paraphrase).unwrap().is_empty());
        c.similarity = Some(Box::new(Fixed(0.5)));
        let r = c.check(&d, "afraid", PATIENT, &paraphrase).unwrap();
        assert!(r[0].detail.contains("similarity 0.50 < 0.80"), "{r:?}");
        d.key_facts.clear();
        c.similarity = Some(Box::new(Fixed(0.85)));
        c.opts.semantic_key_facts = false;
        let cut = ANSWER.replace("The next step is an ECG and a heart monitor worn for several days.", "Tests follow.");
        assert!(c.check(&d, "afraid", PATIENT, &cut).unwrap().is_empty());
    }
}
