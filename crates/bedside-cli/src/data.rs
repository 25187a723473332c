//! `bedside data …`: import, export, validate, split and inspect the dialogue corpus, generate
//! the equity probes, and rewrite neutral dialogues with a model. The work is done by the
//! `bedside-data` and `bedside-rewrite` crates; this is the CLI.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bedside_data::export::{ExportFormat, ExportOptions};
use bedside_data::import::{ImportFormat, ImportOptions};
use bedside_data::split::SplitOptions;
use bedside_data::validate::ValidateOptions;
use bedside_data::{DataError, Dialogue};
use clap::{Args, Subcommand, ValueEnum};

use crate::args::{ModelArgs, SamplingArgs};

const DEFAULT_CORPUS: &str = "data/dialogues";
const DEFAULT_EQUITY_BASE: &str = "data/eval/equity-base.jsonl";
const DEFAULT_EQUITY_PROBES: &str = "data/eval/equity-probes.jsonl";
const DEFAULT_PROMPTS: &str = "configs/prompts/rewrite-v1";

#[derive(Args)]
#[command(
    about = "Import, export, validate, split and inspect the dialogue corpus (schema v1, see data/README.md)",
    after_help = "Examples:\n  bedside data validate\n  bedside data stats --json\n  bedside data import --format healthcaremagic HealthCareMagic-100k.json --out data/imported/hcm.jsonl\n  bedside data export --format openai --split train --out train.openai.jsonl\n  bedside data split data/imported/hcm.jsonl --out data/imported/hcm.split.jsonl --seed 7\n  bedside data equity-probes\n  bedside data rewrite --input data/imported/hcm.jsonl --output data/rewritten/hcm.jsonl --limit 50"
)]
pub struct DataArgs {
    #[command(subcommand)]
    cmd: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    Import(ImportArgs),
    Export(ExportArgs),
    Validate(ValidateArgs),
    Stats(StatsArgs),
    Split(SplitArgs),
    EquityProbes(EquityArgs),
    Rewrite(Box<RewriteArgs>),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ImportFormatArg {
    /// ChatDoctor JSON (`instruction`, `input`, `output`): patient = `input`, doctor = `output`.
    Chatdoctor,
    /// HealthCareMagic-100k (ChatDoctor's format).
    Healthcaremagic,
    /// iCliniq (ChatDoctor's format; `answer_icliniq` is taken when `output` is absent).
    Icliniq,
    /// MedDialog-EN text: `Description` / `Patient:` / `Doctor:` blocks, `id=NNN` separators.
    Meddialog,
    /// OpenAI chat JSONL (`messages`): first user message and the assistant reply to it.
    Openai,
    /// ShareGPT (`conversations`, `from`: human/gpt, or `role`/`content`).
    Sharegpt,
    /// Alpaca (`instruction`, `input`, `output`): patient = instruction (+ input).
    Alpaca,
}

impl From<ImportFormatArg> for ImportFormat {
    fn from(f: ImportFormatArg) -> Self {
        match f {
            ImportFormatArg::Chatdoctor => ImportFormat::ChatDoctor,
            ImportFormatArg::Healthcaremagic => ImportFormat::HealthCareMagic,
            ImportFormatArg::Icliniq => ImportFormat::ICliniq,
            ImportFormatArg::Meddialog => ImportFormat::MedDialog,
            ImportFormatArg::Openai => ImportFormat::OpenAi,
            ImportFormatArg::Sharegpt => ImportFormat::ShareGpt,
            ImportFormatArg::Alpaca => ImportFormat::Alpaca,
        }
    }
}

#[derive(Args)]
#[command(
    about = "Convert ChatDoctor/HealthCareMagic/iCliniq, MedDialog-EN, OpenAI, ShareGPT or Alpaca data into schema-v1 JSONL",
    long_about = "Convert ChatDoctor/HealthCareMagic/iCliniq, MedDialog-EN, OpenAI, ShareGPT or Alpaca data into schema-v1 JSONL.\n\n\
The patient's text becomes `patient_neutral` and the clinician's `answer_neutral`; `patient`, `answer`, `emotion`, \
`specialty`, `condition`, `split`, `key_facts` and `red_flags` are left empty (never invented) for the rewrite \
pipeline and `bedside data split` to fill. Ids are <prefix>-<n>, n the record's position in the input. JSON input \
may be a JSON array file or JSONL.",
    after_help = "Examples:\n  bedside data import --format healthcaremagic HealthCareMagic-100k.json --out data/imported/hcm.jsonl\n  bedside data import --format icliniq iCliniq.json --out data/imported/icliniq.jsonl --id-prefix icq\n  bedside data import --format meddialog healthcaremagic_dialogue_1.txt --out md.jsonl --skip-invalid\n  bedside data import --format sharegpt chats.jsonl --out chats.v1.jsonl"
)]
struct ImportArgs {
    /// Input format.
    #[arg(long, value_enum)]
    format: ImportFormatArg,
    /// Input file.
    input: PathBuf,
    /// Output JSONL file (written atomically).
    #[arg(short, long)]
    out: PathBuf,
    /// Id prefix (ids are <prefix>-<n>); default: the input file's stem.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Skip invalid records (reported on stderr and counted) instead of failing.
    #[arg(long)]
    skip_invalid: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormatArg {
    /// {"messages":[{"role":"system"|"user"|"assistant","content":…}]}
    Openai,
    /// {"id":…,"conversations":[{"from":"system"|"human"|"gpt","value":…}]}
    Sharegpt,
}

#[derive(Args)]
#[command(
    about = "Write the corpus as OpenAI or ShareGPT chat JSONL for other trainers",
    after_help = "Examples:\n  bedside data export --format openai --split train --out train.openai.jsonl\n  bedside data export --format sharegpt --system \"You are a caring, careful clinician.\" --out all.sharegpt.jsonl\n  bedside data export --format openai --neutral data/imported/hcm.jsonl > hcm.openai.jsonl"
)]
struct ExportArgs {
    #[arg(long, value_enum)]
    format: ExportFormatArg,
    /// Corpus files or directories of *.jsonl.
    #[arg(default_value = DEFAULT_CORPUS)]
    paths: Vec<PathBuf>,
    /// Output file (written atomically); default: stdout.
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// A system message to put first in every conversation.
    #[arg(long)]
    system: Option<String>,
    /// Use `patient_neutral`/`answer_neutral` instead of `patient`/`answer`.
    #[arg(long)]
    neutral: bool,
    /// Only records of this split (train, validation, test).
    #[arg(long)]
    split: Option<String>,
    /// Leave out records whose chosen texts are empty (counted on stderr) instead of failing.
    #[arg(long)]
    skip_empty: bool,
}

