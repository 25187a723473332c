//! Training the heads from labelled pairs, with the L2 strength chosen by k-fold cross-validation
//! on the training set alone.

use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data::LabelledPair;
use crate::features::FeatureSet;
use crate::heads::{self, Heads, TrainOptions, SHORT};
use crate::metrics::{agreement, Agreement};

/// L2 strengths tried by cross-validation.
pub const LAMBDA_GRID: &[f64] = &[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0];
pub const FOLDS: usize = 5;

/// Fold of an example, from a hash of its id (stable under reordering of the files).
pub fn fold_of(id: &str, k: usize) -> usize {
    let h = Sha256::digest(id.as_bytes());
    (u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8])) % k as u64) as usize
}

/// Out-of-fold agreement for one λ.
#[derive(Clone, Debug, Serialize)]
pub struct CvPoint {
    pub lambda: f64,
    /// ER, IP, EX.
    pub agreement: [Agreement; 3],
}

/// Out-of-fold predictions of heads trained with `lambda` on the other folds.
pub fn cross_validate(
    x: &[Vec<f32>],
    y: &[Vec<u8>; 3],
    folds: &[usize],
    k: usize,
    embedding_dim: usize,
    opts: &TrainOptions,
) -> Result<[Agreement; 3]> {
    let mut pred: [Vec<u8>; 3] = [vec![0; x.len()], vec![0; x.len()], vec![0; x.len()]];
    for f in 0..k {
        let tr: Vec<usize> = (0..x.len()).filter(|&i| folds[i] != f).collect();
        let te: Vec<usize> = (0..x.len()).filter(|&i| folds[i] == f).collect();
        if te.is_empty() || tr.is_empty() {
            continue;
        }
        let xt: Vec<Vec<f32>> = tr.iter().map(|&i| x[i].clone()).collect();
        let yt = [0, 1, 2].map(|m| tr.iter().map(|&i| y[m][i]).collect::<Vec<u8>>());
        let h = heads::train(&xt, &yt, embedding_dim, opts)?;
        for &i in &te {
            let p = h.predict(&x[i]);
            let s = crate::EmpathyScores::from_probs(p);
            for (m, l) in s.levels().into_iter().enumerate() {
                pred[m][i] = l;
            }
        }
    }
    Ok([0, 1, 2].map(|m| agreement(&y[m], &pred[m])))
}

/// What training did, for reports and the heads' metadata.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub n: usize,
    pub features: String,
    pub cv: Vec<CvPoint>,
    /// λ chosen per mechanism (ER, IP, EX).
    pub lambda: [f64; 3],
    /// Out-of-fold macro-F1 at the chosen λ.
    pub cv_macro_f1: [f64; 3],
}

