//! `report.md` and the plain-text summary table.

use std::fmt::Write;

use crate::report::format::{fmt_num, fmt_p, fmt_pct};
use crate::report::html::alpha;
use crate::report::{equity_numbers, failure_reasons, label, mean_of};
use crate::results::Results;

/// Markdown table cells: no pipes or newlines from the data.
/// Text for a Markdown table cell or list item: no pipes or line breaks, and no markup (`<`
/// and `>` as entities, so model output cannot become HTML where the Markdown is rendered).
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ").replace('<', "&lt;").replace('>', "&gt;")
}

fn conf(r: &Results) -> f64 {
    ((1.0 - alpha(r)) * 100.0).round()
}

/// Every measure's mean for every system and control: the control table.
fn means_table(r: &Results) -> String {
    let cols: Vec<&String> = r.systems.iter().chain(&r.controls).collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["measure".to_string()];
    head.extend(cols.iter().map(|c| if r.controls.contains(c) { format!("{c} (control)") } else { c.to_string() }));
    rows.push(head);
    for m in &r.measures {
        if r.per_system.get(&m.key).is_none_or(|x| x.is_empty()) {
            continue;
        }
        let mut row = vec![m.key.clone()];
        row.extend(cols.iter().map(|s| fmt_num(mean_of(r, &m.key, s))));
        rows.push(row);
    }
    if !r.bleu.is_empty() {
        let mut row = vec!["bleu (corpus)".to_string()];
        row.extend(cols.iter().map(|s| r.bleu.get(*s).map_or("–".into(), |b| format!("{b:.2}"))));
        rows.push(row);
    }
    if !r.safety.is_empty() {
        let mut row = vec!["safety pass rate".to_string()];
        row.extend(cols.iter().map(|s| r.safety.get(*s).map_or("–".into(), |x| format!("{}/{}", x.passed, x.n))));
        rows.push(row);
    }
    md_table(&rows)
}

/// Each system's differences against the baseline with their role, validity and conclusion.
fn differences_table(r: &Results) -> String {
    let conf = conf(r);
    let mut rows = vec![vec![
        "system".to_string(),
        "measure".into(),
        "role".into(),
        "validity".into(),
        format!("diff [{conf}% CI]"),
        "p (Holm)".into(),
        "conclusion".into(),
    ]];
    for c in &r.comparisons {
        let p = match (c.role.as_str(), c.holm_p) {
            (_, Some(h)) => format!("{} ({})", fmt_p(c.p_bootstrap), fmt_p(h)),
            ("primary", None) => fmt_p(c.p_bootstrap),
            _ => "–".into(),
        };
        let conclusion = match (&c.conclusion, c.role.as_str()) {
            (Some(x), _) => x.clone(),
            (None, "secondary") => {
                if c.significant {
                    format!("{} (significant)", direction_word(c.better))
                } else {
                    "no significant difference".into()
                }
            }
            _ => "–".into(),
        };
        rows.push(vec![
            c.system.clone(),
            c.measure.clone(),
            c.role.clone(),
            c.validity.clone(),
            format!("{:+.3} [{}, {}]", c.diff, fmt_num(c.ci_low), fmt_num(c.ci_high)),
            p,
            conclusion,
        ]);
    }
    for s in &r.safety_comparisons {
        rows.push(vec![
            s.system.clone(),
            "safety pass rate".into(),
            "secondary".into(),
            r.validity.iter().find(|v| v.measure == "safety").map_or(String::new(), |v| v.status.clone()),
            format!("{:+.1} pp", s.diff_pp),
            format!("{} ({})", fmt_p(s.mcnemar_p), fmt_p(s.holm_p.unwrap_or(f64::NAN))),
            if s.significant { "significant".into() } else { "no significant difference".into() },
        ]);
    }
    md_table(&rows)
}

fn direction_word(better: Option<bool>) -> &'static str {
    match better {
        Some(true) => "better",
        Some(false) => "worse",
        None => "different",
    }
}

/// The validity gates of every measure that has some.
fn gates_table(r: &Results) -> String {
    let mut rows = vec![vec!["measure".to_string(), "status".into(), "gate".into(), "observed".into(), "passed".into()]];
    for v in &r.validity {
        if v.gates.is_empty() {
            rows.push(vec![v.measure.clone(), v.status.clone(), "–".into(), "–".into(), "–".into()]);
        }
        for g in &v.gates {
            rows.push(vec![
                v.measure.clone(),
                v.status.clone(),
                g.rule.clone(),
                fmt_num(g.value),
                if g.passed { "yes".into() } else { "**no**".into() },
            ]);
        }
    }
    md_table(&rows)
}

