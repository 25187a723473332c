//! bedside-metrics against values computed by rouge-score, sacrebleu, nltk and scipy
//! (tests/data/reference.json, made by scripts/reference_metrics.py from tests/data/cases.json).

use bedside_metrics::{bleu, porter, rouge, stats};
use serde_json::Value;

fn load(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn porter_matches_nltk() {
    let r = load("reference.json");
    let stems = r["stems"].as_object().unwrap();
    assert!(stems.len() > 150);
    let bad: Vec<String> = stems
        .iter()
        .filter(|(w, s)| porter::stem(w) != s.as_str().unwrap())
        .map(|(w, s)| format!("{w}: got {}, nltk {}", porter::stem(w), s))
        .collect();
    assert!(bad.is_empty(), "stems differ from NLTK: {bad:#?}");
}

#[test]
fn rouge_l_matches_rouge_score() {
    let (c, r) = (load("cases.json"), load("reference.json"));
    let cases = c["rouge_pairs"].as_array().unwrap();
    let refs = r["rouge"].as_array().unwrap();
    assert_eq!(cases.len(), refs.len());
    let mut nonzero = 0;
    for (i, (case, want)) in cases.iter().zip(refs).enumerate() {
        let (target, pred) = (case["reference"].as_str().unwrap(), case["prediction"].as_str().unwrap());
        assert_eq!(rouge::rouge_tokenize(target, true), strs(&want["reference_tokens"]), "case {i} reference tokens");
        assert_eq!(rouge::rouge_tokenize(pred, true), strs(&want["prediction_tokens"]), "case {i} prediction tokens");
        let got = rouge::rouge_l(target, pred);
        for (k, g) in [("precision", got.precision), ("recall", got.recall), ("fmeasure", got.fmeasure)] {
            assert!((g - f(&want[k])).abs() < 1e-6, "case {i} {k}: {g} vs rouge-score {}", want[k]);
        }
        nonzero += usize::from(got.fmeasure > 0.0);
    }
    assert!(nonzero >= 15, "test pairs should mostly overlap");
}

#[test]
fn bleu_matches_sacrebleu() {
    let (c, r) = (load("cases.json"), load("reference.json"));
    for (case, want) in c["bleu_corpus"].as_array().unwrap().iter().zip(r["bleu_corpus"].as_array().unwrap()) {
        let name = case["name"].as_str().unwrap();
        let hyps = strs(&case["hyps"]);
        let refs = strs(&case["refs"]);
        for (h, t) in hyps.iter().zip(strs(&want["hyp_tokens"])) {
            assert_eq!(bleu::tokenize_13a(h), t, "{name}: 13a tokens of {h:?}");
        }
        let h: Vec<&str> = hyps.iter().map(String::as_str).collect();
        let rf: Vec<&str> = refs.iter().map(String::as_str).collect();
        let got = bleu::corpus_bleu(&h, &rf).unwrap();
        assert!((got.score - f(&want["score"])).abs() < 1e-4, "{name}: BLEU {} vs sacrebleu {}", got.score, want["score"]);
        assert_eq!(got.stats.sys_len as f64, f(&want["sys_len"]), "{name}");
        assert_eq!(got.stats.ref_len as f64, f(&want["ref_len"]), "{name}");
        assert_eq!(got.stats.correct.iter().map(|&x| x as f64).collect::<Vec<_>>(), floats(&want["counts"]), "{name}");
        assert_eq!(got.stats.total.iter().map(|&x| x as f64).collect::<Vec<_>>(), floats(&want["totals"]), "{name}");
        assert!((got.bp - f(&want["bp"])).abs() < 1e-9, "{name}: bp");
    }
    let sent = c["bleu_sentence"].as_array().unwrap();
    let want = floats(&r["bleu_sentence"]);
    assert_eq!(sent.len(), want.len());
    for (case, w) in sent.iter().zip(want) {
        let got = bleu::sentence_bleu(case["hyp"].as_str().unwrap(), case["ref"].as_str().unwrap()).score;
        assert!((got - w).abs() < 1e-4, "sentence BLEU of {case}: {got} vs sacrebleu {w}");
    }
    assert!(bleu::corpus_bleu(&["a"], &[]).is_err());
}

#[test]
fn wilcoxon_matches_scipy() {
    let (c, r) = (load("cases.json"), load("reference.json"));
    let mut methods = std::collections::HashSet::new();
    for (case, want) in c["wilcoxon"].as_array().unwrap().iter().zip(r["wilcoxon"].as_array().unwrap()) {
        let name = case["name"].as_str().unwrap();
        let got = stats::wilcoxon(&floats(&case["x"]), &floats(&case["y"])).unwrap();
        methods.insert(format!("{:?}", got.method));
        assert!((got.statistic - f(&want["statistic"])).abs() < 1e-9, "{name}: statistic {} vs scipy {}", got.statistic, want["statistic"]);
        assert!((got.pvalue - f(&want["pvalue"])).abs() < 1e-6, "{name}: p {} ({:?}) vs scipy {}", got.pvalue, got.method, want["pvalue"]);
    }
    assert_eq!(methods.len(), 3, "cases should exercise exact, permutation and asymptotic paths: {methods:?}");
}

#[test]
fn wilcoxon_scipy_docs_example() {
    // scipy.stats.wilcoxon docs: Darwin's height differences of cross- and self-fertilised plants.
    let d = [6.0, 8.0, 14.0, 16.0, 23.0, 24.0, 28.0, 29.0, 41.0, -48.0, 49.0, 56.0, 60.0, -67.0, 75.0];
    let r = stats::wilcoxon_diffs(&d).unwrap();
    assert_eq!(r.statistic, 24.0);
    assert!((r.pvalue - 0.041259765625).abs() < 1e-12, "{}", r.pvalue);
    assert_eq!(r.method, stats::WilcoxonMethod::Exact);
}

#[test]
fn chi2_yates_matches_scipy() {
    let (c, r) = (load("cases.json"), load("reference.json"));
    for (case, want) in c["chi2"].as_array().unwrap().iter().zip(r["chi2"].as_array().unwrap()) {
        let name = case["name"].as_str().unwrap();
        let t = case["table"].as_array().unwrap();
        let row = |i: usize| {
            let v = floats(&t[i]);
            [v[0], v[1]]
        };
        let got = stats::chi2_yates([row(0), row(1)]).unwrap();
        assert!((got.statistic - f(&want["statistic"])).abs() < 1e-9, "{name}: χ² {} vs scipy {}", got.statistic, want["statistic"]);
        assert!((got.pvalue - f(&want["pvalue"])).abs() < 1e-9, "{name}: p {} vs scipy {}", got.pvalue, want["pvalue"]);
    }
}

#[test]
fn chi2_yates_textbook() {
    // Fisher's dieting example (Wikipedia, "Fisher's exact test"): men 1 dieting / 11 not,
    // women 9 / 3. Expected counts 5, 5, 7, 7; every |O − E| = 4, corrected to 3.5:
    // χ² = 3.5²·(2/5 + 2/7) = 8.4 exactly.
    let r = stats::chi2_yates([[1.0, 9.0], [11.0, 3.0]]).unwrap();
    assert!((r.statistic - 8.4).abs() < 1e-12, "{}", r.statistic);
    assert_eq!(r.expected, [[5.0, 5.0], [7.0, 7.0]]);
    // p = P(χ²₁ ≥ 8.4) = erfc(√4.2); tables give 0.00375.
    assert!((r.pvalue - 0.00375).abs() < 5e-6, "{}", r.pvalue);
    // Rates helper builds the same table.
    let r2 = stats::chi2_rates(1, 10, 11, 14).unwrap();
    assert!((r2.statistic - 8.4).abs() < 1e-12);
    assert!(stats::chi2_yates([[0.0, 0.0], [3.0, 4.0]]).is_err());
    assert!(stats::chi2_rates(5, 4, 1, 2).is_err());
}

#[test]
fn permutation_test_matches_exact_enumeration() {
    let (c, r) = (load("cases.json"), load("reference.json"));
    for (case, want) in c["permutation"].as_array().unwrap().iter().zip(r["permutation"].as_array().unwrap()) {
        let name = case["name"].as_str().unwrap();
        let got = stats::permutation_test(&floats(&case["a"]), &floats(&case["b"]), 20_000, 7).unwrap();
        assert!((got.diff - f(&want["diff"])).abs() < 1e-12, "{name}");
        let p = f(&want["exact_pvalue"]);
        // Monte Carlo with 20 000 draws: standard error ≤ 0.0036.
        assert!((got.pvalue - p).abs() < 0.012, "{name}: p {} vs exact {p}", got.pvalue);
        let again = stats::permutation_test(&floats(&case["a"]), &floats(&case["b"]), 20_000, 7).unwrap();
        assert_eq!(got, again, "same seed, same result");
    }
}

#[test]
fn bootstrap_agrees_with_scipy_percentile_bootstrap() {
    let (c, r) = (load("cases.json"), load("reference.json"));
    for (case, want) in c["bootstrap"].as_array().unwrap().iter().zip(r["bootstrap"].as_array().unwrap()) {
        let base = floats(&case["base"]);
        let tuned = floats(&case["tuned"]);
        let got = stats::paired_bootstrap_95(&base, &tuned, 1).unwrap();
        assert!((got.mean_diff - f(&want["mean_diff"])).abs() < 1e-12);
        // Different random streams: the ends agree to Monte Carlo error (a few % of the width).
        let width = f(&want["hi"]) - f(&want["lo"]);
        assert!((got.lo - f(&want["lo"])).abs() < 0.04 * width, "lo {} vs scipy {}", got.lo, want["lo"]);
        assert!((got.hi - f(&want["hi"])).abs() < 0.04 * width, "hi {} vs scipy {}", got.hi, want["hi"]);
        assert_eq!(got, stats::paired_bootstrap_95(&base, &tuned, 1).unwrap(), "seeded");
        assert_ne!(got.lo, stats::paired_bootstrap_95(&base, &tuned, 2).unwrap().lo, "seed matters");
    }
}

/// Re-runs the Python script (when python3 has rouge-score, sacrebleu, scipy and nltk) to check
/// reference.json is what the tools produce from cases.json today.
#[test]
fn reference_json_is_current() {
    let probe = std::process::Command::new("python3").args(["-c", "import rouge_score, sacrebleu, scipy, nltk"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => {
            // CI installs them (.ci/run) and sets BEDSIDE_REQUIRE_PYREF=1 so this cannot skip there.
            assert!(
                std::env::var("BEDSIDE_REQUIRE_PYREF").as_deref() != Ok("1"),
                "BEDSIDE_REQUIRE_PYREF=1 but python3 lacks rouge-score, sacrebleu, scipy or nltk"
            );
            eprintln!("skipping: python3 with rouge-score, sacrebleu, scipy and nltk is not available");
            return;
        }
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference_metrics.py");
    let out = std::process::Command::new("python3").arg(&script).arg("--check").output().expect("run python3");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
