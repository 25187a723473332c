//! `report.md` and the plain-text summary table.

use std::fmt::Write;

use crate::report::format::{fmt_num, fmt_p, fmt_pct};
use crate::report::html::alpha;
use crate::report::{comparison, equity_numbers, failure_reasons, label, mean_of};
use crate::results::Results;

/// Markdown table cells: no pipes or newlines from the data.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Columns padded to their widest cell, a dashed rule under the header.
fn aligned(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (ri, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if ri == 0 {
            out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
            out.push('\n');
        }
    }
    out
}

/// The summary table printed to stdout: one row per measure, one column per system, then the
/// difference and CI of each other system against the baseline.
pub fn summary_table(r: &Results) -> String {
    let conf = ((1.0 - alpha(r)) * 100.0).round();
    let others: Vec<&String> = r.systems.iter().filter(|s| **s != r.baseline).collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["measure".to_string()];
    head.extend(r.systems.iter().cloned());
    for o in &others {
        head.push(format!("{o} − {} [{conf}% CI]", r.baseline));
    }
    rows.push(head);
    for m in &r.measures {
        if !r.per_system.get(&m.key).is_some_and(|x| !x.is_empty()) {
            continue;
        }
        let mut row = vec![m.key.clone()];
        for s in &r.systems {
            row.push(fmt_num(mean_of(r, &m.key, s)));
        }
        for o in &others {
            row.push(match comparison(r, o, &m.key) {
                Some(c) => format!(
                    "{:+.3} [{}, {}]{}",
                    c.diff,
                    fmt_num(c.ci_low),
                    fmt_num(c.ci_high),
                    if c.significant { " *" } else { "" }
                ),
                None => "–".into(),
            });
        }
        rows.push(row);
    }
    if !r.bleu.is_empty() {
        let mut row = vec!["bleu (corpus)".to_string()];
        for s in &r.systems {
            row.push(r.bleu.get(s).map_or("–".into(), |b| format!("{b:.2}")));
        }
        for o in &others {
            row.push(match (r.bleu.get(*o), r.bleu.get(&r.baseline)) {
                (Some(a), Some(b)) => format!("{:+.2}", a - b),
                _ => "–".into(),
            });
        }
        rows.push(row);
    }
    if !r.safety.is_empty() {
        let mut row = vec!["safety pass rate".to_string()];
        for s in &r.systems {
            row.push(r.safety.get(s).map_or("–".into(), |x| format!("{}/{}", x.passed, x.n)));
        }
        for o in &others {
            row.push(
                r.safety_comparisons
                    .iter()
                    .find(|c| &c.system == *o)
                    .map_or("–".into(), |c| format!("{:+.1} pp (p {})", c.diff_pp, fmt_p(c.mcnemar_p))),
            );
        }
        rows.push(row);
    }
    let mut out = aligned(&rows);
    out.push_str(&format!("* = the {conf}% bootstrap CI of the paired difference excludes 0\n"));
    out
}

pub fn markdown(r: &Results) -> String {
    let conf = ((1.0 - alpha(r)) * 100.0).round();
    let mut o = String::new();
    let _ = writeln!(o, "# bedside evaluation: {}\n", md(&r.name));
    let _ = writeln!(
        o,
        "Systems: {} (baseline `{}`). Items: {}. Schema version {}.\n",
        r.systems.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
        r.baseline,
        r.counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        r.schema_version
    );
    let _ = writeln!(o, "## Summary\n");
    for s in &r.summary {
        let _ = writeln!(o, "- {}", md(s));
    }
    let _ = writeln!(o, "\n## Measures\n\n```\n{}```\n", summary_table(r));
    let _ = writeln!(o, "## Differences against `{}`\n", r.baseline);
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
            let _ = writeln!(o, "The judge is the generator's own base model (EMRank used a different model); read its verdicts with care.\n");
        }
        for g in &j.good_rates {
            let _ = writeln!(o, "- `{}`: Good {} / Okay {} / Bad {} (Good rate {}; parsed {:.0}%)", md(&g.system), g.good, g.okay, g.bad, fmt_num(g.good_rate), 100.0 * g.parse_rate);
        }
        for c in &j.good_comparisons {
            let _ = writeln!(o, "- Good rate `{}` vs `{}`: Δ {:+.1}%, χ² (Yates) {:.2}, p {}, McNemar p {}", md(&c.system), md(&c.baseline), c.delta_pct, c.chi2_yates, fmt_p(c.chi2_p), fmt_p(c.mcnemar_p));
        }
        for p in &j.pairwise {
            let _ = writeln!(o, "- Pairwise `{}` vs `{}`: self-agreement across swapped orders {:.2} (chance {:.2}, kappa {:.2})", md(&p.system), md(&p.baseline), p.self_agreement.observed, p.self_agreement.chance, p.self_agreement.kappa);
            for (k, c) in &p.settings {
                let _ = writeln!(o, "  - {k}: {} wins, {} losses, {} ties, win rate {}, sign-test p {}", c.wins, c.losses, c.ties, fmt_num(c.win_rate), fmt_p(c.sign_p));
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
    let _ = writeln!(o, "## Provenance\n\n```json\n{}\n```", serde_json::to_string_pretty(&r.provenance).unwrap_or_default());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_cells_lose_pipes_and_newlines() {
        assert_eq!(md("a|b\nc"), "a\\|b c");
    }
}