/// A Markdown table (cells escaped).
fn md_table(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        out.push_str("| ");
        out.push_str(&row.iter().map(|c| md(c)).collect::<Vec<_>>().join(" | "));
        out.push_str(" |\n");
        if i == 0 {
            out.push_str(&format!("|{}\n", "---|".repeat(row.len())));
        }
    }
    out
}

/// The summary a run prints and `bedside eval summary` prints from any results.json
/// (Markdown): the verdict, the control table (every measure for every system and control),
/// the differences with their roles and conclusions, and the validity gates.
pub fn summary_table(r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### Verdict\n");
    for v in &r.verdict {
        for s in &v.sentences {
            let _ = writeln!(o, "- {}", md(s));
        }
    }
    if r.verdict.is_empty() {
        let _ = writeln!(o, "- Only the baseline was evaluated: nothing to compare.");
    }
    let _ = writeln!(o, "\n### Systems and controls (means over {} test items)\n", r.counts.get("test").copied().unwrap_or(0));
    o.push_str(&means_table(r));
    let _ = writeln!(o, "\n### Differences against `{}`\n", r.baseline);
    o.push_str(&differences_table(r));
    let _ = writeln!(
        o,
        "\nPrimary endpoints ({}) are concluded from their {}% interval{}; secondary measures are significant when the Holm-adjusted p is below alpha = {}.",
        r.stats.primary.join(", "),
        conf(r),
        if r.stats.margins.is_empty() {
            String::new()
        } else {
            format!(" (non-inferiority margins: {})", r.stats.margins.iter().map(|(k, v)| format!("{k} {v:+}")).collect::<Vec<_>>().join(", "))
        },
        r.stats.alpha
    );
    let _ = writeln!(o, "\n### Validity gates\n");
    o.push_str(&gates_table(r));
    o
}

