//! The thread that owns the model: it tokenizes requests, keeps the continuous batch running
//! and sends each request's events back to its HTTP handler. A handler that goes away (client
//! disconnected) or a request past its deadline is dropped from the batch before the next step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bedside_generate::{ChosenLogprob, ContinuousBatch, Engine, FinishReason, Request, RowAdapters, Update};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{Generation, Limits, ModelIds, Prompt};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What the HTTP side and the scheduler share.
pub struct Shared {
    /// Set once the model and adapters are loaded.
    pub ready: AtomicBool,
    pub loaded: OnceLock<Loaded>,
    /// Requests accepted and not yet given a row.
    pub queued: AtomicUsize,
    pub queue_limit: usize,
    pub metrics: Metrics,
    next_id: std::sync::atomic::AtomicU64,
}

/// Facts known once the model is loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub ids: ModelIds,
    pub limits: Limits,
    /// Positions one request may use.
    pub context: usize,
    /// Unix time the model was loaded (`created` in `/v1/models`).
    pub created: u64,
}

impl Shared {
    pub fn new(queue_limit: usize) -> Self {
        Self {
            ready: AtomicBool::new(false),
            loaded: OnceLock::new(),
            queued: AtomicUsize::new(0),
            queue_limit,
            metrics: Metrics::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Take a place in the queue, or `None` when it is full.
    pub fn reserve(&self) -> Option<QueueTicket<'_>> {
        let mut cur = self.queued.load(Ordering::Acquire);
        loop {
            if cur >= self.queue_limit {
                return None;
            }
            match self.queued.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.metrics.queue_depth.set((cur + 1) as i64);
                    return Some(QueueTicket { shared: self, armed: true });
                }
                Err(now) => cur = now,
            }
        }
    }

    fn release_queue_place(&self) {
        let left = self.queued.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        self.metrics.queue_depth.set(left as i64);
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A queue place; released on drop unless handed to the scheduler with the job.
pub struct QueueTicket<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl QueueTicket<'_> {
    /// The scheduler now owns the place (it releases it when the job gets a row or ends).
    pub fn hand_over(mut self) {
        self.armed = false;
    }
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release_queue_place();
        }
    }
}

/// One request on its way to the scheduler.
pub struct Job {
    pub id: u64,
    pub generation: Generation,
    pub received: Instant,
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
}

/// What a handler hears about its request.
#[derive(Debug)]
pub enum Event {
    /// Refused before generation (prompt too long for the context, template error).
    Rejected(ApiError),
    /// The prompt is processed and the first token chosen.
    Started {
        prompt_tokens: usize,
        time_to_first_token: Duration,
    },
    Text {
        text: String,
        logprobs: Vec<ChosenLogprob>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// Stopped during generation (deadline, internal error).
    Failed(ApiError),
}

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub parallel: usize,
    /// Positions per request (capped at the model's context length).
    pub context: Option<usize>,
    /// Largest `max_tokens` a request may ask for (default: the context).
    pub max_tokens: Option<usize>,
    pub max_messages: usize,
    pub prefill_chunk: usize,
    pub timeout: Duration,
}

/// A request the scheduler holds.
struct Live {
    events: UnboundedSender<Event>,
    received: Instant,
    deadline: Instant,
    first_token: Option<Instant>,
}

