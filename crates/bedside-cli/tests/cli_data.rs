//! Runs the `bedside data` subcommand (compiled from `src/data.rs`) in-process.

#[path = "../../bedside-data/tests/common/mod.rs"]
mod common;
#[path = "../src/data.rs"]
mod data;
// `data rewrite` flattens the shared model and sampling arguments.
#[allow(dead_code)]
#[path = "../src/args.rs"]
mod args;

use clap::{CommandFactory, Parser, Subcommand};
use common::*;

#[derive(Parser)]
#[command(name = "bedside")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Data(data::DataArgs),
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("bedside").chain(args.iter().copied()))?;
    match cli.command {
        Command::Data(a) => data::run(a),
    }
}

#[test]
fn definition_is_valid_and_every_subcommand_has_examples() {
    Cli::command().debug_assert();
    let cmd = Cli::command();
    let data = cmd.find_subcommand("data").unwrap();
    let names: Vec<&str> = data.get_subcommands().map(|c| c.get_name()).collect();
    assert_eq!(names, ["import", "export", "validate", "stats", "split", "equity-probes", "rewrite"]);
    for sub in std::iter::once(data).chain(data.get_subcommands()) {
        assert!(sub.get_about().is_some(), "{} has no about", sub.get_name());
        let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.starts_with("Examples:\n  bedside data"), "{}: {help}", sub.get_name());
    }
}

#[test]
fn validate_and_stats_on_the_shipped_corpus() {
    let corpus = corpus_dir();
    let c = corpus.to_str().unwrap();
    run(&["data", "validate", c]).unwrap();
    run(&["data", "validate", c, "--json"]).unwrap();
    // The corpus has one balance warning (see the validate tests), so --strict fails.
    assert!(run(&["data", "validate", c, "--strict"]).is_err());
    run(&["data", "stats", c]).unwrap();
    let err = run(&["data", "stats", c, "--model", "no/such-model.gguf"]).unwrap_err();
    assert!(format!("{err:#}").contains("no/such-model.gguf"), "{err:#}");
    if let Some(gguf) = bedside_testutil::smollm2_gguf() {
        run(&["data", "stats", c, "--model", gguf.to_str().unwrap(), "--json"]).unwrap();
    }
}

#[test]
fn import_export_split_and_equity_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    write(
        dir.path(),
        "hcm.json",
        r#"[{"instruction":"x","input":"I have a cough.","output":"See a doctor if it lasts."},{"instruction":"x","input":"Bad"},{"instruction":"x","input":"My ear hurts.","output":"It may be an infection."}]"#,
    );
    let err = run(&["data", "import", "--format", "healthcaremagic", &d("hcm.json"), "--out", &d("hcm.v1.jsonl")]).unwrap_err();
    assert!(err.to_string().contains("--skip-invalid") && err.to_string().contains("field `output`"), "{err}");
    assert!(!dir.path().join("hcm.v1.jsonl").exists(), "nothing written on failure");
    run(&[
        "data",
        "import",
        "--format",
        "healthcaremagic",
        &d("hcm.json"),
        "--out",
        &d("hcm.v1.jsonl"),
        "--skip-invalid",
        "--id-prefix",
        "h",
    ])
    .unwrap();
    let recs = bedside_data::read_jsonl(d("hcm.v1.jsonl")).unwrap();
    assert_eq!(recs.iter().map(|(_, r)| r.id.as_str()).collect::<Vec<_>>(), ["h-1", "h-3"]);

    // Imported records have no patient/answer yet: export needs --neutral.
    assert!(run(&["data", "export", "--format", "openai", &d("hcm.v1.jsonl"), "--out", &d("x.jsonl")]).is_err());
    run(&["data", "export", "--format", "sharegpt", "--neutral", &d("hcm.v1.jsonl"), "--out", &d("hcm.sg.jsonl")]).unwrap();
    assert_eq!(std::fs::read_to_string(d("hcm.sg.jsonl")).unwrap().lines().count(), 2);

    run(&["data", "split", &d("hcm.v1.jsonl"), "--in-place", "--seed", "1"]).unwrap();
    assert!(bedside_data::read_jsonl(d("hcm.v1.jsonl")).unwrap().iter().all(|(_, r)| !r.split.is_empty()));
    assert!(run(&["data", "split", &d("hcm.v1.jsonl")]).is_err(), "--out or --in-place is required");
    assert!(run(&["data", "split", &d("hcm.v1.jsonl"), "--out", &d("s.jsonl"), "--train", "0.9"]).is_err(), "ratios must sum to 1");

    let corpus = corpus_dir();
    run(&[
        "data",
        "export",
        "--format",
        "openai",
        corpus.to_str().unwrap(),
        "--split",
        "test",
        "--system",
        "Be kind.",
        "--out",
        &d("test.openai.jsonl"),
    ])
    .unwrap();
    assert_eq!(std::fs::read_to_string(d("test.openai.jsonl")).unwrap().lines().count(), 80);

    write(
        dir.path(),
        "base.jsonl",
        r#"{"id":"eq-1","specialty":"ent","question":"My ear hurts. What should I do?","implicit_cues":{"black_female":"A.","black_male":"B.","white_female":"C.","white_male":"D."}}"#,
    );
    run(&["data", "equity-probes", "--base", &d("base.jsonl"), "--out", &d("probes.jsonl")]).unwrap();
    assert_eq!(std::fs::read_to_string(d("probes.jsonl")).unwrap().lines().count(), 9);
}

