//! `bedside data validate`: checks a corpus and reports problems.
//!
//! **Errors** (make `validate` fail):
//! * `json`: a line that is not JSON; `schema`: a required field missing or of the wrong type,
//!   `schema_version` ≠ 1, `split` not `train`/`validation`/`test` (or empty), an empty `id`, an
//!   empty `patient_neutral` or `answer_neutral`;
//! * `duplicate-id`;
//! * `exact-duplicate`: the same `patient`, `answer`, `patient_neutral` or `answer_neutral` text
//!   (whitespace collapsed) in two records;
//! * `near-duplicate`: word 5-gram Jaccard ≥ 0.8 between two records' `patient` + `answer`
//!   (each falling back to its neutral text while empty);
//! * `leakage`: a `test` record's condition (lower-cased, whitespace collapsed) also occurs in
//!   `train` or `validation`;
//! * `key-fact`: a content word of a key fact (see [`crate::text`]) missing from `answer`, or from
//!   `answer_neutral` when that is present;
//! * `numbers`: a number of `answer_neutral` missing from `answer`, or a number in `answer` found in
//!   neither `answer_neutral` nor `patient`.
//!
//! **Warnings** (printed; fail only with `--strict`): `unknown-field`, `incomplete` (empty
//! `split`, `patient`, `answer`, `emotion`, `specialty`, `condition`, or no key facts in a
//! rewritten record), `red-flag` (a red flag's content words missing from an answer),
//! `patient-numbers` (a number of `patient_neutral` missing from `patient`), `length` (word count
//! outside the bounds), `balance` (an emotion's or specialty's count in a split more than 50% away
//! from the mean count for that split; categories are those seen anywhere in the input, so one
//! absent from a split is flagged).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::DataError;
use crate::record::{check_schema, json_error_message, jsonl_files, read_to_string, Dialogue, FIELDS};
use crate::text;

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// Near-duplicate threshold on word-shingle Jaccard similarity.
    pub near_duplicate_threshold: f64,
    /// Shingle length in words.
    pub shingle_words: usize,
    /// Balance tolerance: flag counts further than this fraction from the split's mean.
    pub balance_tolerance: f64,
    /// Word-count bounds (inclusive) for `patient` and `patient_neutral`.
    pub patient_words: (usize, usize),
    /// Word-count bounds (inclusive) for `answer` and `answer_neutral`.
    pub answer_words: (usize, usize),
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            near_duplicate_threshold: 0.8,
            shingle_words: 5,
            balance_tolerance: 0.5,
            patient_words: (8, 300),
            answer_words: (30, 400),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding. Record-level findings carry `file`, `line` and `id`.
