//! Answer generation for every system, the teacher-forced NLL of reference answers, and the
//! judge's raw outputs, all cached in the run directory so an interrupted run resumes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bedside_generate::{Engine, EngineOptions, SamplingParams};
use bedside_model::{Cache, LoadOptions, Logits};
use bedside_tokenizer::ChatMessage;
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::{Cached, JsonlCache};
use crate::config::{EvalConfig, SystemConfig};
use crate::items::EvalItem;

pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("{:x}", h.finalize())
}

/// Files above this size are hashed by their first 64 MiB and their length (labelled as such).
const FULL_HASH_LIMIT: u64 = 2 << 30;

/// sha256 of a file, streaming; for very large files, of its head and length.
pub fn file_hash(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let limit = if len > FULL_HASH_LIMIT { 64 << 20 } else { len };
    let mut read = 0u64;
    while read < limit {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let take = n.min((limit - read) as usize);
        h.update(&buf[..take]);
        read += take as u64;
    }
    if len > FULL_HASH_LIMIT {
        Ok(format!("sha256-head64M-len{len}:{:x}", h.finalize()))
    } else {
        Ok(format!("{:x}", h.finalize()))
    }
}

/// Hash of every regular file in a directory (sorted by name), or of the file itself.
pub fn path_hash(path: &Path) -> Result<String> {
    if path.is_file() {
        return file_hash(path);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let mut parts = String::new();
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        parts.push_str(&format!("{name}={}\n", file_hash(&p)?));
    }
    Ok(sha256_hex(parts.as_bytes()))
}