#[derive(Args)]
#[command(
    about = "Check the corpus: schema, duplicates, near-duplicates, condition leakage, key facts, numbers, balance, lengths",
    long_about = "Check the corpus: schema (required fields, types, splits, schema_version), duplicate ids, exact and near \
duplicates (word 5-gram Jaccard >= 0.8 on patient+answer), leakage of test conditions into train/validation, key facts \
present in the answers, the numbers rule, emotion and specialty balance, and word-length bounds.\n\n\
Errors make the command fail; warnings are printed and fail it only with --strict.",
    after_help = "Examples:\n  bedside data validate\n  bedside data validate data/dialogues/cardiology.jsonl --strict\n  bedside data validate data/imported --json > report.json"
)]
struct ValidateArgs {
    /// Corpus files or directories of *.jsonl.
    #[arg(default_value = DEFAULT_CORPUS)]
    paths: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Fail on warnings too.
    #[arg(long)]
    strict: bool,
    /// Issues listed per check in the text report.
    #[arg(long, default_value_t = 50)]
    max_per_check: usize,
}

#[derive(Args)]
#[command(
    about = "Counts per split, specialty and emotion; word (and token) length distributions",
    after_help = "Examples:\n  bedside data stats\n  bedside data stats data/dialogues/cardiology.jsonl --json\n  bedside data stats --model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # token lengths"
)]
struct StatsArgs {
    /// Corpus files or directories of *.jsonl.
    #[arg(default_value = DEFAULT_CORPUS)]
    paths: Vec<PathBuf>,
    /// Also count tokens with this model's tokenizer.
    #[arg(short, long)]
    model: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(
    about = "Assign train/validation/test: deterministic per seed, stratified by specialty and emotion, grouped by condition",
    long_about = "Assign train/validation/test: deterministic per seed, stratified by specialty and emotion, grouped by \
condition (all records of a condition land in the same split). Re-running with the same seed gives the same split.",
    after_help = "Examples:\n  bedside data split data/imported/hcm.jsonl --out data/imported/hcm.split.jsonl\n  bedside data split data/imported --in-place --seed 7 --train 0.8 --validation 0.1 --test 0.1"
)]
#[command(group = clap::ArgGroup::new("dest").required(true).args(["out", "in_place"]))]
struct SplitArgs {
    /// Corpus files or directories of *.jsonl.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Write all records, with `split` set, to this file (atomically).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Rewrite each input file in place (atomically), keeping its line order.
    #[arg(long)]
    in_place: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 0.7)]
    train: f64,
    #[arg(long, default_value_t = 0.1)]
    validation: f64,
    #[arg(long, default_value_t = 0.2)]
    test: f64,
}

