//! Deterministic features for one (context, response) pair.
//!
//! Two parts: hand-written lexical cues that follow the EPITOME definitions (seeds.md §5), and
//! MiniLM sentence embeddings of the response and the context. Which parts a head uses is named by
//! its [`FeatureSet`], stored in the heads file, so a scorer always rebuilds exactly the features
//! its heads were trained on.
//!
//! Before any cue is counted or anything is embedded, each sentence of the response is given a
//! [`Role`]. Sentences that by rule carry no empathy for this seeker are set aside: a sentence that
//! repeats an earlier one, one that quotes the seeker's own words back, and a question that is
//! neither about the seeker's feelings nor about what they wrote ("Do you have any other
//! questions?", "Did you see the game?"). The cues and the response embedding see only the rest
//! ([`Analysis::kept_text`]), so such sentences cannot move a level however they are phrased.

use std::borrow::Cow;
use std::collections::HashSet;

use anyhow::{bail, Result};

use crate::text::{content_stems, sentences, trigrams, words, Sentence};

/// Version of the lexical feature definitions. Bump whenever a list or formula below changes:
/// heads trained on another version are refused rather than silently misread.
pub const LEXICAL_VERSION: &str = "lex-v4";

/// Which feature groups feed the heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSet {
    /// Lexical cues and the context/response cosine only.
    Lexical,
    /// Lexical cues, cosine and the response embedding.
    LexicalResponse,
    /// Lexical cues, cosine, the response embedding and the elementwise context × response product.
    LexicalResponseContext,
    /// Lexical cues and hashed TF-IDF word and character n-grams of the response
    /// ([`crate::ngrams`]); no embedding. The in-domain features of heads trained on EPITOME.
    NgramLexical,
}

impl FeatureSet {
    pub const ALL: [FeatureSet; 4] =
        [FeatureSet::Lexical, FeatureSet::LexicalResponse, FeatureSet::LexicalResponseContext, FeatureSet::NgramLexical];

    pub fn name(self) -> &'static str {
        match self {
            FeatureSet::Lexical => "lex+cos",
            FeatureSet::LexicalResponse => "lex+cos+resp",
            FeatureSet::LexicalResponseContext => "lex+cos+resp+ctxprod",
            FeatureSet::NgramLexical => "ngram+lex",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        for f in Self::ALL {
            if f.name() == s {
                return Ok(f);
            }
        }
        bail!("unknown feature set {s:?} (expected one of: lex+cos, lex+cos+resp, lex+cos+resp+ctxprod, ngram+lex)")
    }

    /// The full spec string stored in heads files, e.g. `lex-v4/lex+cos+resp`.
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

    /// Whether the features need MiniLM embeddings (the cosine or the response embedding).
    pub fn uses_embeddings(self) -> bool {
        !matches!(self, FeatureSet::NgramLexical)
    }

    /// Number of features for embeddings of width `dim`.
    pub fn width(self, dim: usize) -> usize {
        let base = LEXICAL_NAMES.len() + 1;
        match self {
            FeatureSet::Lexical => base,
            FeatureSet::LexicalResponse => base + dim,
            FeatureSet::LexicalResponseContext => base + 2 * dim,
            FeatureSet::NgramLexical => LEXICAL_NAMES.len() + crate::ngrams::BUCKETS,
        }
    }

    /// The sparse feature row of [`FeatureSet::NgramLexical`]: every lexical cue, then the
    /// n-gram buckets of [`Analysis::ngram_text`] with weight, offset by the number of cues.
    pub fn sparse_row(analysis: &Analysis, idf: &[f32]) -> Vec<(u32, f32)> {
        let l = LEXICAL_NAMES.len() as u32;
        let mut row: Vec<(u32, f32)> = analysis.lexical.iter().enumerate().map(|(j, &v)| (j as u32, v)).collect();
        let counts = crate::ngrams::counts(&analysis.ngram_text());
        row.extend(crate::ngrams::tfidf(&counts, idf).into_iter().map(|(b, v)| (b + l, v)));
        row
    }

