//! Deterministic features for one (context, response) pair.
//!
//! Two parts: hand-written lexical cues that follow the EPITOME definitions (seeds.md §5), and
//! MiniLM sentence embeddings of the response and the context. Which parts a head uses is named by
//! its [`FeatureSet`], stored in the heads file, so a scorer always rebuilds exactly the features
//! its heads were trained on.

use anyhow::{bail, Result};

/// Version of the lexical feature definitions. Bump whenever a list or formula below changes:
/// heads trained on another version are refused rather than silently misread.
pub const LEXICAL_VERSION: &str = "lex-v3";

/// Which feature groups feed the heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSet {
    /// Lexical cues and the context/response cosine only.
    Lexical,
    /// Lexical cues, cosine and the response embedding.
    LexicalResponse,
    /// Lexical cues, cosine, the response embedding and the elementwise context × response product.
    LexicalResponseContext,
}

impl FeatureSet {
    pub const ALL: [FeatureSet; 3] = [FeatureSet::Lexical, FeatureSet::LexicalResponse, FeatureSet::LexicalResponseContext];

    pub fn name(self) -> &'static str {
        match self {
            FeatureSet::Lexical => "lex+cos",
            FeatureSet::LexicalResponse => "lex+cos+resp",
            FeatureSet::LexicalResponseContext => "lex+cos+resp+ctxprod",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        for f in Self::ALL {
            if f.name() == s {
                return Ok(f);
            }
        }
        bail!("unknown feature set {s:?} (expected one of: lex+cos, lex+cos+resp, lex+cos+resp+ctxprod)")
    }

    /// The full spec string stored in heads files, e.g. `lex-v3/lex+cos+resp`.
    pub fn spec(self) -> String {
        format!("{LEXICAL_VERSION}/{}", self.name())
    }

    pub fn parse_spec(spec: &str) -> Result<Self> {
        let Some((lex, set)) = spec.split_once('/') else { bail!("malformed feature spec {spec:?}") };
        if lex != LEXICAL_VERSION {
            bail!("heads were trained on lexical features {lex:?} but this build computes {LEXICAL_VERSION:?}; retrain them with `bedside eval train-scorer`")
        }
        Self::parse(set)
    }

    pub fn uses_embeddings(self) -> bool {
        !matches!(self, FeatureSet::Lexical)
    }

    /// Number of features for embeddings of width `dim`.
    pub fn width(self, dim: usize) -> usize {
        let base = LEXICAL_NAMES.len() + 1;
        match self {
            FeatureSet::Lexical => base,
            FeatureSet::LexicalResponse => base + dim,
            FeatureSet::LexicalResponseContext => base + 2 * dim,
        }
    }

    /// Assemble the feature vector. `resp`/`ctx` are L2-normalised embeddings (ignored by
    /// [`FeatureSet::Lexical`] except for the cosine, which is 0 when they are empty).
    pub fn assemble(self, context: &str, response: &str, ctx: &[f32], resp: &[f32]) -> Vec<f32> {
        let mut v = lexical_features(context, response);
        let cos = if ctx.is_empty() || resp.is_empty() { 0.0 } else { ctx.iter().zip(resp).map(|(a, b)| a * b).sum() };
        v.push(cos);
        match self {
            FeatureSet::Lexical => {}
            FeatureSet::LexicalResponse => v.extend_from_slice(resp),
            FeatureSet::LexicalResponseContext => {
                v.extend_from_slice(resp);
                v.extend(ctx.iter().zip(resp).map(|(a, b)| a * b));
            }
        }
        v
    }

    pub fn names(self, dim: usize) -> Vec<String> {
        let mut n: Vec<String> = LEXICAL_NAMES.iter().map(|s| s.to_string()).collect();
        n.push("cos_ctx_resp".into());
        if matches!(self, FeatureSet::LexicalResponse | FeatureSet::LexicalResponseContext) {
            n.extend((0..dim).map(|i| format!("resp_{i}")));
        }
        if matches!(self, FeatureSet::LexicalResponseContext) {
            n.extend((0..dim).map(|i| format!("ctxprod_{i}")));
        }
        n
    }
}

// --- Phrase lists. Written from the EPITOME definitions, in contraction-expanded form
// (the normaliser turns "I'm" and "im" into "i am", "that's" into "that is", ...).