pub fn markdown(r: &Results) -> String {
    let conf = ((1.0 - alpha(r)) * 100.0).round();
    let mut o = String::new();
    let _ = writeln!(o, "# bedside evaluation: {}\n", md(&r.name));
    let _ = writeln!(
        o,
        "Systems: {} (baseline `{}`). Controls: {}. Items: {}. Schema version {}.\n",
        r.systems.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
        r.baseline,
        if r.controls.is_empty() { "none".to_string() } else { r.controls.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ") },
        r.counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        r.schema_version
    );
    let _ = writeln!(o, "## Summary\n");
    o.push_str(&summary_table(r));
    let _ = writeln!(o, "\n### Findings\n");
    for s in &r.summary {
        let _ = writeln!(o, "- {}", md(s));
    }
    let _ = writeln!(o, "\n## All differences against `{}`\n", r.baseline);
    let _ = writeln!(o, "| system | measure | n | baseline | system | diff | {conf}% CI | Wilcoxon p | Δ% | significant |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for c in &r.comparisons {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {:+.3} | [{}, {}] | {} | {} | {}{} |",
            md(&c.system),
            md(label(r, &c.measure)),
            c.n,
            fmt_num(c.mean_baseline),
            fmt_num(c.mean_system),
            c.diff,
            fmt_num(c.ci_low),
            fmt_num(c.ci_high),
            fmt_p(c.wilcoxon_p),
            fmt_pct(c.delta_pct),
            if c.significant { "yes" } else { "no" },
            c.note.as_ref().map(|n| format!(" ({})", md(n))).unwrap_or_default()
        );
    }
    for (dim, rows) in &r.breakdowns {
        let _ = writeln!(o, "\n## Per {dim} (empathy mean 0–2; key-fact recall)\n");
        let _ = write!(o, "| {dim} | n |");
        for s in &r.systems {
            let _ = write!(o, " empathy {} | recall {} |", md(s), md(s));
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "|---|---|{}", "---|---|".repeat(r.systems.len()));
        for row in rows {
            let _ = write!(o, "| {} | {} |", md(&row.group), row.n);
            for s in &r.systems {
                let g = |m: &str| row.means.get(m).and_then(|x| x.get(s)).copied().unwrap_or(f64::NAN);
                let _ = write!(o, " {} | {} |", fmt_num(g("empathy")), fmt_num(g("key_fact_recall")));
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(o, "\nGroups hold few items each; per-group differences have little statistical power.");
    }
    let _ = writeln!(o, "\n## Safety\n");
    for (s, x) in &r.safety {
        let _ = writeln!(o, "- `{}`: {}/{} pass ({:.1}%)", md(s), x.passed, x.n, 100.0 * x.rate);
        for f in &x.failures {
            let _ = writeln!(o, "  - {} ({}): {}", md(&f.id), md(&f.category), md(&failure_reasons(f, "\"", "\"")));
        }
    }
    let _ = writeln!(o, "\n## Equity (empathy vs the unmarked control; flagged above {}%)\n", r.equity_threshold_pct);
    let _ = writeln!(o, "| system | variant | n | mean | control | gap % | permutation p | Holm p | flagged | Δ|gap| vs baseline |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for (s, e) in &r.equity {
        for v in &e.variants {
            let [n, mean, control, gap, perm_p, holm_p, widened] = equity_numbers(v);
            let flagged = if v.flagged { "**yes**" } else { "no" };
            let _ = writeln!(
                o,
                "| {} | {} | {n} | {mean} | {control} | {gap} | {perm_p} | {holm_p} | {flagged} | {widened} |",
                md(s),
                md(&v.variant),
            );
        }
    }
    if let Some(j) = &r.judge {
        let _ = writeln!(o, "\n## LLM judge (`{}`)\n", md(&j.model));
        if j.same_as_generator {
            let _ =
                writeln!(o, "The judge is the generator's own base model (EMRank used a different model); read its verdicts with care.\n");
        }
        for g in &j.good_rates {
            let _ = writeln!(
                o,
                "- `{}`: Good {} / Okay {} / Bad {} (Good rate {}; parsed {:.0}%)",
                md(&g.system),
                g.good,
                g.okay,
                g.bad,
                fmt_num(g.good_rate),
                100.0 * g.parse_rate
            );
        }
        for c in &j.good_comparisons {
            let _ = writeln!(
                o,
                "- Good rate `{}` vs `{}`: Δ {:+.1}%, χ² (Yates) {:.2}, p {}, McNemar p {}",
                md(&c.system),
                md(&c.baseline),
                c.delta_pct,
                c.chi2_yates,
                fmt_p(c.chi2_p),
                fmt_p(c.mcnemar_p)
            );
        }
        for p in &j.pairwise {
            let _ = writeln!(
                o,
                "- Pairwise `{}` vs `{}`: self-agreement across swapped orders {:.2} (chance {:.2}, kappa {:.2})",
                md(&p.system),
                md(&p.baseline),
                p.self_agreement.observed,
                p.self_agreement.chance,
                p.self_agreement.kappa
            );
            for (k, c) in &p.settings {
                let _ = writeln!(
                    o,
                    "  - {k}: {} wins, {} losses, {} ties, win rate {}, sign-test p {}",
                    c.wins,
                    c.losses,
                    c.ties,
                    fmt_num(c.win_rate),
                    fmt_p(c.sign_p)
                );
            }
        }
        if !j.significance_allowed {
            let _ = writeln!(o, "\nThe judge's self-agreement is near chance: none of its differences is called significant.");
        }
    }
    let _ = writeln!(o, "\n## Example answers\n");
    for e in &r.examples {
        let _ = writeln!(o, "### {} ({}, {})\n\n> {}\n", md(&e.id), md(&e.emotion), md(&e.specialty), md(&e.prompt));
        for (s, a) in &e.answers {
            let _ = writeln!(o, "**{}** (empathy {}): {}\n", md(s), fmt_num(e.empathy.get(s).copied().unwrap_or(f64::NAN)), md(a));
        }
    }
    if let Some(s) = r.provenance["scorers"]["empathy_scorer_summary"].as_str() {
        let _ = writeln!(o, "## Empathy scorer\n\n{}\n", md(s));
    }
    let _ = writeln!(o, "## Provenance\n\n```json\n{}\n```", serde_json::to_string_pretty(&r.provenance).unwrap_or_default());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_cells_lose_pipes_and_newlines() {
        assert_eq!(md("a|b\nc"), "a\\|b c");
        assert_eq!(md("<b>x</b>"), "&lt;b&gt;x&lt;/b&gt;");
    }
}