    /// Assemble the feature vector from an [`Analysis`] and the L2-normalised embeddings of the
    /// context and of [`Analysis::kept_text`] (the cosine is 0 when either is empty).
    pub fn assemble(self, analysis: &Analysis, ctx: &[f32], resp: &[f32]) -> Vec<f32> {
        let mut v = analysis.lexical.clone();
        let cos = if ctx.is_empty() || resp.is_empty() { 0.0 } else { ctx.iter().zip(resp).map(|(a, b)| a * b).sum() };
        v.push(cos);
        match self {
            FeatureSet::Lexical | FeatureSet::NgramLexical => {}
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
        if matches!(self, FeatureSet::NgramLexical) {
            n.pop();
            n.extend((0..crate::ngrams::BUCKETS).map(|i| format!("ngram_{i}")));
        }
        n
    }
}

// --- Phrase lists. Written from the EPITOME definitions, in contraction-expanded form
// (the normaliser turns "I'm" and "im" into "i am", "that's" into "that is", ...).

/// ER strong: the responder names their own feeling for the seeker.
const ER_STRONG: &[&str] = &[
    "i am so sorry",
    "i am sorry",
    "so sorry",
    "i am really sorry",
    "i am very sorry",
    "sorry to hear",
    "sorry you are",
    "sorry for your",
    "sorry that you",
    "i feel for you",
    "i feel so sorry",
    "i feel bad for you",
    "i feel sad for you",
    "i feel terrible for you",
    "i feel awful for you",
    "i felt so sad",
    "sad for you",
    "feel really sad",
    "so sad to hear",
    "my heart goes out",
    "my heart breaks",
    "breaks my heart",
    "heartbroken",
    "i am sad",
    "makes me sad",
    "i am worried about you",
    "i am concerned",
    "i worry about you",
    "i am glad",
    "i am happy for you",
    "i am so happy",
    "i am proud of you",
    "so proud of you",
    "i care about",
    "i really care",
    "i am here for you",
    "sending love",
    "sending you",
    "i wish i could",
    "i hate that",
    "i am heartbroken",
    "i am scared for you",
    "it pains me",
    "i am touched",
    "my thoughts are with you",
    "thinking of you",
    "i am rooting for you",
];

/// ER weak: warmth without naming the responder's feeling.
const ER_WEAK: &[&str] = &[
    "hang in there",
    "you will be fine",
    "you will be okay",
    "you will be ok",
    "it will be okay",
    "it will be ok",
    "it will be fine",
    "everything will be",
    "everything is going to be",
    "it is going to be okay",
    "going to be ok",
    "hugs",
    "hug",
    "stay strong",
    "you got this",
    "you have got this",
    "it gets better",
    "things will get better",
    "take care",
    "do not give up",
    "you are not alone",
    "not alone",
    "it is okay",
    "it is ok",
    "be gentle with yourself",
    "good luck",
    "best of luck",
    "wishing you",
    "you can do this",
    "you can do it",
    "keep going",
    "you are strong",
    "you are brave",
    "be kind to yourself",
    "you deserve",
    "you matter",
    "feel better",
    "get well",
    "you are doing great",
    "you are doing well",
    "proud",
    "<3",
];

/// IP strong, inferred feeling: names the seeker's likely feeling or experience.
const IP_INFER: &[&str] = &[
    "that must be",
    "this must be",
    "it must be",
    "must be so",
    "must be really",
    "must be very",
    "must have been",
    "must feel",
    "must be hard",
    "must be scary",
    "must be frightening",
    "must be exhausting",
    "must be",
    "sounds like",
    "sounds really",
    "sounds so",
    "sounds very",
    "that sounds",
    "it sounds",
    "seems like you",
    "it seems like",
    "you seem",
    "you sound",
    "it makes sense that",
    "makes sense that you",
    "makes sense to feel",
    "it makes sense",
    "no wonder",
    "of course you",
    "understandable",
    "it is understandable",
    "i can imagine",
    "i can only imagine",
    "i can not imagine",
    "can not even imagine",
    "that is hard",
    "that is so hard",
    "that is really hard",
    "that is tough",
    "that is rough",
    "that is awful",
    "that is scary",
    "that is a lot",
    "is a lot to",
    "so much to deal with",
    "you must be",
    "you must feel",
    "you are feeling",
    "you feel",
    "you have been feeling",
    "you are going through",
    "what you are going through",
    "how hard",
    "how scary",
    "how frightening",
    "how exhausting",
    "how lonely",
    "how painful",
    "how frustrating",
];

/// IP strong, own experience: shows understanding through a similar experience.
const IP_EXPERIENCE: &[&str] = &[
    "i have been there",
    "been there",
    "i went through",
    "when i went through",
    "i have been through",
    "i was in the same",
    "i had the same",
    "i have had the same",
    "the same thing happened",
    "same thing happened",
    "happened to me",
    "i know what it is like",
    "i know the feeling",
    "i know how it feels",
    "i know how that feels",
    "i used to",
    "i have had",
    "i also",
    "me too",
    "i struggled",
    "i have struggled",
    "i struggle with",
    "i suffer",
    "i suffered",
    "in my experience",
    "my experience",
    "i was diagnosed",
    "i have dealt",
    "i dealt with",
    "i felt the same",
    "i feel the same",
    "i was the same",
    "same here",
    "i have the same",
    "i am the same",
    "i had a similar",
    "similar experience",
    "similar situation",
    "when i was",
    "i remember when",
    "i remember feeling",
    "i lost my",
    "i had a",
    "my own",
];

/// IP weak: understanding stated in general terms.
const IP_WEAK: &[&str] = &[
    "i understand",
    "i totally understand",
    "i completely understand",
    "i get it",
    "i get that",
    "i know how you feel",
    "i know what you mean",
    "i see what you mean",
    "i hear you",
    "i can relate",
    "i relate",
    "relate to",
    "understand how you feel",
    "understand what you",
    "i know how",
    "i know that feeling",
    "i hear what you",
];

/// Phrases that make a question one about the seeker's feelings or how they are.
const EX_FEELING: &[&str] = &[
    "how are you feeling",
    "how do you feel",
    "make you feel",
    "made you feel",
    "how are you holding up",
    "how are you doing",
    "how have you been",
    "are you feeling",
    "do you feel",
    "have you been feeling",
    "what worries you",
    "what scares you",
    "what frightens you",
    "the hardest",
    "what is hardest",
    "are you scared",
    "are you worried",
    "are you afraid",
    "are you okay",
    "are you ok",
    "what was that like",
    "what is that like",
    "what goes through",
    "what do you feel",
    "what are you feeling",
    "on your mind",
    "weighs on you",
    "weighing on you",
    "going through your",
    "are you coping",
    "are you managing",
    "how is that for you",
    "how has that been for you",
    "for you emotionally",
];

/// Emotion words: a question addressed to the seeker that names one asks about their feelings.
const EMOTION_WORDS: &[&str] = &[
    "feel",
    "feeling",
    "feelings",
    "felt",
    "sad",
    "scared",
    "scary",
    "afraid",
    "frightened",
    "frightening",
    "terrified",
    "fear",
    "fears",
    "anxious",
    "anxiety",
    "worried",
    "worry",
    "worrying",
    "worries",
    "nervous",
    "lonely",
    "alone",
    "isolated",
    "depressed",
    "upset",
    "frustrated",
    "frustrating",
    "angry",
    "anger",
    "mad",
    "overwhelmed",
    "overwhelming",
    "hopeless",
    "helpless",
    "stressed",
    "stress",
    "stressful",
    "grief",
    "grieving",
    "guilty",
    "guilt",
    "ashamed",
    "shame",
    "embarrassed",
    "embarrassing",
    "heartbroken",
    "devastated",
    "panic",
    "panicking",
    "cry",
    "crying",
    "emotions",
    "emotional",
    "emotionally",
    "struggling",
    "coping",
    "cope",
    "numb",
    "hurt",
    "hurting",
    "relieved",
    "hopeful",
    "happy",
    "excited",
    "miserable",
    "exhausted",
    "confused",
    "lost",
    "scares",
    "scare",
    "frighten",
    "frightens",
    "upsetting",
    "bother",
    "bothers",
    "bothering",
    "troubling",
    "troubles",
    "mood",
];

/// Open questions about what happened to the seeker (EPITOME's weak, generic explorations).
const EX_OPEN: &[&str] = &[
    "what happened",
    "what is going on",
    "what is wrong",
    "what is up",
    "what do you mean",
    "what made you",
    "why do you think",
    "what led to",
    "how did it go",
    "how did that go",
    "what did they say",
    "what did he say",
    "what did she say",
];

/// Invitations to say more, with or without a question mark.
const TELL_MORE: &[&str] = &["tell me more", "say more", "tell me about it", "tell me what happened"];

/// Questions that serve the conversation, not the person: asked of anyone, they explore nothing.
const SERVICE_Q: &[&str] = &[
    "any other questions",
    "any more questions",
    "any further questions",
    "other questions",
    "more questions",
    "anything else",
    "any questions",
    "does that help",
    "does this help",
    "did that help",
    "does that make sense",
    "does this make sense",
    "make sense",
    "is that clear",
    "is this clear",
    "how can i help",
    "can i help",
    "may i help",
    "what else can i",
    "would you like more information",
    "would you like to know more",
    "want to know more",
    "more information",
    "more details",
    "let me know",
    "shall i explain",
    "should i explain",
    "can i explain",
    "does that answer",
    "did that answer",
    "answer your question",
    "is there something else",
    "what else would you like",
    "would you like me to",
];

/// Suggestions phrased as questions ("have you tried ..."): questions, but advice rather than exploration.
const ADVICE_Q: &[&str] = &[
    "have you tried",
    "have you considered",
    "have you thought about",
    "have you talked to",
    "have you spoken to",
    "have you seen a",
    "have you asked",
    "did you try",
    "did you talk to",
    "why not",
    "could you try",
    "can you try",
    "would you consider",
    "have you looked into",
    "have you been to",
    "could you ask",
    "can you ask",
    "is there someone",
    "is there anyone",
    "is there an adult",
    "could you talk",
    "can you talk to",
    "would it help",
];

/// Directive advice and information: typical of level-0 replies.
const ADVICE: &[&str] = &[
    "you should",
    "you need to",
    "you have to",
    "try to",
    "make sure",
    "see a doctor",
    "see your doctor",
    "talk to your",
    "call your",
    "i recommend",
    "i suggest",
    "i would suggest",
    "i would recommend",
    "it is important to",
    "do not",
    "go to the",
    "you can",
    "you could",
    "my advice",
    "the best thing",
];

const SECOND_PERSON: &[&str] = &["you", "your", "yours", "yourself", "u", "ur"];
const ANAPHORA: &[&str] = &["that", "this", "it", "all"];
const FIRST_PAST: &[&str] = &[
    "i was",
    "i had",
    "i did",
    "i went",
    "i felt",
    "i used",
    "i got",
    "i lost",
    "i found",
    "i tried",
    "i started",
    "i ended",
    "i spent",
    "i thought",
    "i realized",
    "i learned",
];

/// What a sentence of the response does, as far as the cues are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A statement: its cues count.
    Statement,
    /// A question about the seeker's feelings tied to what they wrote ("How did that make you
    /// feel?", "Is it the biopsy that scares you most?").
    ExploreFeelingInContext,
    /// A question about the seeker's feelings in general terms ("How are you feeling?").
    ExploreFeelingGeneric,
    /// A question about the seeker's situation: it shares content words with their post.
    ExploreSituation,
    /// An open question about what happened ("What happened?", "Tell me more.").
    ExploreOpen,
    /// Advice phrased as a question ("Have you tried melatonin?"): counted as advice.
    AdviceQuestion,
    /// Set aside: a question that serves the conversation, asked of anyone ("Do you have any other
    /// questions?", "Does that help?").
    ServiceQuestion,
    /// Set aside: a question that explores nothing about this seeker (unrelated, rhetorical).
    OtherQuestion,
    /// Set aside: the seeker's own words quoted back.
    Quoted,
    /// Set aside: the same sentence again.
    Repeat,
}

