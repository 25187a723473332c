//! A hand-written SVG of the loss curves (training loss per step, validation loss per eval).

use std::fmt::Write;

/// `train` and `val` are `(step, loss)` points.
pub fn loss_curve(train: &[(usize, f64)], val: &[(usize, f64)], title: &str) -> String {
    let (w, h) = (720.0f64, 420.0f64);
    let (l, r, t, b) = (64.0, 20.0, 36.0, 48.0);
    let pts = train.iter().chain(val).filter(|p| p.1.is_finite());
    let (mut xmax, mut ymin, mut ymax) = (1usize, f64::INFINITY, f64::NEG_INFINITY);
    for &(s, y) in pts {
        xmax = xmax.max(s);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    if !ymin.is_finite() {
        ymin = 0.0;
        ymax = 1.0;
    }
    if ymax - ymin < 1e-9 {
        ymax = ymin + 1.0;
    }
    let pad = (ymax - ymin) * 0.05;
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let sx = |s: usize| l + (w - l - r) * s as f64 / xmax as f64;
    let sy = |y: f64| t + (h - t - b) * (1.0 - (y - ymin) / (ymax - ymin));
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(o, r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#, w / 2.0, escape(title));
    // Axes, ticks and grid.
    let _ = writeln!(o, r##"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##, h - b, w - r, h - b);
    let _ = writeln!(o, r##"<line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="#333"/>"##, h - b);
    for i in 0..=5 {
        let y = ymin + (ymax - ymin) * i as f64 / 5.0;
        let py = sy(y);
        let _ = writeln!(
            o,
            r##"<line x1="{l}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{y:.3}</text>"##,
            w - r,
            l - 6.0,
            py + 4.0
        );
        let s = (xmax as f64 * i as f64 / 5.0).round() as usize;
        let _ = writeln!(o, r#"<text x="{:.1}" y="{}" text-anchor="middle">{s}</text>"#, sx(s), h - b + 16.0);
    }
    let _ = writeln!(o, r#"<text x="{}" y="{}" text-anchor="middle">optimizer step</text>"#, (l + w - r) / 2.0, h - 10.0);
    let _ = writeln!(o, r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">loss</text>"#, h / 2.0, h / 2.0);
    let line = |pts: &[(usize, f64)]| -> String {
        pts.iter().filter(|p| p.1.is_finite()).map(|&(s, y)| format!("{:.1},{:.1}", sx(s), sy(y))).collect::<Vec<_>>().join(" ")
    };
    if !train.is_empty() {
        let _ = writeln!(o, r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##, line(train));
    }
    if !val.is_empty() {
        let _ = writeln!(o, r##"<polyline fill="none" stroke="#d62728" stroke-width="2" points="{}"/>"##, line(val));
        for &(s, y) in val.iter().filter(|p| p.1.is_finite()) {
            let _ = writeln!(
                o,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="#d62728"><title>step {s}: {y:.4}</title></circle>"##,
                sx(s),
                sy(y)
            );
        }
    }
    let _ = writeln!(
        o,
        r##"<rect x="{}" y="{}" width="12" height="3" fill="#1f77b4"/><text x="{}" y="{}">training loss</text>"##,
        w - r - 150.0,
        t + 6.0,
        w - r - 132.0,
        t + 10.0
    );
    let _ = writeln!(
        o,
        r##"<rect x="{}" y="{}" width="12" height="3" fill="#d62728"/><text x="{}" y="{}">validation loss</text>"##,
        w - r - 150.0,
        t + 22.0,
        w - r - 132.0,
        t + 26.0
    );
    o.push_str("</svg>\n");
    o
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn well_formed() {
        let s = super::loss_curve(&[(1, 3.0), (2, 2.5), (3, f64::NAN)], &[(0, 3.2), (3, 2.4)], "a <b>");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert_eq!(s.matches("<circle").count(), 2);
        assert!(s.contains("a &lt;b&gt;"));
    }
}
