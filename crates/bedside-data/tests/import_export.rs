mod common;

use std::path::Path;

use bedside_data::export::{export_records, to_jsonl, ExportFormat, ExportOptions};
use bedside_data::import::{import_file, ImportFormat, ImportOptions, ImportOutcome};
use bedside_data::{DataError, Dialogue};
use common::*;

fn opts(format: ImportFormat, skip_invalid: bool) -> ImportOptions {
    ImportOptions { format, id_prefix: None, skip_invalid }
}

/// Imports `text` (written to `name`) strictly, expecting failure, and with --skip-invalid.
/// Returns the strict error and the lenient outcome.
fn import_both(name: &str, text: &str, format: ImportFormat) -> (DataError, ImportOutcome, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), name, text);
    let err = import_file(&p, &opts(format, false)).expect_err("a malformed record must fail the strict import");
    let ok = import_file(&p, &opts(format, true)).unwrap();
    (err, ok, p.display().to_string())
}

fn pairs(records: &[Dialogue]) -> Vec<(&str, &str, &str)> {
    records.iter().map(|r| (r.id.as_str(), r.patient_neutral.as_str(), r.answer_neutral.as_str())).collect()
}

fn assert_imported_shape(r: &Dialogue, from: &str, source: &str) {
    assert_eq!(r.schema_version, 1);
    for (f, v) in [
        ("patient", &r.patient),
        ("answer", &r.answer),
        ("emotion", &r.emotion),
        ("split", &r.split),
        ("specialty", &r.specialty),
        ("condition", &r.condition),
    ] {
        assert!(v.is_empty(), "{f} must be left empty, got {v:?}");
    }
    assert!(r.key_facts.is_empty() && r.red_flags.is_empty());
    assert_eq!(r.provenance.method, "imported");
    assert_eq!(r.provenance.get_str("from"), Some(from));
    assert_eq!(r.provenance.get_str("source"), Some(source));
    assert_eq!(r.provenance.fields.len(), 2);
}

fn single(err: &DataError) -> &bedside_data::RecordError {
    let es = err.record_errors();
    assert_eq!(es.len(), 1, "{err}");
    es[0]
}

#[test]
fn chatdoctor_jsonl() {
    let text = r#"{"instruction":"If you are a doctor, please answer the medical questions based on the patient's description.","input":"I have a cough for 2 weeks.","output":"A cough lasting 2 weeks should be checked."}
{"instruction":"If you are a doctor, please answer the medical questions based on the patient's description.","input":"My knee hurts."}

{"instruction":"If you are a doctor, please answer the medical questions based on the patient's description.","input":"  I feel dizzy.  ","output":"Dizziness has many causes."}
"#;
    let (err, ok, file) = import_both("chatdoctor.jsonl", text, ImportFormat::ChatDoctor);
    let e = single(&err);
    assert_eq!((e.line, e.field.as_deref()), (2, Some("output")));
    assert!(err.to_string().contains(&format!("{file}:2: field `output`: missing required field")), "{err}");
    assert_eq!(
        pairs(&ok.records),
        [
            ("chatdoctor-1", "I have a cough for 2 weeks.", "A cough lasting 2 weeks should be checked."),
            ("chatdoctor-3", "I feel dizzy.", "Dizziness has many causes."),
        ]
    );
    assert_eq!((ok.total, ok.skipped.len()), (3, 1));
    assert_imported_shape(&ok.records[0], "chatdoctor", "chatdoctor.jsonl");
}

