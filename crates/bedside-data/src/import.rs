//! Importers: what users have, turned into schema-v1 records.
//!
//! Every imported record has `patient_neutral` = the patient's text, `answer_neutral` = the
//! clinician's text, and `patient`, `answer`, `emotion`, `specialty`, `condition`, `split`,
//! `key_facts`, `red_flags` empty (the rewrite pipeline and `bedside data split` fill them; an
//! importer never invents them). Ids are `<prefix>-<n>`, `n` the 1-based position of the record in
//! the input (so ids stay stable when invalid records are skipped); provenance is
//! `{"method":"imported","from":"<format>","source":"<file name>"}`.
//!
//! | format | input | patient text | clinician text |
//! |---|---|---|---|
//! | `chatdoctor`, `healthcaremagic`, `icliniq` | JSON array or JSONL of objects | `input` | `output` (iCliniq's `answer_icliniq` when `output` is absent) |
//! | `alpaca` | JSON array or JSONL of objects | `instruction`, then a blank line and `input` when non-empty | `output` |
//! | `openai` | JSON array or JSONL of `{"messages":[…]}` | first `user` message | the next `assistant` message |
//! | `sharegpt` | JSON array or JSONL of `{"conversations":[…]}` (`from`: human/gpt, or `role`/`content`) | first human/user turn | the next gpt/assistant turn |
//! | `meddialog` | MedDialog-EN text | first `Patient:` turn | the next `Doctor:` turn |
//!
//! ChatDoctor's `instruction` is its fixed task prompt ("If you are a doctor, please answer …"),
//! not patient text, so it is ignored. System messages are ignored. The schema holds one exchange:
//! for multi-turn dialogues the first patient turn and the reply to it are imported, and
//! [`ImportOutcome::multi_turn`] counts the dialogues that had more.
//!
//! MedDialog-EN text: a dialogue is a `Description` section (ignored), then `Patient:` and
//! `Doctor:` turns (text on the header line or on the lines below); `Dialogue` lines and URL lines
//! are skipped. When the file has `id=NNN` lines (the original release), they separate dialogues
//! and blank lines inside a dialogue are paragraph breaks. Otherwise a dialogue ends at the first
//! blank line after a `Doctor:` turn, or where a new `Description` starts.

use std::path::Path;

use serde_json::Value;

use crate::error::{DataError, RecordError};
use crate::record::{json_error_message, read_to_string, type_name, Dialogue, Provenance};

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    ChatDoctor,
    HealthCareMagic,
    ICliniq,
    MedDialog,
    OpenAi,
    ShareGpt,
    Alpaca,
}

impl ImportFormat {
    pub const ALL: [ImportFormat; 7] = [
        ImportFormat::ChatDoctor,
        ImportFormat::HealthCareMagic,
        ImportFormat::ICliniq,
        ImportFormat::MedDialog,
        ImportFormat::OpenAi,
        ImportFormat::ShareGpt,
        ImportFormat::Alpaca,
    ];

    /// The name used on the command line and in `provenance.from`.
    pub fn name(self) -> &'static str {
        match self {
            ImportFormat::ChatDoctor => "chatdoctor",
            ImportFormat::HealthCareMagic => "healthcaremagic",
            ImportFormat::ICliniq => "icliniq",
            ImportFormat::MedDialog => "meddialog",
            ImportFormat::OpenAi => "openai",
            ImportFormat::ShareGpt => "sharegpt",
            ImportFormat::Alpaca => "alpaca",
        }
    }
}

impl std::str::FromStr for ImportFormat {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        ImportFormat::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<&str> = ImportFormat::ALL.iter().map(|f| f.name()).collect();
            DataError::Invalid(format!("unknown import format `{s}` (one of {})", names.join(", ")))
        })
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: ImportFormat,
    /// Id prefix; `None`: the input file's stem.
    pub id_prefix: Option<String>,
    /// Keep going past invalid records (they are counted in [`ImportOutcome::skipped`]).
    pub skip_invalid: bool,
}

