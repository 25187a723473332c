//! Exporters: chat JSONL for other trainers.
//!
//! * `openai`: `{"messages":[{"role":"system","content":S}?,{"role":"user","content":P},{"role":"assistant","content":A}]}`
//! * `sharegpt`: `{"id":ID,"conversations":[{"from":"system","value":S}?,{"from":"human","value":P},{"from":"gpt","value":A}]}`
//!
//! `P`/`A` are `patient`/`answer`, or `patient_neutral`/`answer_neutral` with `neutral`. A record
//! whose chosen texts are empty (an imported record not rewritten yet) is an error naming it,
//! unless `skip_empty`, which leaves it out and counts it.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{DataError, RecordError};
use crate::record::{Dialogue, Located};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    OpenAi,
    ShareGpt,
}

impl ExportFormat {
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::OpenAi => "openai",
            ExportFormat::ShareGpt => "sharegpt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: ExportFormat,
    /// A system message to put first, if any.
    pub system: Option<String>,
    /// Export `patient_neutral`/`answer_neutral` instead of `patient`/`answer`.
    pub neutral: bool,
    /// Leave out records whose chosen texts are empty instead of failing.
    pub skip_empty: bool,
}

impl ExportOptions {
    pub fn new(format: ExportFormat) -> Self {
        ExportOptions { format, system: None, neutral: false, skip_empty: false }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExportOutcome {
    /// One JSON object per output line.
    pub lines: Vec<Value>,
    /// Ids of records left out because their chosen texts were empty (`skip_empty`).
    pub skipped_empty: Vec<String>,
}

/// Exports records read from files; errors name file, line, id and field.
pub fn export_located(records: &[Located<Dialogue>], opts: &ExportOptions) -> Result<ExportOutcome, DataError> {
    export_iter(records.iter().map(|l| (Some((l.file.as_path(), l.line)), &l.record)), opts)
}

/// Exports records held in memory; errors name the id and field (line 0, file `<memory>`).
pub fn export_records(records: &[Dialogue], opts: &ExportOptions) -> Result<ExportOutcome, DataError> {
    export_iter(records.iter().map(|r| (None, r)), opts)
}

fn export_iter<'a>(
    records: impl Iterator<Item = (Option<(&'a Path, usize)>, &'a Dialogue)>,
    opts: &ExportOptions,
) -> Result<ExportOutcome, DataError> {
    let (pf, af) = if opts.neutral { ("patient_neutral", "answer_neutral") } else { ("patient", "answer") };
    let system = opts.system.as_deref().filter(|s| !s.trim().is_empty());
    let mut out = ExportOutcome::default();
    let mut errors = Vec::new();
    for (loc, r) in records {
        let (p, a) = if opts.neutral { (&r.patient_neutral, &r.answer_neutral) } else { (&r.patient, &r.answer) };
        let empty = if p.trim().is_empty() {
            Some(pf)
        } else if a.trim().is_empty() {
            Some(af)
        } else {
            None
        };
        if let Some(field) = empty {
            if opts.skip_empty {
                out.skipped_empty.push(r.id.clone());
            } else {
                let (file, line) = loc.unwrap_or((Path::new("<memory>"), 0));
                let hint = if opts.neutral { "" } else { " (not rewritten yet? export the neutral pair with --neutral)" };
                let mut e = RecordError::new(file, line, Some(field), format!("empty text{hint}"));
                e.id = Some(r.id.clone());
                errors.push(e);
            }
            continue;
        }
        out.lines.push(match opts.format {
            ExportFormat::OpenAi => {
                let mut messages = Vec::new();
                if let Some(s) = system {
                    messages.push(json!({"role": "system", "content": s}));
                }
                messages.push(json!({"role": "user", "content": p}));
                messages.push(json!({"role": "assistant", "content": a}));
                json!({ "messages": messages })
            }
            ExportFormat::ShareGpt => {
                let mut conv = Vec::new();
                if let Some(s) = system {
                    conv.push(json!({"from": "system", "value": s}));
                }
                conv.push(json!({"from": "human", "value": p}));
                conv.push(json!({"from": "gpt", "value": a}));
                json!({ "id": r.id, "conversations": conv })
            }
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(DataError::from_records(errors))
    }
}

/// The exported lines as JSONL text.
pub fn to_jsonl(lines: &[Value]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(&l.to_string());
        s.push('\n');
    }
    s
}
