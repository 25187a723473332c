//! Heads trained in domain on EPITOME (research use: the data and anything trained on it stay out
//! of the repository). A fixed 80% of the pairs, split by seeker post, trains; the other 20% is
//! held out and only scored once, at the end.
//!
//! Features: [`FeatureSet::NgramLexical`] (hashed TF-IDF word and character n-grams of the
//! response plus the lexical cues; no MiniLM, so training takes seconds). Per mechanism: a
//! class-balanced logistic head; then per-class offsets added to its bias, chosen to maximise the
//! out-of-fold macro-F1 of 5-fold cross-validation inside the training 80% (folds by seeker post),
//! because macro-F1 weighs the rare levels (IP 1, EX 1, ER 2) as much as the common ones.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data::{read_epitome, EpitomeRow};
use crate::features::{analyse, FeatureSet, LEXICAL_NAMES};
use crate::heads::{self, fit_head_sparse, Head, Heads, MECHANISMS, SHORT};
use crate::metrics::{agreement, Agreement};
use crate::ngrams;

/// Whether a seeker post is in the held-out 20%: the first 8 bytes of SHA-256(sp_id), read as a
/// little-endian integer, are 0 mod 5.
pub fn is_heldout(sp_id: &str) -> bool {
    let h = Sha256::digest(sp_id.as_bytes());
    u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) % 5 == 0
}

/// Cross-validation fold (0..5) of a seeker post inside the training 80%.
fn fold(sp_id: &str) -> usize {
    let h = Sha256::digest(sp_id.as_bytes());
    (u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]) % 5) as usize
}

/// Hyperparameters of [`train_epitome`].
#[derive(Clone, Debug, Serialize)]
pub struct EpitomeOptions {
    /// L2 strength on the mean weighted loss, per mechanism (ER, IP, EX).
    pub lambda: [f64; 3],
    /// Scale of the standardised lexical cues relative to the unit-length n-gram blocks.
    pub lexical_weight: f32,
    pub max_iter: usize,
    /// Bias offsets tried per class (levels 1 and 2; level 0 stays).
    pub offset_grid: Vec<f64>,
}

