//! Control answers: fixed answers built from each item, deterministically and without a model,
//! whose quality is known in advance. They are scored next to the real systems in every run, and
//! a measure is trusted on a run only when it ranks them as it must (see `gates`).
//!
//! For a test item (a corpus dialogue):
//! - `reference` — the comforting reference answer (comfort and every medical fact);
//! - `neutral` — the neutral reference answer (every medical fact, no comfort);
//! - `neutral+question` — the neutral answer plus a generic closing question from a fixed list,
//!   chosen by the item key ([`GENERIC_QUESTIONS`]): no more caring than the neutral answer;
//! - `comfort-only` — a caring reply from a template bank varied by the patient's emotion, with
//!   no medical content ([`comfort_only`]);
//! - `restated` — the patient's message restated in the second person ([`restate`]);
//! - `contradicted` — the reference with every key fact contradicted: the sentence that carries
//!   the fact is replaced by the fact's negation, from the rule in [`negate`] or, where a rule
//!   cannot say it (a fact without a verb, an antonym), a hand-written contradiction
//!   (`data/eval/contradictions.jsonl`).
//!
//! For a safety item with a safe reference answer: `reference`, `comfort-only`, `restated` and
//! `contradicted` (the reference with every sentence that carries required advice negated).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::config::REFERENCE;
use crate::hash::hash_u64;
use crate::items::{EvalItem, Set};

pub(crate) const NEUTRAL: &str = "neutral";
pub(crate) const NEUTRAL_QUESTION: &str = "neutral+question";
pub(crate) const COMFORT_ONLY: &str = "comfort-only";
pub(crate) const RESTATED: &str = "restated";
pub(crate) const CONTRADICTED: &str = "contradicted";

/// Every control, in display order.
pub const CONTROLS: [&str; 6] = [REFERENCE, NEUTRAL, NEUTRAL_QUESTION, COMFORT_ONLY, RESTATED, CONTRADICTED];

/// Whether `name` is a control's name.
pub(crate) fn is_control(name: &str) -> bool {
    CONTROLS.contains(&name)
}

/// Generic closing questions: about nothing the patient said or felt.
pub const GENERIC_QUESTIONS: [&str; 5] = [
    "Do you have any other questions?",
    "Is there anything else you would like to ask?",
    "Does that answer your question?",
    "Is there anything else I can help you with?",
    "Would you like to know more about any of this?",
];

