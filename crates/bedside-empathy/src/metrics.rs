//! Agreement of 3-level predictions with human labels: confusion matrix, accuracy, macro-F1 and
//! quadratic-weighted κ (seeds.md §7.4).

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Agreement {
    pub n: usize,
    /// Rows = human label, columns = prediction.
    pub confusion: [[usize; 3]; 3],
    pub accuracy: f64,
    /// Per-class F1 (0 where a class has neither support nor predictions).
    pub f1: [f64; 3],
    pub macro_f1: f64,
    pub quadratic_kappa: f64,
    /// Human label counts 0/1/2.
    pub support: [usize; 3],
    /// Macro-F1 of always predicting the most frequent human label.
    pub majority_macro_f1: f64,
}

pub fn confusion(truth: &[u8], pred: &[u8]) -> [[usize; 3]; 3] {
    let mut c = [[0usize; 3]; 3];
    for (&t, &p) in truth.iter().zip(pred) {
        c[t as usize][p as usize] += 1;
    }
    c
}

fn f1s(c: &[[usize; 3]; 3]) -> [f64; 3] {
    let mut f = [0.0; 3];
    for k in 0..3 {
        let tp = c[k][k] as f64;
        let fp: f64 = (0..3).filter(|&i| i != k).map(|i| c[i][k] as f64).sum();
        let fn_: f64 = (0..3).filter(|&j| j != k).map(|j| c[k][j] as f64).sum();
        f[k] = if tp == 0.0 { 0.0 } else { 2.0 * tp / (2.0 * tp + fp + fn_) };
    }
    f
}

/// κ_w = 1 − Σ w_ij O_ij / Σ w_ij E_ij with w_ij = (i − j)² / 4.
pub fn quadratic_kappa(c: &[[usize; 3]; 3]) -> f64 {
    let n: f64 = c.iter().flatten().map(|&v| v as f64).sum();
    if n == 0.0 {
        return 0.0;
    }
    let rows: Vec<f64> = (0..3).map(|i| c[i].iter().map(|&v| v as f64).sum()).collect();
    let cols: Vec<f64> = (0..3).map(|j| (0..3).map(|i| c[i][j] as f64).sum()).collect();
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..3 {
        for j in 0..3 {
            let w = ((i as f64 - j as f64).powi(2)) / 4.0;
            num += w * c[i][j] as f64;
            den += w * rows[i] * cols[j] / n;
        }
    }
    if den == 0.0 {
        0.0
    } else {
        1.0 - num / den
    }
}

pub fn agreement(truth: &[u8], pred: &[u8]) -> Agreement {
    let c = confusion(truth, pred);
    let n = truth.len().min(pred.len());
    let correct: usize = (0..3).map(|k| c[k][k]).sum();
    let f1 = f1s(&c);
    let support = [0, 1, 2].map(|k| c[k].iter().sum::<usize>());
    let maj = (0..3).max_by_key(|&k| (support[k], std::cmp::Reverse(k))).unwrap_or(0);
    let mut cm = [[0usize; 3]; 3];
    for k in 0..3 {
        cm[k][maj] = support[k];
    }
    let mf = f1s(&cm);
    Agreement {
        n,
        confusion: c,
        accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        f1,
        macro_f1: f1.iter().sum::<f64>() / 3.0,
        quadratic_kappa: quadratic_kappa(&c),
        support,
        majority_macro_f1: mf.iter().sum::<f64>() / 3.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_matches_scikit_learn_documentation_example() {
        // sklearn.metrics.f1_score docs: y_true=[0,1,2,0,1,2], y_pred=[0,2,1,0,0,1],
        // average='macro' → 0.26666..., average=None → [0.8, 0, 0]; accuracy_score → 0.333...
        let a = agreement(&[0, 1, 2, 0, 1, 2], &[0, 2, 1, 0, 0, 1]);
        assert!((a.macro_f1 - 0.266_666_666_666_666_66).abs() < 1e-12);
        assert!((a.f1[0] - 0.8).abs() < 1e-12 && a.f1[1] == 0.0 && a.f1[2] == 0.0);
        assert!((a.accuracy - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn quadratic_kappa_limits() {
        // Perfect agreement → 1; predictions independent of the truth with equal marginals → 0.
        assert!((quadratic_kappa(&[[5, 0, 0], [0, 3, 0], [0, 0, 2]]) - 1.0).abs() < 1e-12);
        assert!(quadratic_kappa(&[[1, 1, 1], [1, 1, 1], [1, 1, 1]]).abs() < 1e-12);
        // Hand computation: O=[[2,0,0],[0,0,1],[1,0,0]], rows 2,1,1, cols 3,0,1, N=4.
        // Σ w O = 0.25·1 (1,2) + 1·1 (2,0) = 1.25; E_ij=r_i c_j/4:
        // Σ w E = 0.25(E01+E10+E12+E21) + 1(E02+E20) = 0.25(0+0.75+0.25+0) + (0.5+0.75) = 1.5
        let k = quadratic_kappa(&[[2, 0, 0], [0, 0, 1], [1, 0, 0]]);
        assert!((k - (1.0 - 1.25 / 1.5)).abs() < 1e-12, "{k}");
    }

    #[test]
    fn majority_baseline() {
        let a = agreement(&[0, 0, 0, 1, 2], &[0, 0, 0, 1, 2]);
        // Always 0: F1_0 = 2·3/(2·3+2) = 0.75, others 0 → 0.25.
        assert!((a.majority_macro_f1 - 0.25).abs() < 1e-12);
        assert_eq!(a.macro_f1, 1.0);
    }
}
