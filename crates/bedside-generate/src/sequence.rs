//! One answer being generated: its sampler, what it has shown so far and why it stopped. The
//! static batches of [`crate::Engine`] and the continuous batches of [`crate::batch`] both step
//! their rows through this, so a row decodes the same way whichever runs it.

use bedside_tokenizer::{ModelTokenizer, TokenStream};

use crate::engine::FinishReason;
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::Result;

/// A token's log-probability under the model (the raw logits, before any sampling setting).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub token: u32,
    /// The token decoded alone (a piece of a multi-byte character shows as U+FFFD).
    pub text: String,
    pub logprob: f32,
}

/// The chosen token's log-probability and, when asked, the most likely alternatives.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChosenLogprob {
    pub chosen: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

/// What one step of a sequence produced.
#[derive(Debug, Default)]
pub struct Advance {
    /// Text that became safe to show (empty while a character is split or a stop string may
    /// be forming).
    pub text: String,
    /// Log-probabilities of the tokens generated since the last non-empty `text` (when asked).
    pub logprobs: Vec<ChosenLogprob>,
}

pub struct Sequence<'t> {
    tokenizer: &'t ModelTokenizer,
    sampler: Sampler,
    /// Prompt and output, for the repeat penalty.
    history: Vec<u32>,
    prompt_len: usize,
    stream: TokenStream<'t>,
    stop: StopMatcher,
    done: Option<FinishReason>,
    /// `Some(n)`: report each token's log-probability and its `n` most likely alternatives.
    logprobs: Option<usize>,
    pending_logprobs: Vec<ChosenLogprob>,
}

impl<'t> Sequence<'t> {
    pub fn new(tokenizer: &'t ModelTokenizer, prompt: &[u32], params: SamplingParams) -> Self {
        Self {
            tokenizer,
            stop: StopMatcher::new(&params.stop),
            sampler: Sampler::new(params),
            history: prompt.to_vec(),
            prompt_len: prompt.len(),
            stream: TokenStream::new(tokenizer),
            done: None,
            logprobs: None,
            pending_logprobs: Vec::new(),
        }
    }

    /// Also report log-probabilities, with the `top` most likely alternatives per token.
    pub fn with_logprobs(mut self, top: Option<usize>) -> Self {
        self.logprobs = top;
        self
    }

    pub fn params(&self) -> &SamplingParams {
        self.sampler.params()
    }

    /// Prompt and generated tokens so far.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// The generated tokens.
    pub fn output(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    /// The last token, which the next forward pass consumes.
    pub fn last_token(&self) -> Option<u32> {
        self.history.last().copied()
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.done
    }

    /// The whole answer so far, without any stop string.
    pub fn text(&self) -> &str {
        self.stop.text()
    }

    /// Pick the next token from this row's `logits` (modified in place by the sampler) and
    /// decide whether the sequence ends: an end-of-generation id in `eog`, a stop string,
    /// `max_tokens`, or `context_full` (no position left for the token just chosen).
    pub fn advance(&mut self, logits: &mut [f32], eog: &[u32], context_full: bool) -> Result<Advance> {
        let mut out = Advance::default();
        if self.done.is_some() {
            return Ok(out);
        }
        let stats = self.logprobs.map(|top| LogSoftmax::new(logits, top));
        let tok = self.sampler.sample(logits, &self.history);
        if eog.contains(&tok) {
            self.done = Some(FinishReason::Eos);
        } else {
            if let Some(s) = stats {
                self.pending_logprobs.push(s.describe(tok, self.tokenizer)?);
            }
            self.history.push(tok);
            if let Some(piece) = self.stream.push(tok)? {
                out.text = self.stop.push(&piece);
            }
            if self.stop.stopped() {
                self.done = Some(FinishReason::Stop);
            } else if self.output().len() >= self.sampler.params().max_tokens {
                self.done = Some(FinishReason::Length);
            } else if context_full {
                self.done = Some(FinishReason::Context);
            }
        }
        if self.done.is_some() {
            if let Some(rest) = self.stream.finish()? {
                out.text.push_str(&self.stop.push(&rest));
            }
            out.text.push_str(&self.stop.finish());
        }
        if !out.text.is_empty() || self.done.is_some() {
            out.logprobs = std::mem::take(&mut self.pending_logprobs);
        }
        Ok(out)
    }
}

/// `log_softmax` of one row of logits, kept as its maximum and log-sum-exp.
struct LogSoftmax {
    lse: f32,
    top: Vec<(u32, f32)>,
    logits_at: Vec<f32>,
}

impl LogSoftmax {
    fn new(logits: &[f32], top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
        let lse = max + sum.ln() as f32;
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let order = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        let top = top.min(idx.len());
        if top > 0 && top < idx.len() {
            idx.select_nth_unstable_by(top - 1, order);
        }
        idx.truncate(top);
        idx.sort_by(order);
        let top = idx.iter().map(|&i| (i, logits[i as usize] - lse)).collect();
        // The sampler rewrites `logits` (repeat penalty), so keep the raw values we report.
        Self { lse, top, logits_at: logits.to_vec() }
    }

    fn describe(&self, chosen: u32, tok: &ModelTokenizer) -> Result<ChosenLogprob> {
        let entry =
            |id: u32, lp: f32| -> Result<TokenLogprob> { Ok(TokenLogprob { token: id, text: tok.decode(&[id], false)?, logprob: lp }) };
        let lp = self.logits_at.get(chosen as usize).map_or(f32::NEG_INFINITY, |x| x - self.lse);
        Ok(ChosenLogprob { chosen: entry(chosen, lp)?, top: self.top.iter().map(|&(i, lp)| entry(i, lp)).collect::<Result<_>>()? })
    }
}