#[test]
fn healthcaremagic_json_array_with_a_malformed_element() {
    let text = "[\n  {\n    \"instruction\": \"If you are a doctor, please answer.\",\n    \"input\": \"Rash on my arm, itchy.\",\n    \"output\": \"It may be eczema.\"\n  },\n  {\n    \"instruction\": \"If you are a doctor, please answer.\",\n    \"input\": \"Headache every morning.\",\n    \"output\": oops\n  },\n  {\"instruction\": \"x\", \"input\": \"Sore throat with fever of 38.5 C.\", \"output\": \"Often viral; see a doctor if it lasts.\"}\n]\n";
    let (err, ok, file) = import_both("HealthCareMagic-100k.json", text, ImportFormat::HealthCareMagic);
    let e = single(&err);
    // The element starts on line 7; the bad token is on line 10.
    assert_eq!(e.line, 10, "{err}");
    assert!(e.to_string().starts_with(&format!("{file}:10: invalid JSON")), "{e}");
    assert_eq!(
        pairs(&ok.records),
        [
            ("HealthCareMagic-100k-1", "Rash on my arm, itchy.", "It may be eczema."),
            ("HealthCareMagic-100k-3", "Sore throat with fever of 38.5 C.", "Often viral; see a doctor if it lasts."),
        ]
    );
    assert_eq!((ok.total, ok.skipped.len()), (3, 1));
    assert_imported_shape(&ok.records[1], "healthcaremagic", "HealthCareMagic-100k.json");
}

#[test]
fn icliniq_with_wrong_type_and_answer_icliniq() {
    let text = r#"[{"input":"Is my mole dangerous?","answer_icliniq":"Please have it examined.","answer_chatgpt":"ignored"},
{"input":"Chest pain at night.","output":42},
{"input":"Ear pain.","output":"Probably an infection."}]"#;
    let (err, ok, _) = import_both("iCliniq.json", text, ImportFormat::ICliniq);
    let e = single(&err);
    assert_eq!((e.line, e.field.as_deref()), (2, Some("output")));
    assert!(e.message.contains("expected a string, found a number"));
    assert_eq!(
        pairs(&ok.records),
        [("iCliniq-1", "Is my mole dangerous?", "Please have it examined."), ("iCliniq-3", "Ear pain.", "Probably an infection.")]
    );
}

#[test]
fn alpaca_joins_instruction_and_input() {
    let text = r#"{"instruction":"What helps a migraine?","input":"","output":"Rest in a dark room."}
{"instruction":"Explain this result.","input":"My ferritin is 8.","output":"That is low; ask about iron."}
{"instruction":"","input":"x","output":"y"}
"#;
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "alpaca.jsonl", text);
    let o = ImportOptions { format: ImportFormat::Alpaca, id_prefix: Some("alp".into()), skip_invalid: true };
    let ok = import_file(&p, &o).unwrap();
    assert_eq!(
        pairs(&ok.records),
        [
            ("alp-1", "What helps a migraine?", "Rest in a dark room."),
            ("alp-2", "Explain this result.\n\nMy ferritin is 8.", "That is low; ask about iron."),
        ]
    );
    assert_eq!(ok.skipped.len(), 1);
    assert_eq!((ok.skipped[0].line, ok.skipped[0].field.as_deref()), (3, Some("instruction")));
    let err = import_file(&p, &opts(ImportFormat::Alpaca, false)).unwrap_err();
    assert_eq!(single(&err).line, 3);
}

#[test]
fn openai_messages() {
    let text = r#"{"messages":[{"role":"system","content":"Be kind."},{"role":"user","content":"I keep waking at 3 am."},{"role":"assistant","content":"Early waking can come with low mood."}]}
{"messages":[{"role":"user","content":"Is this OK?"},{"role":"assistant","content":7}]}
{"messages":[{"role":"user","content":[{"type":"text","text":"My ankle is swollen."}]},{"role":"assistant","content":"Rest and elevate it."},{"role":"user","content":"Thanks"},{"role":"assistant","content":"You're welcome."}]}
"#;
    let (err, ok, _) = import_both("chats.jsonl", text, ImportFormat::OpenAi);
    let e = single(&err);
    assert_eq!((e.line, e.field.as_deref()), (2, Some("messages[1].content")));
    assert_eq!(
        pairs(&ok.records),
        [
            ("chats-1", "I keep waking at 3 am.", "Early waking can come with low mood."),
            ("chats-3", "My ankle is swollen.", "Rest and elevate it.")
        ]
    );
    assert_eq!(ok.multi_turn, 1);
    assert_imported_shape(&ok.records[0], "openai", "chats.jsonl");
}

