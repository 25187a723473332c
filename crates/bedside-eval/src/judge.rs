//! LLM-as-judge: the EPITOME rubric (one question per mechanism, 0/1/2), the Good/Okay/Bad question
//! of Welivita & Pu (arXiv 2406.05063), and EMRank-style pairwise preference (arXiv 2405.16402)
//! asked in both presentation orders. Each is prompted zero-, one- and few-shot and the settings
//! are combined by majority (seeds.md §7.4–7.6). Output is parsed strictly: an answer that is not
//! exactly one of the allowed labels is recorded as missing, never as a default.
//!
//! This module holds the rubric: prompts, parsers and how verdicts combine; the judging step
//! (`judging`) drives the model.

use std::collections::BTreeMap;

use bedside_tokenizer::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::results::SelfAgreement;

/// Bumped whenever a prompt's wording changes (part of every judge record's fingerprint).
pub(crate) const JUDGE_PROMPTS_VERSION: &str = "judge-v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Shots {
    Zero,
    One,
    Few,
}

impl Shots {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "zero" => Some(Shots::Zero),
            "one" => Some(Shots::One),
            "few" => Some(Shots::Few),
            _ => None,
        }
    }
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Shots::Zero => "zero",
            Shots::One => "one",
            Shots::Few => "few",
        }
    }
    fn n(self) -> usize {
        match self {
            Shots::Zero => 0,
            Shots::One => 1,
            Shots::Few => 3,
        }
    }
}

/// EPITOME mechanisms, in the order ER, IP, EX.
pub(crate) const MECHANISMS: [(&str, &str, &str, &str); 3] = [
    (
        "er",
        "Emotional reactions: does the reply express warmth, compassion or concern that the responder feels for the patient?",
        "1 = alludes to a feeling without naming it (\"Everything will be fine\")",
        "2 = names the responder's own feeling (\"I feel really sad for you\", \"I'm so sorry you're going through this\")",
    ),
    (
        "ip",
        "Interpretations: does the reply show that the responder understands the patient's experiences and feelings?",
        "1 = states understanding in general terms (\"I understand how you feel\")",
        "2 = names the inferred feeling or experience (\"This must be terrifying\", \"waiting for results is exhausting\")",
    ),
    (
        "ex",
        "Explorations: does the reply try to explore the patient's experiences and feelings?",
        "1 = a generic question (\"What happened?\")",
        "2 = a specific question naming the feeling or experience (\"Are you feeling alone with this right now?\")",
    ),
];

const EMPATHY_DEFINITION: &str = "Empathy has three parts: cognitive (understanding the patient's thoughts and point of view), affective (sharing their feelings) and compassionate (being moved to help).";

/// Fixed worked examples (project-authored): patient message, reply, and the expected answers
/// [ER, IP, EX, Good/Okay/Bad].
const EXAMPLES: [(&str, &str, [u8; 3], &str); 3] = [
    (
        "I'm terrified about my biopsy tomorrow. What if it's cancer?",
        "I'm so sorry you're facing this; waiting for a biopsy must be frightening. What worries you most about tomorrow? Most biopsies are quick, and your team will explain the results and next steps with you.",
        [2, 2, 2],
        "Good",
    ),
    (
        "I've had a cough for three weeks and I'm worried.",
        "A cough lasting three weeks should be checked by a doctor, who may listen to your chest and order a chest X-ray.",
        [0, 0, 0],
        "Bad",
    ),
    (
        "My son has a fever again and I feel like a bad parent.",
        "I understand how you feel. Fevers are common in children; give fluids and see a doctor if he is very drowsy or the fever lasts more than three days.",
        [0, 1, 0],
        "Okay",
    ),
];

fn system(task_text: &str) -> ChatMessage {
    ChatMessage::new("system", format!("You are an expert rater of empathy in replies to patients. {task_text}"))
}

fn pair_text(patient: &str, reply: &str) -> String {
    format!("Patient: {patient}\n\nReply: {reply}")
}

