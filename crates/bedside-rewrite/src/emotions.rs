//! The negative emotions of EmpatheticDialogues (Rashkin et al., 2019), a word lexicon per
//! emotion, and the deterministic assignment of target emotions to dialogues.
//!
//! **Lexicon matching** ([`expresses`]): the text is split into lower-case words with
//! [`bedside_data::text::words`]; an entry matches when its words occur consecutively. An entry
//! ending in `*` matches any word starting with it (`terrif*` → `terrified`, `terrifying`).
//! Negation is not handled (`not scared` still counts); the lexicon is a floor, not a classifier.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use bedside_data::text::words;

use crate::seed::{mix, stable_hash};

/// The emotions the shipped corpus uses, the default of `--emotions`.
pub const DEFAULT_EMOTIONS: [&str; 12] = [
    "afraid",
    "anxious",
    "apprehensive",
    "terrified",
    "sad",
    "devastated",
    "lonely",
    "embarrassed",
    "ashamed",
    "guilty",
    "angry",
    "annoyed",
];

/// Every negative EmpatheticDialogues emotion and the words and phrases that express it (with
/// synonyms and inflections). The emotion's own name is always an entry.
pub const LEXICON: &[(&str, &[&str])] = &[
    (
        "afraid",
        &[
            "afraid",
            "scared",
            "scary",
            "scares",
            "frightened",
            "frightening",
            "fright",
            "fear",
            "fears",
            "fearful",
            "feared",
            "alarmed",
            "alarming",
            "spooked",
            "freaked out",
            "freaking out",
            "petrified",
        ],
    ),
    (
        "anxious",
        &[
            "anxious",
            "anxiety",
            "anxiously",
            "worried",
            "worry",
            "worries",
            "worrying",
            "nervous",
            "nervy",
            "on edge",
            "uneasy",
            "stressed",
            "stressing",
            "panicky",
            "panicking",
            "fretting",
            "can't settle",
            "cannot settle",
            "keep thinking",
            "keeps going round",
            "lying awake",
            "jittery",
            "worked up",
            "in knots",
            "in a panic",
            "on tenterhooks",
            "edgy",
            "can't stop thinking",
            "keeps me up at night",
            "keeping me up at night",
        ],
    ),
    (
        "apprehensive",
        &[
            "apprehensive",
            "apprehension",
            "uneasy",
            "wary",
            "hesitant",
            "hesitating",
            "dread*",
            "reluctant",
            "misgiving*",
            "nervous",
            "doubt*",
            "qualms",
            "not sure i want",
            "unsure",
            "cautious",
            "don't want to",
            "really don't want",
            "not keen",
            "second thoughts",
            "butterflies",
            "worried about what",
            "what might happen",
            "what will happen",
        ],
    ),
    (
        "terrified",
        &[
            "terrified",
            "terrif*",
            "petrified",
            "panic*",
            "horrified",
            "horrifying",
            "scared to death",
            "scared stiff",
            "so scared",
            "really scared",
            "absolutely scared",
            "frightened to death",
            "paralysed with fear",
            "paralyzed with fear",
            "shaking with fear",
            "beside myself",
            "terror",
        ],
    ),
    (
        "sad",
        &[
            "sad",
            "sadness",
            "saddened",
            "unhappy",
            "miserable",
            "heartbroken",
            "tearful",
            "crying",
            "cry",
            "cried",
            "in tears",
            "so upset",
            "very upset",
            "really upset",
            "feel upset",
            "feeling upset",
            "gloomy",
            "depressed",
            "sorrow",
            "grief",
            "grieving",
            "hopeless",
            "feeling down",
            "feel down",
            "feeling low",
            "feel low",
            "felt low",
            "so low",
            "really low",
            "rather low",
            "pretty low",
            "quite low",
            "really down",
            "so down",
            "down in the dumps",
            "heartbreak*",
            "breaks my heart",
            "so empty",
            "feel empty",
            "grey cloud",
            "grey blanket",
            "stolen my life",
            "taken my life",
            "feel flat",
            "felt flat",
        ],
    ),
    (
        "devastated",
        &[
            "devastated",
            "devastating",
            "devastation",
            "crushed",
            "shattered",
            "heartbroken",
            "destroyed",
            "distraught",
            "gutted",
            "falling apart",
            "fell apart",
            "world has collapsed",
            "can't cope",
            "cannot cope",
            "overwhelmed",
            "heart is broken",
            "wrecked",
            "fallen apart",
            "collapsed",
            "taken away",
            "pulled out from under",
            "floor has dropped",
            "can't stop crying",
            "reeling",
            "worst news",
            "upside down",
            "shattering",
            "ruined",
            "my world",
        ],
    ),
    (
        "lonely",
        &[
            "lonely",
            "loneliness",
            "alone",
            "isolated",
            "isolation",
            "no one to talk",
            "nobody to talk",
            "no one to help",
            "nobody to help",
            "by myself",
            "on my own",
            "abandoned",
            "forgotten",
            "no one understands",
            "nobody understands",
            "left out",
            "no one else",
            "cut off",
            "just me",
            "world has shrunk",
            "no friends",
            "nobody to",
            "no one to",
            "isolating",
            "through a window",
            "nobody else",
            "no one cares",
            "nobody cares",
        ],
    ),
    (
        "embarrassed",
        &[
            "embarrassed",
            "embarrassing",
            "embarrassment",
            "awkward",
            "mortified",
            "humiliat*",
            "self conscious",
            "mortifying",
            "silly",
            "cringe*",
            "blush*",
            "red faced",
            "too shy",
        ],
    ),
    (
        "ashamed",
        &[
            "ashamed",
            "shame",
            "shameful",
            "mortified",
            "can't believe i'm",
            "can't believe i am",
            "disgrace*",
            "humiliat*",
            "hate myself",
            "disgusted with myself",
            "feel dirty",
            "such a failure",
            "like a failure",
            "pathetic",
            "stupid",
            "judged",
        ],
    ),
    (
        "guilty",
        &[
            "guilty",
            "guilt",
            "my fault",
            "blame myself",
            "blaming myself",
            "regret*",
            "should have",
            "shouldn't have",
            "should've",
            "let them down",
            "let her down",
            "let him down",
            "let everyone down",
            "let my family down",
            "remorse",
            "responsible",
            "selfish",
            "feel awful",
            "feel terrible",
            "terrible mother",
            "terrible father",
            "terrible parent",
            "terrible mum",
            "terrible dad",
            "worst parent",
            "worst mother",
            "worst mum",
            "did wrong",
            "done this to myself",
            "kicking myself",
            "i caused",
            "caused this",
            "all my fault",
        ],
    ),
    (
        "angry",
        &[
            "angry",
            "anger",
            "angered",
            "sick of",
            "mad",
            "furious",
            "livid",
            "outraged",
            "fuming",
            "frustrat*",
            "irritat*",
            "fed up",
            "resent*",
            "infuriat*",
            "unfair",
            "enraged",
        ],
    ),
    (
        "annoyed",
        &[
            "annoyed",
            "annoying",
            "annoyance",
            "annoys",
            "irritated",
            "irritating",
            "irritat*",
            "frustrat*",
            "fed up",
            "bothered",
            "sick of",
            "tired of",
            "tedious",
            "tiresome",
            "such a pain",
            "up the wall",
            "wearing me down",
            "exasperat*",
            "getting on my nerves",
            "driving me crazy",
            "drives me crazy",
            "driving me mad",
            "drives me mad",
            "nuisance",
        ],
    ),
    (
        "disappointed",
        &[
            "disappointed",
            "disappointing",
            "disappointment",
            "let down",
            "let me down",
            "discouraged",
            "disheartened",
            "dissatisfied",
            "deflated",
            "expected better",
            "hoped for more",
            "had hoped",
        ],
    ),
    (
        "disgusted",
        &["disgusted", "disgusting", "disgust", "so gross", "revolting", "revolted", "repulsed", "repulsive", "sickened", "grossed out"],
    ),
    (
        "furious",
        &["furious", "livid", "enraged", "rage", "fuming", "outraged", "seething", "incensed", "infuriat*", "irate", "absolutely mad"],
    ),
    ("jealous", &["jealous", "jealousy", "envious", "envy", "resent*", "wish i had", "everyone else gets", "why do they get"]),
];

