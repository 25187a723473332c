//! Calibrate the key-fact similarity threshold on a dialogue corpus: each key fact against its
//! own reference answer (positives) and against the answer of a different condition (negatives),
//! scored as the best MiniLM cosine over the answer's sentences.
//!
//! cargo run -p bedside-metrics --example calibrate_keyfacts -- [data/dialogues] [models/all-minilm-l6-v2]

use std::collections::HashMap;
use std::path::PathBuf;

use bedside_metrics::keyfacts::{self, Criterion};
use bedside_metrics::text::split_sentences;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().map(String::as_str).unwrap_or("data/dialogues"));
    let emb_dir = args.get(1).map(PathBuf::from).unwrap_or_else(bedside_embed::Embedder::default_dir);
    let mut items: Vec<(String, String, Vec<String>)> = Vec::new(); // condition, answer, facts
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files.iter().filter(|p| p.extension().is_some_and(|e| e == "jsonl")) {
        for (i, line) in std::fs::read_to_string(f)?.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", f.display(), i + 1))?;
            let facts: Vec<String> = v["key_facts"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let answer = v["answer"].as_str().unwrap_or_default().to_string();
            if !facts.is_empty() && !answer.is_empty() {
                items.push((v["condition"].as_str().unwrap_or_default().to_string(), answer, facts));
            }
        }
    }
    eprintln!("{} items from {}", items.len(), dir.display());
    let e = bedside_embed::Embedder::load(&emb_dir, &candle_core::Device::Cpu)?.with_progress(true);
    let mut texts: Vec<String> = Vec::new();
    for (_, a, fs) in &items {
        texts.extend(fs.iter().cloned());
        texts.extend(split_sentences(a));
    }
    texts.sort();
    texts.dedup();
    let t = std::time::Instant::now();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vecs = e.embed(&refs)?;
    eprintln!("embedded {} texts in {:.1}s", texts.len(), t.elapsed().as_secs_f64());
    let emb: HashMap<&str, &Vec<f32>> = refs.iter().copied().zip(&vecs).collect();
    let sent_embs = |answer: &str| -> Vec<Vec<f32>> { split_sentences(answer).iter().map(|s| emb[s.as_str()].clone()).collect() };
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let n = items.len();
    for (i, (cond, answer, facts)) in items.iter().enumerate() {
        let own = sent_embs(answer);
        // A different condition, half the corpus away (another specialty in a sorted corpus).
        let mut j = (i + n / 2) % n;
        while items[j].0 == *cond {
            j = (j + 1) % n;
        }
        let other = sent_embs(&items[j].1);
        for f in facts {
            pos.push(keyfacts::max_cosine(emb[f.as_str()], &own));
            neg.push(keyfacts::max_cosine(emb[f.as_str()], &other));
        }
    }
    for c in [Criterion::F1, Criterion::Youden] {
        let (t, s) = keyfacts::calibrate_threshold_by(&pos, &neg, c)?;
        println!("{c:?}: threshold {t:.4}  F1 {:.3}  precision {:.3}  recall {:.3}  FPR {:.3}  J {:.3}  AUC {:.3}  (pos {}, neg {})",
            s.f1, s.precision, s.recall, s.false_positive_rate, s.youden_j, s.auc, s.n_positive, s.n_negative);
    }
    let d = keyfacts::threshold_stats(&pos, &neg, keyfacts::DEFAULT_THRESHOLD, Criterion::F1);
    println!("DEFAULT_THRESHOLD {}: F1 {:.3}  precision {:.3}  recall {:.3}  FPR {:.3}", d.threshold, d.f1, d.precision, d.recall, d.false_positive_rate);
    Ok(())
}