/// The item's seed: derived from the base seed and the item key, identical for every system.
pub fn item_seed(base: u64, key: &str) -> u64 {
    let d = Sha256::digest(format!("{base}:{key}").as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// One cached answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenRecord {
    pub system: String,
    pub key: String,
    pub seed: u64,
    pub fingerprint: String,
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: String,
    /// This answer's share of its batch's wall time.
    pub secs: f64,
}

impl Cached for GenRecord {
    fn cache_key(&self) -> String {
        format!("{}|{}", self.system, self.key)
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Teacher-forced NLL of an answer: `neutral` (the item's neutral reference answer under the
/// system) or `fluency` (a system's answer under the base model).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NllRecord {
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

/// One raw judge answer; parsing happens at aggregation time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgeRecord {
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

pub fn progress(total: u64, prefix: &str, show: bool) -> ProgressBar {
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

/// The base model loaded once; adapters are attached per system and removed afterwards.
pub struct Systems {
    pub engine: Engine,
    pub model_hash: String,
    pub template_hash: String,
    current: Option<String>,
    /// Base weights replaced by merged adapters, put back before the next system.
    unmerge: bedside_lora::Unmerge,
    /// Whether the current system's adapters are merged into the weights (else attached).
    pub merged: bool,
}

impl Systems {
    pub fn load(cfg: &EvalConfig) -> Result<Self> {
        let device = bedside_model::parse_device(&cfg.device)?;
        let opts = EngineOptions {
            load: LoadOptions { device, dtype: None, dequantize: cfg.dequantize },
            offline: cfg.offline,
            chat_template: None,
            adapters: Vec::new(),
        };
        let engine = Engine::load(&cfg.model, &opts).with_context(|| format!("loading the base model `{}`", cfg.model))?;
        let model_hash = path_hash(engine.location.path())?;
        let template_hash = engine.template.as_ref().map(|t| sha256_hex(t.source().as_bytes())).unwrap_or_default();
        Ok(Self { engine, model_hash, template_hash, current: None, unmerge: Default::default(), merged: false })
    }

    /// Make the engine serve `system` (base plus its adapters).
    pub fn select(&mut self, system: &SystemConfig) -> Result<()> {
        if self.current.as_deref() == Some(system.name.as_str()) {
            return Ok(());
        }
        bedside_lora::unmerge(&mut self.engine.model, std::mem::take(&mut self.unmerge));
        bedside_lora::detach_all(&mut self.engine.model);
        self.current = None;
        self.merged = false;
        let device = self.engine.model.device().clone();
        let mut all_merged = true;
        for dir in &system.adapters {
            let adapter = bedside_lora::load_peft(dir, &device)
                .with_context(|| format!("system `{}`: adapter {}", system.name, dir.display()))?;
            // Merged into a dense f32 base (e.g. `dequantize = true`): a quarter faster prompt
            // processing and perplexity; the original weights come back for the next system.
            let how = bedside_lora::apply(&mut self.engine.model, &adapter, system.adapter_weight, &mut self.unmerge)
                .with_context(|| format!("system `{}`: applying adapter {}", system.name, dir.display()))?;
            all_merged &= how == bedside_lora::Applied::Merged;
        }
        self.merged = all_merged && !system.adapters.is_empty();
        self.current = Some(system.name.clone());
        Ok(())
    }
}

/// What settings a system's answers depend on (beyond the prompt and seed).
pub fn system_fingerprint(cfg: &EvalConfig, sys: &Systems, system: &SystemConfig) -> Result<String> {
    let adapters: Vec<String> = system.adapters.iter().map(|a| path_hash(a)).collect::<Result<_>>()?;
    let v = serde_json::json!({
        "model": sys.model_hash,
        "dequantize": cfg.dequantize,
        "template": sys.template_hash,
        "adapters": adapters,
        "adapter_weight": system.adapter_weight,
        // Merged weights round differently from attached branches.
        "adapters_merged": sys.merged,
        "decoding": cfg.decoding,
        "system_prompt": cfg.system_prompt,
        "prompts_version": cfg.prompts_version,
    });
    Ok(sha256_hex(v.to_string().as_bytes()))
}

pub fn chat(system_prompt: &str, user: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("system", system_prompt), ChatMessage::new("user", user)]
}

/// Generated and reused counts of one generation pass.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct GenStats {
    pub generated: usize,
    pub reused: usize,
    pub secs: f64,
}

/// Generate every missing (system, item) answer, appending each batch's answers as they finish.
pub fn generate_system(
    cfg: &EvalConfig,
    sys: &Systems,
    system: &SystemConfig,
    fingerprint: &str,
    items: &[EvalItem],
    cache: &mut JsonlCache<GenRecord>,
    pb: &ProgressBar,
) -> Result<GenStats> {
    let engine = &sys.engine;
    let mut todo = Vec::new();
    let mut stats = GenStats::default();
    for it in items {
        let seed = item_seed(cfg.decoding.seed, &it.key);
        let fp = item_fingerprint(fingerprint, &it.prompt, seed);
        if cache.contains(&format!("{}|{}", system.name, it.key), &fp) {
            stats.reused += 1;
            pb.inc(1);
            continue;
        }
        let ids = engine
            .encode_chat(&chat(&cfg.system_prompt, &it.prompt))
            .with_context(|| format!("encoding item {}", it.key))?;
        todo.push((it, ids, seed, fp));
    }
    // Similar lengths together: less padding per batch.
    todo.sort_by_key(|t| t.1.len());
    pb.set_message(system.name.clone());
    for chunk in todo.chunks(cfg.batch_size) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|t| t.1.clone()).collect();
        let params: Vec<SamplingParams> = chunk
            .iter()
            .map(|t| cfg.sampling_params(t.2).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?;
        let start = Instant::now();
        let out = engine.generate_batch(&prompts, &params).with_context(|| format!("generating for system `{}`", system.name))?;
        let secs = start.elapsed().as_secs_f64();
        for ((it, _, seed, fp), g) in chunk.iter().zip(out) {
            cache.put(GenRecord {
                system: system.name.clone(),
                key: it.key.clone(),
                seed: *seed,
                fingerprint: fp.clone(),
                text: g.text.trim().to_string(),
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.tokens.len(),
                finish_reason: serde_json::to_value(g.finish_reason)?.as_str().unwrap_or("").to_string(),
                secs: secs / chunk.len() as f64,
            })?;
            stats.generated += 1;
            pb.inc(1);
        }
        stats.secs += secs;
    }
    Ok(stats)
}

pub fn item_fingerprint(system_fp: &str, prompt: &str, seed: u64) -> String {
    sha256_hex(format!("{system_fp}\n{seed}\n{prompt}").as_bytes())
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

/// NLL records for `(kind, system, item key, messages, answer)` jobs not yet cached.
pub struct NllJob {
    pub kind: &'static str,
    pub system: String,
    pub key: String,
    pub messages: Vec<ChatMessage>,
    pub answer: String,
}

pub fn nll_fingerprint(system_fp: &str, job: &NllJob) -> String {
    let msgs: Vec<String> = job.messages.iter().map(|m| format!("{}:{}", m.role, m.content)).collect();
    sha256_hex(format!("{system_fp}\n{}\n{}\n{}", job.kind, msgs.join("\n"), job.answer).as_bytes())
}

pub fn run_nll(engine: &Engine, system_fp: &str, jobs: &[NllJob], cache: &mut JsonlCache<NllRecord>, pb: &ProgressBar) -> Result<usize> {
    // Jobs that share a prompt (one item's answers from several systems) share its forward pass.
    let mut groups: Vec<(&[ChatMessage], Vec<(&NllJob, String)>)> = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_per_item_and_stable() {
        assert_eq!(item_seed(1, "test/a"), item_seed(1, "test/a"));
        assert_ne!(item_seed(1, "test/a"), item_seed(1, "test/b"));
        assert_ne!(item_seed(1, "test/a"), item_seed(2, "test/a"));
    }

    #[test]
    fn sha256_known_value() {
        // FIPS 180-2 example: sha256("abc").
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