/// The lexicon entries of `emotion` (lower-case name), or `None` for an unknown emotion.
pub fn lexicon(emotion: &str) -> Option<&'static [&'static str]> {
    LEXICON.iter().find(|(e, _)| *e == emotion).map(|(_, w)| *w)
}

/// Every emotion the lexicon knows.
pub fn known_emotions() -> Vec<&'static str> {
    LEXICON.iter().map(|(e, _)| *e).collect()
}

fn entry_matches_at(entry: &[&str], ws: &[String], at: usize) -> bool {
    entry.iter().enumerate().all(|(k, e)| {
        ws.get(at + k).is_some_and(|w| match e.strip_suffix('*') {
            Some(prefix) => w.starts_with(prefix),
            None => w == e,
        })
    })
}

/// The lexicon entries of `emotion` found in `text` (empty when none, or the emotion is unknown).
pub fn matches(emotion: &str, text: &str) -> Vec<&'static str> {
    let Some(entries) = lexicon(emotion) else {
        return Vec::new();
    };
    let ws = words(text);
    let mut out = Vec::new();
    for entry in entries {
        // Split like `words` does so "can't" and "self conscious" line up with the text's words.
        let parts: Vec<String> = words(entry.trim_end_matches('*'));
        let mut parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let owned_last;
        if entry.ends_with('*') {
            if let Some(last) = parts.pop() {
                owned_last = format!("{last}*");
                parts.push(&owned_last);
            }
        }
        if parts.is_empty() {
            continue;
        }
        if (0..ws.len()).any(|i| entry_matches_at(&parts, &ws, i)) {
            out.push(*entry);
        }
    }
    out
}

