//! Continuous batching: requests joining and leaving a running batch, each with its own adapter,
//! answer as they would alone.

use std::collections::HashMap;

use bedside_generate::{ContinuousBatch, Engine, EngineOptions, FinishReason, Request, RowAdapters, SamplingParams, Update};
use bedside_tokenizer::ChatMessage;

fn tiny(adapters: &[&str]) -> Option<Engine> {
    let dir = bedside_testutil::fixture("tiny-llama")?;
    let opts = EngineOptions { adapters: adapters.iter().map(|a| (dir.join(a), 1.0)).collect(), ..Default::default() };
    Some(Engine::load(dir.to_str().unwrap(), &opts).unwrap())
}

fn params(seed: u64, temperature: f64, max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature, seed, max_tokens, top_k: 20, ..Default::default() }
}

fn prompt(engine: &Engine, text: &str) -> Vec<u32> {
    engine.encode_chat(&[ChatMessage::new("user", text)]).unwrap()
}

/// What a request produced through the batch.
#[derive(Debug, Default, Clone, PartialEq)]
struct Answer {
    text: String,
    finish: Option<FinishReason>,
    tokens: usize,
    started: bool,
}

/// Run `reqs` through a continuous batch, admitting request `i` at step `arrive[i]`.
fn run_batch(engine: &mut Engine, adapters: &mut RowAdapters, reqs: &[Request], arrive: &[usize], budget: usize) -> HashMap<u64, Answer> {
    let ctx = engine.model.context_length();
    let mut batch = ContinuousBatch::new(&engine.tokenizer, ctx, budget);
    let mut out: HashMap<u64, Answer> = HashMap::new();
    let mut updates = Vec::new();
    for step in 0..10_000 {
        for (r, &t) in reqs.iter().zip(arrive) {
            if t == step {
                batch.admit(r.clone()).unwrap();
            }
        }
        if batch.is_empty() && arrive.iter().all(|&t| t < step) {
            break;
        }
        updates.clear();
        batch.step(&mut engine.model, adapters, &mut updates).unwrap();
        for u in updates.drain(..) {
            match u {
                Update::Started { id, .. } => out.entry(id).or_default().started = true,
                Update::Text { id, text, .. } => out.entry(id).or_default().text.push_str(&text),
                Update::Finished { id, reason, completion_tokens, .. } => {
                    let a = out.entry(id).or_default();
                    a.finish = Some(reason);
                    a.tokens = completion_tokens;
                }
            }
        }
    }
    out
}

/// A request alone runs the same forward passes as `Engine::generate`: same tokens, same text.
#[test]
fn a_lone_request_answers_as_generate_does() {
    let Some(mut engine) = tiny(&[]) else { return };
    let p = prompt(&engine, "I have a headache and feel sick.");
    for (seed, t) in [(1, 0.0), (7, 0.9)] {
        let sp = params(seed, t, 24);
        let want = engine.generate(&p, &sp, &mut |_| Ok(())).unwrap();
        let req = Request { id: 1, prompt: p.clone(), params: sp, adapter: None, logprobs: None };
        let got = run_batch(&mut engine, &mut RowAdapters::none(), &[req], &[0], 512);
        let a = &got[&1];
        assert!(a.started);
        assert_eq!((a.text.as_str(), a.finish, a.tokens), (want.text.as_str(), Some(want.finish_reason), want.tokens.len()), "seed {seed}");
    }
}