/// The EPITOME rubric question for mechanism `m` (0 = ER, 1 = IP, 2 = EX).
pub(crate) fn epitome_prompt(m: usize, shots: Shots, patient: &str, reply: &str) -> Vec<ChatMessage> {
    let (_, q, weak, strong) = MECHANISMS[m];
    let instr = format!("{q}\nAnswer with a single digit: 0 = no, {weak}, {strong}.");
    let mut msgs = vec![system(&instr)];
    for (p, r, levels, _) in EXAMPLES.iter().take(shots.n()) {
        msgs.push(ChatMessage::new("user", pair_text(p, r)));
        msgs.push(ChatMessage::new("assistant", levels[m].to_string()));
    }
    msgs.push(ChatMessage::new("user", pair_text(patient, reply)));
    msgs
}

/// The Good/Okay/Bad question.
pub(crate) fn good_okay_bad_prompt(shots: Shots, patient: &str, reply: &str) -> Vec<ChatMessage> {
    let instr = format!(
        "{EMPATHY_DEFINITION} How empathetic is the reply compared with how a caring person would respond in this situation? Answer with one word: Good, Okay or Bad."
    );
    let mut msgs = vec![system(&instr)];
    for (p, r, _, g) in EXAMPLES.iter().take(shots.n()) {
        msgs.push(ChatMessage::new("user", pair_text(p, r)));
        msgs.push(ChatMessage::new("assistant", g.to_string()));
    }
    msgs.push(ChatMessage::new("user", pair_text(patient, reply)));
    msgs
}

/// Which reply is more empathetic, A or B (or Tie).
pub(crate) fn pairwise_prompt(shots: Shots, patient: &str, reply_a: &str, reply_b: &str) -> Vec<ChatMessage> {
    let instr = format!(
        "{EMPATHY_DEFINITION} Two replies to the same patient follow. Which reply is more empathetic? Answer with one word: A, B or Tie."
    );
    let text = |p: &str, a: &str, b: &str| format!("Patient: {p}\n\nReply A: {a}\n\nReply B: {b}");
    let mut msgs = vec![system(&instr)];
    // Shot k pairs a strong example with a weak one, alternating sides so the examples carry no
    // position bias.
    let pairs = [(0usize, 1usize, "A"), (2, 0, "B"), (0, 2, "A")];
    for &(a, b, ans) in pairs.iter().take(shots.n()) {
        msgs.push(ChatMessage::new("user", text(EXAMPLES[a].0, EXAMPLES[a].1, EXAMPLES[b].1)));
        msgs.push(ChatMessage::new("assistant", ans.to_string()));
    }
    msgs.push(ChatMessage::new("user", text(patient, reply_a, reply_b)));
    msgs
}

