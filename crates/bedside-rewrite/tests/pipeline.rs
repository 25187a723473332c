//! The rewrite loop with a scripted generator: acceptance, rejects with reasons, retries with new
//! seeds, determinism, resume after a crash, dry run; and the shipped corpus's authored rewrites
//! against the acceptance checks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use bedside_data::{Dialogue, Located};
use bedside_rewrite::emotions::{EmotionPlan, DEFAULT_EMOTIONS};
use bedside_rewrite::pipeline::{self, RejectLine, RewriteConfig};
use bedside_rewrite::{AcceptOptions, Checker, GenRequest, Generated, Generator, PromptSet, Turn};

fn root() -> PathBuf {
    bedside_testutil::workspace_root()
}

/// A prompt set whose rendered prompts a scripted generator can parse: `emotion|neutral text`.
fn simple_prompts(dir: &Path) -> PromptSet {
    std::fs::write(dir.join("meta.toml"), "version = \"test-v9\"\n[answer]\nsystem = \"Be kind.\"\n").unwrap();
    std::fs::write(dir.join("patient.jinja"), "{{ emotion }}|{{ patient_neutral }}").unwrap();
    std::fs::write(dir.join("answer.jinja"), "{{ emotion }}|{{ answer_neutral }}").unwrap();
    PromptSet::load(dir).unwrap()
}

/// Words unique to one record (letters and digits glued, so not numbers), keeping records apart
/// for the corpus validator's near-duplicate check.
fn unique(tag: &str, i: usize, n: usize) -> String {
    (0..n).map(|k| format!("{tag}{i}w{k}")).collect::<Vec<_>>().join(" ")
}

fn record(i: usize) -> Dialogue {
    Dialogue {
        id: format!("r-{i:02}"),
        specialty: "cardiology".into(),
        condition: format!("condition {i}"),
        patient_neutral: format!(
            "I am {} years old and for the last 3 days I have had a cough with some breathlessness on stairs. \
             My temperature was 38.{i}. Also {}. What could this be and should I see someone?",
            40 + i,
            unique("p", i, 15)
        ),
        answer_neutral: format!(
            "A cough with breathlessness and a temperature of 38.{i} can come from a chest infection such as \
             bronchitis or pneumonia. A doctor can listen to your chest and may arrange a chest X-ray. Rest and \
             drink fluids. Seek urgent care if you have chest pain, confusion or blue lips, or if breathing \
             becomes hard. Notes {}.",
            unique("a", i, 25)
        ),
        key_facts: vec!["a doctor can listen to your chest".into()],
        red_flags: vec!["chest pain".into(), "blue lips".into()],
        split: "train".into(),
        provenance: bedside_data::Provenance { method: "imported".into(), fields: BTreeMap::new() },
        ..Dialogue::default()
    }
}

fn located(records: Vec<Dialogue>) -> Vec<Located<Dialogue>> {
    records.into_iter().enumerate().map(|(i, record)| Located { file: "in.jsonl".into(), line: i + 1, record }).collect()
}

/// Writes faithful rewrites, except: `r-01` drops a number on its first attempt, `r-02` never
/// expresses any emotion. Appends a seed-chosen closing so the output depends on the seed.
/// Panics on the call numbered `panic_at` (a crash mid-record).
struct Scripted {
    calls: usize,
    panic_at: Option<usize>,
    seen_seeds: Vec<(String, Turn, usize, u64)>,
}

impl Scripted {
    fn new() -> Self {
        Scripted { calls: 0, panic_at: None, seen_seeds: Vec::new() }
    }
}

