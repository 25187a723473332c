//! The rewrite loop: plan emotions and seeds, resume from earlier output, generate, check, write.
//!
//! **Files.** The output gets one accepted record per line; the rejects file one line per failed
//! attempt: `{"id", "attempt", "emotion", "seed", "final", "reasons": [{"code", "detail"}],
//! "patient", "answer", "prompt_version"}` (`final` is true on the last attempt of a record that
//! was never accepted). Both are opened for appending and every line is written whole, flushed
//! and synced before the next record starts, so a killed run loses at most the record in progress.
//!
//! **Resume.** A rerun reads both files first. A last line without its newline (a write cut off
//! by a crash) is dropped with a warning, and the file truncated to the last complete line (a
//! complete JSON object missing only its newline is kept). Ids already in the output, and ids
//! with a `final` reject, are skipped; reject lines after the last finished record (the record
//! that was in progress when the run died) are removed, so an interrupted and resumed run ends
//! with the same files, byte for byte, as an uninterrupted one.
//!
//! **Determinism.** A record's emotion depends only on the seed and the set of input ids, its
//! generation seed only on the seed and its id ([`crate::emotions::record_seed`]), and attempt
//! `k` uses [`crate::seed::attempt_seed`]. With a deterministic generator the output is the same
//! for the same seed.