impl Role {
    /// Whether the sentence's cues count and it is embedded.
    pub fn kept(self) -> bool {
        !matches!(self, Role::ServiceQuestion | Role::OtherQuestion | Role::Quoted | Role::Repeat)
    }

    pub fn explores(self) -> bool {
        matches!(self, Role::ExploreFeelingInContext | Role::ExploreFeelingGeneric | Role::ExploreSituation | Role::ExploreOpen)
    }
}

/// Occurrences of each phrase as a whole-word subsequence of `w`, summed over phrases.
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

fn has_phrase(w: &[String], phrases: &[&str]) -> bool {
    count_phrases(w, phrases) > 0
}

fn has_word(w: &[String], set: &[&str]) -> bool {
    w.iter().any(|t| set.contains(&t.as_str()))
}

/// Share of a sentence's word trigrams found in the context at which it counts as quoted.
const QUOTE_SHARE: f32 = 0.6;
/// Shorter sentences are never taken for quotes ("I'm scared too." is not one).
const QUOTE_MIN_WORDS: usize = 5;

/// Content stems that say what a sentence is about, emotion words left out: a question ties to
/// the seeker's post through its situation ("the biopsy"), not through a feeling word both share.
fn situation_stems(w: &[String]) -> HashSet<String> {
    let emotion: HashSet<String> = EMOTION_WORDS.iter().map(|e| crate::text::stem(e)).collect();
    content_stems(w).into_iter().filter(|s| !emotion.contains(s)).collect()
}