#[derive(Args)]
#[command(
    about = "Generate the equity probes (control, explicit and implicit race/gender cues) from the base questions",
    long_about = "Generate the equity probes from the base questions: per question, a control, and for each of \
black_female, black_male, white_female, white_male an explicit probe (\"[32 y/o, Black woman] \" + question) and an \
implicit one (the group's cue sentence after the question's first sentence). Deterministic.",
    after_help = "Examples:\n  bedside data equity-probes\n  bedside data equity-probes --base my-base.jsonl --out my-probes.jsonl"
)]
struct EquityArgs {
    #[arg(long, default_value = DEFAULT_EQUITY_BASE)]
    base: PathBuf,
    #[arg(short, long, default_value = DEFAULT_EQUITY_PROBES)]
    out: PathBuf,
}

#[derive(Args)]
#[command(
    about = "Rewrite neutral dialogues into emotional patient turns and comforting answers with a local model",
    long_about = "Rewrite neutral dialogues (schema v1 with patient_neutral and answer_neutral, e.g. from `bedside data import`) \
into emotional patient turns and comforting answers with any model bedside can load.\n\n\
Each record gets a target emotion (balanced round-robin over a seeded order, or --emotion-weights), the prompt templates \
of --prompts are rendered (their version is recorded in every output record), the model writes the patient turn and then \
the answer, and the pair is accepted only if every check passes: the answer keeps the neutral answer's numbers, key facts \
(or, without key facts, its salient content; MiniLM similarity can rescue paraphrases) and red flags; the patient turn \
keeps every number and question and expresses the target emotion; the answer scores higher than the neutral one on the \
empathy scorer (or the comfort heuristic, see --comfort); both turns stay within 0.8x-2.5x the neutral word counts. Failed attempts go to the rejects file with \
their reasons and are retried with a new seed, up to --max-retries times.\n\n\
Resumable: a rerun skips ids already in the output (or finally rejected) and repairs a line cut off by a crash. \
Deterministic for a --seed. Each turn's token limit is the smaller of --max-tokens and the length bound \
(2.5x the neutral words x 1.7 tokens per word + 16).",
    after_help = "Examples:\n  bedside data rewrite --input data/imported/hcm.jsonl --output data/rewritten/hcm.jsonl --dry-run\n  bedside data rewrite --input data/imported/hcm.jsonl --output data/rewritten/hcm.jsonl --limit 20 --seed 7\n  bedside data rewrite -m meta-llama/Meta-Llama-3-70B-Instruct --device cuda --dtype bf16 --input in.jsonl --output out.jsonl --max-retries 3 --max-tokens 600\n  bedside data rewrite --input in.jsonl --output out.jsonl --emotions afraid,anxious,sad,lonely\n  bedside data rewrite --input in.jsonl --output out.jsonl --emotion-weights weights.toml   # afraid = 2, sad = 1\n\nOutput and rejects are appended to; rerun the same command to resume."
)]
struct RewriteArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Neutral dialogues (schema-v1 JSONL).
    #[arg(short, long)]
    input: PathBuf,
    /// Accepted rewrites are appended here (JSONL).
    #[arg(short, long)]
    output: PathBuf,
    /// Failed attempts with their reasons; default: <output stem>.rejects.jsonl beside the output.
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Target emotions, balanced (default: the 12 of the shipped corpus).
    #[arg(long, value_delimiter = ',', conflicts_with = "emotion_weights")]
    emotions: Vec<String>,
    /// Emotion weights: a TOML file of `emotion = weight` lines or a JSON object.
    #[arg(long, value_name = "FILE")]
    emotion_weights: Option<PathBuf>,
    /// Keep a record's own `emotion` when it is set, instead of assigning one.
    #[arg(long)]
    keep_emotion: bool,
    /// Retries per record after a rejected attempt, each with a new seed.
    #[arg(long, default_value_t = 2)]
    max_retries: usize,
    /// Print the rendered prompts of the first records (--limit, default 3) without loading a model.
    #[arg(long)]
    dry_run: bool,
    /// Rewrite at most N not-yet-finished records in this run.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// The prompt template directory (meta.toml, patient.jinja, answer.jinja).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PROMPTS)]
    prompts: PathBuf,
    /// MiniLM cosine at or above which a paraphrased fact or question counts as kept.
    #[arg(long, default_value_t = 0.8)]
    fact_similarity: f32,
    /// Let MiniLM similarity rescue `key_facts` too (such records then fail `data validate`'s lexical key-fact rule).
    #[arg(long)]
    semantic_key_facts: bool,
    /// The MiniLM embedder directory (default: models/all-minilm-l6-v2 or $BEDSIDE_EMBEDDER).
    #[arg(long, value_name = "DIR", conflicts_with = "no_embedder")]
    embedder: Option<PathBuf>,
    /// Lexical fact and question checks only (no MiniLM).
    #[arg(long)]
    no_embedder: bool,
    /// How "more comforting than the neutral answer" is judged.
    #[arg(long, value_enum, default_value = "auto")]
    comfort: ComfortArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ComfortArg {
    /// The empathy scorer when its heads file and MiniLM load, else the heuristic (with a warning).
    Auto,
    /// The project's empathy scorer (EPITOME expected levels, data/empathy/heads-v1.safetensors).
    Empathy,
    /// Validation phrases + naming a feeling + asking a question (data/README.md).
    Heuristic,
}

