//! The report without a model: hostile model output is escaped, the verdict comes first with the
//! gates that allow it, differences are coloured by direction, the summary reads back from a
//! results.json, and the HTML renders in a real headless browser (Debian's chromium) with its
//! title, charts and summary table.

use std::path::Path;
use std::process::Command;

use bedside_eval::report;
use bedside_eval::results::Results;
use serde_json::json;

const EVIL: &str = "<script>alert('x')</script><img src=x onerror=alert(1)> & \"quotes\"";

fn summary(mean: f64) -> serde_json::Value {
    json!({"n": 4, "mean": mean, "sd": 0.1, "median": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1})
}

fn sample() -> Results {
    let v = json!({
        "schema_version": 2,
        "tool": "bedside-eval test",
        "created_unix": 0,
        "name": format!("test {EVIL}"),
        "provenance": {"model": {"spec": EVIL}},
        "config": {},
        "systems": ["base", "tuned"],
        "baseline": "base",
        "controls": ["reference", "neutral", "neutral+question"],
        "stats": {"alpha": 0.1, "bootstrap": 1000, "samples_per_item": 1, "primary": ["empathy", "key_fact_recall"],
                  "margins": {"key_fact_recall": -0.05}, "secondary": ["er"], "method": "bootstrap"},
        "verdict": [{"system": "tuned", "baseline": "base", "more_comforting": true, "knowledge": "non-inferior",
                     "sentences": ["VERDICT-EMPATHY: better", "VERDICT-OVERALL: more comforting and non-inferior", format!("evil {EVIL}")]}],
        "validity": [
            {"measure": "empathy", "status": "valid", "gates": [{"rule": "comfort-only above neutral", "value": 0.5, "limit": 0.0, "passed": true}]},
            {"measure": "er", "status": "not valid on this run", "gates": [{"rule": "neutral+question at most 0.05 above neutral", "value": 0.37, "limit": 0.05, "passed": false}]},
            {"measure": "key_fact_recall", "status": "valid", "gates": []}
        ],
        "counts": {"test": 4, "safety": 2, "equity": 9},
        "measures": [
            {"key": "empathy", "label": "Empathy, mean of ER/IP/EX (0–2)", "higher_is_better": true, "set": "test"},
            {"key": "er", "label": "Emotional reactions (0–2)", "higher_is_better": true, "set": "test"},
            {"key": "key_fact_recall", "label": "Key-fact recall", "higher_is_better": true, "set": "test"}
        ],
        "per_system": {
            "empathy": {"base": summary(0.4), "tuned": summary(0.9), "reference": summary(1.3), "neutral": summary(0.3), "neutral+question": summary(0.31)},
            "er": {"base": summary(0.5), "tuned": summary(0.2), "reference": summary(1.5)},
            "key_fact_recall": {"base": summary(0.5), "tuned": summary(0.55), "reference": summary(1.0), "neutral": summary(0.97)}
        },
        "bleu": {"base": 3.2, "tuned": 4.1, "reference": 100.0},
        "comparisons": [
            {"system": "tuned", "baseline": "base", "measure": "empathy", "n": 4, "mean_baseline": 0.4, "mean_system": 0.9,
             "diff": 0.5, "ci_low": 0.2, "ci_high": 0.8, "wilcoxon_p": 0.125, "delta_pct": 125.0, "significant": true,
             "role": "primary", "p_bootstrap": 0.002, "conclusion": "better", "better": true, "validity": "valid"},
            {"system": "tuned", "baseline": "base", "measure": "er", "n": 4, "mean_baseline": 0.5, "mean_system": 0.2,
             "diff": -0.3, "ci_low": -0.5, "ci_high": -0.1, "wilcoxon_p": 0.125, "delta_pct": -60.0, "significant": true,
             "role": "secondary", "p_bootstrap": 0.01, "holm_p": 0.02, "better": false, "validity": "not valid on this run"},
            {"system": "tuned", "baseline": "base", "measure": "key_fact_recall", "n": 4, "mean_baseline": 0.5, "mean_system": 0.55,
             "diff": 0.05, "ci_low": -0.04, "ci_high": 0.2, "wilcoxon_p": 0.5, "delta_pct": 10.0, "significant": false,
             "role": "primary", "p_bootstrap": null, "margin": -0.05, "conclusion": "non-inferior", "better": true, "validity": "valid"}
        ],
        "breakdowns": {
            "emotion": [{"group": "afraid", "n": 2, "means": {"empathy": {"base": 0.3, "tuned": 1.0}}, "diffs": {"empathy": {"tuned": 0.7}}},
                        {"group": EVIL, "n": 2, "means": {"empathy": {"base": 0.5, "tuned": 0.8}}, "diffs": {"empathy": {"tuned": -0.3}}}],
            "specialty": [{"group": "cardiology", "n": 4, "means": {"empathy": {"base": 0.4}}, "diffs": {}}]
        },
        "safety": {"base": {"n": 2, "passed": 1, "rate": 0.5, "failures": [
            {"id": "safety-01", "category": "suicidal-thoughts", "missing": ["one of: crisis line"], "forbidden": [], "answer": EVIL}]}},
        "safety_comparisons": [{"system": "tuned", "n": 2, "only_system": 1, "only_baseline": 0, "diff_pp": 50.0, "mcnemar_p": 1.0, "holm_p": 1.0, "significant": false}],
        "equity": {"base": {"control_n": 1, "control_mean": 0.6, "variants": [
            {"variant": "black_female-explicit", "n": 1, "mean": 0.5, "control_mean": 0.6, "gap_pct": -16.7, "permutation_p": 1.0, "holm_p": 1.0, "flagged": true},
            {"variant": "white_male-implicit", "n": 1, "mean": 0.61, "control_mean": 0.6, "gap_pct": 1.7, "permutation_p": 1.0, "holm_p": 1.0, "flagged": false}]}},
        "equity_threshold_pct": 5.0,
        "judge": null,
        "examples": [{"id": "cardiology-13", "emotion": "afraid", "specialty": "cardiology", "prompt": EVIL,
                      "answers": {"base": EVIL, "tuned": "I'm so sorry. </td></tr></table><h1>injected</h1>"}, "empathy": {"base": 0.3, "tuned": 1.0}}],
        "summary": [format!("tuned vs base: {EVIL}")],
        "timings": {}
    });
    serde_json::from_value(v).unwrap()
}

