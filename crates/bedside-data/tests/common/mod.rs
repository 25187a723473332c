//! Fixture records that satisfy every validate rule, and helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The shipped corpus.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/dialogues")
}

/// Words unique to one record and one field (letters only after the first, so they are neither
/// numbers nor shared with other records).
fn unique(tag: &str, id: &str, n: usize) -> String {
    let id: String = id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { 'q' }).collect();
    (0..n).map(|k| format!("{tag}{id}w{k}")).collect::<Vec<_>>().join(" ")
}

/// A valid schema-v1 record: its texts share a little boilerplate with other records' but are
/// mostly unique, its key fact and red flag appear in both answers, and it keeps the numbers rule.
pub fn record(id: &str, split: &str, specialty: &str, condition: &str, emotion: &str) -> Value {
    json!({
        "schema_version": 1,
        "id": id,
        "specialty": specialty,
        "condition": condition,
        "emotion": emotion,
        "patient_neutral": format!("I have had {condition} for 3 days. {} What should I do?", unique("pn", id, 20)),
        "answer_neutral": format!("These symptoms need a review within 3 days. {} Seek urgent care for chest pain.", unique("an", id, 30)),
        "patient": format!("I feel {emotion}. I have had {condition} for 3 days. {} What should I do?", unique("pe", id, 20)),
        "answer": format!("It is understandable to feel {emotion}. These symptoms need a review within 3 days. {} Seek urgent care for chest pain.", unique("ae", id, 30)),
        "key_facts": ["these symptoms need a review"],
        "red_flags": ["chest pain"],
        "split": split,
        "provenance": {"method": "authored", "by": "tests", "license": "CC-BY-4.0"}
    })
}

/// A small clean corpus: 6 records, distinct conditions.
pub fn clean_records() -> Vec<Value> {
    vec![
        record("t-01", "train", "cardiology", "palpitations", "afraid"),
        record("t-02", "train", "dermatology", "eczema", "sad"),
        record("t-03", "train", "cardiology", "angina", "sad"),
        record("t-04", "train", "dermatology", "acne", "afraid"),
        record("t-05", "validation", "cardiology", "heart murmur", "afraid"),
        record("t-06", "test", "dermatology", "psoriasis", "sad"),
    ]
}

pub fn jsonl(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