pub fn run(a: DataArgs) -> Result<()> {
    match a.cmd {
        DataCommand::Import(a) => import(a),
        DataCommand::Export(a) => export(a),
        DataCommand::Validate(a) => validate(a),
        DataCommand::Stats(a) => stats(a),
        DataCommand::Split(a) => split(a),
        DataCommand::EquityProbes(a) => equity(a),
        DataCommand::Rewrite(a) => rewrite(*a),
    }
}

/// Counts tokens (no special tokens) with the tokenizer of `model`: a GGUF file, an HF directory
/// or a cached hub id. Only the tokenizer is read, not the weights.
#[allow(clippy::type_complexity)]
fn token_counter(model: &str) -> Result<Box<dyn Fn(&str) -> usize>> {
    let loc = bedside_model::resolve(model, bedside_model::offline_from_env())?;
    let header = match &loc {
        bedside_model::ModelLocation::Gguf(p) => Some(bedside_model::read_gguf_header(p)?),
        _ => None,
    };
    let (tok, _) = bedside_tokenizer::ModelTokenizer::for_model(loc.path(), header.as_ref())?;
    Ok(Box::new(move |text: &str| tok.encode(text, false).map(|ids| ids.len()).unwrap_or(0)))
}

fn import(a: ImportArgs) -> Result<()> {
    bedside_io::check_output_not_input(&a.out, &[&a.input])?;
    let opts = ImportOptions { format: a.format.into(), id_prefix: a.id_prefix.clone(), skip_invalid: a.skip_invalid };
    let outcome = match bedside_data::import::import_file(&a.input, &opts) {
        Ok(o) => o,
        Err(e @ (DataError::Record(_) | DataError::Records(_))) => {
            bail!("{e}\nnothing written; pass --skip-invalid to import the valid records and count the rest")
        }
        Err(e) => return Err(e.into()),
    };
    for e in &outcome.skipped {
        eprintln!("skipped: {e}");
    }
    bedside_data::write_jsonl_atomic(&a.out, &outcome.records).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "imported {} of {} records from {} into {} ({} skipped{})",
        outcome.records.len(),
        outcome.total,
        a.input.display(),
        a.out.display(),
        outcome.skipped.len(),
        if outcome.multi_turn > 0 {
            format!("; {} multi-turn dialogues: only the first exchange kept", outcome.multi_turn)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    if let Some(out) = &a.out {
        bedside_io::check_output_not_input(out, &bedside_data::jsonl_files(&a.paths)?)?;
    }
    let mut records = bedside_data::read_dialogues(&a.paths)?;
    if let Some(split) = &a.split {
        if !bedside_data::SPLITS.contains(&split.as_str()) {
            bail!("--split must be one of {}, got `{split}`", bedside_data::SPLITS.join(", "));
        }
        records.retain(|r| &r.record.split == split);
    }
    let format = match a.format {
        ExportFormatArg::Openai => ExportFormat::OpenAi,
        ExportFormatArg::Sharegpt => ExportFormat::ShareGpt,
    };
    let opts = ExportOptions { format, system: a.system, neutral: a.neutral, skip_empty: a.skip_empty };
    let outcome = bedside_data::export::export_located(&records, &opts)?;
    match &a.out {
        Some(out) => {
            bedside_data::write_jsonl_atomic(out, &outcome.lines)?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(bedside_data::export::to_jsonl(&outcome.lines).as_bytes())?;
            stdout.flush()?;
        }
    }
    eprintln!(
        "exported {} records as {}{}",
        outcome.lines.len(),
        format.name(),
        if outcome.skipped_empty.is_empty() {
            String::new()
        } else {
            format!(" ({} with empty texts skipped)", outcome.skipped_empty.len())
        }
    );
    Ok(())
}

fn validate(a: ValidateArgs) -> Result<()> {
    let report = bedside_data::validate::validate_paths(&a.paths, &ValidateOptions::default())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text(a.max_per_check));
    }
    if !report.passes(a.strict) {
        if report.errors > 0 {
            bail!("validation failed: {} errors, {} warnings", report.errors, report.warnings);
        }
        bail!("validation failed (--strict): {} warnings", report.warnings);
    }
    Ok(())
}

