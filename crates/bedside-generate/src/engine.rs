//! A model ready to answer: weights, tokenizer and chat template loaded from the same source.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bedside_model::{Cache, LoadOptions, Logits, Model, ModelLocation};
use bedside_tokenizer::{ChatMessage, ChatTemplate, ModelTokenizer};
use candle_core::Tensor;

use crate::sampling::SamplingParams;
use crate::sequence::Sequence;
use crate::{GenerateError, Result};

#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub load: LoadOptions,
    /// Never touch the network; read hub ids from the local cache only.
    pub offline: bool,
    /// Use this Jinja file instead of the model's own chat template.
    pub chat_template: Option<PathBuf>,
    /// PEFT LoRA adapter directories (or hub ids `org/name[@revision]` of adapter repositories)
    /// to attach after loading, each with a multiplier on its scaling (1.0 = as trained). Several
    /// adapters add up.
    pub adapters: Vec<(PathBuf, f64)>,
}

pub struct Engine {
    pub model: Model,
    pub tokenizer: ModelTokenizer,
    pub template: Option<ChatTemplate>,
    pub location: ModelLocation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model's context window is full.
    Context,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
    /// Prompt processing time (for a batch, shared by every row).
    pub prompt_secs: f64,
    pub decode_secs: f64,
}

/// Receives a row's index and a piece of its answer text, as soon as it is safe to show.
type OnRowText<'a> = &'a mut dyn FnMut(usize, &str) -> Result<()>;

impl Engine {
    /// Load from a `--model` spec: a GGUF file, an HF directory or a hub id.
    pub fn load(spec: &str, opts: &EngineOptions) -> Result<Self> {
        let loc = bedside_model::resolve(spec, opts.offline)?;
        Self::from_location(loc, opts)
    }

    pub fn from_location(location: ModelLocation, opts: &EngineOptions) -> Result<Self> {
        let mut loaded = bedside_model::load(&location, &opts.load)?;
        for (spec, weight) in &opts.adapters {
            // A local directory, or a hub id of an adapter repository (fetched or read from the cache).
            let dir = &bedside_model::resolve_adapter(spec, opts.offline)?;
            let adapter = bedside_lora::load_peft(dir, loaded.model.device())?;
            // Merged into a dense f32 base (the replaced weights are dropped at once: nothing
            // detaches an engine's adapters), attached as branches otherwise.
            let how = bedside_lora::apply(&mut loaded.model, &adapter, *weight, &mut bedside_lora::Unmerge::default())?;
            tracing::info!(adapter = %dir.display(), weight, modules = adapter.pairs().len(), ?how, "applied LoRA adapter");
        }
        let gguf = match &location {
            ModelLocation::Gguf(_) => loaded.gguf.as_ref(),
            _ => None,
        };
        let (tokenizer, template_src) = ModelTokenizer::for_model(location.path(), gguf)?;
        let template_src = match &opts.chat_template {
            Some(f) => Some(read_template(f)?),
            None => template_src,
        };
        let template = template_src
            .map(|s| ChatTemplate::new(s, tokenizer.bos_token().map(String::from), tokenizer.eos_token().map(String::from)))
            .transpose()?;
        Ok(Self { model: loaded.model, tokenizer, template, location })
    }

