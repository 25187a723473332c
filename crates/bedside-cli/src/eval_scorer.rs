//! `bedside eval score | validate-scorer | train-scorer`: the offline EPITOME empathy scorer
//! (crate bedside-empathy). `eval.rs` wires these into the `eval` subcommand.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bedside_embed::Embedder;
use bedside_empathy::data::labelled_parts;
use bedside_empathy::heads::Heads;
use bedside_empathy::validate::{render, score_chunked, validate_epitome};
use bedside_empathy::{default_heads_path, EmpathyScorer, EmpathyScores, FeatureSet};
use bedside_eval::pairs::{parse_pairs, PairRecord};
use candle_core::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn load_scorer(heads: &Option<PathBuf>, embedder: &Option<PathBuf>) -> Result<EmpathyScorer> {
    let heads = heads.clone().unwrap_or_else(default_heads_path);
    let emb = embedder.clone().unwrap_or_else(Embedder::default_dir);
    EmpathyScorer::load(&heads, &emb, &Device::Cpu)
}

/// Write `bytes` to `path` atomically (tmp in the same directory, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    bedside_io::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------- score

#[derive(Args, Debug)]
#[command(
    about = "Score (context, response) pairs for EPITOME empathy: emotional reactions, interpretations, explorations (0-2 each)",
    long_about = "Score (context, response) pairs for EPITOME empathy with the offline scorer (MiniLM embeddings + lexical cues + logistic heads).\n\n\
Input: JSON lines with `id` (string), `context` and `response` (strings), and optionally `reference` (string) and `key_facts` (array of strings).\n\
Output: one JSON line per input pair, in input order, with `id`, `emotional_reactions`, `interpretations`, `explorations` (0-2), \
`empathy_total` (0-6), `expected` (probability-weighted level per mechanism) and `probs`; with a `reference`, also `rouge_l` and \
`similarity` (MiniLM cosine); with `key_facts`, also `key_fact_recall` (the share of facts some sentence states and none \
contradicts, as `eval run` computes it) and `key_facts` (per fact: conveyed, contradicted, best cosine).",
    after_help = "Examples:\n  bedside eval score --input pairs.jsonl --output scores.jsonl\n  bedside eval score --input pairs.jsonl --output scores.jsonl --heads my-heads.safetensors\n\nInput line:\n  {\"id\": \"q1\", \"context\": \"I'm scared about my biopsy.\", \"response\": \"That sounds frightening. What worries you most?\"}"
)]
pub struct ScoreArgs {
    /// JSON lines with id, context, response (and optionally reference, key_facts).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the scores (JSON lines; written atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// Heads file (default: data/empathy/heads-v1.safetensors, or $BEDSIDE_EMPATHY_HEADS).
    #[arg(long)]
    pub heads: Option<PathBuf>,
    /// MiniLM directory (default: models/all-minilm-l6-v2, or $BEDSIDE_EMBEDDER).
    #[arg(long)]
    pub embedder: Option<PathBuf>,
}

/// The output object for one pair.
pub fn score_json(rec: &PairRecord, s: &EmpathyScores) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(rec.id));
    m.insert("emotional_reactions".into(), json!(s.emotional_reactions));
    m.insert("interpretations".into(), json!(s.interpretations));
    m.insert("explorations".into(), json!(s.explorations));
    m.insert("empathy_total".into(), json!(s.total()));
    let r4 = |v: f32| (v as f64 * 1e4).round() / 1e4;
    m.insert(
        "expected".into(),
        json!({"emotional_reactions": r4(s.expected[0]), "interpretations": r4(s.expected[1]), "explorations": r4(s.expected[2])}),
    );
    m.insert("probs".into(), json!({"er": s.probs[0].map(r4), "ip": s.probs[1].map(r4), "ex": s.probs[2].map(r4)}));
    m
}

