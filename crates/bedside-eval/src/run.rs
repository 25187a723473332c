//! `bedside eval run`: generate (cached), score, aggregate, report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bedside_generate::{Engine, EngineOptions, SamplingParams};
use bedside_model::LoadOptions;
use serde_json::json;

use crate::cache::JsonlCache;
use crate::config::{EvalConfig, JudgeConfig, REFERENCE};
use crate::generate::{
    self, chat, generate_system, path_hash, progress, run_nll, sha256_hex, GenRecord, GenStats, JudgeRecord, NllJob,
    NllRecord, Systems,
};
use crate::items::{load_items, EvalItem, Set};
use crate::judge::{self, Outcome, Shots};
use crate::measures::{self, Scorers};
use crate::results::{self, AggregateInput, Results, SCHEMA_VERSION};
use crate::score::{score_answers, Answer, JudgeVerdicts};

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

pub fn run(opts: RunOptions) -> Result<RunOutcome> {
    let cfg = &opts.config;
    let dir = &opts.output_dir;
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
    let started = Instant::now();
    let mut gens = JsonlCache::<GenRecord>::open(&dir.join("generations.jsonl"))?;
    let mut nll = JsonlCache::<NllRecord>::open(&dir.join("nll.jsonl"))?;
    tracing::info!(items = items.len(), systems = cfg.systems.len(), cached = gens.len(), "eval run");

    // 1. Generation and perplexity of the neutral answers, system by system.
    let mut sys = Systems::load(cfg)?;
    let test_items: Vec<&EvalItem> = items.iter().filter(|i| i.set == Set::Test).collect();
    let pb = progress((cfg.systems.len() * items.len()) as u64, "generate", opts.progress);
    let mut gen_stats = BTreeMap::new();
    let mut fingerprints = BTreeMap::new();
    for system in &cfg.systems {
        sys.select(system)?;
        let fp = generate::system_fingerprint(cfg, &sys, system)?;
        let st = generate_system(cfg, &sys, system, &fp, &items, &mut gens, &pb)?;
        gen_stats.insert(system.name.clone(), st);
        fingerprints.insert(system.name.clone(), fp);
    }
    pb.finish_and_clear();
    let neutral_jobs: Vec<(String, NllJob)> = cfg
        .systems
        .iter()
        .flat_map(|s| {
            test_items.iter().filter_map(move |it| {
                Some((
                    s.name.clone(),
                    NllJob {
                        kind: "neutral",
                        system: s.name.clone(),
                        key: it.key.clone(),
                        messages: chat(&cfg.system_prompt, it.neutral_prompt.as_deref()?),
                        answer: it.neutral_answer.clone()?,
                    },
                ))
            })
        })
        .collect();
    let base_name = cfg.base_system().to_string();
    let answer_of = |gens: &JsonlCache<GenRecord>, system: &str, it: &EvalItem| -> Option<String> {
        if system == REFERENCE {
            return it.reference.clone();
        }
        let seed = generate::item_seed(cfg.decoding.seed, &it.key);
        let fp = generate::item_fingerprint(&fingerprints[system], &it.prompt, seed);
        gens.get(&format!("{system}|{}", it.key), &fp).map(|g| g.text.clone())
    };
    let mut scored_systems: Vec<String> = cfg.systems.iter().map(|s| s.name.clone()).collect();
    if cfg.include_reference && !test_items.is_empty() {
        scored_systems.push(REFERENCE.to_string());
    }
    let fluency_jobs: Vec<NllJob> = scored_systems
        .iter()
        .flat_map(|s| test_items.iter().map(move |it| (s, it)))
        .filter_map(|(s, it)| {
            let text = answer_of(&gens, s, it)?;
            (!text.trim().is_empty()).then(|| NllJob {
                kind: "fluency",
                system: s.clone(),
                key: it.key.clone(),
                messages: chat(&cfg.system_prompt, &it.prompt),
                answer: text,
            })
        })
        .collect();
    let pb = progress((neutral_jobs.len() + fluency_jobs.len()) as u64, "perplexity", opts.progress);
    for system in &cfg.systems {
        let jobs: Vec<NllJob> = neutral_jobs.iter().filter(|(s, _)| *s == system.name).map(|(_, j)| clone_job(j)).collect();
        sys.select(system)?;
        run_nll(&sys.engine, &fingerprints[&system.name], &jobs, &mut nll, &pb)?;
    }
    let base_cfg = cfg.systems.iter().find(|s| s.name == base_name).expect("base system").clone();
    sys.select(&base_cfg)?;
    run_nll(&sys.engine, &fingerprints[&base_name], &fluency_jobs, &mut nll, &pb)?;
    pb.finish_and_clear();
    let gen_secs = started.elapsed().as_secs_f64();

    // 2. Optional judge.
    let judge_started = Instant::now();
    let judge_data = match &cfg.judge {
        Some(j) => Some(run_judge(cfg, j, &sys, &test_items, &scored_systems, &|s, it| answer_of(&gens, s, it), dir, opts.progress)?),
        None => None,
    };
    let judge_secs = judge_started.elapsed().as_secs_f64();
    let template_hash = sys.template_hash.clone();
    let model_hash = sys.model_hash.clone();
    let model_path = sys.engine.location.path().to_path_buf();
    drop(sys);

    // 3. Scores.
    let score_started = Instant::now();
    let mut scorers = Scorers::load().context("loading the offline scorers (run scripts/setup.sh for the embedder)")?;
    tracing::info!(secs = score_started.elapsed().as_secs_f64(), "scorers loaded");
    if let Some(t) = &cfg.sets.test {
        scorers.calibrate(&crate::items::calibration_dialogues(t, 100)?)?;
        tracing::info!(secs = score_started.elapsed().as_secs_f64(), "key-fact threshold calibrated");
    }
    let mut answers = Vec::new();
    let mut missing = 0;
    let texts: Vec<(String, &EvalItem, String)> = scored_systems
        .iter()
        .flat_map(|s| items.iter().map(move |it| (s, it)))
        .filter(|(s, it)| s.as_str() != REFERENCE || it.set == Set::Test)
        .filter_map(|(s, it)| match answer_of(&gens, s, it) {
            Some(t) => Some((s.clone(), it, t)),
            None => {
                missing += 1;
                None
            }
        })
        .collect();
    if missing > 0 {
        bail!("{missing} answers are missing from generations.jsonl after generation; rerun to fill them");
    }
    for (s, it, t) in &texts {
        answers.push(Answer { system: s, item: it, text: t });
    }
    let mut scores = score_answers(&scorers, &answers)?;
    tracing::info!(secs = score_started.elapsed().as_secs_f64(), answers = answers.len(), "answers scored");
    for s in scores.iter_mut().filter(|s| s.set == Set::Test) {
        if let Some(r) = nll.get_any(&format!("neutral|{}|{}", s.system, s.key)) {
            s.values.insert("ppl_neutral".into(), r.ppl);
        }
        if let Some(r) = nll.get_any(&format!("fluency|{}|{}", s.system, s.key)) {
            s.values.insert("fluency_ppl".into(), r.ppl);
        }
    }
    let mut pairwise = Vec::new();
    if let Some(jd) = &judge_data {
        for s in scores.iter_mut().filter(|s| s.set == Set::Test) {
            if let Some(v) = jd.verdicts.get(&(s.system.clone(), s.key.clone())) {
                for (m, k) in ["judge_er", "judge_ip", "judge_ex"].iter().enumerate() {
                    if let Some(l) = v.epitome[m] {
                        s.values.insert(k.to_string(), l as f64);
                    }
                }
                if let Some(r) = v.rating {
                    s.values.insert("judge_good".into(), if r == judge::Rating::Good { 1.0 } else { 0.0 });
                }
                s.judge = Some(v.clone());
            }
        }
        pairwise = jd.pairwise.clone();
    }
    // Corpus BLEU per system over the test items.
    let mut bleu = BTreeMap::new();
    for s in &scored_systems {
        let (hyp, refs): (Vec<String>, Vec<String>) = texts
            .iter()
            .filter(|(sys, it, _)| sys == s && it.set == Set::Test && it.reference.is_some())
            .map(|(_, it, t)| (t.clone(), it.reference.clone().unwrap_or_default()))
            .unzip();
        if !hyp.is_empty() {
            bleu.insert(s.clone(), measures::corpus_bleu(&hyp, &refs));
        }
    }
    let score_secs = score_started.elapsed().as_secs_f64();

    // 4. Aggregate.
    let inp = AggregateInput { cfg, systems: &scored_systems, scores: &scores, bleu: bleu.clone(), pairwise, judge_items: judge_data.as_ref().map_or(0, |j| j.items) };
    let (measures_defs, per_system, comparisons, breakdowns) = results::aggregate(&inp);
    let (safety, safety_comparisons) = crate::aggregate_extra::safety(cfg, &scored_systems, &scores, &texts);
    let equity = crate::aggregate_extra::equity(cfg, &scored_systems, &scores);
    let judge_results = cfg.judge.as_ref().map(|j| crate::aggregate_extra::judge_results(cfg, j, &inp, &scores));
    let examples = crate::aggregate_extra::examples(cfg, &scored_systems, &scores, &texts);
    tracing::info!(secs = score_started.elapsed().as_secs_f64(), "statistics done");
    let summary = results::summary_sentences(&base_name, &measures_defs, &comparisons, &safety_comparisons, judge_results.as_ref(), cfg.stats.alpha);
    let mut counts = BTreeMap::new();
    for set in [Set::Test, Set::Safety, Set::Equity] {
        counts.insert(set.as_str().to_string(), items.iter().filter(|i| i.set == set).count());
    }
    counts.insert("answers".into(), texts.len());
    let adapters: Vec<serde_json::Value> = cfg
        .systems
        .iter()
        .map(|s| {
            let a: Vec<serde_json::Value> =
                s.adapters.iter().map(|p| json!({"path": p, "sha256": path_hash(p).unwrap_or_default()})).collect();
            json!({"name": s.name, "adapters": a, "adapter_weight": s.adapter_weight})
        })
        .collect();
    let provenance = json!({
        "model": {"spec": cfg.model, "path": model_path, "sha256": model_hash},
        "chat_template_sha256": template_hash,
        "systems": adapters,
        "system_prompt": cfg.system_prompt,
        "prompts_version": cfg.prompts_version,
        "judge_prompts_version": judge::JUDGE_PROMPTS_VERSION,
        "decoding": cfg.decoding,
        "seed_rule": "item seed = first 8 bytes (LE) of sha256(\"<decoding.seed>:<item key>\"), identical for every system",
        "judge_model": cfg.judge.as_ref().map(|j| j.model.clone()),
        "scorers": scorers.provenance(),
    });
    let (n_gen, gen_total) = gen_stats.values().fold((0usize, 0.0f64), |(n, s), g| (n + g.generated, s + g.secs));
    let per_answer = if n_gen > 0 { json!(gen_total / n_gen as f64) } else { json!(null) };
    let timings = json!({
        "generation_and_perplexity_secs": gen_secs,
        "judge_secs": judge_secs,
        "scoring_secs": score_secs,
        "generation": gen_stats,
        "secs_per_generated_answer": per_answer,
    });
    let results = Results {
        schema_version: SCHEMA_VERSION,
        tool: format!("bedside-eval {}", env!("CARGO_PKG_VERSION")),
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        name: cfg.name.clone(),
        provenance,
        config: serde_json::to_value(cfg)?,
        systems: scored_systems.clone(),
        baseline: base_name.clone(),
        counts,
        measures: measures_defs,
        per_system,
        bleu,
        comparisons,
        breakdowns,
        safety,
        safety_comparisons,
        equity,
        equity_threshold_pct: cfg.equity.threshold_pct,
        judge: judge_results,
        examples,
        summary,
        timings,
    };

    // 5. Write.
    bedside_data::write_jsonl_atomic(dir.join("scores.jsonl"), &scores).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_results(dir, &results)?;
    Ok(RunOutcome { dir: dir.clone(), results, generation: gen_stats })
}

