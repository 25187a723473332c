//! The few statistics the run needs beyond bedside-metrics: summaries, the exact sign test (also
//! McNemar's exact test on paired binary outcomes) and Holm's step-down correction.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub sd: f64,
    pub median: f64,
    /// Bootstrap confidence interval of the mean (filled in by the run; NaN when unknown).
    #[serde(default = "nan")]
    pub ci_low: f64,
    #[serde(default = "nan")]
    pub ci_high: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// Mean, sample standard deviation (n − 1) and median; NaN fields when empty.
pub fn summary(xs: &[f64]) -> Summary {
    let n = xs.len();
    if n == 0 {
        return Summary { n, mean: f64::NAN, sd: f64::NAN, median: f64::NAN, ci_low: f64::NAN, ci_high: f64::NAN };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 { (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) };
    Summary { n, mean, sd, median, ci_low: f64::NAN, ci_high: f64::NAN }
}

fn ln_choose(n: u64, k: u64) -> f64 {
    let k = k.min(n - k);
    (0..k).map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln()).sum()
}

/// P(X ≤ k) for X ~ Binomial(n, ½).
pub fn binom_cdf_half(k: u64, n: u64) -> f64 {
    if k >= n {
        return 1.0;
    }
    let ln2n = n as f64 * std::f64::consts::LN_2;
    (0..=k).map(|i| (ln_choose(n, i) - ln2n).exp()).sum::<f64>().min(1.0)
}

/// Two-sided exact sign test: p = min(1, 2·P(X ≤ min(a, b))), X ~ Binomial(a + b, ½). With
/// a, b = the discordant pairs this is McNemar's exact test (seeds.md §7.5, §7.6).
pub fn sign_test(a: u64, b: u64) -> f64 {
    let n = a + b;
    if n == 0 {
        return 1.0;
    }
    (2.0 * binom_cdf_half(a.min(b), n)).min(1.0)
}

/// Holm's step-down adjusted p-values, in the input order.
pub fn holm(ps: &[f64]) -> Vec<f64> {
    let m = ps.len();
    let mut idx: Vec<usize> = (0..m).collect();
    idx.sort_by(|&a, &b| ps[a].total_cmp(&ps[b]));
    let mut out = vec![f64::NAN; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in idx.iter().enumerate() {
        if ps[i].is_nan() {
            continue;
        }
        running = running.max(((m - rank) as f64 * ps[i]).min(1.0));
        out[i] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_values() {
        let s = summary(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.mean, 5.0);
        // Sample sd of this textbook set: sqrt(32/7).
        assert!((s.sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.median, 4.5);
        assert!(summary(&[]).mean.is_nan());
    }

    #[test]
    fn sign_test_textbook() {
        // 1 of 10 discordant pairs: P(X<=1) = 11/1024, two-sided 22/1024 = 0.021484375.
        assert!((sign_test(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((sign_test(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
        // scipy.stats.binomtest(5, 20).pvalue = 0.04138946533203125
        assert!((sign_test(5, 15) - 0.041_389_465_332_031_25).abs() < 1e-12);
        assert_eq!(sign_test(5, 5), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
    }

    #[test]
    fn holm_matches_r() {
        // R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") = 0.03 0.06 0.06 0.02
        let h = holm(&[0.01, 0.04, 0.03, 0.005]);
        for (a, b) in h.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert!((a - b).abs() < 1e-12, "{h:?}");
        }
    }
}