impl ImportOptions {
    pub fn new(format: ImportFormat) -> Self {
        ImportOptions { format, id_prefix: None, skip_invalid: false }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ImportOutcome {
    /// The valid records, in input order.
    pub records: Vec<Dialogue>,
    /// The invalid records (only with `skip_invalid`; otherwise they make the import fail).
    pub skipped: Vec<RecordError>,
    /// Records seen in the input, valid or not.
    pub total: usize,
    /// Dialogues with more than one exchange (only the first was imported).
    pub multi_turn: usize,
}

/// Imports one file. Without `skip_invalid`, any invalid record makes this fail with all of them
/// listed ([`DataError::Records`]); with it, the valid records are all kept.
pub fn import_file(path: impl AsRef<Path>, opts: &ImportOptions) -> Result<ImportOutcome, DataError> {
    let path = path.as_ref();
    let text = read_to_string(path)?;
    import_text(&text, path, opts)
}

/// Imports `text` as if read from `path` (used for messages, the default id prefix and
/// `provenance.source`).
pub fn import_text(text: &str, path: &Path, opts: &ImportOptions) -> Result<ImportOutcome, DataError> {
    let source = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = match &opts.id_prefix {
        Some(p) => p.clone(),
        None => path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "imported".into()),
    };
    if prefix.is_empty() {
        return Err(DataError::Invalid("the id prefix must not be empty".into()));
    }
    let provenance = Provenance::imported(opts.format.name(), &source);
    let items: Vec<Item<Exchange>> = match opts.format {
        ImportFormat::MedDialog => meddialog(text, path),
        f => json_items(text, path)
            .into_iter()
            .map(|item| Item { is_record: item.is_record, result: item.result.and_then(|(line, v)| json_exchange(f, &v, path, line)) })
            .collect(),
    };
    let mut out = ImportOutcome::default();
    for item in items {
        if item.is_record {
            out.total += 1;
        }
        match item.result {
            Ok(ex) => {
                out.multi_turn += usize::from(ex.more_turns);
                out.records.push(Dialogue {
                    id: format!("{prefix}-{}", out.total),
                    patient_neutral: ex.patient,
                    answer_neutral: ex.answer,
                    provenance: provenance.clone(),
                    ..Dialogue::default()
                });
            }
            Err(e) => out.skipped.push(e),
        }
    }
    if !opts.skip_invalid && !out.skipped.is_empty() {
        return Err(DataError::from_records(out.skipped));
    }
    Ok(out)
}

/// One entry of the input: a record (valid or not), or an error that is not a record of its own
/// (a missing `]`, text between MedDialog dialogues) and so takes no id number.
struct Item<T> {
    is_record: bool,
    result: Result<T, RecordError>,
}

impl<T> Item<T> {
    fn record(result: Result<T, RecordError>) -> Self {
        Item { is_record: true, result }
    }
    fn stray(e: RecordError) -> Self {
        Item { is_record: false, result: Err(e) }
    }
}

/// One patient turn and the clinician's reply.
#[derive(Debug)]
struct Exchange {
    patient: String,
    answer: String,
    more_turns: bool,
}

struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        LineIndex(std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect())
    }
    /// 1-based line of byte offset `at`.
    fn line(&self, at: usize) -> usize {
        self.0.partition_point(|&start| start <= at)
    }
}

/// The items of a JSON array file or of a JSONL file, each with its 1-based line.
fn json_items(text: &str, path: &Path) -> Vec<Item<(usize, Value)>> {
    let lines = LineIndex::new(text);
    let start = text.len() - text.trim_start().len();
    if text[start..].starts_with('[') {
        return json_array_items(text, start + 1, &lines, path);
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Item::record(
                serde_json::from_str(l).map(|v| (i + 1, v)).map_err(|e| RecordError::new(path, i + 1, None, json_error_message(&e))),
            )
        })
        .collect()
}

/// Splits a top-level JSON array into its elements without trusting the whole file to parse,
/// so one malformed element is reported at its own line and the others survive.
fn json_array_items(text: &str, mut pos: usize, lines: &LineIndex, path: &Path) -> Vec<Item<(usize, Value)>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    loop {
        while pos < bytes.len() && (bytes[pos] as char).is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= bytes.len() {
            out.push(Item::stray(RecordError::new(path, lines.line(text.len()), None, "unterminated JSON array (missing `]`)")));
            return out;
        }
        if bytes[pos] == b']' {
            let rest = text[pos + 1..].trim();
            if !rest.is_empty() {
                let at = pos + 1 + text[pos + 1..].find(rest).unwrap_or(0);
                out.push(Item::stray(RecordError::new(path, lines.line(at), None, "unexpected text after the JSON array")));
            }
            return out;
        }
        let start = pos;
        let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
        let mut end_of_array = false;
        while pos < bytes.len() {
            let b = bytes[pos];
            if in_str {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_str = false;
                }
            } else {
                match b {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b']' if depth == 0 => {
                        end_of_array = true;
                        break;
                    }
                    b'}' | b']' => depth = depth.saturating_sub(1),
                    b',' if depth == 0 => break,
                    _ => {}
                }
            }
            pos += 1;
        }
        let item = text[start..pos].trim_end();
        let line = lines.line(start);
        if pos >= bytes.len() && !end_of_array {
            // Ran off the end: report this element, then the missing `]`.
            if !item.is_empty() {
                out.push(Item::record(parse_item(item, line, path)));
            }
            out.push(Item::stray(RecordError::new(path, lines.line(text.len()), None, "unterminated JSON array (missing `]`)")));
            return out;
        }
        if item.is_empty() {
            if !(end_of_array && out.is_empty()) {
                out.push(Item::stray(RecordError::new(path, line, None, "empty array element (stray `,`)")));
            }
        } else {
            out.push(Item::record(parse_item(item, line, path)));
        }
        if !end_of_array {
            pos += 1; // past the `,`
        }
    }
}

