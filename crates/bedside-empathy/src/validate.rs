//! Agreement of a scorer with the EPITOME human labels (read at run time, never stored).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::data::{read_epitome, EpitomeRow, EPITOME_FILES};
use crate::epitome::is_heldout;
use crate::heads::MECHANISMS;
use crate::metrics::{agreement, Agreement};
use crate::{EmpathyScorer, EmpathyScores};

/// The target: macro-F1 of at least 0.6 per mechanism.
pub const TARGET_MACRO_F1: f64 = 0.6;

#[derive(Clone, Debug, Serialize)]
pub struct MechanismReport {
    pub mechanism: String,
    pub file: String,
    #[serde(flatten)]
    pub agreement: Agreement,
    pub target_macro_f1: f64,
    pub target_met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ValidationReport {
    pub heads_feature_spec: String,
    pub heads_metadata: BTreeMap<String, String>,
    /// Distinct (seeker post, response) pairs scored.
    pub distinct_pairs: usize,
    /// Agreement on every pair of the three files.
    pub mechanisms: Vec<MechanismReport>,
    /// Agreement on the pairs whose seeker post is in the held-out 20% of `bedside eval
    /// train-scorer --epitome` ([`crate::epitome::is_heldout`]): the only fair figures for heads
    /// trained on EPITOME, and the same items for heads that were not.
    pub heldout: Vec<MechanismReport>,
}

/// Pairs scored per call, so progress can be reported.
pub const CHUNK: usize = 128;

/// Score distinct (context, response) pairs in chunks, reporting progress as (done, total).
pub fn score_chunked(scorer: &EmpathyScorer, pairs: &[(&str, &str)], mut progress: impl FnMut(usize, usize)) -> Result<Vec<EmpathyScores>> {
    let mut out = Vec::with_capacity(pairs.len());
    progress(0, pairs.len());
    for c in pairs.chunks(CHUNK) {
        out.extend(scorer.score(c)?);
        progress(out.len(), pairs.len());
    }
    Ok(out)
}

/// Score the three EPITOME files in `dir` and compare with the human levels.
pub fn validate_epitome(scorer: &EmpathyScorer, dir: &Path, progress: impl FnMut(usize, usize)) -> Result<ValidationReport> {
    validate_epitome_every(scorer, dir, 1, progress)
}

/// As [`validate_epitome`], on every `every`-th distinct (post, response) pair in file order
/// (a deterministic subsample: scoring all ~3,000 long Reddit pairs takes minutes on 2 cores).
pub fn validate_epitome_every(
    scorer: &EmpathyScorer,
    dir: &Path,
    every: usize,
    progress: impl FnMut(usize, usize),
) -> Result<ValidationReport> {
    let every = every.max(1);
    let mut files = read_epitome(dir)?;
    if every > 1 {
        let mut seen: HashMap<(String, String), bool> = HashMap::new();
        for rows in &files {
            for r in rows {
                let n = seen.len();
                seen.entry((r.seeker_post.clone(), r.response_post.clone())).or_insert(n.is_multiple_of(every));
            }
        }
        for rows in &mut files {
            rows.retain(|r| seen[&(r.seeker_post.clone(), r.response_post.clone())]);
        }
    }
    // The three files label (mostly) the same pairs: score each distinct pair once.
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut uniq: Vec<(&str, &str)> = Vec::new();
    for rows in &files {
        for r in rows {
            let key = (r.seeker_post.as_str(), r.response_post.as_str());
            index.entry(key).or_insert_with(|| {
                uniq.push(key);
                uniq.len() - 1
            });
        }
    }
    let scores = score_chunked(scorer, &uniq, progress)?;
    let level = |m: usize, r: &EpitomeRow| scores[index[&(r.seeker_post.as_str(), r.response_post.as_str())]].levels()[m];
    let report = |keep: &dyn Fn(&EpitomeRow) -> bool| -> Vec<MechanismReport> {
        files
            .iter()
            .enumerate()
            .map(|(m, rows)| {
                let kept: Vec<&EpitomeRow> = rows.iter().filter(|r| keep(r)).collect();
                let truth: Vec<u8> = kept.iter().map(|r| r.level).collect();
                let pred: Vec<u8> = kept.iter().map(|r| level(m, r)).collect();
                let a = agreement(&truth, &pred);
                MechanismReport {
                    mechanism: MECHANISMS[m].to_string(),
                    file: EPITOME_FILES[m].to_string(),
                    target_met: a.macro_f1 >= TARGET_MACRO_F1,
                    target_macro_f1: TARGET_MACRO_F1,
                    agreement: a,
                }
            })
            .collect()
    };
    Ok(ValidationReport {
        heads_feature_spec: scorer.heads().features.spec(),
        heads_metadata: scorer.heads().metadata.clone(),
        distinct_pairs: uniq.len(),
        mechanisms: report(&|_| true),
        heldout: report(&|r| is_heldout(&r.sp_id)),
    })
}

/// Plain-text rendering: one block per mechanism with the confusion matrix.
pub fn render(r: &ValidationReport) -> String {
    let mut s = format!("EPITOME validation of heads {} on {} distinct pairs\n", r.heads_feature_spec, r.distinct_pairs);
    for m in &r.mechanisms {
        let a = &m.agreement;
        s += &format!(
            "\n{} ({}; n={}, human 0/1/2 = {}/{}/{})\n  accuracy {:.3}  macro-F1 {:.3}  (F1 per level {:.3} / {:.3} / {:.3})  quadratic kappa {:.3}\n  majority-class macro-F1 {:.3}; target macro-F1 >= {:.2}: {}\n  confusion (rows human, cols predicted):\n           pred0  pred1  pred2\n",
            m.mechanism, m.file, a.n, a.support[0], a.support[1], a.support[2], a.accuracy, a.macro_f1, a.f1[0], a.f1[1], a.f1[2],
            a.quadratic_kappa, a.majority_macro_f1, m.target_macro_f1, if m.target_met { "met" } else { "MISSED" }
        );
        for (i, row) in a.confusion.iter().enumerate() {
            s += &format!("  human{i} {:>6} {:>6} {:>6}\n", row[0], row[1], row[2]);
        }
    }
    s += "\nHeld-out 20% only (seeker posts train-scorer --epitome never trains on):\n";
    for m in &r.heldout {
        let a = &m.agreement;
        s += &format!(
            "  {:<20} n={:<5} accuracy {:.3}  macro-F1 {:.3}  (F1 per level {:.3} / {:.3} / {:.3})  quadratic kappa {:.3}\n",
            m.mechanism, a.n, a.accuracy, a.macro_f1, a.f1[0], a.f1[1], a.f1[2], a.quadratic_kappa
        );
    }
    s
}