use std::collections::{HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bedside_data::text::{number_set, word_count};
use bedside_data::{Dialogue, Located, Provenance};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checks::{questions, Checker, Reason};
use crate::emotions::{self, EmotionPlan};
use crate::generator::{GenRequest, Generator, Turn};
use crate::prompts::{PromptContext, PromptSet};
use crate::seed::{answer_seed, attempt_seed};

/// Tokens per word allowed when deriving a turn's token limit from the length bound.
pub const TOKENS_PER_WORD: f64 = 1.7;

/// Settings of a run.
pub struct RewriteConfig {
    pub prompts: PromptSet,
    pub plan: EmotionPlan,
    /// Keep a record's own `emotion` when it is set and known, instead of assigning one.
    pub keep_emotion: bool,
    pub seed: u64,
    /// Attempts per record = 1 + max_retries.
    pub max_retries: usize,
    /// Rewrite at most this many not-yet-finished records in this run.
    pub limit: Option<usize>,
    /// Upper bound on tokens per generated turn (each turn is also bounded by its length limit).
    pub max_tokens: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// One line of the rejects file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectLine {
    pub id: String,
    /// 1-based.
    pub attempt: usize,
    pub emotion: String,
    pub seed: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub reasons: Vec<Reason>,
    pub patient: String,
    pub answer: String,
    pub prompt_version: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records accepted in this run.
    pub accepted: usize,
    /// Records finally rejected in this run.
    pub rejected: usize,
    /// Records skipped because an earlier run finished them.
    pub skipped: usize,
    /// Generation attempts made in this run.
    pub attempts: usize,
    /// Records still to do (beyond `--limit`).
    pub remaining: usize,
}

/// Reads the input: schema-v1 records (errors name file, line and field) with a non-empty `id`,
/// `patient_neutral` and `answer_neutral`, and unique ids.
pub fn read_input(path: &Path) -> Result<Vec<Located<Dialogue>>> {
    let records = bedside_data::read_jsonl(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut problems = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, d) in &records {
        for (field, value) in [("id", &d.id), ("patient_neutral", &d.patient_neutral), ("answer_neutral", &d.answer_neutral)] {
            if value.trim().is_empty() {
                problems.push(format!("{}:{line}: field `{field}`: empty (the rewrite needs it)", path.display()));
            }
        }
        if !d.id.is_empty() {
            if let Some(first) = seen.insert(d.id.clone(), *line) {
                problems.push(format!("{}:{line}: field `id`: duplicate id `{}` (first on line {first})", path.display(), d.id));
            }
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(20);
        bail!("{}{}", problems.join("\n"), if n > 20 { format!("\n… and {} more", n - 20) } else { String::new() });
    }
    Ok(records.into_iter().map(|(line, record)| Located { file: path.to_path_buf(), line, record }).collect())
}

/// The target emotion of every record (see [`emotions::assign`]).
pub fn plan_emotions(records: &[Dialogue], cfg: &RewriteConfig) -> Vec<String> {
    let ids: Vec<&str> = records.iter().map(|d| d.id.as_str()).collect();
    let mut out = emotions::assign(&ids, &cfg.plan, cfg.seed);
    if cfg.keep_emotion {
        for (e, d) in out.iter_mut().zip(records) {
            let own = d.emotion.trim().to_lowercase();
            if emotions::lexicon(&own).is_some() {
                *e = own;
            }
        }
    }
    out
}

/// The template variables for `d` rewritten towards `emotion`.
pub fn prompt_context(d: &Dialogue, emotion: &str) -> PromptContext {
    PromptContext {
        emotion: emotion.to_string(),
        emotion_words: emotions::lexicon(emotion).unwrap_or(&[]).iter().take(4).map(|w| w.trim_end_matches('*').to_string()).collect(),
        patient_neutral: d.patient_neutral.trim().to_string(),
        answer_neutral: d.answer_neutral.trim().to_string(),
        key_facts: d.key_facts.clone(),
        red_flags: d.red_flags.clone(),
        patient_numbers: number_set(&d.patient_neutral).into_iter().collect(),
        answer_numbers: number_set(&d.answer_neutral).into_iter().collect(),
        patient_questions: questions(&d.patient_neutral),
        specialty: d.specialty.clone(),
        condition: d.condition.clone(),
        patient: String::new(),
    }
}

/// Prints the rendered prompts of the first `n` records (no model needed).
pub fn dry_run(records: &[Located<Dialogue>], cfg: &RewriteConfig, n: usize, out: &mut dyn Write) -> Result<()> {
    let ds: Vec<Dialogue> = records.iter().map(|l| l.record.clone()).collect();
    let emotions = plan_emotions(&ds, cfg);
    writeln!(
        out,
        "# bedside data rewrite --dry-run: prompt version {} ({}), seed {}, showing {} of {} records",
        cfg.prompts.version,
        cfg.prompts.dir.display(),
        cfg.seed,
        n.min(ds.len()),
        ds.len()
    )?;
    for (d, emotion) in ds.iter().zip(&emotions).take(n) {
        let seed = emotions::record_seed(cfg.seed, &d.id);
        let mut ctx = prompt_context(d, emotion);
        writeln!(out, "\n## {}  emotion: {emotion}  prompt_version: {}  seed: {seed}", d.id, cfg.prompts.version)?;
        let p = cfg.prompts.patient(&ctx)?;
        writeln!(out, "### patient turn")?;
        if let Some(s) = &p.system {
            writeln!(out, "[system]\n{s}")?;
        }
        writeln!(out, "[user]\n{}", p.user)?;
        ctx.patient = "<the rewritten patient turn>".into();
        let a = cfg.prompts.answer(&ctx)?;
        writeln!(out, "### answer")?;
        if let Some(s) = &a.system {
            writeln!(out, "[system]\n{s}")?;
        }
        writeln!(out, "[user]\n{}", a.user)?;
    }
    Ok(())
}

/// The complete JSON lines of a JSONL file being appended to, after repairing a cut-off last
/// line (see the module docs). Returns `(line number, value, byte offset after the line)`.
fn read_appendable(path: &Path) -> Result<Vec<(usize, Value, u64)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < bytes.len() {
        line_no += 1;
        let (end, complete) = match bytes[start..].iter().position(|b| *b == b'\n') {
            Some(k) => (start + k, true),
            None => (bytes.len(), false),
        };
        let text = String::from_utf8_lossy(&bytes[start..end]);
        let next = if complete { end + 1 } else { end };
        if text.trim().is_empty() {
            start = next;
            continue;
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if complete => out.push((line_no, v, next as u64)),
            Ok(v) => {
                // A whole record missing only its newline: keep it and add the newline.
                let mut f =
                    std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("{}: cannot open", path.display()))?;
                f.write_all(b"\n").and_then(|_| f.sync_data()).with_context(|| format!("{}: cannot write", path.display()))?;
                out.push((line_no, v, next as u64 + 1));
            }
            Err(_) if !complete => {
                tracing::warn!(file = %path.display(), line = line_no, "last line is incomplete (an interrupted run?); dropping it");
                eprintln!("warning: {}:{line_no}: incomplete last line (an interrupted run?) dropped", path.display());
                truncate(path, start as u64)?;
            }
            Err(e) => bail!("{}:{line_no}: not a JSON line ({e}); fix or remove it before resuming", path.display()),
        }
        start = next;
    }
    Ok(out)
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    f.set_len(len).and_then(|_| f.sync_all()).with_context(|| format!("{}: cannot truncate", path.display()))
}