/// results.json, report.md and report.html, each written atomically.
pub fn write_results(dir: &Path, results: &Results) -> Result<()> {
    let w = |name: &str, bytes: &[u8]| bedside_data::write_atomic(dir.join(name), bytes).map_err(|e| anyhow::anyhow!("{e}"));
    w("results.json", serde_json::to_string_pretty(results)?.as_bytes())?;
    w("report.md", crate::report::markdown(results).as_bytes())?;
    w("report.html", crate::report::html(results).as_bytes())?;
    Ok(())
}

fn clone_job(j: &NllJob) -> NllJob {
    NllJob { kind: j.kind, system: j.system.clone(), key: j.key.clone(), messages: j.messages.clone(), answer: j.answer.clone() }
}

/// The judge's majority verdicts per (system, item) and pairwise order outcomes.
pub struct JudgeData {
    pub verdicts: BTreeMap<(String, String), JudgeVerdicts>,
    pub pairwise: Vec<(String, BTreeMap<String, Vec<(String, Option<Outcome>, Option<Outcome>)>>)>,
    pub items: usize,
}

#[allow(clippy::too_many_arguments)]
fn run_judge(
    cfg: &EvalConfig,
    j: &JudgeConfig,
    gen_sys: &Systems,
    test_items: &[&EvalItem],
    systems: &[String],
    answer_of: &dyn Fn(&str, &EvalItem) -> Option<String>,
    dir: &Path,
    show: bool,
) -> Result<JudgeData> {
    // The judge shares the generation engine when it is the same model on the same device (the
    // engine's dequantize setting then applies to it too).
    let same = j.model == cfg.model && j.device == cfg.device;
    let own;
    let engine: &Engine = if same {
        &gen_sys.engine
    } else {
        let opts = EngineOptions {
            load: LoadOptions { device: bedside_model::parse_device(&j.device)?, dtype: None, dequantize: false },
            offline: cfg.offline,
            chat_template: None,
            adapters: Vec::new(),
        };
        own = Engine::load(&j.model, &opts).with_context(|| format!("loading the judge model `{}`", j.model))?;
        &own
    };
    let judge_hash = if same { gen_sys.model_hash.clone() } else { path_hash(engine.location.path())? };
    let fp_base = sha256_hex(format!("{judge_hash}\n{}\n{}", judge::JUDGE_PROMPTS_VERSION, j.max_tokens).as_bytes());
    let n_items = j.max_items.map_or(test_items.len(), |m| m.min(test_items.len()));
    let items = &test_items[..n_items];
    let shots: Vec<Shots> = j.shots.iter().filter_map(|s| Shots::parse(s)).collect();
    let has = |t: &str| j.tasks.iter().any(|x| x == t);
    let base = cfg.base_system().to_string();
    // Every prompt to ask: (cache key, messages).
    let mut jobs: Vec<(String, Vec<bedside_tokenizer::ChatMessage>)> = Vec::new();
    for s in systems {
        for it in items {
            let Some(ans) = answer_of(s, it) else { continue };
            for &sh in &shots {
                if has("epitome") {
                    for m in 0..3 {
                        jobs.push((format!("epitome|{}|{}|{s}|{}", sh.as_str(), judge::MECHANISMS[m].0, it.key), judge::epitome_prompt(m, sh, &it.prompt, &ans)));
                    }
                }
                if has("good_okay_bad") {
                    jobs.push((format!("gob|{}|-|{s}|{}", sh.as_str(), it.key), judge::good_okay_bad_prompt(sh, &it.prompt, &ans)));
                }
                if has("pairwise") && *s != base {
                    if let Some(b) = answer_of(&base, it) {
                        jobs.push((format!("pair|{}|1|{s}|{}", sh.as_str(), it.key), judge::pairwise_prompt(sh, &it.prompt, &ans, &b)));
                        jobs.push((format!("pair|{}|2|{s}|{}", sh.as_str(), it.key), judge::pairwise_prompt(sh, &it.prompt, &b, &ans)));
                    }
                }
            }
        }
    }
    let mut cache = JsonlCache::<JudgeRecord>::open(&dir.join("judge.jsonl"))?;
    let pb = progress(jobs.len() as u64, "judge", show);
    let mut todo = Vec::new();
    for (key, msgs) in &jobs {
        let ids = engine.encode_chat(msgs)?;
        let fp = sha256_hex(format!("{fp_base}\n{}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")).as_bytes());
        if cache.contains(key, &fp) {
            pb.inc(1);
        } else {
            todo.push((key.clone(), ids, fp));
        }
    }
    todo.sort_by_key(|t| t.1.len());
    let params = SamplingParams { temperature: 0.0, max_tokens: j.max_tokens, ..SamplingParams::default() };
    for chunk in todo.chunks(cfg.batch_size) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|t| t.1.clone()).collect();
        let out = engine.generate_batch(&prompts, &vec![params.clone(); chunk.len()])?;
        for ((key, _, fp), g) in chunk.iter().zip(out) {
            cache.put(JudgeRecord { key: key.clone(), fingerprint: fp.clone(), raw: g.text })?;
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let raw = |k: &str| cache.get_any(k).map(|r| r.raw.clone());
    let mut verdicts = BTreeMap::new();
    for s in systems {
        for it in items {
            let mut v = JudgeVerdicts::default();
            for m in 0..3 {
                let votes: Vec<Option<u8>> = shots
                    .iter()
                    .map(|sh| raw(&format!("epitome|{}|{}|{s}|{}", sh.as_str(), judge::MECHANISMS[m].0, it.key)).and_then(|r| judge::parse_level(&r)))
                    .collect();
                v.epitome[m] = judge::majority(&votes);
            }
            let votes: Vec<Option<judge::Rating>> =
                shots.iter().map(|sh| raw(&format!("gob|{}|-|{s}|{}", sh.as_str(), it.key)).and_then(|r| judge::parse_rating(&r))).collect();
            v.rating = judge::majority(&votes);
            verdicts.insert((s.clone(), it.key.clone()), v);
        }
    }
    let mut pairwise = Vec::new();
    if has("pairwise") {
        for s in systems.iter().filter(|s| **s != base) {
            let mut settings = BTreeMap::new();
            for sh in &shots {
                let rows: Vec<(String, Option<Outcome>, Option<Outcome>)> = items
                    .iter()
                    .map(|it| {
                        let c1 = raw(&format!("pair|{}|1|{s}|{}", sh.as_str(), it.key)).and_then(|r| judge::parse_choice(&r));
                        let c2 = raw(&format!("pair|{}|2|{s}|{}", sh.as_str(), it.key)).and_then(|r| judge::parse_choice(&r));
                        (it.key.clone(), c1.map(|c| judge::outcome_of(c, true)), c2.map(|c| judge::outcome_of(c, false)))
                    })
                    .collect();
                settings.insert(sh.as_str().to_string(), rows);
            }
            pairwise.push((s.clone(), settings));
        }
    }
    Ok(JudgeData { verdicts, pairwise, items: n_items })
}