#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    pub severity: Severity,
    /// The check: `json`, `schema`, `duplicate-id`, `exact-duplicate`, `near-duplicate`,
    /// `leakage`, `key-fact`, `numbers`, `unknown-field`, `incomplete`, `red-flag`,
    /// `patient-numbers`, `length`, `balance`.
    pub check: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub id: Option<String>,
    pub field: Option<String>,
    pub message: String,
    #[serde(skip)]
    file_index: usize,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}[{}]", self.check)?;
        if let Some(file) = &self.file {
            write!(f, " {file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
        }
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        if let Some(field) = &self.field {
            write!(f, " `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The result of a validation run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub files: Vec<String>,
    /// Lines holding a record (valid or not).
    pub records: usize,
    pub errors: usize,
    pub warnings: usize,
    /// Records per split (`""`: unassigned).
    pub per_split: BTreeMap<String, usize>,
    /// split → emotion → count, over every emotion seen in the input.
    pub emotion_by_split: BTreeMap<String, BTreeMap<String, usize>>,
    /// split → specialty → count, over every specialty seen in the input.
    pub specialty_by_split: BTreeMap<String, BTreeMap<String, usize>>,
    /// Errors first, then warnings; each in file and line order.
    pub issues: Vec<Issue>,
}

impl Report {
    /// Whether the run passes: no errors, and with `strict` no warnings either.
    pub fn passes(&self, strict: bool) -> bool {
        self.errors == 0 && (!strict || self.warnings == 0)
    }

    /// The issues of one check.
    pub fn issues_of<'a>(&'a self, check: &'a str) -> impl Iterator<Item = &'a Issue> + 'a {
        self.issues.iter().filter(move |i| i.check == check)
    }

    /// A readable report; at most `max_per_check` issues of each check and severity are listed.
    pub fn to_text(&self, max_per_check: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{} records in {} file{}", self.records, self.files.len(), if self.files.len() == 1 { "" } else { "s" });
        let splits: Vec<String> =
            ordered_splits(self.per_split.keys()).into_iter().map(|k| format!("{} {}", split_label(k), self.per_split[k])).collect();
        let _ = writeln!(s, "per split: {}", splits.join(", "));
        for (title, table) in [("emotion", &self.emotion_by_split), ("specialty", &self.specialty_by_split)] {
            s.push_str(&count_table(title, table));
        }
        let mut shown: BTreeMap<(Severity, &str), usize> = BTreeMap::new();
        for sev in [Severity::Error, Severity::Warning] {
            let n = if sev == Severity::Error { self.errors } else { self.warnings };
            if n == 0 {
                continue;
            }
            let _ = writeln!(s, "\n{} ({n}):", if sev == Severity::Error { "errors" } else { "warnings" });
            for issue in self.issues.iter().filter(|i| i.severity == sev) {
                let k = shown.entry((sev, issue.check.as_str())).or_default();
                *k += 1;
                if *k <= max_per_check {
                    let _ = writeln!(s, "  {issue}");
                }
            }
            for ((sv, check), n) in &shown {
                if *sv == sev && *n > max_per_check {
                    let _ = writeln!(s, "  … {} more `{check}` (use --json for all)", n - max_per_check);
                }
            }
        }
        let verdict = if self.errors > 0 { "FAILED" } else { "OK" };
        let _ =
            writeln!(s, "\n{verdict}: {} error{}, {} warning{}", self.errors, plural(self.errors), self.warnings, plural(self.warnings));
        s
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text(50))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn split_label(s: &str) -> &str {
    if s.is_empty() {
        "(unassigned)"
    } else {
        s
    }
}

/// A category × split table.
fn count_table(title: &str, by_split: &BTreeMap<String, BTreeMap<String, usize>>) -> String {
    let splits = ordered_splits(by_split.keys());
    let cats: Vec<&String> = by_split.values().flat_map(|m| m.keys()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if cats.is_empty() {
        return String::new();
    }
    let w = cats.iter().map(|c| c.chars().count()).max().unwrap_or(0).max(title.len());
    let mut s = format!("\n{title:<w$}");
    for sp in &splits {
        let _ = write!(s, " {:>10}", split_label(sp));
    }
    s.push('\n');
    for c in cats {
        let _ = write!(s, "{c:<w$}");
        for sp in &splits {
            let n = by_split.get(*sp).and_then(|m| m.get(c)).copied().unwrap_or(0);
            let _ = write!(s, " {n:>10}");
        }
        s.push('\n');
    }
    s
}

/// Splits in train, validation, test order, then anything else (unassigned last).
pub(crate) fn ordered_splits<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut v: Vec<&String> = keys.collect();
    let rank = |s: &str| match s {
        "train" => 0,
        "validation" => 1,
        "test" => 2,
        "" => 4,
        _ => 3,
    };
    v.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    v
}

/// A record that passed the schema check, with where it came from.
struct Entry {
    file_index: usize,
    file: String,
    line: usize,
    rec: Dialogue,
}

struct Issues<'a> {
    files: &'a [String],
    list: Vec<Issue>,
}

impl Issues<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        severity: Severity,
        check: &str,
        file_index: Option<usize>,
        line: Option<usize>,
        id: Option<&str>,
        field: Option<&str>,
        message: String,
    ) {
        self.list.push(Issue {
            severity,
            check: check.to_string(),
            file: file_index.and_then(|i| self.files.get(i).cloned()),
            line,
            id: id.map(str::to_string),
            field: field.map(str::to_string),
            message,
            file_index: file_index.unwrap_or(usize::MAX),
        });
    }
    fn record(&mut self, severity: Severity, check: &str, e: &Entry, field: Option<&str>, message: String) {
        self.push(severity, check, Some(e.file_index), Some(e.line), Some(&e.rec.id), field, message);
    }
}