    fn chat_template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().ok_or_else(|| {
            GenerateError::Invalid(format!(
                "{}: the model has no chat template; pass --chat-template FILE (a Jinja template) or use a plain --prompt",
                self.location.path().display()
            ))
        })
    }

    /// Render messages with the chat template, as text (to show or compare; to tokenize a chat,
    /// use [`Engine::encode_chat`], which keeps message text from becoming special tokens).
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        Ok(self.chat_template()?.render(messages, add_generation_prompt)?)
    }

    /// Token ids of a chat prompt, with the assistant generation prompt. The template already
    /// writes BOS where the model wants it; message text is always plain text
    /// ([`ModelTokenizer::encode_chat`]).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode_chat_with(messages, true)
    }

    /// [`Engine::encode_chat`], with or without the generation prompt (a whole conversation to
    /// score or train on ends with the assistant's message instead).
    pub fn encode_chat_with(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode_chat(self.chat_template()?, messages, add_generation_prompt)?)
    }

    /// Token ids of a raw prompt (BOS added if the model expects it).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, self.tokenizer.add_bos())?)
    }

    /// Generate one answer, streaming text through `on_text` as it becomes safe to show.
    pub fn generate(&self, prompt: &[u32], params: &SamplingParams, on_text: &mut dyn FnMut(&str) -> Result<()>) -> Result<Generation> {
        let mut cb = |_: usize, s: &str| on_text(s);
        let mut out = self.run(&[prompt.to_vec()], std::slice::from_ref(params), Some(&mut cb))?;
        Ok(out.remove(0))
    }

    /// Generate answers for many prompts at once (left-padded into one batch). Each prompt has its
    /// own sampling parameters and seed, so a row's output does not depend on its neighbours
    /// beyond floating-point noise.
    pub fn generate_batch(&self, prompts: &[Vec<u32>], params: &[SamplingParams]) -> Result<Vec<Generation>> {
        if prompts.len() != params.len() {
            return Err(GenerateError::Invalid(format!("{} prompts but {} parameter sets", prompts.len(), params.len())));
        }
        self.run(prompts, params, None)
    }

    fn run(&self, prompts: &[Vec<u32>], params: &[SamplingParams], mut on_text: Option<OnRowText<'_>>) -> Result<Vec<Generation>> {
        let ctx = self.model.context_length();
        for (i, (p, sp)) in prompts.iter().zip(params).enumerate() {
            sp.validate().map_err(|e| GenerateError::Invalid(format!("prompt {i}: {e}")))?;
            if p.is_empty() {
                return Err(GenerateError::Invalid(format!("prompt {i} is empty")));
            }
            if p.len() >= ctx {
                return Err(bedside_model::ModelError::ContextOverflow { needed: p.len() + 1, limit: ctx }.into());
            }
        }
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.model.device().clone();
        let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| max_len - p.len()).collect();
        let mut flat = Vec::with_capacity(prompts.len() * max_len);
        for (p, &pad) in prompts.iter().zip(&pads) {
            flat.extend(std::iter::repeat_n(0u32, pad));
            flat.extend_from_slice(p);
        }
        let eog = self.tokenizer.eog_ids().to_vec();
        let mut rows: Vec<Sequence> = prompts.iter().zip(params).map(|(p, sp)| Sequence::new(&self.tokenizer, p, sp.clone())).collect();

        let start = Instant::now();
        let mut cache = Cache::with_padding(&self.model, pads);
        let ids = Tensor::from_vec(flat, (prompts.len(), max_len), &device)?;
        let mut logits = self.model.forward(&ids, Some(&mut cache), Logits::Last)?.to_vec2::<f32>()?;
        check_finite(&logits, 0)?;
        let prompt_secs = start.elapsed().as_secs_f64();
        let decode_start = Instant::now();
        let mut active: Vec<usize> = (0..rows.len()).collect();
        loop {
            let mut next = Vec::with_capacity(active.len());
            for (slot, &r) in active.iter().enumerate() {
                let row = &mut rows[r];
                let step = row.advance(&mut logits[slot], &eog, cache.len() + 1 > ctx)?;
                if let (Some(cb), false) = (on_text.as_deref_mut(), step.text.is_empty()) {
                    cb(r, &step.text)?;
                }
                if let (None, Some(tok)) = (row.finished(), row.last_token()) {
                    next.push((slot, tok));
                }
            }
            if next.is_empty() {
                break;
            }
            if next.len() < active.len() {
                cache.retain_rows(&next.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
                active = next.iter().map(|(s, _)| active[*s]).collect();
            }
            let toks: Vec<u32> = next.iter().map(|(_, t)| *t).collect();
            let ids = Tensor::from_vec(toks, (active.len(), 1), &device)?;
            logits = self.model.forward(&ids, Some(&mut cache), Logits::Last)?.to_vec2::<f32>()?;
            check_finite(&logits, rows.iter().map(|r| r.output().len()).max().unwrap_or(0))?;
        }
        let decode_secs = decode_start.elapsed().as_secs_f64();
        Ok(rows
            .into_iter()
            .map(|r| Generation {
                text: r.text().to_string(),
                prompt_tokens: r.prompt_len(),
                tokens: r.output().to_vec(),
                finish_reason: r.finished().unwrap_or(FinishReason::Length),
                prompt_secs,
                decode_secs,
            })
            .collect())
    }
}

/// Stop with an error instead of sampling from logits that hold NaN or infinity (weights or an
/// adapter the model cannot compute with): sampling them gives an empty or arbitrary answer
/// that looks like a real one.
pub(crate) fn check_finite(logits: &[Vec<f32>], generated: usize) -> Result<()> {
    match logits.iter().flatten().find(|x| !x.is_finite()) {
        None => Ok(()),
        Some(x) => Err(GenerateError::Invalid(format!(
            "the model computed non-finite logits ({x}) after {generated} generated tokens: its weights or adapters hold values it cannot compute with"
        ))),
    }
}

fn read_template(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| GenerateError::Invalid(format!("{}: cannot read chat template: {e}", path.display())))
}
