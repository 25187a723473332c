//! `bedside eval score` without the CLI: expected levels of (context, response) pairs.
//! cargo run --release -p bedside-empathy --example score_pairs -- IN.jsonl OUT.jsonl [HEADS]
//! IN: {"id", "context", "response"} per line; OUT: {"id", "expected": [ER, IP, EX]} per line.

use anyhow::Result;
use bedside_empathy::EmpathyScorer;
use std::io::Write;

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (a.get(1), a.get(2)) else { anyhow::bail!("usage: score_pairs IN.jsonl OUT.jsonl [HEADS]") };
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(input)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let scorer = EmpathyScorer::load_heads(a.get(3).map(std::path::Path::new))?;
    let pairs: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["context"].as_str().unwrap_or(""), r["response"].as_str().unwrap_or(""))).collect();
    let scores = scorer.score(&pairs)?;
    let mut out = Vec::new();
    for (r, s) in rows.iter().zip(scores) {
        writeln!(out, "{}", serde_json::json!({"id": r["id"], "expected": s.expected}))?;
    }
    bedside_io::write_atomic(std::path::Path::new(output), &out)?;
    eprintln!("{}", scorer.info().summary());
    Ok(())
}
