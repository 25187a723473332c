//! Statistics for base-vs-tuned comparisons: descriptive summaries, paired bootstrap confidence
//! intervals, the Wilcoxon signed-rank test (as `scipy.stats.wilcoxon` with its defaults), χ² with
//! Yates' correction on 2×2 tables (as `scipy.stats.chi2_contingency`), the exact sign test (also
//! McNemar's exact test), Holm's step-down correction, a two-sample permutation test, and "Δ%".
//! Resampling uses a small seeded generator (SplitMix64) so results are reproducible across
//! platforms and crate versions.

use statrs::function::erf::erfc;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("{what}: the two samples differ in length ({a} vs {b})")]
    LengthMismatch { what: &'static str, a: usize, b: usize },
    #[error("{0}: no data")]
    Empty(&'static str),
    #[error("{0}: value is not a finite number")]
    NotFinite(&'static str),
    #[error("chi-square: {0}")]
    InvalidTable(String),
}

pub type Result<T> = std::result::Result<T, StatsError>;

/// Arithmetic mean (NaN for an empty slice).
pub fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    x.iter().sum::<f64>() / x.len() as f64
}

/// Sample standard deviation (n − 1 denominator; NaN below two values).
pub fn sd(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return f64::NAN;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Median (the mean of the two middle values for an even count; NaN for an empty slice).
pub fn median(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let mut s = x.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
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
/// a, b = the discordant pairs this is McNemar's exact test.
pub fn sign_test(a: u64, b: u64) -> f64 {
    let n = a + b;
    if n == 0 {
        return 1.0;
    }
    (2.0 * binom_cdf_half(a.min(b), n)).min(1.0)
}

/// Holm's step-down adjusted p-values, in the input order (NaN inputs stay NaN and do not count
/// towards the number of tests).
pub fn holm(ps: &[f64]) -> Vec<f64> {
    let m = ps.iter().filter(|p| !p.is_nan()).count();
    let mut idx: Vec<usize> = (0..ps.len()).filter(|&i| !ps[i].is_nan()).collect();
    idx.sort_by(|&a, &b| ps[a].total_cmp(&ps[b]));
    let mut out = vec![f64::NAN; ps.len()];
    let mut running: f64 = 0.0;
    for (rank, &i) in idx.iter().enumerate() {
        running = running.max(((m - rank) as f64 * ps[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// "Δ%" as in 2406.05063: (tuned − base) / base × 100; `None` when base is 0.
pub fn delta_pct(tuned: f64, base: f64) -> Option<f64> {
    if base == 0.0 || !base.is_finite() || !tuned.is_finite() {
        None
    } else {
        Some((tuned - base) / base * 100.0)
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, seedable, stable.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (Lemire's multiply-shift; bias below 2⁻³² for any n used here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

fn check(what: &'static str, a: &[f64], b: &[f64]) -> Result<()> {
    if a.len() != b.len() {
        return Err(StatsError::LengthMismatch { what, a: a.len(), b: b.len() });
    }
    if a.is_empty() {
        return Err(StatsError::Empty(what));
    }
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return Err(StatsError::NotFinite(what));
    }
    Ok(())
}

/// Linear-interpolated quantile of sorted data (numpy's default `linear` method).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A bootstrap confidence interval of a mean paired difference (tuned − base).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BootstrapCi {
    pub mean_diff: f64,
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
    pub reps: usize,
    pub seed: u64,
    /// Resampled units: items (pairs, or clusters of samples).
    pub n: usize,
    /// Two-sided bootstrap p-value of "no difference": the smallest 1 − level whose percentile
    /// interval would exclude 0, i.e. 2 · min(#{d* ≤ 0} + 1, #{d* ≥ 0} + 1) / (reps + 1), at most 1.
    pub p_value: f64,
}

impl BootstrapCi {
    /// The interval excludes zero.
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

pub const DEFAULT_BOOTSTRAP_REPS: usize = 10_000;

/// Percentile interval and p-value from resampled means.
fn percentile_ci(mut means: Vec<f64>, mean_diff: f64, level: f64, reps: usize, seed: u64, n: usize) -> BootstrapCi {
    let at_or_below = means.iter().filter(|&&m| m <= 0.0).count();
    let at_or_above = means.iter().filter(|&&m| m >= 0.0).count();
    let p_value = (2.0 * (at_or_below.min(at_or_above) + 1) as f64 / (reps + 1) as f64).min(1.0);
    means.sort_by(f64::total_cmp);
    let a = (1.0 - level) / 2.0;
    BootstrapCi { mean_diff, lo: quantile_sorted(&means, a), hi: quantile_sorted(&means, 1.0 - a), level, reps, seed, n, p_value }
}

/// Paired percentile bootstrap of mean(tuned − base): resample items with replacement `reps`
/// times; the interval is the (1−level)/2 and (1+level)/2 quantiles of the resampled means.
pub fn paired_bootstrap(base: &[f64], tuned: &[f64], reps: usize, seed: u64, level: f64) -> Result<BootstrapCi> {
    check("paired bootstrap", base, tuned)?;
    let d: Vec<f64> = tuned.iter().zip(base).map(|(t, b)| t - b).collect();
    let n = d.len();
    let reps = reps.max(1);
    let mut rng = SplitMix64::new(seed);
    let means: Vec<f64> = (0..reps).map(|_| (0..n).map(|_| d[rng.below(n)]).sum::<f64>() / n as f64).collect();
    Ok(percentile_ci(means, mean(&d), level, reps, seed, n))
}

/// Paired bootstrap clustered by item, for several answers sampled per item: `base[i]` and
/// `tuned[i]` hold item i's samples (the same count for both, sample k of each drawn with the
/// same seed). Items are resampled with replacement and keep all their samples, so the interval
/// carries both the spread between items and the randomness of generation within them (the
/// item's mean difference is the unit). With one sample per item this is [`paired_bootstrap`].
pub fn clustered_bootstrap(base: &[Vec<f64>], tuned: &[Vec<f64>], reps: usize, seed: u64, level: f64) -> Result<BootstrapCi> {
    if base.len() != tuned.len() {
        return Err(StatsError::LengthMismatch { what: "clustered bootstrap", a: base.len(), b: tuned.len() });
    }
    let mut b_means = Vec::with_capacity(base.len());
    let mut t_means = Vec::with_capacity(base.len());
    for (b, t) in base.iter().zip(tuned) {
        if b.len() != t.len() {
            return Err(StatsError::LengthMismatch { what: "clustered bootstrap (samples of one item)", a: b.len(), b: t.len() });
        }
        if b.is_empty() {
            return Err(StatsError::Empty("clustered bootstrap (an item without samples)"));
        }
        b_means.push(mean(b));
        t_means.push(mean(t));
    }
    paired_bootstrap(&b_means, &t_means, reps, seed, level)
}

/// 95% interval with 10 000 resamples.
pub fn paired_bootstrap_95(base: &[f64], tuned: &[f64], seed: u64) -> Result<BootstrapCi> {
    paired_bootstrap(base, tuned, DEFAULT_BOOTSTRAP_REPS, seed, 0.95)
}

/// How a Wilcoxon p-value was computed (scipy's `method='auto'` choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WilcoxonMethod {
    /// Exact null distribution (n ≤ 50, no ties, no zeros).
    Exact,
    /// All 2ⁿ sign flips enumerated (n ≤ 13 with ties or zeros).
    Permutation,
    /// Normal approximation with tie correction, no continuity correction.
    Asymptotic,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Wilcoxon {
    /// min(R+, R−), as scipy reports for the two-sided test.
    pub statistic: f64,
    pub pvalue: f64,
    /// Non-zero differences used.
    pub n: usize,
    pub method: WilcoxonMethod,
    /// z of the normal approximation (two-sided: −|z|), when used.
    pub z: Option<f64>,
}

/// Average ranks of `v` (1-based) and tie-group sizes.
fn rank_average(v: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut ranks = vec![0.0; v.len()];
    let mut groups = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        groups.push(j - i + 1);
        i = j + 1;
    }
    (ranks, groups)
}

/// Null distribution of R+ for n untied ranks: P(R+ = k), k = 0..n(n+1)/2 (scipy's recursion).
fn wilcoxon_pmf(n: usize) -> Vec<f64> {
    let mut c = vec![1.0f64];
    for k in 1..=n {
        let mut next = vec![0.0; k * (k + 1) / 2 + 1];
        let m = c.len();
        let len = next.len();
        for (i, &p) in c.iter().enumerate() {
            next[i] += p * 0.5;
            next[len - m + i] += p * 0.5;
        }
        c = next;
    }
    c
}

fn std_normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Two-sided Wilcoxon signed-rank test of paired samples `x`, `y` (differences x − y), matching
/// `scipy.stats.wilcoxon(x, y)` defaults: zeros dropped (`zero_method='wilcox'`), no continuity
/// correction, `method='auto'`.
pub fn wilcoxon(x: &[f64], y: &[f64]) -> Result<Wilcoxon> {
    check("wilcoxon", x, y)?;
    let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).collect();
    wilcoxon_diffs(&d)
}

/// [`wilcoxon`] on the differences.
pub fn wilcoxon_diffs(d: &[f64]) -> Result<Wilcoxon> {
    if d.is_empty() {
        return Err(StatsError::Empty("wilcoxon"));
    }
    if d.iter().any(|v| !v.is_finite()) {
        return Err(StatsError::NotFinite("wilcoxon"));
    }
    let n_total = d.len();
    let n_zero = d.iter().filter(|&&v| v == 0.0).count();
    let nz: Vec<f64> = d.iter().copied().filter(|&v| v != 0.0).collect();
    let count = nz.len();
    let abs: Vec<f64> = nz.iter().map(|v| v.abs()).collect();
    let (ranks, groups) = rank_average(&abs);
    let r_plus: f64 = nz.iter().zip(&ranks).filter(|(v, _)| **v > 0.0).map(|(_, r)| r).sum();
    let r_minus: f64 = nz.iter().zip(&ranks).filter(|(v, _)| **v < 0.0).map(|(_, r)| r).sum();
    let has_ties = groups.iter().any(|&g| g > 1);
    let statistic = r_plus.min(r_minus);

    let method = if n_total > 50 {
        WilcoxonMethod::Asymptotic
    } else if !has_ties && n_zero == 0 {
        WilcoxonMethod::Exact
    } else if n_total <= 13 {
        WilcoxonMethod::Permutation
    } else {
        WilcoxonMethod::Asymptotic
    };

    let (pvalue, z) = match method {
        WilcoxonMethod::Asymptotic => {
            let c = count as f64;
            let mn = c * (c + 1.0) * 0.25;
            let tie: f64 = groups.iter().map(|&t| (t as f64).powi(3) - t as f64).sum();
            let se = ((c * (c + 1.0) * (2.0 * c + 1.0) - tie / 2.0) / 24.0).sqrt();
            if se == 0.0 {
                (f64::NAN, None)
            } else {
                let z = (r_plus - mn) / se;
                let p = (2.0 * std_normal_cdf(-z.abs())).min(1.0);
                (p, Some(-z.abs()))
            }
        }
        WilcoxonMethod::Exact => {
            let pmf = wilcoxon_pmf(count);
            let mean = (count * (count + 1)) as f64 / 4.0;
            let cdf_direct = |k: i64| -> f64 {
                if k < 0 {
                    0.0
                } else {
                    pmf[..=(k as usize).min(pmf.len() - 1)].iter().sum()
                }
            };
            let sf_direct = |k: i64| -> f64 {
                if k <= 0 {
                    1.0
                } else if k as usize >= pmf.len() {
                    0.0
                } else {
                    pmf[k as usize..].iter().sum()
                }
            };
            let cdf = |k: i64| if k as f64 <= mean { cdf_direct(k) } else { 1.0 - sf_direct(k + 1) };
            let sf = |k: i64| if k as f64 <= mean { sf_direct(k) } else { 1.0 - cdf_direct(k - 1) };
            let p = 2.0 * sf(r_plus.floor() as i64).min(cdf(r_plus.ceil() as i64));
            (p.clamp(0.0, 1.0), None)
        }
        WilcoxonMethod::Permutation => {
            // scipy.stats.permutation_test with permutation_type='samples': every sign flip of
            // every difference (zeros included), exact, with its relative tolerance.
            let signed: Vec<(f64, f64)> = d.iter().map(|&v| (v, 0.0)).collect();
            let rank_of: Vec<f64> = {
                let mut it = ranks.iter();
                signed.iter().map(|(v, _)| if *v != 0.0 { *it.next().unwrap_or(&0.0) } else { 0.0 }).collect()
            };
            let total = 1usize << n_total;
            let gamma = (f64::EPSILON * 100.0 * r_plus).abs();
            let (mut le, mut ge) = (0usize, 0usize);
            for mask in 0..total {
                let mut s = 0.0;
                for (i, &(v, _)) in signed.iter().enumerate() {
                    let flipped = mask >> i & 1 == 1;
                    let positive = if flipped { v < 0.0 } else { v > 0.0 };
                    if positive {
                        s += rank_of[i];
                    }
                }
                if s <= r_plus + gamma {
                    le += 1;
                }
                if s >= r_plus - gamma {
                    ge += 1;
                }
            }
            let p = 2.0 * (le.min(ge) as f64 / total as f64);
            (p.clamp(0.0, 1.0), None)
        }
    };
    Ok(Wilcoxon { statistic, pvalue, n: count, method, z })
}

/// Survival function of χ² with one degree of freedom: P(X ≥ x) = erfc(√(x/2)).
pub fn chi2_sf_df1(x: f64) -> f64 {
    if x <= 0.0 {
        1.0
    } else {
        erfc((x / 2.0).sqrt())
    }
}

/// Result of a 2×2 χ² test.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chi2 {
    pub statistic: f64,
    pub pvalue: f64,
    pub dof: usize,
    pub expected: [[f64; 2]; 2],
}

/// χ² test of independence on a 2×2 table with Yates' continuity correction, as
/// `scipy.stats.chi2_contingency(table)` (correction=True): each observed count moves toward its
/// expected count by min(0.5, |O − E|).
pub fn chi2_yates(table: [[f64; 2]; 2]) -> Result<Chi2> {
    if table.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(StatsError::InvalidTable("counts must be finite and non-negative".into()));
    }
    let rows = [table[0][0] + table[0][1], table[1][0] + table[1][1]];
    let cols = [table[0][0] + table[1][0], table[0][1] + table[1][1]];
    let n = rows[0] + rows[1];
    let mut expected = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            expected[i][j] = rows[i] * cols[j] / n;
        }
    }
    if expected.iter().flatten().any(|&e| e == 0.0 || !e.is_finite()) {
        return Err(StatsError::InvalidTable(format!("a row or column sums to zero (table {table:?}); the test is undefined")));
    }
    let mut stat = 0.0;
    for i in 0..2 {
        for j in 0..2 {
            let (o, e) = (table[i][j], expected[i][j]);
            let diff = e - o;
            let o = o + diff.signum() * diff.abs().min(0.5) * f64::from(diff != 0.0);
            stat += (o - e) * (o - e) / e;
        }
    }
    Ok(Chi2 { statistic: stat, pvalue: chi2_sf_df1(stat), dof: 1, expected })
}

/// χ² (Yates) comparing two rates, e.g. "Good" answers: `good_a` of `n_a` vs `good_b` of `n_b`.
pub fn chi2_rates(good_a: usize, n_a: usize, good_b: usize, n_b: usize) -> Result<Chi2> {
    if good_a > n_a || good_b > n_b {
        return Err(StatsError::InvalidTable(format!("successes exceed trials ({good_a}/{n_a}, {good_b}/{n_b})")));
    }
    chi2_yates([[good_a as f64, (n_a - good_a) as f64], [good_b as f64, (n_b - good_b) as f64]])
}

/// Two-sample permutation test of a difference in means.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Permutation {
    /// mean(b) − mean(a).
    pub diff: f64,
    /// Two-sided p = (1 + #{|permuted diff| ≥ |observed|}) / (reps + 1).
    pub pvalue: f64,
    pub reps: usize,
    pub seed: u64,
}

/// Permutation test (random relabelling of the pooled values, `reps` times, seeded).
pub fn permutation_test(a: &[f64], b: &[f64], reps: usize, seed: u64) -> Result<Permutation> {
    if a.is_empty() || b.is_empty() {
        return Err(StatsError::Empty("permutation test"));
    }
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return Err(StatsError::NotFinite("permutation test"));
    }
    let observed = mean(b) - mean(a);
    let mut pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let total: f64 = pooled.iter().sum();
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let reps = reps.max(1);
    let tol = 1e-12 * observed.abs().max(1e-300);
    let mut rng = SplitMix64::new(seed);
    let mut extreme = 0usize;
    for _ in 0..reps {
        // Partial Fisher–Yates: the first |a| slots become the new group a.
        for i in 0..a.len() {
            let j = i + rng.below(pooled.len() - i);
            pooled.swap(i, j);
        }
        let sa: f64 = pooled[..a.len()].iter().sum();
        let d = (total - sa) / nb - sa / na;
        if d.abs() >= observed.abs() - tol {
            extreme += 1;
        }
    }
    Ok(Permutation { diff: observed, pvalue: (extreme + 1) as f64 / (reps + 1) as f64, reps, seed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clustered_bootstrap_is_the_paired_bootstrap_of_item_means() {
        let base = vec![vec![1.0, 2.0], vec![0.0, 0.5], vec![3.0, 3.0], vec![1.0, 0.0]];
        let tuned = vec![vec![2.0, 2.0], vec![1.5, 0.5], vec![2.0, 3.5], vec![2.0, 2.0]];
        let c = clustered_bootstrap(&base, &tuned, 2000, 5, 0.9).unwrap();
        let bm: Vec<f64> = base.iter().map(|x| mean(x)).collect();
        let tm: Vec<f64> = tuned.iter().map(|x| mean(x)).collect();
        assert_eq!(c, paired_bootstrap(&bm, &tm, 2000, 5, 0.9).unwrap());
        assert!((c.mean_diff - 0.625).abs() < 1e-12);
        assert!(clustered_bootstrap(&base, &tuned[..3], 10, 0, 0.9).is_err());
        assert!(clustered_bootstrap(&[vec![1.0]], &[vec![1.0, 2.0]], 10, 0, 0.9).is_err());
    }

    #[test]
    fn bootstrap_p_value_matches_the_interval() {
        // A clear shift: every resample is above 0, p at its floor 2/(reps+1).
        let c = paired_bootstrap(&[0.0; 30], &(0..30).map(|i| 1.0 + (i % 3) as f64).collect::<Vec<_>>(), 999, 1, 0.95).unwrap();
        assert!((c.p_value - 2.0 / 1000.0).abs() < 1e-12 && c.excludes_zero());
        // No shift at all: p is 1.
        let c = paired_bootstrap(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 999, 1, 0.95).unwrap();
        assert_eq!(c.p_value, 1.0);
        // Whenever the (1 − alpha) interval excludes 0, p < alpha (up to the resampling grain).
        let b: Vec<f64> = (0..40).map(|i| ((i * 7) % 11) as f64 / 10.0).collect();
        let t: Vec<f64> = (0..40).map(|i| ((i * 5) % 13) as f64 / 10.0 + 0.1).collect();
        let c = paired_bootstrap(&b, &t, 4999, 3, 0.95).unwrap();
        assert_eq!(c.excludes_zero(), c.p_value < 0.05 + 1e-9, "{c:?}");
    }

    #[test]
    fn median_values() {
        assert_eq!(median(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]), 4.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
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
        // R: p.adjust(c(0.01, NA, 0.04), "holm") = 0.02 NA 0.04 (NA is not a test).
        let h = holm(&[0.01, f64::NAN, 0.04]);
        assert!((h[0] - 0.02).abs() < 1e-12 && h[1].is_nan() && (h[2] - 0.04).abs() < 1e-12, "{h:?}");
    }
}