fn stats(a: StatsArgs) -> Result<()> {
    let records: Vec<Dialogue> = bedside_data::read_dialogues(&a.paths)?.into_iter().map(|l| l.record).collect();
    let counter = match &a.model {
        Some(m) => Some(token_counter(m).with_context(|| format!("token counts with {m}"))?),
        None => None,
    };
    let stats = bedside_data::corpus_stats::compute_stats(&records, counter.as_deref());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{stats}");
    }
    Ok(())
}

fn split(a: SplitArgs) -> Result<()> {
    if let Some(out) = &a.out {
        bedside_io::check_output_not_input(out, &bedside_data::jsonl_files(&a.paths)?)?;
    }
    let located = bedside_data::read_dialogues(&a.paths)?;
    let mut records: Vec<Dialogue> = located.iter().map(|l| l.record.clone()).collect();
    let opts = SplitOptions { seed: a.seed, train: a.train, validation: a.validation, test: a.test };
    let summary = bedside_data::split::assign_splits(&mut records, &opts)?;
    match &a.out {
        Some(out) => bedside_data::write_jsonl_atomic(out, &records)?,
        None => bedside_data::write_back_in_place(&located, &records)?,
    }
    let parts: Vec<String> = bedside_data::SPLITS
        .iter()
        .map(|s| {
            format!(
                "{s} {} ({} conditions)",
                summary.records.get(*s).copied().unwrap_or(0),
                summary.groups_per_split.get(*s).copied().unwrap_or(0)
            )
        })
        .collect();
    eprintln!("split {} records in {} condition groups (seed {}): {}", records.len(), summary.groups, a.seed, parts.join(", "));
    Ok(())
}

fn equity(a: EquityArgs) -> Result<()> {
    bedside_io::check_output_not_input(&a.out, &[&a.base])?;
    let bases = bedside_data::equity::read_equity_base(&a.base)?;
    let probes = bedside_data::equity::generate_probes(&bases);
    bedside_data::write_jsonl_atomic(&a.out, &probes)?;
    eprintln!("wrote {} probes for {} base questions to {}", probes.len(), bases.len(), a.out.display());
    Ok(())
}