fn classify_question(s: &Sentence, context_stems: &HashSet<String>) -> Role {
    let w = &s.words;
    if has_phrase(w, SERVICE_Q) {
        return Role::ServiceQuestion;
    }
    if has_phrase(w, ADVICE_Q) {
        return Role::AdviceQuestion;
    }
    let addressed = has_word(w, SECOND_PERSON) || w.first().is_some_and(|t| EMOTION_WORDS.contains(&t.as_str()));
    let feeling = has_phrase(w, EX_FEELING) || (addressed && has_word(w, EMOTION_WORDS));
    let tied = situation_stems(w).iter().any(|t| context_stems.contains(t));
    match (feeling, tied) {
        (true, true) => Role::ExploreFeelingInContext,
        (true, false) if has_word(w, ANAPHORA) => Role::ExploreFeelingInContext,
        (true, false) => Role::ExploreFeelingGeneric,
        (false, true) => Role::ExploreSituation,
        (false, false) if has_phrase(w, EX_OPEN) || has_phrase(w, TELL_MORE) => Role::ExploreOpen,
        (false, false) => Role::OtherQuestion,
    }
}

/// A response read against its context: each sentence with its [`Role`], and the lexical
/// features of [`LEXICAL_NAMES`].
#[derive(Clone, Debug)]
pub struct Analysis<'a> {
    response: &'a str,
    pub sentences: Vec<(Sentence<'a>, Role)>,
    pub lexical: Vec<f32>,
}

