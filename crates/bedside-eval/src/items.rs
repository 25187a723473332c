//! The items every system answers: the test split of the dialogue corpus, the safety set and the
//! equity probes, in one shape.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::EvalConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Set {
    Test,
    Safety,
    Equity,
}

impl Set {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Set::Test => "test",
            Set::Safety => "safety",
            Set::Equity => "equity",
        }
    }
}

/// A safety item's rules (read by [`crate::safety::check`]): every group of `must_contain` needs
/// an affirmed mention of one alternative; no `must_not_contain` phrase and no `must_not_match`
/// pattern may be affirmed.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SafetyRules {
    pub category: String,
    pub must_contain: Vec<Vec<String>>,
    pub must_not_contain: Vec<String>,
    pub must_not_match: Vec<crate::safety::Pattern>,
}

/// An equity probe's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct EquityLabels {
    pub base_id: String,
    /// `control` or e.g. `black_female`.
    pub group: String,
    /// `none`, `explicit`, `implicit`.
    pub cue: String,
    pub race: String,
    pub gender: String,
    /// Which of the k samples of this probe.
    pub sample: usize,
}

impl EquityLabels {
    /// `control` or `<group>-<cue>`.
    pub(crate) fn variant(&self) -> String {
        if self.group == "control" {
            "control".into()
        } else {
            format!("{}-{}", self.group, self.cue)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EvalItem {
    /// `<set>/<id>` (samples beyond the first: `#<k>`), unique in a run.
    pub key: String,
    /// The key of the item this is a sample of (`key` without `#<k>`): statistics are
    /// clustered by it.
    pub unit: String,
    /// Which of the answers sampled for the item (0 for the first).
    pub sample: usize,
    pub set: Set,
    pub id: String,
    /// The patient's message.
    pub prompt: String,
    pub emotion: String,
    pub specialty: String,
    /// The comforting reference answer (test split), or the safe reference answer (safety set).
    pub reference: Option<String>,
    /// The neutral patient message and answer, for the perplexity of the neutral answer.
    pub neutral_prompt: Option<String>,
    pub neutral_answer: Option<String>,
    pub key_facts: Vec<String>,
    pub safety: Option<SafetyRules>,
    pub equity: Option<EquityLabels>,
}

/// Evenly spaced picks, so a limited run still spans specialties.
fn spread<T: Clone>(v: &[T], limit: Option<usize>) -> Vec<T> {
    match limit {
        Some(n) if n < v.len() => (0..n).map(|i| v[i * v.len() / n].clone()).collect(),
        _ => v.to_vec(),
    }
}

/// Every item of the configured sets, in a fixed order (test, safety, equity).
pub(crate) fn load_items(cfg: &EvalConfig) -> Result<Vec<EvalItem>> {
    let mut items = Vec::new();
    if let Some(t) = &cfg.sets.test {
        let files = bedside_data::jsonl_files(&t.paths)?;
        let dialogues = bedside_data::read_dialogues(&files).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut picked: Vec<_> = dialogues.into_iter().filter(|d| d.record.split == t.split).collect();
        picked.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        if picked.is_empty() {
            bail!("sets.test: no dialogues with split `{}` in {:?}", t.split, t.paths);
        }
        for d in spread(&picked, t.limit) {
            let r = d.record;
            let key = format!("test/{}", r.id);
            items.push(EvalItem {
                unit: key.clone(),
                sample: 0,
                key,
                set: Set::Test,
                id: r.id,
                prompt: r.patient,
                emotion: r.emotion,
                specialty: r.specialty,
                reference: Some(r.answer),
                neutral_prompt: Some(r.patient_neutral),
                neutral_answer: Some(r.answer_neutral),
                key_facts: r.key_facts,
                safety: None,
                equity: None,
            });
        }
    }
    // Further samples of every test item: the same prompt, another seed (the key's `#k`).
    let first_samples: Vec<EvalItem> = items.clone();
    for k in 1..cfg.samples_per_item {
        for it in &first_samples {
            let mut q = it.clone();
            q.key = format!("{}#{k}", it.key);
            q.sample = k;
            items.push(q);
        }
    }
    if let Some(s) = &cfg.sets.safety {
        let all = read_safety(&s.path)?;
        items.extend(spread(&all, s.limit));
    }
    if let Some(e) = &cfg.sets.equity {
        let probes = read_equity(&e.path)?;
        // Every probe read by `read_equity` has its labels.
        let base_of = |p: &EvalItem| p.equity.as_ref().map(|e| e.base_id.clone()).unwrap_or_default();
        let mut bases: Vec<String> = Vec::new();
        for p in &probes {
            let b = base_of(p);
            if !bases.contains(&b) {
                bases.push(b);
            }
        }
        let keep = spread(&bases, e.limit);
        for p in probes.into_iter().filter(|p| keep.contains(&base_of(p))) {
            for k in 0..cfg.equity.samples_per_probe {
                let mut q = p.clone();
                q.sample = k;
                if k > 0 {
                    q.key = format!("{}#{k}", p.key);
                }
                if let Some(labels) = q.equity.as_mut() {
                    labels.sample = k;
                }
                items.push(q);
            }
        }
    }
    let mut seen = BTreeSet::new();
    for it in &items {
        if !seen.insert(it.key.clone()) {
            bail!("duplicate item id `{}` in the {} set", it.id, it.set.as_str());
        }
    }
    Ok(items)
}

fn lines(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{}:{}: invalid JSON: {e}", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

fn field_str(path: &Path, line: usize, v: &Value, f: &str) -> Result<String> {
    match v.get(f) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => bail!("{}:{line}: field `{f}`: expected a string", path.display()),
        None => bail!("{}:{line}: field `{f}`: missing required field", path.display()),
    }
}

fn field_strs(path: &Path, line: usize, v: &Value, f: &str) -> Result<Vec<String>> {
    let arr = v
        .get(f)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow::anyhow!("{}:{line}: field `{f}`: expected an array of strings", path.display()))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("{}:{line}: field `{f}[{i}]`: expected a string", path.display()))
        })
        .collect()
}

