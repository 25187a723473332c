//! `report.md` and a self-contained `report.html` (inline CSS and SVG, no scripts, no external
//! resources). Every piece of text that comes from data or a model goes through [`esc`].

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::results::{fmt_num, fmt_p, Comparison, Results};

/// HTML-escape text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Markdown table cells: no pipes or newlines from the data.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn label<'a>(r: &'a Results, key: &'a str) -> &'a str {
    r.measures.iter().find(|m| m.key == key).map(|m| m.label.as_str()).unwrap_or(key)
}

fn mean_of(r: &Results, measure: &str, sys: &str) -> f64 {
    r.per_system.get(measure).and_then(|m| m.get(sys)).map_or(f64::NAN, |s| s.mean)
}

fn comparison<'a>(r: &'a Results, sys: &str, measure: &str) -> Option<&'a Comparison> {
    r.comparisons.iter().find(|c| c.system == sys && c.measure == measure)
}

/// The summary table printed to stdout: one row per measure, one column per system, then the
/// difference and CI of each other system against the baseline.
pub fn summary_table(r: &Results) -> String {
    let others: Vec<&String> = r.systems.iter().filter(|s| **s != r.baseline).collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["measure".to_string()];
    head.extend(r.systems.iter().cloned());
    for o in &others {
        head.push(format!("{o} − {} [95% CI]", r.baseline));
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
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
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
    out.push_str("* = the 95% bootstrap CI of the paired difference excludes 0\n");
    out
}

pub fn markdown(r: &Results) -> String {
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
    let _ = writeln!(o, "| system | measure | n | baseline | system | diff | 95% CI | Wilcoxon p | Δ% | significant |");
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
            if c.delta_pct.is_finite() { format!("{:+.1}%", c.delta_pct) } else { "–".into() },
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
            let mut why = f.missing.iter().map(|m| format!("missing {m}")).collect::<Vec<_>>();
            why.extend(f.forbidden.iter().map(|m| format!("contains \"{m}\"")));
            let _ = writeln!(o, "  - {} ({}): {}", md(&f.id), md(&f.category), md(&why.join("; ")));
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

const PALETTE: [&str; 6] = ["#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Grouped bars (one group per measure, one bar per system) with CI whiskers.
fn bars_svg(r: &Results, measures: &[&str], max: f64, title: &str) -> String {
    let present: Vec<&str> = measures.iter().copied().filter(|m| r.per_system.get(*m).is_some_and(|x| !x.is_empty())).collect();
    if present.is_empty() {
        return String::new();
    }
    let ns = r.systems.len().max(1);
    let bw = 18.0;
    let gw = bw * ns as f64 + 24.0;
    let (left, top, h) = (44.0, 28.0, 160.0);
    let width = left + gw * present.len() as f64 + 10.0;
    let height = top + h + 46.0;
    let y = |v: f64| top + h - (v.clamp(0.0, max) / max) * h;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{width:.0}\" height=\"{height:.0}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = write!(s, "<text x=\"4\" y=\"16\" class=\"t\">{}</text>", esc(title));
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = write!(s, "<line x1=\"{left}\" x2=\"{:.0}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"grid\"/><text x=\"{:.0}\" y=\"{:.1}\" class=\"ax\" text-anchor=\"end\">{}</text>", width - 6.0, y(v), y(v), left - 4.0, y(v) + 4.0, fmt_axis(v));
    }
    for (gi, m) in present.iter().enumerate() {
        let gx = left + gi as f64 * gw + 12.0;
        for (si, sys) in r.systems.iter().enumerate() {
            let Some(sm) = r.per_system.get(*m).and_then(|x| x.get(sys)) else { continue };
            if !sm.mean.is_finite() {
                continue;
            }
            let x = gx + si as f64 * bw;
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} = {}</title></rect>",
                y(sm.mean),
                bw - 3.0,
                (top + h - y(sm.mean)).max(0.0),
                color(si),
                esc(sys),
                esc(m),
                fmt_num(sm.mean)
            );
            if sm.ci_low.is_finite() && sm.ci_high.is_finite() {
                let cx = x + (bw - 3.0) / 2.0;
                let _ = write!(
                    s,
                    "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"wh\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"wh\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"wh\"/>",
                    y(sm.ci_low), y(sm.ci_high), cx - 4.0, cx + 4.0, y(sm.ci_low), y(sm.ci_low), cx - 4.0, cx + 4.0, y(sm.ci_high), y(sm.ci_high)
                );
            }
        }
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" class=\"ax\" text-anchor=\"middle\">{}</text>", gx + bw * ns as f64 / 2.0, top + h + 16.0, esc(axis_label(m)));
    }
    for (si, sys) in r.systems.iter().enumerate() {
        let x = left + si as f64 * 110.0;
        let _ = write!(s, "<rect x=\"{x:.0}\" y=\"{:.0}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.0}\" y=\"{:.0}\" class=\"ax\">{}</text>", top + h + 28.0, color(si), x + 14.0, top + h + 37.0, esc(sys));
    }
    s.push_str("</svg>");
    s
}

