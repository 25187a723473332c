//! `bedside data split`: assigns `split` deterministically, grouped by condition and stratified
//! by specialty and emotion.
//!
//! 1. Records are grouped by normalised condition (lower-case, whitespace collapsed); a record
//!    with an empty condition is a group of its own (keyed by its id). A group never spans splits.
//! 2. Groups are ordered by key, shuffled with a SplitMix64 generator seeded by `seed` (a fixed,
//!    documented algorithm, so a seed means the same split on every platform and version), then
//!    stably sorted largest first.
//! 3. Each group goes to the split with the largest weighted deficit: for the total and for each
//!    specialty and emotion in the group, (target − current count) / category size, where the
//!    target is the category size × the split's ratio. Ties go to train, then validation, then test.
//!
//! The result depends only on the records' ids, conditions, specialties and emotions and on the
//! seed: not on input order or on the `split` already set, so re-running is idempotent.

use std::collections::BTreeMap;

use crate::error::DataError;
use crate::record::{Dialogue, SPLITS};
use crate::text::normalise_condition;

#[derive(Debug, Clone, Copy)]
pub struct SplitOptions {
    pub seed: u64,
    pub train: f64,
    pub validation: f64,
    pub test: f64,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions { seed: 42, train: 0.7, validation: 0.1, test: 0.2 }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitSummary {
    /// Condition groups.
    pub groups: usize,
    /// Records per split.
    pub records: BTreeMap<String, usize>,
    /// Groups per split.
    pub groups_per_split: BTreeMap<String, usize>,
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fixed, good enough for shuffling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform-enough in `0..n` (multiply-shift; bias < n / 2^64).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// Sets `split` on every record (see the module docs). Fails on ratios that are negative, not
/// finite, or do not sum to 1 (± 0.001).
pub fn assign_splits(records: &mut [Dialogue], opts: &SplitOptions) -> Result<SplitSummary, DataError> {
    let ratios = [opts.train, opts.validation, opts.test];
    if ratios.iter().any(|r| !r.is_finite() || *r < 0.0) {
        return Err(DataError::Invalid(format!("split ratios must be ≥ 0, got {ratios:?}")));
    }
    let sum: f64 = ratios.iter().sum();
    if (sum - 1.0).abs() > 1e-3 {
        return Err(DataError::Invalid(format!(
            "split ratios must sum to 1, got {} + {} + {} = {sum}",
            opts.train, opts.validation, opts.test
        )));
    }

    // 1. Groups, keyed deterministically.
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let c = normalise_condition(&r.condition);
        let key = if c.is_empty() { format!("\u{0}id:{}", r.id) } else { c };
        groups.entry(key).or_default().push(i);
    }
    let mut order: Vec<Vec<usize>> = groups.into_values().collect();

    // 2. Shuffle, then largest first.
    let mut rng = SplitMix64(opts.seed);
    for i in (1..order.len()).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order.sort_by_key(|g| std::cmp::Reverse(g.len()));

    // 3. Greedy assignment by weighted deficit.
    let dims = |r: &Dialogue| {
        let mut d = vec!["total".to_string()];
        if !r.specialty.is_empty() {
            d.push(format!("specialty:{}", r.specialty));
        }
        if !r.emotion.is_empty() {
            d.push(format!("emotion:{}", r.emotion));
        }
        d
    };
    let mut size: BTreeMap<String, f64> = BTreeMap::new();
    for r in records.iter() {
        for d in dims(r) {
            *size.entry(d).or_default() += 1.0;
        }
    }
    let mut current: BTreeMap<(String, usize), f64> = BTreeMap::new();
    let mut summary = SplitSummary { groups: order.len(), ..SplitSummary::default() };
    for group in &order {
        let mut contrib: BTreeMap<String, f64> = BTreeMap::new();
        for &i in group {
            for d in dims(&records[i]) {
                *contrib.entry(d).or_default() += 1.0;
            }
        }
        let mut best: Option<(usize, f64)> = None;
        for (s, &ratio) in ratios.iter().enumerate() {
            if ratio <= 0.0 {
                continue;
            }
            let score: f64 = contrib
                .iter()
                .map(|(d, &c)| {
                    let n = size.get(d).copied().unwrap_or(1.0).max(1.0);
                    let cur = current.get(&(d.clone(), s)).copied().unwrap_or(0.0);
                    c * (n * ratio - cur) / n
                })
                .sum();
            if best.is_none_or(|(_, b)| score > b + 1e-12) {
                best = Some((s, score));
            }
        }
        let s = best.map_or(0, |(s, _)| s);
        for (d, c) in contrib {
            *current.entry((d, s)).or_default() += c;
        }
        for &i in group {
            records[i].split = SPLITS[s].to_string();
        }
        *summary.groups_per_split.entry(SPLITS[s].to_string()).or_default() += 1;
        *summary.records.entry(SPLITS[s].to_string()).or_default() += group.len();
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (reference implementation).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn bad_ratios_are_rejected() {
        let mut rs = vec![Dialogue::default()];
        let o = SplitOptions { train: 0.8, validation: 0.1, test: 0.2, seed: 1 };
        assert!(assign_splits(&mut rs, &o).is_err());
        let o = SplitOptions { train: -0.1, validation: 0.9, test: 0.2, seed: 1 };
        assert!(assign_splits(&mut rs, &o).is_err());
    }
}