impl Generator for Scripted {
    fn spec(&self) -> String {
        "scripted".into()
    }
    fn generate(&mut self, req: &GenRequest) -> Result<Generated> {
        self.calls += 1;
        if self.panic_at == Some(self.calls) {
            panic!("simulated crash");
        }
        self.seen_seeds.push((req.id.to_string(), req.turn, req.attempt, req.seed));
        let (emotion, neutral) = req.prompt.user.split_once('|').expect("scripted prompt");
        let closing = ["Thanks.", "Please help.", "Thank you so much."][(req.seed % 3) as usize];
        let text = match req.turn {
            Turn::Patient if req.id == "r-02" => format!("Hello doctor. {neutral} {closing}"),
            Turn::Patient => format!("I feel so {emotion} about this. {neutral} {closing}"),
            Turn::Answer if req.id == "r-01" && req.attempt == 0 => {
                format!("It is understandable to feel {emotion}. {}", neutral.replace("38.", "thirty-eight point "))
            }
            Turn::Answer => format!(
                "It is completely understandable to feel {emotion}, and I'm glad you asked. {neutral} How are you \
                 managing at home at the moment?"
            ),
        };
        Ok(Generated { text, truncated: false })
    }
}

fn config(prompts: PromptSet, seed: u64, limit: Option<usize>) -> RewriteConfig {
    RewriteConfig {
        prompts,
        plan: EmotionPlan::Balanced(DEFAULT_EMOTIONS.iter().map(|s| s.to_string()).collect()),
        keep_emotion: false,
        seed,
        max_retries: 2,
        limit,
        max_tokens: 512,
        progress: false,
    }
}

fn read_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn accepts_rejects_with_reasons_and_retries_with_new_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = simple_prompts(dir.path());
    let recs = located((0..6).map(record).collect());
    let (out, rej) = (dir.path().join("out.jsonl"), dir.path().join("out.rejects.jsonl"));
    let checker = Checker::lexical(AcceptOptions::default());
    let mut g = Scripted::new();
    let cfg = config(prompts, 11, None);
    let s = pipeline::run(&recs, &mut g, &checker, &cfg, &out, &rej).unwrap();
    assert_eq!((s.accepted, s.rejected, s.skipped, s.remaining), (5, 1, 0, 0));
    // 4 records × 1 attempt + r-01 × 2 + r-02 × 3.
    assert_eq!(s.attempts, 9);

    let outs: Vec<Dialogue> = bedside_data::read_jsonl(&out).unwrap().into_iter().map(|(_, d)| d).collect();
    assert_eq!(outs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["r-00", "r-01", "r-03", "r-04", "r-05"]);
    for d in &outs {
        assert!(bedside_rewrite::emotions::expresses(&d.emotion, &d.patient), "{}", d.id);
        assert_eq!(d.provenance.method, "rewritten");
        assert_eq!(d.provenance.get_str("by"), Some("scripted"));
        assert_eq!(d.provenance.get_str("prompt_version"), Some("test-v9"));
        assert_eq!(d.provenance.fields["seed"], 11);
        assert_eq!(d.provenance.fields["original"]["method"], "imported");
        // Every accepted record passes the checks again, and the corpus validator finds no error.
        assert!(checker.check(d, &d.emotion, &d.patient, &d.answer).unwrap().is_empty());
    }
    assert_eq!(outs[1].provenance.fields["attempts"], 2);
    assert_eq!(outs[0].provenance.fields["attempts"], 1);
    let report = bedside_data::validate::validate_paths(&[&out], &Default::default()).unwrap();
    assert_eq!(report.errors, 0, "{}", report.to_text(20));

    let rejects: Vec<RejectLine> = read_lines(&rej).into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
    let summary: Vec<(&str, usize, bool)> = rejects.iter().map(|r| (r.id.as_str(), r.attempt, r.is_final)).collect();
    assert_eq!(summary, [("r-01", 1, false), ("r-02", 1, false), ("r-02", 2, false), ("r-02", 3, true)]);
    let codes: Vec<&str> = rejects[0].reasons.iter().map(|r| r.code.as_str()).collect();
    assert!(codes.contains(&"answer-number-missing"), "{codes:?}");
    for r in &rejects[1..] {
        assert_eq!(r.reasons.iter().map(|x| x.code.as_str()).collect::<Vec<_>>(), ["emotion-missing"]);
        assert!(r.patient.starts_with("Hello doctor.") && r.prompt_version == "test-v9");
    }
    // Each retry used a different seed.
    let r2: Vec<u64> = g.seen_seeds.iter().filter(|s| s.0 == "r-02" && s.1 == Turn::Patient).map(|s| s.3).collect();
    assert_eq!(r2.len(), 3);
    assert!(r2[0] != r2[1] && r2[1] != r2[2] && r2[0] != r2[2]);
    // Balanced emotions: 6 records over 12 emotions, all different.
    let mut em: Vec<&str> = outs.iter().map(|d| d.emotion.as_str()).collect();
    em.sort();
    em.dedup();
    assert_eq!(em.len(), 5);
}