fn parse_item(item: &str, line: usize, path: &Path) -> Result<(usize, Value), RecordError> {
    serde_json::from_str(item)
        .map(|v| (line, v))
        .map_err(|e| RecordError::new(path, line + e.line().saturating_sub(1), None, json_error_message(&e)))
}

/// A required non-empty string field.
fn req_str(obj: &serde_json::Map<String, Value>, field: &str, path: &Path, line: usize) -> Result<String, RecordError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(RecordError::new(path, line, Some(field), "missing required field")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(RecordError::new(path, line, Some(field), "empty text")),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(x) => Err(RecordError::new(path, line, Some(field), format!("expected a string, found {}", type_name(x)))),
    }
}

/// An optional string field (absent, null or empty: `""`).
fn opt_str(obj: &serde_json::Map<String, Value>, field: &str, path: &Path, line: usize) -> Result<String, RecordError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(x) => Err(RecordError::new(path, line, Some(field), format!("expected a string, found {}", type_name(x)))),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
}

fn json_exchange(format: ImportFormat, v: &Value, path: &Path, line: usize) -> Result<Exchange, RecordError> {
    let Some(obj) = v.as_object() else {
        return Err(RecordError::new(path, line, None, format!("expected a JSON object, found {}", type_name(v))));
    };
    match format {
        ImportFormat::ChatDoctor | ImportFormat::HealthCareMagic | ImportFormat::ICliniq => {
            let patient = req_str(obj, "input", path, line)?;
            let answer_field = if format == ImportFormat::ICliniq && !obj.contains_key("output") && obj.contains_key("answer_icliniq") {
                "answer_icliniq"
            } else {
                "output"
            };
            let answer = req_str(obj, answer_field, path, line)?;
            Ok(Exchange { patient, answer, more_turns: false })
        }
        ImportFormat::Alpaca => {
            let instruction = req_str(obj, "instruction", path, line)?;
            let input = opt_str(obj, "input", path, line)?;
            let answer = req_str(obj, "output", path, line)?;
            let patient = if input.is_empty() { instruction } else { format!("{instruction}\n\n{input}") };
            Ok(Exchange { patient, answer, more_turns: false })
        }
        ImportFormat::OpenAi => {
            let turns = turns(obj, "messages", path, line, |m, i| {
                let role = match m.get("role") {
                    Some(Value::String(r)) => r.as_str(),
                    None => return Err((format!("messages[{i}].role"), "missing required field".to_string())),
                    Some(x) => return Err((format!("messages[{i}].role"), format!("expected a string, found {}", type_name(x)))),
                };
                let role = match role {
                    "system" | "developer" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => return Err((format!("messages[{i}].role"), format!("unsupported role `{other}`"))),
                };
                Ok((role, content_text(m.get("content"), &format!("messages[{i}].content"))?))
            })?;
            first_exchange(&turns, "messages", "user", "assistant", path, line)
        }
        ImportFormat::ShareGpt => {
            let turns = turns(obj, "conversations", path, line, |m, i| {
                let (speaker_key, text_key) = if m.contains_key("from") { ("from", "value") } else { ("role", "content") };
                let speaker = match m.get(speaker_key) {
                    Some(Value::String(r)) => r.as_str(),
                    None => return Err((format!("conversations[{i}].from"), "missing required field (`from`, or `role`)".to_string())),
                    Some(x) => {
                        return Err((format!("conversations[{i}].{speaker_key}"), format!("expected a string, found {}", type_name(x))))
                    }
                };
                let role = match speaker.to_ascii_lowercase().as_str() {
                    "system" => Role::System,
                    "human" | "user" => Role::User,
                    "gpt" | "assistant" | "chatgpt" | "bard" | "model" | "bing" => Role::Assistant,
                    other => return Err((format!("conversations[{i}].{speaker_key}"), format!("unsupported speaker `{other}`"))),
                };
                Ok((role, content_text(m.get(text_key), &format!("conversations[{i}].{text_key}"))?))
            })?;
            first_exchange(&turns, "conversations", "human", "gpt", path, line)
        }
        ImportFormat::MedDialog => Err(RecordError::new(path, line, None, "MedDialog is a text format")),
    }
}

