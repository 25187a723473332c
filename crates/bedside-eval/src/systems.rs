//! The systems under evaluation and where their answers come from.
//!
//! Every system answers through an [`AnswerSource`]: given chats and per-chat sampling settings,
//! it returns answers, and its fingerprint names everything those answers depend on besides the
//! prompt and the seed (so cached answers are reused only when nothing changed). A system is
//! either the base model with zero or more LoRA adapters ([`LocalSystems`], one model loaded
//! once, adapters swapped between systems) or an OpenAI-compatible endpoint
//! ([`crate::endpoint`], fingerprinted by URL, model name and decoding, with no teacher-forced
//! perplexity).

use std::time::Instant;

use anyhow::{Context, Result};
use bedside_generate::{Engine, EngineOptions, SamplingParams};
use bedside_model::LoadOptions;
use bedside_tokenizer::ChatMessage;

use crate::config::{EvalConfig, SystemConfig};
use crate::hash::{path_hash, sha256_hex};

/// The messages every system gets for one patient message.
pub(crate) fn chat(system_prompt: &str, user: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("system", system_prompt), ChatMessage::new("user", user)]
}

/// One generated answer.
pub(crate) struct Answered {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `eos`, `length`, `stop` or `context`.
    pub finish_reason: String,
    /// This answer's share of its batch's wall time.
    pub secs: f64,
}

/// Where one system's answers come from.
pub(crate) trait AnswerSource {
    /// Everything the answers depend on besides the prompt and the seed.
    fn fingerprint(&self) -> &str;
    /// Answer every chat (`params[i]` for `chats[i]`), calling `done(i, answer)` as each batch
    /// finishes, so a cache can keep what is done if a later batch fails. The source chooses
    /// its own batching.
    fn answer_all(
        &mut self,
        chats: &[Vec<ChatMessage>],
        params: &[SamplingParams],
        done: &mut dyn FnMut(usize, Answered) -> Result<()>,
    ) -> Result<()>;
}

/// The base model loaded once; each system's adapters are merged or attached when it is
/// selected and removed before the next.
pub struct LocalSystems {
    pub engine: Engine,
    pub model_hash: String,
    pub template_hash: String,
    current: Option<String>,
    /// Base weights replaced by merged adapters, put back before the next system.
    unmerge: bedside_lora::Unmerge,
    /// Whether the current system's adapters are merged into the weights (else attached).
    pub merged: bool,
}

impl LocalSystems {
    pub fn load(cfg: &EvalConfig) -> Result<Self> {
        let device = bedside_model::parse_device(&cfg.device)?;
        let opts = EngineOptions {
            load: LoadOptions { device, dtype: None, dequantize: cfg.dequantize, kv_cache: None },
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
            let adapter =
                bedside_lora::load_peft(dir, &device).with_context(|| format!("system `{}`: adapter {}", system.name, dir.display()))?;
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

    /// Select `system` and return the source of its answers.
    pub(crate) fn source<'a>(&'a mut self, cfg: &'a EvalConfig, system: &SystemConfig) -> Result<LocalSource<'a>> {
        self.select(system)?;
        let fingerprint = system_fingerprint(cfg, self, system)?;
        Ok(LocalSource { engine: &self.engine, batch_size: cfg.batch_size, fingerprint, system: system.name.clone() })
    }
}

/// What settings a system's answers depend on (beyond the prompt and seed).
pub fn system_fingerprint(cfg: &EvalConfig, sys: &LocalSystems, system: &SystemConfig) -> Result<String> {
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

/// A selected local system: batched generation on the loaded engine.
pub(crate) struct LocalSource<'a> {
    pub engine: &'a Engine,
    batch_size: usize,
    fingerprint: String,
    system: String,
}

impl AnswerSource for LocalSource<'_> {
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn answer_all(
        &mut self,
        chats: &[Vec<ChatMessage>],
        params: &[SamplingParams],
        done: &mut dyn FnMut(usize, Answered) -> Result<()>,
    ) -> Result<()> {
        let mut todo = Vec::with_capacity(chats.len());
        for (i, c) in chats.iter().enumerate() {
            todo.push((i, self.engine.encode_chat(c).with_context(|| format!("encoding prompt {i} for system `{}`", self.system))?));
        }
        // Similar lengths together: less padding per batch.
        todo.sort_by_key(|t| t.1.len());
        for chunk in todo.chunks(self.batch_size.max(1)) {
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|t| t.1.clone()).collect();
            let ps: Vec<SamplingParams> = chunk.iter().map(|t| params[t.0].clone()).collect();
            let start = Instant::now();
            let out = self.engine.generate_batch(&prompts, &ps).with_context(|| format!("generating for system `{}`", self.system))?;
            let secs = start.elapsed().as_secs_f64();
            for ((i, _), g) in chunk.iter().zip(out) {
                let answered = Answered {
                    text: g.text.trim().to_string(),
                    prompt_tokens: g.prompt_tokens,
                    completion_tokens: g.tokens.len(),
                    finish_reason: serde_json::to_value(g.finish_reason)?.as_str().unwrap_or("").to_string(),
                    secs: secs / chunk.len() as f64,
                };
                done(*i, answered)?;
            }
        }
        Ok(())
    }
}