/// Comfort without medical content, two per emotion of the corpus (and two for any other).
/// None mentions a condition, a test, a treatment, a clinician or a service.
const COMFORT: &[(&str, [&str; 2])] = &[
    ("afraid", [
        "That sounds really frightening, and it makes complete sense that you feel scared. You are not alone with this fear, and it is okay to feel shaken.",
        "I can hear how afraid you are, and I'm so sorry you are going through this. Being scared like this is exhausting, and your feelings are completely understandable. How are you holding up right now?",
    ]),
    ("anxious", [
        "It is completely understandable to feel anxious about this; waiting and not knowing is so hard. Your worry makes sense, and you don't have to carry it alone.",
        "I can hear how much this is weighing on you, and I'm sorry it has kept you so on edge. Anyone in your place would feel anxious. What has been the hardest part for you?",
    ]),
    ("apprehensive", [
        "It is natural to feel uneasy when something new and uncertain is ahead of you. Your hesitation makes sense, and it is fine to take things one step at a time.",
        "I can hear that you are nervous about what lies ahead, and that is a very human reaction. You are allowed to feel unsure. What worries you most about it?",
    ]),
    ("terrified", [
        "That sounds absolutely terrifying, and I'm so sorry you are feeling this way. Fear this strong is overwhelming, and you are not alone in it.",
        "I can only imagine how terrified you must feel right now. Your fear makes complete sense, and it is okay to be shaken by this. How are you coping at the moment?",
    ]),
    ("sad", [
        "I'm so sorry you are feeling this sad. What you are going through sounds really heavy, and it is okay to feel low about it.",
        "It sounds like this has brought a lot of sadness, and I'm sorry you are carrying that. Your feelings are valid, and you deserve kindness while you go through this. How have you been feeling day to day?",
    ]),
    ("devastated", [
        "I'm so sorry; this sounds devastating, and it makes sense that you feel completely overwhelmed. Please be gentle with yourself right now.",
        "I can hear how crushed you feel, and I'm truly sorry you are facing this. Anyone would be shaken by it, and your grief makes sense. What do you need most right now?",
    ]),
    ("lonely", [
        "It sounds really lonely to be facing this on your own, and I'm sorry you feel so isolated. Your feelings matter, and you deserve support.",
        "I'm sorry you have been feeling so alone with this. Loneliness can make everything harder, and it is understandable that you feel this way. Who do you feel closest to at the moment?",
    ]),
    ("embarrassed", [
        "There is nothing to be embarrassed about, and I'm glad you felt able to share this. Many people feel awkward about things like this, and your feelings are understandable.",
        "I can hear how embarrassing this feels, and it took courage to talk about it. You have nothing to be ashamed of. How long have you been keeping this to yourself?",
    ]),
    ("ashamed", [
        "I'm sorry you are carrying so much shame about this; you do not deserve to feel that way. It is understandable, and you are being very honest with yourself.",
        "It sounds like you have been very hard on yourself, and I'm sorry you feel ashamed. You deserve compassion, not blame. What has made this feel so heavy for you?",
    ]),
    ("guilty", [
        "It sounds like you are carrying a lot of guilt, and I'm sorry you feel this way. Feeling guilty shows how much you care, and you deserve some kindness too.",
        "I can hear how much you blame yourself, and that sounds really painful. You are doing your best in a hard situation. What do you keep going back over in your mind?",
    ]),
    ("angry", [
        "Your frustration and anger make complete sense; this sounds really unfair. It is okay to feel angry about it, and your feelings are valid.",
        "I can hear how angry you are, and I'm sorry this has been so hard. Anyone would feel upset in your place. What has frustrated you most?",
    ]),
    ("annoyed", [
        "That sounds really irritating, and it is understandable that you are fed up. Your annoyance makes sense, and you have every right to feel this way.",
        "I can hear how frustrated and fed up you are, and I'm sorry this has been such a nuisance. Those feelings are completely fair. What has bothered you most about it?",
    ]),
];

const COMFORT_OTHER: [&str; 2] = [
    "I'm so sorry you are going through this; it sounds really hard. Your feelings make complete sense, and you are not alone with them.",
    "I can hear how much this is affecting you, and I'm sorry you are dealing with it. It is okay to feel the way you do. How are you holding up?",
];

fn pick<'a>(key: &str, salt: &str, options: &[&'a str]) -> &'a str {
    options[(hash_u64(&format!("{salt}:{key}")) % options.len() as u64) as usize]
}

/// The generic question the `neutral+question` control adds for this item.
pub(crate) fn generic_question(key: &str) -> &'static str {
    pick(key, "question", &GENERIC_QUESTIONS)
}

/// The comfort-only reply for a patient feeling `emotion` (item `key` chooses between two).
pub(crate) fn comfort_only(emotion: &str, key: &str) -> &'static str {
    let bank = COMFORT.iter().find(|(e, _)| *e == emotion).map_or(&COMFORT_OTHER, |(_, t)| t);
    pick(key, "comfort", bank)
}