/// A measure's name under its bar group, short enough for the group's width.
fn axis_label(m: &str) -> &str {
    match m {
        "empathy_expected" => "E[empathy]",
        _ => m,
    }
}

fn fmt_axis(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Diverging colour for a value in [-1, 1]: blue for positive, red for negative.
fn heat(v: f64) -> String {
    if !v.is_finite() {
        return "#eeeeee".into();
    }
    let t = v.clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 {
        (255.0 - 190.0 * t, 255.0 - 120.0 * t, 255.0)
    } else {
        (255.0, 255.0 + 170.0 * t, 255.0 + 170.0 * t)
    };
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

/// Per-emotion heat map: empathy mean per system (shaded on 0–2) and each system's difference
/// against the baseline (diverging shade).
fn heatmap_svg(r: &Results, measure: &str) -> String {
    let Some(rows) = r.breakdowns.get("emotion") else { return String::new() };
    if rows.is_empty() {
        return String::new();
    }
    let others: Vec<&String> = r.systems.iter().filter(|s| **s != r.baseline).collect();
    let mut cols: Vec<(String, bool, String)> = r.systems.iter().map(|s| (s.clone(), false, s.clone())).collect();
    cols.extend(others.iter().map(|o| (format!("{o} − {}", r.baseline), true, (*o).clone())));
    let (left, top, cw, ch) = (120.0, 40.0, 96.0, 22.0);
    let width = left + cw * cols.len() as f64 + 10.0;
    let height = top + ch * rows.len() as f64 + 10.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" id=\"heatmap\" width=\"{width:.0}\" height=\"{height:.0}\" role=\"img\" aria-label=\"per-emotion heat map\">");
    let _ = write!(s, "<text x=\"4\" y=\"16\" class=\"t\">{} per patient emotion</text>", esc(label(r, measure)));
    for (ci, (name, _, _)) in cols.iter().enumerate() {
        let _ = write!(s, "<text x=\"{:.0}\" y=\"{:.0}\" class=\"ax\" text-anchor=\"middle\">{}</text>", left + ci as f64 * cw + cw / 2.0, top - 6.0, esc(name));
    }
    for (ri, row) in rows.iter().enumerate() {
        let yy = top + ri as f64 * ch;
        let _ = write!(s, "<text x=\"{:.0}\" y=\"{:.1}\" class=\"ax\" text-anchor=\"end\">{} (n={})</text>", left - 6.0, yy + ch * 0.7, esc(&row.group), row.n);
        for (ci, (_, is_diff, sys)) in cols.iter().enumerate() {
            let v = if *is_diff {
                row.diffs.get(measure).and_then(|d| d.get(sys)).copied().unwrap_or(f64::NAN)
            } else {
                row.means.get(measure).and_then(|d| d.get(sys)).copied().unwrap_or(f64::NAN)
            };
            let fill = if *is_diff { heat(v) } else { heat(v / 2.0) };
            let _ = write!(
                s,
                "<rect x=\"{:.0}\" y=\"{yy:.0}\" width=\"{:.0}\" height=\"{:.0}\" fill=\"{fill}\" stroke=\"#fff\"/><text x=\"{:.0}\" y=\"{:.1}\" class=\"cell\" text-anchor=\"middle\">{}</text>",
                left + ci as f64 * cw,
                cw,
                ch,
                left + ci as f64 * cw + cw / 2.0,
                yy + ch * 0.7,
                if v.is_finite() { if *is_diff { format!("{v:+.2}") } else { format!("{v:.2}") } } else { "–".into() }
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Equity gaps per variant as horizontal bars around 0, with the threshold marked.
fn equity_svg(r: &Results) -> String {
    if r.equity.is_empty() {
        return String::new();
    }
    let variants: Vec<String> = {
        let mut v: Vec<String> = r.equity.values().flat_map(|e| e.variants.iter().map(|x| x.variant.clone())).collect();
        v.sort();
        v.dedup();
        v
    };
    let systems: Vec<&String> = r.systems.iter().filter(|s| r.equity.contains_key(*s)).collect();
    let max_gap = r
        .equity
        .values()
        .flat_map(|e| e.variants.iter().map(|v| v.gap_pct.abs()))
        .filter(|x| x.is_finite())
        .fold(r.equity_threshold_pct * 2.0, f64::max)
        .max(1.0);
    let (left, top, w, bh) = (170.0, 30.0, 360.0, 12.0);
    let rowh = bh * systems.len() as f64 + 8.0;
    let height = top + rowh * variants.len() as f64 + 30.0;
    let cx = left + w / 2.0;
    let xs = |g: f64| cx + g.clamp(-max_gap, max_gap) / max_gap * (w / 2.0);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" id=\"equity-chart\" width=\"{:.0}\" height=\"{height:.0}\" role=\"img\" aria-label=\"equity gaps\">", left + w + 20.0);
    let _ = write!(s, "<text x=\"4\" y=\"16\" class=\"t\">Empathy gap vs unmarked control (%), threshold ±{}%</text>", r.equity_threshold_pct);
    let bottom = top + rowh * variants.len() as f64;
    for t in [-r.equity_threshold_pct, r.equity_threshold_pct] {
        let _ = write!(s, "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{top}\" y2=\"{bottom:.0}\" class=\"thr\"/>", xs(t), xs(t));
    }
    let _ = write!(s, "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{top}\" y2=\"{bottom:.0}\" class=\"zero\"/>");
    for (vi, v) in variants.iter().enumerate() {
        let y0 = top + vi as f64 * rowh;
        let _ = write!(s, "<text x=\"{:.0}\" y=\"{:.1}\" class=\"ax\" text-anchor=\"end\">{}</text>", left - 6.0, y0 + rowh / 2.0 + 3.0, esc(v));
        for (si, sys) in systems.iter().enumerate() {
            let Some(x) = r.equity.get(*sys).and_then(|e| e.variants.iter().find(|x| &x.variant == v)) else { continue };
            if !x.gap_pct.is_finite() {
                continue;
            }
            let (a, b) = (xs(0.0).min(xs(x.gap_pct)), xs(0.0).max(xs(x.gap_pct)));
            let si_all = r.systems.iter().position(|q| q == *sys).unwrap_or(si);
            let _ = write!(
                s,
                "<rect x=\"{a:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.0}\" fill=\"{}\" {}><title>{} {}: {:+.1}% (p {})</title></rect>",
                y0 + 4.0 + si as f64 * bh,
                (b - a).max(1.0),
                bh - 2.0,
                color(si_all),
                if x.flagged { "stroke=\"#d62728\" stroke-width=\"2\"" } else { "" },
                esc(sys),
                esc(v),
                x.gap_pct,
                fmt_p(x.permutation_p)
            );
        }
    }
    let _ = write!(s, "<text x=\"{:.0}\" y=\"{:.0}\" class=\"ax\" text-anchor=\"start\">−{max_gap:.0}%</text><text x=\"{:.0}\" y=\"{:.0}\" class=\"ax\" text-anchor=\"end\">+{max_gap:.0}%</text>", left, bottom + 16.0, left + w, bottom + 16.0);
    s.push_str("</svg>");
    s
}

const CSS: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}.sig{font-weight:bold;color:#0b5}
.chart{display:block;margin:1em 0}.chart .t{font-size:13px;font-weight:bold}.chart .ax{font-size:11px;fill:#444}.chart .cell{font-size:11px;fill:#111}
.chart .grid{stroke:#e5e5e5}.chart .wh{stroke:#111;stroke-width:1.2}.chart .thr{stroke:#d62728;stroke-dasharray:4 3}.chart .zero{stroke:#333}
.answers td{width:33%;white-space:pre-wrap}.flag{color:#d62728;font-weight:bold}.note{color:#555;font-size:13px}details{margin:.3em 0}";

pub fn html(r: &Results) -> String {
    let mut o = String::new();
    let title = format!("bedside evaluation: {}", r.name);
    let _ = write!(o, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{CSS}</style></head><body>\n", esc(&title));
    let _ = write!(o, "<h1 id=\"title\">{}</h1>", esc(&title));
    let _ = write!(
        o,
        "<p class=\"note\">Systems: {} (baseline <b>{}</b>). Items: {}. results.json schema version {}.</p>",
        esc(&r.systems.join(", ")),
        esc(&r.baseline),
        esc(&r.counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")),
        r.schema_version
    );
    let _ = write!(o, "<h2>Summary</h2><ul id=\"summary-sentences\">");
    for s in &r.summary {
        let _ = write!(o, "<li>{}</li>", esc(s));
    }
    o.push_str("</ul>");
    // Summary table.
    let others: Vec<&String> = r.systems.iter().filter(|s| **s != r.baseline).collect();
    o.push_str("<table id=\"summary-table\"><thead><tr><th>measure</th>");
    for s in &r.systems {
        let _ = write!(o, "<th>{}</th>", esc(s));
    }
    for s in &others {
        let _ = write!(o, "<th>{} − {} [95% CI]</th><th>Wilcoxon p</th><th>Δ%</th>", esc(s), esc(&r.baseline));
    }
    o.push_str("</tr></thead><tbody>");
    for m in &r.measures {
        if !r.per_system.get(&m.key).is_some_and(|x| !x.is_empty()) {
            continue;
        }
        let _ = write!(o, "<tr><td>{}</td>", esc(&m.label));
        for s in &r.systems {
            let _ = write!(o, "<td class=\"num\">{}</td>", fmt_num(mean_of(r, &m.key, s)));
        }
        for s in &others {
            match comparison(r, s, &m.key) {
                Some(c) => {
                    let _ = write!(
                        o,
                        "<td class=\"num{}\">{:+.3} [{}, {}]</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                        if c.significant { " sig" } else { "" },
                        c.diff,
                        fmt_num(c.ci_low),
                        fmt_num(c.ci_high),
                        fmt_p(c.wilcoxon_p),
                        if c.delta_pct.is_finite() { format!("{:+.1}%", c.delta_pct) } else { "–".into() }
                    );
                }
                None => o.push_str("<td>–</td><td>–</td><td>–</td>"),
            }
        }
        o.push_str("</tr>");
    }
    if !r.bleu.is_empty() {
        o.push_str("<tr><td>Corpus BLEU (sacreBLEU 13a)</td>");
        for s in &r.systems {
            let _ = write!(o, "<td class=\"num\">{}</td>", r.bleu.get(s).map_or("–".into(), |b| format!("{b:.2}")));
        }
        for _ in &others {
            o.push_str("<td>–</td><td>–</td><td>–</td>");
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table><p class=\"note\">Bold green: the 95% paired-bootstrap CI of the difference excludes 0.</p>");
    o.push_str("<h2>Measures</h2>");
    o.push_str(&bars_svg(r, &["empathy", "empathy_expected", "er", "ip", "ex"], 2.0, "Empathy (EPITOME levels 0–2; expected = Σ p·level), mean with 95% CI"));
    o.push_str(&bars_svg(r, &["key_fact_recall", "rouge_l", "similarity"], 1.0, "Knowledge (0–1), mean with 95% CI"));
    o.push_str("<h2>Per patient emotion</h2>");
    o.push_str(&heatmap_svg(r, "empathy"));
    o.push_str("<p class=\"note\">Few items per emotion: per-emotion differences have little statistical power.</p>");
    if let Some(rows) = r.breakdowns.get("specialty") {
        o.push_str("<h2>Per specialty</h2><table id=\"specialty-table\"><thead><tr><th>specialty</th><th>n</th>");
        for s in &r.systems {
            let _ = write!(o, "<th>empathy {}</th><th>recall {}</th>", esc(s), esc(s));
        }
        o.push_str("</tr></thead><tbody>");
        for row in rows {
            let _ = write!(o, "<tr><td>{}</td><td class=\"num\">{}</td>", esc(&row.group), row.n);
            for s in &r.systems {
                let g = |m: &str| row.means.get(m).and_then(|x| x.get(s)).copied().unwrap_or(f64::NAN);
                let _ = write!(o, "<td class=\"num\">{}</td><td class=\"num\">{}</td>", fmt_num(g("empathy")), fmt_num(g("key_fact_recall")));
            }
            o.push_str("</tr>");
        }
        o.push_str("</tbody></table>");
    }
    o.push_str("<h2>Equity</h2>");
    o.push_str(&equity_svg(r));
    o.push_str("<table id=\"equity-table\"><thead><tr><th>system</th><th>variant</th><th>n</th><th>mean</th><th>control</th><th>gap %</th><th>permutation p</th><th>Holm p</th><th>flagged</th><th>Δ|gap| vs baseline</th></tr></thead><tbody>");
    for (s, e) in &r.equity {
        for v in &e.variants {
            let [n, mean, control, gap, perm_p, holm_p, widened] = equity_numbers(v);
            let flagged = if v.flagged { "<span class=\"flag\">yes</span>" } else { "no" };
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{n}</td><td class=\"num\">{mean}</td><td class=\"num\">{control}</td><td class=\"num\">{gap}</td><td class=\"num\">{perm_p}</td><td class=\"num\">{holm_p}</td><td>{flagged}</td><td class=\"num\">{widened}</td></tr>",
                esc(s),
                esc(&v.variant),
            );
        }
    }
    o.push_str("</tbody></table>");
    o.push_str("<h2>Safety</h2><table id=\"safety-table\"><thead><tr><th>system</th><th>answers</th><th>pass</th><th>pass rate</th><th>failing answers</th></tr></thead><tbody>");
    for (s, x) in &r.safety {
        let _ = write!(o, "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}%</td><td>", esc(s), x.n, x.passed, 100.0 * x.rate);
        for f in &x.failures {
            let mut why = f.missing.iter().map(|m| format!("missing {m}")).collect::<Vec<_>>();
            why.extend(f.forbidden.iter().map(|m| format!("contains \u{201c}{m}\u{201d}")));
            let _ = write!(o, "<details><summary>{} ({}): {}</summary><div class=\"note\">{}</div></details>", esc(&f.id), esc(&f.category), esc(&why.join("; ")), esc(&f.answer));
        }
        o.push_str("</td></tr>");
    }
    o.push_str("</tbody></table>");
    for c in &r.safety_comparisons {
        let _ = write!(o, "<p class=\"note\">{} vs {}: {:+.1} percentage points; McNemar exact p = {} ({} items only {} passes, {} only {} passes).</p>", esc(&c.system), esc(&r.baseline), c.diff_pp, fmt_p(c.mcnemar_p), c.only_system, esc(&c.system), c.only_baseline, esc(&r.baseline));
    }
    if let Some(j) = &r.judge {
        let _ = write!(o, "<h2>LLM judge</h2><p class=\"note\">Judge model: {} ({} test items; settings {}).{}</p>", esc(&j.model), j.items, esc(&j.shots.join(", ")), if j.same_as_generator { " The judge is the generator's own base model; EMRank used a different model." } else { "" });
        o.push_str("<table id=\"judge-table\"><thead><tr><th>system</th><th>Good</th><th>Okay</th><th>Bad</th><th>Good rate</th><th>parsed</th></tr></thead><tbody>");
        for g in &j.good_rates {
            let _ = write!(o, "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.0}%</td></tr>", esc(&g.system), g.good, g.okay, g.bad, fmt_num(g.good_rate), 100.0 * g.parse_rate);
        }
        o.push_str("</tbody></table><ul>");
        for c in &j.good_comparisons {
            let _ = write!(o, "<li>Good rate {} vs {}: Δ {:+.1}%, χ² (Yates) {:.2}, p {}; McNemar p {}{}</li>", esc(&c.system), esc(&c.baseline), c.delta_pct, c.chi2_yates, fmt_p(c.chi2_p), fmt_p(c.mcnemar_p), c.note.as_ref().map(|n| format!(" ({})", esc(n))).unwrap_or_default());
        }
        for p in &j.pairwise {
            let _ = write!(o, "<li>Pairwise {} vs {}: agreement across swapped orders {:.2} (chance {:.2}, κ {:.2}).", esc(&p.system), esc(&p.baseline), p.self_agreement.observed, p.self_agreement.chance, p.self_agreement.kappa);
            for (k, c) in &p.settings {
                let _ = write!(o, " {}: {}–{}–{} (win rate {}, p {});", esc(k), c.wins, c.losses, c.ties, fmt_num(c.win_rate), fmt_p(c.sign_p));
            }
            o.push_str("</li>");
        }
        o.push_str("</ul>");
        if !j.significance_allowed {
            o.push_str("<p class=\"flag\">The judge agrees with itself across swapped orders about as often as chance: none of its differences is called significant.</p>");
        }
    }
    o.push_str("<h2>Example answers</h2>");
    for e in &r.examples {
        let _ = write!(o, "<h3>{} <span class=\"note\">({}, {})</span></h3><p><i>{}</i></p><table class=\"answers\"><tr>", esc(&e.id), esc(&e.emotion), esc(&e.specialty), esc(&e.prompt));
        for s in e.answers.keys() {
            let _ = write!(o, "<th>{} (empathy {})</th>", esc(s), fmt_num(e.empathy.get(s).copied().unwrap_or(f64::NAN)));
        }
        o.push_str("</tr><tr>");
        for a in e.answers.values() {
            let _ = write!(o, "<td>{}</td>", esc(a));
        }
        o.push_str("</tr></table>");
    }
    let _ = write!(o, "<h2>Provenance</h2><pre>{}</pre>", esc(&serde_json::to_string_pretty(&r.provenance).unwrap_or_default()));
    let _ = write!(o, "<pre>{}</pre>", esc(&serde_json::to_string_pretty(&r.timings).unwrap_or_default()));
    o.push_str("</body></html>\n");
    o
}

/// Group breakdown rows as a map for quick lookup (used by compare).
pub fn means_by_group(r: &Results, dim: &str, measure: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    r.breakdowns
        .get(dim)
        .map(|rows| rows.iter().map(|row| (row.group.clone(), row.means.get(measure).cloned().unwrap_or_default())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<script>alert('x')</script> & \"q\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
        assert_eq!(md("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn heat_colours() {
        assert_eq!(heat(0.0), "#ffffff");
        assert_eq!(heat(f64::NAN), "#eeeeee");
        assert_ne!(heat(1.0), heat(-1.0));
    }
}

/// The numeric cells of an equity row, formatted once for both the Markdown and HTML tables:
/// n, mean, control mean, gap %, permutation p, Holm p, Δ|gap| vs the baseline.
fn equity_numbers(v: &crate::results::EquityVariant) -> [String; 7] {
    [
        v.n.to_string(),
        fmt_num(v.mean),
        fmt_num(v.control_mean),
        if v.gap_pct.is_finite() { format!("{:+.1}", v.gap_pct) } else { "–".into() },
        fmt_p(v.permutation_p),
        fmt_p(v.holm_p),
        v.widened_pp.map_or("–".into(), |w| format!("{w:+.1} pp")),
    ]
}
