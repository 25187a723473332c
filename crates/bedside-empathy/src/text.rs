//! Text normalisation for the lexical cues: words (lower-cased, contractions expanded), sentences
//! with their raw text, and the content stems used to tell whether a question is about the
//! seeker's own post.

use std::collections::HashSet;

const CONTRACTIONS: &[(&str, &str)] = &[
    ("i'm", "i am"),
    ("im", "i am"),
    ("i've", "i have"),
    ("ive", "i have"),
    ("i'll", "i will"),
    ("i'd", "i would"),
    ("you're", "you are"),
    ("youre", "you are"),
    ("you've", "you have"),
    ("youve", "you have"),
    ("you'll", "you will"),
    ("youll", "you will"),
    ("you'd", "you would"),
    ("that's", "that is"),
    ("thats", "that is"),
    ("it's", "it is"),
    ("what's", "what is"),
    ("whats", "what is"),
    ("how's", "how is"),
    ("there's", "there is"),
    ("theres", "there is"),
    ("don't", "do not"),
    ("dont", "do not"),
    ("doesn't", "does not"),
    ("doesnt", "does not"),
    ("didn't", "did not"),
    ("didnt", "did not"),
    ("can't", "can not"),
    ("cant", "can not"),
    ("cannot", "can not"),
    ("won't", "will not"),
    ("wont", "will not"),
    ("isn't", "is not"),
    ("isnt", "is not"),
    ("aren't", "are not"),
    ("wasn't", "was not"),
    ("haven't", "have not"),
    ("havent", "have not"),
    ("hasn't", "has not"),
    ("couldn't", "could not"),
    ("wouldn't", "would not"),
    ("shouldn't", "should not"),
    ("let's", "let us"),
    ("we're", "we are"),
    ("they're", "they are"),
    ("he's", "he is"),
    ("she's", "she is"),
    ("gonna", "going to"),
    ("wanna", "want to"),
];

/// Lower-cased words with contractions expanded; "<3" and emoji hearts become the token "<3".
pub fn words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase().replace(['\u{2019}', '\u{2018}', '`'], "'");
    let lower =
        lower.replace("<3", " heartsymbol ").replace(['\u{2764}', '\u{1F49C}', '\u{1F499}', '\u{1F49B}', '\u{1F49A}'], " heartsymbol ");
    let mut out = Vec::new();
    for raw in lower.split(|c: char| !(c.is_alphanumeric() || c == '\'')) {
        let w = raw.trim_matches('\'');
        if w.is_empty() {
            continue;
        }
        if w == "heartsymbol" {
            out.push("<3".to_string());
            continue;
        }
        match CONTRACTIONS.iter().find(|(c, _)| *c == w) {
            Some((_, e)) => out.extend(e.split(' ').map(str::to_string)),
            None => out.push(w.to_string()),
        }
    }
    out
}

/// One sentence of a text.
#[derive(Clone, Debug, PartialEq)]
pub struct Sentence<'a> {
    /// The sentence as written, terminators included, trimmed.
    pub raw: &'a str,
    /// Byte offset of `raw` in the text.
    pub start: usize,
    pub words: Vec<String>,
    /// Ends with a run of terminators that holds a '?'.
    pub question: bool,
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '\n')
}

/// Sentences of `text`, split after runs of `.`, `!`, `?` and newlines; a run that holds a `?`
/// makes the sentence a question. Sentences without a word are dropped.
pub fn sentences(text: &str) -> Vec<Sentence<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !is_terminator(c) {
            continue;
        }
        let mut q = c == '?';
        let mut end = i + c.len_utf8();
        while let Some(&(j, d)) = chars.peek() {
            if !is_terminator(d) {
                break;
            }
            q |= d == '?';
            end = j + d.len_utf8();
            chars.next();
        }
        push_sentence(&mut out, text, start, end, q);
        start = end;
    }
    push_sentence(&mut out, text, start, text.len(), false);
    out
}

fn push_sentence<'a>(out: &mut Vec<Sentence<'a>>, text: &'a str, start: usize, end: usize, question: bool) {
    let raw = &text[start..end];
    let w = words(raw);
    if !w.is_empty() {
        let lead = raw.len() - raw.trim_start().len();
        out.push(Sentence { raw: raw.trim(), start: start + lead, words: w, question });
    }
}

/// `text` with only the sentences `keep` says to keep: each kept sentence with the text between it
/// and the sentence before it (so "3.8 cm", split after "3.", comes back whole), the first
/// without what precedes it.
pub fn keep_sentences(text: &str, sentences: &[Sentence], keep: impl Fn(usize) -> bool) -> String {
    let mut out = String::new();
    let mut prev_end = 0;
    for (i, s) in sentences.iter().enumerate() {
        if keep(i) {
            if !out.is_empty() {
                out.push_str(&text[prev_end..s.start]);
            }
            out.push_str(s.raw);
        }
        prev_end = s.start + s.raw.len();
    }
    out
}