#[test]
fn sharegpt_from_value_and_role_content() {
    let text = r#"{"id":"a","conversations":[{"from":"human","value":"My child has a fever."},{"from":"gpt","value":"Keep them hydrated."}]}
{"id":"b","conversations":[{"from":"narrator","value":"?"},{"from":"gpt","value":"?"}]}
{"id":"c","conversations":[{"role":"user","content":"Blurred vision today."},{"role":"assistant","content":"See an eye doctor today."}]}
"#;
    let (err, ok, _) = import_both("sg.jsonl", text, ImportFormat::ShareGpt);
    let e = single(&err);
    assert_eq!((e.line, e.field.as_deref()), (2, Some("conversations[0].from")));
    assert!(e.message.contains("`narrator`"));
    assert_eq!(
        pairs(&ok.records),
        [("sg-1", "My child has a fever.", "Keep them hydrated."), ("sg-3", "Blurred vision today.", "See an eye doctor today.")]
    );
}

#[test]
fn meddialog_original_release_format() {
    let text = "id=0\nhttps://www.healthcaremagic.com/questions/a\n\nDescription\nQ. What does abutment of the nerve root mean?\n\nDialogue\nPatient:\nHi doctor, what does abutment of the nerve root mean?\n\nIt was on my MRI.\nDoctor:\nHi. It means the disc touches the nerve root.\n\nid=1\nhttps://www.healthcaremagic.com/questions/b\n\nDescription\nQ. Missing reply.\n\nDialogue\nPatient:\nMy back hurts.\n\nid=2\nDescription: Q. Cough.\nPatient: I have had a cough for 3 weeks.\nDoctor: A cough for 3 weeks needs a chest examination.\nPatient: Thank you.\nDoctor: You are welcome.\n";
    let (err, ok, file) = import_both("healthcaremagic_dialogue_1.txt", text, ImportFormat::MedDialog);
    let e = single(&err);
    assert_eq!((e.line, e.field.as_deref()), (15, Some("Doctor")), "{err}"); // its `id=1` line
    assert!(e.to_string().starts_with(&format!("{file}:15: field `Doctor`")));
    assert_eq!(
        pairs(&ok.records),
        [
            (
                "healthcaremagic_dialogue_1-1",
                "Hi doctor, what does abutment of the nerve root mean?\n\nIt was on my MRI.",
                "Hi. It means the disc touches the nerve root."
            ),
            ("healthcaremagic_dialogue_1-3", "I have had a cough for 3 weeks.", "A cough for 3 weeks needs a chest examination."),
        ]
    );
    assert_eq!((ok.total, ok.skipped.len(), ok.multi_turn), (3, 1, 1));
    assert_imported_shape(&ok.records[0], "meddialog", "healthcaremagic_dialogue_1.txt");
}

#[test]
fn meddialog_blank_line_separated() {
    let text = "Description: Q. Sore eyes.\n\nPatient: My eyes are sore.\nDoctor: Try lubricating drops.\n\nPatient: I sprained my wrist.\nDoctor:\n\nPatient: My toe is red.\nDoctor: It may be gout.\nIt can be treated.\n";
    let (err, ok, _) = import_both("md.txt", text, ImportFormat::MedDialog);
    let e = single(&err);
    assert_eq!((e.line, e.field.as_deref()), (7, Some("Doctor")), "{err}");
    assert_eq!(e.message, "empty text");
    assert_eq!(
        pairs(&ok.records),
        [("md-1", "My eyes are sore.", "Try lubricating drops."), ("md-3", "My toe is red.", "It may be gout.\nIt can be treated.")]
    );
}

fn fixture_dialogues() -> Vec<Dialogue> {
    clean_records().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect()
}

