//! NLTK's `PorterStemmer` in its default `NLTK_EXTENSIONS` mode — the stemmer `rouge-score`
//! (0.1.2, `from nltk.stem import porter`) uses when `use_stemmer=True`. A line-by-line port of
//! `nltk/stem/porter.py`; Snowball "English" (rust-stemmers) is Porter2 and stems differently.
//! Works on ASCII lowercase words (what the ROUGE tokenizer produces).

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    if is_vowel(w[i]) {
        return false;
    }
    if w[i] == b'y' {
        return if i == 0 { true } else { !is_consonant(w, i - 1) };
    }
    true
}

fn consonant_flags(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn measure(stem: &[u8]) -> usize {
    let f = consonant_flags(stem);
    f.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(stem: &[u8]) -> bool {
    !consonant_flags(stem).iter().all(|&c| c)
}

fn ends_double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    (n >= 3 && is_consonant(w, n - 3) && !is_consonant(w, n - 2) && is_consonant(w, n - 1) && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

type Cond<'a> = Option<&'a dyn Fn(&[u8]) -> bool>;

/// First rule whose suffix matches decides (applied or not); `"*d"` is the double-consonant rule.
fn apply_rules(word: &[u8], rules: &[(&str, &str, Cond)]) -> Vec<u8> {
    for (suffix, repl, cond) in rules {
        if *suffix == "*d" && ends_double_consonant(word) {
            let stem = &word[..word.len() - 2];
            return if cond.is_none_or(|c| c(stem)) { [stem, repl.as_bytes()].concat() } else { word.to_vec() };
        }
        if *suffix != "*d" && word.ends_with(suffix.as_bytes()) {
            let stem = &word[..word.len() - suffix.len()];
            return if cond.is_none_or(|c| c(stem)) { [stem, repl.as_bytes()].concat() } else { word.to_vec() };
        }
    }
    word.to_vec()
}

fn replace_suffix(word: &[u8], suffix: &str, repl: &str) -> Vec<u8> {
    [&word[..word.len() - suffix.len()], repl.as_bytes()].concat()
}

fn step1a(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ies") && w.len() == 4 {
        return replace_suffix(w, "ies", "ie");
    }
    apply_rules(w, &[("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])
}

fn step1b(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ied") {
        return if w.len() == 4 { replace_suffix(w, "ied", "ie") } else { replace_suffix(w, "ied", "i") };
    }
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 { [stem, b"ee"].concat() } else { w.to_vec() };
    }
    let mut inter: Option<&[u8]> = None;
    for suffix in ["ed", "ing"] {
        if w.ends_with(suffix.as_bytes()) {
            let s = &w[..w.len() - suffix.len()];
            if contains_vowel(s) {
                inter = Some(s);
                break;
            }
        }
    }
    let Some(inter) = inter else { return w.to_vec() };
    let last = inter.last().copied();
    let last_s = last.map(|c| (c as char).to_string()).unwrap_or_default();
    let not_lsz = move |_: &[u8]| !matches!(last, Some(b'l' | b's' | b'z'));
    let m1_cvc = |s: &[u8]| measure(s) == 1 && ends_cvc(s);
    apply_rules(
        inter,
        &[("at", "ate", None), ("bl", "ble", None), ("iz", "ize", None), ("*d", &last_s, Some(&not_lsz)), ("", "e", Some(&m1_cvc))],
    )
}

fn step1c(w: &[u8]) -> Vec<u8> {
    let cond = |s: &[u8]| s.len() > 1 && is_consonant(s, s.len() - 1);
    apply_rules(w, &[("y", "i", Some(&cond))])
}

fn pos(s: &[u8]) -> bool {
    measure(s) > 0
}

fn step2(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"alli") && pos(&w[..w.len() - 4]) {
        return step2(&replace_suffix(w, "alli", "al"));
    }
    let p: &dyn Fn(&[u8]) -> bool = &pos;
    let logi = |_: &[u8]| w.len() >= 3 && pos(&w[..w.len() - 3]);
    apply_rules(
        w,
        &[
            ("ational", "ate", Some(p)),
            ("tional", "tion", Some(p)),
            ("enci", "ence", Some(p)),
            ("anci", "ance", Some(p)),
            ("izer", "ize", Some(p)),
            ("bli", "ble", Some(p)),
            ("alli", "al", Some(p)),
            ("entli", "ent", Some(p)),
            ("eli", "e", Some(p)),
            ("ousli", "ous", Some(p)),
            ("ization", "ize", Some(p)),
            ("ation", "ate", Some(p)),
            ("ator", "ate", Some(p)),
            ("alism", "al", Some(p)),
            ("iveness", "ive", Some(p)),
            ("fulness", "ful", Some(p)),
            ("ousness", "ous", Some(p)),
            ("aliti", "al", Some(p)),
            ("iviti", "ive", Some(p)),
            ("biliti", "ble", Some(p)),
            ("fulli", "ful", Some(p)),
            ("logi", "log", Some(&logi)),
        ],
    )
}

fn step3(w: &[u8]) -> Vec<u8> {
    let p: &dyn Fn(&[u8]) -> bool = &pos;
    apply_rules(
        w,
        &[
            ("icate", "ic", Some(p)),
            ("ative", "", Some(p)),
            ("alize", "al", Some(p)),
            ("iciti", "ic", Some(p)),
            ("ical", "ic", Some(p)),
            ("ful", "", Some(p)),
            ("ness", "", Some(p)),
        ],
    )
}

fn step4(w: &[u8]) -> Vec<u8> {
    let g: &dyn Fn(&[u8]) -> bool = &|s: &[u8]| measure(s) > 1;
    let ion = |s: &[u8]| measure(s) > 1 && matches!(s.last(), Some(b's' | b't'));
    apply_rules(
        w,
        &[
            ("al", "", Some(g)),
            ("ance", "", Some(g)),
            ("ence", "", Some(g)),
            ("er", "", Some(g)),
            ("ic", "", Some(g)),
            ("able", "", Some(g)),
            ("ible", "", Some(g)),
            ("ant", "", Some(g)),
            ("ement", "", Some(g)),
            ("ment", "", Some(g)),
            ("ent", "", Some(g)),
            ("ion", "", Some(&ion)),
            ("ou", "", Some(g)),
            ("ism", "", Some(g)),
            ("ate", "", Some(g)),
            ("iti", "", Some(g)),
            ("ous", "", Some(g)),
            ("ive", "", Some(g)),
            ("ize", "", Some(g)),
        ],
    )
}

fn step5a(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w.to_vec()
}

fn step5b(w: &[u8]) -> Vec<u8> {
    let cond = |_: &[u8]| measure(&w[..w.len() - 1]) > 1;
    apply_rules(w, &[("ll", "l", Some(&cond))])
}

/// Stem one word as `nltk.stem.porter.PorterStemmer().stem(word)` does.
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    let irregular = match lower.as_str() {
        "sky" | "skies" => Some("sky"),
        "dying" => Some("die"),
        "lying" => Some("lie"),
        "tying" => Some("tie"),
        "news" => Some("news"),
        "innings" | "inning" => Some("inning"),
        "outings" | "outing" => Some("outing"),
        "cannings" | "canning" => Some("canning"),
        "howe" => Some("howe"),
        "proceed" => Some("proceed"),
        "exceed" => Some("exceed"),
        "succeed" => Some("succeed"),
        _ => None,
    };
    if let Some(s) = irregular {
        return s.to_string();
    }
    // NLTK's len(word) counts characters; the algorithm itself needs ASCII.
    if word.chars().count() <= 2 || !lower.is_ascii() {
        return lower;
    }
    let mut w = step1a(lower.as_bytes());
    w = step1b(&w);
    w = step1c(&w);
    w = step2(&w);
    w = step3(&w);
    w = step4(&w);
    w = step5a(&w);
    w = step5b(&w);
    String::from_utf8(w).unwrap_or(lower)
}