impl Default for EpitomeOptions {
    fn default() -> Self {
        EpitomeOptions { lambda: [4e-4; 3], lexical_weight: 0.2, max_iter: 300, offset_grid: (-6..=6).map(|i| i as f64 * 0.25).collect() }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MechanismResult {
    pub mechanism: String,
    pub n_train: usize,
    pub n_heldout: usize,
    /// Out-of-fold macro-F1 inside the training 80%, before and after the bias offsets.
    pub oof_macro_f1: f64,
    pub oof_macro_f1_offsets: f64,
    /// Offsets added to the level 1 and level 2 logits.
    pub offsets: [f64; 2],
    /// Agreement on the held-out 20%.
    pub heldout: Agreement,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpitomeReport {
    pub split: String,
    pub options: EpitomeOptions,
    pub mechanisms: Vec<MechanismResult>,
    pub seconds: f64,
}

/// Raw sparse rows (lexical cues, then n-gram buckets offset by the number of cues) for responses.
struct Featurizer {
    idf: Vec<f32>,
}

impl Featurizer {
    fn row(&self, context: &str, response: &str) -> Vec<(u32, f32)> {
        FeatureSet::sparse_row(&analyse(context, response), &self.idf)
    }
}

/// Mean and standard deviation of the lexical part; n-gram dimensions get mean 0 and std 1 so
/// their zeros stay zero. The lexical std is divided by `weight` to scale the cues.
fn standardisation(rows: &[Vec<(u32, f32)>], weight: f32) -> (Vec<f32>, Vec<f32>) {
    let l = LEXICAL_NAMES.len();
    let d = l + ngrams::BUCKETS;
    let dense: Vec<Vec<f32>> = rows.iter().map(|r| r[..l].iter().map(|&(_, v)| v).collect()).collect();
    let (m, s) = heads::standardisation(&dense);
    let mut mean = vec![0f32; d];
    let mut std = vec![1f32; d];
    mean[..l].copy_from_slice(&m);
    for (o, v) in std[..l].iter_mut().zip(s) {
        *o = v / weight;
    }
    (mean, std)
}

fn standardise(row: &[(u32, f32)], mean: &[f32], std: &[f32]) -> Vec<(u32, f64)> {
    row.iter().map(|&(j, v)| (j, ((v - mean[j as usize]) / std[j as usize]) as f64)).collect()
}

fn with_offsets(p: [f32; 3], off: [f64; 2]) -> u8 {
    let s = [(p[0] as f64).max(1e-30).ln(), (p[1] as f64).max(1e-30).ln() + off[0], (p[2] as f64).max(1e-30).ln() + off[1]];
    let mut best = 0;
    for k in 1..3 {
        if s[k] > s[best] {
            best = k;
        }
    }
    best as u8
}

/// The offsets of `grid` (level 1, level 2) with the best macro-F1 of `probs` against `truth`;
/// ties keep the smaller change.
fn best_offsets(probs: &[[f32; 3]], truth: &[u8], grid: &[f64]) -> ([f64; 2], f64) {
    let score = |o: [f64; 2]| agreement(truth, &probs.iter().map(|p| with_offsets(*p, o)).collect::<Vec<_>>()).macro_f1;
    let mut best: ([f64; 2], f64) = ([0.0, 0.0], score([0.0, 0.0]));
    for &a in grid {
        for &b in grid {
            let f = score([a, b]);
            let better = f > best.1 + 1e-12 || (f > best.1 - 1e-12 && a.abs() + b.abs() < best.0[0].abs() + best.0[1].abs());
            if better {
                best = ([a, b], f);
            }
        }
    }
    best
}

/// Train the three heads on the training 80% of the EPITOME files in `dir` and score the held-out
/// 20%. `progress(stage, done, total)` reports the steps.
pub fn train_epitome(dir: &Path, opts: &EpitomeOptions, mut progress: impl FnMut(&str, usize, usize)) -> Result<(Heads, EpitomeReport)> {
    let t0 = std::time::Instant::now();
    let files = read_epitome(dir)?;
    for (m, rows) in files.iter().enumerate() {
        if rows.iter().filter(|r| !is_heldout(&r.sp_id)).count() < 50 {
            bail!("{}: too few training pairs in {}", MECHANISMS[m], dir.display());
        }
    }
    // IDF from the distinct training responses of all three files.
    let mut seen = HashSet::new();
    let mut docs = Vec::new();
    for r in files.iter().flatten().filter(|r| !is_heldout(&r.sp_id)) {
        if seen.insert(r.response_post.as_str()) {
            docs.push(ngrams::counts(&analyse(&r.seeker_post, &r.response_post).ngram_text()));
        }
    }
    let fz = Featurizer { idf: ngrams::fit_idf(docs.iter().map(Vec::as_slice)) };
    let total = 3 * 7;
    let mut step = 0;
    progress("featurising", step, total);
    let rows: Vec<Vec<Vec<(u32, f32)>>> =
        files.iter().map(|f| f.iter().map(|r| fz.row(&r.seeker_post, &r.response_post)).collect()).collect();
    let train_rows: Vec<Vec<(u32, f32)>> = files
        .iter()
        .zip(&rows)
        .flat_map(|(f, rs)| f.iter().zip(rs).filter(|(r, _)| !is_heldout(&r.sp_id)).map(|(_, x)| x.clone()))
        .collect();
    let (mean, std) = standardisation(&train_rows, opts.lexical_weight);
    let d = mean.len();
    let mut out_heads: Vec<Head> = Vec::new();
    let mut results = Vec::new();
    let mut metadata = BTreeMap::new();
    for m in 0..3 {
        let (tr, te): (Vec<usize>, Vec<usize>) = (0..files[m].len()).partition(|&i| !is_heldout(&files[m][i].sp_id));
        let z: Vec<Vec<(u32, f64)>> = tr.iter().map(|&i| standardise(&rows[m][i], &mean, &std)).collect();
        let y: Vec<u8> = tr.iter().map(|&i| files[m][i].level).collect();
        let folds: Vec<usize> = tr.iter().map(|&i| fold(&files[m][i].sp_id)).collect();
        // Out-of-fold probabilities inside the training 80%.
        let mut oof = vec![[0f32; 3]; tr.len()];
        for f in 0..5 {
            let idx: Vec<usize> = (0..tr.len()).filter(|&i| folds[i] != f).collect();
            let zf: Vec<Vec<(u32, f64)>> = idx.iter().map(|&i| z[i].clone()).collect();
            let yf: Vec<u8> = idx.iter().map(|&i| y[i]).collect();
            let h = fit_head_sparse(&zf, d, &yf, opts.lambda[m], true, opts.max_iter);
            for i in (0..tr.len()).filter(|&i| folds[i] == f) {
                oof[i] = h.probs_sparse(&to_f32(&z[i]), d);
            }
            step += 1;
            progress("cross-validating", step, total);
        }
        let (offsets, oof_f1_offsets) = best_offsets(&oof, &y, &opts.offset_grid);
        let oof_f1 = agreement(&y, &oof.iter().map(|p| with_offsets(*p, [0.0, 0.0])).collect::<Vec<_>>()).macro_f1;
        let mut head = fit_head_sparse(&z, d, &y, opts.lambda[m], true, opts.max_iter);
        head.bias[1] += offsets[0] as f32;
        head.bias[2] += offsets[1] as f32;
        step += 2;
        progress("training", step, total);
        let truth: Vec<u8> = te.iter().map(|&i| files[m][i].level).collect();
        let pred: Vec<u8> =
            te.iter().map(|&i| with_offsets(head.probs_sparse(&to_f32(&standardise(&rows[m][i], &mean, &std)), d), [0.0, 0.0])).collect();
        let heldout = agreement(&truth, &pred);
        let s = SHORT[m];
        metadata.insert(format!("heldout_macro_f1_{s}"), format!("{:.4}", heldout.macro_f1));
        metadata.insert(format!("heldout_n_{s}"), te.len().to_string());
        metadata.insert(format!("oof_macro_f1_{s}"), format!("{oof_f1_offsets:.4}"));
        metadata.insert(format!("bias_offsets_{s}"), format!("{},{}", offsets[0], offsets[1]));
        metadata.insert(format!("lambda_{s}"), opts.lambda[m].to_string());
        let mut c = [0usize; 3];
        y.iter().for_each(|&l| c[l as usize] += 1);
        metadata.insert(format!("class_counts_{s}"), format!("{},{},{}", c[0], c[1], c[2]));
        results.push(MechanismResult {
            mechanism: MECHANISMS[m].to_string(),
            n_train: tr.len(),
            n_heldout: te.len(),
            oof_macro_f1: oof_f1,
            oof_macro_f1_offsets: oof_f1_offsets,
            offsets,
            heldout,
        });
        out_heads.push(head);
    }
    let split = "held out: seeker posts whose SHA-256(sp_id) first 8 bytes (little-endian) are 0 mod 5".to_string();
    metadata
        .insert("training_data".into(), "EPITOME Reddit (Sharma et al. 2020), training 80%: research use only, do not redistribute".into());
    metadata.insert("split".into(), split.clone());
    metadata.insert("lexical_weight".into(), opts.lexical_weight.to_string());
    metadata.insert("class_balanced".into(), "true".into());
    let heads: [Head; 3] = out_heads.try_into().map_err(|_| anyhow::anyhow!("three heads expected"))?;
    let heads = Heads { features: FeatureSet::NgramLexical, embedding_dim: 0, mean, std, heads, idf: fz.idf, metadata };
    Ok((heads, EpitomeReport { split, options: opts.clone(), mechanisms: results, seconds: t0.elapsed().as_secs_f64() }))
}

fn to_f32(z: &[(u32, f64)]) -> Vec<(u32, f32)> {
    z.iter().map(|&(j, v)| (j, v as f32)).collect()
}

/// The held-out rows of one EPITOME file (for checks outside training).
pub fn heldout_rows(rows: &[EpitomeRow]) -> Vec<&EpitomeRow> {
    rows.iter().filter(|r| is_heldout(&r.sp_id)).collect()
}
