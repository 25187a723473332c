//! Text metrics and statistics for bedside's evaluation.
//!
//! - [`rouge`]: ROUGE-L as `rouge-score` 0.1.2 (`use_stemmer=True`, NLTK Porter stemmer).
//! - [`bleu`]: corpus and sentence BLEU as sacrebleu 2.x defaults (13a, exp smoothing).
//! - [`keyfacts`]: key-fact recall (MiniLM similarity or lexical match, read for polarity) and
//!   threshold calibration.
//! - [`negation`]: clause-level negation and polarity, shared by key facts and safety rules.
//! - [`text`]: sentence splitting, word counts, Flesch–Kincaid grade.
//! - [`stats`]: summaries, paired and item-clustered bootstrap, Wilcoxon signed-rank (scipy
//!   defaults), χ² with Yates, the exact sign test, Holm, permutation test, Δ%.
//!
//! Each is checked against the standard Python tools in `tests/` (see `scripts/reference_metrics.py`).

pub mod bleu;
pub mod keyfacts;
pub mod negation;
pub mod porter;
pub mod rouge;
pub mod stats;
pub mod text;

pub use bleu::{corpus_bleu, sentence_bleu, tokenize_13a, Bleu};
#[cfg(feature = "embed")]
pub use keyfacts::key_fact_recall;
pub use keyfacts::{
    calibrate_threshold, calibrate_threshold_by, key_fact_recall_scored, lexical_match, CalibrationStats, Criterion, KeyFactRecall,
};
pub use rouge::{rouge_l, rouge_l_f1, RougeScore};
pub use stats::{
    chi2_rates, chi2_yates, clustered_bootstrap, delta_pct, holm, mean, median, paired_bootstrap, permutation_test, sd, sign_test,
    wilcoxon, BootstrapCi, Chi2, Wilcoxon,
};
pub use text::{fk_grade, readability, split_sentences, word_count, Readability};
