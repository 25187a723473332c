//! The report: `report.md` ([`markdown`]), a self-contained `report.html` ([`html`], a minijinja
//! template with the charts of `charts`) and the plain summary table printed after a run
//! ([`summary_table`]). Everything here reads a [`Results`] and nothing else, so a report can be
//! rebuilt from any `results.json`.

mod charts;
pub(crate) mod format;
mod html;
mod markdown;

use std::path::Path;

use anyhow::Result;

use crate::results::{Comparison, EquityVariant, Results, SafetyFailure};
use format::{fmt_num, fmt_p};

pub use markdown::{markdown, summary_table};

/// The HTML report.
pub fn html(r: &Results) -> String {
    html::render(r)
}

/// `results.json`, `report.md` and `report.html`, each written atomically.
pub fn write_all(dir: &Path, results: &Results) -> Result<()> {
    let w = |name: &str, bytes: &[u8]| bedside_data::write_atomic(dir.join(name), bytes).map_err(|e| anyhow::anyhow!("{e}"));
    w("results.json", serde_json::to_string_pretty(results)?.as_bytes())?;
    w("report.md", markdown(results).as_bytes())?;
    w("report.html", html(results).as_bytes())?;
    Ok(())
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

/// Why a safety answer failed: the missing required groups and the forbidden strings found,
/// quoted with `open`/`close`.
fn failure_reasons(f: &SafetyFailure, open: &str, close: &str) -> String {
    let mut why = f.missing.iter().map(|m| format!("missing {m}")).collect::<Vec<_>>();
    why.extend(f.forbidden.iter().map(|m| format!("contains {open}{m}{close}")));
    why.join("; ")
}

/// The numeric cells of an equity row, formatted once for both the Markdown and HTML tables:
/// n, mean, control mean, gap %, permutation p, Holm p, Δ|gap| vs the baseline.
fn equity_numbers(v: &EquityVariant) -> [String; 7] {
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
