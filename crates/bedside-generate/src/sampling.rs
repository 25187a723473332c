//! Turning logits into the next token.
//!
//! Order follows Hugging Face's logits warpers: repetition penalty, temperature, top-k, top-p,
//! min-p, then a draw from a seeded RNG. Temperature 0 means greedy. The same seed and the same
//! logits always give the same token.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = off).
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` × the top token's probability (0 = off).
    pub min_p: f64,
    /// > 1 discourages tokens seen in the last `repeat_last_n` (1.0 = off).
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
    pub max_tokens: usize,
    /// Stop when the output contains any of these; the stop string itself is not returned.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 299792458,
            max_tokens: 256,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!("repeat penalty must be > 0, got {}", self.repeat_penalty));
        }
        if self.max_tokens == 0 {
            return Err("max-tokens must be at least 1".into());
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from `logits` (one row, vocabulary-sized); `history` is every token so
    /// far (prompt and output) for the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                if let Some(l) = logits.get_mut(t as usize) {
                    if seen.insert(t) {
                        *l = if *l >= 0.0 { *l / p.repeat_penalty } else { *l * p.repeat_penalty };
                    }
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature as f32;
        // Candidates sorted by logit, best first (ties: lower id first, deterministic).
        let order = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        let mut idx = if p.top_k > 0 {
            // One pass over the vocabulary keeping the k best, in order: no vocabulary-sized
            // list of candidates is built (the logits are read where they are).
            top_k(logits, p.top_k)
        } else {
            let mut all: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()).collect();
            all.sort_by(order);
            all
        };
        if idx.is_empty() {
            return argmax(logits);
        }
        let max = logits[idx[0] as usize] * inv_t;
        let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i as usize] * inv_t - max) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (n, &q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p.top_p {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (n, &q) in probs.iter().enumerate() {
            r -= q;
            if r <= 0.0 {
                return idx[n];
            }
        }
        idx[probs.len() - 1]
    }
}

/// The ids of the `k` largest finite logits, largest first, ties to the lower id: what sorting
/// every id by (logit descending, id ascending) and keeping `k` gives.
fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_finite() {
            continue;
        }
        // Ids arrive in increasing order, so a logit equal to the k-th best loses the tie.
        if best.len() == k && best.last().is_some_and(|&(worst, _)| l <= worst) {
            continue;
        }
        let at = best.partition_point(|&(v, _)| v >= l);
        best.insert(at, (l, i as u32));
        best.truncate(k);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f64) -> SamplingParams {
        SamplingParams { temperature: t, ..Default::default() }
    }

    #[test]
    fn greedy_takes_the_max() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn repeat_penalty_changes_the_choice() {
        let mut s = Sampler::new(SamplingParams { repeat_penalty: 2.0, ..params(0.0) });
        // Token 1 (3.0) seen before: 3.0 / 2 = 1.5 < 2.9.
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[1]), 2);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_is_reproducible() {
        let logits = vec![0.5f32, 0.4, 0.3, 0.2, 0.1, 0.0];
        let mut s = Sampler::new(SamplingParams { top_k: 1, ..params(1.0) });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
        }
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) });
            (0..50).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_keeps_the_k_largest_with_ties_broken_by_id() {
        // Many ties around the k-th value: the kept set must be what a full sort keeps.
        let logits: Vec<f32> = (0..500).map(|i| ((i * 37) % 11) as f32).collect();
        let p = SamplingParams { temperature: 1.0, top_k: 7, seed: 3, ..Default::default() };
        let mut s = Sampler::new(p);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            seen.insert(s.sample(&mut logits.clone(), &[]));
        }
        let mut full: Vec<u32> = (0..500).collect();
        full.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        let want: std::collections::BTreeSet<u32> = full[..7].iter().copied().collect();
        assert!(seen.is_subset(&want), "sampled {seen:?}, allowed {want:?}");
        assert_eq!(seen.len(), 7, "all seven equally likely tokens should appear in 400 draws");
    }

    /// The one-pass selection keeps exactly what a full sort keeps, ties and infinities included.
    #[test]
    fn one_pass_top_k_equals_sorting() {
        let mut logits: Vec<f32> = (0..3000).map(|i| ((i * 7919) % 97) as f32 * 0.5).collect();
        logits[5] = f32::NEG_INFINITY;
        logits[77] = f32::NAN;
        for k in [1, 2, 7, 40, 97, 2999, 5000] {
            let mut full: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()).collect();
            full.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
            full.truncate(k);
            assert_eq!(top_k(&logits, k), full, "k = {k}");
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // probs ≈ [0.64, 0.24, 0.09, 0.03]
        let logits = vec![2.0f32, 1.0, 0.0, -1.0];
        let mut s = Sampler::new(SamplingParams { top_p: 0.7, ..params(1.0) });
        let seen: std::collections::HashSet<u32> = (0..300).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(seen, [0, 1].into_iter().collect());
        let mut s = Sampler::new(SamplingParams { min_p: 0.2, ..params(1.0) });
        let seen: std::collections::HashSet<u32> = (0..300).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(seen, [0, 1].into_iter().collect(), "0.09/0.64 < 0.2 is dropped");
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = vec![(0.75f32).ln(), (0.25f32).ln()];
        let mut s = Sampler::new(params(1.0));
        let n = 4000;
        let ones = (0..n).filter(|_| s.sample(&mut logits.clone(), &[]) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.25).abs() < 0.03, "{frac}");
    }

    #[test]
    fn validation_rejects_bad_values() {
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { temperature: -1.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { max_tokens: 0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams::default().validate().is_ok());
    }
}