/// Function words and words too general to tie a question to what the seeker wrote.
const STOP: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "anyone",
    "anything",
    "anyway",
    "are",
    "around",
    "as",
    "ask",
    "asked",
    "at",
    "away",
    "back",
    "be",
    "because",
    "been",
    "before",
    "being",
    "best",
    "better",
    "both",
    "but",
    "by",
    "can",
    "could",
    "day",
    "days",
    "did",
    "do",
    "does",
    "doing",
    "done",
    "down",
    "each",
    "else",
    "enough",
    "even",
    "ever",
    "every",
    "everyone",
    "everything",
    "few",
    "find",
    "for",
    "from",
    "get",
    "gets",
    "getting",
    "give",
    "go",
    "goes",
    "going",
    "good",
    "got",
    "great",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "him",
    "his",
    "how",
    "i",
    "if",
    "in",
    "info",
    "information",
    "into",
    "is",
    "it",
    "its",
    "just",
    "keep",
    "kind",
    "know",
    "last",
    "let",
    "like",
    "little",
    "look",
    "lot",
    "lots",
    "make",
    "makes",
    "many",
    "may",
    "maybe",
    "me",
    "mean",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "need",
    "needs",
    "never",
    "new",
    "next",
    "no",
    "not",
    "now",
    "of",
    "off",
    "oh",
    "ok",
    "okay",
    "on",
    "once",
    "one",
    "only",
    "or",
    "other",
    "others",
    "our",
    "out",
    "over",
    "people",
    "person",
    "please",
    "pretty",
    "question",
    "questions",
    "quite",
    "rather",
    "really",
    "right",
    "said",
    "same",
    "say",
    "see",
    "seem",
    "she",
    "should",
    "since",
    "so",
    "some",
    "someone",
    "something",
    "sometimes",
    "soon",
    "still",
    "such",
    "sure",
    "take",
    "talk",
    "tell",
    "than",
    "thank",
    "thanks",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "things",
    "think",
    "this",
    "those",
    "though",
    "through",
    "time",
    "times",
    "to",
    "today",
    "too",
    "try",
    "u",
    "under",
    "until",
    "up",
    "ur",
    "us",
    "use",
    "very",
    "want",
    "was",
    "way",
    "we",
    "well",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "why",
    "will",
    "with",
    "without",
    "would",
    "yeah",
    "yes",
    "yet",
    "you",
    "your",
    "yours",
    "yourself",
    "help",
    "helps",
    "helpful",
    "explain",
    "clear",
    "sense",
    "answer",
    "answers",
];

/// A crude stem: common inflectional suffixes stripped, then the first five characters, so
/// "worried" / "worrying" and "biopsy" / "biopsies" meet.
pub fn stem(w: &str) -> String {
    let mut s = w.to_string();
    for (suf, rep) in [("ies", "y"), ("ied", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("ly", ""), ("s", "")] {
        if let Some(r) = w.strip_suffix(suf) {
            if r.chars().count() >= 3 {
                s = format!("{r}{rep}");
                break;
            }
        }
    }
    s.chars().take(5).collect()
}

/// Content stems of `words`: words of at least three letters that are not function words.
pub fn content_stems(words: &[String]) -> HashSet<String> {
    words
        .iter()
        .filter(|w| w.chars().count() >= 3 && w.chars().all(|c| c.is_alphabetic()) && !STOP.contains(&w.as_str()))
        .map(|w| stem(w))
        .collect()
}

/// Word trigrams of `words` (the words themselves when there are fewer than three).
pub fn trigrams(words: &[String]) -> Vec<String> {
    if words.len() < 3 {
        return vec![words.join(" ")];
    }
    words.windows(3).map(|w| w.join(" ")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contractions_and_apostrophes_normalise() {
        assert_eq!(words("I’m so sorry, im here"), vec!["i", "am", "so", "sorry", "i", "am", "here"]);
    }

    #[test]
    fn sentences_keep_raw_text_and_question_marks() {
        let s = sentences("That sounds hard!! What happened?!\nTake care...");
        let raw: Vec<&str> = s.iter().map(|s| s.raw).collect();
        assert_eq!(raw, vec!["That sounds hard!!", "What happened?!", "Take care..."]);
        assert_eq!(s.iter().map(|s| s.question).collect::<Vec<_>>(), vec![false, true, false]);
        assert_eq!(sentences("no terminator")[0].raw, "no terminator");
        let t = "Aneurysms such as 3.8 cm are small.  Any questions? Scans follow.";
        let s = sentences(t);
        assert_eq!(s.len(), 4, "split after \"3.\"");
        assert_eq!(keep_sentences(t, &s, |i| i != 2), "Aneurysms such as 3.8 cm are small. Scans follow.");
        assert_eq!(keep_sentences(t, &s, |i| i >= 2), "Any questions? Scans follow.");
        assert_eq!(keep_sentences(t, &s, |_| true), t);
        assert!(sentences("?! ... \n").is_empty());
    }

    #[test]
    fn stems_meet_across_inflections() {
        assert_eq!(stem("worried"), stem("worrying"));
        assert_eq!(stem("biopsies"), stem("biopsy"));
        let c = content_stems(&words("Do you have any other questions about the biopsy?"));
        assert_eq!(c.into_iter().collect::<Vec<_>>(), vec![stem("biopsy")]);
    }
}
