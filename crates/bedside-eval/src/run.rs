//! `bedside eval run` as a pipeline of named steps:
//!
//! 1. [`prepare`] — read the items, check the systems, open the caches, build the control
//!    answers (`controls`);
//! 2. [`answer`] — every system answers every item (cached, resumable);
//! 3. [`perplexity`](crate::perplexity::perplexities) — NLL of the neutral reference answers under
//!    each system, and of every scored answer under the base model;
//! 4. [`judge`] — the optional LLM judge;
//! 5. [`score`] — the per-answer measures of every system's and control's answers
//!    (`scores.jsonl`);
//! 6. [`aggregate`](crate::aggregate::aggregate) — statistics, validity gates and the verdict
//!    into [`Results`];
//! 7. [`write`] — `results.json`, `report.md`, `report.html`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::aggregate::{self, AggregateInput, Aggregated};
use crate::answers::{answer_items, AnswerBook, GenRecord, GenStats};
use crate::cache::JsonlCache;
use crate::config::{EvalConfig, REFERENCE};
use crate::controls::{ControlBuilder, CONTRADICTED, CONTROLS};
use crate::hash::path_hash;
use crate::items::{load_items, EvalItem, Set};
use crate::judge;
use crate::judging::{run_judge, JudgeData};
use crate::perplexity::{perplexities, NllRecord};
use crate::results::{Results, SCHEMA_VERSION};
use crate::scoring::{self, Answer, ScoreRecord, Scorers};
use crate::systems::LocalSystems;

pub struct RunOptions {
    pub config: EvalConfig,
    pub output_dir: PathBuf,
    /// Show progress bars on stderr.
    pub progress: bool,
}

pub struct RunOutcome {
    pub dir: PathBuf,
    pub results: Results,
    /// Per system: answers generated now and reused from the cache.
    pub generation: BTreeMap<String, GenStats>,
}

pub(crate) fn progress(total: u64, prefix: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

/// What the steps share: the config, the items, the control answers and the run directory's
/// caches.
struct Run<'a> {
    cfg: &'a EvalConfig,
    dir: &'a Path,
    show: bool,
    items: Vec<EvalItem>,
    control_builder: ControlBuilder,
    /// The controls scored on this run (those with at least one answer).
    controls: Vec<String>,
    gens: JsonlCache<GenRecord>,
    nll: JsonlCache<NllRecord>,
}

impl Run<'_> {
    /// The evaluated systems.
    fn systems(&self) -> Vec<String> {
        self.cfg.systems.iter().map(|s| s.name.clone()).collect()
    }

    /// The systems whose answers the base model's fluency perplexity and the judge cover: the
    /// systems and the reference control.
    fn systems_and_reference(&self) -> Vec<String> {
        let mut v = self.systems();
        v.extend(self.controls.iter().filter(|c| c.as_str() == REFERENCE).cloned());
        v
    }
}

/// The hand-written contradictions file: the configured one, else the default when it exists.
fn contradictions_path(cfg: &EvalConfig) -> Option<PathBuf> {
    match cfg.sets.test.as_ref().and_then(|t| t.contradictions.clone()) {
        Some(p) => Some(p),
        None => Some(PathBuf::from(DEFAULT_CONTRADICTIONS)).filter(|p| p.is_file()),
    }
}

/// Where the hand-written contradictions of the shipped test split are.
const DEFAULT_CONTRADICTIONS: &str = "data/eval/contradictions.jsonl";

/// Step 1: the items, the adapter directories, the caches.
fn prepare<'a>(cfg: &'a EvalConfig, dir: &'a Path, show: bool) -> Result<Run<'a>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the run directory", dir.display()))?;
    let items = load_items(cfg)?;
    if items.is_empty() {
        bail!("no items to evaluate: every set is disabled or empty");
    }
    for s in &cfg.systems {
        for a in &s.adapters {
            if !a.is_dir() {
                bail!(
                    "system `{}`: adapter directory {} does not exist (train one with `bedside train`, or pass --adapter DIR)",
                    s.name,
                    a.display()
                );
            }
        }
    }
    if let Some(h) = &cfg.empathy_heads {
        // Read now, not after the answers: a wrong file should cost seconds, not the whole run.
        bedside_empathy::Heads::load(h).with_context(|| format!("empathy_heads: {}", h.display()))?;
    }
    let control_builder = ControlBuilder::load(contradictions_path(cfg).as_deref())?;
    let wanted: Vec<&str> = if cfg.controls {
        CONTROLS.to_vec()
    } else if cfg.include_reference {
        vec![REFERENCE]
    } else {
        vec![]
    };
    let controls: Vec<String> =
        wanted.into_iter().filter(|c| items.iter().any(|it| control_builder.answer(c, it).is_some())).map(str::to_string).collect();
    let uncontradicted =
        items.iter().filter(|it| it.set == Set::Test && it.sample == 0 && control_builder.answer(CONTRADICTED, it).is_none()).count();
    if cfg.controls && uncontradicted > 0 {
        tracing::warn!(
            items = uncontradicted,
            "test items without a contradicted control (a key fact has no contradiction: add one to the contradictions file)"
        );
    }
    let gens = JsonlCache::<GenRecord>::open(&dir.join("generations.jsonl"))?;
    let nll = JsonlCache::<NllRecord>::open(&dir.join("nll.jsonl"))?;
    tracing::info!(items = items.len(), systems = cfg.systems.len(), controls = controls.len(), cached = gens.len(), "eval run");
    Ok(Run { cfg, dir, show, items, control_builder, controls, gens, nll })
}

