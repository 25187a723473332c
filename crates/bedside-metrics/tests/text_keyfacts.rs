//! Sentence splitting, syllables and reading grade; key-fact matching and threshold calibration.

use bedside_metrics::keyfacts::{self, Criterion};
use bedside_metrics::{stats, text};

#[test]
fn sentences_split_at_ends_not_abbreviations_or_decimals() {
    let s = text::split_sentences("I'm sorry you're in pain. Take 2.5 mg now, e.g. with food! Dr. Smith will call.\nIs it worse?Call 911");
    assert_eq!(s, vec!["I'm sorry you're in pain.", "Take 2.5 mg now, e.g. with food!", "Dr. Smith will call.", "Is it worse?Call 911",]);
    assert_eq!(text::split_sentences("  \n ... \n"), Vec::<String>::new());
    assert_eq!(text::split_sentences("Really?! Yes.").len(), 2);
}

#[test]
fn syllables_of_dictionary_words() {
    // Dictionary syllable counts (Merriam-Webster hyphenation).
    let words = [
        ("the", 1),
        ("pain", 1),
        ("care", 1),
        ("make", 1),
        ("asked", 1),
        ("hopes", 1),
        ("doctor", 2),
        ("table", 2),
        ("patient", 2),
        ("wanted", 2),
        ("boxes", 2),
        ("nurses", 2),
        ("fever", 2),
        ("medicine", 3),
        ("hospital", 3),
        ("important", 3),
        ("frightening", 3),
        ("symptoms", 2),
        ("emergency", 4),
        ("immediately", 5),
        ("understanding", 4),
        ("ibuprofen", 4),
        ("everything", 3),
        ("happy", 2),
        ("worried", 2),
        ("breathe", 1),
        ("blood", 1),
        ("pressure", 2),
        ("family", 3),
        ("anxious", 2),
        ("stomach", 2),
        ("headache", 2),
        ("serious", 3),
        ("infection", 3),
        ("a", 1),
    ];
    let right = words.iter().filter(|(w, n)| text::syllables(w) == *n).count();
    let wrong: Vec<_> = words.iter().filter(|(w, n)| text::syllables(w) != *n).map(|(w, n)| (w, n, text::syllables(w))).collect();
    // A heuristic: at least 85% exact, never off by more than one.
    assert!(right * 100 >= words.len() * 85, "too many wrong: {wrong:?}");
    assert!(wrong.iter().all(|(_, n, g)| (**n as i64 - *g as i64).abs() <= 1), "{wrong:?}");
}

#[test]
fn flesch_kincaid_grade() {
    // Formula check on counts: 100 words, 5 sentences, 150 syllables → 0.39·20 + 11.8·1.5 − 15.59.
    assert!((text::fk_grade_from_counts(100, 5, 150) - 9.91).abs() < 1e-12);
    let r = text::readability("The cat sat on the mat. The dog ran.");
    assert_eq!((r.words, r.sentences, r.syllables), (9, 2, 9));
    assert!((r.fk_grade - (0.39 * 4.5 + 11.8 - 15.59)).abs() < 1e-12);
    let easy = text::fk_grade("Take the pill. Drink some water. Rest in bed.");
    let hard = text::fk_grade(
        "Pharmacological management of hypertension necessitates individualised consideration of comorbidities, contraindications and concomitant medications.",
    );
    assert!(easy < 2.0 && hard > 18.0, "easy {easy}, hard {hard}");
    assert_eq!(text::readability("").fk_grade, 0.0);
    assert_eq!(text::word_count("Call 911 — now!"), 3);
}

#[test]
fn lexical_match_uses_content_words_and_stems() {
    assert!(keyfacts::lexical_match("Take ibuprofen with food.", "You should be taking your ibuprofen with some food."));
    assert!(!keyfacts::lexical_match("Take ibuprofen with food.", "Take paracetamol with food."));
    // Negation is content: "do not drive" is not conveyed by "drive".
    assert!(!keyfacts::lexical_match("Do not drive after the sedative.", "You can drive after the sedative."));
    assert!(keyfacts::lexical_match("Do not drive after the sedative.", "Please don't drive, not after a sedative."));
    // Per sentence: the fact's words spread over two sentences are not a statement of it.
    assert!(!keyfacts::lexical_match("Do not drive after the sedative.", "Please don't drive. You had a sedative."));
    assert!(!keyfacts::lexical_match("the and of", "the and of"), "no content words → no lexical match");
}

#[test]
fn recall_from_similarities_counts_semantic_or_lexical() {
    let facts = ["Chest pain spreading to the arm needs an ambulance.", "Aspirin may help.", "Rest."];
    let response = "Call an ambulance now. Try to stay calm. Rest until help comes.";
    let sentences = text::split_sentences(response);
    let sims = vec![vec![0.99, 0.7, 0.5], vec![0.1, 0.3, 0.0], vec![0.0, 0.6, 0.2]];
    let r = keyfacts::key_fact_recall_scored(&facts, &sentences, &sims, 0.8);
    assert!(r.facts[0].semantic && r.facts[0].best_sentence == Some(0));
    assert!(!r.facts[1].conveyed, "best cosine 0.3 < 0.8 and no lexical match: {:?}", r.facts[1]);
    assert!(r.facts[2].lexical && !r.facts[2].semantic);
    assert_eq!(r.recall, Some(2.0 / 3.0));
    assert_eq!(keyfacts::key_fact_recall_scored(&[], &sentences, &[], 0.8).recall, None);
}

