//! BLEU as sacrebleu 2.x computes it with its defaults: `13a` tokenization, no lowercasing,
//! n-grams up to 4, `exp` smoothing (mteval-v13a's method 3), brevity penalty against the closest
//! reference length. [`corpus_bleu`] matches `sacrebleu.corpus_bleu(hyps, [refs]).score` and
//! [`sentence_bleu`] matches `sacrebleu.sentence_bleu(hyp, [ref]).score` (effective order on).

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

pub const MAX_ORDER: usize = 4;

/// Python's `str.isspace` (Unicode White_Space plus the ASCII information separators).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn rules() -> &'static [(Regex, &'static str); 4] {
    static R: OnceLock<[(Regex, &'static str); 4]> = OnceLock::new();
    R.get_or_init(|| {
        let re = |s: &str| Regex::new(s).expect("static regex");
        [
            (re(r"([\{-~\[-` -&\(-\+:-@/])"), " $1 "),
            (re(r"([^0-9])([\.,])"), "$1 $2 "),
            (re(r"([\.,])([^0-9])"), " $1 $2"),
            (re(r"([0-9])(-)"), "$1 $2 "),
        ]
    })
}

/// sacrebleu's `Tokenizer13a` (applied after `rstrip()`), tokens joined by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line.trim_end_matches(py_space).replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let mut s = format!(" {line} ");
    for (re, rep) in rules() {
        s = re.replace_all(&s, *rep).into_owned();
    }
    s.split(py_space).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Sufficient statistics of one segment or a whole corpus.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct BleuStats {
    pub sys_len: usize,
    pub ref_len: usize,
    pub correct: [usize; MAX_ORDER],
    pub total: [usize; MAX_ORDER],
}

impl std::ops::AddAssign for BleuStats {
    fn add_assign(&mut self, o: Self) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

/// A BLEU score (0–100) with its parts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bleu {
    pub score: f64,
    pub precisions: [f64; MAX_ORDER],
    pub bp: f64,
    pub stats: BleuStats,
}

fn ngrams(tokens: &[&str]) -> HashMap<Vec<String>, usize> {
    let mut m = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in tokens.windows(n) {
            *m.entry(w.iter().map(|s| s.to_string()).collect()).or_insert(0) += 1;
        }
    }
    m
}

/// Statistics of one hypothesis against one or more references.
pub fn segment_stats(hyp: &str, refs: &[&str]) -> BleuStats {
    let mut ref_ngrams: HashMap<Vec<String>, usize> = HashMap::new();
    let mut ref_lens = Vec::new();
    for r in refs {
        let toks = tokenize_13a(r);
        let toks: Vec<&str> = toks.split(' ').filter(|t| !t.is_empty()).collect();
        ref_lens.push(toks.len());
        for (g, c) in ngrams(&toks) {
            let e = ref_ngrams.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let hyp_t = tokenize_13a(hyp);
    let toks: Vec<&str> = hyp_t.split(' ').filter(|t| !t.is_empty()).collect();
    let hyp_len = toks.len();
    // Closest reference length, the shorter one on ties.
    let mut ref_len = 0usize;
    let mut best: Option<usize> = None;
    for &l in &ref_lens {
        let d = hyp_len.abs_diff(l);
        if best.is_none_or(|b| d < b) || (Some(d) == best && l < ref_len) {
            best = Some(d);
            ref_len = l;
        }
    }
    let mut s = BleuStats { sys_len: hyp_len, ref_len, ..Default::default() };
    for (g, c) in ngrams(&toks) {
        let n = g.len() - 1;
        s.total[n] += c;
        if let Some(&rc) = ref_ngrams.get(&g) {
            s.correct[n] += c.min(rc);
        }
    }
    s
}

fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// `BLEU.compute_bleu` with `exp` smoothing.
pub fn bleu_from_stats(stats: &BleuStats, effective_order: bool) -> Bleu {
    let bp = if stats.sys_len < stats.ref_len {
        if stats.sys_len > 0 {
            (1.0 - stats.ref_len as f64 / stats.sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0; MAX_ORDER];
    if stats.correct.iter().all(|&c| c == 0) {
        return Bleu { score: 0.0, precisions, bp, stats: *stats };
    }
    let mut smooth = 1.0;
    let mut eff = MAX_ORDER;
    // Indexes three parallel arrays, as sacrebleu's loop does.
    #[allow(clippy::needless_range_loop)]
    for n in 0..MAX_ORDER {
        if stats.total[n] == 0 {
            break;
        }
        if effective_order {
            eff = n + 1;
        }
        if stats.correct[n] == 0 {
            smooth *= 2.0;
            precisions[n] = 100.0 / (smooth * stats.total[n] as f64);
        } else {
            precisions[n] = 100.0 * stats.correct[n] as f64 / stats.total[n] as f64;
        }
    }
    let score = bp * (precisions[..eff].iter().map(|&p| my_log(p)).sum::<f64>() / eff as f64).exp();
    Bleu { score, precisions, bp, stats: *stats }
}

/// `sacrebleu.corpus_bleu(hyps, [refs]).score` with one reference per hypothesis.
/// Panics never; a length mismatch is an error.
pub fn corpus_bleu(hyps: &[&str], refs: &[&str]) -> Result<Bleu, String> {
    if hyps.len() != refs.len() {
        return Err(format!("corpus_bleu: {} hypotheses but {} references", hyps.len(), refs.len()));
    }
    let mut total = BleuStats::default();
    for (h, r) in hyps.iter().zip(refs) {
        total += segment_stats(h, &[r]);
    }
    Ok(bleu_from_stats(&total, false))
}

/// `sacrebleu.sentence_bleu(hyp, [reference]).score` (exp smoothing, effective order).
pub fn sentence_bleu(hyp: &str, reference: &str) -> Bleu {
    bleu_from_stats(&segment_stats(hyp, &[reference]), true)
}