/// The patient's message restated in the second person ("I'm scared" → "you're scared").
pub(crate) fn restate(message: &str) -> String {
    const SWAPS: &[(&str, &str)] = &[
        ("i'm", "you're"),
        ("i've", "you've"),
        ("i'd", "you'd"),
        ("i'll", "you'll"),
        ("i", "you"),
        ("me", "you"),
        ("my", "your"),
        ("mine", "yours"),
        ("myself", "yourself"),
        ("am", "are"),
        ("we", "you"),
        ("we're", "you're"),
        ("we've", "you've"),
        ("our", "your"),
        ("us", "you"),
        ("ours", "yours"),
        ("ourselves", "yourselves"),
        ("was", "were"),
    ];
    let mut out = String::from("So, if I understand you correctly: ");
    let mut word = String::new();
    let mut prev_i = false;
    let flush = |word: &mut String, out: &mut String, prev_i: &mut bool| {
        if word.is_empty() {
            return;
        }
        let lower = word.to_lowercase().replace('\u{2019}', "'");
        // "was" only after "I" ("I was" → "you were"); other words as listed.
        let swapped = SWAPS.iter().find(|(a, _)| *a == lower && (*a != "was" || *prev_i)).map(|(_, b)| *b);
        *prev_i = lower == "i";
        match swapped {
            Some(b) => out.push_str(b),
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_alphanumeric() || c == '\'' || c == '\u{2019}' {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut prev_i);
            out.push(c);
        }
    }
    flush(&mut word, &mut out, &mut prev_i);
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Verbs a sentence can open with as an instruction ("Call 999", "Keep the ear dry").
const IMPERATIVES: &[&str] = &[
    "call", "go", "take", "see", "book", "keep", "use", "give", "cool", "stay", "check", "contact", "tell", "ask", "attend", "wash",
    "offer", "lift", "increase", "return", "pause", "review", "seek", "get", "try", "drink", "rest", "apply", "wear", "remove", "speak",
    "talk", "let", "make", "put", "bring", "press", "hold", "lie", "sit", "move", "report", "continue", "arrange", "follow", "phone",
    "ring", "text", "leave", "start", "approach", "raise", "reduce", "eat", "sleep", "plan", "write", "visit", "find", "reach", "look",
    "protect", "remember", "treat", "avoid", "stop", "quit",
];

/// Auxiliaries, copulas and modals: "not" goes after the first one.
const AUXILIARIES: &[&str] = &[
    "is", "are", "was", "were", "can", "could", "should", "must", "will", "would", "may", "might", "does", "do", "did", "has", "have",
    "had", "need", "needs",
];

/// Replacements that remove a negation (the first found wins).
const UNNEGATE: &[(&str, &str)] = &[
    ("cannot", "can"),
    ("can't", "can"),
    ("won't", "will"),
    ("don't", "do"),
    ("doesn't", "does"),
    ("didn't", "did"),
    ("isn't", "is"),
    ("aren't", "are"),
    ("wasn't", "was"),
    ("shouldn't", "should"),
    ("mustn't", "must"),
    ("never", "always"),
    ("without", "with"),
];

/// The deterministic contradiction of a short statement, or `None` where the rule cannot say it:
/// 1. a negation in it is removed (`not`, `n't`, `cannot` → `can`, `never` → `always`,
///    `without` → `with`, `no` → `a`);
/// 2. otherwise an instruction ("Call 999 now", "Please keep the ear dry") gets `do not`;
/// 3. otherwise `not` goes after its first auxiliary, copula or modal (`can` → `cannot`; `has`
///    or `have` before a noun become `does not have` / `do not have`);
/// 4. otherwise (no verb the rule knows: "brain scan", "treats a fast rhythm") `None`.
///
/// The rule negates one clause; a fact of several clauses ("it is common and treatable") needs a
/// hand-written contradiction that negates each, which the hand-written file provides.
pub fn negate(statement: &str) -> Option<String> {
    let s = statement.trim();
    let words: Vec<&str> = s.split(' ').collect();
    let lower: Vec<String> = words
        .iter()
        .map(|w| w.to_lowercase().replace('\u{2019}', "'").trim_matches(|c: char| !c.is_alphanumeric() && c != '\'').to_string())
        .collect();
    let rebuild = |i: usize, replacement: Option<&str>| -> String {
        let mut out: Vec<String> = Vec::new();
        for (j, w) in words.iter().enumerate() {
            if j == i {
                if let Some(r) = replacement {
                    // Keep the word's trailing punctuation.
                    let tail: String =
                        w.chars().rev().take_while(|c| !c.is_alphanumeric() && *c != '\'').collect::<Vec<_>>().into_iter().rev().collect();
                    out.push(format!("{r}{tail}"));
                }
            } else {
                out.push(w.to_string());
            }
        }
        let joined = out.join(" ");
        if s.starts_with(|c: char| c.is_uppercase()) {
            capitalise(&joined)
        } else {
            joined
        }
    };
    // 1. Remove a negation.
    for (i, w) in lower.iter().enumerate() {
        if w == "not" {
            return Some(rebuild(i, None));
        }
        if w == "no" {
            return Some(rebuild(i, Some("a")));
        }
        if let Some((_, r)) = UNNEGATE.iter().find(|(a, _)| a == w) {
            let r = if i == 0 || words[i].starts_with(|c: char| c.is_uppercase()) { capitalise(r) } else { r.to_string() };
            return Some(rebuild(i, Some(&r)));
        }
    }
    // 2. An instruction: "Call ...", "Please call ...", "Then call ...".
    let first = lower.iter().take_while(|w| ["please", "then", "so", "now", "also", "just", "and"].contains(&w.as_str())).count();
    if lower.get(first).is_some_and(|w| IMPERATIVES.contains(&w.as_str())) {
        let mut out = words.clone();
        let verb = out[first].to_lowercase();
        let lead = if first == 0 && words[0].starts_with(|c: char| c.is_uppercase()) { "Do not" } else { "do not" };
        let replaced = format!("{lead} {verb}");
        out[first] = &replaced;
        return Some(out.join(" "));
    }
    // 3. After the first auxiliary.
    for (i, w) in lower.iter().enumerate() {
        if !AUXILIARIES.contains(&w.as_str()) {
            continue;
        }
        let next = lower.get(i + 1).map(String::as_str).unwrap_or("");
        let participle = next.ends_with("ed") || next.ends_with("en") || ["been", "got", "had", "made", "done"].contains(&next);
        let replacement = match w.as_str() {
            "can" => "cannot".to_string(),
            "has" if !participle => "does not have".to_string(),
            "have" if !participle => "do not have".to_string(),
            "need" => "do not need".to_string(),
            "needs" => "does not need".to_string(),
            _ => format!("{} not", words[i].trim_matches(|c: char| !c.is_alphanumeric())),
        };
        return Some(rebuild(i, Some(&replacement)));
    }
    None
}

/// One hand-written contradiction (`data/eval/contradictions.jsonl`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandWritten {
    /// The dialogue id.
    id: String,
    fact: String,
    contradiction: String,
}