fn run_all(dir: &Path, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let prompts = simple_prompts(dir);
    let recs = located((0..8).map(record).collect());
    let (out, rej) = (dir.join("out.jsonl"), dir.join("rej.jsonl"));
    let checker = Checker::lexical(AcceptOptions::default());
    pipeline::run(&recs, &mut Scripted::new(), &checker, &config(prompts, seed, None), &out, &rej).unwrap();
    (std::fs::read(&out).unwrap(), std::fs::read(&rej).unwrap())
}

#[test]
fn deterministic_for_a_seed() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = run_all(a.path(), 5);
    assert_eq!(first, run_all(b.path(), 5), "same seed, same files");
    assert_ne!(first.0, run_all(c.path(), 6).0, "another seed changes emotions and texts");
}

#[test]
fn resume_after_a_crash_gives_the_same_files() {
    let reference = tempfile::tempdir().unwrap();
    let (want_out, want_rej) = run_all(reference.path(), 3);

    let dir = tempfile::tempdir().unwrap();
    let prompts = simple_prompts(dir.path());
    let recs = located((0..8).map(record).collect());
    let (out, rej) = (dir.path().join("out.jsonl"), dir.path().join("rej.jsonl"));
    let checker = Checker::lexical(AcceptOptions::default());
    let cfg = config(prompts, 3, None);

    // Run 1: --limit 1 finishes r-00 only.
    let s = pipeline::run(&recs, &mut Scripted::new(), &checker, &config(simple_prompts(dir.path()), 3, Some(1)), &out, &rej).unwrap();
    assert_eq!((s.accepted, s.remaining), (1, 7));

    // Run 2 crashes inside r-02 after its first rejected attempt was written: calls are r-01 (4:
    // two attempts), r-02 attempt 1 (2), then the crash on r-02's second patient turn.
    let mut crashing = Scripted::new();
    crashing.panic_at = Some(7);
    let crashed =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pipeline::run(&recs, &mut crashing, &checker, &cfg, &out, &rej)));
    assert!(crashed.is_err());
    assert!(std::fs::read_to_string(&rej).unwrap().contains("\"id\":\"r-02\""), "a reject of the record in progress");
    // And a torn write at the end of the output, as a kill mid-write leaves.
    let mut bytes = std::fs::read(&out).unwrap();
    bytes.extend_from_slice(b"{\"schema_version\":1,\"id\":\"r-0");
    std::fs::write(&out, bytes).unwrap();

    // Run 3 resumes: skips r-00 and r-01, drops the torn line and r-02's stale reject.
    let s = pipeline::run(&recs, &mut Scripted::new(), &checker, &cfg, &out, &rej).unwrap();
    assert_eq!(s.skipped, 2);
    assert_eq!(std::fs::read(&out).unwrap(), want_out);
    assert_eq!(std::fs::read(&rej).unwrap(), want_rej);

    // Run 4 has nothing left: finally rejected ids are not retried.
    let mut g = Scripted::new();
    let s = pipeline::run(&recs, &mut g, &checker, &cfg, &out, &rej).unwrap();
    assert_eq!((s.skipped, s.attempts, g.calls), (8, 0, 0));
}

#[test]
fn a_corrupt_middle_line_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let recs = located((0..2).map(record).collect());
    let (out, rej) = (dir.path().join("out.jsonl"), dir.path().join("rej.jsonl"));
    std::fs::write(&out, "{\"id\":\"r-00\"}\nnot json\n{\"id\":\"r-01\"}\n").unwrap();
    let cfg = config(simple_prompts(dir.path()), 1, None);
    let err = pipeline::run(&recs, &mut Scripted::new(), &Checker::lexical(AcceptOptions::default()), &cfg, &out, &rej).unwrap_err();
    assert!(format!("{err:#}").contains("out.jsonl:2"), "{err:#}");
}

