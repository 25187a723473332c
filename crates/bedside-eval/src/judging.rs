//! The judging step (optional): an LLM judge answers the rubric questions of [`crate::judge`]
//! about every scored answer of the first test items, in every prompting setting; raw outputs
//! are cached in `judge.jsonl` and parsed into majority verdicts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use bedside_generate::{Engine, EngineOptions, SamplingParams};
use bedside_model::LoadOptions;
use serde::{Deserialize, Serialize};

use crate::answers::AnswerBook;
use crate::cache::{Cached, JsonlCache};
use crate::config::{EvalConfig, JudgeConfig};
use crate::hash::{path_hash, sha256_hex};
use crate::items::EvalItem;
use crate::judge::{self, Outcome, Shots};
use crate::scoring::JudgeVerdicts;
use crate::systems::LocalSystems;

/// One raw judge answer; parsing happens at aggregation time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JudgeRecord {
    /// `task|shots|detail|system|item` (detail: mechanism for epitome, order for pairwise).
    pub key: String,
    pub fingerprint: String,
    pub raw: String,
}

impl Cached for JudgeRecord {
    fn cache_key(&self) -> String {
        self.key.clone()
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Per system, per prompting setting: (item key, order-1 outcome, order-2 outcome).
pub(crate) type PairwiseOutcomes = Vec<(String, BTreeMap<String, Vec<(String, Option<Outcome>, Option<Outcome>)>>)>;

/// The judge's majority verdicts per (system, item) and pairwise order outcomes.
pub(crate) struct JudgeData {
    pub verdicts: BTreeMap<(String, String), JudgeVerdicts>,
    pub pairwise: PairwiseOutcomes,
    pub items: usize,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run_judge(
    cfg: &EvalConfig,
    j: &JudgeConfig,
    gen_sys: &LocalSystems,
    test_items: &[&EvalItem],
    systems: &[String],
    book: &AnswerBook,
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
            load: LoadOptions { device: bedside_model::parse_device(&j.device)?, dtype: None, dequantize: false, kv_cache: None },
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
            let Some(ans) = book.get(s, it) else { continue };
            for &sh in &shots {
                if has("epitome") {
                    for m in 0..3 {
                        jobs.push((
                            format!("epitome|{}|{}|{s}|{}", sh.as_str(), judge::MECHANISMS[m].0, it.key),
                            judge::epitome_prompt(m, sh, &it.prompt, &ans),
                        ));
                    }
                }
                if has("good_okay_bad") {
                    jobs.push((format!("gob|{}|-|{s}|{}", sh.as_str(), it.key), judge::good_okay_bad_prompt(sh, &it.prompt, &ans)));
                }
                if has("pairwise") && *s != base {
                    if let Some(b) = book.get(&base, it) {
                        jobs.push((format!("pair|{}|1|{s}|{}", sh.as_str(), it.key), judge::pairwise_prompt(sh, &it.prompt, &ans, &b)));
                        jobs.push((format!("pair|{}|2|{s}|{}", sh.as_str(), it.key), judge::pairwise_prompt(sh, &it.prompt, &b, &ans)));
                    }
                }
            }
        }
    }
    let mut cache = JsonlCache::<JudgeRecord>::open(&dir.join("judge.jsonl"))?;
    let pb = crate::run::progress(jobs.len() as u64, "judge", show);
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
                    .map(|sh| {
                        raw(&format!("epitome|{}|{}|{s}|{}", sh.as_str(), judge::MECHANISMS[m].0, it.key))
                            .and_then(|r| judge::parse_level(&r))
                    })
                    .collect();
                v.epitome[m] = judge::majority(&votes);
            }
            let votes: Vec<Option<judge::Rating>> = shots
                .iter()
                .map(|sh| raw(&format!("gob|{}|-|{s}|{}", sh.as_str(), it.key)).and_then(|r| judge::parse_rating(&r)))
                .collect();
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
