//! Three multinomial logistic-regression heads (ER, IP, EX), their deterministic training, and
//! their safetensors file.
//!
//! Training is full-batch L-BFGS on the class-balanced, L2-regularised cross-entropy of
//! standardised features, in f64 with fixed summation order, so the same input gives
//! bit-identical heads.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::features::FeatureSet;

pub const MECHANISMS: [&str; 3] = ["emotional_reactions", "interpretations", "explorations"];
pub const SHORT: [&str; 3] = ["er", "ip", "ex"];
const FORMAT: &str = "bedside-empathy-heads";
const FORMAT_VERSION: &str = "1";

/// One 3-class head over standardised features.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    /// Row-major [3, d].
    pub weight: Vec<f32>,
    pub bias: [f32; 3],
}

impl Head {
    /// Class probabilities for standardised features `z`.
    pub fn probs(&self, z: &[f32]) -> [f32; 3] {
        let d = z.len();
        let mut logits = [0f64; 3];
        for (k, l) in logits.iter_mut().enumerate() {
            let row = &self.weight[k * d..(k + 1) * d];
            *l = self.bias[k] as f64 + row.iter().zip(z).map(|(w, x)| *w as f64 * *x as f64).sum::<f64>();
        }
        let p = softmax3(logits);
        [p[0] as f32, p[1] as f32, p[2] as f32]
    }
}

impl Head {
    /// Class probabilities for a sparse standardised row (index, value) of width `d`.
    pub fn probs_sparse(&self, z: &[(u32, f32)], d: usize) -> [f32; 3] {
        let mut logits = [0f64; 3];
        for (k, l) in logits.iter_mut().enumerate() {
            let row = &self.weight[k * d..(k + 1) * d];
            *l = self.bias[k] as f64 + z.iter().map(|&(j, x)| row[j as usize] as f64 * x as f64).sum::<f64>();
        }
        let p = softmax3(logits);
        [p[0] as f32, p[1] as f32, p[2] as f32]
    }
}

/// A sparse feature row: (index, value) pairs in increasing index order.
pub type SparseRow = Vec<(u32, f32)>;

/// The three heads with their shared feature standardisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Heads {
    pub features: FeatureSet,
    /// Embedding width the heads expect (0 for [`FeatureSet::Lexical`] trained without an embedder).
    pub embedding_dim: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// ER, IP, EX.
    pub heads: [Head; 3],
    /// IDF per n-gram bucket, for [`FeatureSet::NgramLexical`] heads (empty otherwise).
    pub idf: Vec<f32>,
    /// Free-form provenance (training set hash, date, hyperparameters), saved in the file header.
    pub metadata: BTreeMap<String, String>,
}

/// Hyperparameters for [`train`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub features: FeatureSet,
    /// L2 strength per mechanism (ER, IP, EX), on the mean weighted loss.
    pub lambda: [f64; 3],
    /// Weight classes inversely to their frequency (n / (3 n_c)).
    pub balanced: bool,
    pub max_iter: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { features: FeatureSet::LexicalResponse, lambda: [0.01; 3], balanced: true, max_iter: 400 }
    }
}

fn softmax3(l: [f64; 3]) -> [f64; 3] {
    let m = l[0].max(l[1]).max(l[2]);
    let e = [(l[0] - m).exp(), (l[1] - m).exp(), (l[2] - m).exp()];
    let s = e[0] + e[1] + e[2];
    [e[0] / s, e[1] / s, e[2] / s]
}