/// Ids finished by earlier runs, after repairing both files (see the module docs).
pub fn resume(output: &Path, rejects: &Path) -> Result<HashSet<String>> {
    let mut done = HashSet::new();
    for (line, v, _) in read_appendable(output)? {
        let id = v.get("id").and_then(Value::as_str).with_context(|| format!("{}:{line}: field `id`: missing", output.display()))?;
        done.insert(id.to_string());
    }
    let lines = read_appendable(rejects)?;
    let mut parsed = Vec::with_capacity(lines.len());
    for (line, v, end) in lines {
        let r: RejectLine = serde_json::from_value(v).with_context(|| format!("{}:{line}: not a reject line", rejects.display()))?;
        if r.is_final {
            done.insert(r.id.clone());
        }
        parsed.push((r.id, end));
    }
    // Lines after the last finished record belong to the record that was in progress.
    let keep = parsed.iter().rposition(|(id, _)| done.contains(id)).map_or(0, |i| parsed[i].1);
    if parsed.last().is_some_and(|(_, end)| *end > keep) {
        truncate(rejects, keep)?;
    }
    Ok(done)
}

fn open_append(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for appending", path.display()))?;
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

fn append_line<T: Serialize>(f: &mut std::fs::File, path: &Path, value: &T) -> Result<()> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|_| f.flush())
        .and_then(|_| f.sync_data())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The default rejects file: `<output stem>.rejects.jsonl` beside the output.
pub fn default_rejects_path(output: &Path) -> PathBuf {
    let stem = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "rewrite".into());
    output.with_file_name(format!("{stem}.rejects.jsonl"))
}

fn token_limit(neutral: &str, max_ratio: f64, cap: usize) -> usize {
    let words = word_count(neutral) as f64;
    (((words * max_ratio * TOKENS_PER_WORD).ceil() as usize) + 16).min(cap).max(1)
}

/// How an accepted rewrite was made, recorded in its `rewritten` provenance.
#[derive(Debug, Clone, Copy)]
pub struct RewriteProvenance<'a> {
    /// The model that wrote it.
    pub by: &'a str,
    /// The prompt templates' version.
    pub prompt_version: &'a str,
    pub seed: u64,
    /// Attempts it took, the accepted one included.
    pub attempts: usize,
}

/// The output record: `d` with `emotion`, `patient`, `answer` and a `rewritten` provenance (the
/// earlier provenance kept under `original`).
pub fn rewritten_record(d: &Dialogue, emotion: &str, patient: &str, answer: &str, how: &RewriteProvenance) -> Dialogue {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("by".to_string(), Value::from(how.by));
    fields.insert("prompt_version".to_string(), Value::from(how.prompt_version));
    fields.insert("seed".to_string(), Value::from(how.seed));
    fields.insert("attempts".to_string(), Value::from(how.attempts));
    if !d.provenance.method.is_empty() {
        fields.insert("original".to_string(), serde_json::to_value(&d.provenance).unwrap_or(Value::Null));
    }
    Dialogue {
        emotion: emotion.to_string(),
        patient: patient.to_string(),
        answer: answer.to_string(),
        provenance: Provenance { method: "rewritten".into(), fields },
        ..d.clone()
    }
}