/// ER strong: the responder names their own feeling for the seeker.
const ER_STRONG: &[&str] = &[
    "i am so sorry", "i am sorry", "so sorry", "i am really sorry", "i am very sorry", "sorry to hear", "sorry you are",
    "sorry for your", "sorry that you", "i feel for you", "i feel so sorry", "i feel bad for you", "i feel sad for you",
    "i feel terrible for you", "i feel awful for you", "i felt so sad", "sad for you", "feel really sad", "so sad to hear", "my heart goes out", "my heart breaks", "breaks my heart",
    "heartbroken", "i am sad", "makes me sad", "i am worried", "i am concerned", "i worry", "i am glad", "i am happy for you",
    "i am so happy", "i am proud of you", "so proud of you", "i care about", "i really care", "i am here for you",
    "sending love", "sending you", "i wish i could", "i hate that", "i am heartbroken", "i am scared for you",
    "it pains me", "i am touched", "my thoughts are with you", "thinking of you", "i am rooting for you", "i feel for you",
];

/// ER weak: warmth without naming the responder's feeling.
const ER_WEAK: &[&str] = &[
    "hang in there", "you will be fine", "you will be okay", "you will be ok", "it will be okay", "it will be ok",
    "it will be fine", "everything will be", "everything is going to be", "it is going to be okay", "going to be ok",
    "hugs", "hug", "stay strong", "you got this", "you have got this", "it gets better", "things will get better",
    "take care", "do not give up", "you are not alone", "not alone", "it is okay", "it is ok", "be gentle with yourself",
    "good luck", "best of luck", "wishing you", "you can do this", "you can do it", "keep going", "you are strong",
    "you are brave", "be kind to yourself", "you deserve", "you matter", "feel better", "get well", "you are doing great",
    "you are doing well", "proud", "<3",
];

/// IP strong, inferred feeling: names the seeker's likely feeling or experience.
const IP_INFER: &[&str] = &[
    "that must be", "this must be", "it must be", "must be so", "must be really", "must be very", "must have been",
    "must feel", "must be hard", "must be scary", "must be frightening", "must be exhausting", "must be",
    "sounds like", "sounds really", "sounds so", "sounds very", "that sounds", "it sounds", "seems like you",
    "it seems like", "you seem", "you sound", "it makes sense that", "makes sense that you", "makes sense to feel",
    "it makes sense", "no wonder", "of course you", "understandable", "it is understandable", "i can imagine",
    "i can only imagine", "i can not imagine", "can not even imagine", "that is hard", "that is so hard",
    "that is really hard", "that is tough", "that is rough", "that is awful", "that is scary", "that is a lot",
    "is a lot to", "so much to deal with", "you must be", "you must feel", "you are feeling", "you feel",
    "you have been feeling", "you are going through", "what you are going through", "how hard", "how scary",
    "how frightening", "how exhausting", "how lonely", "how painful", "how frustrating",
];

/// IP strong, own experience: shows understanding through a similar experience.
const IP_EXPERIENCE: &[&str] = &[
    "i have been there", "been there", "i went through", "when i went through", "i have been through", "i was in the same",
    "i had the same", "i have had the same", "the same thing happened", "same thing happened", "happened to me",
    "i know what it is like", "i know the feeling", "i know how it feels", "i know how that feels", "i used to",
    "i have had", "i also", "me too", "i struggled", "i have struggled", "i struggle with", "i suffer", "i suffered",
    "in my experience", "my experience", "i was diagnosed", "i have dealt", "i dealt with", "i felt the same",
    "i feel the same", "i was the same", "same here", "i have the same", "i am the same", "i had a similar",
    "similar experience", "similar situation", "when i was", "i remember when", "i remember feeling", "i lost my",
    "i had a", "my own",
];

/// IP weak: understanding stated in general terms.
const IP_WEAK: &[&str] = &[
    "i understand", "i totally understand", "i completely understand", "i get it", "i get that", "i know how you feel",
    "i know what you mean", "i see what you mean", "i hear you", "i can relate", "i relate", "relate to", "i see",
    "understand how you feel", "understand what you", "i know how", "i know that feeling", "i hear what you",
];

/// EX strong: questions about the seeker's feelings or experiences.
const EX_STRONG: &[&str] = &[
    "how are you feeling", "how do you feel", "how does that make you feel", "how did that make you feel",
    "how does it make you feel", "what is it about", "what makes you feel", "what made you feel", "do you want to talk",
    "would you like to talk", "want to talk about", "do you want to share", "tell me more", "can you tell me more",
    "how are you holding up", "how are you doing", "how have you been", "are you feeling", "do you feel",
    "have you been feeling", "how long have you been feeling", "what is been", "what has been", "what worries you",
    "what scares you", "what frightens you", "what is the hardest", "what is hardest", "what part of",
    "what are you most", "are you scared", "are you worried", "are you afraid", "are you okay", "are you ok",
    "how is that", "how has that", "what was that like", "what is that like", "what goes through", "what do you feel",
    "what are you feeling", "is there something", "is there anything",
];

