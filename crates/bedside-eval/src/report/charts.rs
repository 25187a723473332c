//! Chart geometry for the HTML report: positions, sizes, colours and the (unescaped) text of
//! every mark. The template `report.html` draws them as inline SVG, so all text is escaped by
//! the template engine. Every chart has a `viewBox` and scales down to the page width; its
//! width is at least what its title needs, so titles are never cut.

use serde::Serialize;

use crate::report::format::fmt_num;
use crate::results::Results;

const PALETTE: [&str; 12] =
    ["#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a"];

pub(crate) fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Width in pixels a line of text needs at the chart font sizes (a generous average glyph width,
/// so a title is never cut).
fn text_width(s: &str, font_px: f64) -> f64 {
    s.chars().count() as f64 * font_px * 0.6 + 12.0
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Serialize)]
pub(crate) struct Text {
    x: f64,
    y: f64,
    anchor: &'static str,
    text: String,
}

#[derive(Serialize)]
pub(crate) struct Line {
    x1: f64,
    x2: f64,
    y1: f64,
    y2: f64,
}

#[derive(Serialize)]
pub(crate) struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    fill: String,
    /// Outline for flagged marks.
    stroke: Option<&'static str>,
    tooltip: String,
    /// Text drawn centred in the rectangle (heat-map cells).
    label: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct Chart {
    id: Option<&'static str>,
    width: f64,
    height: f64,
    title: String,
    grid: Vec<Line>,
    /// Dashed threshold lines.
    thresholds: Vec<Line>,
    /// The zero line.
    zero: Option<Line>,
    whiskers: Vec<Line>,
    rects: Vec<Rect>,
    labels: Vec<Text>,
    legend: Vec<Rect>,
}

impl Chart {
    fn new(id: Option<&'static str>, title: String) -> Self {
        Chart {
            id,
            width: 0.0,
            height: 0.0,
            title,
            grid: vec![],
            thresholds: vec![],
            zero: None,
            whiskers: vec![],
            rects: vec![],
            labels: vec![],
            legend: vec![],
        }
    }

    /// Widen to the title, round the size.
    fn finish(mut self, width: f64, height: f64) -> Self {
        self.width = width.max(text_width(&self.title, 13.0)).ceil();
        self.height = height.ceil();
        self
    }
}

