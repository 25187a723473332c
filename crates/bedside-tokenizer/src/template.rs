//! Chat templates, rendered with minijinja the way `transformers` renders them with Jinja2:
//! `trim_blocks` and `lstrip_blocks` on, loop controls, Python string methods (pycompat),
//! `raise_exception`, `strftime_now`, a Python-compatible `tojson`, and `bos_token`,
//! `eos_token`, `messages`, `add_generation_prompt` in the context.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use minijinja::value::Kwargs;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{Result, TokenizerError};
use crate::hf::read_json;

const TEMPLATE_NAME: &str = "chat_template";
/// What a message's content is replaced by when a render error is re-checked for content.
const CONTENT_PLACEHOLDER: &str = "(message text)";

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compile `source`; a Jinja syntax error is an error here, not at render time.
    pub fn new(source: String, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone()).map_err(|e| TokenizerError::TemplateSyntax(e.to_string()))?;
        Ok(Self { source, env, bos_token, eos_token })
    }

    /// `tokenizer.chat_template` from GGUF metadata.
    pub fn from_gguf(content: &Content) -> Option<String> {
        match content.metadata.get("tokenizer.chat_template") {
            Some(GgufValue::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// The template of an HF model directory: `tokenizer_config.json`'s `chat_template` (a
    /// string, or a list of `{name, template}` of which `default` is taken), else
    /// `chat_template.jinja`, else `chat_template.json`. `Ok(None)` when there is none.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<String>> {
        let tc_path = dir.join("tokenizer_config.json");
        if let Some(tc) = read_json(&tc_path)? {
            if let Some(t) = template_field(&tc_path, tc.get("chat_template"))? {
                return Ok(Some(t));
            }
        }
        let jinja = dir.join("chat_template.jinja");
        match std::fs::read_to_string(&jinja) {
            Ok(t) => return Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(TokenizerError::Io { path: jinja, source }),
        }
        let json_path = dir.join("chat_template.json");
        match read_json(&json_path)? {
            Some(j) => template_field(&json_path, j.get("chat_template")),
            None => Ok(None),
        }
    }

    /// Render `messages`, appending the assistant header when `add_generation_prompt`.
    ///
    /// To tokenize a chat, use [`crate::ModelTokenizer::encode_chat`]: tokenizing this text
    /// would let message text that spells a special token become one. A template error never
    /// carries message text (see [`ChatTemplate::safe_error`]).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_raw(messages, add_generation_prompt)
            .map_err(|e| TokenizerError::TemplateRender(self.safe_error(&e, messages, add_generation_prompt)))
    }

    /// A render error's message that cannot carry message text: a template may put a message
    /// into its error (`raise_exception('cannot handle ' + message.content)`), and errors reach
    /// logs. The chat is rendered again with every message's content replaced by a placeholder;
    /// if that fails too, its error is shown (it holds no content); if not, the error depended on
    /// the content, and only where it happened is shown.
    fn safe_error(&self, e: &JinjaError, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let blank: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage::new(m.role.clone(), CONTENT_PLACEHOLDER)).collect();
        match self.render_raw(&blank, add_generation_prompt) {
            Err(e2) => render_error(&e2),
            Ok(_) => {
                let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
                format!(
                    "{}{line}; the error depends on the message text, so its message is not shown (messages are never \
                     written to errors or logs)",
                    e.kind()
                )
            }
        }
    }

    fn render_raw(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> std::result::Result<String, JinjaError> {
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        template.render(ctx)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The message of a render error, with its cause chain.
fn render_error(e: &JinjaError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// `chat_template` in `tokenizer_config.json` / `chat_template.json`.
fn template_field(path: &Path, v: Option<&Json>) -> Result<Option<String>> {
    let bad = |m: &str| TokenizerError::field(path, "chat_template", m);
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let mut named = Vec::new();
            for entry in list {
                let name = entry.get("name").and_then(Json::as_str);
                let template = entry.get("template").and_then(Json::as_str);
                match (name, template) {
                    (Some(n), Some(t)) => named.push((n, t)),
                    _ => return Err(bad("list entries must be objects with string \"name\" and \"template\"")),
                }
            }
            named.iter().find(|(n, _)| *n == "default").map(|(_, t)| Some(t.to_string())).ok_or_else(|| {
                let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
                bad(&format!("no template named \"default\" (found: {})", names.join(", ")))
            })
        }
        Some(_) => Err(bad("expected a string or a list of {name, template}")),
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
}

/// `strftime_now(format)`: the current UTC time formatted with strftime directives.
fn strftime_now(format: String) -> std::result::Result<String, JinjaError> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Civil date (year, month 1–12, day 1–31) from days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, usize, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as usize, d)
}