/// The text of an OpenAI/ShareGPT content value: a string, or an array of `{"type":"text","text":…}`
/// parts (joined with blank lines; other part types are an error).
fn content_text(v: Option<&Value>, field: &str) -> Result<String, (String, String)> {
    match v {
        None | Some(Value::Null) => Err((field.to_string(), "missing required field".to_string())),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text") | None, Some(t)) => texts.push(t.trim().to_string()),
                    _ => return Err((format!("{field}[{j}]"), "expected a text part {\"type\":\"text\",\"text\":…}".to_string())),
                }
            }
            Ok(texts.join("\n\n"))
        }
        Some(x) => Err((field.to_string(), format!("expected a string or an array of text parts, found {}", type_name(x)))),
    }
}

type Turn = (Role, String);

fn turns(
    obj: &serde_json::Map<String, Value>,
    field: &str,
    path: &Path,
    line: usize,
    parse: impl Fn(&serde_json::Map<String, Value>, usize) -> Result<Turn, (String, String)>,
) -> Result<Vec<Turn>, RecordError> {
    let items = match obj.get(field) {
        Some(Value::Array(a)) => a,
        None => return Err(RecordError::new(path, line, Some(field), "missing required field")),
        Some(x) => return Err(RecordError::new(path, line, Some(field), format!("expected an array, found {}", type_name(x)))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| match m.as_object() {
            Some(m) => parse(m, i).map_err(|(f, msg)| RecordError::new(path, line, Some(&f), msg)),
            None => {
                Err(RecordError::new(path, line, Some(&format!("{field}[{i}]")), format!("expected an object, found {}", type_name(m))))
            }
        })
        .collect()
}

fn first_exchange(turns: &[Turn], field: &str, user: &str, assistant: &str, path: &Path, line: usize) -> Result<Exchange, RecordError> {
    let Some(u) = turns.iter().position(|(r, _)| *r == Role::User) else {
        return Err(RecordError::new(path, line, Some(field), format!("no `{user}` turn")));
    };
    let Some(a) = turns[u + 1..].iter().position(|(r, _)| *r == Role::Assistant).map(|a| a + u + 1) else {
        return Err(RecordError::new(path, line, Some(field), format!("no `{assistant}` turn after the first `{user}` turn")));
    };
    if turns[u].1.is_empty() {
        return Err(RecordError::new(path, line, Some(&format!("{field}[{u}]")), "empty text"));
    }
    if turns[a].1.is_empty() {
        return Err(RecordError::new(path, line, Some(&format!("{field}[{a}]")), "empty text"));
    }
    let more_turns = turns[a + 1..].iter().any(|(r, _)| *r != Role::System) || turns[u + 1..a].iter().any(|(r, _)| *r == Role::User);
    Ok(Exchange { patient: turns[u].1.clone(), answer: turns[a].1.clone(), more_turns })
}

// ---------------------------------------------------------------------------------------------
// MedDialog-EN text
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Section {
    Description,
    Patient,
    Doctor,
}

#[derive(Default)]
struct MdDialogue {
    start: usize,
    /// (section, line of its header, text lines)
    sections: Vec<(Section, usize, Vec<String>)>,
}

impl MdDialogue {
    fn has(&self, s: Section) -> bool {
        self.sections.iter().any(|(x, _, _)| *x == s)
    }
    fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }
}

fn is_id_line(t: &str) -> bool {
    t.strip_prefix("id=").or_else(|| t.strip_prefix("id =")).is_some_and(|r| {
        let r = r.trim();
        !r.is_empty() && r.chars().all(|c| c.is_ascii_digit())
    })
}

/// A section header: `Description`, `Patient:`, `Doctor:` (case-insensitive, colon optional),
/// with any text after the colon. `Dialogue` headers give `Some((None, ""))`.
fn header(t: &str) -> Option<(Option<Section>, &str)> {
    for (name, sec) in [
        ("description", Some(Section::Description)),
        ("patient", Some(Section::Patient)),
        ("doctor", Some(Section::Doctor)),
        ("dialogue", None),
    ] {
        if t.len() >= name.len() && t.is_char_boundary(name.len()) && t[..name.len()].eq_ignore_ascii_case(name) {
            let rest = &t[name.len()..];
            if rest.is_empty() {
                return Some((sec, ""));
            }
            if let Some(r) = rest.strip_prefix(':') {
                return Some((sec, r.trim()));
            }
        }
    }
    None
}