pub fn score(args: ScoreArgs) -> Result<()> {
    bedside_io::check_output_not_input(&args.output, &[&args.input])?;
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let recs = parse_pairs(&text, &args.input)?;
    let scorer = load_scorer(&args.heads, &args.embedder)?;
    let pairs: Vec<(&str, &str)> = recs.iter().map(|r| (r.context.as_str(), r.response.as_str())).collect();
    let pb = bar(pairs.len() as u64, "scoring");
    let scores = score_chunked(&scorer, &pairs, |done, _| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    let knowledge = bedside_eval::pairs::knowledge(&recs, scorer.embedder())?;
    let mut out = Vec::new();
    for ((r, s), k) in recs.iter().zip(&scores).zip(&knowledge) {
        let mut m = score_json(r, s);
        if let Some(Value::Object(k)) = k.as_ref().map(serde_json::to_value).transpose()? {
            m.extend(k);
        }
        serde_json::to_writer(&mut out, &Value::Object(m))?;
        out.push(b'\n');
    }
    write_atomic(&args.output, &out)?;
    let n = scores.len().max(1) as f32;
    let mean = |m: usize| scores.iter().map(|s| s.levels()[m] as f32).sum::<f32>() / n;
    eprintln!("scored {} pairs → {} (mean ER {:.2}, IP {:.2}, EX {:.2})", scores.len(), args.output.display(), mean(0), mean(1), mean(2));
    Ok(())
}

// ---------------------------------------------------------------- validate-scorer

#[derive(Args, Debug)]
#[command(
    about = "Check the empathy scorer against EPITOME's human labels: accuracy, macro-F1, kappa, confusion matrices",
    long_about = "Score the EPITOME Reddit pairs (Sharma et al. 2020; emotional-reactions-reddit.csv, interpretations-reddit.csv, explorations-reddit.csv) \
with the scorer and compare with the human levels, on all pairs and on the held-out 20% (the seeker posts `train-scorer --epitome` \
never trains on: the only fair figures for heads trained on EPITOME). The data is research-only: it is read here at run time and never copied. \
Targets (macro-F1 >= 0.6 per mechanism) are reported, not enforced: the exit status is 0 whenever the check ran.",
    after_help = "Examples:\n  bedside eval validate-scorer\n  bedside eval validate-scorer --record\n  bedside eval validate-scorer --epitome-dir ../shared/epitome --json\n  bedside eval validate-scorer --heads my-heads.safetensors --output validation.json"
)]
pub struct ValidateScorerArgs {
    /// Directory with the three EPITOME CSVs.
    #[arg(long, default_value = "../shared/epitome")]
    pub epitome_dir: PathBuf,
    /// Heads file (default: data/empathy/heads-v1.safetensors, or $BEDSIDE_EMPATHY_HEADS).
    #[arg(long)]
    pub heads: Option<PathBuf>,
    /// MiniLM directory (default: models/all-minilm-l6-v2, or $BEDSIDE_EMBEDDER).
    #[arg(long)]
    pub embedder: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Record the macro-F1 figures (all pairs and held-out 20%) beside the heads
    /// (`<heads>.validation.json`, keyed by the heads' SHA-256), where `eval run` reports read them.
    #[arg(long)]
    pub record: bool,
}

