//! Number formatting shared by the report, the summary sentences and the tables.

/// Three decimals (one from 100 up); "–" for NaN.
pub(crate) fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// `= 0.008` or `< 0.001`, to follow "p" in a sentence.
pub(crate) fn p_clause(p: f64) -> String {
    let s = fmt_p(p);
    if s.starts_with('<') {
        s
    } else {
        format!("= {s}")
    }
}

/// A p-value: three decimals, `< 0.001` below that, "–" for NaN.
pub(crate) fn fmt_p(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// A signed percentage with one decimal, "–" when not finite.
pub(crate) fn fmt_pct(x: f64) -> String {
    if x.is_finite() {
        format!("{x:+.1}%")
    } else {
        "–".into()
    }
}