/// The strftime subset chat templates use.
pub(crate) fn strftime(format: &str, unix_secs: i64) -> std::result::Result<String, JinjaError> {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let (h, min, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let month_name = MONTHS[month - 1];
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            return Err(JinjaError::new(ErrorKind::InvalidOperation, "strftime_now: format ends with '%'"));
        };
        match d {
            'Y' => out.push_str(&year.to_string()),
            'y' => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            'm' => out.push_str(&format!("{month:02}")),
            'd' => out.push_str(&format!("{day:02}")),
            'e' => out.push_str(&format!("{day:>2}")),
            '-' => match chars.next() {
                Some('d') => out.push_str(&day.to_string()),
                Some('m') => out.push_str(&month.to_string()),
                Some('H') => out.push_str(&h.to_string()),
                other => {
                    return Err(JinjaError::new(
                        ErrorKind::InvalidOperation,
                        format!("strftime_now: unsupported directive %-{}", other.unwrap_or(' ')),
                    ))
                }
            },
            'b' | 'h' => out.push_str(&month_name[..3]),
            'B' => out.push_str(month_name),
            'a' => out.push_str(&WEEKDAYS[weekday][..3]),
            'A' => out.push_str(WEEKDAYS[weekday]),
            'j' => out.push_str(&format!("{day_of_year:03}")),
            'H' => out.push_str(&format!("{h:02}")),
            'I' => out.push_str(&format!("{:02}", (h + 11) % 12 + 1)),
            'p' => out.push_str(if h < 12 { "AM" } else { "PM" }),
            'M' => out.push_str(&format!("{min:02}")),
            'S' => out.push_str(&format!("{s:02}")),
            'F' => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            'T' => out.push_str(&format!("{h:02}:{min:02}:{s:02}")),
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            '%' => out.push('%'),
            other => return Err(JinjaError::new(ErrorKind::InvalidOperation, format!("strftime_now: unsupported directive %{other}"))),
        }
    }
    Ok(out)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// sort_keys=sort_keys)`, so `", "` / `": "` separators and raw non-ASCII text.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    dump_json(&json, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn dump_json(v: &Json, indent: Option<usize>, sort_keys: bool, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                dump_json(item, indent, sort_keys, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            if sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                dump_json(item, indent, sort_keys, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-07-23 12:34:56 UTC, a Tuesday.
        let t = 1_721_738_096;
        assert_eq!(strftime("%d %b %Y", t).ok().as_deref(), Some("23 Jul 2024"));
        assert_eq!(strftime("%A %B %-d, %H:%M:%S %j", t).ok().as_deref(), Some("Tuesday July 23, 12:34:56 205"));
        assert_eq!(strftime("%Y-%m-%d", 0).ok().as_deref(), Some("1970-01-01"));
        assert_eq!(strftime("%F %a", 951_782_400).ok().as_deref(), Some("2000-02-29 Tue"));
        assert!(strftime("%Q", 0).is_err());
    }

    #[test]
    fn tojson_is_python_style() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}".into(), None, None);
        let Ok(t) = t else { panic!("template must compile") };
        let Ok(tmpl) = t.env.get_template(TEMPLATE_NAME) else { panic!("template present") };
        let x = serde_json::json!({"a": [1, "é<"], "b": {}});
        let out = tmpl.render(minijinja::context! { x => x });
        assert_eq!(out.ok().as_deref(), Some("{\"a\": [1, \"é<\"], \"b\": {}}|{\n  \"a\": [\n    1,\n    \"é<\"\n  ],\n  \"b\": {}\n}"));
    }
}