/// Train heads on feature rows `x` of `pairs`. With `lambda = None`, each mechanism's λ is the
/// grid value with the best out-of-fold macro-F1 (ties → the larger λ, the simpler model).
pub fn train_with_cv(
    pairs: &[LabelledPair],
    x: &[Vec<f32>],
    embedding_dim: usize,
    features: FeatureSet,
    lambda: Option<[f64; 3]>,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Heads, TrainReport)> {
    if pairs.len() != x.len() {
        bail!("{} pairs but {} feature rows", pairs.len(), x.len());
    }
    if pairs.len() < 2 * FOLDS && lambda.is_none() {
        bail!("need at least {} labelled pairs to choose the regularisation by cross-validation (have {})", 2 * FOLDS, pairs.len());
    }
    let y = [0, 1, 2].map(|m| pairs.iter().map(|p| p.labels[m]).collect::<Vec<u8>>());
    let folds: Vec<usize> = pairs.iter().map(|p| fold_of(&p.id, FOLDS)).collect();
    let mut cv = Vec::new();
    let grid: Vec<f64> = match lambda {
        Some(_) => Vec::new(),
        None => LAMBDA_GRID.to_vec(),
    };
    for (i, &l) in grid.iter().enumerate() {
        progress(i, grid.len() + 1);
        let opts = TrainOptions { features, lambda: [l; 3], ..TrainOptions::default() };
        cv.push(CvPoint { lambda: l, agreement: cross_validate(x, &y, &folds, FOLDS, embedding_dim, &opts)? });
    }
    let chosen = match lambda {
        Some(l) => l,
        None => [0, 1, 2].map(|m| {
            let mut best = &cv[0];
            for p in &cv {
                if p.agreement[m].macro_f1 >= best.agreement[m].macro_f1 - 1e-12 {
                    best = p;
                }
            }
            best.lambda
        }),
    };
    let cv_macro_f1 = [0, 1, 2].map(|m| cv.iter().find(|p| p.lambda == chosen[m]).map_or(f64::NAN, |p| p.agreement[m].macro_f1));
    progress(grid.len(), grid.len() + 1);
    let opts = TrainOptions { features, lambda: chosen, ..TrainOptions::default() };
    let mut heads = heads::train(x, &y, embedding_dim, &opts)?;
    for m in 0..3 {
        if cv_macro_f1[m].is_finite() {
            heads.metadata.insert(format!("cv_macro_f1_{}", SHORT[m]), format!("{:.4}", cv_macro_f1[m]));
        }
    }
    heads.metadata.insert("cv_folds".into(), FOLDS.to_string());
    progress(grid.len() + 1, grid.len() + 1);
    Ok((heads, TrainReport { n: pairs.len(), features: features.spec(), cv, lambda: chosen, cv_macro_f1 }))
}

/// Read labelled JSON lines, embed them, choose λ by CV (unless given), train, and record
/// provenance (training-set hash, files, date, embedder) in the heads' metadata.
/// `progress(stage, done, total)` is called with stage "embedding" then "cross-validating".
pub fn train_from_files(
    inputs: &[std::path::PathBuf],
    embedder: &bedside_embed::Embedder,
    embedder_name: &str,
    features: FeatureSet,
    lambda: Option<[f64; 3]>,
    created: &str,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<(Heads, TrainReport)> {
    let (pairs, hash) = crate::data::read_labelled(inputs)?;
    let mut x = Vec::with_capacity(pairs.len());
    progress("embedding", 0, pairs.len());
    for c in pairs.chunks(128) {
        let refs: Vec<(&str, &str)> = c.iter().map(|p| (p.context.as_str(), p.response.as_str())).collect();
        x.extend(crate::featurize(embedder, features, &refs)?);
        progress("embedding", x.len(), pairs.len());
    }
    let (mut heads, report) = train_with_cv(&pairs, &x, embedder.dim(), features, lambda, |d, t| progress("cross-validating", d, t))?;
    let name = |p: &std::path::Path| p.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string();
    heads.metadata.insert("training_set_sha256".into(), hash);
    heads.metadata.insert("training_files".into(), inputs.iter().map(|p| name(p)).collect::<Vec<_>>().join(","));
    heads.metadata.insert("created".into(), created.to_string());
    heads.metadata.insert("embedder".into(), embedder_name.to_string());
    Ok((heads, report))
}

/// Today's UTC date as YYYY-MM-DD (for heads metadata), without a date library.
pub fn utc_date_today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    civil_from_days((secs / 86_400) as i64)
}

/// Howard Hinnant's days-to-civil algorithm.
pub fn civil_from_days(z: i64) -> String {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), "1970-01-01");
        // 2000-03-01 is day 11017; 2024-02-29 is day 19782 (both from `date -d @N*86400`).
        assert_eq!(civil_from_days(11_017), "2000-03-01");
        assert_eq!(civil_from_days(19_782), "2024-02-29");
    }

    #[test]
    fn folds_are_stable_and_spread() {
        let f: Vec<usize> = (0..500).map(|i| fold_of(&format!("id-{i}"), 5)).collect();
        assert_eq!(f, (0..500).map(|i| fold_of(&format!("id-{i}"), 5)).collect::<Vec<_>>());
        for k in 0..5 {
            let c = f.iter().filter(|&&v| v == k).count();
            assert!((60..140).contains(&c), "fold {k} has {c}");
        }
    }
}