/// Per-feature mean and standard deviation (population); constant features get std 1.
pub fn standardisation(x: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let d = x.first().map_or(0, Vec::len);
    let n = x.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    for r in x {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; d];
    for r in x {
        for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    let std = var.iter().map(|s| (s / n).sqrt()).map(|s| if s < 1e-8 { 1.0 } else { s as f32 }).collect();
    (mean.iter().map(|m| *m as f32).collect(), std)
}

pub fn standardise(x: &[f32], mean: &[f32], std: &[f32]) -> Vec<f32> {
    x.iter().zip(mean).zip(std).map(|((v, m), s)| (v - m) / s).collect()
}

/// Class weights n / (3 n_c); a class with no examples gets weight 0.
pub fn class_weights(y: &[u8], balanced: bool) -> [f64; 3] {
    if !balanced {
        return [1.0; 3];
    }
    let mut c = [0usize; 3];
    for &l in y {
        c[l as usize] += 1;
    }
    let n = y.len() as f64;
    let mut w = [0.0; 3];
    for k in 0..3 {
        if c[k] > 0 {
            w[k] = n / (3.0 * c[k] as f64);
        }
    }
    w
}

/// Weighted mean cross-entropy + λ/2 ‖W‖² (bias unpenalised) and its gradient, over sparse rows
/// (index, value) of width `d` (a dense row is every index in order: the same sums in the same
/// order). θ = W row-major [3, d] followed by b[3].
fn loss_grad(theta: &[f64], z: &[Vec<(u32, f64)>], d: usize, y: &[u8], sw: &[f64], lambda: f64, grad: &mut [f64]) -> f64 {
    grad.iter_mut().for_each(|g| *g = 0.0);
    let wsum: f64 = sw.iter().sum::<f64>().max(1e-12);
    let mut loss = 0.0;
    for ((x, &yi), &wi) in z.iter().zip(y).zip(sw) {
        if wi == 0.0 {
            continue;
        }
        let mut l = [0f64; 3];
        for (k, lk) in l.iter_mut().enumerate() {
            let row = &theta[k * d..(k + 1) * d];
            *lk = theta[3 * d + k] + x.iter().map(|&(j, v)| row[j as usize] * v).sum::<f64>();
        }
        let p = softmax3(l);
        loss -= wi * p[yi as usize].max(1e-300).ln();
        for k in 0..3 {
            let r = wi * (p[k] - if k == yi as usize { 1.0 } else { 0.0 }) / wsum;
            let g = &mut grad[k * d..(k + 1) * d];
            for &(j, v) in x {
                g[j as usize] += r * v;
            }
            grad[3 * d + k] += r;
        }
    }
    loss /= wsum;
    for i in 0..3 * d {
        loss += 0.5 * lambda * theta[i] * theta[i];
        grad[i] += lambda * theta[i];
    }
    loss
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimise a smooth convex function with L-BFGS (memory 10) and Armijo backtracking.
fn lbfgs(theta: &mut [f64], max_iter: usize, mut f: impl FnMut(&[f64], &mut [f64]) -> f64) {
    let n = theta.len();
    let mut g = vec![0.0; n];
    let mut fx = f(theta, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut g_new = vec![0.0; n];
    let mut x_new = vec![0.0; n];
    for it in 0..max_iter {
        let gnorm = dot(&g, &g).sqrt();
        if gnorm < 1e-7 {
            break;
        }
        // Two-loop recursion for the search direction.
        let mut q = g.clone();
        let m = s_hist.len();
        let mut alpha = vec![0.0; m];
        for i in (0..m).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dot(&s_hist[i], &q);
            for (qv, yv) in q.iter_mut().zip(&y_hist[i]) {
                *qv -= alpha[i] * yv;
            }
        }
        let gamma = if m > 0 { dot(&s_hist[m - 1], &y_hist[m - 1]) / dot(&y_hist[m - 1], &y_hist[m - 1]) } else { 1.0 / gnorm };
        q.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..m {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &q);
            for (qv, sv) in q.iter_mut().zip(&s_hist[i]) {
                *qv += (alpha[i] - beta) * sv;
            }
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        let dir = if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            slope = -dot(&g, &g);
            g.iter().map(|v| -v / gnorm.max(1.0)).collect::<Vec<_>>()
        } else {
            dir
        };
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..40 {
            for i in 0..n {
                x_new[i] = theta[i] + step * dir[i];
            }
            let f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * step * slope {
                let s: Vec<f64> = (0..n).map(|i| x_new[i] - theta[i]).collect();
                let yv: Vec<f64> = (0..n).map(|i| g_new[i] - g[i]).collect();
                if dot(&s, &yv) > 1e-12 {
                    if s_hist.len() == 10 {
                        s_hist.remove(0);
                        y_hist.remove(0);
                    }
                    s_hist.push(s);
                    y_hist.push(yv);
                }
                theta.copy_from_slice(&x_new);
                g.copy_from_slice(&g_new);
                let rel = (fx - f_new).abs() / fx.abs().max(1e-12);
                fx = f_new;
                accepted = true;
                if rel < 1e-10 && it > 5 {
                    return;
                }
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
    }
}

/// Fit one head on standardised dense features.
pub fn fit_head(z: &[Vec<f64>], y: &[u8], lambda: f64, balanced: bool, max_iter: usize) -> Head {
    let d = z.first().map_or(0, Vec::len);
    let sparse: Vec<Vec<(u32, f64)>> = z.iter().map(|r| r.iter().enumerate().map(|(j, &v)| (j as u32, v)).collect()).collect();
    fit_head_sparse(&sparse, d, y, lambda, balanced, max_iter)
}

/// Fit one head on standardised sparse rows of width `d`.
pub fn fit_head_sparse(z: &[Vec<(u32, f64)>], d: usize, y: &[u8], lambda: f64, balanced: bool, max_iter: usize) -> Head {
    let cw = class_weights(y, balanced);
    let sw: Vec<f64> = y.iter().map(|&l| cw[l as usize]).collect();
    let mut theta = vec![0.0; 3 * d + 3];
    lbfgs(&mut theta, max_iter, |t, g| loss_grad(t, z, d, y, &sw, lambda, g));
    Head {
        weight: theta[..3 * d].iter().map(|v| *v as f32).collect(),
        bias: [theta[3 * d] as f32, theta[3 * d + 1] as f32, theta[3 * d + 2] as f32],
    }
}

/// Train all three heads on raw feature rows `x` with labels `y[m][i]` (m = ER, IP, EX).
pub fn train(x: &[Vec<f32>], y: &[Vec<u8>; 3], embedding_dim: usize, opts: &TrainOptions) -> Result<Heads> {
    if x.is_empty() {
        bail!("no training examples");
    }
    let d = opts.features.width(embedding_dim);
    if let Some((i, r)) = x.iter().enumerate().find(|(_, r)| r.len() != d) {
        bail!("feature row {i} has {} values, expected {d}", r.len());
    }
    for (m, ys) in y.iter().enumerate() {
        if ys.len() != x.len() {
            bail!("{} labels: {} for {} examples", MECHANISMS[m], ys.len(), x.len());
        }
        if let Some(l) = ys.iter().find(|&&l| l > 2) {
            bail!("{} label {l} is outside 0..=2", MECHANISMS[m]);
        }
    }
    let (mean, std) = standardisation(x);
    let z: Vec<Vec<f64>> = x.iter().map(|r| standardise(r, &mean, &std).into_iter().map(f64::from).collect()).collect();
    let heads = [0, 1, 2].map(|m| fit_head(&z, &y[m], opts.lambda[m], opts.balanced, opts.max_iter));
    let mut metadata = BTreeMap::new();
    for m in 0..3 {
        let mut c = [0usize; 3];
        y[m].iter().for_each(|&l| c[l as usize] += 1);
        metadata.insert(format!("class_counts_{}", SHORT[m]), format!("{},{},{}", c[0], c[1], c[2]));
        metadata.insert(format!("lambda_{}", SHORT[m]), format!("{}", opts.lambda[m]));
    }
    metadata.insert("n_train".into(), x.len().to_string());
    metadata.insert("class_balanced".into(), opts.balanced.to_string());
    Ok(Heads { features: opts.features, embedding_dim, mean, std, heads, idf: Vec::new(), metadata })
}

impl Heads {
    pub fn width(&self) -> usize {
        self.mean.len()
    }

    /// Probabilities [ER, IP, EX][level] for one raw feature row.
    pub fn predict(&self, x: &[f32]) -> [[f32; 3]; 3] {
        let z = standardise(x, &self.mean, &self.std);
        [self.heads[0].probs(&z), self.heads[1].probs(&z), self.heads[2].probs(&z)]
    }

    /// [`Heads::predict`] for a sparse raw row: every feature whose mean is not 0 must be present
    /// (absent entries are taken as 0, which standardises to 0 only where the mean is 0).
    pub fn predict_sparse(&self, x: &[(u32, f32)]) -> [[f32; 3]; 3] {
        let z: Vec<(u32, f32)> = x.iter().map(|&(j, v)| (j, (v - self.mean[j as usize]) / self.std[j as usize])).collect();
        let d = self.width();
        [self.heads[0].probs_sparse(&z, d), self.heads[1].probs_sparse(&z, d), self.heads[2].probs_sparse(&z, d)]
    }

    /// Write a safetensors file atomically (`bedside_io`: unique temp, fsync, rename, directory
    /// fsync). The header is built with sorted keys so identical heads give identical bytes.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        bedside_io::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let d = self.width();
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
        tensors.insert("feature.mean".into(), (vec![d], self.mean.clone()));
        tensors.insert("feature.std".into(), (vec![d], self.std.clone()));
        for (m, h) in self.heads.iter().enumerate() {
            tensors.insert(format!("{}.weight", SHORT[m]), (vec![3, d], h.weight.clone()));
            tensors.insert(format!("{}.bias", SHORT[m]), (vec![3], h.bias.to_vec()));
        }
        if !self.idf.is_empty() {
            tensors.insert("ngram.idf".into(), (vec![self.idf.len()], self.idf.clone()));
        }
        let mut meta = self.metadata.clone();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("format_version".into(), FORMAT_VERSION.into());
        meta.insert("feature_spec".into(), self.features.spec());
        meta.insert("embedding_dim".into(), self.embedding_dim.to_string());
        meta.insert("mechanisms".into(), MECHANISMS.join(","));
        meta.insert("lexical_features".into(), crate::features::LEXICAL_NAMES.join(","));
        let entries: Vec<bedside_io::safetensors::TensorEntry> = tensors
            .iter()
            .map(|(name, (shape, vals))| bedside_io::safetensors::TensorEntry { name, dtype: "F32", shape, bytes: 4 * vals.len() })
            .collect();
        let mut out = bedside_io::safetensors::header(&entries, Some(&meta))?;
        for (_, vals) in tensors.values() {
            for v in vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(out)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading empathy heads {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("loading empathy heads {}", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).context("not a valid safetensors file")?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
        let meta: BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            bail!("header metadata lacks format={FORMAT}: not an empathy heads file");
        }
        if meta.get("format_version").map(String::as_str) != Some(FORMAT_VERSION) {
            bail!("unsupported heads format_version {:?} (this build reads {FORMAT_VERSION})", meta.get("format_version"));
        }
        let features = FeatureSet::parse_spec(meta.get("feature_spec").context("metadata lacks feature_spec")?)?;
        let embedding_dim: usize =
            meta.get("embedding_dim").context("metadata lacks embedding_dim")?.parse().context("embedding_dim is not a number")?;
        let d = features.width(embedding_dim);
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st.tensor(name).with_context(|| format!("missing tensor {name}"))?;
            if t.dtype() != safetensors::Dtype::F32 {
                bail!("tensor {name} has dtype {:?}, expected F32", t.dtype());
            }
            if t.shape() != shape {
                bail!("tensor {name} has shape {:?}, expected {shape:?}", t.shape());
            }
            Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        let mean = get("feature.mean", &[d])?;
        let std = get("feature.std", &[d])?;
        if std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            bail!("feature.std has non-positive or non-finite values");
        }
        let mut heads = Vec::new();
        for s in SHORT {
            let weight = get(&format!("{s}.weight"), &[3, d])?;
            let b = get(&format!("{s}.bias"), &[3])?;
            heads.push(Head { weight, bias: [b[0], b[1], b[2]] });
        }
        let heads: [Head; 3] = heads.try_into().map_err(|_| anyhow::anyhow!("three heads expected"))?;
        let idf = if features == FeatureSet::NgramLexical {
            let idf = get("ngram.idf", &[crate::ngrams::BUCKETS])?;
            if idf.iter().any(|v| !v.is_finite() || *v < 0.0) {
                bail!("ngram.idf has negative or non-finite values");
            }
            idf
        } else {
            Vec::new()
        };
        let mut metadata = meta;
        for k in ["format", "format_version", "feature_spec", "embedding_dim", "mechanisms", "lexical_features"] {
            metadata.remove(k);
        }
        Ok(Heads { features, embedding_dim, mean, std, heads, idf, metadata })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense_rows(z: &[Vec<f64>]) -> Vec<Vec<(u32, f64)>> {
        z.iter().map(|r| r.iter().enumerate().map(|(j, &v)| (j as u32, v)).collect()).collect()
    }

    #[test]
    fn sparse_rows_fit_and_predict_like_dense_ones() {
        // Rows with zeros left out give the same head as the dense rows, bit for bit.
        let dense = vec![vec![0.0, 1.5, 0.0], vec![-1.0, 0.0, 0.5], vec![0.0, -0.5, 2.0], vec![1.0, 0.0, 0.0]];
        let y = vec![0u8, 1, 2, 0];
        let sparse: Vec<Vec<(u32, f64)>> =
            dense.iter().map(|r| r.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(j, &v)| (j as u32, v)).collect()).collect();
        let a = fit_head(&dense, &y, 0.05, true, 200);
        let b = fit_head_sparse(&sparse, 3, &y, 0.05, true, 200);
        assert_eq!(a, b);
        let z = [0.5f32, 0.0, -1.0];
        assert_eq!(a.probs(&z), a.probs_sparse(&[(0, 0.5), (2, -1.0)], 3));
    }

    #[test]
    fn logistic_regression_separates_and_matches_closed_form_binary_case() {
        // Two separable 1-d clusters for classes 0 and 2; class 1 empty (weight 0).
        let z: Vec<Vec<f64>> = vec![vec![-2.0], vec![-1.0], vec![1.0], vec![2.0]];
        let y = vec![0u8, 0, 2, 2];
        let h = fit_head(&z, &y, 0.1, true, 500);
        let p_lo = h.probs(&[-1.5]);
        let p_hi = h.probs(&[1.5]);
        assert!(p_lo[0] > 0.5 && p_hi[2] > 0.5, "{p_lo:?} {p_hi:?}");
        // Gradient at the optimum is ~0: check by finite differences of the loss.
        let sw = vec![2.0 / 3.0 * 2.0 / 2.0; 4];
        let z = dense_rows(&z);
        let mut theta: Vec<f64> = h.weight.iter().map(|v| *v as f64).chain(h.bias.iter().map(|v| *v as f64)).collect();
        let mut g = vec![0.0; theta.len()];
        let f0 = loss_grad(&theta, &z, 1, &y, &sw, 0.1, &mut g);
        theta[2] += 1e-3; // weight of class 2
        let f1 = loss_grad(&theta, &z, 1, &y, &sw, 0.1, &mut g);
        assert!((f1 - f0).abs() < 1e-5, "not at optimum: {f0} {f1}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let z = dense_rows(&[vec![0.3, -1.0], vec![1.2, 0.4], vec![-0.7, 0.9], vec![0.1, 0.1]]);
        let y = vec![0u8, 1, 2, 1];
        let sw = vec![1.0, 0.5, 2.0, 0.5];
        let theta: Vec<f64> = (0..9).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut g = vec![0.0; 9];
        loss_grad(&theta, &z, 2, &y, &sw, 0.2, &mut g);
        for i in 0..9 {
            let mut tp = theta.clone();
            let mut tm = theta.clone();
            tp[i] += 1e-6;
            tm[i] -= 1e-6;
            let mut s = vec![0.0; 9];
            let num = (loss_grad(&tp, &z, 2, &y, &sw, 0.2, &mut s) - loss_grad(&tm, &z, 2, &y, &sw, 0.2, &mut s)) / 2e-6;
            assert!((num - g[i]).abs() < 1e-6, "param {i}: {num} vs {}", g[i]);
        }
    }
}