fn loc(e: &Entry) -> String {
    format!("{}:{} ({})", e.file, e.line, e.rec.id)
}

/// Validates every `.jsonl` file named by `paths` (files, or directories of `*.jsonl`).
/// `Err` only when a path cannot be read; problems in the data are in the [`Report`].
pub fn validate_paths<P: AsRef<Path>>(paths: &[P], opts: &ValidateOptions) -> Result<Report, DataError> {
    let files = jsonl_files(paths)?;
    let mut texts = Vec::new();
    for f in &files {
        texts.push((f.display().to_string(), read_to_string(f)?));
    }
    Ok(validate_texts(&texts, opts))
}

/// Validates JSONL texts given as (file name, contents) pairs.
pub fn validate_texts(files: &[(String, String)], opts: &ValidateOptions) -> Report {
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let mut issues = Issues { files: &names, list: Vec::new() };
    let mut entries = Vec::new();
    let mut records = 0;
    for (fi, (name, text)) in files.iter().enumerate() {
        for (li, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            records += 1;
            let line_no = li + 1;
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    issues.push(Severity::Error, "json", Some(fi), Some(line_no), None, None, json_error_message(&e));
                    continue;
                }
            };
            let id = v.get("id").and_then(Value::as_str).map(str::to_string);
            let problems = check_schema(&v);
            if !problems.is_empty() {
                for p in problems {
                    issues.push(Severity::Error, "schema", Some(fi), Some(line_no), id.as_deref(), p.field.as_deref(), p.message);
                }
                continue;
            }
            if let Some(obj) = v.as_object() {
                for k in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
                    issues.push(
                        Severity::Warning,
                        "unknown-field",
                        Some(fi),
                        Some(line_no),
                        id.as_deref(),
                        Some(k),
                        "not a schema v1 field (kept as is)".into(),
                    );
                }
            }
            match serde_json::from_value::<Dialogue>(v) {
                Ok(rec) => entries.push(Entry { file_index: fi, file: name.clone(), line: line_no, rec }),
                Err(e) => issues.push(Severity::Error, "schema", Some(fi), Some(line_no), id.as_deref(), None, e.to_string()),
            }
        }
    }

    for e in &entries {
        check_record(e, opts, &mut issues);
    }
    check_duplicates(&entries, opts, &mut issues);
    check_leakage(&entries, &mut issues);
    let (per_split, emotion_by_split, specialty_by_split) = counts(&entries);
    check_balance("emotion", &emotion_by_split, opts, &mut issues);
    check_balance("specialty", &specialty_by_split, opts, &mut issues);

    let mut list = issues.list;
    list.sort_by(|a, b| a.severity.cmp(&b.severity).then(a.file_index.cmp(&b.file_index)).then(a.line.cmp(&b.line)));
    let errors = list.iter().filter(|i| i.severity == Severity::Error).count();
    Report {
        files: names.clone(),
        records,
        errors,
        warnings: list.len() - errors,
        per_split,
        emotion_by_split,
        specialty_by_split,
        issues: list,
    }
}