/// Step 2: every system answers every item. Returns the generation counts and each system's
/// answer fingerprint.
fn answer(run: &mut Run, systems: &mut LocalSystems) -> Result<(BTreeMap<String, GenStats>, BTreeMap<String, String>)> {
    let cfg = run.cfg;
    let pb = progress((cfg.systems.len() * run.items.len()) as u64, "generate", run.show);
    let mut stats = BTreeMap::new();
    let mut fingerprints = BTreeMap::new();
    for system in &cfg.systems {
        // An endpoint system answers over HTTP; the others on the loaded model.
        let (fp, st) = if system.endpoint.is_some() {
            let mut source = crate::endpoint::EndpointSource::new(cfg, system)?;
            let fp = crate::systems::AnswerSource::fingerprint(&source).to_string();
            (fp, answer_items(cfg, system, &mut source, &run.items, &mut run.gens, &pb)?)
        } else {
            let mut source = systems.source(cfg, system)?;
            let fp = crate::systems::AnswerSource::fingerprint(&source).to_string();
            (fp, answer_items(cfg, system, &mut source, &run.items, &mut run.gens, &pb)?)
        };
        stats.insert(system.name.clone(), st);
        fingerprints.insert(system.name.clone(), fp);
    }
    pb.finish_and_clear();
    Ok((stats, fingerprints))
}

/// One answer's text: (system or control, item, answer).
type AnswerText<'r> = (String, &'r EvalItem, String);

/// Step 5: the per-answer scores of every system's answers and every control answer, with the
/// perplexities and judge verdicts attached. Returns the answers' texts with the scores.
fn score<'r>(
    run: &'r Run,
    book: &AnswerBook,
    scorers: &Scorers,
    judge: Option<&JudgeData>,
) -> Result<(Vec<AnswerText<'r>>, Vec<ScoreRecord>)> {
    let mut missing = 0;
    let mut texts: Vec<(String, &EvalItem, String)> = Vec::new();
    for s in run.systems() {
        for it in &run.items {
            match book.get(&s, it) {
                Some(t) => texts.push((s.clone(), it, t)),
                None => missing += 1,
            }
        }
    }
    if missing > 0 {
        bail!("{missing} answers are missing from generations.jsonl after generation; rerun to fill them");
    }
    for c in &run.controls {
        for it in &run.items {
            if let Some(t) = book.get(c, it) {
                texts.push((c.clone(), it, t));
            }
        }
    }
    let answers: Vec<Answer> = texts.iter().map(|(s, it, t)| Answer { system: s, item: it, text: t }).collect();
    let mut scores = scoring::score_answers(scorers, &answers)?;
    scoring::attach_model_measures(&mut scores, &run.nll, judge);
    Ok((texts, scores))
}

/// Everything `results.json` records about where the numbers came from (`model`: the base
/// model's path, hash and chat template hash).
fn provenance(cfg: &EvalConfig, model: &ModelInfo, scorers: &Scorers) -> Value {
    let adapters: Vec<Value> = cfg
        .systems
        .iter()
        .map(|s| {
            let a: Vec<Value> = s.adapters.iter().map(|p| json!({"path": p, "sha256": path_hash(p).unwrap_or_default()})).collect();
            let mut v = json!({"name": s.name, "adapters": a, "adapter_weight": s.adapter_weight});
            if let (Some(url), Some(model)) = (&s.endpoint, &s.model) {
                v["endpoint"] = json!({"url": url, "model": model});
            }
            v
        })
        .collect();
    json!({
        "model": {"spec": cfg.model, "path": model.path, "sha256": model.sha256},
        "chat_template_sha256": model.template_sha256,
        "systems": adapters,
        "system_prompt": cfg.system_prompt,
        "prompts_version": cfg.prompts_version,
        "judge_prompts_version": judge::JUDGE_PROMPTS_VERSION,
        "decoding": cfg.decoding,
        "seed_rule": "item seed = first 8 bytes (LE) of sha256(\"<decoding.seed>:<item key>\"), identical for every system",
        "judge_model": cfg.judge.as_ref().map(|j| j.model.clone()),
        "scorers": scorers.provenance(),
    })
}

/// The base model as `results.json` records it.
struct ModelInfo {
    path: PathBuf,
    sha256: String,
    template_sha256: String,
}

/// Step 7: `scores.jsonl`, then the results and both reports.
fn write(dir: &Path, scores: &[ScoreRecord], results: &Results) -> Result<()> {
    bedside_data::write_jsonl_atomic(dir.join("scores.jsonl"), scores).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_results(dir, results)
}