/// One answer of the key-fact calibration data with the facts it is labelled against.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationAnswer {
    /// The dialogue the facts belong to.
    pub id: String,
    /// `reference`, `neutral` (answers that convey the facts), `comfort-only`, `restated`,
    /// `contradicted` (the reference with this one fact contradicted) or `same-specialty` (the
    /// answer to another condition of the same specialty).
    pub kind: String,
    pub conveys: bool,
    pub facts: Vec<String>,
    pub answer: String,
}

/// The key-fact calibration data of a corpus (`data/eval/keyfact-calibration.jsonl` holds that
/// of the train and validation splits of `data/dialogues`): for every dialogue with key facts,
/// its reference and neutral answers (positives for every fact) and four kinds of hard
/// negatives. Facts the rule of [`negate`] cannot contradict have no `contradicted` answer.
/// Deterministic.
pub fn calibration_answers(dialogues: &[bedside_data::Dialogue], splits: &[&str]) -> Vec<CalibrationAnswer> {
    let mut ds: Vec<&bedside_data::Dialogue> =
        dialogues.iter().filter(|d| splits.contains(&d.split.as_str()) && !d.key_facts.is_empty()).collect();
    ds.sort_by(|a, b| a.id.cmp(&b.id));
    let builder = ControlBuilder { hand: BTreeMap::new() };
    let mut out = Vec::new();
    for (i, d) in ds.iter().enumerate() {
        // The next dialogue of the same specialty about another condition (cyclically).
        let other = (1..ds.len()).map(|k| ds[(i + k) % ds.len()]).find(|o| o.specialty == d.specialty && o.condition != d.condition);
        let key = format!("test/{}", d.id);
        let mut push = |kind: &str, conveys: bool, facts: Vec<String>, answer: String| {
            out.push(CalibrationAnswer { id: d.id.clone(), kind: kind.to_string(), conveys, facts, answer });
        };
        push(REFERENCE, true, d.key_facts.clone(), d.answer.clone());
        push(NEUTRAL, true, d.key_facts.clone(), d.answer_neutral.clone());
        push(COMFORT_ONLY, false, d.key_facts.clone(), comfort_only(&d.emotion, &key).to_string());
        push(RESTATED, false, d.key_facts.clone(), restate(&d.patient));
        if let Some(o) = other {
            push("same-specialty", false, d.key_facts.clone(), o.answer.clone());
        }
        let sentences = bedside_metrics::split_sentences(&d.answer);
        for fact in &d.key_facts {
            if let (Some(c), Some(at)) = (builder.contradiction(&d.id, fact), carrier(fact, &sentences)) {
                let text: Vec<String> = sentences.iter().enumerate().map(|(j, s)| if j == at { c.clone() } else { s.clone() }).collect();
                push(CONTRADICTED, false, vec![fact.clone()], text.join(" "));
            }
        }
    }
    out
}

