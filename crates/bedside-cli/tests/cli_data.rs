//! Runs the `bedside data` subcommand (compiled from `src/data.rs`) in-process.

#[path = "../../bedside-data/tests/common/mod.rs"]
mod common;
#[path = "../src/data.rs"]
mod data;

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
    assert_eq!(names, ["import", "export", "validate", "stats", "split", "equity-probes"]);
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
    let err = run(&["data", "import", "--format", "healthcaremagic", &d("hcm.json"), "--out", &d("hcm.v1.jsonl")])
        .unwrap_err();
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
    run(&["data", "export", "--format", "sharegpt", "--neutral", &d("hcm.v1.jsonl"), "--out", &d("hcm.sg.jsonl")])
        .unwrap();
    assert_eq!(std::fs::read_to_string(d("hcm.sg.jsonl")).unwrap().lines().count(), 2);

    run(&["data", "split", &d("hcm.v1.jsonl"), "--in-place", "--seed", "1"]).unwrap();
    assert!(bedside_data::read_jsonl(d("hcm.v1.jsonl")).unwrap().iter().all(|(_, r)| !r.split.is_empty()));
    assert!(run(&["data", "split", &d("hcm.v1.jsonl")]).is_err(), "--out or --in-place is required");
    assert!(
        run(&["data", "split", &d("hcm.v1.jsonl"), "--out", &d("s.jsonl"), "--train", "0.9"]).is_err(),
        "ratios must sum to 1"
    );

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