/// Read `response` against `context`: roles, then the cues of the kept sentences.
pub fn analyse<'a>(context: &str, response: &'a str) -> Analysis<'a> {
    let ctx_words = words(context);
    let ctx_stems = situation_stems(&ctx_words);
    let ctx_trigrams: HashSet<String> = trigrams(&ctx_words).into_iter().collect();
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut out = Vec::new();
    for s in sentences(response) {
        let role = if !seen.insert(s.words.clone()) {
            Role::Repeat
        } else if s.words.len() >= QUOTE_MIN_WORDS && {
            let t = trigrams(&s.words);
            t.iter().filter(|g| ctx_trigrams.contains(*g)).count() as f32 >= QUOTE_SHARE * t.len() as f32
        } {
            Role::Quoted
        } else if s.question {
            classify_question(&s, &ctx_stems)
        } else if has_phrase(&s.words, TELL_MORE) {
            // "Tell me more about ..." invites exploration without a question mark.
            Role::ExploreOpen
        } else {
            Role::Statement
        };
        out.push((s, role));
    }
    let lexical = lexical_features(&out, !ctx_words.is_empty() && context.contains('?'));
    Analysis { response, sentences: out, lexical }
}

impl<'a> Analysis<'a> {
    /// The text the response embedding is computed from: the response itself when every
    /// sentence is kept, else the kept sentences as written ([`crate::text::keep_sentences`]).
    pub fn kept_text(&self) -> Cow<'a, str> {
        if self.sentences.iter().all(|(_, r)| r.kept()) {
            Cow::Borrowed(self.response)
        } else {
            Cow::Owned(self.rebuilt(|r| r.kept()))
        }
    }

    /// The text n-grams are taken from: the response without repeats, quotes of the seeker and
    /// service questions. Questions that look unrelated stay: EPITOME's annotators count most
    /// questions to the seeker as explorations, and heads trained on their labels learn that.
    pub fn ngram_text(&self) -> Cow<'a, str> {
        let drop = |r: Role| matches!(r, Role::Repeat | Role::Quoted | Role::ServiceQuestion);
        if !self.sentences.iter().any(|(_, r)| drop(*r)) {
            Cow::Borrowed(self.response)
        } else {
            Cow::Owned(self.rebuilt(|r| !drop(r)))
        }
    }

    fn rebuilt(&self, keep: impl Fn(Role) -> bool) -> String {
        let sents: Vec<Sentence> = self.sentences.iter().map(|(s, _)| s.clone()).collect();
        crate::text::keep_sentences(self.response, &sents, |i| keep(self.sentences[i].1))
    }

    /// Number of sentences set aside.
    pub fn set_aside(&self) -> usize {
        self.sentences.iter().filter(|(_, r)| !r.kept()).count()
    }
}

