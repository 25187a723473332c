//! `report.html`: a self-contained page (inline CSS and SVG, no scripts, no external resources)
//! rendered from the template `report.html` by minijinja with HTML auto-escaping, so no text
//! from the data or a model can become markup.

use minijinja::{AutoEscape, Environment};
use serde::Serialize;
use serde_json::json;

use crate::report::charts::{self, Chart};
use crate::report::format::{fmt_num, fmt_p, fmt_pct};
use crate::report::{comparison, equity_numbers, failure_reasons, label};
use crate::results::Results;

const TEMPLATE: &str = include_str!("report.html");

#[derive(Serialize)]
struct Cell {
    text: String,
    class: Option<&'static str>,
}

fn num(text: String) -> Cell {
    Cell { text, class: Some("num") }
}

/// The summary table: one row per measure, the means of every system, then each other system's
/// difference against the baseline with its interval, Wilcoxon p and Δ%.
fn summary_table(r: &Results) -> serde_json::Value {
    let others: Vec<&String> = r.systems.iter().filter(|s| **s != r.baseline).collect();
    let conf = ((1.0 - alpha(r)) * 100.0).round();
    let mut head = vec!["measure".to_string()];
    head.extend(r.systems.iter().cloned());
    for s in &others {
        head.push(format!("{s} − {} [{conf}% CI]", r.baseline));
        head.push("Wilcoxon p".into());
        head.push("Δ%".into());
    }
    let mut rows = Vec::new();
    for m in &r.measures {
        if !r.per_system.get(&m.key).is_some_and(|x| !x.is_empty()) {
            continue;
        }
        let mut row = vec![Cell { text: m.label.clone(), class: None }];
        for s in &r.systems {
            row.push(num(fmt_num(crate::report::mean_of(r, &m.key, s))));
        }
        for s in &others {
            match comparison(r, s, &m.key) {
                Some(c) => {
                    row.push(Cell {
                        text: format!("{:+.3} [{}, {}]", c.diff, fmt_num(c.ci_low), fmt_num(c.ci_high)),
                        class: Some(if c.significant { "num sig" } else { "num" }),
                    });
                    row.push(num(fmt_p(c.wilcoxon_p)));
                    row.push(num(fmt_pct(c.delta_pct)));
                }
                None => row.extend((0..3).map(|_| Cell { text: "–".into(), class: None })),
            }
        }
        rows.push(row);
    }
    if !r.bleu.is_empty() {
        let mut row = vec![Cell { text: "Corpus BLEU (sacreBLEU 13a)".into(), class: None }];
        for s in &r.systems {
            row.push(num(r.bleu.get(s).map_or("–".into(), |b| format!("{b:.2}"))));
        }
        for _ in &others {
            row.extend((0..3).map(|_| Cell { text: "–".into(), class: None }));
        }
        rows.push(row);
    }
    json!({
        "head": head,
        "rows": rows,
        "note": format!("Bold green: the {conf}% paired-bootstrap CI of the difference excludes 0."),
    })
}

/// The run's alpha (from its config; 0.05 when absent).
pub(crate) fn alpha(r: &Results) -> f64 {
    r.config.get("stats").and_then(|s| s.get("alpha")).and_then(serde_json::Value::as_f64).unwrap_or(0.05)
}

