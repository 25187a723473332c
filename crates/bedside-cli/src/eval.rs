//! `bedside eval …`: run an evaluation (base vs tuned), compare two runs, and the empathy scorer's
//! commands (score, validate-scorer, train-scorer). The work is done by `bedside-eval` and
//! `bedside-empathy`; this is the CLI.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bedside_eval::{compare, report, EvalConfig, RunOptions};
use clap::{Args, Subcommand};

use crate::eval_scorer;

#[derive(Args)]
#[command(
    about = "Evaluate base vs tuned models: empathy, knowledge, safety, equity, statistics and an HTML report",
    after_help = "Examples:\n  bedside eval run --config configs/eval-smollm2.toml --adapter runs/smollm2-cpu/adapter\n  bedside eval run --config configs/eval-smollm2.toml --limit 5 --output-dir runs/eval-quick\n  bedside eval summary runs/demo/eval\n  bedside eval compare runs/eval-a runs/eval-b\n  bedside eval score --input pairs.jsonl --output scores.jsonl\n  bedside eval validate-scorer\n  bedside eval train-scorer --output my-heads.safetensors"
)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Subcommand)]
enum EvalCommand {
    Run(RunArgs),
    Summary(SummaryArgs),
    Compare(CompareArgs),
    Score(eval_scorer::ScoreArgs),
    ValidateScorer(eval_scorer::ValidateScorerArgs),
    TrainScorer(eval_scorer::TrainScorerArgs),
}

#[derive(Args)]
#[command(
    about = "Answer the test split, safety set and equity probes with every system, score, and write the report",
    long_about = "Answer the test split, the safety set and the equity probes with the base model and each adapter \
(same prompts, decoding settings and per-item seeds for every system), score every answer (EPITOME empathy, key-fact recall, \
ROUGE-L, BLEU, MiniLM similarity, perplexity, length, reading grade, safety, equity; optionally an LLM judge) together with \
fixed control answers built from each item (reference, neutral, neutral + generic question, comfort only, the message \
restated, the reference contradicted), check every measure's validity gates on the controls, conclude the primary \
endpoints and write generations.jsonl, scores.jsonl, results.json, report.md and report.html into the output directory. \
Answers are cached in generations.jsonl: rerunning the same command resumes where it stopped.",
    after_help = "Examples:\n  bedside eval run --config configs/eval-smollm2.toml --adapter runs/smollm2-cpu/adapter\n  bedside eval run --config configs/eval-smollm2.toml --adapter kind=runs/a --adapter terse=runs/b\n  bedside eval run --config configs/eval-smollm2.toml --limit 3 --output-dir runs/eval-smoke\n  bedside eval run --config configs/eval-smollm2.toml --heads ~/epitome-heads.safetensors   # scorer from train-scorer\n\nThe config format is documented in configs/eval-smollm2.toml; --adapter NAME=DIR (or DIR, named tuned, tuned2, …) replaces the\nconfig's adapter systems and keeps its base system."
)]
pub struct RunArgs {
    /// The run configuration (TOML).
    #[arg(long, default_value = "configs/eval-smollm2.toml")]
    pub config: PathBuf,
    /// Run directory (default: the config's output_dir, else runs/eval-<name>).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// At most N items per set (equity: N base questions with all their variants).
    #[arg(long)]
    pub limit: Option<usize>,
    /// An adapter system, NAME=DIR or DIR (repeatable); replaces the config's adapter systems.
    /// DIR may be a hub id org/name[@revision] of an adapter repository.
    #[arg(long = "adapter", value_name = "[NAME=]DIR")]
    pub adapters: Vec<String>,
    /// Override the base model of the config.
    #[arg(long)]
    pub model: Option<String>,
    /// Print the report's path only, not the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Empathy heads to score with (default: the config's `empathy_heads`, else the shipped
    /// data/empathy/heads-v1.safetensors), e.g. ones from `bedside eval train-scorer`.
    #[arg(long, value_name = "FILE")]
    pub heads: Option<PathBuf>,
}

#[derive(Args)]
#[command(
    about = "Print the summary of a finished run (Markdown) from its results.json",
    long_about = "Print the summary of an evaluation run as Markdown, from its results.json alone: the verdict on the primary \
endpoints, every measure's mean for every system and control answer, each system's differences against the baseline with their \
role (primary, secondary, descriptive), Holm-adjusted p and conclusion, and the validity gates computed on the controls. \
The README's figures are this output for the main job.",
    after_help = "Examples:\n  bedside eval summary runs/demo/eval\n  bedside eval summary runs/demo/eval/results.json > summary.md"
)]
pub struct SummaryArgs {
    /// Run directory or its results.json.
    pub run: PathBuf,
}

#[derive(Args)]
#[command(
    about = "Show the differences between two evaluation runs (B − A)",
    after_help = "Examples:\n  bedside eval compare runs/eval-a runs/eval-b\n  bedside eval compare runs/eval-a/results.json runs/eval-b/results.json --json"
)]
pub struct CompareArgs {
    /// Run directory or results.json of run A.
    pub run_a: PathBuf,
    /// Run directory or results.json of run B.
    pub run_b: PathBuf,
    /// Print JSON rows instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.command {
        EvalCommand::Run(r) => run_eval(r),
        EvalCommand::Summary(s) => {
            let r = bedside_eval::results::Results::load(&s.run)?;
            print!("{}", report::summary_table(&r));
            Ok(())
        }
        EvalCommand::Compare(c) => run_compare(c),
        EvalCommand::Score(s) => eval_scorer::score(s),
        EvalCommand::ValidateScorer(v) => eval_scorer::validate_scorer(v),
        EvalCommand::TrainScorer(t) => eval_scorer::train_scorer(t),
    }
}

fn run_eval(a: RunArgs) -> Result<()> {
    let mut cfg = EvalConfig::load(&a.config)?;
    if let Some(m) = &a.model {
        cfg.model = m.clone();
    }
    cfg.set_adapters(&a.adapters).with_context(|| format!("{}: --adapter", a.config.display()))?;
    if let Some(n) = a.limit {
        cfg.apply_limit(n);
    }
    if let Some(h) = &a.heads {
        cfg.empathy_heads = Some(h.clone());
    }
    // An adapter may be a hub id (org/name[@revision]): fetched once here, or read from the
    // cache alone when offline, as `--model` is.
    let offline = cfg.offline;
    for system in &mut cfg.systems {
        for adapter in &mut system.adapters {
            *adapter = bedside_model::resolve_adapter(adapter, offline)
                .with_context(|| format!("system `{}`: adapter {}", system.name, adapter.display()))?;
        }
    }
    let output_dir =
        a.output_dir.clone().or_else(|| cfg.output_dir.clone()).unwrap_or_else(|| PathBuf::from(format!("runs/eval-{}", cfg.name)));
    let outcome = bedside_eval::run(RunOptions { config: cfg, output_dir, progress: true })?;
    if !a.quiet {
        println!("{}", report::summary_table(&outcome.results));
    }
    println!("report: {}", outcome.dir.join("report.html").display());
    Ok(())
}

fn run_compare(c: CompareArgs) -> Result<()> {
    let a = compare::load(&c.run_a)?;
    let b = compare::load(&c.run_b)?;
    let rows = compare::compare(&a, &b);
    if c.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", compare::format_table(&rows, "A", "B"));
        println!("A = {}\nB = {}", compare::results_path(&c.run_a).display(), compare::results_path(&c.run_b).display());
    }
    Ok(())
}