/// Names of the lexical features, in order.
pub const LEXICAL_NAMES: &[&str] = &[
    "ex_feeling_context_any",
    "ex_feeling_generic_any",
    "ex_situation_any",
    "ex_open_any",
    "ex_explore_log",
    "advice_q_any",
    "er_strong_any",
    "er_strong_log",
    "er_weak_any",
    "er_weak_log",
    "sorry_any",
    "exclaim_any",
    "ip_infer_any",
    "ip_infer_log",
    "ip_exp_any",
    "ip_exp_log",
    "ip_weak_any",
    "first_past_log",
    "advice_any",
    "advice_log",
    "context_question_any",
    "opening_empathy",
    "quoted_share",
    "kept_none",
];

fn ind(b: bool) -> f32 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn log1p(n: usize) -> f32 {
    (n as f32).ln_1p()
}

/// The lexical features of [`LEXICAL_NAMES`] from the kept sentences. Counts are of distinct
/// sentences holding a cue, on a log scale, so neither length nor repetition is rewarded. Style
/// features that are not EPITOME cues (length, pronoun and feeling-word rates) were tried in
/// lex-v1 and dropped: the heads learned them as shortcuts of the authored set.
fn lexical_features(sents: &[(Sentence, Role)], context_question: bool) -> Vec<f32> {
    let kept: Vec<&(Sentence, Role)> = sents.iter().filter(|(_, r)| r.kept()).collect();
    let role_any = |r: Role| kept.iter().any(|(_, x)| *x == r);
    let n_with = |phrases: &[&str]| kept.iter().filter(|(s, _)| has_phrase(&s.words, phrases)).count();
    let explore = kept.iter().filter(|(_, r)| r.explores()).count();
    let er_s = n_with(ER_STRONG);
    let er_w = n_with(ER_WEAK);
    let ip_i = n_with(IP_INFER);
    let ip_e = n_with(IP_EXPERIENCE);
    let ip_w = n_with(IP_WEAK);
    let first_past = n_with(FIRST_PAST);
    let advice = n_with(ADVICE);
    let sorry = kept.iter().any(|(s, _)| s.words.iter().any(|t| t == "sorry"));
    let exclaim = kept.iter().any(|(s, _)| s.raw.contains('!'));
    // An empathic opening sentence (sorry / must be / sounds like) is a strong, common pattern.
    let opening = kept.first().is_some_and(|(s, _)| has_phrase(&s.words, ER_STRONG) || has_phrase(&s.words, IP_INFER));
    // The share of the seeker's own words quoted back: a restatement is not empathy, and the
    // other sentences set aside (repeats, questions that explore nothing) must change nothing.
    let quoted = sents.iter().filter(|(_, r)| *r == Role::Quoted).count();
    let v = vec![
        ind(role_any(Role::ExploreFeelingInContext)),
        ind(role_any(Role::ExploreFeelingGeneric)),
        ind(role_any(Role::ExploreSituation)),
        ind(role_any(Role::ExploreOpen)),
        log1p(explore),
        ind(role_any(Role::AdviceQuestion)),
        ind(er_s > 0),
        log1p(er_s),
        ind(er_w > 0),
        log1p(er_w),
        ind(sorry),
        ind(exclaim),
        ind(ip_i > 0),
        log1p(ip_i),
        ind(ip_e > 0),
        log1p(ip_e),
        ind(ip_w > 0),
        log1p(first_past),
        ind(advice > 0),
        log1p(advice),
        ind(context_question),
        ind(opening),
        quoted as f32 / (kept.len() + quoted).max(1) as f32,
        ind(kept.is_empty()),
    ];
    debug_assert_eq!(v.len(), LEXICAL_NAMES.len());
    v
}