/// EX weak: generic questions about what happened.
const EX_WEAK: &[&str] = &[
    "what happened", "what is going on", "what is wrong", "what do you mean", "what is up", "why do you", "why did you",
    "why are you", "what did", "what do you", "how did", "how long", "when did", "do you have", "did you", "are you",
    "have you", "is it", "is that",
];

/// Suggestions phrased as questions ("have you tried ..."): questions, but advice rather than exploration.
const ADVICE_Q: &[&str] = &[
    "have you tried", "have you considered", "have you thought about", "have you talked to", "have you spoken to",
    "have you seen a", "have you asked", "did you try", "did you talk to", "why not", "could you try", "can you try",
    "would you consider", "have you looked into", "have you been to",
];

/// Directive advice and information: typical of level-0 replies.
const ADVICE: &[&str] = &[
    "you should", "you need to", "you have to", "try to", "make sure", "see a doctor", "see your doctor",
    "talk to your", "call your", "i recommend", "i suggest", "i would suggest", "i would recommend", "it is important to",
    "do not", "go to the", "you can", "you could", "my advice", "the best thing",
];

/// Feeling words (seeker- or responder-side) for density and for "question about a feeling".
const FEELING_WORDS: &[&str] = &[
    "feel", "feeling", "feelings", "felt", "sad", "scared", "afraid", "frightened", "terrified", "fear", "anxious",
    "anxiety", "worried", "worry", "worrying", "nervous", "hurt", "hurting", "pain", "painful", "lonely", "alone",
    "depressed", "depression", "upset", "frustrated", "frustrating", "angry", "anger", "mad", "overwhelmed",
    "overwhelming", "hopeless", "helpless", "stressed", "stress", "stressful", "grief", "grieving", "guilty",
    "guilt", "ashamed", "shame", "embarrassed", "heartbroken", "devastated", "exhausted", "tired", "panic",
    "panicking", "cry", "crying", "tears", "miserable", "unhappy", "happy", "glad", "relieved", "hopeful", "love",
    "emotions", "emotional", "struggling", "struggle", "cope", "coping", "suffering", "confused", "numb", "empty",
    "worthless", "desperate", "terrible", "awful", "horrible", "difficult", "hard", "tough", "rough", "scary",
];

const QUESTION_STARTS: &[&str] = &[
    "what", "how", "why", "when", "where", "who", "which", "is", "are", "do", "does", "did", "have", "has", "can",
    "could", "would", "will", "was", "were", "should", "any", "anything", "so",
];

const SECOND_PERSON: &[&str] = &["you", "your", "yours", "yourself", "u", "ur"];
const FIRST_PAST: &[&str] = &[
    "i was", "i had", "i did", "i went", "i felt", "i used", "i got", "i lost", "i found", "i tried", "i started",
    "i ended", "i spent", "i thought", "i realized", "i learned",
];

/// Names of the lexical features, in order.
pub const LEXICAL_NAMES: &[&str] = &[
    "question_any", "question_share", "questions_log", "question_you_log",
    "question_feeling_log", "question_start_log", "ex_strong_any", "ex_strong_rate", "ex_weak_any", "ex_weak_rate",
    "advice_q_any", "advice_q_rate", "er_strong_any", "er_strong_rate", "er_weak_any", "er_weak_rate", "sorry_any",
    "exclaim_any", "exclaim_rate", "ip_infer_any", "ip_infer_rate", "ip_exp_any",
    "ip_exp_rate", "ip_weak_any", "ip_weak_rate", "first_past_log", "advice_any", "advice_rate", "context_question_any",
    "opening_empathy",
];