#[test]
fn bad_input_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.jsonl");
    let mut a = serde_json::to_value(record(1)).unwrap();
    a["answer_neutral"] = "".into();
    let b = serde_json::to_value(record(2)).unwrap();
    std::fs::write(&p, format!("{}\n{}\n{}\n", a, b, b)).unwrap();
    let e = format!("{:#}", pipeline::read_input(&p).unwrap_err());
    assert!(e.contains("in.jsonl:1: field `answer_neutral`"), "{e}");
    assert!(e.contains("in.jsonl:3: field `id`: duplicate id `r-02` (first on line 2)"), "{e}");
    std::fs::write(&p, "{\"id\": 3}\n").unwrap();
    let e = format!("{:#}", pipeline::read_input(&p).unwrap_err());
    assert!(e.contains("in.jsonl:1") && e.contains("`id`"), "{e}");
}

#[test]
fn dry_run_prints_the_shipped_templates_with_version_and_neutral_text() {
    let prompts = PromptSet::load(root().join("configs/prompts/rewrite-v1")).unwrap();
    assert_eq!(prompts.version, "rewrite-v1");
    let recs = located((0..5).map(record).collect());
    let cfg = config(prompts, 42, None);
    let mut buf = Vec::new();
    pipeline::dry_run(&recs, &cfg, 2, &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(text.contains("prompt version rewrite-v1"), "{text}");
    assert_eq!(text.matches("prompt_version: rewrite-v1").count(), 2);
    assert!(text.contains(&recs[0].record.patient_neutral) && text.contains(&recs[1].record.answer_neutral));
    assert!(!text.contains(&recs[2].record.patient_neutral), "only the first 2");
    // The numbers and the question of the patient turn are spelled out for the model.
    assert!(text.contains("Keep these numbers exactly as written: 3, 38.1, 41."), "{text}");
    assert!(text.contains("* What could this be and should I see someone?"), "{text}");
    assert!(text.contains("<the rewritten patient turn>"));
}

#[test]
fn prompt_sets_with_unknown_variables_fail_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meta.toml"), "version = \"x\"\n").unwrap();
    std::fs::write(dir.path().join("patient.jinja"), "{{ patient_nuetral }}").unwrap();
    std::fs::write(dir.path().join("answer.jinja"), "{{ answer_neutral }}").unwrap();
    let e = format!("{:#}", PromptSet::load(dir.path()).unwrap_err());
    assert!(e.contains("patient.jinja"), "{e}");
    std::fs::write(dir.path().join("meta.toml"), "versoin = \"x\"\n").unwrap();
    let e = format!("{:#}", PromptSet::load(dir.path()).unwrap_err());
    assert!(e.contains("meta.toml"), "{e}");
}

/// The authored emotional rewrites of the shipped corpus, run through the acceptance checks as
/// if a model had written them: a reference written independently of the checks.
#[test]
fn the_corpus_authored_rewrites_mostly_pass_the_checks() {
    let located = bedside_data::read_dialogues(&[root().join("data/dialogues")]).unwrap();
    let checker = Checker::lexical(AcceptOptions::default());
    let mut failures: HashMap<String, usize> = HashMap::new();
    let mut passed = 0;
    for l in &located {
        let d = &l.record;
        let r = checker.check(d, &d.emotion, &d.patient, &d.answer).unwrap();
        if r.is_empty() {
            passed += 1;
        }
        for x in r {
            *failures.entry(x.code).or_default() += 1;
        }
        // Swapping in the neutral answer must always fail the comfort check.
        let r = checker.check(d, &d.emotion, &d.patient, &d.answer_neutral).unwrap();
        assert!(r.iter().any(|x| x.code == "not-more-comforting"), "{}", d.id);
    }
    eprintln!("corpus: {passed} of {} authored rewrites pass; failures by check: {failures:?}", located.len());
    assert!(passed * 100 >= located.len() * 90, "{passed} of {}: {failures:?}", located.len());
}