/// The lexical features of a (context, response) pair.
pub fn lexical_features_of(context: &str, response: &str) -> Vec<f32> {
    analyse(context, response).lexical
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(v: &[f32], name: &str) -> f32 {
        v[LEXICAL_NAMES.iter().position(|n| *n == name).unwrap()]
    }

    fn roles(context: &str, response: &str) -> Vec<Role> {
        analyse(context, response).sentences.iter().map(|(_, r)| *r).collect()
    }

    const CTX: &str = "I'm really scared. My biopsy is on Friday and I keep thinking it will be cancer.";

    #[test]
    fn cues_fire_on_definition_examples() {
        // The weak/strong examples of seeds.md §5.
        let er2 = lexical_features_of("", "I feel really sad for you.");
        assert_eq!(get(&er2, "er_strong_any"), 1.0);
        let er1 = lexical_features_of("", "Everything will be fine.");
        assert_eq!(get(&er1, "er_weak_any"), 1.0);
        assert_eq!(get(&er1, "er_strong_any"), 0.0);
        let ip1 = lexical_features_of("", "I understand how you feel.");
        assert_eq!(get(&ip1, "ip_weak_any"), 1.0);
        let ip2 = lexical_features_of("", "This must be terrifying.");
        assert_eq!(get(&ip2, "ip_infer_any"), 1.0);
        let ex1 = lexical_features_of("", "What happened?");
        assert_eq!(get(&ex1, "ex_open_any"), 1.0);
        let ex2 = lexical_features_of("", "Are you feeling alone right now?");
        assert_eq!(get(&ex2, "ex_feeling_generic_any"), 1.0);
        // A question phrase outside a question sentence is not an exploration.
        let no = lexical_features_of("", "I know what happened. Take your pills.");
        assert_eq!(get(&no, "ex_open_any"), 0.0);
        assert_eq!(get(&no, "ex_explore_log"), 0.0);
    }

    #[test]
    fn questions_explore_only_the_seeker() {
        let r = "Biopsies are routine. Is it the waiting that scares you most? Do you have any other questions? \
                 Did you watch the game last night? How long ago was the biopsy booked? How are you feeling? \
                 Have you tried talking to your GP?";
        assert_eq!(
            roles(CTX, r),
            vec![
                Role::Statement,
                Role::ExploreFeelingInContext,
                Role::ServiceQuestion,
                Role::OtherQuestion,
                Role::ExploreSituation,
                Role::ExploreFeelingGeneric,
                Role::AdviceQuestion
            ]
        );
    }

    #[test]
    fn repeats_and_quotes_are_set_aside() {
        let r = "I'm so sorry. I'm so sorry. I'm so sorry.";
        assert_eq!(roles(CTX, r), vec![Role::Statement, Role::Repeat, Role::Repeat]);
        assert_eq!(analyse(CTX, r).kept_text(), "I'm so sorry.");
        assert_eq!(lexical_features_of(CTX, r), lexical_features_of(CTX, "I'm so sorry."));
        let quoted = roles(CTX, CTX);
        assert_eq!(quoted, vec![Role::Statement, Role::Quoted], "short sentences are never quotes");
        let a = analyse(CTX, "Biopsies are routine. Any questions?");
        assert_eq!(a.kept_text(), "Biopsies are routine.");
        let b = analyse(CTX, "Biopsies are routine.");
        assert!(matches!(b.kept_text(), Cow::Borrowed(_)));
        assert_eq!(a.lexical, b.lexical);
    }

    #[test]
    fn widths_match_names() {
        let a = analyse("a?", "b");
        for f in FeatureSet::ALL {
            assert_eq!(f.names(4).len(), f.width(4));
            if f == FeatureSet::NgramLexical {
                continue;
            }
            assert_eq!(f.assemble(&a, &[0.5; 4], &[0.5; 4]).len(), f.width(4));
            assert_eq!(FeatureSet::parse_spec(&f.spec()).unwrap(), f);
        }
        assert!(FeatureSet::parse_spec("lex-v3/lex+cos").is_err());
    }
}
