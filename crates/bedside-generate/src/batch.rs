//! Continuous batching: requests join the running decode batch as soon as their prompt has been
//! processed and leave it the step they finish, instead of waiting for a whole batch to drain.
//!
//! Each [`ContinuousBatch::step`] does at most one piece of prompt processing — new prompts
//! left-padded together, at most `prefill_budget` positions (rows × columns) per forward pass,
//! so a long prompt is processed in column chunks across several steps — and then one decode
//! step for every running row. A long prompt therefore delays the running rows by one chunk per
//! step, never by its whole length. Rows may each run a different LoRA adapter
//! ([`RowAdapters`]); the base weights are shared by all of them in one forward pass.
//!
//! A request alone, with a prompt within the budget, runs exactly the forward passes that
//! [`crate::Engine::generate`] runs, so it gets the same answer for the same seed.

use std::collections::VecDeque;

use bedside_model::{Cache, Logits, Model};
use bedside_tokenizer::ModelTokenizer;
use candle_core::Tensor;

use crate::adapters::RowAdapters;
use crate::engine::{check_finite, FinishReason};
use crate::sampling::SamplingParams;
use crate::sequence::{ChosenLogprob, Sequence};
use crate::{GenerateError, Result};

/// Positions per forward pass of prompt processing when not configured.
pub const DEFAULT_PREFILL_BUDGET: usize = 512;

/// One request to generate for.
#[derive(Debug, Clone)]
pub struct Request {
    /// Caller's id, echoed in every [`Update`].
    pub id: u64,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Index of a [`RowAdapters`] adapter, or `None` for the base model.
    pub adapter: Option<usize>,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

/// What happened to a request during a step.
#[derive(Debug)]
pub enum Update {
    /// The prompt has been processed and the first token chosen (time to first token).
    Started {
        id: u64,
        prompt_tokens: usize,
    },
    /// Text that is now safe to show, and the log-probabilities of its tokens when asked.
    Text {
        id: u64,
        text: String,
        logprobs: Vec<ChosenLogprob>,
    },
    Finished {
        id: u64,
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
}

struct Row<'t> {
    id: u64,
    seq: Sequence<'t>,
    adapter: Option<usize>,
    cancelled: bool,
}

/// New prompts left-padded into one cache, processed a chunk of columns per step.
struct Prefill<'t> {
    rows: Vec<Row<'t>>,
    /// `rows.len() × width`, row-major, left-padded with id 0.
    ids: Vec<u32>,
    width: usize,
    done: usize,
    cache: Cache,
}

pub struct ContinuousBatch<'t> {
    tokenizer: &'t ModelTokenizer,
    eog: Vec<u32>,
    /// Positions (prompt + answer) a row may use.
    context: usize,
    prefill_budget: usize,
    waiting: VecDeque<Request>,
    prefill: Option<Prefill<'t>>,
    /// The running rows, in the order of `cache`'s rows.
    decoding: Vec<Row<'t>>,
    cache: Option<Cache>,
}

impl<'t> ContinuousBatch<'t> {
    /// `context`: the most positions a row may fill (at most the model's context length).
    pub fn new(tokenizer: &'t ModelTokenizer, context: usize, prefill_budget: usize) -> Self {
        Self {
            tokenizer,
            eog: tokenizer.eog_ids().to_vec(),
            context,
            prefill_budget: prefill_budget.max(1),
            waiting: VecDeque::new(),
            prefill: None,
            decoding: Vec::new(),
            cache: None,
        }
    }

    /// Queue a request; its prompt is processed in a coming step. The prompt must leave room for
    /// at least one generated token.
    pub fn admit(&mut self, req: Request) -> Result<()> {
        req.params.validate().map_err(GenerateError::Invalid)?;
        if req.prompt.is_empty() {
            return Err(GenerateError::Invalid("the prompt is empty".into()));
        }
        if req.prompt.len() >= self.context {
            return Err(bedside_model::ModelError::ContextOverflow { needed: req.prompt.len() + 1, limit: self.context }.into());
        }
        self.waiting.push_back(req);
        Ok(())
    }