/// Requests arriving at different steps, some with prompts longer than the prefill budget
/// (processed in chunks between decode steps), each get the answer they get alone; a request
/// for an adapter gets that adapter's answer while sharing the batch with base-model rows.
#[test]
fn staggered_requests_with_mixed_adapters_answer_as_alone() {
    let Some(dir) = bedside_testutil::fixture("tiny-llama") else {
        return;
    };
    let Some(mut engine) = tiny(&[]) else { return };
    let adapters: Vec<(String, bedside_lora::Adapter, f64)> = ["lora", "rslora"]
        .iter()
        .map(|n| (n.to_string(), bedside_lora::load_peft(&dir.join(n), engine.model.device()).unwrap(), 1.0))
        .collect();
    let mut row_adapters = RowAdapters::attach(&mut engine.model, adapters).unwrap();
    let texts = [
        "My chest hurts when I breathe in.",
        "Is it safe to take ibuprofen with a cold?",
        "I can't sleep since the surgery and I'm scared it won't heal properly",
        "ok",
    ];
    let mut reqs = Vec::new();
    for i in 0..8u64 {
        let p = prompt(&engine, texts[i as usize % texts.len()]);
        let adapter = match i % 3 {
            0 => None,
            1 => Some(0),
            _ => Some(1),
        };
        reqs.push(Request {
            id: i,
            prompt: p,
            params: params(100 + i, if i % 2 == 0 { 0.0 } else { 0.8 }, 10 + 3 * i as usize),
            adapter,
            logprobs: None,
        });
    }
    // Each alone (with a budget that processes every prompt in one pass).
    let mut alone = HashMap::new();
    for r in &reqs {
        let got = run_batch(&mut engine, &mut row_adapters, std::slice::from_ref(r), &[0], 4096);
        alone.insert(r.id, got[&r.id].clone());
    }
    // Adapters change answers (else the mixing below would prove nothing).
    let base_of = |i: usize| Request { adapter: None, ..reqs[i].clone() };
    let b1 = run_batch(&mut engine, &mut row_adapters, &[base_of(1)], &[0], 4096);
    assert_ne!(b1[&1].text, alone[&1].text, "the lora adapter does not change the answer");
    // Together: staggered arrivals and a budget of 16 positions, so prompts (~20 tokens) take
    // several chunks and are processed while earlier requests decode.
    let arrive = [0, 0, 1, 3, 4, 4, 9, 15];
    let together = run_batch(&mut engine, &mut row_adapters, &reqs, &arrive, 16);
    for r in &reqs {
        assert_eq!(together[&r.id], alone[&r.id], "request {} (adapter {:?})", r.id, r.adapter);
    }
}

/// A cancelled request stops producing updates; the others go on.
#[test]
fn cancelled_requests_leave_the_batch() {
    let Some(mut engine) = tiny(&[]) else { return };
    let p = prompt(&engine, "Hello there, I need advice.");
    let ctx = engine.model.context_length();
    let mut adapters = RowAdapters::none();
    let mut batch = ContinuousBatch::new(&engine.tokenizer, ctx, 512);
    for id in 0..3 {
        batch
            .admit(Request {
                id,
                prompt: p.clone(),
                params: SamplingParams { max_tokens: 50, ..params(id, 0.0, 50) },
                adapter: None,
                logprobs: None,
            })
            .unwrap();
    }
    let mut updates = Vec::new();
    batch.step(&mut engine.model, &mut adapters, &mut updates).unwrap();
    assert_eq!(batch.decoding(), 3);
    batch.cancel(1).unwrap();
    assert_eq!(batch.ids(), vec![0, 2]);
    updates.clear();
    for _ in 0..3 {
        batch.step(&mut engine.model, &mut adapters, &mut updates).unwrap();
    }
    assert!(updates.iter().all(|u| !matches!(u, Update::Text { id: 1, .. } | Update::Finished { id: 1, .. })));
    assert!(updates.iter().any(|u| matches!(u, Update::Text { id: 2, .. })));
    // A prompt that does not fit the context is refused at admission.
    let long = vec![5u32; ctx];
    assert!(batch.admit(Request { id: 9, prompt: long, params: params(0, 0.0, 1), adapter: None, logprobs: None }).is_err());
}

/// Log-probabilities, when asked, come with the text of their tokens and sum as probabilities.
#[test]
fn logprobs_describe_the_chosen_tokens() {
    let Some(mut engine) = tiny(&[]) else { return };
    let p = prompt(&engine, "Tell me about fevers.");
    let ctx = engine.model.context_length();
    let mut batch = ContinuousBatch::new(&engine.tokenizer, ctx, 512);
    batch.admit(Request { id: 0, prompt: p, params: params(3, 0.0, 6), adapter: None, logprobs: Some(3) }).unwrap();
    let mut updates = Vec::new();
    while !batch.is_empty() {
        batch.step(&mut engine.model, &mut RowAdapters::none(), &mut updates).unwrap();
    }
    let mut n = 0;
    for u in &updates {
        if let Update::Text { logprobs, .. } = u {
            for lp in logprobs {
                n += 1;
                assert_eq!(lp.top.len(), 3);
                // Greedy: the chosen token is the most likely one.
                assert_eq!(lp.top[0].token, lp.chosen.token);
                assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
                let mass: f32 = lp.top.iter().map(|t| t.logprob.exp()).sum();
                assert!(lp.chosen.logprob <= 0.0 && mass <= 1.0001, "{lp:?}");
            }
        }
    }
    let finished = updates.iter().find_map(|u| {
        if let Update::Finished { completion_tokens, reason, .. } = u {
            Some((*completion_tokens, *reason))
        } else {
            None
        }
    });
    let (tokens, reason) = finished.unwrap();
    assert_eq!(n, tokens, "one logprob entry per generated token ({reason:?})");
}