const CONTRACTIONS: &[(&str, &str)] = &[
    ("i'm", "i am"), ("im", "i am"), ("i've", "i have"), ("ive", "i have"), ("i'll", "i will"), ("i'd", "i would"),
    ("you're", "you are"), ("youre", "you are"), ("you've", "you have"), ("youve", "you have"), ("you'll", "you will"),
    ("youll", "you will"), ("you'd", "you would"), ("that's", "that is"), ("thats", "that is"), ("it's", "it is"),
    ("what's", "what is"), ("whats", "what is"), ("how's", "how is"), ("there's", "there is"), ("theres", "there is"),
    ("don't", "do not"), ("dont", "do not"), ("doesn't", "does not"), ("doesnt", "does not"), ("didn't", "did not"),
    ("didnt", "did not"), ("can't", "can not"), ("cant", "can not"), ("cannot", "can not"), ("won't", "will not"),
    ("wont", "will not"), ("isn't", "is not"), ("isnt", "is not"), ("aren't", "are not"), ("wasn't", "was not"),
    ("haven't", "have not"), ("havent", "have not"), ("hasn't", "has not"), ("couldn't", "could not"),
    ("wouldn't", "would not"), ("shouldn't", "should not"), ("let's", "let us"), ("we're", "we are"),
    ("they're", "they are"), ("he's", "he is"), ("she's", "she is"), ("gonna", "going to"), ("wanna", "want to"),
];

/// Lowercased words with contractions expanded; "<3" and emoji hearts become the token "<3".
fn words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase().replace(['\u{2019}', '\u{2018}', '`'], "'");
    let lower = lower.replace("<3", " heartsymbol ").replace(['\u{2764}', '\u{1F49C}', '\u{1F499}', '\u{1F49B}', '\u{1F49A}'], " heartsymbol ");
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

/// Sentences as (words, ends_with_question_mark).
fn sentences(text: &str) -> Vec<(Vec<String>, bool)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '.' | '!' | '?' | '\n') {
            // A run of terminators ("?!", "...") ends one sentence; it is a question if it holds '?'.
            let mut q = false;
            while i < chars.len() && matches!(chars[i], '.' | '!' | '?' | '\n') {
                q |= chars[i] == '?';
                i += 1;
            }
            let w = words(&cur);
            if !w.is_empty() {
                out.push((w, q));
            }
            cur.clear();
            continue;
        }
        cur.push(c);
        i += 1;
    }
    let w = words(&cur);
    if !w.is_empty() {
        out.push((w, false));
    }
    out
}

/// Occurrences of each phrase as a whole-word subsequence of `w`, summed over phrases. Longer
/// phrases that contain a shorter listed one both count: overlap is deliberate and harmless for a
/// linear model on standardised features.
fn count_phrases(w: &[String], phrases: &[&str]) -> usize {
    let mut n = 0;
    for p in phrases {
        let pw: Vec<&str> = p.split(' ').collect();
        if pw.len() > w.len() {
            continue;
        }
        for i in 0..=(w.len() - pw.len()) {
            if pw.iter().enumerate().all(|(j, t)| w[i + j] == *t) {
                n += 1;
            }
        }
    }
    n
}

fn count_words(w: &[String], set: &[&str]) -> usize {
    w.iter().filter(|t| set.contains(&t.as_str())).count()
}

fn ind(n: usize) -> f32 {
    if n > 0 {
        1.0
    } else {
        0.0
    }
}

fn log1p(n: usize) -> f32 {
    (n as f32).ln_1p()
}

