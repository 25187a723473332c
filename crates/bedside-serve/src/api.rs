//! The OpenAI request bodies bedside accepts, checked field by field into a [`Generation`]
//! request, and the response bodies it sends.

use bedside_generate::{ChosenLogprob, FinishReason, SamplingParams};
use bedside_tokenizer::ChatMessage;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// The model ids a request may name: the base model, then the adapters.
#[derive(Debug, Clone)]
pub struct ModelIds {
    pub base: String,
    pub adapters: Vec<String>,
}

impl ModelIds {
    /// `Ok(None)` for the base model, `Ok(Some(i))` for adapter `i`.
    pub fn resolve(&self, id: &str) -> Result<Option<usize>, ApiError> {
        if id == self.base {
            return Ok(None);
        }
        self.adapters.iter().position(|a| a == id).map(Some).ok_or_else(|| ApiError::model_not_found(id))
    }
}

/// Server limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: usize,
    pub max_tokens: usize,
}

#[derive(Debug, Clone)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
}

/// A checked request, ready for the scheduler.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The id as the client sent it (echoed in responses).
    pub model: String,
    pub adapter: Option<usize>,
    pub prompt: Prompt,
    /// `max_tokens` is the client's, or 0 when it gave none (the context decides).
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Fields both endpoints share.
#[derive(Deserialize)]
struct Common {
    model: String,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<i64>,
    stop: Option<OneOrMany>,
    seed: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    // Sampling settings llama.cpp and vLLM accept beyond OpenAI's.
    top_k: Option<i64>,
    min_p: Option<f64>,
    repeat_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
    repeat_last_n: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
    tool_calls: Option<Value>,
}

/// The chat fields beyond [`Common`] (read from the same object: `serde(flatten)` would lose
/// the field paths in error messages).
#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<InMessage>,
    max_completion_tokens: Option<i64>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Option<Value>,
    logprobs: Option<i64>,
    echo: Option<bool>,
    suffix: Option<Value>,
    best_of: Option<i64>,
}

/// The body as a JSON object.
fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::invalid(None, "The request body is not valid UTF-8."));
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(None, format!("The request body is not valid JSON ({e}).")))?;
    if !v.is_object() {
        return Err(ApiError::invalid(None, "The request body must be a JSON object."));
    }
    Ok(v)
}

/// Read fields of `v`; errors name the field (`messages[2].content: invalid type ...`).
fn fields<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(None, format!("The request body does not have the expected shape: {inner}."))
        } else {
            ApiError::invalid(Some(&path), format!("{path}: {inner}"))
        }
    })
}

fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::invalid(Some(param), format!("{param}: {what} is not supported by this server."))
}

fn range_f64(param: &str, v: Option<f64>, default: f64, ok: impl Fn(f64) -> bool, want: &str) -> Result<f64, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && ok(x) => Ok(x),
        Some(x) => Err(ApiError::invalid(Some(param), format!("{param} must be {want}, got {x}."))),
    }
}

fn count(param: &str, v: Option<i64>, lo: i64, hi: i64) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if (lo..=hi).contains(&x) => Ok(Some(x as usize)),
        Some(x) => Err(ApiError::invalid(Some(param), format!("{param} must be between {lo} and {hi}, got {x}."))),
    }
}

impl Common {
    fn into_generation(
        self,
        ids: &ModelIds,
        limits: &Limits,
        max_tokens: Option<i64>,
        prompt: Prompt,
        logprobs: Option<usize>,
    ) -> Result<Generation, ApiError> {
        let adapter = ids.resolve(&self.model)?;
        if !matches!(self.n, None | Some(1)) {
            return Err(unsupported("n", "more than one choice per request"));
        }
        for (param, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if matches!(v, Some(x) if x != 0.0) {
                return Err(unsupported(param, "a non-zero value (use repeat_penalty)"));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(unsupported("logit_bias", "biasing tokens"));
        }
        let max_tokens = match max_tokens {
            None => 0,
            Some(m) if m >= 1 && m as u64 <= limits.max_tokens as u64 => m as usize,
            Some(m) => {
                return Err(ApiError::invalid(
                    Some("max_tokens"),
                    format!("max_tokens must be between 1 and {} on this server, got {m}.", limits.max_tokens),
                ));
            }
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) if v.len() <= 4 => v,
            Some(OneOrMany::Many(v)) => {
                return Err(ApiError::invalid(Some("stop"), format!("stop takes at most 4 sequences, got {}.", v.len())))
            }
        };
        if stop.iter().any(|s| s.len() > 1024) {
            return Err(ApiError::invalid(Some("stop"), "a stop sequence is longer than 1024 bytes."));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(Some("stream_options"), "stream_options is only allowed when stream is true."));
        }
        if self.repeat_penalty.is_some() && self.repetition_penalty.is_some() {
            return Err(ApiError::invalid(Some("repeat_penalty"), "give repeat_penalty or repetition_penalty, not both."));
        }
        let params = SamplingParams {
            // OpenAI's defaults: temperature 1, top_p 1, nothing else.
            temperature: range_f64("temperature", self.temperature, 1.0, |t| (0.0..=2.0).contains(&t), "between 0 and 2")?,
            top_p: range_f64("top_p", self.top_p, 1.0, |p| p > 0.0 && p <= 1.0, "in (0, 1]")?,
            top_k: count("top_k", self.top_k, 0, 1 << 20)?.unwrap_or(0),
            min_p: range_f64("min_p", self.min_p, 0.0, |p| (0.0..=1.0).contains(&p), "between 0 and 1")?,
            repeat_penalty: range_f64(
                "repeat_penalty",
                self.repeat_penalty.or(self.repetition_penalty),
                1.0,
                |r| r > 0.0 && r <= 10.0,
                "in (0, 10]",
            )? as f32,
            repeat_last_n: count("repeat_last_n", self.repeat_last_n, 0, 1 << 20)?.unwrap_or(64),
            seed: self.seed.map(|s| s as u64).unwrap_or_else(rand::random),
            max_tokens,
            stop,
        };
        Ok(Generation {
            model: self.model,
            adapter,
            prompt,
            params,
            stream,
            include_usage: stream && self.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            logprobs,
        })
    }
}