fn check_record(e: &Entry, opts: &ValidateOptions, issues: &mut Issues) {
    let r = &e.rec;
    if r.id.trim().is_empty() {
        issues.record(Severity::Error, "schema", e, Some("id"), "empty id".into());
    }
    for (field, text) in [("patient_neutral", &r.patient_neutral), ("answer_neutral", &r.answer_neutral)] {
        if text.trim().is_empty() {
            issues.record(Severity::Error, "schema", e, Some(field), "empty text".into());
        }
    }
    let rewritten = !r.patient.trim().is_empty() && !r.answer.trim().is_empty();
    for (field, text, why) in [
        ("split", &r.split, "no split assigned (run `bedside data split`)"),
        ("patient", &r.patient, "empty: not rewritten yet"),
        ("answer", &r.answer, "empty: not rewritten yet"),
        ("emotion", &r.emotion, "empty"),
        ("specialty", &r.specialty, "empty"),
        ("condition", &r.condition, "empty: the leakage check cannot cover this record"),
    ] {
        if text.trim().is_empty() {
            issues.record(Severity::Warning, "incomplete", e, Some(field), why.into());
        }
    }
    if rewritten && r.key_facts.is_empty() {
        issues.record(Severity::Warning, "incomplete", e, Some("key_facts"), "no key facts".into());
    }

    // Key facts and red flags: every content word in each answer that is present.
    let answers: Vec<(&str, &String)> =
        [("answer", &r.answer), ("answer_neutral", &r.answer_neutral)].into_iter().filter(|(_, t)| !t.trim().is_empty()).collect();
    for (field, check, sev, list) in
        [("key_facts", "key-fact", Severity::Error, &r.key_facts), ("red_flags", "red-flag", Severity::Warning, &r.red_flags)]
    {
        for (i, fact) in list.iter().enumerate() {
            let field = format!("{field}[{i}]");
            if text::content_words(fact).is_empty() {
                issues.record(Severity::Warning, check, e, Some(&field), format!("\"{fact}\" has no content word to check"));
                continue;
            }
            for (afield, answer) in &answers {
                let missing = text::missing_words(fact, answer);
                if !missing.is_empty() {
                    issues.record(sev, check, e, Some(&field), format!("\"{fact}\": `{afield}` lacks {}", quote_list(&missing)));
                }
            }
        }
    }

    // The numbers rule.
    if !r.answer.trim().is_empty() && !r.answer_neutral.trim().is_empty() {
        let neutral = text::number_set(&r.answer_neutral);
        let answer = text::number_set(&r.answer);
        let patient = text::number_set(&r.patient);
        let dropped: Vec<String> = neutral.difference(&answer).cloned().collect();
        if !dropped.is_empty() {
            issues.record(
                Severity::Error,
                "numbers",
                e,
                Some("answer"),
                format!("drops {} present in `answer_neutral`", quote_list(&dropped)),
            );
        }
        let added: Vec<String> = answer.iter().filter(|n| !neutral.contains(*n) && !patient.contains(*n)).cloned().collect();
        if !added.is_empty() {
            issues.record(
                Severity::Error,
                "numbers",
                e,
                Some("answer"),
                format!("adds {} found in neither `answer_neutral` nor `patient`", quote_list(&added)),
            );
        }
    }
    if !r.patient.trim().is_empty() {
        let dropped: Vec<String> = text::number_set(&r.patient_neutral).difference(&text::number_set(&r.patient)).cloned().collect();
        if !dropped.is_empty() {
            issues.record(
                Severity::Warning,
                "patient-numbers",
                e,
                Some("patient"),
                format!("drops {} present in `patient_neutral`", quote_list(&dropped)),
            );
        }
    }

    // Length bounds.
    for (field, t, (lo, hi)) in [
        ("patient", &r.patient, opts.patient_words),
        ("patient_neutral", &r.patient_neutral, opts.patient_words),
        ("answer", &r.answer, opts.answer_words),
        ("answer_neutral", &r.answer_neutral, opts.answer_words),
    ] {
        let n = text::word_count(t);
        if n > 0 && (n < lo || n > hi) {
            issues.record(Severity::Warning, "length", e, Some(field), format!("{n} words, outside {lo}–{hi}"));
        }
    }
}

fn quote_list(items: &[String]) -> String {
    items.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
}

