//! The perplexity step: the teacher-forced negative log-likelihood of fixed answers, cached in
//! `nll.jsonl`. Two kinds: `neutral` — the item's neutral reference answer under each system (does
//! the adapter make the model find plain medical answers less likely?) — and `fluency` — every
//! scored answer under the base model.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use bedside_generate::Engine;
use bedside_model::{Cache, Logits};
use bedside_tokenizer::ChatMessage;
use candle_core::{DType, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::answers::AnswerBook;
use crate::cache::{Cached, JsonlCache};
use crate::config::EvalConfig;
use crate::hash::sha256_hex;
use crate::items::EvalItem;
use crate::systems::{chat, LocalSystems};

/// Teacher-forced NLL of an answer: `neutral` (the item's neutral reference answer under the
/// system) or `fluency` (a system's answer under the base model).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NllRecord {
    pub kind: String,
    /// For `neutral`: the system scored; for `fluency`: the system whose answer was scored.
    pub system: String,
    pub key: String,
    pub fingerprint: String,
    pub tokens: usize,
    pub mean_nll: f64,
    pub ppl: f64,
}

impl Cached for NllRecord {
    fn cache_key(&self) -> String {
        format!("{}|{}|{}", self.kind, self.system, self.key)
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Mean negative log-likelihood (nats) of the assistant turn `answer` after `messages`, and the
/// number of scored tokens. Only the answer's tokens count (the end-of-turn marker the template
/// writes after it included, as in the reference fixture); the prompt is context.
pub fn answer_nll(engine: &Engine, messages: &[ChatMessage], answer: &str) -> Result<(usize, f64)> {
    let mut out = answers_nll(engine, messages, &[answer])?;
    Ok(out.remove(0))
}

/// [`answer_nll`] for several answers to the same `messages`: the prompt runs through the model
/// once and each answer continues from a copy of its key/value cache.
pub fn answers_nll(engine: &Engine, messages: &[ChatMessage], answers: &[&str]) -> Result<Vec<(usize, f64)>> {
    let prompt_ids = engine.encode_chat(messages)?;
    let ctx = engine.model.context_length();
    anyhow::ensure!(prompt_ids.len() < ctx, "the prompt fills the context window; nothing of the answer is left to score");
    anyhow::ensure!(!prompt_ids.is_empty(), "the chat template rendered an empty prompt");
    let device = engine.model.device().clone();
    let mut prompt_cache = Cache::new(&engine.model);
    let input = Tensor::new(prompt_ids.as_slice(), &device)?.unsqueeze(0)?;
    // The last prompt position predicts the answer's first token.
    let first = engine.model.forward(&input, Some(&mut prompt_cache), Logits::Last)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut out = Vec::with_capacity(answers.len());
    for answer in answers {
        let mut full = messages.to_vec();
        full.push(ChatMessage::new("assistant", *answer));
        let mut ids = engine.encode_chat_with(&full, false)?;
        if !ids.starts_with(&prompt_ids) || ids.len() <= prompt_ids.len() {
            // A template whose prompt is not a prefix of the full chat: score the bare answer.
            ids = prompt_ids.clone();
            ids.extend(engine.tokenizer.encode_plain(answer)?);
        }
        ids.truncate(ctx);
        let targets = &ids[prompt_ids.len()..];
        anyhow::ensure!(!targets.is_empty(), "the answer has no tokens to score");
        // Rows: the prompt's last position, then every answer position but the last.
        let mut rest = Vec::new();
        if targets.len() > 1 {
            let mut cache = prompt_cache.clone();
            let x = Tensor::new(&targets[..targets.len() - 1], &device)?.unsqueeze(0)?;
            rest = engine.model.forward(&x, Some(&mut cache), Logits::All)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        }
        // Log-sum-exp minus the target's logit, one pass per row (sums in f64): a chain of tensor
        // ops over (answer tokens × vocabulary) allocated five buffers of that size per answer.
        let rows: Vec<&Vec<f32>> = first.iter().chain(&rest).collect();
        let mut total = 0f64;
        for (row, &target) in rows.iter().zip(targets) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f64 = row.iter().map(|&x| (x - max).exp() as f64).sum();
            let picked = *row.get(target as usize).ok_or_else(|| anyhow::anyhow!("token id {target} is outside the vocabulary"))?;
            total += max as f64 + sum.ln() - picked as f64;
        }
        let n = rows.len();
        out.push((n, total / n as f64));
    }
    Ok(out)
}

/// One answer to score under a model.
#[derive(Clone)]
pub(crate) struct NllJob {
    pub kind: &'static str,
    pub system: String,
    pub key: String,
    pub messages: Vec<ChatMessage>,
    pub answer: String,
}

fn nll_fingerprint(system_fp: &str, job: &NllJob) -> String {
    let msgs: Vec<String> = job.messages.iter().map(|m| format!("{}:{}", m.role, m.content)).collect();
    sha256_hex(format!("{system_fp}\n{}\n{}\n{}", job.kind, msgs.join("\n"), job.answer).as_bytes())
}

/// Score the jobs not yet cached under `engine` (whose answers have fingerprint `system_fp`).
fn run_nll(engine: &Engine, system_fp: &str, jobs: &[NllJob], cache: &mut JsonlCache<NllRecord>, pb: &ProgressBar) -> Result<usize> {
    // Jobs that share a prompt (one item's answers from several systems) share its forward pass.
    type Group<'j> = (&'j [ChatMessage], Vec<(&'j NllJob, String)>);
    let mut groups: Vec<Group> = Vec::new();
    for job in jobs {
        let fp = nll_fingerprint(system_fp, job);
        let key = format!("{}|{}|{}", job.kind, job.system, job.key);
        if cache.contains(&key, &fp) {
            pb.inc(1);
            continue;
        }
        match groups.iter_mut().find(|(m, _)| *m == job.messages.as_slice()) {
            Some((_, g)) => g.push((job, fp)),
            None => groups.push((&job.messages, vec![(job, fp)])),
        }
    }
    let mut done = 0;
    for (messages, group) in groups {
        let answers: Vec<&str> = group.iter().map(|(j, _)| j.answer.as_str()).collect();
        let keys: Vec<&str> = group.iter().map(|(j, _)| j.key.as_str()).collect();
        let scored = answers_nll(engine, messages, &answers).with_context(|| format!("perplexity of {}", keys.join(", ")))?;
        for ((job, fp), (tokens, mean)) in group.into_iter().zip(scored) {
            cache.put(NllRecord {
                kind: job.kind.to_string(),
                system: job.system.clone(),
                key: job.key.clone(),
                fingerprint: fp,
                tokens,
                mean_nll: mean,
                ppl: mean.exp(),
            })?;
            done += 1;
            pb.inc(1);
        }
    }
    Ok(done)
}

/// The perplexity step: each system's NLL of the neutral reference answers, then the base
/// model's NLL of every scored answer of the test split (`scored`: generated systems and the
/// reference).
#[allow(clippy::too_many_arguments)]
pub(crate) fn perplexities(
    cfg: &EvalConfig,
    systems: &mut LocalSystems,
    fingerprints: &BTreeMap<String, String>,
    test_items: &[&EvalItem],
    scored: &[String],
    book: &AnswerBook,
    cache: &mut JsonlCache<NllRecord>,
    pb: &ProgressBar,
) -> Result<()> {
    let neutral_jobs = |system: &str| -> Vec<NllJob> {
        test_items
            .iter()
            .filter(|it| it.sample == 0)
            .filter_map(|it| {
                Some(NllJob {
                    kind: "neutral",
                    system: system.to_string(),
                    key: it.key.clone(),
                    messages: chat(&cfg.system_prompt, it.neutral_prompt.as_deref()?),
                    answer: it.neutral_answer.clone()?,
                })
            })
            .collect()
    };
    let fluency_jobs: Vec<NllJob> = scored
        .iter()
        .flat_map(|s| test_items.iter().map(move |it| (s, it)))
        .filter_map(|(s, it)| {
            let text = book.get(s, it)?;
            (!text.trim().is_empty()).then(|| NllJob {
                kind: "fluency",
                system: s.clone(),
                key: it.key.clone(),
                messages: chat(&cfg.system_prompt, &it.prompt),
                answer: text,
            })
        })
        .collect();
    // An endpoint's model cannot be scored teacher-forced here: no neutral perplexity for it.
    let local = || cfg.systems.iter().filter(|s| s.endpoint.is_none());
    let n_neutral: usize = local().map(|s| neutral_jobs(&s.name).len()).sum();
    pb.set_length((n_neutral + fluency_jobs.len()) as u64);
    for system in local() {
        systems.select(system)?;
        let fp = fingerprints.get(&system.name).context("a system without a fingerprint")?;
        run_nll(&systems.engine, fp, &neutral_jobs(&system.name), cache, pb)?;
    }
    let base_name = cfg.base_system();
    let base = cfg.systems.iter().find(|s| s.name == base_name).context("the config has no base system")?;
    systems.select(base)?;
    let fp = fingerprints.get(base_name).context("the base system has no fingerprint")?;
    run_nll(&systems.engine, fp, &fluency_jobs, cache, pb)?;
    Ok(())
}