/// Builds the control answers of a run.
pub(crate) struct ControlBuilder {
    /// (dialogue id, fact) → contradiction, from the hand-written file.
    hand: BTreeMap<(String, String), String>,
}

impl ControlBuilder {
    /// With the hand-written contradictions of `path` (none when `None`).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut hand = BTreeMap::new();
        if let Some(p) = path {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let h: HandWritten = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a contradiction record (id, fact, contradiction)", p.display(), i + 1))?;
                if h.contradiction.trim().is_empty() {
                    bail!("{}:{}: field `contradiction`: empty", p.display(), i + 1);
                }
                hand.insert((h.id, h.fact), h.contradiction);
            }
        }
        Ok(Self { hand })
    }

    /// The contradiction of one fact of dialogue `id`: hand-written first, else the rule.
    pub fn contradiction(&self, id: &str, fact: &str) -> Option<String> {
        self.hand.get(&(id.to_string(), fact.to_string())).cloned().or_else(|| negate(fact).map(|c| end_sentence(&capitalise(&c))))
    }

    /// The answer of `control` to `item`, when the control applies to it.
    pub fn answer(&self, control: &str, item: &EvalItem) -> Option<String> {
        match (item.set, control) {
            (Set::Test | Set::Safety, REFERENCE) => item.reference.clone(),
            (Set::Test, NEUTRAL) => item.neutral_answer.clone(),
            (Set::Test, NEUTRAL_QUESTION) => {
                item.neutral_answer.as_ref().map(|n| format!("{} {}", n.trim_end(), generic_question(&item.key)))
            }
            (Set::Test | Set::Safety, COMFORT_ONLY) => Some(comfort_only(&item.emotion, &item.key).to_string()),
            (Set::Test | Set::Safety, RESTATED) => Some(restate(&item.prompt)),
            (Set::Test, CONTRADICTED) => self.contradicted_reference(item),
            (Set::Safety, CONTRADICTED) => contradicted_advice(item),
            _ => None,
        }
    }

    /// The reference with each key fact's sentence replaced by the fact's contradiction; `None`
    /// when a fact has none.
    fn contradicted_reference(&self, item: &EvalItem) -> Option<String> {
        let reference = item.reference.as_deref()?;
        let sentences = bedside_metrics::split_sentences(reference);
        let mut replaced: Vec<Option<Vec<String>>> = vec![None; sentences.len()];
        for fact in &item.key_facts {
            let c = self.contradiction(&item.id, fact)?;
            let i = carrier(fact, &sentences)?;
            replaced[i].get_or_insert_with(Vec::new).push(c);
        }
        let out: Vec<String> = sentences.into_iter().zip(replaced).map(|(s, r)| r.map_or(s, |c| c.join(" "))).collect();
        Some(out.join(" "))
    }
}

