//! Errors. Every problem with user input is a [`RecordError`] naming file, line and field.

use std::fmt;
use std::path::PathBuf;

/// One problem with one input record: `file:line`, the record id when known, and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub file: PathBuf,
    /// 1-based line where the record (or the offending token) starts.
    pub line: usize,
    pub id: Option<String>,
    /// The field, e.g. `output`, `messages[1].content`, `key_facts[2]`, `provenance.method`.
    pub field: Option<String>,
    pub message: String,
}

impl RecordError {
    pub fn new(file: impl Into<PathBuf>, line: usize, field: Option<&str>, message: impl Into<String>) -> Self {
        RecordError { file: file.into(), line, id: None, field: field.map(str::to_string), message: message.into() }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(id) = &self.id {
            write!(f, " (id `{id}`)")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RecordError {}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing `path` failed.
    #[error("{}: {err}", .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// One invalid record.
    #[error("{0}")]
    Record(RecordError),
    /// Several invalid records (all of them, in input order).
    #[error("{}", list_records(.0))]
    Records(Vec<RecordError>),
    /// Bad options (ratios, thresholds) or an impossible request.
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        DataError::Io { path: path.into(), err }
    }

    /// The record-level errors carried by this error (empty for I/O and option errors).
    pub fn record_errors(&self) -> Vec<&RecordError> {
        match self {
            DataError::Record(e) => vec![e],
            DataError::Records(es) => es.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Several record errors as one error (a single one stays [`DataError::Record`]).
    pub(crate) fn from_records(mut errors: Vec<RecordError>) -> Self {
        if errors.len() == 1 {
            if let Some(e) = errors.pop() {
                return DataError::Record(e);
            }
        }
        DataError::Records(errors)
    }
}

/// How many record errors [`DataError::Records`] lists before summarising the rest.
const LISTED: usize = 20;

fn list_records(errors: &[RecordError]) -> String {
    let mut s = format!("{} invalid record{}:", errors.len(), if errors.len() == 1 { "" } else { "s" });
    for e in errors.iter().take(LISTED) {
        s.push_str("\n  ");
        s.push_str(&e.to_string());
    }
    if errors.len() > LISTED {
        s.push_str(&format!("\n  … and {} more", errors.len() - LISTED));
    }
    s
}
