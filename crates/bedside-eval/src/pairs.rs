//! The input of `bedside eval score`: JSON lines of (context, response) pairs, optionally with
//! the reference answer and the key facts the response should convey.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;

/// One input line of `bedside eval score`. Unknown fields are ignored (the input may carry
/// other columns of the user's data).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct PairRecord {
    pub id: String,
    /// The patient's message.
    pub context: String,
    pub response: String,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub key_facts: Option<Vec<String>>,
}

/// Parse `bedside eval score` input; errors name file:line and the field.
pub fn parse_pairs(text: &str, file: &Path) -> Result<Vec<PairRecord>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => bail!("{}:{line}: not valid JSON: {e}", file.display()),
        };
        if !v.is_object() {
            bail!("{}:{line}: expected a JSON object", file.display());
        }
        let rec: PairRecord = match serde_path_to_error::deserialize(v) {
            Ok(r) => r,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    bail!("{}:{line}: {inner}", file.display());
                }
                bail!("{}:{line}: field `{path}`: {inner}", file.display());
            }
        };
        if !seen.insert(rec.id.clone()) {
            bail!("{}:{line}: field `id`: duplicate id {:?}", file.display(), rec.id);
        }
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_errors_name_line_and_field() {
        let f = Path::new("p.jsonl");
        let ok = r#"{"id":"a","context":"c","response":"r","reference":"ref","key_facts":["x"],"extra":1}"#;
        let r = parse_pairs(ok, f).unwrap();
        assert_eq!(r[0].key_facts.as_deref(), Some(&["x".to_string()][..]));
        let e = parse_pairs(&format!("{ok}\n{}", ok.replace("\"a\"", "\"b\"").replace("\"response\":\"r\",", "")), f).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:2") && e.contains("`response`"), "{e}");
        let e = parse_pairs(&ok.replace("[\"x\"]", "[1]"), f).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:1") && e.contains("key_facts[0]"), "{e}");
        let e = parse_pairs(&ok.replace("\"ref\"", "3"), f).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:1") && e.contains("`reference`"), "{e}");
        let e = parse_pairs(&format!("{ok}\n{ok}"), f).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:2") && e.contains("duplicate"), "{e}");
        let e = parse_pairs("[1]", f).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:1") && e.contains("object"), "{e}");
        let e = parse_pairs("{\"id\":", f).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:1") && e.contains("JSON"), "{e}");
    }
}