#[test]
fn model_output_is_escaped() {
    let html = report::html(&sample());
    assert!(!html.contains("<script"), "raw script tag in the report");
    assert!(!html.contains("<img"), "raw img tag in the report");
    assert!(!html.contains("<h1>injected"), "raw markup from an answer");
    // minijinja's HTML escaping (also of ' and /).
    assert!(html.contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt;"));
    assert!(html.contains("&lt;&#x2f;td&gt;&lt;&#x2f;tr&gt;&lt;&#x2f;table&gt;&lt;h1&gt;injected"));
    // Tags the report itself writes are balanced (a crude check that nothing broke out).
    for tag in ["table", "svg", "tr", "td", "ul", "details"] {
        let open = html.matches(&format!("<{tag}>")).count() + html.matches(&format!("<{tag} ")).count();
        let close = html.matches(&format!("</{tag}>")).count();
        assert_eq!(open, close, "<{tag}> opened {open} times, closed {close}");
    }
    let md = report::markdown(&sample());
    assert!(md.contains("## Safety"));
    // The Markdown cells lose the markup's pipes, and no raw tag reaches the summary.
    let table = report::summary_table(&sample());
    assert!(table.contains("| tuned | empathy | primary | valid | +0.500 [0.200, 0.800] |"), "{table}");
    assert!(!table.contains("<script"), "{table}");
}

#[test]
fn verdict_first_then_direction_coloured_differences() {
    let html = report::html(&sample());
    // The verdict opens the report, before the summary and the tables.
    let v = html.find("VERDICT-EMPATHY").unwrap();
    assert!(v < html.find("id=\"summary-sentences\"").unwrap() && v < html.find("id=\"summary-table\"").unwrap());
    // Coloured by direction for that measure, not by significance alone: er fell (worse) and is
    // significant; key-fact recall rose without significance.
    assert!(html.contains("class=\"num worse sig\">-0.300"), "er should be shaded worse");
    assert!(html.contains("class=\"num better\">+0.050"), "recall should be shaded better");
    assert!(html.contains("class=\"num better sig\">+0.500"));
    // The gates with their status, and the legend names this run's alpha (90%), not 95%.
    assert!(html.contains("id=\"gates-table\"") && html.contains("not valid on this run"));
    assert!(html.contains("90% CI"), "the interval level follows alpha");
    assert!(
        !html.contains("95%"),
        "the interval level follows alpha: {}",
        &html[html.find("95%").unwrap_or(0).saturating_sub(300)..][..400]
    );
    // Controls are columns of the summary table.
    assert!(html.contains("neutral+question (control)"));
    let md = report::markdown(&sample());
    assert!(md.find("### Verdict").unwrap() < md.find("### Systems and controls").unwrap());
    assert!(md.contains("| er | not valid on this run | neutral+question at most 0.05 above neutral | 0.370 | **no** |"), "{md}");
}

#[test]
fn summary_reads_back_from_results_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = serde_json::to_value(sample()).unwrap();
    // NaN is written as null and read back.
    v["comparisons"][0]["wilcoxon_p"] = serde_json::Value::Null;
    std::fs::write(dir.path().join("results.json"), serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let r = Results::load(dir.path()).unwrap();
    assert!(r.comparisons[0].wilcoxon_p.is_nan());
    assert_eq!(report::summary_table(&r), report::summary_table(&sample()));
    std::fs::write(dir.path().join("results.json"), "{\"schema_version\": 1}").unwrap();
    let e = Results::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("schema_version 1"), "{e}");
}

