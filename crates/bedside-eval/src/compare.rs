//! `bedside eval compare RUN_A RUN_B`: the differences between two runs' `results.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::results::SCHEMA_VERSION;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub section: String,
    pub system: String,
    pub measure: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    pub diff: Option<f64>,
}

/// A run directory or a results.json file.
pub fn results_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("results.json")
    } else {
        p.to_path_buf()
    }
}

pub fn load(p: &Path) -> Result<Value> {
    let path = results_path(p);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read (is it a run directory?)", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    match v.get("schema_version").and_then(Value::as_u64) {
        Some(n) if n == SCHEMA_VERSION as u64 => Ok(v),
        Some(n) => bail!("{}: schema_version {n}, this bedside reads {SCHEMA_VERSION}", path.display()),
        None => bail!("{}: field `schema_version`: missing; not a bedside results.json", path.display()),
    }
}

fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

pub fn compare(a: &Value, b: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut push = |section: &str, system: &str, measure: &str, x: Option<f64>, y: Option<f64>| {
        if x.is_none() && y.is_none() {
            return;
        }
        let diff = match (x, y) {
            (Some(x), Some(y)) => Some(y - x),
            _ => None,
        };
        rows.push(Row { section: section.into(), system: system.into(), measure: measure.into(), a: x, b: y, diff });
    };
    let empty = serde_json::Map::new();
    let ps_a = a.get("per_system").and_then(Value::as_object).unwrap_or(&empty);
    let ps_b = b.get("per_system").and_then(Value::as_object).unwrap_or(&empty);
    let mut measures: Vec<&String> = ps_a.keys().chain(ps_b.keys()).collect();
    measures.sort();
    measures.dedup();
    for m in measures {
        let sa = ps_a.get(m).and_then(Value::as_object).unwrap_or(&empty);
        let sb = ps_b.get(m).and_then(Value::as_object).unwrap_or(&empty);
        let mut systems: Vec<&String> = sa.keys().chain(sb.keys()).collect();
        systems.sort();
        systems.dedup();
        for s in systems {
            push("mean", s, m, num(sa.get(s).and_then(|x| x.get("mean"))), num(sb.get(s).and_then(|x| x.get("mean"))));
        }
    }
    let comps = |v: &Value| -> Vec<(String, String, Option<f64>)> {
        v.get("comparisons")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c.get("system").and_then(Value::as_str).unwrap_or("").to_string(),
                            c.get("measure").and_then(Value::as_str).unwrap_or("").to_string(),
                            num(c.get("diff")),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let ca = comps(a);
    let cb = comps(b);
    let mut keys: Vec<(String, String)> = ca.iter().chain(cb.iter()).map(|(s, m, _)| (s.clone(), m.clone())).collect();
    keys.sort();
    keys.dedup();
    for (s, m) in keys {
        let x = ca.iter().find(|c| c.0 == s && c.1 == m).and_then(|c| c.2);
        let y = cb.iter().find(|c| c.0 == s && c.1 == m).and_then(|c| c.2);
        push("diff vs baseline", &s, &m, x, y);
    }
    for (sec, field) in [("bleu", "bleu")] {
        let fa = a.get(field).and_then(Value::as_object).unwrap_or(&empty);
        let fb = b.get(field).and_then(Value::as_object).unwrap_or(&empty);
        let mut systems: Vec<&String> = fa.keys().chain(fb.keys()).collect();
        systems.sort();
        systems.dedup();
        for s in systems {
            push(sec, s, "corpus_bleu", num(fa.get(s)), num(fb.get(s)));
        }
    }
    let sa = a.get("safety").and_then(Value::as_object).unwrap_or(&empty);
    let sb = b.get("safety").and_then(Value::as_object).unwrap_or(&empty);
    let mut systems: Vec<&String> = sa.keys().chain(sb.keys()).collect();
    systems.sort();
    systems.dedup();
    for s in systems {
        push("safety", s, "pass_rate", num(sa.get(s).and_then(|x| x.get("rate"))), num(sb.get(s).and_then(|x| x.get("rate"))));
    }
    rows
}

pub fn format_table(rows: &[Row], a_name: &str, b_name: &str) -> String {
    let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.4}"));
    let mut table = vec![vec!["section".to_string(), "system".into(), "measure".into(), a_name.into(), b_name.into(), "B − A".into()]];
    for r in rows {
        table.push(vec![
            r.section.clone(),
            r.system.clone(),
            r.measure.clone(),
            f(r.a),
            f(r.b),
            r.diff.map_or("–".into(), |d| format!("{d:+.4}")),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|i| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, r) in table.iter().enumerate() {
        let cells: Vec<String> = r.iter().enumerate().map(|(j, c)| format!("{c:<w$}", w = widths[j])).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diffs_two_runs() {
        let a = json!({"schema_version": 1, "per_system": {"empathy": {"base": {"mean": 0.5}, "tuned": {"mean": 0.8}}},
            "comparisons": [{"system": "tuned", "measure": "empathy", "diff": 0.3}], "bleu": {"base": 10.0}, "safety": {}});
        let b = json!({"schema_version": 1, "per_system": {"empathy": {"base": {"mean": 0.5}, "tuned": {"mean": 1.0}}},
            "comparisons": [{"system": "tuned", "measure": "empathy", "diff": 0.5}], "bleu": {"base": 12.5}, "safety": {}});
        let rows = compare(&a, &b);
        let t = rows.iter().find(|r| r.section == "mean" && r.system == "tuned").unwrap();
        assert!((t.diff.unwrap() - 0.2).abs() < 1e-12);
        let d = rows.iter().find(|r| r.section == "diff vs baseline").unwrap();
        assert!((d.diff.unwrap() - 0.2).abs() < 1e-12);
        let bl = rows.iter().find(|r| r.section == "bleu").unwrap();
        assert_eq!(bl.diff, Some(2.5));
        assert!(format_table(&rows, "A", "B").contains("+0.2000"));
    }

    #[test]
    fn rejects_other_schema() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("results.json"), "{\"schema_version\": 99}").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("schema_version 99"), "{e}");
    }
}