fn first_line_words(out: &str) -> Vec<String> {
    let line = out.trim().lines().next().unwrap_or("");
    line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

/// A level 0/1/2: the first line must contain exactly one distinct digit token among 0, 1, 2
/// and no other number.
pub(crate) fn parse_level(out: &str) -> Option<u8> {
    let words = first_line_words(out);
    let nums: Vec<&String> = words.iter().filter(|w| w.chars().all(|c| c.is_ascii_digit())).collect();
    let mut distinct: Vec<&str> = nums.iter().map(|w| w.as_str()).collect();
    distinct.dedup();
    match distinct.as_slice() {
        [d] if ["0", "1", "2"].contains(d) && nums.iter().all(|n| n.as_str() == *d) => d.parse().ok(),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Rating {
    Bad = 1,
    Okay = 2,
    Good = 3,
}

/// Good / Okay / Bad: exactly one of the three words on the first line.
pub(crate) fn parse_rating(out: &str) -> Option<Rating> {
    let mut found: Vec<Rating> = first_line_words(out)
        .iter()
        .filter_map(|w| match w.as_str() {
            "good" => Some(Rating::Good),
            "okay" | "ok" => Some(Rating::Okay),
            "bad" => Some(Rating::Bad),
            _ => None,
        })
        .collect();
    found.dedup();
    match found.as_slice() {
        [r] => Some(*r),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Choice {
    A,
    B,
    Tie,
}

/// A, B or Tie: the first word of the first line (after an optional "Reply"/"Response"/"Answer").
pub(crate) fn parse_choice(out: &str) -> Option<Choice> {
    let words = first_line_words(out);
    let w = words.iter().find(|w| !["reply", "response", "answer", "option", "the"].contains(&w.as_str()))?;
    match w.as_str() {
        "a" => Some(Choice::A),
        "b" => Some(Choice::B),
        "tie" | "equal" | "neither" | "both" => Some(Choice::Tie),
        _ => None,
    }
}

/// A pairwise outcome from the tuned system's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Win,
    Loss,
    Tie,
}

/// Order 1 shows the tuned reply as A, order 2 (swapped) as B.
pub(crate) fn outcome_of(choice: Choice, tuned_is_a: bool) -> Outcome {
    match (choice, tuned_is_a) {
        (Choice::Tie, _) => Outcome::Tie,
        (Choice::A, true) | (Choice::B, false) => Outcome::Win,
        _ => Outcome::Loss,
    }
}

/// Combine the two orders: a win or loss counts only when both orders agree; an inconsistent
/// pair is a tie. Missing when either order is unparseable.
#[cfg(test)]
fn combine_orders(first: Option<Choice>, swapped: Option<Choice>) -> Option<Outcome> {
    combine_outcomes(first.map(|c| outcome_of(c, true)), swapped.map(|c| outcome_of(c, false)))
}

/// Combine the two orders' outcomes (each from the tuned system's point of view): a win or loss
/// counts only when both agree; an inconsistent pair is a tie; missing when either is.
pub(crate) fn combine_outcomes(first: Option<Outcome>, swapped: Option<Outcome>) -> Option<Outcome> {
    let (a, b) = (first?, swapped?);
    Some(if a == b { a } else { Outcome::Tie })
}

/// Majority over the parsed votes: the value with more than half of them, else `None`.
pub(crate) fn majority<T: Ord + Copy>(votes: &[Option<T>]) -> Option<T> {
    let parsed: Vec<T> = votes.iter().flatten().copied().collect();
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for v in &parsed {
        *counts.entry(*v).or_default() += 1;
    }
    counts.into_iter().find(|(_, c)| 2 * c > parsed.len()).map(|(v, _)| v)
}

/// The ensemble of pairwise settings: majority, a tie when there is no majority, missing when no
/// setting produced an outcome.
pub(crate) fn ensemble_outcome(per_setting: &[Option<Outcome>]) -> Option<Outcome> {
    if per_setting.iter().all(Option::is_none) {
        return None;
    }
    Some(majority(per_setting).unwrap_or(Outcome::Tie))
}

/// `pairs`: (order-1 outcome, order-2 outcome), both from the tuned system's point of view.
pub(crate) fn self_agreement(pairs: &[(Outcome, Outcome)]) -> SelfAgreement {
    let n = pairs.len();
    if n == 0 {
        return SelfAgreement { n, observed: f64::NAN, chance: f64::NAN, kappa: f64::NAN };
    }
    let cats = [Outcome::Win, Outcome::Loss, Outcome::Tie];
    let nf = n as f64;
    let observed = pairs.iter().filter(|(a, b)| a == b).count() as f64 / nf;
    let chance: f64 = cats
        .iter()
        .map(|c| {
            let p1 = pairs.iter().filter(|(a, _)| a == c).count() as f64 / nf;
            let p2 = pairs.iter().filter(|(_, b)| b == c).count() as f64 / nf;
            p1 * p2
        })
        .sum();
    let kappa = if (1.0 - chance).abs() < 1e-12 {
        if observed >= 1.0 {
            1.0
        } else {
            0.0
        }
    } else {
        (observed - chance) / (1.0 - chance)
    };
    SelfAgreement { n, observed, chance, kappa }
}

/// Win rate = (wins + ½ ties) / n (seeds.md §7.6).
pub(crate) fn win_rate(outcomes: &[Outcome]) -> f64 {
    if outcomes.is_empty() {
        return f64::NAN;
    }
    let w = outcomes.iter().filter(|o| **o == Outcome::Win).count() as f64;
    let t = outcomes.iter().filter(|o| **o == Outcome::Tie).count() as f64;
    (w + 0.5 * t) / outcomes.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_level_parsing() {
        assert_eq!(parse_level("2"), Some(2));
        assert_eq!(parse_level(" 1.\nBecause the reply..."), Some(1));
        assert_eq!(parse_level("Level: 0"), Some(0));
        assert_eq!(parse_level("1 or 2"), None);
        assert_eq!(parse_level("3"), None);
        assert_eq!(parse_level("The reply is kind"), None);
        assert_eq!(parse_level("12"), None);
        assert_eq!(parse_level(""), None);
    }

    #[test]
    fn strict_rating_and_choice_parsing() {
        assert_eq!(parse_rating("Good"), Some(Rating::Good));
        assert_eq!(parse_rating("okay."), Some(Rating::Okay));
        assert_eq!(parse_rating("Good, not bad"), None);
        assert_eq!(parse_rating("Excellent"), None);
        assert_eq!(parse_choice("B"), Some(Choice::B));
        assert_eq!(parse_choice("Reply A is better"), Some(Choice::A));
        assert_eq!(parse_choice("tie"), Some(Choice::Tie));
        assert_eq!(parse_choice("Both replies"), Some(Choice::Tie));
        assert_eq!(parse_choice("I think"), None);
        assert_eq!(Rating::Good as u8, 3, "coded as in the Welivita & Pu release");
    }

    #[test]
    fn orders_combine_only_when_consistent() {
        // Tuned shown first and preferred, then shown second and preferred: a win.
        assert_eq!(combine_orders(Some(Choice::A), Some(Choice::B)), Some(Outcome::Win));
        assert_eq!(combine_orders(Some(Choice::B), Some(Choice::A)), Some(Outcome::Loss));
        // Position bias (always A): inconsistent, so a tie.
        assert_eq!(combine_orders(Some(Choice::A), Some(Choice::A)), Some(Outcome::Tie));
        assert_eq!(combine_orders(None, Some(Choice::A)), None);
    }

    #[test]
    fn majority_and_ensemble() {
        assert_eq!(majority(&[Some(2u8), Some(2), Some(1)]), Some(2));
        assert_eq!(majority(&[Some(0u8), Some(1), Some(2)]), None);
        assert_eq!(majority(&[Some(1u8), None, None]), Some(1));
        assert_eq!(majority::<u8>(&[None, None]), None);
        assert_eq!(ensemble_outcome(&[Some(Outcome::Win), Some(Outcome::Loss), Some(Outcome::Tie)]), Some(Outcome::Tie));
        assert_eq!(ensemble_outcome(&[Some(Outcome::Win), Some(Outcome::Win), None]), Some(Outcome::Win));
        assert_eq!(ensemble_outcome(&[None, None, None]), None);
    }

    #[test]
    fn self_agreement_kappa() {
        use Outcome::*;
        // A judge that always answers "A" is never consistent: order 1 says Win, order 2 Loss.
        let biased = vec![(Win, Loss); 10];
        let s = self_agreement(&biased);
        assert_eq!(s.observed, 0.0);
        assert!(s.kappa <= 0.0);
        // Perfect agreement over mixed outcomes: kappa 1.
        let good = vec![(Win, Win), (Loss, Loss), (Tie, Tie), (Win, Win)];
        let s = self_agreement(&good);
        assert_eq!(s.observed, 1.0);
        assert!((s.kappa - 1.0).abs() < 1e-12);
        // Textbook 2x2 (Cohen 1960 style): 20 pairs, agree 15; marginals 10/10 and 11/9.
        let mut v = vec![(Win, Win); 8];
        v.extend(vec![(Loss, Loss); 7]);
        v.extend(vec![(Win, Loss); 2]);
        v.extend(vec![(Loss, Win); 3]);
        let s = self_agreement(&v);
        assert!((s.observed - 0.75).abs() < 1e-12);
        // chance = 0.5*0.55 + 0.5*0.45 = 0.5; kappa = 0.25/0.5 = 0.5
        assert!((s.chance - 0.5).abs() < 1e-12);
        assert!((s.kappa - 0.5).abs() < 1e-12);
    }

    #[test]
    fn prompts_carry_the_shots() {
        assert_eq!(epitome_prompt(0, Shots::Zero, "p", "r").len(), 2);
        assert_eq!(epitome_prompt(0, Shots::One, "p", "r").len(), 4);
        let few = good_okay_bad_prompt(Shots::Few, "p", "r");
        assert_eq!(few.len(), 8);
        assert_eq!(few[2].content, "Good");
        let pw = pairwise_prompt(Shots::Few, "p", "ra", "rb");
        assert!(pw.last().unwrap().content.contains("Reply A: ra"));
        assert_eq!(win_rate(&[Outcome::Win, Outcome::Tie, Outcome::Loss, Outcome::Win]), 0.625);
    }
}