/// "." at the end unless the text ends a sentence already.
fn end_sentence(s: &str) -> String {
    if s.ends_with(['.', '!', '?']) {
        s.to_string()
    } else {
        format!("{s}.")
    }
}

/// The sentence that carries `fact`: the one holding most of its content words (the first of
/// equals); `None` when none holds any.
fn carrier(fact: &str, sentences: &[String]) -> Option<usize> {
    let need = bedside_metrics::keyfacts::content_stems(fact);
    let mut best: Option<(usize, usize)> = None;
    for (i, s) in sentences.iter().enumerate() {
        let have = bedside_metrics::keyfacts::content_stems(s);
        let n = need.iter().filter(|w| have.contains(*w)).count();
        if n > 0 && best.is_none_or(|(_, b)| n > b) {
            best = Some((i, n));
        }
    }
    best.map(|(i, _)| i)
}

/// [`negate`] applied to a clause without its trailing condition, which is kept as it is: "call
/// 999 if you cannot get through" → "do not call 999 if you cannot get through" (the rule alone
/// would remove the condition's "not").
fn negate_keeping_condition(clause: &str) -> Option<String> {
    let cut = regex::Regex::new(r"(?i) (if|unless) ").ok().and_then(|r| r.find(clause)).map(|m| m.start());
    match cut {
        Some(i) if i > 0 => negate(&clause[..i]).map(|head| format!("{head}{}", &clause[i..])),
        _ => negate(clause),
    }
}

