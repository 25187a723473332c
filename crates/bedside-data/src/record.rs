//! The corpus record (schema version 1, `data/README.md`), JSONL reading with line-numbered
//! errors, and atomic writing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, RecordError};

/// The schema version this crate reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

/// The allowed values of `split` (an empty `split` means "not assigned yet").
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// The string fields of the schema, in file order.
pub const STRING_FIELDS: [&str; 9] =
    ["id", "specialty", "condition", "emotion", "patient_neutral", "answer_neutral", "patient", "answer", "split"];

/// The list-of-string fields of the schema.
pub const LIST_FIELDS: [&str; 2] = ["key_facts", "red_flags"];

/// Every field of the schema, in the order records are written.
pub const FIELDS: [&str; 13] = [
    "schema_version",
    "id",
    "specialty",
    "condition",
    "emotion",
    "patient_neutral",
    "answer_neutral",
    "patient",
    "answer",
    "key_facts",
    "red_flags",
    "split",
    "provenance",
];

/// One patient–clinician dialogue. Serialises with the fields in schema order; fields the schema
/// does not know are kept in [`Dialogue::extra`] and written back after them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dialogue {
    pub schema_version: u64,
    pub id: String,
    pub specialty: String,
    pub condition: String,
    pub emotion: String,
    pub patient_neutral: String,
    pub answer_neutral: String,
    pub patient: String,
    pub answer: String,
    pub key_facts: Vec<String>,
    pub red_flags: Vec<String>,
    pub split: String,
    pub provenance: Provenance,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for Dialogue {
    fn default() -> Self {
        Dialogue {
            schema_version: SCHEMA_VERSION,
            id: String::new(),
            specialty: String::new(),
            condition: String::new(),
            emotion: String::new(),
            patient_neutral: String::new(),
            answer_neutral: String::new(),
            patient: String::new(),
            answer: String::new(),
            key_facts: Vec::new(),
            red_flags: Vec::new(),
            split: String::new(),
            provenance: Provenance::default(),
            extra: BTreeMap::new(),
        }
    }
}

/// Where a record came from: `method` (`authored`, `rewritten`, `imported`) and free fields
/// (`by`, `license`, `model`, `prompt_version`, `seed`, `from`, `source`, …), written sorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub method: String,
    #[serde(flatten)]
    pub fields: BTreeMap<String, Value>,
}

impl Provenance {
    /// `{"method":"imported","from":<format>,"source":<file name>}`.
    pub fn imported(from: &str, source: &str) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert("from".to_string(), Value::String(from.to_string()));
        fields.insert("source".to_string(), Value::String(source.to_string()));
        Provenance { method: "imported".to_string(), fields }
    }

    /// A string field of the provenance, if present.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }
}

/// A record with the file and 1-based line it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub file: PathBuf,
    pub line: usize,
    pub record: T,
}

/// A problem with one field of a JSON record (see [`check_schema`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// `None` when the problem is the record as a whole (not an object).
    pub field: Option<String>,
    pub message: String,
}

impl FieldProblem {
    fn new(field: &str, message: impl Into<String>) -> Self {
        FieldProblem { field: Some(field.to_string()), message: message.into() }
    }
}

/// The JSON type name of `v`, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a parsed JSON record against schema v1: every field present with its type,
/// `schema_version` = 1, `split` empty or one of [`SPLITS`], `provenance.method` a string.
/// Content rules (non-empty texts, facts, numbers, …) are `validate`'s business.
pub fn check_schema(v: &Value) -> Vec<FieldProblem> {
    let Some(obj) = v.as_object() else {
        return vec![FieldProblem { field: None, message: format!("expected a JSON object, found {}", type_name(v)) }];
    };
    let mut problems = Vec::new();
    match obj.get("schema_version") {
        None => problems.push(FieldProblem::new("schema_version", "missing required field")),
        Some(x) => match x.as_u64() {
            Some(SCHEMA_VERSION) => {}
            Some(n) => problems.push(FieldProblem::new(
                "schema_version",
                format!("unsupported schema version {n} (this tool reads version {SCHEMA_VERSION})"),
            )),
            None => {
                problems.push(FieldProblem::new("schema_version", format!("expected the integer {SCHEMA_VERSION}, found {}", type_name(x))))
            }
        },
    }
    for f in STRING_FIELDS {
        match obj.get(f) {
            None => problems.push(FieldProblem::new(f, "missing required field")),
            Some(Value::String(s)) => {
                if f == "split" && !s.is_empty() && !SPLITS.contains(&s.as_str()) {
                    problems.push(FieldProblem::new(f, format!("`{s}` is not an allowed split (train, validation, test, or empty)")));
                }
            }
            Some(x) => problems.push(FieldProblem::new(f, format!("expected a string, found {}", type_name(x)))),
        }
    }
    for f in LIST_FIELDS {
        match obj.get(f) {
            None => problems.push(FieldProblem::new(f, "missing required field")),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        problems.push(FieldProblem::new(&format!("{f}[{i}]"), format!("expected a string, found {}", type_name(item))));
                    }
                }
            }
            Some(x) => problems.push(FieldProblem::new(f, format!("expected an array of strings, found {}", type_name(x)))),
        }
    }
    match obj.get("provenance") {
        None => problems.push(FieldProblem::new("provenance", "missing required field")),
        Some(Value::Object(p)) => match p.get("method") {
            Some(Value::String(_)) => {}
            None => problems.push(FieldProblem::new("provenance.method", "missing required field")),
            Some(x) => problems.push(FieldProblem::new("provenance.method", format!("expected a string, found {}", type_name(x)))),
        },
        Some(x) => problems.push(FieldProblem::new("provenance", format!("expected an object, found {}", type_name(x)))),
    }
    problems
}