/// Neutral records for the rewrite: the first `n` cardiology dialogues with their emotional
/// texts and emotion cleared (as `data import` leaves them).
fn neutral_input(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let recs = bedside_data::read_jsonl(corpus_dir().join("cardiology.jsonl")).unwrap();
    let text: String = recs
        .into_iter()
        .take(n)
        .map(|(_, mut d)| {
            d.patient.clear();
            d.answer.clear();
            d.emotion.clear();
            format!("{}\n", serde_json::to_string(&d).unwrap())
        })
        .collect();
    write(dir, "neutral.jsonl", &text)
}

fn prompts_dir() -> String {
    bedside_testutil::workspace_root().join("configs/prompts/rewrite-v1").to_str().unwrap().to_string()
}

#[test]
fn rewrite_dry_run_needs_no_model_and_bad_options_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let input = neutral_input(dir.path(), 3);
    let out = dir.path().join("out.jsonl");
    let (i, o, p) = (input.to_str().unwrap(), out.to_str().unwrap(), prompts_dir());
    // A model that does not exist proves --dry-run loads none.
    run(&["data", "rewrite", "-m", "no/such-model.gguf", "--input", i, "--output", o, "--prompts", &p, "--dry-run"]).unwrap();
    assert!(!out.exists(), "a dry run writes nothing");
    let err =
        run(&["data", "rewrite", "--input", i, "--output", o, "--prompts", &p, "--emotions", "afraid,happy", "--dry-run"]).unwrap_err();
    assert!(format!("{err:#}").contains("unknown emotion `happy`"), "{err:#}");
    let err = run(&["data", "rewrite", "--input", i, "--output", o, "--prompts", "/no/such/prompts", "--dry-run"]).unwrap_err();
    assert!(format!("{err:#}").contains("/no/such/prompts"), "{err:#}");
    assert!(run(&["data", "rewrite", "--input", i, "--output", o, "--emotions", "sad", "--emotion-weights", "w.toml"]).is_err());
    let err =
        run(&["data", "rewrite", "-m", "no/such-model.gguf", "--input", i, "--output", o, "--prompts", &p, "--no-embedder"]).unwrap_err();
    assert!(format!("{err:#}").contains("no/such-model.gguf"), "{err:#}");
}

/// The real engine path end to end on the default model: files written, every accepted record
/// passes the acceptance checks again and `data validate`, every reject has reasons, and a rerun
/// resumes (nothing new to do).
#[test]
fn rewrite_end_to_end_on_the_default_model() {
    let Some(gguf) = bedside_testutil::smollm2_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    // One record keeps this under two minutes on 2 cores; the pipeline's own tests cover more.
    let input = neutral_input(dir.path(), 1);
    let out = dir.path().join("out.jsonl");
    let rej = dir.path().join("out.rejects.jsonl");
    let args = [
        "data",
        "rewrite",
        "-m",
        gguf.to_str().unwrap(),
        "--device",
        "cpu",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--prompts",
        &prompts_dir(),
        "--limit",
        "1",
        "--max-retries",
        "1",
        "--seed",
        "3",
        "--max-tokens",
        "320",
    ];
    run(&args).unwrap();
    assert!(out.is_file() && rej.is_file(), "output and default rejects file are created");
    let accepted: Vec<bedside_data::Dialogue> = bedside_data::read_jsonl(&out).unwrap().into_iter().map(|(_, d)| d).collect();
    let rejects: Vec<bedside_rewrite::RejectLine> =
        std::fs::read_to_string(&rej).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let input_recs: Vec<bedside_data::Dialogue> = bedside_data::read_jsonl(&input).unwrap().into_iter().map(|(_, d)| d).collect();
    let finals: Vec<&str> = rejects.iter().filter(|r| r.is_final).map(|r| r.id.as_str()).collect();
    eprintln!("default model: {} accepted, {} finally rejected, {} reject lines", accepted.len(), finals.len(), rejects.len());
    // The record was finished: accepted or finally rejected.
    let finished: Vec<&str> = accepted.iter().map(|d| d.id.as_str()).chain(finals.iter().copied()).collect();
    assert_eq!(finished, [input_recs[0].id.as_str()]);
    for r in &rejects {
        assert!(!r.reasons.is_empty() && r.reasons.iter().all(|x| !x.code.is_empty() && !x.detail.is_empty()), "{r:?}");
        assert!(r.attempt >= 1 && r.attempt <= 2 && r.prompt_version == "rewrite-v1");
    }
    let sim = bedside_rewrite::MiniLmSimilarity::load(&bedside_embed::Embedder::default_dir()).ok();
    let checker = bedside_rewrite::Checker {
        similarity: sim.map(|s| Box::new(s) as Box<dyn bedside_rewrite::Similarity>),
        ..bedside_rewrite::Checker::lexical(Default::default())
    };
    for d in &accepted {
        let src = input_recs.iter().find(|r| r.id == d.id).unwrap();
        assert!(checker.check(src, &d.emotion, &d.patient, &d.answer).unwrap().is_empty(), "{}", d.id);
        assert_eq!(d.provenance.method, "rewritten");
        assert_eq!(d.provenance.get_str("prompt_version"), Some("rewrite-v1"));
        assert_eq!(d.provenance.fields["seed"], 3);
    }
    if !accepted.is_empty() {
        let report = bedside_data::validate::validate_paths(&[&out], &Default::default()).unwrap();
        assert_eq!(report.errors, 0, "{}", report.to_text(20));
    }
    // Rerunning the same command resumes: the record is finished, so nothing changes.
    let before = (std::fs::read(&out).unwrap(), std::fs::read(&rej).unwrap());
    run(&args).unwrap();
    assert_eq!((std::fs::read(&out).unwrap(), std::fs::read(&rej).unwrap()), before, "a rerun redid finished records");
}
