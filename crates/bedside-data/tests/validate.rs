mod common;

use bedside_data::validate::{validate_paths, Report, Severity, ValidateOptions};
use common::*;
use serde_json::{json, Value};

fn run(records: &[Value]) -> (Report, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "fixture.jsonl", &jsonl(records));
    let report = validate_paths(&[&p], &ValidateOptions::default()).unwrap();
    (report, p.display().to_string())
}

fn errors<'a>(r: &'a Report, check: &'a str) -> Vec<&'a bedside_data::validate::Issue> {
    r.issues_of(check).filter(|i| i.severity == Severity::Error).collect()
}

#[test]
fn shipped_corpus_has_no_errors() {
    let report = validate_paths(&[corpus_dir()], &ValidateOptions::default()).unwrap();
    assert_eq!(report.records, 320);
    assert_eq!(report.files.len(), 20);
    assert_eq!(report.errors, 0, "the shipped corpus fails validation:\n{}", report.to_text(1000));
    assert_eq!(report.per_split.get("train"), Some(&200));
    assert_eq!(report.per_split.get("validation"), Some(&40));
    assert_eq!(report.per_split.get("test"), Some(&80));
    eprintln!("{}", report.to_text(1000));
}

#[test]
fn clean_fixture_passes_strictly() {
    let (report, _) = run(&clean_records());
    let balance_or_length = |i: &&bedside_data::validate::Issue| i.check != "balance";
    assert_eq!(report.errors, 0, "{}", report.to_text(100));
    assert_eq!(report.issues.iter().filter(balance_or_length).count(), 0, "{}", report.to_text(100));
    assert!(report.passes(false));
}

#[test]
fn missing_field_is_reported_with_file_line_id_and_field() {
    let mut rs = clean_records();
    rs[2].as_object_mut().unwrap().remove("answer");
    let (report, file) = run(&rs);
    let e = errors(&report, "schema");
    assert_eq!(e.len(), 1, "{}", report.to_text(100));
    assert_eq!(
        (e[0].file.as_deref(), e[0].line, e[0].id.as_deref(), e[0].field.as_deref()),
        (Some(file.as_str()), Some(3), Some("t-03"), Some("answer"))
    );
    assert!(e[0].to_string().contains(&format!("{file}:3 (t-03) `answer`: missing required field")), "{}", e[0]);
    assert!(!report.passes(false));
}

#[test]
fn wrong_type_and_bad_schema_version_are_reported() {
    let mut rs = clean_records();
    rs[0]["key_facts"] = json!("not a list");
    rs[1]["schema_version"] = json!(2);
    let (report, _) = run(&rs);
    let fields: Vec<_> = errors(&report, "schema").iter().map(|i| (i.line, i.field.clone())).collect();
    assert_eq!(fields, [(Some(1), Some("key_facts".into())), (Some(2), Some("schema_version".into()))]);
}

#[test]
fn bad_split_is_reported() {
    let mut rs = clean_records();
    rs[4]["split"] = json!("dev");
    let (report, _) = run(&rs);
    let e = errors(&report, "schema");
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].field.as_deref()), (Some(5), Some("split")));
    assert!(e[0].message.contains("`dev`"));
}

#[test]
fn invalid_json_line_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}{{\"id\": \"broken\",\n", jsonl(&clean_records()[..2]));
    let p = write(dir.path(), "f.jsonl", &text);
    let report = validate_paths(&[&p], &ValidateOptions::default()).unwrap();
    let e = errors(&report, "json");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, Some(3));
}

#[test]
fn duplicate_id_is_reported_on_the_second_occurrence() {
    let mut rs = clean_records();
    rs[3]["id"] = json!("t-01");
    let (report, file) = run(&rs);
    let e = errors(&report, "duplicate-id");
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].id.as_deref()), (Some(4), Some("t-01")));
    assert!(e[0].message.contains(&format!("{file}:1")), "{}", e[0].message);
}

#[test]
fn near_duplicate_is_reported() {
    let mut rs = clean_records();
    // t-07 re-uses t-01's patient and answer with a few words changed; its neutral texts are its own.
    let mut b = record("t-07", "train", "cardiology", "ectopic beats", "afraid");
    b["patient"] = json!(rs[0]["patient"].as_str().unwrap().replace("What should I do?", "What should I do next?"));
    b["answer"] = json!(format!("{} Take care.", rs[0]["answer"].as_str().unwrap()));
    rs.push(b);
    let (report, _) = run(&rs);
    let e = errors(&report, "near-duplicate");
    assert_eq!(e.len(), 1, "{}", report.to_text(100));
    assert_eq!((e[0].line, e[0].id.as_deref()), (Some(7), Some("t-07")));
    assert!(e[0].message.contains("t-01"));
    assert!(errors(&report, "exact-duplicate").is_empty());
    // The clean fixture shares boilerplate between records but is not near-duplicate.
    assert!(errors(&run(&clean_records()).0, "near-duplicate").is_empty());
}