/// Whether `text` expresses `emotion` by the lexicon.
pub fn expresses(emotion: &str, text: &str) -> bool {
    !matches(emotion, text).is_empty()
}

/// Whether `text` names any negative emotion of the lexicon (used by the comfort heuristic:
/// naming the patient's feeling).
pub fn names_a_feeling(text: &str) -> bool {
    LEXICON.iter().any(|(e, _)| expresses(e, text))
}

/// How target emotions are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum EmotionPlan {
    /// Every emotion equally often (counts differ by at most one).
    Balanced(Vec<String>),
    /// Counts proportional to the weights (largest-remainder rounding).
    Weighted(Vec<(String, f64)>),
}

impl EmotionPlan {
    /// Checks names against the lexicon and weights for sanity.
    pub fn validate(&self) -> Result<()> {
        let names: Vec<&str> = match self {
            EmotionPlan::Balanced(v) => v.iter().map(String::as_str).collect(),
            EmotionPlan::Weighted(v) => v.iter().map(|(e, _)| e.as_str()).collect(),
        };
        if names.is_empty() {
            bail!("no emotions given");
        }
        for (i, n) in names.iter().enumerate() {
            if lexicon(n).is_none() {
                bail!("unknown emotion `{n}` (known: {})", known_emotions().join(", "));
            }
            if names[..i].contains(n) {
                bail!("emotion `{n}` given twice");
            }
        }
        if let EmotionPlan::Weighted(v) = self {
            for (e, w) in v {
                if !(w.is_finite() && *w >= 0.0) {
                    bail!("emotion `{e}`: weight must be a finite number >= 0, got {w}");
                }
            }
            if v.iter().all(|(_, w)| *w == 0.0) {
                bail!("every emotion weight is 0");
            }
        }
        Ok(())
    }

    fn weights(&self) -> Vec<(String, f64)> {
        match self {
            EmotionPlan::Balanced(v) => v.iter().map(|e| (e.clone(), 1.0)).collect(),
            EmotionPlan::Weighted(v) => v.clone(),
        }
    }
}

/// Reads `--emotion-weights`: a TOML table (`afraid = 2`) or a JSON object (`{"afraid": 2}`).
/// Errors name the file and the key.
pub fn read_weights(path: &std::path::Path) -> Result<EmotionPlan> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let table: BTreeMap<String, serde_json::Value> = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).with_context(|| format!("{}: expected a JSON object of emotion: weight", path.display()))?
    } else {
        let t: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: expected TOML lines `emotion = weight`", path.display()))?;
        t.into_iter()
            .map(|(k, v)| {
                let j = match v {
                    toml::Value::Integer(i) => serde_json::Value::from(i),
                    toml::Value::Float(f) => serde_json::Value::from(f),
                    other => serde_json::Value::String(format!("{other}")),
                };
                (k, j)
            })
            .collect()
    };
    let mut out = Vec::new();
    for (k, v) in table {
        let Some(w) = v.as_f64() else {
            bail!("{}: emotion `{k}`: the weight must be a number, found {v}", path.display());
        };
        out.push((k.trim().to_lowercase(), w));
    }
    let plan = EmotionPlan::Weighted(out);
    plan.validate().with_context(|| format!("{}", path.display()))?;
    Ok(plan)
}

/// How many of `n` items each emotion gets: `n × w / Σw`, rounded by largest remainder (ties to
/// the earlier emotion).
pub fn quotas(weights: &[(String, f64)], n: usize) -> Vec<usize> {
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    if total <= 0.0 || weights.is_empty() {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|(_, w)| n as f64 * w / total).collect();
    let mut q: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = n - q.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        if weights[i].1 > 0.0 {
            q[i] += 1;
            left -= 1;
        }
    }
    q
}

