//! Calibrate the key-fact threshold once, against hard negatives, and record how it performs.
//!
//!     cargo run --release -p bedside-eval --example calibrate_keyfacts            # from the data file
//!     cargo run --release -p bedside-eval --example calibrate_keyfacts -- --write-data
//!
//! `--write-data` rebuilds `data/eval/keyfact-calibration.jsonl` from the train and validation
//! splits of `data/dialogues` (never the test split): for every key fact, its dialogue's
//! comforting and neutral answers (they convey it) and four hard negatives — a comfort-only
//! reply, the patient's message restated, the reference with this fact contradicted, and the
//! answer to another condition of the same specialty (`bedside_eval::controls::calibration_answers`).
//! Then every pair is read with the whole key-fact decision (MiniLM cosine or every content
//! word, and polarity) and the cosine threshold maximising Youden's J is chosen. The result,
//! with the rate at which each kind of answer is judged to convey its fact, is written to
//! `data/eval/keyfact-calibration.json`; `bedside_metrics::keyfacts::DEFAULT_THRESHOLD` is set
//! from it by hand (a test checks they agree).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bedside_eval::controls::{calibration_answers, CalibrationAnswer};
use bedside_metrics::keyfacts::{self, Criterion, Evidence, Fact};
use serde_json::json;

const DATA: &str = "data/eval/keyfact-calibration.jsonl";
const SUMMARY: &str = "data/eval/keyfact-calibration.json";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let write = std::env::args().any(|a| a == "--write-data");
    if write || !Path::new(DATA).is_file() {
        let files = bedside_data::jsonl_files(&[std::path::PathBuf::from("data/dialogues")])?;
        let dialogues: Vec<bedside_data::Dialogue> = bedside_data::read_dialogues(&files)?.into_iter().map(|l| l.record).collect();
        let answers = calibration_answers(&dialogues, &["train", "validation"]);
        let mut out = Vec::new();
        for a in &answers {
            serde_json::to_writer(&mut out, a)?;
            out.push(b'\n');
        }
        bedside_data::write_atomic(DATA, &out)?;
        eprintln!("wrote {} answers to {DATA}", answers.len());
    }
    let answers: Vec<CalibrationAnswer> = std::fs::read_to_string(DATA)?
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{DATA}:{}: {e}", i + 1)))
        .collect::<Result<_, _>>()?;
    // One (fact, answer) pair per fact of each answer.
    struct Pair<'a> {
        fact: &'a str,
        kind: &'a str,
        conveys: bool,
        answer: usize,
    }
    let pairs: Vec<Pair> = answers
        .iter()
        .enumerate()
        .flat_map(|(i, a)| a.facts.iter().map(move |f| Pair { fact: f, kind: &a.kind, conveys: a.conveys, answer: i }))
        .collect();
    let embedder = bedside_embed::Embedder::load(&bedside_embed::Embedder::default_dir(), &candle_core::Device::Cpu)?.with_progress(true);
    let sentences: Vec<Vec<String>> = answers.iter().map(|a| bedside_metrics::split_sentences(&a.answer)).collect();
    let texts = answers.iter().zip(&sentences).flat_map(|(a, s)| a.facts.iter().map(String::as_str).chain(s.iter().map(String::as_str)));
    let started = std::time::Instant::now();
    let table = embedder.embed_distinct(texts)?;
    eprintln!("embedded {} distinct texts in {:.0} s", table.len(), started.elapsed().as_secs_f64());
    let mut facts: HashMap<&str, Fact> = HashMap::new();
    let mut evidence: Vec<Vec<Evidence>> = Vec::with_capacity(pairs.len());
    for p in &pairs {
        let sents = &sentences[p.answer];
        let f = facts.entry(p.fact).or_insert_with(|| Fact::new(p.fact));
        let fe = table.get(p.fact).ok_or("a fact was not embedded")?;
        let ev = sents
            .iter()
            .map(|s| Ok(keyfacts::evidence(f, s, bedside_embed::cosine(fe, table.get(s).ok_or("a sentence was not embedded")?) as f64)))
            .collect::<Result<Vec<_>, &str>>()?;
        evidence.push(ev);
    }
    let (pos, neg): (Vec<usize>, Vec<usize>) = (0..pairs.len()).partition(|&i| pairs[i].conveys);
    let pick = |ix: &[usize]| ix.iter().map(|&i| evidence[i].clone()).collect::<Vec<_>>();
    let (pos_ev, neg_ev) = (pick(&pos), pick(&neg));
    let mut summary = BTreeMap::new();
    for c in [Criterion::Youden, Criterion::F1] {
        let (t, s) = keyfacts::calibrate_decision(&pos_ev, &neg_ev, c)?;
        println!(
            "{c:?}: threshold {t:.4}  TPR {:.3}  FPR {:.3}  precision {:.3}  F1 {:.3}  J {:.3}  (pos {}, neg {}; best-cosine AUC {:.3})",
            s.recall, s.false_positive_rate, s.precision, s.f1, s.youden_j, s.n_positive, s.n_negative, s.auc
        );
        summary.insert(format!("{c:?}").to_lowercase(), json!(s));
    }
    let chosen = keyfacts::calibrate_decision(&pos_ev, &neg_ev, Criterion::Youden)?.0;
    let rounded = (chosen * 1000.0).round() / 1000.0;
    let rates = |t: f64| -> BTreeMap<String, serde_json::Value> {
        let mut by_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (p, ev) in pairs.iter().zip(&evidence) {
            let e = by_kind.entry(p.kind.to_string()).or_default();
            e.0 += usize::from(keyfacts::conveyed(ev, t));
            e.1 += 1;
        }
        by_kind.into_iter().map(|(k, (c, n))| (k, json!({"pairs": n, "judged_conveyed": c, "rate": c as f64 / n as f64}))).collect()
    };
    for (k, v) in rates(rounded) {
        println!("  at {rounded}: {k:<15} conveyed {:.3} of {}", v["rate"].as_f64().unwrap_or(f64::NAN), v["pairs"]);
    }
    // How flat the criterion is around the choice (the table in data/eval/README.md).
    let auc = keyfacts::auc(&[], &[]);
    let curve: Vec<serde_json::Value> = (0..=8)
        .map(|k| 0.40 + 0.05 * k as f64)
        .map(|t| {
            let s = keyfacts::decision_stats(&pos_ev, &neg_ev, t, Criterion::Youden, auc);
            println!("  threshold {t:.2}: TPR {:.3}  FPR {:.3}  J {:.3}", s.recall, s.false_positive_rate, s.youden_j);
            json!({"threshold": t, "tpr": s.recall, "fpr": s.false_positive_rate, "youden_j": s.youden_j})
        })
        .collect();
    let doc = json!({
        "data": DATA,
        "answers": answers.len(),
        "pairs": pairs.len(),
        "positives": pos.len(),
        "negatives": neg.len(),
        "embedder": "all-MiniLM-L6-v2",
        "criterion": "youden",
        "threshold_exact": chosen,
        "threshold": rounded,
        "by_criterion": summary,
        "by_kind_at_threshold": rates(rounded),
        "by_kind_at_default": rates(keyfacts::DEFAULT_THRESHOLD),
        "curve": curve,
        "default_threshold": keyfacts::DEFAULT_THRESHOLD,
    });
    bedside_data::write_atomic(SUMMARY, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    println!("threshold {rounded} (exact {chosen:.6}); DEFAULT_THRESHOLD is {} — wrote {SUMMARY}", keyfacts::DEFAULT_THRESHOLD);
    Ok(())
}
