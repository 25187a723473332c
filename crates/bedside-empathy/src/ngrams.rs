//! Hashed word and character n-grams of a response, TF-IDF weighted: the in-domain features of
//! heads trained on EPITOME (`bedside eval train-scorer --epitome`). Hashing needs no vocabulary
//! in the heads file, only the IDF of each bucket.
//!
//! Word n-grams: 1–2 of tokens of two or more letters or digits. Character n-grams: 2–5 within
//! each whitespace-separated token padded with one space on each side (scikit-learn's `char_wb`).
//! Term frequencies are sublinear (1 + ln tf), times the IDF ln((1 + n) / (1 + df)) + 1 of a bucket
//! seen in at least two training documents (0 otherwise), and each block is L2-normalised.

pub const WORD_BUCKETS: usize = 1 << 15;
pub const CHAR_BUCKETS: usize = 1 << 15;
/// Buckets in all: words then characters.
pub const BUCKETS: usize = WORD_BUCKETS + CHAR_BUCKETS;
const MIN_DF: u32 = 2;

fn fnv1a(tag: u8, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(tag);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            eat(b' ');
        }
        p.bytes().for_each(&mut eat);
    }
    h
}

/// Bucket counts of `text`: (bucket, count), sorted by bucket.
pub fn counts(text: &str) -> Vec<(u32, u32)> {
    let lower = text.to_lowercase();
    let mut buckets: Vec<u32> = Vec::new();
    let tokens: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|t| t.chars().count() >= 2).collect();
    for (i, t) in tokens.iter().enumerate() {
        buckets.push((fnv1a(b'w', &[t]) % WORD_BUCKETS as u64) as u32);
        if i + 1 < tokens.len() {
            buckets.push((fnv1a(b'w', &[t, tokens[i + 1]]) % WORD_BUCKETS as u64) as u32);
        }
    }
    for word in lower.split_whitespace() {
        let padded: Vec<char> = std::iter::once(' ').chain(word.chars()).chain(std::iter::once(' ')).collect();
        for n in 2..=5usize {
            if padded.len() <= n {
                // A token shorter than n gives itself once, as scikit-learn does.
                let g: String = padded.iter().collect();
                buckets.push(WORD_BUCKETS as u32 + (fnv1a(b'c', &[&g]) % CHAR_BUCKETS as u64) as u32);
                break;
            }
            for w in padded.windows(n) {
                let g: String = w.iter().collect();
                buckets.push(WORD_BUCKETS as u32 + (fnv1a(b'c', &[&g]) % CHAR_BUCKETS as u64) as u32);
            }
        }
    }
    buckets.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for b in buckets {
        match out.last_mut() {
            Some((lb, c)) if *lb == b => *c += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

/// IDF per bucket from the documents' bucket counts.
pub fn fit_idf<'a>(docs: impl IntoIterator<Item = &'a [(u32, u32)]>) -> Vec<f32> {
    let mut df = vec![0u32; BUCKETS];
    let mut n = 0u32;
    for d in docs {
        n += 1;
        for &(b, _) in d {
            df[b as usize] += 1;
        }
    }
    df.iter().map(|&f| if f < MIN_DF { 0.0 } else { (((1 + n) as f64 / (1 + f) as f64).ln() + 1.0) as f32 }).collect()
}

/// TF-IDF row (bucket, weight), each block L2-normalised; buckets with IDF 0 are dropped.
pub fn tfidf(counts: &[(u32, u32)], idf: &[f32]) -> Vec<(u32, f32)> {
    let mut row: Vec<(u32, f32)> = counts
        .iter()
        .filter_map(|&(b, c)| {
            let w = idf.get(b as usize).copied().unwrap_or(0.0);
            (w > 0.0).then(|| (b, (1.0 + (c as f32).ln()) * w))
        })
        .collect();
    for word_block in [true, false] {
        let in_block = |b: u32| (b < WORD_BUCKETS as u32) == word_block;
        let norm = row.iter().filter(|(b, _)| in_block(*b)).map(|(_, v)| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().filter(|(b, _)| in_block(*b)).for_each(|(_, v)| *v /= norm);
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_analyzers() {
        // "hi there": words hi, there, "hi there" (3); char_wb of " hi " (2-grams 3, 3-grams 2, then
        // no longer than 4: itself once and no 5-grams → 6) and " there " (6+5+4+3 = 18).
        let c = counts("Hi there");
        let words: u32 = c.iter().filter(|(b, _)| (*b as usize) < WORD_BUCKETS).map(|(_, n)| n).sum();
        let chars: u32 = c.iter().filter(|(b, _)| (*b as usize) >= WORD_BUCKETS).map(|(_, n)| n).sum();
        assert_eq!((words, chars), (3, 6 + 18));
        assert_eq!(counts("HI THERE"), c, "lower-cased");
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn tfidf_blocks_are_unit_length_and_rare_buckets_dropped() {
        let docs: Vec<Vec<(u32, u32)>> = ["so sorry to hear", "so sorry", "what happened"].iter().map(|t| counts(t)).collect();
        let idf = fit_idf(docs.iter().map(Vec::as_slice));
        let row = tfidf(&docs[0], &idf);
        let norm = |word: bool| row.iter().filter(|(b, _)| ((*b as usize) < WORD_BUCKETS) == word).map(|(_, v)| v * v).sum::<f32>();
        assert!((norm(true) - 1.0).abs() < 1e-5 && (norm(false) - 1.0).abs() < 1e-5);
        // "to hear" occurs once: its buckets (unless shared by a hash collision) are gone.
        assert!(row.len() < docs[0].len());
        assert!(tfidf(&counts("what happened"), &idf).iter().all(|(_, v)| v.is_finite()));
    }
}