fn meddialog(text: &str, path: &Path) -> Vec<Item<Exchange>> {
    let id_mode = text.lines().any(|l| is_id_line(l.trim()));
    let mut dialogues: Vec<MdDialogue> = Vec::new();
    let mut stray: Vec<(usize, RecordError)> = Vec::new();
    let mut cur = MdDialogue::default();
    let mut in_text = false; // inside a section's text (lines belong to it)
    let finish = |cur: &mut MdDialogue, dialogues: &mut Vec<MdDialogue>| {
        if !cur.is_empty() {
            dialogues.push(std::mem::take(cur));
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let t = raw.trim();
        if is_id_line(t) {
            finish(&mut cur, &mut dialogues);
            cur.start = line_no;
            in_text = false;
            continue;
        }
        if t.is_empty() {
            if !id_mode && cur.has(Section::Doctor) {
                finish(&mut cur, &mut dialogues);
                in_text = false;
            } else if in_text {
                if let Some((_, _, lines)) = cur.sections.last_mut() {
                    lines.push(String::new());
                }
            }
            continue;
        }
        if let Some((sec, rest)) = header(t) {
            match sec {
                None => in_text = false,
                Some(sec) => {
                    if sec == Section::Description && !id_mode && (cur.has(Section::Patient) || cur.has(Section::Doctor)) {
                        finish(&mut cur, &mut dialogues);
                    }
                    if cur.is_empty() && (cur.start == 0 || !id_mode) {
                        cur.start = line_no;
                    }
                    let mut lines = Vec::new();
                    if !rest.is_empty() {
                        lines.push(rest.to_string());
                    }
                    cur.sections.push((sec, line_no, lines));
                    in_text = true;
                }
            }
            continue;
        }
        if in_text {
            if let Some((_, _, lines)) = cur.sections.last_mut() {
                lines.push(t.to_string());
            }
        } else if t.starts_with("http://") || t.starts_with("https://") {
            // The source URL of the original release.
        } else {
            stray.push((
                dialogues.len(),
                RecordError::new(path, line_no, None, "text outside a `Description`, `Patient:` or `Doctor:` section"),
            ));
        }
    }
    finish(&mut cur, &mut dialogues);

    let mut out = Vec::new();
    let mut stray = stray.into_iter().peekable();
    for (k, d) in dialogues.into_iter().enumerate() {
        while let Some((_, e)) = stray.next_if(|(before, _)| *before <= k) {
            out.push(Item::stray(e));
        }
        out.push(Item::record(md_exchange(&d, path)));
    }
    out.extend(stray.map(|(_, e)| Item::stray(e)));
    out
}

fn section_text(lines: &[String]) -> String {
    let mut paras: Vec<String> = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for l in lines {
        if l.is_empty() {
            if !cur.is_empty() {
                paras.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(l);
        }
    }
    if !cur.is_empty() {
        paras.push(cur.join("\n"));
    }
    paras.join("\n\n")
}

fn md_exchange(d: &MdDialogue, path: &Path) -> Result<Exchange, RecordError> {
    let Some(p) = d.sections.iter().position(|(s, _, _)| *s == Section::Patient) else {
        return Err(RecordError::new(path, d.start, Some("Patient"), "no `Patient:` turn in this dialogue"));
    };
    let (_, p_line, p_lines) = &d.sections[p];
    let patient = section_text(p_lines);
    if patient.is_empty() {
        return Err(RecordError::new(path, *p_line, Some("Patient"), "empty text"));
    }
    let Some(a) = d.sections[p + 1..].iter().position(|(s, _, _)| *s == Section::Doctor).map(|a| a + p + 1) else {
        return Err(RecordError::new(path, d.start, Some("Doctor"), "no `Doctor:` turn after the `Patient:` turn"));
    };
    let (_, a_line, a_lines) = &d.sections[a];
    let answer = section_text(a_lines);
    if answer.is_empty() {
        return Err(RecordError::new(path, *a_line, Some("Doctor"), "empty text"));
    }
    let more_turns = d.sections.iter().filter(|(s, _, _)| *s != Section::Description).count() > 2;
    Ok(Exchange { patient, answer, more_turns })
}