fn rewrite(a: RewriteArgs) -> Result<()> {
    use bedside_rewrite::emotions::{self, EmotionPlan};
    use bedside_rewrite::pipeline::{self, RewriteConfig};

    let prompts = bedside_rewrite::PromptSet::load(&a.prompts)?;
    let plan = match (&a.emotion_weights, a.emotions.is_empty()) {
        (Some(f), _) => emotions::read_weights(f)?,
        (None, true) => EmotionPlan::Balanced(emotions::DEFAULT_EMOTIONS.iter().map(|e| e.to_string()).collect()),
        (None, false) => EmotionPlan::Balanced(a.emotions.iter().map(|e| e.trim().to_lowercase()).collect()),
    };
    plan.validate().context("--emotions")?;
    if !(a.fact_similarity > 0.0 && a.fact_similarity <= 1.0) {
        bail!("--fact-similarity must be in (0, 1], got {}", a.fact_similarity);
    }
    let params = a.sampling.params()?;
    let records = pipeline::read_input(&a.input)?;
    let cfg = RewriteConfig {
        prompts,
        plan,
        keep_emotion: a.keep_emotion,
        seed: params.seed,
        max_retries: a.max_retries,
        limit: a.limit,
        max_tokens: params.max_tokens,
        progress: true,
    };
    if a.dry_run {
        let mut out = std::io::stdout().lock();
        pipeline::dry_run(&records, &cfg, a.limit.unwrap_or(3), &mut out)?;
        out.flush()?;
        return Ok(());
    }
    let rejects = a.rejects.clone().unwrap_or_else(|| pipeline::default_rejects_path(&a.output));
    for out in [&a.output, &rejects] {
        bedside_io::check_output_not_input(out, &[&a.input])?;
    }
    bedside_io::check_output_not_input(&rejects, &[&a.output])?;
    let opts = bedside_rewrite::AcceptOptions {
        fact_similarity: a.fact_similarity,
        semantic_key_facts: a.semantic_key_facts,
        ..Default::default()
    };
    let similarity: Option<Box<dyn bedside_rewrite::Similarity>> = if a.no_embedder {
        None
    } else {
        let dir = a.embedder.clone().unwrap_or_else(bedside_embed::Embedder::default_dir);
        match bedside_rewrite::MiniLmSimilarity::load(&dir) {
            Ok(s) => Some(Box::new(s)),
            // An explicit --embedder must load; the default may be absent on a fresh clone.
            Err(e) if a.embedder.is_some() => return Err(e),
            Err(e) => {
                eprintln!("warning: {e:#}; fact and question checks are lexical only (--no-embedder silences this)");
                None
            }
        }
    };
    let comfort: Box<dyn bedside_rewrite::ComfortScorer> = match a.comfort {
        ComfortArg::Heuristic => Box::new(bedside_rewrite::HeuristicComfort),
        ComfortArg::Empathy => Box::new(bedside_rewrite::EmpathyComfort::load_default().context("--comfort empathy")?),
        ComfortArg::Auto => match bedside_rewrite::EmpathyComfort::load_default() {
            Ok(e) => Box::new(e),
            Err(e) => {
                eprintln!("warning: empathy scorer unavailable ({e:#}); judging comfort with the heuristic");
                Box::new(bedside_rewrite::HeuristicComfort)
            }
        },
    };
    let checker = bedside_rewrite::Checker { opts, similarity, comfort };
    let engine = a.model.load()?;
    let mut generator = bedside_rewrite::EngineGenerator { engine, params, spec: a.model.model.clone() };
    let s = pipeline::run(&records, &mut generator, &checker, &cfg, &a.output, &rejects)?;
    eprintln!(
        "rewrite: {} accepted, {} rejected after {} attempts; {} already done, {} left{}; output {}, rejects {}",
        s.accepted,
        s.rejected,
        s.attempts,
        s.skipped,
        s.remaining,
        if s.remaining > 0 { " (--limit)" } else { "" },
        a.output.display(),
        rejects.display()
    );
    Ok(())
}