/// The lexical features of [`LEXICAL_NAMES`], in order. Counts are normalised by the number of
/// sentences so long replies are not favoured. Style features that are not EPITOME cues (length,
/// pronoun and feeling-word rates) were tried in lex-v1 and dropped: the heads learned them as
/// shortcuts of the authored set that did not carry over to other text.
pub fn lexical_features(context: &str, response: &str) -> Vec<f32> {
    let w = words(response);
    let sents = sentences(response);
    let n_sent = sents.len().max(1) as f32;
    let questions: Vec<&Vec<String>> = sents.iter().filter(|(_, q)| *q).map(|(s, _)| s).collect();
    let q_you = questions.iter().filter(|s| count_words(s, SECOND_PERSON) > 0).count();
    let q_feel = questions.iter().filter(|s| count_words(s, FEELING_WORDS) > 0).count();
    let q_start = questions.iter().filter(|s| s.first().is_some_and(|t| QUESTION_STARTS.contains(&t.as_str()))).count();
    // Question phrases count only inside question sentences.
    let (mut ex_s, mut ex_w, mut adv_q) = (0, 0, 0);
    for s in &questions {
        ex_s += count_phrases(s, EX_STRONG);
        ex_w += count_phrases(s, EX_WEAK);
        adv_q += count_phrases(s, ADVICE_Q);
    }
    // Invitations such as "tell me more" are explorations without a question mark.
    ex_s += sents.iter().filter(|(_, q)| !q).map(|(s, _)| count_phrases(s, &["tell me more", "feel free to talk", "if you want to talk", "if you ever want to talk", "i am here to listen"])).sum::<usize>();
    let er_s = count_phrases(&w, ER_STRONG);
    let er_w = count_phrases(&w, ER_WEAK);
    let sorry = w.iter().filter(|t| t.as_str() == "sorry").count();
    let exclaim = response.chars().filter(|&c| c == '!').count();
    let ip_i = count_phrases(&w, IP_INFER);
    let ip_e = count_phrases(&w, IP_EXPERIENCE);
    let ip_w = count_phrases(&w, IP_WEAK);
    let first_past = count_phrases(&w, FIRST_PAST);
    let advice = count_phrases(&w, ADVICE);
    let ctx_q = ind(context.chars().filter(|&c| c == '?').count());
    // An empathic opening sentence (sorry / must be / sounds like) is a strong, common pattern.
    let opening = sents.first().map_or(0, |(s, _)| count_phrases(s, ER_STRONG) + count_phrases(s, IP_INFER));
    let v = vec![
        ind(questions.len()),
        questions.len() as f32 / n_sent,
        log1p(questions.len()),
        log1p(q_you),
        log1p(q_feel),
        log1p(q_start),
        ind(ex_s),
        ex_s as f32 / n_sent,
        ind(ex_w),
        ex_w as f32 / n_sent,
        ind(adv_q),
        adv_q as f32 / n_sent,
        ind(er_s),
        er_s as f32 / n_sent,
        ind(er_w),
        er_w as f32 / n_sent,
        ind(sorry),
        ind(exclaim),
        exclaim as f32 / n_sent,
        ind(ip_i),
        ip_i as f32 / n_sent,
        ind(ip_e),
        ip_e as f32 / n_sent,
        ind(ip_w),
        ip_w as f32 / n_sent,
        log1p(first_past),
        ind(advice),
        advice as f32 / n_sent,
        ctx_q,
        ind(opening),
    ];
    debug_assert_eq!(v.len(), LEXICAL_NAMES.len());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(v: &[f32], name: &str) -> f32 {
        v[LEXICAL_NAMES.iter().position(|n| *n == name).unwrap()]
    }

    #[test]
    fn contractions_and_apostrophes_normalise() {
        assert_eq!(words("I’m so sorry, im here"), vec!["i", "am", "so", "sorry", "i", "am", "here"]);
    }

    #[test]
    fn cues_fire_on_definition_examples() {
        // The weak/strong examples of seeds.md §5.
        let er2 = lexical_features("", "I feel really sad for you.");
        assert_eq!(get(&er2, "er_strong_any"), 1.0);
        let er1 = lexical_features("", "Everything will be fine.");
        assert_eq!(get(&er1, "er_weak_any"), 1.0);
        assert_eq!(get(&er1, "er_strong_any"), 0.0);
        let ip1 = lexical_features("", "I understand how you feel.");
        assert_eq!(get(&ip1, "ip_weak_any"), 1.0);
        let ip2 = lexical_features("", "This must be terrifying.");
        assert_eq!(get(&ip2, "ip_infer_any"), 1.0);
        let ex1 = lexical_features("", "What happened?");
        assert_eq!(get(&ex1, "ex_weak_any"), 1.0);
        assert_eq!(get(&ex1, "question_any"), 1.0);
        let ex2 = lexical_features("", "Are you feeling alone right now?");
        assert_eq!(get(&ex2, "ex_strong_any"), 1.0);
        assert_eq!(get(&ex2, "question_feeling_log"), 2f32.ln());
        // A question phrase outside a question sentence is not an exploration.
        let no = lexical_features("", "I know what happened. Take your pills.");
        assert_eq!(get(&no, "ex_weak_any"), 0.0);
        assert_eq!(get(&no, "question_any"), 0.0);
    }

    #[test]
    fn widths_match_names() {
        for f in FeatureSet::ALL {
            assert_eq!(f.names(4).len(), f.width(4));
            assert_eq!(f.assemble("a?", "b", &[0.5; 4], &[0.5; 4]).len(), f.width(4));
            assert_eq!(FeatureSet::parse_spec(&f.spec()).unwrap(), f);
        }
        assert!(FeatureSet::parse_spec("lex-v0/lex+cos").is_err());
    }
}