pub fn validate_scorer(args: ValidateScorerArgs) -> Result<()> {
    if !args.epitome_dir.is_dir() {
        bail!("EPITOME directory {} not found (pass --epitome-dir)", args.epitome_dir.display());
    }
    if let Some(o) = &args.output {
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&args.epitome_dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        inputs.extend(args.heads.clone());
        bedside_io::check_output_not_input(o, &inputs)?;
    }
    let scorer = load_scorer(&args.heads, &args.embedder)?;
    let pb = bar(0, "scoring EPITOME pairs");
    let report = validate_epitome(&scorer, &args.epitome_dir, |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    let js = serde_json::to_string_pretty(&report)?;
    if let Some(o) = &args.output {
        write_atomic(o, js.as_bytes())?;
    }
    if args.record {
        let heads = args.heads.clone().unwrap_or_else(default_heads_path);
        let rec = bedside_empathy::validation_record(&report, &heads)?;
        let path = bedside_empathy::validation_record_path(&heads);
        write_atomic(&path, (serde_json::to_string_pretty(&rec)? + "\n").as_bytes())?;
        eprintln!("recorded → {}", path.display());
    }
    if args.json {
        println!("{js}");
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

// ---------------------------------------------------------------- train-scorer

#[derive(Args, Debug)]
#[command(
    about = "Train empathy heads (ER, IP, EX) from labelled (context, response) pairs, or in domain from EPITOME",
    long_about = "Train the three logistic heads from JSON lines with `id`, `context`, `response`, `emotional_reactions`, `interpretations`, \
`explorations` (0-2 each; optional `domain`). Features: MiniLM embeddings plus lexical cues. The L2 strength of each head is chosen \
by 5-fold cross-validation on the input unless --lambda is given. Training is deterministic: the same input gives the same file.\n\n\
With --epitome DIR (the three EPITOME Reddit CSVs, research-use data): train on a fixed 80% of the pairs, split by seeker post \
(SHA-256 of sp_id), and report macro-F1 on the other 20%. Features: hashed TF-IDF word and character n-grams of the response plus \
the lexical cues (no embedder needed); class-balanced heads with per-class bias offsets chosen by cross-validation inside the 80%. \
The weights are derived from EPITOME: they are written only where you say, never inside this repository.",
    after_help = "Examples:\n  bedside eval train-scorer --output data/empathy/heads-v1.safetensors\n  bedside eval train-scorer --input my-labels.jsonl --output heads.safetensors\n  bedside eval train-scorer --input a.jsonl --input b.jsonl --features lex+cos --lambda 0.1 --output heads.safetensors\n  bedside eval train-scorer --epitome ../shared/epitome --output ~/epitome-heads.safetensors --report ~/epitome-heads.json\n  bedside eval validate-scorer --heads heads.safetensors\n  bedside eval run --config configs/eval-smollm2.toml --heads ~/epitome-heads.safetensors"
)]
pub struct TrainScorerArgs {
    /// Labelled JSON lines (repeatable; default: data/empathy/labelled-part-*.jsonl).
    #[arg(long, conflicts_with = "epitome")]
    pub input: Vec<PathBuf>,
    /// Train in domain on the EPITOME CSVs in this directory (80% by seeker post; 20% held out).
    #[arg(long, value_name = "DIR")]
    pub epitome: Option<PathBuf>,
    /// Heads file to write (safetensors, atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// Feature set: lex+cos, lex+cos+resp or lex+cos+resp+ctxprod.
    #[arg(long, default_value = "lex+cos+resp")]
    pub features: String,
    /// L2 strength: one value for all heads or three comma-separated (ER,IP,EX); default: chosen by CV.
    #[arg(long)]
    pub lambda: Option<String>,
    /// Date recorded in the heads' metadata (default: today, UTC).
    #[arg(long)]
    pub date: Option<String>,
    /// MiniLM directory (default: models/all-minilm-l6-v2, or $BEDSIDE_EMBEDDER).
    #[arg(long)]
    pub embedder: Option<PathBuf>,
    /// Also write the cross-validation report (JSON) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

fn parse_lambda(s: &str) -> Result<[f64; 3]> {
    let v: Vec<f64> =
        s.split(',').map(|p| p.trim().parse::<f64>().with_context(|| format!("--lambda: {p:?} is not a number"))).collect::<Result<_>>()?;
    if v.iter().any(|x| !x.is_finite() || *x < 0.0) {
        bail!("--lambda values must be finite and >= 0");
    }
    match v.as_slice() {
        [a] => Ok([*a; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => bail!("--lambda takes one value or three (ER,IP,EX)"),
    }
}

/// The bedside checkout `path` would land in, if any: the workspace this binary was built from, or
/// a directory holding bedside's labelled empathy files (the current one when run from a clone).
pub fn repository_containing(path: &Path) -> Option<PathBuf> {
    // The deepest existing ancestor, canonicalised (the file itself need not exist yet).
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().ok()?.join(path) };
    let mut existing = abs.as_path();
    while !existing.exists() {
        existing = existing.parent()?;
    }
    let canon = existing.canonicalize().ok()?;
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().ok();
    canon
        .ancestors()
        .find(|a| built.as_deref() == Some(*a) || a.join("data/empathy/labelled-part-a.jsonl").is_file())
        .map(Path::to_path_buf)
}

fn train_epitome(args: &TrainScorerArgs, dir: &Path) -> Result<()> {
    if let Some(repo) = repository_containing(&args.output) {
        bail!(
            "--output {} is inside the bedside repository ({}): heads trained on EPITOME are research-use data and must not be \
             committed or shipped with it; write them elsewhere (e.g. --output ~/epitome-heads.safetensors)",
            args.output.display(),
            repo.display()
        );
    }
    if !dir.is_dir() {
        bail!("--epitome {}: not a directory (it must hold {})", dir.display(), bedside_empathy::data::EPITOME_FILES.join(", "));
    }
    let mut opts = bedside_empathy::epitome::EpitomeOptions::default();
    if let Some(l) = args.lambda.as_deref() {
        opts.lambda = parse_lambda(l)?;
    }
    let pb = bar(0, "featurising");
    let (mut heads, report) = bedside_empathy::epitome::train_epitome(dir, &opts, |stage, d, t| {
        pb.set_message(stage.to_string());
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    })?;
    pb.finish_and_clear();
    heads.metadata.insert("created".into(), args.date.clone().unwrap_or_else(bedside_empathy::fit::utc_date_today));
    heads.save(&args.output)?;
    Heads::load(&args.output)?;
    if let Some(r) = &args.report {
        write_atomic(r, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    eprintln!("trained {} heads on EPITOME's training 80% in {:.1}s → {}", heads.features.spec(), report.seconds, args.output.display());
    for m in &report.mechanisms {
        let a = &m.heldout;
        eprintln!(
            "  {:<20} train {} / held out {}: held-out macro-F1 {:.3} (F1 per level {:.3} / {:.3} / {:.3}, accuracy {:.3}, quadratic kappa {:.3}); \
             out-of-fold {:.3}",
            m.mechanism, m.n_train, m.n_heldout, a.macro_f1, a.f1[0], a.f1[1], a.f1[2], a.accuracy, a.quadratic_kappa, m.oof_macro_f1_offsets
        );
    }
    Ok(())
}

pub fn train_scorer(args: TrainScorerArgs) -> Result<()> {
    if let Some(dir) = args.epitome.clone() {
        return train_epitome(&args, &dir);
    }
    let features = FeatureSet::parse(&args.features)?;
    let lambda = args.lambda.as_deref().map(parse_lambda).transpose()?;
    let inputs = if args.input.is_empty() { labelled_parts(Path::new("."))? } else { args.input.clone() };
    for out in std::iter::once(&args.output).chain(args.report.as_ref()) {
        bedside_io::check_output_not_input(out, &inputs)?;
    }
    let emb_dir = args.embedder.clone().unwrap_or_else(Embedder::default_dir);
    let embedder = Embedder::load(&emb_dir, &Device::Cpu).context("loading the sentence embedder")?;
    let created = args.date.clone().unwrap_or_else(bedside_empathy::fit::utc_date_today);
    let pb = bar(0, "embedding");
    let (heads, report) =
        bedside_empathy::fit::train_from_files(&inputs, &embedder, &file_name(&emb_dir), features, lambda, &created, |stage, d, t| {
            pb.set_message(stage.to_string());
            pb.set_length(t as u64);
            pb.set_position(d as u64);
        })?;
    pb.finish_and_clear();
    heads.save(&args.output)?;
    if let Some(r) = &args.report {
        write_atomic(r, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    // Re-read what was written, so a broken file fails here rather than at scoring time.
    Heads::load(&args.output)?;
    eprintln!(
        "trained {} heads on {} pairs: lambda ER {} IP {} EX {}; out-of-fold macro-F1 ER {:.3} IP {:.3} EX {:.3} → {}",
        report.features,
        report.n,
        report.lambda[0],
        report.lambda[1],
        report.lambda[2],
        report.cv_macro_f1[0],
        report.cv_macro_f1[1],
        report.cv_macro_f1[2],
        args.output.display()
    );
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_takes_one_or_three_values() {
        assert!(parse_lambda("0.1,0.2").is_err());
        // EPITOME-trained heads are refused inside the repository, wherever the path points in it.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert!(repository_containing(&root.join("data/empathy/epitome.safetensors")).is_some());
        assert!(repository_containing(&root.join("runs/new-dir/x.safetensors")).is_some());
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(repository_containing(&tmp.path().join("sub/heads.safetensors")), None);
        assert_eq!(parse_lambda("0.1").unwrap(), [0.1; 3]);
    }
}
