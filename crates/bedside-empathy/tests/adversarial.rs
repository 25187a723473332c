//! Cue words cannot move a level. The adversarial edit set (`data/empathy/adversarial-edits.jsonl`)
//! is applied to the corpus's test-split answers (`data/dialogues`, context = the patient's
//! emotional message): questions that explore nothing about the person, boilerplate, the same
//! comfort phrase repeated, generic feeling questions; and comfort-only replies and the corpus's
//! comforting reference answers must rank above the neutral answers.

use std::collections::BTreeMap;
use std::path::Path;

use bedside_empathy::text::{content_stems, words};
use bedside_empathy::{analyse, EmpathyScorer, EmpathyScores, DEFAULT_HEADS};
use candle_core::Device;
use serde_json::Value;

struct Edit {
    id: String,
    category: String,
    edit: String,
    text: String,
    emotion: Option<String>,
}

struct Item {
    id: String,
    context: String,
    neutral: String,
    reference: String,
    condition: String,
    emotion: String,
}

fn jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("valid JSON line")).collect()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("field {k} missing in {v}")).to_string()
}

fn edits() -> Vec<Edit> {
    let root = bedside_testutil::workspace_root();
    jsonl(&root.join("data/empathy/adversarial-edits.jsonl"))
        .iter()
        .map(|v| Edit {
            id: s(v, "id"),
            category: s(v, "category"),
            edit: s(v, "edit"),
            text: s(v, "text"),
            emotion: v["emotion"].as_str().map(str::to_string),
        })
        .collect()
}

fn test_items() -> Vec<Item> {
    let dir = bedside_testutil::workspace_root().join("data/dialogues");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for v in jsonl(&f) {
            if v["split"] == "test" {
                out.push(Item {
                    id: s(&v, "id"),
                    context: s(&v, "patient"),
                    neutral: s(&v, "answer_neutral"),
                    reference: s(&v, "answer"),
                    condition: s(&v, "condition"),
                    emotion: s(&v, "emotion"),
                });
            }
        }
    }
    assert_eq!(out.len(), 80, "the corpus's test split has 80 items");
    out
}

/// The edited answer, and for `repeat` edits the answer with the phrase once (what the repeated
/// version must score like).
fn apply(e: &Edit, item: &Item, base: &str) -> (String, Option<String>) {
    let t = e.text.replace("{condition}", &item.condition);
    match e.edit.as_str() {
        "append" => (format!("{base} {t}"), None),
        "prepend" => (format!("{t} {base}"), None),
        "repeat" => (format!("{base} {t} {t} {t}"), Some(format!("{base} {t}"))),
        other => panic!("edit {}: unknown kind {other}", e.id),
    }
}

/// Questions that explore nothing about the person and repeated phrases are set aside before any
/// feature is computed: every feature, and the text embedded, is exactly that of the answer
/// without them. Checked on all 80 test items, for the neutral and the comforting answers.
#[test]
fn set_aside_edits_change_no_feature() {
    let edits = edits();
    let aside: Vec<&Edit> =
        edits.iter().filter(|e| matches!(e.category.as_str(), "generic_question" | "unrelated_question" | "comfort_repeat")).collect();
    assert!(aside.len() >= 25, "{} set-aside edits", aside.len());
    let (mut checked, mut related) = (0, 0);
    for item in test_items() {
        let context_stems = content_stems(&words(&item.context));
        for base in [&item.neutral, &item.reference] {
            for e in &aside {
                // A question is unrelated only to a post it shares no content word with: "Did you
                // watch the football match?" asks about the situation of a patient who plays football.
                if e.category == "unrelated_question" && content_stems(&words(&e.text)).iter().any(|w| context_stems.contains(w)) {
                    related += 1;
                    continue;
                }
                checked += 1;
                let (edited, once) = apply(e, &item, base);
                let expect = once.unwrap_or_else(|| base.clone());
                let a = analyse(&item.context, &edited);
                let b = analyse(&item.context, &expect);
                assert_eq!(a.kept_text(), b.kept_text(), "{} on {}: the embedded text changed", e.id, item.id);
                assert_eq!(a.lexical, b.lexical, "{} on {}: a lexical feature changed", e.id, item.id);
            }
        }
    }
    eprintln!("{checked} edited answers checked; {related} unrelated-question edits skipped as related to the post");
    assert!(related * 20 < checked, "{related} of the 'unrelated' edits share words with the posts");
}