/// `data/eval/safety.jsonl`: id, category, emotion, prompt, must_contain (groups), must_not_contain.
pub(crate) fn read_safety(path: &Path) -> Result<Vec<EvalItem>> {
    let mut out = Vec::new();
    for (line, v) in lines(path)? {
        let id = field_str(path, line, &v, "id")?;
        let groups = v
            .get("must_contain")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("{}:{line}: field `must_contain`: expected an array of arrays of strings", path.display()))?;
        let mut must = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let alts = g
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("{}:{line}: field `must_contain[{gi}]`: expected an array of strings", path.display()))?;
            let alts: Option<Vec<String>> = alts.iter().map(|a| a.as_str().map(str::to_string)).collect();
            let alts = alts.filter(|a| !a.is_empty()).ok_or_else(|| {
                anyhow::anyhow!("{}:{line}: field `must_contain[{gi}]`: expected a non-empty array of strings", path.display())
            })?;
            must.push(alts);
        }
        let reference = match v.get("reference") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) => Some(r.clone()),
            Some(_) => bail!("{}:{line}: field `reference`: expected a string", path.display()),
        };
        let must_not_match = match v.get("must_not_match") {
            None | Some(Value::Null) => vec![],
            Some(_) => field_strs(path, line, &v, "must_not_match")?
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    crate::safety::Pattern::new(p).map_err(|e| {
                        anyhow::anyhow!("{}:{line}: field `must_not_match[{i}]`: not a valid regular expression: {e}", path.display())
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let key = format!("safety/{id}");
        out.push(EvalItem {
            unit: key.clone(),
            sample: 0,
            key,
            set: Set::Safety,
            prompt: field_str(path, line, &v, "prompt")?,
            emotion: field_str(path, line, &v, "emotion").unwrap_or_default(),
            specialty: String::new(),
            reference,
            neutral_prompt: None,
            neutral_answer: None,
            key_facts: vec![],
            safety: Some(SafetyRules {
                category: field_str(path, line, &v, "category")?,
                must_contain: must,
                must_not_contain: field_strs(path, line, &v, "must_not_contain")?,
                must_not_match,
            }),
            equity: None,
            id,
        });
    }
    Ok(out)
}

/// `data/eval/equity-probes.jsonl` (from `bedside data equity-probes`).
pub(crate) fn read_equity(path: &Path) -> Result<Vec<EvalItem>> {
    let mut out = Vec::new();
    for (line, v) in lines(path)? {
        let id = field_str(path, line, &v, "id")?;
        let labels = EquityLabels {
            base_id: field_str(path, line, &v, "base_id")?,
            group: field_str(path, line, &v, "group")?,
            cue: field_str(path, line, &v, "cue")?,
            race: field_str(path, line, &v, "race")?,
            gender: field_str(path, line, &v, "gender")?,
            sample: 0,
        };
        let key = format!("equity/{id}");
        out.push(EvalItem {
            unit: key.clone(),
            sample: 0,
            key,
            set: Set::Equity,
            prompt: field_str(path, line, &v, "text")?,
            emotion: String::new(),
            specialty: v.get("specialty").and_then(Value::as_str).unwrap_or_default().to_string(),
            reference: None,
            neutral_prompt: None,
            neutral_answer: None,
            key_facts: vec![],
            safety: None,
            equity: Some(labels),
            id,
        });
    }
    if !out.iter().any(|i| i.equity.as_ref().is_some_and(|e| e.group == "control")) {
        bail!("{}: no `control` probes; the equity gaps need the unmarked control", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_evenly() {
        let v: Vec<usize> = (0..10).collect();
        assert_eq!(spread(&v, Some(3)), vec![0, 3, 6]);
        assert_eq!(spread(&v, Some(20)).len(), 10);
        assert_eq!(spread(&v, None).len(), 10);
    }

    #[test]
    fn safety_errors_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        std::fs::write(&p, "{\"id\":\"a\",\"category\":\"c\",\"prompt\":\"p\",\"must_contain\":[[\"x\"]],\"must_not_contain\":[]}\n{\"id\":\"b\",\"category\":\"c\",\"prompt\":\"p\",\"must_contain\":[[]],\"must_not_contain\":[]}\n").unwrap();
        let e = read_safety(&p).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("must_contain[0]"), "{e}");
        std::fs::write(&p, "{\"id\":\"a\",\"category\":\"c\",\"prompt\":\"p\",\"must_contain\":[[\"x\"]],\"must_not_contain\":[],\"must_not_match\":[\"stop (\"]}\n").unwrap();
        let e = read_safety(&p).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("must_not_match[0]"), "{e}");
    }
}
