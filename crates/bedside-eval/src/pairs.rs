//! The input of `bedside eval score`: JSON lines of (context, response) pairs, optionally with
//! the reference answer and the key facts the response should convey, and the knowledge
//! measures computed from those ([`knowledge`]).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bedside_embed::Embedder;
use serde::{Deserialize, Serialize};

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

/// The knowledge measures of one response, as `eval run` computes them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Knowledge {
    /// ROUGE-L F1 against `reference` (when given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rouge_l: Option<f64>,
    /// MiniLM cosine with `reference` (when given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// Share of `key_facts` stated and not contradicted (when given and non-empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fact_recall: Option<f64>,
    /// Per fact: conveyed, contradicted, best cosine.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_facts: Vec<bedside_metrics::keyfacts::FactMatch>,
}

/// The knowledge measures of every record that has a reference or key facts (`None` for the
/// others), at the documented key-fact threshold. Every text is embedded once.
pub fn knowledge(records: &[PairRecord], embedder: &Embedder) -> Result<Vec<Option<Knowledge>>> {
    let sentences: Vec<Vec<String>> = records.iter().map(|r| bedside_metrics::split_sentences(&r.response)).collect();
    let mut texts: Vec<&str> = Vec::new();
    for (r, sents) in records.iter().zip(&sentences) {
        if let Some(reference) = &r.reference {
            texts.extend([r.response.as_str(), reference.as_str()]);
        }
        if let Some(facts) = &r.key_facts {
            texts.extend(facts.iter().map(String::as_str));
            texts.extend(sents.iter().map(String::as_str));
        }
    }
    let table = embedder.embed_distinct(texts).context("embedding responses, references and key facts")?;
    let emb = |t: &str| table.get(t).context("a text to score was not embedded");
    let threshold = bedside_metrics::keyfacts::DEFAULT_THRESHOLD;
    let mut out = Vec::with_capacity(records.len());
    for (r, sents) in records.iter().zip(&sentences) {
        if r.reference.is_none() && r.key_facts.as_ref().is_none_or(|f| f.is_empty()) {
            out.push(None);
            continue;
        }
        let mut k = Knowledge { rouge_l: None, similarity: None, key_fact_recall: None, key_facts: vec![] };
        if let Some(reference) = &r.reference {
            k.rouge_l = Some(bedside_metrics::rouge_l_f1(reference, &r.response));
            k.similarity = Some(bedside_embed::cosine(emb(&r.response)?, emb(reference)?) as f64);
        }
        if let Some(facts) = r.key_facts.as_ref().filter(|f| !f.is_empty()) {
            let facts: Vec<&str> = facts.iter().map(String::as_str).collect();
            let recall = crate::scoring::key_facts(&facts, sents, &emb, threshold)?;
            k.key_fact_recall = recall.recall;
            k.key_facts = recall.facts;
        }
        out.push(Some(k));
    }
    Ok(out)
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
        let e =
            parse_pairs(&format!("{ok}\n{}", ok.replace("\"a\"", "\"b\"").replace("\"response\":\"r\",", "")), f).unwrap_err().to_string();
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