fn check_duplicates(entries: &[Entry], opts: &ValidateOptions, issues: &mut Issues) {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut texts: HashMap<(&str, String), usize> = HashMap::new();
    for (k, e) in entries.iter().enumerate() {
        let r = &e.rec;
        if !r.id.is_empty() {
            if let Some(&first) = ids.get(r.id.as_str()) {
                issues.record(
                    Severity::Error,
                    "duplicate-id",
                    e,
                    Some("id"),
                    format!("id `{}` already used at {}", r.id, loc(&entries[first])),
                );
            } else {
                ids.insert(&r.id, k);
            }
        }
        for (field, t) in
            [("patient", &r.patient), ("answer", &r.answer), ("patient_neutral", &r.patient_neutral), ("answer_neutral", &r.answer_neutral)]
        {
            let norm = text::normalise_ws(t);
            if norm.is_empty() {
                continue;
            }
            match texts.get(&(field, norm.clone())) {
                Some(&first) => {
                    issues.record(Severity::Error, "exact-duplicate", e, Some(field), format!("same text as in {}", loc(&entries[first])))
                }
                None => {
                    texts.insert((field, norm), k);
                }
            }
        }
    }

    let sets: Vec<Vec<u64>> = entries
        .iter()
        .map(|e| {
            let r = &e.rec;
            let p = if r.patient.trim().is_empty() { &r.patient_neutral } else { &r.patient };
            let a = if r.answer.trim().is_empty() { &r.answer_neutral } else { &r.answer };
            text::shingles(&format!("{p}\n{a}"), opts.shingle_words)
        })
        .collect();
    for (i, j, sim) in near_duplicate_pairs(&sets, opts.near_duplicate_threshold) {
        let (first, later) = (i.min(j), i.max(j));
        issues.record(
            Severity::Error,
            "near-duplicate",
            &entries[later],
            None,
            format!("near-duplicate of {}: Jaccard {sim:.2} on word {}-grams of patient+answer", loc(&entries[first]), opts.shingle_words),
        );
    }
}

/// All pairs `(i, j)`, `i < j`, of sets with Jaccard ≥ `threshold`, found exactly with prefix
/// filtering (AllPairs): with a global token order, rare tokens first, two sets whose Jaccard
/// is ≥ t share a token within their first |x| − ⌈t·|x|⌉ + 1 tokens. Sub-quadratic in practice.
pub fn near_duplicate_pairs(sets: &[Vec<u64>], threshold: f64) -> Vec<(usize, usize, f64)> {
    let t = threshold.clamp(1e-6, 1.0);
    let mut freq: HashMap<u64, usize> = HashMap::new();
    for s in sets {
        for &x in s {
            *freq.entry(x).or_default() += 1;
        }
    }
    let ordered: Vec<Vec<u64>> = sets
        .iter()
        .map(|s| {
            let mut v = s.clone();
            v.sort_by_key(|x| (freq.get(x).copied().unwrap_or(0), *x));
            v
        })
        .collect();
    let prefix_len = |n: usize| {
        let overlap = ((t * n as f64) - 1e-9).ceil().max(1.0) as usize;
        n.saturating_sub(overlap) + 1
    };
    let mut order: Vec<usize> = (0..sets.len()).filter(|&i| !sets[i].is_empty()).collect();
    order.sort_by_key(|&i| (sets[i].len(), i));
    let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut out = Vec::new();
    let mut seen: Vec<usize> = vec![usize::MAX; sets.len()];
    for &x in &order {
        let n = sets[x].len();
        for tok in ordered[x].iter().take(prefix_len(n)) {
            if let Some(cands) = index.get(tok) {
                for &y in cands {
                    if seen[y] == x {
                        continue;
                    }
                    seen[y] = x;
                    // Sizes ascend, so |y| ≤ |x|; J ≤ |y|/|x|.
                    if (sets[y].len() as f64) < t * n as f64 - 1e-9 {
                        continue;
                    }
                    let sim = text::jaccard(&sets[x], &sets[y]);
                    if sim + 1e-12 >= t {
                        out.push((x.min(y), x.max(y), sim));
                    }
                }
            }
        }
        for tok in ordered[x].iter().take(prefix_len(n)) {
            index.entry(*tok).or_default().push(x);
        }
    }
    out.sort_by_key(|a| (a.1, a.0));
    out
}

fn check_leakage(entries: &[Entry], issues: &mut Issues) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (k, e) in entries.iter().enumerate() {
        if e.rec.split == "train" || e.rec.split == "validation" {
            let c = text::normalise_condition(&e.rec.condition);
            if !c.is_empty() {
                seen.entry(c).or_insert(k);
            }
        }
    }
    for e in entries.iter().filter(|e| e.rec.split == "test") {
        let c = text::normalise_condition(&e.rec.condition);
        if let Some(&k) = seen.get(&c) {
            let other = &entries[k];
            issues.record(
                Severity::Error,
                "leakage",
                e,
                Some("condition"),
                format!("test condition \"{c}\" also occurs in {} at {}", other.rec.split, loc(other)),
            );
        }
    }
}

