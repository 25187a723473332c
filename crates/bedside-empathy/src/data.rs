//! Readers for the labelled training pairs (JSON lines) and the EPITOME validation CSVs.
//! Every error names the file, the line and the field.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::heads::MECHANISMS;

/// One labelled (context, response) pair.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledPair {
    pub id: String,
    pub domain: Option<String>,
    pub context: String,
    pub response: String,
    /// ER, IP, EX levels in 0..=2.
    pub labels: [u8; 3],
}

fn str_field(obj: &serde_json::Map<String, Value>, key: &str, file: &Path, line: usize) -> Result<String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("{}:{line}: field `{key}` must be a string, found {}", file.display(), kind(other)),
        None => bail!("{}:{line}: missing field `{key}`", file.display()),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A level field: the integer 0, 1 or 2.
pub fn level_field(obj: &serde_json::Map<String, Value>, key: &str, file: &Path, line: usize) -> Result<u8> {
    match obj.get(key) {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v @ 0..=2) => Ok(v as u8),
            _ => bail!("{}:{line}: field `{key}` must be 0, 1 or 2, found {n}", file.display()),
        },
        Some(other) => bail!("{}:{line}: field `{key}` must be 0, 1 or 2, found {}", file.display(), kind(other)),
        None => bail!("{}:{line}: missing field `{key}`", file.display()),
    }
}

/// Parse labelled JSON lines from `text` (blank lines skipped).
pub fn parse_labelled(text: &str, file: &Path) -> Result<Vec<LabelledPair>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(raw).with_context(|| format!("{}:{line}: not valid JSON", file.display()))?;
        let Value::Object(obj) = v else { bail!("{}:{line}: expected a JSON object", file.display()) };
        let id = str_field(&obj, "id", file, line)?;
        let context = str_field(&obj, "context", file, line)?;
        let response = str_field(&obj, "response", file, line)?;
        if response.trim().is_empty() {
            bail!("{}:{line}: field `response` is empty", file.display());
        }
        let domain = match obj.get("domain") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => bail!("{}:{line}: field `domain` must be a string, found {}", file.display(), kind(other)),
        };
        let labels = [
            level_field(&obj, MECHANISMS[0], file, line)?,
            level_field(&obj, MECHANISMS[1], file, line)?,
            level_field(&obj, MECHANISMS[2], file, line)?,
        ];
        out.push(LabelledPair { id, domain, context, response, labels });
    }
    Ok(out)
}

/// Read labelled pairs from several files, in the order given; duplicate ids are an error.
/// Also returns the SHA-256 of the files' bytes, concatenated in that order.
pub fn read_labelled(files: &[PathBuf]) -> Result<(Vec<LabelledPair>, String)> {
    let mut all = Vec::new();
    let mut h = Sha256::new();
    let mut seen = std::collections::HashMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        h.update(text.as_bytes());
        for (k, p) in parse_labelled(&text, f)?.into_iter().enumerate() {
            if let Some(prev) = seen.insert(p.id.clone(), (f.clone(), k)) {
                bail!("{}: duplicate id {:?} (first seen in {})", f.display(), p.id, prev.0.display());
            }
            all.push(p);
        }
    }
    if all.is_empty() {
        bail!("no labelled pairs in {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let digest = h.finalize();
    Ok((all, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// `data/empathy/labelled-part-*.jsonl` under `root`, sorted by name.
pub fn labelled_parts(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("data/empathy");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|s| s.to_str()).is_some_and(|s| s.starts_with("labelled-part-") && s.ends_with(".jsonl")))
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("no labelled-part-*.jsonl files in {}", dir.display());
    }
    Ok(v)
}

/// One EPITOME row.
#[derive(Clone, Debug, PartialEq)]
pub struct EpitomeRow {
    pub sp_id: String,
    pub rp_id: String,
    pub seeker_post: String,
    pub response_post: String,
    pub level: u8,
}

/// The EPITOME file for each mechanism (ER, IP, EX).
pub const EPITOME_FILES: [&str; 3] = ["emotional-reactions-reddit.csv", "interpretations-reddit.csv", "explorations-reddit.csv"];

/// Parse one EPITOME CSV (header `sp_id,rp_id,seeker_post,response_post,level,rationales`;
/// quoted fields may span lines).
pub fn read_epitome_csv<R: std::io::Read>(reader: R, file: &Path) -> Result<Vec<EpitomeRow>> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader);
    let headers = rdr.headers().with_context(|| format!("{}: cannot read the CSV header", file.display()))?.clone();
    let col = |name: &str| -> Result<usize> {
        headers.iter().position(|h| h.trim() == name).with_context(|| format!("{}:1: header lacks column `{name}`", file.display()))
    };
    let (c_sp, c_rp, c_seek, c_resp, c_level) = (col("sp_id")?, col("rp_id")?, col("seeker_post")?, col("response_post")?, col("level")?);
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            anyhow::anyhow!("{}:{line}: malformed CSV record: {e}", file.display())
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        let get = |c: usize, name: &str| -> Result<String> {
            rec.get(c).map(str::to_string).with_context(|| format!("{}:{line}: missing field `{name}`", file.display()))
        };
        let level_s = get(c_level, "level")?;
        let level = match level_s.trim().parse::<f64>() {
            Ok(v) if v == 0.0 || v == 1.0 || v == 2.0 => v as u8,
            _ => bail!("{}:{line}: field `level` must be 0, 1 or 2, found {level_s:?}", file.display()),
        };
        out.push(EpitomeRow {
            sp_id: get(c_sp, "sp_id")?,
            rp_id: get(c_rp, "rp_id")?,
            seeker_post: get(c_seek, "seeker_post")?,
            response_post: get(c_resp, "response_post")?,
            level,
        });
    }
    Ok(out)
}