fn browser() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().map(|o| o.status.success()).unwrap_or(false))
}

fn dump_dom(browser: &str, file: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("running the browser");
    assert!(out.status.success(), "{browser} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(b) = browser() else {
        assert!(
            std::env::var("BEDSIDE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "BEDSIDE_REQUIRE_BROWSER=1 but no chromium, chromium-browser or google-chrome on PATH"
        );
        eprintln!("skipping: no headless browser on PATH (apt-get install -y chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    std::fs::write(&file, report::html(&sample())).unwrap();
    let dom = dump_dom(b, &file);
    // The parsed DOM, not our source: the browser built these elements.
    assert!(dom.contains("<title>bedside evaluation: test"), "title missing from the DOM");
    assert!(dom.contains("id=\"summary-table\""), "summary table missing");
    assert!(dom.matches("<svg").count() >= 3, "expected the bar, heat-map and equity charts");
    assert!(dom.contains("id=\"heatmap\"") && dom.contains("id=\"equity-chart\""));
    assert!(dom.contains("<rect"), "charts have no bars");
    assert!(!dom.contains("<script"), "a script element made it into the DOM");
    assert!(!dom.contains("<h1>injected"), "answer text became markup");
    assert_eq!(dom.matches("<h1").count(), 1, "exactly the report's own heading");
}

/// The report names the empathy scorer and its validation figures (issue 19), escaped.
#[test]
fn report_names_the_empathy_scorer() {
    let mut r = sample();
    assert!(!report::markdown(&r).contains("## Empathy scorer"), "no section without a scorer summary");
    assert!(!report::html(&r).contains("<h2>Empathy scorer</h2>"), "no section without a scorer summary");
    r.provenance["scorers"] = json!({"empathy_scorer_summary": format!("empathy scorer heads-v1.safetensors (lex-v4/lex+cos+resp); EPITOME macro-F1: ER 0.500 {EVIL}")});
    let md = report::markdown(&r);
    assert!(md.contains("## Empathy scorer") && md.contains("heads-v1.safetensors (lex-v4/lex+cos+resp)"), "{md}");
    let html = report::html(&r);
    assert!(html.contains("<h2>Empathy scorer</h2>") && html.contains("EPITOME macro-F1: ER 0.500 &lt;script&gt;"), "{html}");
    assert!(!html.contains("<script>alert"));
}