type Counts = (BTreeMap<String, usize>, BTreeMap<String, BTreeMap<String, usize>>, BTreeMap<String, BTreeMap<String, usize>>);

fn counts(entries: &[Entry]) -> Counts {
    let mut per_split: BTreeMap<String, usize> = BTreeMap::new();
    let mut emotions: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut specialties: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let all_emotions: Vec<&String> = entries.iter().map(|e| &e.rec.emotion).filter(|s| !s.is_empty()).collect();
    let all_specialties: Vec<&String> = entries.iter().map(|e| &e.rec.specialty).filter(|s| !s.is_empty()).collect();
    for e in entries {
        *per_split.entry(e.rec.split.clone()).or_default() += 1;
    }
    for split in per_split.keys() {
        let em = emotions.entry(split.clone()).or_default();
        for c in &all_emotions {
            em.entry((*c).clone()).or_default();
        }
        let sp = specialties.entry(split.clone()).or_default();
        for c in &all_specialties {
            sp.entry((*c).clone()).or_default();
        }
    }
    for e in entries {
        if !e.rec.emotion.is_empty() {
            *emotions.entry(e.rec.split.clone()).or_default().entry(e.rec.emotion.clone()).or_default() += 1;
        }
        if !e.rec.specialty.is_empty() {
            *specialties.entry(e.rec.split.clone()).or_default().entry(e.rec.specialty.clone()).or_default() += 1;
        }
    }
    emotions.retain(|_, m| !m.is_empty());
    specialties.retain(|_, m| !m.is_empty());
    (per_split, emotions, specialties)
}

fn check_balance(dimension: &str, by_split: &BTreeMap<String, BTreeMap<String, usize>>, opts: &ValidateOptions, issues: &mut Issues) {
    for split in ordered_splits(by_split.keys()) {
        if split.is_empty() {
            continue;
        }
        let Some(cats) = by_split.get(split) else { continue };
        if cats.len() < 2 {
            continue;
        }
        let total: usize = cats.values().sum();
        let mean = total as f64 / cats.len() as f64;
        let off: Vec<String> = cats
            .iter()
            .filter(|(_, &n)| (n as f64 - mean).abs() > opts.balance_tolerance * mean + 1e-9)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        if !off.is_empty() {
            issues.push(
                Severity::Warning,
                "balance",
                None,
                None,
                None,
                Some(dimension),
                format!(
                    "split `{split}`: {} of {} {dimension} counts are more than {:.0}% from the mean ({mean:.1} per {dimension}): {}",
                    off.len(),
                    cats.len(),
                    opts.balance_tolerance * 100.0,
                    off.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefix filter finds exactly the pairs a brute-force comparison finds.
    #[test]
    fn near_duplicate_pairs_match_brute_force() {
        let mut state = 12345u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // 300 sets: mutations of 30 base sets (so many pairs are close) plus noise.
        let bases: Vec<Vec<u64>> = (0..30).map(|_| (0..(5 + next() % 40)).map(|_| next() % 500).collect()).collect();
        let mut sets: Vec<Vec<u64>> = (0..300)
            .map(|_| {
                let mut s = bases[(next() % 30) as usize].clone();
                for _ in 0..(next() % 4) {
                    if !s.is_empty() && next() % 2 == 0 {
                        let i = (next() as usize) % s.len();
                        s.remove(i);
                    } else {
                        s.push(next() % 500);
                    }
                }
                s.sort_unstable();
                s.dedup();
                s
            })
            .collect();
        sets.push(Vec::new());
        for t in [0.5, 0.8, 0.95, 1.0] {
            let mut brute = Vec::new();
            for i in 0..sets.len() {
                for j in i + 1..sets.len() {
                    let sim = text::jaccard(&sets[i], &sets[j]);
                    if sim + 1e-12 >= t {
                        brute.push((i, j));
                    }
                }
            }
            let fast: Vec<(usize, usize)> = near_duplicate_pairs(&sets, t).into_iter().map(|(i, j, _)| (i, j)).collect();
            brute.sort_by_key(|&(i, j)| (j, i));
            assert!(!brute.is_empty());
            assert_eq!(fast, brute, "threshold {t}");
        }
    }
}