/// Check a `POST /v1/chat/completions` body.
pub fn parse_chat(body: &[u8], ids: &ModelIds, limits: &Limits) -> Result<Generation, ApiError> {
    let v = parse_body(body)?;
    let common: Common = fields(&v)?;
    let b: ChatBody = fields(&v)?;
    for (param, v) in
        [("tools", &b.tools), ("tool_choice", &b.tool_choice), ("functions", &b.functions), ("function_call", &b.function_call)]
    {
        if v.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(param, "tool and function calling"));
        }
    }
    if let Some(f) = &b.response_format {
        if f.get("type").and_then(Value::as_str) != Some("text") && !f.is_null() {
            return Err(unsupported("response_format", "a response format other than text"));
        }
    }
    if b.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages must hold at least one message."));
    }
    if b.messages.len() > limits.max_messages {
        return Err(ApiError::invalid(
            Some("messages"),
            format!("messages holds {} messages; this server takes at most {}.", b.messages.len(), limits.max_messages),
        ));
    }
    let mut msgs = Vec::with_capacity(b.messages.len());
    for (i, m) in b.messages.into_iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" | "function" => return Err(unsupported(&format!("{param}.role"), "tool and function messages")),
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(ApiError::invalid(
                    Some(&format!("{param}.role")),
                    format!("{param}.role: `{shown}` is not one of system, developer, user, assistant."),
                ));
            }
        };
        if m.tool_calls.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(&format!("{param}.tool_calls"), "tool calls"));
        }
        let content = match m.content {
            Some(Content::Text(s)) => s,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                Some(&format!("{param}.content[{j}].text")),
                                format!("{param}.content[{j}]: a text part needs `text`."),
                            ))
                        }
                        _ => return Err(unsupported(&format!("{param}.content[{j}].type"), "content other than text")),
                    }
                }
                text
            }
            None if role == "assistant" => String::new(),
            None => return Err(ApiError::invalid(Some(&format!("{param}.content")), format!("{param}.content is missing."))),
        };
        msgs.push(ChatMessage { role: role.into(), content });
    }
    let logprobs = match (b.logprobs.unwrap_or(false), count("top_logprobs", b.top_logprobs, 0, 20)?) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => return Err(ApiError::invalid(Some("top_logprobs"), "top_logprobs needs logprobs set to true.")),
    };
    let max_tokens = b.max_completion_tokens.or(common.max_tokens);
    common.into_generation(ids, limits, max_tokens, Prompt::Chat(msgs), logprobs)
}

/// Check a `POST /v1/completions` body.
pub fn parse_completion(body: &[u8], ids: &ModelIds, limits: &Limits) -> Result<Generation, ApiError> {
    let v = parse_body(body)?;
    let common: Common = fields(&v)?;
    let b: CompletionBody = fields(&v)?;
    let not_string = || ApiError::invalid(Some("prompt"), "prompt must be a string (token id arrays are not supported).");
    let prompt = match b.prompt {
        None => return Err(ApiError::invalid(Some("prompt"), "prompt is missing.")),
        Some(Value::String(s)) => s,
        Some(Value::Array(v)) if v.len() > 1 => return Err(unsupported("prompt", "a batch of several prompts in one request")),
        Some(Value::Array(v)) => match v.into_iter().next() {
            Some(Value::String(s)) => s,
            _ => return Err(not_string()),
        },
        Some(_) => return Err(not_string()),
    };
    if b.echo == Some(true) {
        return Err(unsupported("echo", "echoing the prompt"));
    }
    if b.suffix.as_ref().is_some_and(|s| !s.is_null()) {
        return Err(unsupported("suffix", "a suffix"));
    }
    if !matches!(b.best_of, None | Some(1)) {
        return Err(unsupported("best_of", "best_of other than 1"));
    }
    let logprobs = count("logprobs", b.logprobs, 0, 20)?;
    let max_tokens = common.max_tokens;
    common.into_generation(ids, limits, max_tokens, Prompt::Text(prompt), logprobs)
}

pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Context => "length",
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
}

fn entry_json(e: &bedside_generate::TokenLogprob) -> Value {
    json!({"token": e.text, "logprob": e.logprob, "bytes": e.text.as_bytes()})
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}`.
pub fn chat_logprobs(entries: &[ChosenLogprob]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|c| {
            let mut v = entry_json(&c.chosen);
            v["top_logprobs"] = Value::Array(c.top.iter().map(entry_json).collect());
            v
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Completions logprobs: parallel arrays `tokens`, `token_logprobs`, `top_logprobs`,
/// `text_offset` (offsets from the start of the answer, `offset` for the first).
pub fn completion_logprobs(entries: &[ChosenLogprob], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::with_capacity(entries.len());
    for e in entries {
        offsets.push(at);
        at += e.chosen.text.len();
    }
    json!({
        "tokens": entries.iter().map(|e| e.chosen.text.clone()).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| e.chosen.logprob).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|e| e.top.iter().map(|t| (t.text.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> ModelIds {
        ModelIds { base: "base".into(), adapters: vec!["tuned".into()] }
    }
    const LIMITS: Limits = Limits { max_messages: 4, max_tokens: 100 };

    fn chat(body: &str) -> Result<Generation, ApiError> {
        parse_chat(body.as_bytes(), &ids(), &LIMITS)
    }

    #[test]
    fn a_plain_request_gets_openai_defaults() {
        let g = chat(r#"{"model":"tuned","messages":[{"role":"developer","content":"Be kind."},{"role":"user","content":[{"type":"text","text":"Hi"}]}]}"#).unwrap();
        assert_eq!(g.adapter, Some(0));
        assert_eq!(
            (g.params.temperature, g.params.top_p, g.params.top_k, g.params.repeat_penalty, g.params.max_tokens),
            (1.0, 1.0, 0, 1.0, 0)
        );
        let Prompt::Chat(m) = g.prompt else { panic!() };
        assert_eq!((m[0].role.as_str(), m[1].content.as_str()), ("system", "Hi"));
    }

    #[test]
    fn bad_fields_get_400_naming_the_field() {
        for (body, param) in [
            (r#"{"model":"base","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#, "max_tokens"),
            (r#"{"model":"base","messages":[{"role":"user","content":"x"}],"max_tokens":101}"#, "max_tokens"),
            (r#"{"model":"base","messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}"#, "max_tokens"),
            (r#"{"model":"base","messages":[{"role":"user","content":"x"}],"temperature":3}"#, "temperature"),
            (r#"{"model":"base","messages":[{"role":"user","content":5}]}"#, "messages[0].content"),
            (r#"{"model":"base","messages":[{"role":"robot","content":"x"}]}"#, "messages[0].role"),
            (r#"{"model":"base","messages":[]}"#, "messages"),
            (r#"{"model":"base","messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (r#"{"model":"base","messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#, "top_logprobs"),
            (r#"{"model":"base","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#, "stream_options"),
            (r#"{"model":"base","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#, "stop"),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let many = format!(r#"{{"model":"base","messages":[{}]}}"#, [r#"{"role":"user","content":"x"}"#; 5].join(","));
        assert!(chat(&many).unwrap_err().message.contains("at most 4"));
        assert_eq!(chat(r#"{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}"#).unwrap_err().status, 404);
        assert_eq!(chat("{\"model\":").unwrap_err().status, 400);
        assert_eq!(parse_chat(b"{\"model\":\"base\xff\"}", &ids(), &LIMITS).unwrap_err().status, 400);
    }

    #[test]
    fn completions_take_one_string_prompt() {
        let g = parse_completion(br#"{"model":"base","prompt":["Fever is"],"logprobs":2,"max_tokens":5}"#, &ids(), &LIMITS).unwrap();
        assert!(matches!(g.prompt, Prompt::Text(ref p) if p == "Fever is"));
        assert_eq!((g.logprobs, g.params.max_tokens), (Some(2), 5));
        for body in [
            r#"{"model":"base","prompt":[1,2]}"#,
            r#"{"model":"base","prompt":["a","b"]}"#,
            r#"{"model":"base"}"#,
            r#"{"model":"base","prompt":"x","echo":true}"#,
        ] {
            assert_eq!(parse_completion(body.as_bytes(), &ids(), &LIMITS).unwrap_err().status, 400, "{body}");
        }
    }
}