    /// Requests queued, being prefilled or decoding.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.prefill.as_ref().map_or(0, |p| p.rows.len()) + self.decoding.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows in the decode batch.
    pub fn decoding(&self) -> usize {
        self.decoding.len()
    }

    /// Ids of every request in the batch.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.waiting.iter().map(|r| r.id).collect();
        ids.extend(self.prefill.iter().flat_map(|p| p.rows.iter().filter(|r| !r.cancelled).map(|r| r.id)));
        ids.extend(self.decoding.iter().map(|r| r.id));
        ids
    }

    /// Drop a request (its client left, or its time ran out); it produces no more updates.
    pub fn cancel(&mut self, id: u64) -> Result<()> {
        self.waiting.retain(|r| r.id != id);
        if let Some(p) = &mut self.prefill {
            // Its prompt shares forward passes with the others': it is dropped when they finish.
            p.rows.iter_mut().filter(|r| r.id == id).for_each(|r| r.cancelled = true);
            if p.rows.iter().all(|r| r.cancelled) {
                self.prefill = None;
            }
        }
        if let Some(i) = self.decoding.iter().position(|r| r.id == id) {
            self.remove_decoding(&[i])?;
        }
        Ok(())
    }

    /// Drop every request (after a failed forward pass), returning their ids.
    pub fn clear(&mut self) -> Vec<u64> {
        let ids = self.ids();
        self.waiting.clear();
        self.prefill = None;
        self.decoding.clear();
        self.cache = None;
        ids
    }

    /// One step: a piece of prompt processing if any prompt waits, then one decode step of
    /// every running row. Updates are appended to `out`.
    pub fn step(&mut self, model: &mut Model, adapters: &mut RowAdapters, out: &mut Vec<Update>) -> Result<()> {
        if self.prefill.is_none() && !self.waiting.is_empty() {
            self.start_prefill(model);
        }
        if self.prefill.is_some() {
            self.prefill_chunk(model, adapters, out)?;
        }
        if !self.decoding.is_empty() {
            self.decode(model, adapters, out)?;
        }
        Ok(())
    }

    /// Take waiting prompts, oldest first, while their padded block fits the budget (always at
    /// least one: a longer prompt is then processed in column chunks).
    fn start_prefill(&mut self, model: &Model) {
        let mut reqs: Vec<Request> = Vec::new();
        let mut width = 0;
        while let Some(next) = self.waiting.front() {
            let w = width.max(next.prompt.len());
            if !reqs.is_empty() && (reqs.len() + 1) * w > self.prefill_budget {
                break;
            }
            width = w;
            reqs.extend(self.waiting.pop_front());
        }
        let pads: Vec<usize> = reqs.iter().map(|r| width - r.prompt.len()).collect();
        let mut ids = Vec::with_capacity(reqs.len() * width);
        for (r, &pad) in reqs.iter().zip(&pads) {
            ids.extend(std::iter::repeat_n(0u32, pad));
            ids.extend_from_slice(&r.prompt);
        }
        let rows = reqs
            .into_iter()
            .map(|r| Row {
                id: r.id,
                seq: Sequence::new(self.tokenizer, &r.prompt, r.params).with_logprobs(r.logprobs),
                adapter: r.adapter,
                cancelled: false,
            })
            .collect();
        self.prefill = Some(Prefill { rows, ids, width, done: 0, cache: Cache::with_padding(model, pads) });
    }

    fn prefill_chunk(&mut self, model: &mut Model, adapters: &mut RowAdapters, out: &mut Vec<Update>) -> Result<()> {
        let Some(p) = self.prefill.as_mut() else {
            return Ok(());
        };
        let b = p.rows.len();
        let cols = (self.prefill_budget / b).max(1).min(p.width - p.done);
        let chunk: Vec<u32> = p.ids.chunks(p.width).flat_map(|r| r[p.done..p.done + cols].to_vec()).collect();
        adapters.select(model, &p.rows.iter().map(|r| r.adapter).collect::<Vec<_>>())?;
        let ids = Tensor::from_vec(chunk, (b, cols), model.device())?;
        let logits = model.forward(&ids, Some(&mut p.cache), Logits::Last)?;
        p.done += cols;
        if p.done < p.width {
            return Ok(());
        }
        let Some(mut p) = self.prefill.take() else {
            return Ok(());
        };
        let mut logits = logits.to_vec2::<f32>()?;
        check_finite(&logits, 0)?;
        let mut keep = Vec::with_capacity(b);
        for (r, row) in p.rows.iter_mut().enumerate() {
            if row.cancelled {
                continue;
            }
            out.push(Update::Started { id: row.id, prompt_tokens: row.seq.prompt_len() });
            let full = row.seq.len() + 1 > self.context;
            let step = row.seq.advance(&mut logits[r], &self.eog, full)?;
            emit(out, row, step);
            if row.seq.finished().is_none() {
                keep.push(r);
            }
        }
        if keep.len() < b {
            p.cache.retain_rows(&keep)?;
        }
        let mut joined: Vec<Row> = p.rows.into_iter().enumerate().filter(|(r, _)| keep.contains(r)).map(|(_, row)| row).collect();
        if joined.is_empty() {
            return Ok(());
        }
        p.cache.trim_padding()?;
        match &mut self.cache {
            Some(c) => c.join(p.cache)?,
            None => self.cache = Some(p.cache),
        }
        self.decoding.append(&mut joined);
        Ok(())
    }

    fn decode(&mut self, model: &mut Model, adapters: &mut RowAdapters, out: &mut Vec<Update>) -> Result<()> {
        let Some(cache) = self.cache.as_mut() else {
            return Err(GenerateError::Invalid("decode rows without a cache".into()));
        };
        let toks: Vec<u32> = self.decoding.iter().map(|r| r.seq.last_token().unwrap_or(0)).collect();
        adapters.select(model, &self.decoding.iter().map(|r| r.adapter).collect::<Vec<_>>())?;
        let ids = Tensor::from_vec(toks, (self.decoding.len(), 1), model.device())?;
        let mut logits = model.forward(&ids, Some(cache), Logits::Last)?.to_vec2::<f32>()?;
        let generated = self.decoding.iter().map(|r| r.seq.output().len()).max();
        check_finite(&logits, generated.unwrap_or(0))?;
        let mut finished = Vec::new();
        for (r, row) in self.decoding.iter_mut().enumerate() {
            let full = row.seq.len() + 1 > self.context;
            let step = row.seq.advance(&mut logits[r], &self.eog, full)?;
            emit(out, row, step);
            if row.seq.finished().is_some() {
                finished.push(r);
            }
        }
        self.remove_decoding(&finished)
    }

    fn remove_decoding(&mut self, gone: &[usize]) -> Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        let keep: Vec<usize> = (0..self.decoding.len()).filter(|r| !gone.contains(r)).collect();
        let mut i = 0;
        self.decoding.retain(|_| {
            i += 1;
            !gone.contains(&(i - 1))
        });
        if keep.is_empty() {
            self.cache = None;
        } else if let Some(c) = &mut self.cache {
            c.retain_rows(&keep)?;
            c.trim_padding()?;
        }
        Ok(())
    }
}

fn emit(out: &mut Vec<Update>, row: &Row, step: crate::sequence::Advance) {
    if !step.text.is_empty() || !step.logprobs.is_empty() {
        out.push(Update::Text { id: row.id, text: step.text, logprobs: step.logprobs });
    }
    if let Some(reason) = row.seq.finished() {
        out.push(Update::Finished { id: row.id, reason, prompt_tokens: row.seq.prompt_len(), completion_tokens: row.seq.output().len() });
    }
}