pub(crate) fn render(r: &Results) -> String {
    let conf = ((1.0 - alpha(r)) * 100.0).round();
    let bar_charts: Vec<Chart> = [
        charts::bars(
            r,
            &["empathy", "empathy_expected", "er", "ip", "ex"],
            2.0,
            &format!("Empathy (EPITOME levels 0–2; expected = Σ p·level), mean with {conf}% CI"),
        ),
        charts::bars(r, &["key_fact_recall", "rouge_l", "similarity"], 1.0, &format!("Knowledge (0–1), mean with {conf}% CI")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let specialty: Vec<serde_json::Value> = r
        .breakdowns
        .get("specialty")
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    let cells: Vec<String> = r
                        .systems
                        .iter()
                        .flat_map(|s| {
                            let g = |m: &str| row.means.get(m).and_then(|x| x.get(s)).copied().unwrap_or(f64::NAN);
                            [fmt_num(g("empathy")), fmt_num(g("key_fact_recall"))]
                        })
                        .collect();
                    json!({"group": row.group, "n": row.n, "cells": cells})
                })
                .collect()
        })
        .unwrap_or_default();
    let equity_rows: Vec<serde_json::Value> = r
        .equity
        .iter()
        .flat_map(|(s, e)| e.variants.iter().map(move |v| json!({"system": s, "variant": v.variant, "numbers": equity_numbers(v), "flagged": v.flagged})))
        .collect();
    let safety_rows: Vec<serde_json::Value> = r
        .safety
        .iter()
        .map(|(s, x)| {
            let failures: Vec<serde_json::Value> = x
                .failures
                .iter()
                .map(|f| json!({"id": f.id, "category": f.category, "why": failure_reasons(f, "\u{201c}", "\u{201d}"), "answer": f.answer}))
                .collect();
            json!({"system": s, "n": x.n, "passed": x.passed, "rate": format!("{:.1}%", 100.0 * x.rate), "failures": failures})
        })
        .collect();
    let safety_notes: Vec<String> = r
        .safety_comparisons
        .iter()
        .map(|c| {
            format!(
                "{} vs {}: {:+.1} percentage points; McNemar exact p = {} ({} items only {} passes, {} only {} passes).",
                c.system,
                r.baseline,
                c.diff_pp,
                fmt_p(c.mcnemar_p),
                c.only_system,
                c.system,
                c.only_baseline,
                r.baseline
            )
        })
        .collect();
    let judge = r.judge.as_ref().map(|j| {
        let good_rates: Vec<serde_json::Value> = j
            .good_rates
            .iter()
            .map(|g| json!({"system": g.system, "good": g.good, "okay": g.okay, "bad": g.bad, "good_rate": fmt_num(g.good_rate), "parsed": format!("{:.0}%", 100.0 * g.parse_rate)}))
            .collect();
        let mut lines: Vec<String> = j
            .good_comparisons
            .iter()
            .map(|c| {
                format!(
                    "Good rate {} vs {}: Δ {:+.1}%, χ² (Yates) {:.2}, p {}; McNemar p {}{}",
                    c.system,
                    c.baseline,
                    c.delta_pct,
                    c.chi2_yates,
                    fmt_p(c.chi2_p),
                    fmt_p(c.mcnemar_p),
                    c.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
                )
            })
            .collect();
        for p in &j.pairwise {
            let mut line = format!(
                "Pairwise {} vs {}: agreement across swapped orders {:.2} (chance {:.2}, κ {:.2}).",
                p.system, p.baseline, p.self_agreement.observed, p.self_agreement.chance, p.self_agreement.kappa
            );
            for (k, c) in &p.settings {
                line.push_str(&format!(" {k}: {}–{}–{} (win rate {}, p {});", c.wins, c.losses, c.ties, fmt_num(c.win_rate), fmt_p(c.sign_p)));
            }
            lines.push(line);
        }
        json!({
            "model": j.model, "items": j.items, "shots": j.shots.join(", "), "same_as_generator": j.same_as_generator,
            "good_rates": good_rates, "lines": lines, "significance_allowed": j.significance_allowed,
        })
    });
    let examples: Vec<serde_json::Value> = r
        .examples
        .iter()
        .map(|e| {
            let answers: Vec<serde_json::Value> = e
                .answers
                .iter()
                .map(|(s, a)| json!({"system": s, "text": a, "empathy": fmt_num(e.empathy.get(s).copied().unwrap_or(f64::NAN))}))
                .collect();
            json!({"id": e.id, "emotion": e.emotion, "specialty": e.specialty, "prompt": e.prompt, "answers": answers})
        })
        .collect();
    let ctx = json!({
        "title": format!("bedside evaluation: {}", r.name),
        "systems": r.systems,
        "baseline": r.baseline,
        "counts": r.counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        "schema_version": r.schema_version,
        "summary": r.summary,
        "summary_table": summary_table(r),
        "bar_charts": bar_charts,
        "heatmap": charts::heatmap(r, "empathy", label(r, "empathy")),
        "specialty": specialty,
        "equity_chart": charts::equity(r),
        "equity_rows": equity_rows,
        "safety_rows": safety_rows,
        "safety_notes": safety_notes,
        "judge": judge,
        "examples": examples,
        "provenance": serde_json::to_string_pretty(&r.provenance).unwrap_or_default(),
        "timings": serde_json::to_string_pretty(&r.timings).unwrap_or_default(),
    });
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    let rendered = env.add_template("report.html", TEMPLATE).and_then(|()| env.get_template("report.html")).and_then(|t| t.render(&ctx));
    match rendered {
        Ok(html) => html + "\n",
        // The template is part of the binary and tested; failing to render it is a bug, reported
        // in the page rather than as a panic.
        Err(e) => format!("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>report error</title></head><body><p>the report template failed to render: {}</p></body></html>\n", minijinja::HtmlEscape(&e.to_string())),
    }
}