/// serde_json's message without its " at line L column C" suffix, plus the column.
pub(crate) fn json_error_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match s.strip_suffix(&suffix) {
        Some(m) => format!("invalid JSON at column {}: {m}", e.column()),
        None => format!("invalid JSON: {s}"),
    }
}

/// Parses one JSONL line into a [`Dialogue`], or the problems with it.
pub(crate) fn parse_dialogue(file: &Path, line_no: usize, line: &str) -> Result<Dialogue, Vec<RecordError>> {
    let v: Value = serde_json::from_str(line).map_err(|e| vec![RecordError::new(file, line_no, None, json_error_message(&e))])?;
    let id = v.get("id").and_then(Value::as_str).map(str::to_string);
    let problems = check_schema(&v);
    if !problems.is_empty() {
        return Err(problems
            .into_iter()
            .map(|p| RecordError { file: file.to_path_buf(), line: line_no, id: id.clone(), field: p.field, message: p.message })
            .collect());
    }
    serde_json::from_value(v)
        .map_err(|e| vec![RecordError { file: file.to_path_buf(), line: line_no, id, field: None, message: e.to_string() }])
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text))
}

/// Reads a JSONL file of schema-v1 records. Blank lines are skipped. Every invalid line is
/// reported (file, line, id when readable, field); any invalid line makes this an error.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<(usize, Dialogue)>, DataError> {
    let path = path.as_ref();
    let text = read_to_string(path)?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_dialogue(path, i + 1, line) {
            Ok(d) => out.push((i + 1, d)),
            Err(mut es) => errors.append(&mut es),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(DataError::from_records(errors))
    }
}

/// The `.jsonl` files named by `paths`: a file is taken as is, a directory gives its `*.jsonl`
/// files (not recursive), sorted by name.
pub fn jsonl_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let meta = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(p).map_err(|e| DataError::io(p, e))? {
                let entry = entry.map_err(|e| DataError::io(p, e))?;
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "jsonl") && path.is_file() {
                    files.push(path);
                }
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(p.to_path_buf());
        }
    }
    // A file named twice (directly and through its directory) is read once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    Ok(out)
}

/// Reads every record of every file in `paths` (see [`jsonl_files`]), in file and line order.
/// Invalid records in any file are all reported together.
pub fn read_dialogues<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Located<Dialogue>>, DataError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for file in jsonl_files(paths)? {
        match read_jsonl(&file) {
            Ok(records) => out.extend(records.into_iter().map(|(line, record)| Located { file: file.clone(), line, record })),
            Err(e @ DataError::Io { .. }) => return Err(e),
            Err(e) => errors.extend(e.record_errors().into_iter().cloned()),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(DataError::from_records(errors))
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it under a name no other writer
/// uses, fsynced, renamed over `path`, the directory fsynced (the workspace's one writer,
/// `bedside_io`). On failure `path` is untouched and no temporary is left.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), DataError> {
    let path = path.as_ref();
    bedside_io::write_atomic(path, bytes).map_err(|e| DataError::io(path, e))
}

/// Writes `records` as JSONL (one compact JSON object per line) to `path` atomically
/// (see [`write_atomic`]).
pub fn write_jsonl_atomic<T: Serialize>(path: impl AsRef<Path>, records: &[T]) -> Result<(), DataError> {
    let path = path.as_ref();
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r)
            .map_err(|e| DataError::Invalid(format!("{}: cannot serialise a record: {e}", path.display())))?;
        buf.push(b'\n');
    }
    write_atomic(path, &buf)
}

/// Writes each record back to the file it was read from: `records[i]` replaces the record of
/// `origins[i]` (as [`read_dialogues`] returns them: one file's records consecutive, in line
/// order). Each file is rewritten atomically (see [`write_atomic`]) with its records in their
/// original order.
pub fn write_back_in_place<T: Serialize, U>(origins: &[Located<U>], records: &[T]) -> Result<(), DataError> {
    if origins.len() != records.len() {
        return Err(DataError::Invalid(format!("cannot write {} records back over the {} that were read", records.len(), origins.len())));
    }
    let mut by_file: Vec<(&Path, Vec<&T>)> = Vec::new();
    for (origin, record) in origins.iter().zip(records) {
        match by_file.last_mut() {
            Some((file, rs)) if *file == origin.file.as_path() => rs.push(record),
            _ => by_file.push((origin.file.as_path(), vec![record])),
        }
    }
    for (file, rs) in by_file {
        write_jsonl_atomic(file, &rs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Value {
        serde_json::to_value(Dialogue { id: "x-1".into(), split: "train".into(), ..Dialogue::default() }).unwrap()
    }

    #[test]
    fn schema_problems_name_fields() {
        assert!(check_schema(&good()).is_empty());
        let mut v = good();
        if let Some(o) = v.as_object_mut() {
            o.remove("answer");
            o.insert("split".into(), Value::from("dev"));
            o.insert("key_facts".into(), serde_json::json!(["a", 3]));
            o.insert("schema_version".into(), Value::from(2));
        }
        let fields: Vec<String> = check_schema(&v).into_iter().filter_map(|p| p.field).collect();
        assert_eq!(fields, ["schema_version", "answer", "split", "key_facts[1]"]);
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let mut v = good();
        if let Some(o) = v.as_object_mut() {
            o.insert("note".into(), Value::from("kept"));
        }
        let line = v.to_string();
        let d = parse_dialogue(Path::new("f.jsonl"), 1, &line).unwrap();
        assert_eq!(d.extra.get("note"), Some(&Value::from("kept")));
        assert_eq!(serde_json::to_value(&d).unwrap(), v);
    }
}