/// results.json, report.md and report.html, each written atomically.
pub fn write_results(dir: &Path, results: &Results) -> Result<()> {
    crate::report::write_all(dir, results)
}

pub fn run(opts: RunOptions) -> Result<RunOutcome> {
    let cfg = &opts.config;
    let mut run = prepare(cfg, &opts.output_dir, opts.progress)?;
    let started = Instant::now();

    let mut systems = LocalSystems::load(cfg)?;
    let (gen_stats, fingerprints) = answer(&mut run, &mut systems)?;
    let scored = run.systems_and_reference();
    let test_items: Vec<&EvalItem> = run.items.iter().filter(|i| i.set == Set::Test).collect();
    let first_samples: Vec<&EvalItem> = test_items.iter().copied().filter(|i| i.sample == 0).collect();
    {
        let book = AnswerBook::new(cfg, &run.gens, &fingerprints, &run.control_builder);
        let pb = progress(0, "perplexity", run.show);
        perplexities(cfg, &mut systems, &fingerprints, &test_items, &scored, &book, &mut run.nll, &pb)?;
        pb.finish_and_clear();
    }
    let gen_secs = started.elapsed().as_secs_f64();

    let judge_started = Instant::now();
    let book = AnswerBook::new(cfg, &run.gens, &fingerprints, &run.control_builder);
    let judge_data = match &cfg.judge {
        Some(j) => Some(run_judge(cfg, j, &systems, &first_samples, &scored, &book, run.dir, run.show)?),
        None => None,
    };
    let judge_secs = judge_started.elapsed().as_secs_f64();
    let model = ModelInfo {
        path: systems.engine.location.path().to_path_buf(),
        sha256: systems.model_hash.clone(),
        template_sha256: systems.template_hash.clone(),
    };
    // The model is not needed any more; free its memory before the scorers load.
    drop(systems);

    let score_started = Instant::now();
    let scorers =
        Scorers::load(cfg.empathy_heads.as_deref()).context("loading the offline scorers (run scripts/setup.sh for the embedder)")?;
    tracing::info!(secs = score_started.elapsed().as_secs_f64(), "scorers loaded");
    let (texts, scores) = score(&run, &book, &scorers, judge_data.as_ref())?;
    tracing::info!(secs = score_started.elapsed().as_secs_f64(), answers = texts.len(), "answers scored");
    let systems_list = run.systems();
    let bleu_systems: Vec<String> = systems_list.iter().chain(&run.controls).cloned().collect();
    let bleu = scoring::corpus_bleu(&bleu_systems, &texts);
    let score_secs = score_started.elapsed().as_secs_f64();

    let inp = AggregateInput {
        cfg,
        systems: &systems_list,
        controls: &run.controls,
        scores: &scores,
        texts: &texts,
        pairwise: judge_data.as_ref().map(|j| j.pairwise.clone()).unwrap_or_default(),
        judge_items: judge_data.as_ref().map_or(0, |j| j.items),
    };
    let agg = aggregate::aggregate(&inp);
    tracing::info!(secs = score_started.elapsed().as_secs_f64(), "statistics done");

    let mut counts = BTreeMap::new();
    for set in [Set::Test, Set::Safety, Set::Equity] {
        counts.insert(set.as_str().to_string(), run.items.iter().filter(|i| i.set == set).count());
    }
    counts.insert("answers".into(), texts.len());
    let (n_gen, gen_total) = gen_stats.values().fold((0usize, 0.0f64), |(n, s), g| (n + g.generated, s + g.secs));
    let timings = json!({
        "generation_and_perplexity_secs": gen_secs,
        "judge_secs": judge_secs,
        "scoring_secs": score_secs,
        "generation": gen_stats,
        "secs_per_generated_answer": if n_gen > 0 { json!(gen_total / n_gen as f64) } else { json!(null) },
    });
    let Aggregated {
        stats,
        verdict,
        validity,
        measures,
        per_system,
        comparisons,
        breakdowns,
        safety,
        safety_comparisons,
        equity,
        judge,
        examples,
        summary,
    } = agg;
    let results = Results {
        schema_version: SCHEMA_VERSION,
        tool: format!("bedside-eval {}", env!("CARGO_PKG_VERSION")),
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        name: cfg.name.clone(),
        provenance: provenance(cfg, &model, &scorers),
        config: serde_json::to_value(cfg)?,
        systems: systems_list.clone(),
        baseline: cfg.base_system().to_string(),
        controls: run.controls.clone(),
        stats,
        verdict,
        validity,
        counts,
        measures,
        per_system,
        bleu,
        comparisons,
        breakdowns,
        safety,
        safety_comparisons,
        equity,
        equity_threshold_pct: cfg.equity.threshold_pct,
        judge,
        examples,
        summary,
        timings,
    };
    write(run.dir, &scores, &results)?;
    Ok(RunOutcome { dir: run.dir.to_path_buf(), results, generation: gen_stats })
}