/// The three EPITOME files from `dir`, in ER, IP, EX order.
pub fn read_epitome(dir: &Path) -> Result<[Vec<EpitomeRow>; 3]> {
    let mut out = Vec::new();
    for name in EPITOME_FILES {
        let p = dir.join(name);
        let f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        out.push(read_epitome_csv(std::io::BufReader::new(f), &p)?);
    }
    let [a, b, c]: [Vec<EpitomeRow>; 3] = out.try_into().map_err(|_| anyhow::anyhow!("three files expected"))?;
    Ok([a, b, c])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoted_multiline_fields() {
        let text = "sp_id,rp_id,seeker_post,response_post,level,rationales\n\
                    a1,b1,\"Line one,\nline two \"\"quoted\"\"\",\"Reply?\nYes.\",2,Reply?|\n\
                    a2,b2,plain,also plain,0,\n";
        let rows = read_epitome_csv(text.as_bytes(), Path::new("t.csv")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].seeker_post, "Line one,\nline two \"quoted\"");
        assert_eq!(rows[0].response_post, "Reply?\nYes.");
        assert_eq!(rows[0].level, 2);
        assert_eq!(rows[1].rp_id, "b2");
    }

    #[test]
    fn csv_bad_level_names_line_and_field() {
        let text = "sp_id,rp_id,seeker_post,response_post,level,rationales\na,b,\"x\ny\",z,3,\n";
        let e = read_epitome_csv(text.as_bytes(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(e.contains("t.csv:2") && e.contains("`level`"), "{e}");
        let text = "sp_id,rp_id,seeker_post,level\na,b,c,1\n";
        let e = read_epitome_csv(text.as_bytes(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(e.contains("response_post"), "{e}");
    }

    #[test]
    fn labelled_errors_name_line_and_field() {
        let f = Path::new("l.jsonl");
        let ok =
            r#"{"id":"a","domain":"medical","context":"c","response":"r","emotional_reactions":1,"interpretations":0,"explorations":2}"#;
        assert_eq!(parse_labelled(ok, f).unwrap()[0].labels, [1, 0, 2]);
        let bad = format!("{ok}\n\n{}", ok.replace("\"interpretations\":0", "\"interpretations\":3"));
        let e = parse_labelled(&bad, f).unwrap_err().to_string();
        assert!(e.contains("l.jsonl:3") && e.contains("`interpretations`"), "{e}");
        let e = parse_labelled(&ok.replace("\"response\":\"r\",", ""), f).unwrap_err().to_string();
        assert!(e.contains("l.jsonl:1") && e.contains("`response`"), "{e}");
        let e = parse_labelled("{not json", f).unwrap_err().to_string();
        assert!(e.contains("l.jsonl:1"), "{e}");
        let e = parse_labelled(&ok.replace("\"explorations\":2", "\"explorations\":\"2\""), f).unwrap_err().to_string();
        assert!(e.contains("`explorations`") && e.contains("a string"), "{e}");
    }
}