/// Recall must not grow with length alone: the same answer padded with unrelated sentences
/// (which share no fact's words) conveys the same facts.
#[test]
fn padding_does_not_raise_recall() {
    let facts = ["atrial fibrillation is a common rhythm problem", "the next step is usually an ECG", "anticoagulants lower stroke risk"];
    let answer = "This could be atrial fibrillation, a common rhythm problem. The next step is usually an ECG.";
    let padding = " Many families enjoy walking by the sea. Bread rises best in a warm kitchen. The library opens at nine on Saturdays. \
        Cats often sleep for most of the day. Rain is forecast for the weekend, so take a coat. Tomatoes grow well in sunny gardens.";
    let recall = |text: &str| {
        let sentences = text::split_sentences(text);
        // Lexical path only (no sentence reaches the threshold), as with a fixed embedding.
        let sims = vec![vec![0.0; sentences.len()]; facts.len()];
        keyfacts::key_fact_recall_scored(&facts, &sentences, &sims, 0.99).recall.unwrap()
    };
    let short = recall(answer);
    assert!((short - 2.0 / 3.0).abs() < 1e-12, "{short}");
    assert_eq!(recall(&format!("{answer}{padding}{padding}")), short);
    // The old whole-answer bag of words let a fact's words from different sentences add up.
    assert_eq!(recall("Anticoagulants are tablets. Your stroke risk is low. Lower your salt."), 0.0);
}

#[test]
fn calibration_picks_separating_threshold() {
    let pos = [0.82, 0.75, 0.9, 0.66, 0.71, 0.58];
    let neg = [0.2, 0.35, 0.41, 0.5, 0.62, 0.3, 0.1];
    let (t, s) = keyfacts::calibrate_threshold(&pos, &neg).unwrap();
    // Best F1: everything from 0.66 up is positive (5 TP, 0 FP; F1 = 10/11) vs from 0.58 (6 TP, 1 FP, F1 = 12/13).
    // 12/13 = 0.923 > 0.909, so the threshold sits between 0.5 and 0.58.
    assert!((t - 0.54).abs() < 1e-12, "threshold {t}");
    assert_eq!((s.true_positives, s.false_positives), (6, 1));
    assert!((s.f1 - 12.0 / 13.0).abs() < 1e-12);
    // AUC: positives beat negatives in 40 of 42 pairs (0.58 < 0.62, and 0.62 is beaten by 5 of 6 → 1 loss... counted exactly).
    let wins: f64 = pos.iter().map(|p| neg.iter().filter(|n| p > n).count() as f64).sum();
    assert!((s.auc - wins / 42.0).abs() < 1e-12);
    let (ty, sy) = keyfacts::calibrate_threshold_by(&pos, &neg, Criterion::Youden).unwrap();
    assert!(sy.youden_j >= s.youden_j - 1e-12 && ty > 0.0);
    assert!(keyfacts::calibrate_threshold(&[], &neg).is_err());
    assert!(keyfacts::calibrate_threshold(&[f64::NAN], &neg).is_err());
}

#[test]
fn stats_helpers() {
    assert_eq!(stats::delta_pct(1.2, 1.0).map(|x| (x * 1e9).round() / 1e9), Some(20.0));
    assert_eq!(stats::delta_pct(1.0, 0.0), None);
    assert!((stats::sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) - 2.138089935299395).abs() < 1e-12);
    assert_eq!(stats::mean(&[1.0, 2.0, 3.0]), 2.0);
    // A constant difference has a degenerate interval at that value.
    let ci = stats::paired_bootstrap(&[1.0; 20], &[1.5; 20], 2000, 3, 0.95).unwrap();
    assert!((ci.lo - 0.5).abs() < 1e-12 && (ci.hi - 0.5).abs() < 1e-12 && ci.excludes_zero());
    assert!(stats::paired_bootstrap(&[1.0], &[1.0, 2.0], 10, 0, 0.95).is_err());
    assert!(stats::wilcoxon(&[1.0, f64::NAN], &[0.0, 0.0]).is_err());
    let w = stats::wilcoxon(&[1.0; 5], &[1.0; 5]).unwrap();
    assert!(w.pvalue.is_nan() || w.pvalue == 1.0, "all-zero differences: {w:?}");
}

/// Real MiniLM: a close paraphrase passes the calibrated threshold, an unrelated fact does not,
/// and the same paraphrase negated is a contradiction.
#[cfg(feature = "embed")]
#[test]
fn key_fact_recall_with_minilm() {
    let Some(dir) = bedside_testutil::model_file("all-minilm-l6-v2") else { return };
    let e = bedside_embed::Embedder::load(&dir, &candle_core::Device::Cpu).unwrap();
    let facts =
        ["Chest pain spreading to the arm or jaw needs emergency care.", "Metformin is the usual first medicine for type 2 diabetes."];
    let response = "I'm sorry, that sounds frightening. Chest pain spreading into the arm or the jaw requires emergency care.";
    let r = keyfacts::key_fact_recall(&e, &facts, response, keyfacts::DEFAULT_THRESHOLD).unwrap();
    assert!(r.facts[0].conveyed && r.facts[0].semantic && !r.facts[0].lexical, "{:?}", r.facts[0]);
    assert!(!r.facts[1].conveyed, "{:?}", r.facts[1]);
    assert_eq!(r.recall, Some(0.5));
    // The same sentence negated: a similar embedding, the opposite meaning.
    let negated = "I'm sorry, that sounds frightening. Chest pain spreading into the arm or the jaw does not require emergency care.";
    let r = keyfacts::key_fact_recall(&e, &facts[..1], negated, keyfacts::DEFAULT_THRESHOLD).unwrap();
    assert!(r.facts[0].best_cosine >= keyfacts::DEFAULT_THRESHOLD && r.facts[0].contradicted && !r.facts[0].conveyed, "{:?}", r.facts[0]);
}