/// Run until every sender of `jobs` is gone. `engine` already has `adapters` attached.
pub fn run(mut engine: Engine, mut adapters: RowAdapters, jobs: Receiver<Job>, shared: Arc<Shared>, settings: Settings) {
    let model_ctx = engine.model.context_length();
    let context = settings.context.map_or(model_ctx, |c| c.min(model_ctx));
    let cap = settings.max_tokens.map_or(context, |m| m.min(context));
    let mut batch = ContinuousBatch::new(&engine.tokenizer, context, settings.prefill_chunk);
    let mut live: HashMap<u64, Live> = HashMap::new();
    let mut pending: VecDeque<Request> = VecDeque::new();
    let mut updates = Vec::new();
    loop {
        // Wait for work when idle; otherwise take whatever arrived and keep stepping.
        let idle = batch.is_empty() && pending.is_empty();
        let first = if idle {
            match jobs.recv_timeout(Duration::from_secs(1)) {
                Ok(j) => Some(j),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            None
        };
        for job in first.into_iter().chain(std::iter::from_fn(|| jobs.try_recv().ok())) {
            match prepare(&engine, &job, context, cap) {
                Ok(req) => {
                    live.insert(job.id, Live { events: job.events, received: job.received, deadline: job.deadline, first_token: None });
                    pending.push_back(req);
                }
                Err(e) => {
                    shared.release_queue_place();
                    let _ = job.events.send(Event::Rejected(e));
                }
            }
        }

        // Clients that left and requests out of time.
        let now = Instant::now();
        let mut dropped = Vec::new();
        for (&id, l) in &live {
            if l.events.is_closed() {
                dropped.push((id, None));
            } else if now >= l.deadline {
                dropped.push((id, Some(ApiError::timeout(settings.timeout.as_secs()))));
            }
        }
        for (id, why) in dropped {
            if let Some(l) = live.remove(&id) {
                if let Some(e) = why {
                    let _ = l.events.send(Event::Failed(e));
                }
            }
            if let Some(i) = pending.iter().position(|r| r.id == id) {
                pending.remove(i);
                shared.release_queue_place();
            } else if let Err(e) = batch.cancel(id) {
                fail_all(&mut batch, &mut live, &shared, &e);
            }
        }

        while batch.len() < settings.parallel {
            let Some(req) = pending.pop_front() else {
                break;
            };
            shared.release_queue_place();
            let id = req.id;
            if let Err(e) = batch.admit(req) {
                if let Some(l) = live.remove(&id) {
                    let _ = l.events.send(Event::Rejected(ApiError::invalid(None, e.to_string())));
                }
            }
        }
        shared.metrics.active.set(batch.len() as i64);
        if batch.is_empty() {
            continue;
        }

        updates.clear();
        if let Err(e) = batch.step(&mut engine.model, &mut adapters, &mut updates) {
            fail_all(&mut batch, &mut live, &shared, &e);
            continue;
        }
        for u in updates.drain(..) {
            dispatch(u, &mut live, &shared);
        }
        shared.metrics.active.set(batch.len() as i64);
    }
}

/// Tokenize a job's prompt and check it against the context; without a `max_tokens` the answer
/// may fill the context, up to the server's cap.
fn prepare(engine: &Engine, job: &Job, context: usize, cap: usize) -> Result<Request, ApiError> {
    let g = &job.generation;
    let ids = match &g.prompt {
        Prompt::Chat(m) => engine.encode_chat(m).map_err(|e| {
            ApiError::invalid(Some("messages"), format!("The messages cannot be rendered with the model's chat template: {e}"))
        })?,
        Prompt::Text(t) => {
            engine.encode_prompt(t).map_err(|e| ApiError::invalid(Some("prompt"), format!("The prompt cannot be tokenized: {e}")))?
        }
    };
    let param = if matches!(g.prompt, Prompt::Chat(_)) { "messages" } else { "prompt" };
    if ids.is_empty() {
        return Err(ApiError::invalid(Some(param), "The prompt is empty."));
    }
    if ids.len() >= context {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "This model's maximum context length is {context} tokens, and the prompt alone is {} tokens. Shorten the messages.",
                ids.len()
            ),
        ));
    }
    let mut params = g.params.clone();
    if params.max_tokens == 0 {
        params.max_tokens = (context - ids.len()).min(cap);
    } else if ids.len() + params.max_tokens > context {
        return Err(ApiError::invalid(
            Some("max_tokens"),
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the prompt, {} in the completion). Reduce the prompt or max_tokens.",
                ids.len() + params.max_tokens,
                ids.len(),
                params.max_tokens
            ),
        ));
    }
    Ok(Request { id: job.id, prompt: ids, params, adapter: g.adapter, logprobs: g.logprobs })
}

fn dispatch(u: Update, live: &mut HashMap<u64, Live>, shared: &Shared) {
    let m = &shared.metrics;
    match u {
        Update::Started { id, prompt_tokens } => {
            let Some(l) = live.get_mut(&id) else { return };
            let now = Instant::now();
            l.first_token = Some(now);
            let ttft = now - l.received;
            m.time_to_first_token.observe(ttft.as_secs_f64());
            m.prompt_tokens.inc_by(prompt_tokens as u64);
            let _ = l.events.send(Event::Started { prompt_tokens, time_to_first_token: ttft });
        }
        Update::Text { id, text, logprobs } => {
            if let Some(l) = live.get(&id) {
                let _ = l.events.send(Event::Text { text, logprobs });
            }
        }
        Update::Finished { id, reason, prompt_tokens, completion_tokens } => {
            let Some(l) = live.remove(&id) else { return };
            m.completion_tokens.inc_by(completion_tokens as u64);
            if let (Some(first), true) = (l.first_token, completion_tokens > 1) {
                m.time_per_output_token.observe(first.elapsed().as_secs_f64() / (completion_tokens - 1) as f64);
            }
            let _ = l.events.send(Event::Finished { reason, prompt_tokens, completion_tokens });
        }
    }
}

/// A forward pass failed: every request in the batch fails with 500 (the error names no text).
fn fail_all(batch: &mut ContinuousBatch, live: &mut HashMap<u64, Live>, shared: &Shared, e: &bedside_generate::GenerateError) {
    tracing::error!(error = %e, "generation failed; failing the requests in the batch");
    for id in batch.clear() {
        if let Some(l) = live.remove(&id) {
            let _ = l.events.send(Event::Failed(ApiError::internal("Generation failed inside the server; the request can be retried.")));
        }
    }
    shared.metrics.active.set(0);
}

/// Whether the model and adapters are loaded.
pub fn model_ready(shared: &Shared) -> bool {
    shared.ready.load(Ordering::Acquire)
}