fn round_trip(format: ExportFormat, import_as: ImportFormat, neutral: bool, system: Option<&str>) {
    let records = fixture_dialogues();
    let opts = ExportOptions { format, system: system.map(str::to_string), neutral, skip_empty: false };
    let out = export_records(&records, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "export.jsonl", &to_jsonl(&out.lines));
    let back = import_file(&p, &opts_for(import_as)).unwrap();
    assert_eq!(back.records.len(), records.len());
    for (orig, imp) in records.iter().zip(&back.records) {
        let (p, a) = if neutral { (&orig.patient_neutral, &orig.answer_neutral) } else { (&orig.patient, &orig.answer) };
        assert_eq!(&imp.patient_neutral, p);
        assert_eq!(&imp.answer_neutral, a);
    }
    assert_eq!(back.multi_turn, 0);
}

fn opts_for(f: ImportFormat) -> ImportOptions {
    opts(f, false)
}

#[test]
fn export_round_trips_through_the_importers() {
    for neutral in [false, true] {
        for system in [None, Some("You are a caring clinician.")] {
            round_trip(ExportFormat::OpenAi, ImportFormat::OpenAi, neutral, system);
            round_trip(ExportFormat::ShareGpt, ImportFormat::ShareGpt, neutral, system);
        }
    }
}

#[test]
fn export_shapes_and_empty_texts() {
    let records = fixture_dialogues();
    let o = ExportOptions { format: ExportFormat::OpenAi, system: Some("S".into()), neutral: false, skip_empty: false };
    let out = export_records(&records[..1], &o).unwrap();
    assert_eq!(out.lines[0]["messages"][0], serde_json::json!({"role":"system","content":"S"}));
    assert_eq!(out.lines[0]["messages"][1]["content"], records[0].patient.as_str());
    assert_eq!(out.lines[0]["messages"][2]["role"], "assistant");
    let o = ExportOptions { format: ExportFormat::ShareGpt, system: None, neutral: true, skip_empty: false };
    let out = export_records(&records[..1], &o).unwrap();
    assert_eq!(out.lines[0]["id"], "t-01");
    assert_eq!(out.lines[0]["conversations"][0]["from"], "human");
    assert_eq!(out.lines[0]["conversations"][1]["value"], records[0].answer_neutral.as_str());

    // An imported record (empty patient/answer) cannot be exported as patient/answer…
    let mut imported = records[0].clone();
    imported.patient.clear();
    imported.answer.clear();
    let o = ExportOptions::new(ExportFormat::OpenAi);
    let err = export_records(&[imported.clone(), records[1].clone()], &o).unwrap_err();
    assert!(err.to_string().contains("field `patient`") && err.to_string().contains("t-01"), "{err}");
    // …unless skipped (counted) or exported neutral.
    let o = ExportOptions { skip_empty: true, ..ExportOptions::new(ExportFormat::OpenAi) };
    let out = export_records(&[imported.clone(), records[1].clone()], &o).unwrap();
    assert_eq!((out.lines.len(), out.skipped_empty.as_slice()), (1, ["t-01".to_string()].as_slice()));
    let o = ExportOptions { neutral: true, ..ExportOptions::new(ExportFormat::OpenAi) };
    assert_eq!(export_records(&[imported], &o).unwrap().lines.len(), 1);
}

#[test]
fn imported_records_are_schema_valid_and_validate_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "in.jsonl", "{\"input\":\"I have had a rash for 4 days on both arms and it itches at night.\",\"output\":\"A rash for 4 days that itches at night is often eczema or contact dermatitis; see a doctor if it spreads.\"}\n");
    let ok = import_file(&src, &opts(ImportFormat::ChatDoctor, false)).unwrap();
    let out = dir.path().join("out.jsonl");
    bedside_data::write_jsonl_atomic(&out, &ok.records).unwrap();
    let back = bedside_data::read_jsonl(&out).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].1, ok.records[0]);
    let report = bedside_data::validate::validate_paths(&[&out], &Default::default()).unwrap();
    assert_eq!(report.errors, 0, "{}", report.to_text(100));
    assert!(report.warnings > 0, "unrewritten records warn");
}

#[test]
fn missing_input_file_names_the_path() {
    let err = import_file(Path::new("/nonexistent/x.json"), &opts(ImportFormat::ChatDoctor, false)).unwrap_err();
    assert!(err.to_string().starts_with("/nonexistent/x.json: "), "{err}");
}