fn fmt_axis(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A measure's name under its bar group, short enough for the group's width.
fn axis_label(m: &str) -> &str {
    match m {
        "empathy_expected" => "E[empathy]",
        "key_fact_recall" => "key facts",
        _ => m,
    }
}

/// Grouped bars (one group per measure, one bar per system and control) with CI whiskers;
/// `None` when no measure has data.
pub(crate) fn bars(r: &Results, measures: &[&str], max: f64, title: &str) -> Option<Chart> {
    let present: Vec<&str> = measures.iter().copied().filter(|m| r.per_system.get(*m).is_some_and(|x| !x.is_empty())).collect();
    if present.is_empty() {
        return None;
    }
    let series: Vec<&String> = r.systems.iter().chain(&r.controls).collect();
    let ns = series.len().max(1);
    let bw = 18.0;
    let gw = bw * ns as f64 + 24.0;
    let (left, top, h) = (44.0, 28.0, 160.0);
    let width = left + gw * present.len() as f64 + 10.0;
    let y = |v: f64| r1(top + h - (v.clamp(0.0, max) / max) * h);
    let mut c = Chart::new(None, title.to_string());
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        c.grid.push(Line { x1: left, x2: width - 6.0, y1: y(v), y2: y(v) });
        c.labels.push(Text { x: left - 4.0, y: y(v) + 4.0, anchor: "end", text: fmt_axis(v) });
    }
    for (gi, m) in present.iter().enumerate() {
        let gx = left + gi as f64 * gw + 12.0;
        for (si, sys) in series.iter().enumerate() {
            let Some(sm) = r.per_system.get(*m).and_then(|x| x.get(*sys)) else { continue };
            if !sm.mean.is_finite() {
                continue;
            }
            let x = r1(gx + si as f64 * bw);
            c.rects.push(Rect {
                x,
                y: y(sm.mean),
                w: bw - 3.0,
                h: r1((top + h - y(sm.mean)).max(0.0)),
                fill: color(si).into(),
                stroke: None,
                tooltip: format!("{sys}: {m} = {}", fmt_num(sm.mean)),
                label: None,
            });
            if sm.ci_low.is_finite() && sm.ci_high.is_finite() {
                let cx = r1(x + (bw - 3.0) / 2.0);
                let (lo, hi) = (y(sm.ci_low), y(sm.ci_high));
                c.whiskers.push(Line { x1: cx, x2: cx, y1: lo, y2: hi });
                c.whiskers.push(Line { x1: cx - 4.0, x2: cx + 4.0, y1: lo, y2: lo });
                c.whiskers.push(Line { x1: cx - 4.0, x2: cx + 4.0, y1: hi, y2: hi });
            }
        }
        c.labels.push(Text { x: r1(gx + bw * ns as f64 / 2.0), y: top + h + 16.0, anchor: "middle", text: axis_label(m).into() });
    }
    // The legend wraps onto further rows when the systems do not fit on one.
    let mut lx = left;
    let mut ly = top + h + 28.0;
    let mut legend_right: f64 = 0.0;
    for (si, sys) in series.iter().enumerate() {
        let w = text_width(sys, 11.0) + 20.0;
        if lx > left && lx + w > width.max(360.0) {
            lx = left;
            ly += 16.0;
        }
        c.legend.push(Rect {
            x: lx,
            y: ly,
            w: 10.0,
            h: 10.0,
            fill: color(si).into(),
            stroke: None,
            tooltip: String::new(),
            label: Some(sys.to_string()),
        });
        lx += w;
        legend_right = legend_right.max(lx);
    }
    Some(c.finish(width.max(legend_right), ly + 18.0))
}

