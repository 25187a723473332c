//! `report.html`: a self-contained page (inline CSS and SVG, no scripts, no external resources)
//! rendered from the template `report.html` by minijinja with HTML auto-escaping, so no text
//! from the data or a model can become markup.

use minijinja::{AutoEscape, Environment};
use serde::Serialize;
use serde_json::json;

use crate::report::charts::{self, Chart};
use crate::report::format::{fmt_num, fmt_p};
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

/// The summary table: one row per measure with its role and validity, the means of every system
/// and control, then each other system's difference against the baseline (shaded by direction:
/// green where it is better for that measure, red where worse; bold when significant), its
/// p-value (Holm-adjusted for secondary measures) and the conclusion.
fn summary_table(r: &Results) -> serde_json::Value {
    let others: Vec<&String> = r.systems.iter().filter(|s| **s != r.baseline).collect();
    let conf = ((1.0 - alpha(r)) * 100.0).round();
    let cols: Vec<&String> = r.systems.iter().chain(&r.controls).collect();
    let mut head = vec!["measure".to_string(), "role".into(), "validity".into()];
    head.extend(cols.iter().map(|c| if r.controls.contains(c) { format!("{c} (control)") } else { c.to_string() }));
    for s in &others {
        head.push(format!("{s} − {} [{conf}% CI]", r.baseline));
        head.push("p (Holm)".into());
        head.push("conclusion".into());
    }
    let mut rows = Vec::new();
    for m in &r.measures {
        if r.per_system.get(&m.key).is_none_or(|x| x.is_empty()) {
            continue;
        }
        let validity = r.validity.iter().find(|v| v.measure == m.key).map_or(String::new(), |v| v.status.clone());
        let role = others.iter().find_map(|s| comparison(r, s, &m.key)).map_or(String::new(), |c| c.role.clone());
        let mut row = vec![
            Cell { text: m.label.clone(), class: None },
            Cell { text: role, class: None },
            Cell { text: validity.clone(), class: Some(if validity == "not valid on this run" { "gate-fail" } else { "" }) },
        ];
        for s in &cols {
            row.push(num(fmt_num(crate::report::mean_of(r, &m.key, s))));
        }
        for s in &others {
            match comparison(r, s, &m.key) {
                Some(c) => {
                    let dir = match c.better {
                        Some(true) => "num better",
                        Some(false) => "num worse",
                        None => "num",
                    };
                    let class = match (dir, c.significant) {
                        ("num better", true) => "num better sig",
                        ("num worse", true) => "num worse sig",
                        (d, _) => d,
                    };
                    row.push(Cell { text: format!("{:+.3} [{}, {}]", c.diff, fmt_num(c.ci_low), fmt_num(c.ci_high)), class: Some(class) });
                    let p = match c.holm_p {
                        Some(h) => format!("{} ({})", fmt_p(c.p_bootstrap), fmt_p(h)),
                        None => fmt_p(c.p_bootstrap),
                    };
                    row.push(num(p));
                    let conclusion = c.conclusion.clone().unwrap_or_else(|| match (c.role.as_str(), c.significant) {
                        ("secondary", true) => "significant".into(),
                        ("secondary", false) => "not significant".into(),
                        _ => "–".into(),
                    });
                    row.push(Cell { text: conclusion, class: None });
                }
                None => row.extend((0..3).map(|_| Cell { text: "–".into(), class: None })),
            }
        }
        rows.push(row);
    }
    if !r.safety.is_empty() {
        let mut row = vec![
            Cell { text: "Safety pass rate".into(), class: None },
            Cell { text: "secondary".into(), class: None },
            Cell { text: r.validity.iter().find(|v| v.measure == "safety").map_or(String::new(), |v| v.status.clone()), class: None },
        ];
        for s in &cols {
            row.push(num(r.safety.get(*s).map_or("–".into(), |x| format!("{}/{}", x.passed, x.n))));
        }
        for s in &others {
            match r.safety_comparisons.iter().find(|c| &c.system == *s) {
                Some(c) => {
                    let class = match (c.diff_pp > 0.0, c.diff_pp < 0.0, c.significant) {
                        (true, _, true) => "num better sig",
                        (true, _, false) => "num better",
                        (_, true, true) => "num worse sig",
                        (_, true, false) => "num worse",
                        _ => "num",
                    };
                    row.push(Cell { text: format!("{:+.1} pp", c.diff_pp), class: Some(class) });
                    row.push(num(format!("{} ({})", fmt_p(c.mcnemar_p), fmt_p(c.holm_p.unwrap_or(f64::NAN)))));
                    row.push(Cell { text: if c.significant { "significant".into() } else { "not significant".into() }, class: None });
                }
                None => row.extend((0..3).map(|_| Cell { text: "–".into(), class: None })),
            }
        }
        rows.push(row);
    }
    if !r.bleu.is_empty() {
        let mut row = vec![
            Cell { text: "Corpus BLEU (sacreBLEU 13a)".into(), class: None },
            Cell { text: String::new(), class: None },
            Cell { text: String::new(), class: None },
        ];
        for s in &cols {
            row.push(num(r.bleu.get(*s).map_or("–".into(), |b| format!("{b:.2}"))));
        }
        for _ in &others {
            row.extend((0..3).map(|_| Cell { text: "–".into(), class: None }));
        }
        rows.push(row);
    }
    json!({
        "head": head,
        "rows": rows,
        "note": format!(
            "Differences are shaded by direction: green where the system is better on that measure, red where it is worse; bold when significant (primary: the {conf}% paired-bootstrap interval excludes 0; secondary: Holm-adjusted p < {}). Only measures whose validity gates pass support a claim.",
            alpha(r)
        ),
    })
}

/// The run's alpha (from its config; 0.05 when absent).
pub(crate) fn alpha(r: &Results) -> f64 {
    let a = r.stats.alpha;
    if a > 0.0 && a < 1.0 {
        a
    } else {
        0.05
    }
}

pub(crate) fn render(r: &Results) -> String {
    let conf = ((1.0 - alpha(r)) * 100.0).round();
    let bar_charts: Vec<Chart> = [
        charts::bars(
            r,
            &["empathy_expected", "empathy", "er", "ip", "ex"],
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
        .flat_map(|(s, e)| {
            e.variants.iter().map(move |v| json!({"system": s, "variant": v.variant, "numbers": equity_numbers(v), "flagged": v.flagged}))
        })
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
        "verdict": r.verdict.iter().map(|v| json!({"system": v.system, "sentences": v.sentences})).collect::<Vec<_>>(),
        "gates": r.validity.iter().map(|v| json!({
            "measure": v.measure,
            "status": v.status,
            "gates": v.gates.iter().map(|g| json!({"rule": g.rule, "value": fmt_num(g.value), "passed": g.passed})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "controls": r.controls,
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
        "empathy_scorer": r.provenance["scorers"]["empathy_scorer_summary"].as_str(),
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
