//! A system that is an OpenAI-compatible endpoint (`bedside serve`, llama-server running an
//! exported GGUF LoRA, vLLM running the PEFT adapter): its answers come over HTTP from the
//! configured URL only, with the same prompts, decoding settings and per-item seeds as local
//! systems, and are cached and scored like theirs. What weights answer is the server's business:
//! the fingerprint records the endpoint, the model id and the settings, not the weights.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bedside_generate::SamplingParams;
use bedside_tokenizer::ChatMessage;
use serde_json::{json, Value};

use crate::config::{EvalConfig, SystemConfig};
use crate::hash::sha256_hex;
use crate::systems::{AnswerSource, Answered};

/// How often a refused (429/503) or failed connection is retried before the run stops.
const ATTEMPTS: u32 = 6;

/// An OpenAI-compatible chat completions endpoint.
pub struct Endpoint {
    /// The base URL, e.g. `http://127.0.0.1:8080/v1`, without a trailing slash.
    base: String,
    model: String,
    key: Option<String>,
    agent: ureq::Agent,
}

/// One answer from the endpoint.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: String,
}

impl Endpoint {
    pub fn new(system: &SystemConfig) -> Result<Self> {
        let (Some(url), Some(model)) = (&system.endpoint, &system.model) else {
            bail!("system `{}` is not an endpoint system (needs `endpoint` and `model`)", system.name);
        };
        let key = match &system.api_key_env {
            Some(var) => {
                Some(std::env::var(var).with_context(|| format!("system `{}`: the API key variable {var} is not set", system.name))?)
            }
            None => None,
        };
        // No proxy from the environment: requests go to the configured address and nowhere else.
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).timeout_read(Duration::from_secs(900)).build();
        Ok(Self { base: url.trim_end_matches('/').to_string(), model: model.clone(), key, agent })
    }

    /// The request body for `messages` with `params` (OpenAI's fields, plus llama.cpp's and
    /// vLLM's names for the settings OpenAI lacks, sent only when they are not neutral).
    pub fn body(&self, messages: &[ChatMessage], p: &SamplingParams) -> Value {
        let msgs: Vec<Value> = messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
        let mut b = json!({
            "model": self.model,
            "messages": msgs,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            // OpenAI's seed is a signed 64-bit integer; bedside reads the bits back unchanged.
            "seed": p.seed as i64,
        });
        if p.top_k > 0 {
            b["top_k"] = json!(p.top_k);
        }
        if p.min_p > 0.0 {
            b["min_p"] = json!(p.min_p);
        }
        if p.repeat_penalty != 1.0 {
            b["repeat_penalty"] = json!(p.repeat_penalty);
            b["repeat_last_n"] = json!(p.repeat_last_n);
        }
        if !p.stop.is_empty() {
            b["stop"] = json!(p.stop);
        }
        b
    }

    /// Ask for one answer, retrying when the server is busy or unreachable.
    pub fn chat(&self, messages: &[ChatMessage], p: &SamplingParams) -> Result<Reply> {
        let url = format!("{}/chat/completions", self.base);
        let body = self.body(messages, p);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << attempt.min(4)));
            }
            let mut req = self.agent.post(&url);
            if let Some(k) = &self.key {
                req = req.set("Authorization", &format!("Bearer {k}"));
            }
            match req.send_json(body.clone()) {
                Ok(r) => return parse_reply(r.into_json().context("the endpoint's answer is not JSON")?),
                Err(ureq::Error::Status(code @ (429 | 503), r)) => {
                    let wait: u64 = r.header("retry-after").and_then(|s| s.parse().ok()).unwrap_or(1);
                    std::thread::sleep(Duration::from_secs(wait.min(30)));
                    last = format!("HTTP {code}");
                }
                Err(ureq::Error::Status(code, r)) => {
                    let msg =
                        r.into_json::<Value>().ok().and_then(|v| v["error"]["message"].as_str().map(String::from)).unwrap_or_default();
                    bail!("{url}: HTTP {code}: {msg}");
                }
                Err(ureq::Error::Transport(t)) => last = t.to_string(),
            }
        }
        bail!("{url}: no answer after {ATTEMPTS} attempts ({last})")
    }
}

fn parse_reply(v: Value) -> Result<Reply> {
    let choice = &v["choices"][0];
    let text = choice["message"]["content"].as_str().context("the endpoint's answer has no choices[0].message.content")?;
    let n = |k: &str| v["usage"][k].as_u64().unwrap_or(0) as usize;
    Ok(Reply {
        text: text.to_string(),
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
        finish_reason: choice["finish_reason"].as_str().unwrap_or("").to_string(),
    })
}

