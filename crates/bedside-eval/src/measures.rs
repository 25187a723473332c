//! The bridge to the metric and scorer crates: bedside-metrics (ROUGE-L, BLEU, key-fact recall,
//! reading grade, statistics), bedside-embed (MiniLM) and bedside-empathy (EPITOME heads).
//! Nothing here reimplements them; it adapts their calls to what the run needs.

use anyhow::Result;
use bedside_embed::Embedder;
use bedside_empathy::EmpathyScorer;
use serde_json::{json, Value};

/// The offline scorers, loaded once per run.
pub struct Scorers {
    pub empathy: EmpathyScorer,
    pub heads_path: std::path::PathBuf,
    pub key_fact_threshold: f64,
    pub calibration: Option<Value>,
}

impl Scorers {
    pub fn load() -> Result<Self> {
        let heads_path = bedside_empathy::default_heads_path();
        let empathy = EmpathyScorer::load_default()?;
        Ok(Self { empathy, heads_path, key_fact_threshold: bedside_metrics::keyfacts::DEFAULT_THRESHOLD, calibration: None })
    }

    pub fn embedder(&self) -> &Embedder {
        self.empathy.embedder()
    }

    pub fn provenance(&self) -> Value {
        json!({
            "empathy_heads": self.heads_path,
            "empathy_heads_sha256": crate::generate::file_hash(&self.heads_path).unwrap_or_default(),
            "embedder": Embedder::default_dir(),
            "key_fact_threshold": self.key_fact_threshold,
            "key_fact_calibration": self.calibration,
        })
    }

    /// Calibrate the key-fact threshold on corpus dialogues outside the test split: positives are
    /// (fact, its own dialogue's reference answer), negatives (fact, the answer of a dialogue half
    /// the corpus away, another specialty). The best cosine over the answer's sentences is the score.
    pub fn calibrate(&mut self, dialogues: &[(Vec<String>, String)]) -> Result<()> {
        let n = dialogues.len();
        if n < 4 {
            return Ok(());
        }
        let mut sentences: Vec<Vec<String>> = Vec::with_capacity(n);
        let mut texts: Vec<String> = Vec::new();
        for (_, answer) in dialogues {
            let s = bedside_metrics::split_sentences(answer);
            texts.extend(s.iter().cloned());
            sentences.push(s);
        }
        let facts: Vec<&String> = dialogues.iter().flat_map(|d| d.0.iter()).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).chain(facts.iter().map(|f| f.as_str())).collect();
        let embs = self.embedder().embed(&refs)?;
        let (sent_embs, fact_embs) = embs.split_at(texts.len());
        let mut offsets = Vec::with_capacity(n);
        let mut o = 0;
        for s in &sentences {
            offsets.push(o..o + s.len());
            o += s.len();
        }
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let mut f = 0;
        for (i, (fs, _)) in dialogues.iter().enumerate() {
            let other = (i + n / 2) % n;
            for _ in fs {
                let fe = &fact_embs[f];
                pos.push(bedside_metrics::keyfacts::max_cosine(fe, &sent_embs[offsets[i].clone()]));
                neg.push(bedside_metrics::keyfacts::max_cosine(fe, &sent_embs[offsets[other].clone()]));
                f += 1;
            }
        }
        match bedside_metrics::calibrate_threshold(&pos, &neg) {
            Ok((t, stats)) => {
                self.key_fact_threshold = t;
                self.calibration = Some(json!({
                    "dialogues": n,
                    "positives": pos.len(),
                    "negatives": neg.len(),
                    "rule": "positives: (fact, own reference answer); negatives: (fact, answer of the dialogue n/2 away); non-test splits",
                    "stats": stats,
                }));
            }
            Err(e) => tracing::warn!("key-fact calibration failed ({e}); using the default threshold"),
        }
        Ok(())
    }
}

/// ROUGE-L F1 as `rouge-score` (stemmed).
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    bedside_metrics::rouge_l_f1(reference, candidate)
}

/// Corpus BLEU (sacreBLEU 13a defaults), 0–100.
pub fn corpus_bleu(hyps: &[String], refs: &[String]) -> f64 {
    let h: Vec<&str> = hyps.iter().map(String::as_str).collect();
    let r: Vec<&str> = refs.iter().map(String::as_str).collect();
    bedside_metrics::corpus_bleu(&h, &r).map_or(f64::NAN, |b| b.score)
}

/// Flesch–Kincaid grade.
pub fn reading_grade(text: &str) -> f64 {
    bedside_metrics::fk_grade(text)
}

/// Paired percentile bootstrap CI of mean(system − baseline).
pub fn paired_ci(baseline: &[f64], system: &[f64], reps: usize, alpha: f64, seed: u64) -> (f64, f64) {
    bedside_metrics::paired_bootstrap(baseline, system, reps, seed, 1.0 - alpha).map_or((f64::NAN, f64::NAN), |c| (c.lo, c.hi))
}

/// Bootstrap CI of a mean (the paired bootstrap against zero).
pub fn mean_ci(xs: &[f64], reps: usize, alpha: f64, seed: u64) -> (f64, f64) {
    paired_ci(&vec![0.0; xs.len()], xs, reps, alpha, seed)
}

/// Two-sided Wilcoxon signed-rank p of system − baseline (scipy defaults); 1 when every
/// difference is zero, NaN when undefined.
pub fn wilcoxon_p(baseline: &[f64], system: &[f64]) -> f64 {
    if system.iter().zip(baseline).all(|(a, b)| a == b) {
        return 1.0;
    }
    bedside_metrics::wilcoxon(system, baseline).map_or(f64::NAN, |w| w.pvalue)
}

/// χ² with Yates' correction on [[a, b], [c, d]]: (statistic, p).
pub fn chi2_yates(a: u64, b: u64, c: u64, d: u64) -> (f64, f64) {
    bedside_metrics::chi2_yates([[a as f64, b as f64], [c as f64, d as f64]]).map_or((f64::NAN, f64::NAN), |c| (c.statistic, c.pvalue))
}

/// Two-sided permutation p of a difference in means.
pub fn permutation_p(x: &[f64], y: &[f64], reps: usize, seed: u64) -> f64 {
    bedside_metrics::permutation_test(y, x, reps, seed).map_or(f64::NAN, |p| p.pvalue)
}

/// Δ% in Welivita & Pu's sense: new / base − 1, in % (NaN when base is 0).
pub fn delta_pct(new: f64, base: f64) -> f64 {
    bedside_metrics::delta_pct(new, base).unwrap_or(f64::NAN)
}