/// Rewrites every not-yet-finished record of `records` (up to `cfg.limit`), appending accepted
/// records to `output` and failed attempts to `rejects`.
pub fn run(
    records: &[Located<Dialogue>],
    gen: &mut dyn Generator,
    checker: &Checker,
    cfg: &RewriteConfig,
    output: &Path,
    rejects: &Path,
) -> Result<Summary> {
    if output == rejects {
        bail!("the output and the rejects file must differ ({})", output.display());
    }
    let done = resume(output, rejects)?;
    let ds: Vec<Dialogue> = records.iter().map(|l| l.record.clone()).collect();
    let emotions = plan_emotions(&ds, cfg);
    let todo: Vec<usize> = (0..ds.len()).filter(|&i| !done.contains(&ds[i].id)).collect();
    let mut summary = Summary { skipped: ds.len() - todo.len(), ..Summary::default() };
    let n = cfg.limit.map_or(todo.len(), |l| l.min(todo.len()));
    summary.remaining = todo.len() - n;
    let mut out = open_append(output)?;
    let mut rej = open_append(rejects)?;
    let by = gen.spec();

    let bar =
        if cfg.progress { ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr()) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} rewrite [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    if summary.skipped > 0 {
        bar.println(format!("resuming: {} records already finished", summary.skipped));
    }
    bar.set_message("accepted 0, rejected 0");

    for &i in todo.iter().take(n) {
        let d = &ds[i];
        let emotion = &emotions[i];
        let rseed = emotions::record_seed(cfg.seed, &d.id);
        let mut ctx = prompt_context(d, emotion);
        let mut accepted = false;
        for attempt in 0..=cfg.max_retries {
            summary.attempts += 1;
            let aseed = attempt_seed(rseed, attempt);
            let p_prompt = cfg.prompts.patient(&ctx)?;
            let max_ratio = checker.opts.max_ratio;
            let mut reasons = Vec::new();
            let mut patient = String::new();
            let mut answer = String::new();
            let p = gen.generate(&GenRequest {
                id: &d.id,
                turn: Turn::Patient,
                attempt,
                prompt: &p_prompt,
                seed: aseed,
                max_tokens: token_limit(&d.patient_neutral, max_ratio, cfg.max_tokens),
            });
            match p {
                Ok(g) => {
                    patient = g.text;
                    if g.truncated {
                        reasons.push(Reason { code: "truncated".into(), detail: "the patient turn hit the token limit".into() });
                    }
                    ctx.patient = patient.clone();
                    let a_prompt = cfg.prompts.answer(&ctx)?;
                    match gen.generate(&GenRequest {
                        id: &d.id,
                        turn: Turn::Answer,
                        attempt,
                        prompt: &a_prompt,
                        seed: answer_seed(aseed),
                        max_tokens: token_limit(&d.answer_neutral, max_ratio, cfg.max_tokens),
                    }) {
                        Ok(g) => {
                            answer = g.text;
                            if g.truncated {
                                reasons.push(Reason { code: "truncated".into(), detail: "the answer hit the token limit".into() });
                            }
                        }
                        Err(e) => reasons.push(Reason { code: "generation-error".into(), detail: format!("answer: {e:#}") }),
                    }
                }
                Err(e) => reasons.push(Reason { code: "generation-error".into(), detail: format!("patient turn: {e:#}") }),
            }
            if reasons.iter().all(|r| r.code != "generation-error") {
                reasons.extend(checker.check(d, emotion, &patient, &answer)?);
            }
            if reasons.is_empty() {
                let how = RewriteProvenance { by: &by, prompt_version: &cfg.prompts.version, seed: cfg.seed, attempts: attempt + 1 };
                let rec = rewritten_record(d, emotion, &patient, &answer, &how);
                append_line(&mut out, output, &rec)?;
                accepted = true;
                break;
            }
            let line = RejectLine {
                id: d.id.clone(),
                attempt: attempt + 1,
                emotion: emotion.clone(),
                seed: aseed,
                is_final: attempt == cfg.max_retries,
                reasons,
                patient,
                answer,
                prompt_version: cfg.prompts.version.clone(),
            };
            tracing::debug!(id = %d.id, attempt = attempt + 1, codes = ?line.reasons.iter().map(|r| r.code.as_str()).collect::<Vec<_>>(), "attempt rejected");
            append_line(&mut rej, rejects, &line)?;
        }
        if accepted {
            summary.accepted += 1;
        } else {
            summary.rejected += 1;
        }
        bar.set_message(format!("accepted {}, rejected {}", summary.accepted, summary.rejected));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(summary)
}