/// The target emotion of each id, deterministic for `seed`.
///
/// The ids are put in a seeded order (by the hash of seed and id, so the order does not depend on
/// input order), the emotions in a seeded order too, and the quotas ([`quotas`]) are dealt out
/// round-robin (smooth weighted round-robin; plain round-robin for equal weights) along that
/// order. With a balanced plan the counts differ by at most one.
pub fn assign(ids: &[&str], plan: &EmotionPlan, seed: u64) -> Vec<String> {
    let mut weights = plan.weights();
    weights.sort_by_key(|(e, _)| stable_hash(seed, &format!("emotion:{e}")));
    let q = quotas(&weights, ids.len());
    // Smooth weighted round-robin over the quotas: each step, every emotion gains its quota and
    // the one with most credit is chosen and pays the total.
    let total = ids.len() as i64;
    let mut credit = vec![0i64; q.len()];
    let mut left = q.clone();
    let mut sequence = Vec::with_capacity(ids.len());
    for _ in 0..ids.len() {
        let mut best: Option<usize> = None;
        for i in 0..q.len() {
            if left[i] == 0 {
                continue;
            }
            credit[i] += q[i] as i64;
            if best.is_none_or(|b| credit[i] > credit[b]) {
                best = Some(i);
            }
        }
        let Some(b) = best else { break };
        credit[b] -= total;
        left[b] -= 1;
        sequence.push(weights[b].0.clone());
    }
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (stable_hash(seed, ids[i]), i));
    let mut out = vec![String::new(); ids.len()];
    for (pos, &i) in order.iter().enumerate() {
        out[i] = sequence[pos].clone();
    }
    out
}

/// A record's seed: the global seed mixed with the id, so it does not depend on the record's
/// position or on which records ran before.
pub fn record_seed(seed: u64, id: &str) -> u64 {
    mix(stable_hash(seed, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_emotion_matches_its_own_name_and_synonyms() {
        for e in DEFAULT_EMOTIONS {
            assert!(expresses(e, &format!("I feel so {e} about this.")), "{e}");
        }
        assert!(expresses("afraid", "Honestly I'm scared it is my heart."));
        assert!(expresses("terrified", "This is terrifying me."));
        assert!(expresses("lonely", "I live on my own and nobody understands."));
        assert!(expresses("embarrassed", "It's so embarrassing, I feel self-conscious."));
        assert!(expresses("guilty", "I keep thinking it's my fault."));
        assert!(!expresses("afraid", "I have had a cough for 3 days. What should I do?"));
        assert!(!expresses("sad", "I lie down when it happens and my blood pressure is low."));
        assert!(!expresses("nonexistent", "sad"));
    }

    #[test]
    fn balanced_assignment_is_even_and_deterministic() {
        let ids: Vec<String> = (0..50).map(|i| format!("r-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let plan = EmotionPlan::Balanced(DEFAULT_EMOTIONS.iter().map(|s| s.to_string()).collect());
        let a = assign(&ids, &plan, 7);
        assert_eq!(a, assign(&ids, &plan, 7));
        assert_ne!(a, assign(&ids, &plan, 8));
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &a {
            *counts.entry(e.as_str()).or_default() += 1;
        }
        assert_eq!(counts.len(), 12);
        // 50 = 12 × 4 + 2: two emotions get 5, ten get 4.
        let mut c: Vec<usize> = counts.values().copied().collect();
        c.sort();
        assert_eq!(c, [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5]);
        // A record's emotion does not depend on input order.
        let mut rev = ids.clone();
        rev.reverse();
        let b = assign(&rev, &plan, 7);
        for (i, id) in rev.iter().enumerate() {
            let j = ids.iter().position(|x| x == id).unwrap();
            assert_eq!(b[i], a[j]);
        }
    }

    #[test]
    fn weighted_quotas_use_largest_remainder() {
        let w = vec![("afraid".to_string(), 2.0), ("sad".to_string(), 1.0), ("lonely".to_string(), 0.0)];
        assert_eq!(quotas(&w, 10), [7, 3, 0]);
        assert_eq!(quotas(&w, 3), [2, 1, 0]);
        let ids: Vec<String> = (0..30).map(|i| format!("x{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let a = assign(&ids, &EmotionPlan::Weighted(w), 1);
        assert_eq!(a.iter().filter(|e| *e == "afraid").count(), 20);
        assert_eq!(a.iter().filter(|e| *e == "sad").count(), 10);
        assert!(EmotionPlan::Balanced(vec!["happy".into()]).validate().is_err());
        assert!(EmotionPlan::Weighted(vec![("sad".into(), -1.0)]).validate().is_err());
    }

    #[test]
    fn weights_file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.toml");
        std::fs::write(&p, "afraid = 2\nsad = \"lots\"\n").unwrap();
        let e = format!("{:#}", read_weights(&p).unwrap_err());
        assert!(e.contains("w.toml") && e.contains("`sad`"), "{e}");
        std::fs::write(&p, "{\"afraid\": 2, \"sad\": 1.5}").unwrap();
        assert_eq!(read_weights(&p).unwrap(), EmotionPlan::Weighted(vec![("afraid".into(), 2.0), ("sad".into(), 1.5)]));
    }
}