/// Diverging colour for a value in [-1, 1]: blue for positive, red for negative.
pub(crate) fn heat(v: f64) -> String {
    if !v.is_finite() {
        return "#eeeeee".into();
    }
    let t = v.clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 { (255.0 - 190.0 * t, 255.0 - 120.0 * t, 255.0) } else { (255.0, 255.0 + 170.0 * t, 255.0 + 170.0 * t) };
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

/// Per-emotion heat map: `measure`'s mean per system (shaded on 0–2) and each system's
/// difference against the baseline (diverging shade).
pub(crate) fn heatmap(r: &Results, measure: &str, label: &str) -> Option<Chart> {
    let rows = r.breakdowns.get("emotion").filter(|rows| !rows.is_empty())?;
    let others: Vec<&String> = r.systems.iter().filter(|s| **s != r.baseline).collect();
    let mut cols: Vec<(String, bool, String)> = r.systems.iter().map(|s| (s.clone(), false, s.clone())).collect();
    cols.extend(others.iter().map(|o| (format!("{o} − {}", r.baseline), true, (*o).clone())));
    let (left, top, ch) = (120.0, 40.0, 22.0);
    let cw = cols.iter().map(|c| text_width(&c.0, 11.0)).fold(96.0, f64::max);
    let width = left + cw * cols.len() as f64 + 10.0;
    let height = top + ch * rows.len() as f64 + 10.0;
    let mut c = Chart::new(Some("heatmap"), format!("{label} per patient emotion"));
    for (ci, (name, _, _)) in cols.iter().enumerate() {
        c.labels.push(Text { x: r1(left + ci as f64 * cw + cw / 2.0), y: top - 6.0, anchor: "middle", text: name.clone() });
    }
    for (ri, row) in rows.iter().enumerate() {
        let yy = top + ri as f64 * ch;
        c.labels.push(Text { x: left - 6.0, y: r1(yy + ch * 0.7), anchor: "end", text: format!("{} (n={})", row.group, row.n) });
        for (ci, (_, is_diff, sys)) in cols.iter().enumerate() {
            let table = if *is_diff { &row.diffs } else { &row.means };
            let v = table.get(measure).and_then(|d| d.get(sys)).copied().unwrap_or(f64::NAN);
            let fill = if *is_diff { heat(v) } else { heat(v / 2.0) };
            let text = if !v.is_finite() {
                "–".to_string()
            } else if *is_diff {
                format!("{v:+.2}")
            } else {
                format!("{v:.2}")
            };
            c.rects.push(Rect {
                x: r1(left + ci as f64 * cw),
                y: yy,
                w: r1(cw),
                h: ch,
                fill,
                stroke: None,
                tooltip: String::new(),
                label: Some(text),
            });
        }
    }
    Some(c.finish(width, height))
}

/// Equity gaps per variant as horizontal bars around 0, with the threshold marked.
pub(crate) fn equity(r: &Results) -> Option<Chart> {
    if r.equity.is_empty() {
        return None;
    }
    let mut variants: Vec<String> = r.equity.values().flat_map(|e| e.variants.iter().map(|x| x.variant.clone())).collect();
    variants.sort();
    variants.dedup();
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
    let xs = |g: f64| r1(cx + g.clamp(-max_gap, max_gap) / max_gap * (w / 2.0));
    let mut c = Chart::new(Some("equity-chart"), format!("Empathy gap vs unmarked control (%), threshold ±{}%", r.equity_threshold_pct));
    let bottom = top + rowh * variants.len() as f64;
    for t in [-r.equity_threshold_pct, r.equity_threshold_pct] {
        c.thresholds.push(Line { x1: xs(t), x2: xs(t), y1: top, y2: bottom });
    }
    c.zero = Some(Line { x1: cx, x2: cx, y1: top, y2: bottom });
    for (vi, v) in variants.iter().enumerate() {
        let y0 = top + vi as f64 * rowh;
        c.labels.push(Text { x: left - 6.0, y: r1(y0 + rowh / 2.0 + 3.0), anchor: "end", text: v.clone() });
        for (si, sys) in systems.iter().enumerate() {
            let Some(x) = r.equity.get(*sys).and_then(|e| e.variants.iter().find(|x| &x.variant == v)) else { continue };
            if !x.gap_pct.is_finite() {
                continue;
            }
            let (a, b) = (xs(0.0).min(xs(x.gap_pct)), xs(0.0).max(xs(x.gap_pct)));
            let si_all = r.systems.iter().position(|q| q == *sys).unwrap_or(si);
            c.rects.push(Rect {
                x: a,
                y: r1(y0 + 4.0 + si as f64 * bh),
                w: r1((b - a).max(1.0)),
                h: bh - 2.0,
                fill: color(si_all).into(),
                stroke: x.flagged.then_some("#d62728"),
                tooltip: format!("{sys} {v}: {:+.1}% (p {})", x.gap_pct, crate::report::format::fmt_p(x.permutation_p)),
                label: None,
            });
        }
    }
    c.labels.push(Text { x: left, y: bottom + 16.0, anchor: "start", text: format!("−{max_gap:.0}%") });
    c.labels.push(Text { x: left + w, y: bottom + 16.0, anchor: "end", text: format!("+{max_gap:.0}%") });
    Some(c.finish(left + w + 20.0, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_colours() {
        assert_eq!(heat(0.0), "#ffffff");
        assert_eq!(heat(f64::NAN), "#eeeeee");
        assert_ne!(heat(1.0), heat(-1.0));
    }

    #[test]
    fn a_chart_is_as_wide_as_its_title() {
        let long = "A title much longer than the few bars under it would otherwise leave room for, in full";
        let c = Chart::new(None, long.into()).finish(120.0, 100.0);
        assert!(c.width >= text_width(long, 13.0), "{} for {} chars", c.width, long.len());
    }
}