fn scorer() -> Option<EmpathyScorer> {
    bedside_testutil::model_file("all-minilm-l6-v2/model.safetensors")?;
    let root = bedside_testutil::workspace_root();
    Some(EmpathyScorer::load(&root.join(DEFAULT_HEADS), &root.join("models/all-minilm-l6-v2"), &Device::Cpu).expect("load scorer"))
}

fn mean3(s: &EmpathyScores) -> f64 {
    s.expected.iter().map(|&x| x as f64).sum::<f64>() / 3.0
}

/// The shipped scorer end to end, on the first test item of each specialty (20): the edits'
/// effects on the expected levels are bounded, and the controls rank as they must.
#[test]
fn cue_edits_are_bounded_and_controls_rank_above_neutral() {
    let Some(scorer) = scorer() else { return };
    let edits = edits();
    let items: Vec<Item> = test_items().into_iter().filter(|i| i.id.ends_with("-13")).collect();
    assert_eq!(items.len(), 20);
    // Every (context, response) to score, by (item, system).
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut key: Vec<(usize, String)> = Vec::new();
    for (k, item) in items.iter().enumerate() {
        let mut push = |name: &str, resp: String| {
            pairs.push((item.context.clone(), resp));
            key.push((k, name.to_string()));
        };
        push("neutral", item.neutral.clone());
        push("reference", item.reference.clone());
        push("restated", item.context.clone());
        for e in &edits {
            if e.category == "comfort_only" {
                if e.emotion.as_deref() == Some(item.emotion.as_str()) {
                    push("comfort_only", e.text.clone());
                }
                continue;
            }
            let (edited, once) = apply(e, item, &item.neutral);
            push(&e.id, edited);
            if let Some(once) = once {
                push(&format!("{}/once", e.id), once);
            }
        }
    }
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(c, r)| (c.as_str(), r.as_str())).collect();
    let t = std::time::Instant::now();
    let scores = scorer.score(&refs).unwrap();
    eprintln!("scored {} pairs in {:.1}s", refs.len(), t.elapsed().as_secs_f64());
    let mut by: BTreeMap<(usize, String), EmpathyScores> = BTreeMap::new();
    for (k, s) in key.into_iter().zip(scores) {
        by.insert(k, s);
    }
    let get = |k: usize, name: &str| by.get(&(k, name.to_string())).unwrap_or_else(|| panic!("no score for {name} on item {k}"));
    let n = items.len();
    // Mean shift per mechanism over the neutral answer, and the largest on any one item, over the
    // items an edit applies to (an "unrelated" question sharing a word with the post is not).
    let applies = |e: &Edit, k: usize| {
        e.category != "unrelated_question" || {
            let c = content_stems(&words(&items[k].context));
            !content_stems(&words(&e.text)).iter().any(|w| c.contains(w))
        }
    };
    let shift = |e: &Edit| -> ([f64; 3], f64) {
        let ks: Vec<usize> = (0..n).filter(|&k| applies(e, k)).collect();
        let mut mean = [0.0; 3];
        let mut max = f64::MIN;
        for &k in &ks {
            for (m, acc) in mean.iter_mut().enumerate() {
                let d = (get(k, &e.id).expected[m] - get(k, "neutral").expected[m]) as f64;
                *acc += d / ks.len() as f64;
                max = max.max(d);
            }
        }
        (mean, max)
    };
    let mut report = String::new();
    for e in edits.iter().filter(|e| e.category != "comfort_only") {
        let (mean, max) = shift(e);
        report += &format!(
            "{:<7} {:<24} mean shift ER {:+.3} IP {:+.3} EX {:+.3}, item max {:+.3}\n",
            e.id, e.category, mean[0], mean[1], mean[2], max
        );
        // `bound[m]`: the largest mean shift allowed per mechanism; `bound_item`: on any one item.
        let cap = |bound: [f64; 3], bound_mean3: f64, bound_item: f64| {
            assert!(mean.iter().zip(bound).all(|(d, b)| *d <= b), "{}: mean shift {mean:?} above {bound:?}\n{report}", e.id);
            let mean3 = mean.iter().sum::<f64>() / 3.0;
            assert!(mean3 <= bound_mean3, "{}: mean shift of the mean level {mean3:.3} above {bound_mean3}\n{report}", e.id);
            assert!(max <= bound_item, "{}: an item moved by {max:.3} (bound {bound_item})\n{report}", e.id);
        };
        match e.category.as_str() {
            // Set aside: nothing may move at all.
            "generic_question" | "unrelated_question" => cap([0.0; 3], 0.0, 0.0),
            "comfort_repeat" => {
                for k in 0..n {
                    assert_eq!(get(k, &e.id), get(k, &format!("{}/once", e.id)), "{}: repeating the phrase changed the score", e.id);
                }
            }
            // Kept and embedded, so the heads see them: bounded, and the issue's +0.05 on the mean level.
            "boilerplate" => cap([BOILERPLATE_MEAN; 3], 0.05, BOILERPLATE_ITEM),
            // A question about the person's feelings is an exploration by EPITOME's definition (a
            // generic one is weak, level 1): it may raise EX, ER and IP hardly, and never by a whole
            // level on any item.
            "generic_feeling_question" => cap(GENERIC_FEELING_MEAN, GENERIC_FEELING_MEAN3, GENERIC_FEELING_ITEM),
            other => panic!("unknown category {other}"),
        }
    }
    eprintln!("{report}");
    // Controls: the comforting reference and a comfort-only reply rank above the neutral answer,
    // on average and on almost every item; the patient's own message restated does not rank
    // above the reference.
    let mean_of = |name: &str| (0..n).map(|k| mean3(get(k, name))).sum::<f64>() / n as f64;
    let wins = |a: &str, b: &str| (0..n).filter(|&k| mean3(get(k, a)) > mean3(get(k, b))).count();
    let (neutral, reference, comfort, restated) = (mean_of("neutral"), mean_of("reference"), mean_of("comfort_only"), mean_of("restated"));
    eprintln!(
        "mean expected level (mean of ER/IP/EX): neutral {neutral:.3}, reference {reference:.3} (above neutral on {}/{n}), comfort-only {comfort:.3} ({}/{n}), restated {restated:.3}",
        wins("reference", "neutral"),
        wins("comfort_only", "neutral")
    );
    assert!(reference > neutral + 0.2 && wins("reference", "neutral") >= n - 1, "reference {reference:.3} vs neutral {neutral:.3}");
    assert!(comfort > neutral + 0.2 && wins("comfort_only", "neutral") >= n - 1, "comfort-only {comfort:.3} vs neutral {neutral:.3}");
    assert!(restated < reference, "restated {restated:.3} vs reference {reference:.3}");
    // Comfort-only is warmer (ER) than the neutral answer on every item.
    assert!((0..n).all(|k| get(k, "comfort_only").expected[0] > get(k, "neutral").expected[0]));
}

/// Bounds for edits the heads see (measured values in data/empathy/README.md).
const BOILERPLATE_MEAN: f64 = 0.1;
const BOILERPLATE_ITEM: f64 = 0.35;
const GENERIC_FEELING_MEAN: [f64; 3] = [0.1, 0.1, 0.6];
const GENERIC_FEELING_MEAN3: f64 = 0.2;
/// Below one level: no stock phrase moves a level on any item.
const GENERIC_FEELING_ITEM: f64 = 0.9;