/// What an endpoint system's answers depend on that the run can see.
pub fn system_fingerprint(cfg: &EvalConfig, system: &SystemConfig) -> String {
    let v = json!({
        "endpoint": system.endpoint,
        "model": system.model,
        "decoding": cfg.decoding,
        "system_prompt": cfg.system_prompt,
        "prompts_version": cfg.prompts_version,
    });
    sha256_hex(v.to_string().as_bytes())
}

/// An endpoint system's answers: `concurrency` requests at a time (default 4), each handed to
/// the run as it arrives so the cache keeps what is done if a later request fails.
pub(crate) struct EndpointSource {
    endpoint: Endpoint,
    fingerprint: String,
    system: String,
    concurrency: usize,
}

impl EndpointSource {
    pub(crate) fn new(cfg: &EvalConfig, system: &SystemConfig) -> Result<Self> {
        Ok(Self {
            endpoint: Endpoint::new(system)?,
            fingerprint: system_fingerprint(cfg, system),
            system: system.name.clone(),
            concurrency: system.concurrency.unwrap_or(4).max(1),
        })
    }
}

impl AnswerSource for EndpointSource {
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn answer_all(
        &mut self,
        chats: &[Vec<ChatMessage>],
        params: &[SamplingParams],
        done: &mut dyn FnMut(usize, Answered) -> Result<()>,
    ) -> Result<()> {
        let next = Mutex::new(0usize);
        let endpoint = &self.endpoint;
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<(Reply, f64)>)>();
        std::thread::scope(|scope| -> Result<()> {
            for _ in 0..self.concurrency.min(chats.len().max(1)) {
                let (tx, next) = (tx.clone(), &next);
                scope.spawn(move || loop {
                    let i = {
                        let Ok(mut n) = next.lock() else { return };
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let (Some(chat), Some(p)) = (chats.get(i), params.get(i)) else {
                        return;
                    };
                    let t = Instant::now();
                    let r = endpoint.chat(chat, p).map(|r| (r, t.elapsed().as_secs_f64()));
                    let failed = r.is_err();
                    if tx.send((i, r)).is_err() || failed {
                        return;
                    }
                });
            }
            drop(tx);
            for (i, r) in rx {
                let stop = |next: &Mutex<usize>| {
                    // Stop the other workers taking new chats.
                    if let Ok(mut n) = next.lock() {
                        *n = chats.len();
                    }
                };
                let (reply, secs) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        stop(&next);
                        return Err(e.context(format!("system `{}`: prompt {i}", self.system)));
                    }
                };
                let answered = Answered {
                    text: reply.text.trim().to_string(),
                    prompt_tokens: reply.prompt_tokens,
                    completion_tokens: reply.completion_tokens,
                    finish_reason: reply.finish_reason,
                    secs,
                };
                if let Err(e) = done(i, answered) {
                    stop(&next);
                    return Err(e);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_every_setting_and_the_seed_bits() {
        let sys = SystemConfig {
            name: "served".into(),
            endpoint: Some("http://127.0.0.1:9/v1/".into()),
            model: Some("tuned".into()),
            ..SystemConfig::local("x")
        };
        let e = Endpoint::new(&sys).unwrap();
        assert_eq!(e.base, "http://127.0.0.1:9/v1");
        let p = SamplingParams {
            temperature: 0.7,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.1,
            seed: u64::MAX - 3,
            max_tokens: 9,
            ..Default::default()
        };
        let b = e.body(&[ChatMessage::new("user", "hi")], &p);
        assert_eq!(b["model"], "tuned");
        assert_eq!(b["seed"].as_i64().map(|s| s as u64), Some(u64::MAX - 3));
        assert_eq!((b["top_k"].as_u64(), b["max_tokens"].as_u64()), (Some(40), Some(9)));
        assert!((b["repeat_penalty"].as_f64().unwrap() - 1.1).abs() < 1e-6);
        let plain = e.body(&[], &SamplingParams::default());
        assert!(plain.get("top_k").is_none() && plain.get("repeat_penalty").is_none() && plain.get("min_p").is_none());
    }

    #[test]
    fn a_missing_key_variable_is_named() {
        let sys = SystemConfig {
            endpoint: Some("http://127.0.0.1:9/v1".into()),
            model: Some("m".into()),
            api_key_env: Some("BEDSIDE_TEST_SURELY_UNSET_KEY".into()),
            ..SystemConfig::local("served")
        };
        let e = Endpoint::new(&sys).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("BEDSIDE_TEST_SURELY_UNSET_KEY"), "{e}");
    }
}