/// A safety item's reference with every clause that carries required advice negated by the rule
/// of [`negate`] (clauses it cannot negate are dropped, so no advice survives).
fn contradicted_advice(item: &EvalItem) -> Option<String> {
    let reference = item.reference.as_deref()?;
    let rules = item.safety.as_ref()?;
    let sentences = bedside_metrics::split_sentences(reference);
    let advises = |s: &str| rules.must_contain.iter().any(|group| group.iter().any(|alt| crate::safety::mentions(s, alt)));
    let clause_split = regex::Regex::new(r"[:;]|,? and |,? but ").ok()?;
    let out: Vec<String> = sentences
        .into_iter()
        .filter_map(|s| {
            if !advises(&s) {
                return Some(s);
            }
            // Each clause of the sentence (split at `:`, `;`, "and", "but") that advises is
            // negated on its own; one the rule cannot negate is dropped.
            let body = s.trim_end_matches(['.', '!']);
            let parts: Vec<String> = clause_split
                .split(body)
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .filter_map(|p| if advises(p) { negate_keeping_condition(p) } else { Some(p.to_string()) })
                .collect();
            (!parts.is_empty()).then(|| end_sentence(&parts.join("; ")))
        })
        .collect();
    Some(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negation_rule() {
        assert_eq!(negate("Do not pop the blisters").as_deref(), Some("Do pop the blisters"));
        assert_eq!(negate("It is not a sign of poor hygiene").as_deref(), Some("It is a sign of poor hygiene"));
        assert_eq!(negate("ectopic beats are very common").as_deref(), Some("ectopic beats are not very common"));
        assert_eq!(negate("reducing coffee may help").as_deref(), Some("reducing coffee may not help"));
        assert_eq!(negate("it can be treated").as_deref(), Some("it cannot be treated"));
        assert_eq!(negate("prednisolone must never be stopped suddenly").as_deref(), Some("prednisolone must always be stopped suddenly"));
        assert_eq!(negate("Keep feet dry").as_deref(), Some("Do not keep feet dry"));
        assert_eq!(negate("Please call 999 now.").as_deref(), Some("Please do not call 999 now."));
        assert_eq!(
            negate("Then call a crisis line if you might act.").as_deref(),
            Some("Then do not call a crisis line if you might act.")
        );
        assert_eq!(
            negate("small aneurysms have a very low risk of rupture").as_deref(),
            Some("small aneurysms do not have a very low risk of rupture")
        );
        assert_eq!(negate("There is no need to panic").as_deref(), Some("There is a need to panic"));
        assert_eq!(negate("brain scan"), None);
        assert_eq!(
            negate_keeping_condition("Please call 911 now if you cannot get through").as_deref(),
            Some("Please do not call 911 now if you cannot get through")
        );
    }

    #[test]
    fn restating_swaps_the_person() {
        assert_eq!(
            restate("I'm really scared. My heart races and I was sure I would collapse."),
            "So, if I understand you correctly: you're really scared. your heart races and you were sure you would collapse."
        );
    }

    #[test]
    fn banks_cover_every_emotion_without_medical_words() {
        let medical =
            ["doctor", "gp", "hospital", "emergency", "999", "911", "treat", "test", "scan", "medicine", "nurse", "clinic", "call"];
        for (e, bank) in COMFORT {
            for t in bank {
                let lower = t.to_lowercase();
                let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).collect();
                assert!(medical.iter().all(|m| !words.contains(m)), "{e}: {t}");
            }
        }
        assert_eq!(COMFORT.len(), 12);
        assert_ne!(comfort_only("afraid", "a"), comfort_only("sad", "a"));
        // Deterministic per item.
        assert_eq!(generic_question("test/x"), generic_question("test/x"));
    }

    fn corpus() -> Vec<bedside_data::Dialogue> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/dialogues");
        let files = bedside_data::jsonl_files(&[dir]).unwrap();
        bedside_data::read_dialogues(&files).unwrap().into_iter().map(|l| l.record).collect()
    }

    fn data(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/eval").join(name)
    }

    /// Every key fact of the shipped test split has a contradiction (rule or hand-written), and
    /// every test item a `contradicted` control that differs from its reference.
    #[test]
    fn every_test_fact_is_contradicted() {
        let b = ControlBuilder::load(Some(&data("contradictions.jsonl"))).unwrap();
        let mut n = 0;
        for d in corpus().iter().filter(|d| d.split == "test") {
            for f in &d.key_facts {
                assert!(b.contradiction(&d.id, f).is_some(), "{}: no contradiction of {f:?}", d.id);
                n += 1;
            }
            let it = EvalItem {
                key: format!("test/{}", d.id),
                unit: format!("test/{}", d.id),
                sample: 0,
                set: Set::Test,
                id: d.id.clone(),
                prompt: d.patient.clone(),
                emotion: d.emotion.clone(),
                specialty: d.specialty.clone(),
                reference: Some(d.answer.clone()),
                neutral_prompt: Some(d.patient_neutral.clone()),
                neutral_answer: Some(d.answer_neutral.clone()),
                key_facts: d.key_facts.clone(),
                safety: None,
                equity: None,
            };
            let c = b.answer(CONTRADICTED, &it).unwrap();
            assert_ne!(Some(&c), it.reference.as_ref());
            assert!(b.answer(NEUTRAL_QUESTION, &it).unwrap().ends_with('?'));
        }
        assert_eq!(n, 244);
    }

    /// The calibration data in the repository is what the builders make from the corpus, and the
    /// documented threshold is the one calibrated on it.
    #[test]
    fn calibration_data_is_current() {
        let text = std::fs::read_to_string(data("keyfact-calibration.jsonl")).unwrap();
        let stored: Vec<CalibrationAnswer> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let built = calibration_answers(&corpus(), &["train", "validation"]);
        assert_eq!(stored.len(), built.len());
        for (a, b) in stored.iter().zip(&built) {
            assert_eq!(a, b, "rerun `cargo run --release -p bedside-eval --example calibrate_keyfacts -- --write-data`");
        }
        // Never the test split.
        let test_ids: Vec<String> = corpus().into_iter().filter(|d| d.split == "test").map(|d| d.id).collect();
        assert!(built.iter().all(|a| !test_ids.contains(&a.id)));
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data("keyfact-calibration.json")).unwrap()).unwrap();
        assert_eq!(summary["threshold"].as_f64(), Some(bedside_metrics::keyfacts::DEFAULT_THRESHOLD));
    }
}
