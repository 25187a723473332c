mod common;

use bedside_data::{read_dialogues, read_jsonl, write_atomic, write_back_in_place, write_jsonl_atomic, Dialogue};
use common::*;

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn atomic_write_replaces_the_target_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "out.jsonl", "old content that is longer than the new one\n");
    let records: Vec<Dialogue> = clean_records().into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
    write_jsonl_atomic(&target, &records).unwrap();
    assert_eq!(listing(dir.path()), ["out.jsonl"]);
    let back: Vec<Dialogue> = read_jsonl(&target).unwrap().into_iter().map(|(_, d)| d).collect();
    assert_eq!(back, records);
    let text = std::fs::read_to_string(&target).unwrap();
    assert_eq!(text.lines().count(), records.len());
    assert!(text.ends_with('\n') && !text.contains("old content"));

    write_atomic(&target, b"x\n").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"x\n");
    assert_eq!(listing(dir.path()), ["out.jsonl"]);
}

#[test]
fn failed_atomic_write_leaves_target_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a non-empty directory: the rename fails after the temp file was written.
    let target = dir.path().join("busy");
    std::fs::create_dir(&target).unwrap();
    write(&target, "keep", "k");
    let err = write_atomic(&target, b"data").unwrap_err();
    assert!(err.to_string().contains("busy"), "{err}");
    assert_eq!(listing(dir.path()), ["busy"]);
    assert_eq!(listing(&target), ["keep"]);
    // A missing directory is an error naming the path.
    assert!(write_atomic(dir.path().join("missing/x.jsonl"), b"").is_err());
}

#[test]
fn shipped_corpus_reads_and_rewrites_without_loss() {
    let files = bedside_data::jsonl_files(&[corpus_dir()]).unwrap();
    assert_eq!(files.len(), 20);
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let records: Vec<Dialogue> = read_jsonl(&f).unwrap().into_iter().map(|(_, d)| d).collect();
        let out = dir.path().join(f.file_name().unwrap());
        write_jsonl_atomic(&out, &records).unwrap();
        // Same JSON values line by line (the shipped files mix compact and spaced separators; the
        // rewrite is compact, fields in schema order).
        let parse = |p: &std::path::Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        };
        assert_eq!(parse(&out), parse(&f), "{}", f.display());
        let first = std::fs::read_to_string(&out).unwrap();
        assert!(first.starts_with("{\"schema_version\":1,\"id\":"), "{}", f.display());
    }
    // A file named twice is read once.
    let all = read_dialogues(&[corpus_dir(), corpus_dir().join("cardiology.jsonl")]).unwrap();
    assert_eq!(all.len(), 320);
    assert!(all.iter().all(|l| l.line >= 1 && l.line <= 16));
}

#[test]
fn records_written_back_in_place_return_to_their_own_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rs = clean_records();
    let (first, second) = rs.split_at(2);
    let a = write(dir.path(), "a.jsonl", &jsonl(first));
    let b = write(dir.path(), "b.jsonl", &jsonl(second));
    let located = read_dialogues(&[dir.path()]).unwrap();
    let mut records: Vec<Dialogue> = located.iter().map(|l| l.record.clone()).collect();
    for r in &mut records {
        r.split = "test".into();
    }
    write_back_in_place(&located, &records).unwrap();
    let ids = |p: &std::path::Path| -> Vec<(String, String)> {
        read_jsonl(p).unwrap().into_iter().map(|(_, d): (usize, Dialogue)| (d.id, d.split)).collect()
    };
    let want = |rs: &[serde_json::Value]| -> Vec<(String, String)> {
        rs.iter().map(|r| (r["id"].as_str().unwrap().to_string(), "test".to_string())).collect()
    };
    assert_eq!(ids(&a), want(first));
    assert_eq!(ids(&b), want(second));
    assert_eq!(listing(dir.path()), ["a.jsonl", "b.jsonl"]);
    // Records that do not match what was read are refused, and nothing is written.
    let err = write_back_in_place(&located, &records[1..]).unwrap_err();
    assert!(err.to_string().contains("back over"), "{err}");
}

#[test]
fn read_errors_name_file_line_id_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = clean_records();
    rs[1]["split"] = serde_json::json!("dev");
    rs[2].as_object_mut().unwrap().remove("provenance");
    let p = write(dir.path(), "bad.jsonl", &format!("{}\nnot json\n", jsonl(&rs).trim_end()));
    let err = read_jsonl(&p).unwrap_err();
    let msg = err.to_string();
    let f = p.display().to_string();
    assert!(msg.starts_with("3 invalid records:"), "{msg}");
    assert!(msg.contains(&format!("{f}:2 (id `t-02`): field `split`: `dev` is not an allowed split")), "{msg}");
    assert!(msg.contains(&format!("{f}:3 (id `t-03`): field `provenance`: missing required field")), "{msg}");
    assert!(msg.contains(&format!("{f}:7: invalid JSON at column 2: expected ident")), "{msg}");
}