#[test]
fn exact_duplicate_text_is_reported() {
    let mut rs = clean_records();
    rs[5]["patient_neutral"] = rs[1]["patient_neutral"].clone();
    let (report, _) = run(&rs);
    let e = errors(&report, "exact-duplicate");
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].field.as_deref()), (Some(6), Some("patient_neutral")));
}

#[test]
fn condition_leakage_between_splits_is_reported() {
    let mut rs = clean_records();
    rs[5]["condition"] = json!("  Eczema ");
    let (report, file) = run(&rs);
    let e = errors(&report, "leakage");
    assert_eq!(e.len(), 1, "{}", report.to_text(100));
    assert_eq!((e[0].line, e[0].id.as_deref()), (Some(6), Some("t-06")));
    assert!(e[0].message.contains(&format!("\"eczema\" also occurs in train at {file}:2 (t-02)")), "{}", e[0].message);
    // The same condition within train, or in validation and train, is not leakage.
    let mut rs = clean_records();
    rs[4]["condition"] = json!("eczema");
    assert!(errors(&run(&rs).0, "leakage").is_empty());
}

#[test]
fn missing_key_fact_is_reported() {
    let mut rs = clean_records();
    rs[1]["key_facts"] = json!(["these symptoms need a review", "a biopsy is sometimes needed"]);
    let (report, _) = run(&rs);
    let e = errors(&report, "key-fact");
    // Missing from both answers.
    assert_eq!(e.len(), 2, "{}", report.to_text(100));
    assert!(e.iter().all(|i| i.line == Some(2) && i.field.as_deref() == Some("key_facts[1]")));
    assert!(
        e[0].message.contains("`biopsy`") && e[0].message.contains("`sometimes`") && e[0].message.contains("`needed`"),
        "{}",
        e[0].message
    );
    // Stop words do not count: "a" and "is" are not required.
    assert!(!e[0].message.contains("`is`"));
}

#[test]
fn invented_and_dropped_numbers_are_reported() {
    let mut rs = clean_records();
    let answer = rs[0]["answer"].as_str().unwrap().to_string();
    rs[0]["answer"] = json!(format!("{answer} Some people take 400 mg."));
    rs[1]["answer"] = json!(rs[1]["answer"].as_str().unwrap().replace("within 3 days", "within a few days"));
    let (report, _) = run(&rs);
    let e = errors(&report, "numbers");
    assert_eq!(e.len(), 2, "{}", report.to_text(100));
    assert_eq!(e[0].line, Some(1));
    assert!(e[0].message.contains("adds `400`"), "{}", e[0].message);
    assert_eq!(e[1].line, Some(2));
    assert!(e[1].message.contains("drops `3`"), "{}", e[1].message);
    // A number the patient gave may be repeated in the answer.
    let mut rs = clean_records();
    rs[0]["patient"] = json!(format!("{} My pulse was 140.", rs[0]["patient"].as_str().unwrap()));
    rs[0]["answer"] = json!(format!("A pulse of 140 is fast. {answer}"));
    assert!(errors(&run(&rs).0, "numbers").is_empty());
}

#[test]
fn warnings_do_not_fail_unless_strict() {
    let mut rs = clean_records();
    rs[0]["split"] = json!("");
    rs[1]["answer"] = json!(format!("{} Short.", rs[1]["answer"].as_str().unwrap()));
    let (report, _) = run(&rs);
    assert_eq!(report.errors, 0, "{}", report.to_text(100));
    assert!(report.issues_of("incomplete").any(|i| i.field.as_deref() == Some("split")));
    assert!(report.warnings > 0);
    assert!(report.passes(false));
    assert!(!report.passes(true));
}

#[test]
fn balance_flags_categories_far_from_the_mean() {
    let mut rs = Vec::new();
    for i in 0..8 {
        rs.push(record(&format!("b-{i}"), "train", "cardiology", &format!("cond {i}"), "afraid"));
    }
    rs.push(record("b-8", "train", "cardiology", "cond 8", "sad"));
    let (report, _) = run(&rs);
    let w: Vec<_> = report.issues_of("balance").collect();
    assert_eq!(w.len(), 1, "{}", report.to_text(100));
    assert!(
        w[0].message.contains("split `train`") && w[0].message.contains("afraid 8") && w[0].message.contains("sad 1"),
        "{}",
        w[0].message
    );
    assert_eq!(report.emotion_by_split["train"]["afraid"], 8);
}

#[test]
fn json_report_serialises() {
    let mut rs = clean_records();
    rs[0]["split"] = json!("dev");
    let (report, _) = run(&rs);
    let v: Value = serde_json::to_value(&report).unwrap();
    assert_eq!(v["errors"], 1);
    assert_eq!(v["issues"][0]["severity"], "error");
    assert_eq!(v["issues"][0]["check"], "schema");
    assert_eq!(v["issues"][0]["line"], 1);
}
