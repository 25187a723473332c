//! Rebuilding a `tokenizers::Tokenizer` from GGUF metadata (`formats.md` §4, §5).
//!
//! candle's own `TokenizerFromGguf` gets SmolLM2 and Llama 3 wrong (it falls back to a
//! ByteLevel pre-tokenizer that prepends a space) and cannot read SentencePiece vocabularies,
//! so the pipelines are assembled here, one per `tokenizer.ggml.model` / `tokenizer.ggml.pre`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Result, TokenizerError};
use crate::{Parts, TokenizerKind};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_HF_JSON: &str = "tokenizer.huggingface.json";
/// Optional special-token ids, spelled as llama.cpp writes them (sic `seperator`).
const KEYS_OTHER_SPECIAL: [&str; 3] =
    ["tokenizer.ggml.padding_token_id", "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.mask_token_id"];

/// llama.cpp's LLAMA3 pre-tokenizer regex, with `(?i:…)` spelled out as explicit case classes.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (`llama_token_type`).
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;

/// Typed, error-reporting access to the GGUF metadata.
struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl<'a> Meta<'a> {
    fn err(&self, key: &str, message: impl Into<String>) -> TokenizerError {
        TokenizerError::field(self.path, key, message)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.err(key, format!("expected a string, found {:?}", v.value_type()))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("expected a bool, found {:?}", v.value_type()))),
        }
    }

    /// A token id: any integer type, checked against the vocabulary size.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let id = int_value(v).ok_or_else(|| self.err(key, format!("expected an integer, found {:?}", v.value_type())))?;
        match u32::try_from(id) {
            Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
            _ => Err(self.err(key, format!("token id {id} is outside the vocabulary of {n_tokens}"))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(v) => Err(self.err(key, format!("expected an array, found {:?}", v.value_type()))),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.err(key, format!("entry {i} is {:?}, not a string", v.value_type()))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| int_value(v).ok_or_else(|| self.err(key, format!("entry {i} is {:?}, not an integer", v.value_type()))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                v => Err(self.err(key, format!("entry {i} is {:?}, not a float", v.value_type()))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn int_value(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

/// The pre-tokenizers this crate knows how to rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BytePre {
    Smollm,
    Llama3,
    Gpt2,
}

impl BytePre {
    fn parse(path: &Path, pre: Option<&str>) -> Result<Self> {
        match pre {
            None => Err(TokenizerError::MissingPre { path: path.to_path_buf() }),
            Some("smollm") => Ok(Self::Smollm),
            Some("llama-bpe" | "llama3" | "llama-v3") => Ok(Self::Llama3),
            Some("gpt-2" | "gpt2") => Ok(Self::Gpt2),
            Some(other) => Err(TokenizerError::UnsupportedPre { path: path.to_path_buf(), pre: other.to_string() }),
        }
    }

    fn pre_tokenizer(self, path: &Path) -> Result<PreTokenizerWrapper> {
        Ok(match self {
            Self::Smollm => PreSequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
            Self::Llama3 => {
                let split = Split::new(SplitPattern::Regex(LLAMA3_REGEX.to_string()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| TokenizerError::build(path, format!("LLAMA3 regex: {e}")))?;
                PreSequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
            }
            Self::Gpt2 => ByteLevel::new(false, true, true).into(),
        })
    }
}

/// What both vocabulary kinds share: tokens, their types, and the special ids.
struct Vocabulary<'a> {
    tokens: Vec<&'a str>,
    types: Vec<i64>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    /// Ids that metadata names as special (bos, eos, unk, pad, …), whatever their type says.
    special_ids: HashSet<u32>,
}

impl<'a> Vocabulary<'a> {
    fn read(meta: &Meta<'a>) -> Result<Self> {
        let tokens = meta.strings(KEY_TOKENS)?.ok_or_else(|| meta.err(KEY_TOKENS, "missing (the GGUF carries no vocabulary)"))?;
        if tokens.is_empty() {
            return Err(meta.err(KEY_TOKENS, "is empty"));
        }
        let n = tokens.len();
        let types = match meta.ints(KEY_TYPES)? {
            Some(t) if t.len() != n => return Err(meta.err(KEY_TYPES, format!("has {} entries for {n} tokens", t.len()))),
            Some(t) => t,
            None => vec![1; n],
        };
        let bos = meta.token_id(KEY_BOS, n)?;
        let eos = meta.token_id(KEY_EOS, n)?;
        let eot = meta.token_id(KEY_EOT, n)?;
        let eom = meta.token_id(KEY_EOM, n)?;
        let unk = meta.token_id(KEY_UNK, n)?;
        let mut special_ids: HashSet<u32> = [bos, eos, eot, eom, unk].into_iter().flatten().collect();
        for key in KEYS_OTHER_SPECIAL {
            special_ids.extend(meta.token_id(key, n)?);
        }
        Ok(Self { tokens, types, bos, eos, eot, eom, unk, special_ids })
    }

    /// `token → id`; on a duplicated string the first id wins (llama.cpp would refuse the file).
    fn vocab(&self) -> Vocab {
        let mut vocab = Vocab::with_capacity(self.tokens.len());
        let mut duplicates = 0usize;
        for (id, tok) in self.tokens.iter().enumerate() {
            if vocab.contains_key(*tok) {
                duplicates += 1;
            } else {
                vocab.insert((*tok).to_string(), id as u32);
            }
        }
        if duplicates > 0 {
            tracing::warn!("{duplicates} duplicated token strings in {KEY_TOKENS}; the first id is used");
        }
        vocab
    }

    /// Tokens of type unknown/control/user-defined/unused become added tokens, matched whole in
    /// the raw text; unknown and control ones (and ids named by metadata) are special.
    fn added_tokens(&self) -> Vec<AddedToken> {
        self.tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter_map(|(id, (tok, ty))| {
                let ty = *ty as i32;
                let special = ty == TYPE_UNKNOWN || ty == TYPE_CONTROL || self.special_ids.contains(&(id as u32));
                let added = special || ty == TYPE_USER_DEFINED || ty == TYPE_UNUSED;
                (added && !tok.is_empty()).then(|| AddedToken::from((*tok).to_string(), special).normalized(false))
            })
            .collect()
    }

    /// `id` comes from [`Meta::token_id`], which checked it against the vocabulary size.
    fn token(&self, id: u32) -> &'a str {
        self.tokens[id as usize]
    }
}

/// `TemplateProcessing` adding BOS and/or EOS around a single sequence (and a pair).
fn post_processor(path: &Path, bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Result<Option<PostProcessorWrapper>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    use serde_json::json;
    let special = |tok: &str, type_id: u32| json!({"SpecialToken": {"id": tok, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = serde_json::Map::new();
    if let Some((tok, id)) = bos {
        single.push(special(tok, 0));
        pair.push(special(tok, 0));
        specials.insert(tok.to_string(), json!({"id": tok, "ids": [id], "tokens": [tok]}));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some((tok, _)) = eos {
        single.push(special(tok, 0));
        pair.push(special(tok, 0));
    }
    if let Some((tok, _)) = bos {
        pair.push(special(tok, 1));
    }
    pair.push(seq("B", 1));
    if let Some((tok, id)) = eos {
        pair.push(special(tok, 1));
        specials.insert(tok.to_string(), json!({"id": tok, "ids": [id], "tokens": [tok]}));
    }
    let json = json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    });
    serde_json::from_value(json).map(Some).map_err(|e| TokenizerError::build(path, format!("post-processor: {e}")))
}

/// A special token's text and id.
type NamedToken = (String, u32);

/// BOS/EOS pairs for the post-processor, refusing a flag whose id is missing.
fn bos_eos_for_post(
    meta: &Meta<'_>,
    vocab: &Vocabulary<'_>,
    add_bos: bool,
    add_eos: bool,
) -> Result<(Option<NamedToken>, Option<NamedToken>)> {
    let pick = |flag: bool, key: &str, id: Option<u32>, id_key: &str| -> Result<Option<NamedToken>> {
        match (flag, id) {
            (false, _) => Ok(None),
            (true, Some(id)) => Ok(Some((vocab.token(id).to_string(), id))),
            (true, None) => Err(meta.err(key, format!("is true but {id_key} is missing"))),
        }
    };
    Ok((pick(add_bos, KEY_ADD_BOS, vocab.bos, KEY_BOS)?, pick(add_eos, KEY_ADD_EOS, vocab.eos, KEY_EOS)?))
}

fn byte_level(meta: &Meta<'_>, vocab: &Vocabulary<'_>) -> Result<(Tokenizer, TokenizerKind, bool)> {
    let path = meta.path;
    let pre_name = meta.string(KEY_PRE)?;
    let pre = BytePre::parse(path, pre_name)?;
    let merges_raw = meta.strings(KEY_MERGES)?.ok_or_else(|| meta.err(KEY_MERGES, "missing (required for a gpt2 vocabulary)"))?;
    let merges: Merges = merges_raw
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(l, r)| (l.to_string(), r.to_string()))
                .ok_or_else(|| meta.err(KEY_MERGES, format!("entry {i} ({m:?}) has no space")))
        })
        .collect::<Result<_>>()?;
    let is_llama3 = pre == BytePre::Llama3;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.vocab(), merges)
        .ignore_merges(is_llama3)
        .build()
        .map_err(|e| TokenizerError::build(path, format!("{KEY_MERGES}: {e}")))?;

    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre.pre_tokenizer(path)?));
    tok.with_decoder(Some(DecoderWrapper::from(ByteLevel::default())));
    tok.add_special_tokens(&vocab.added_tokens());

    // llama.cpp adds BOS for the LLAMA3 group even when the key is absent.
    let add_bos = meta.bool(KEY_ADD_BOS)?.unwrap_or(is_llama3);
    let add_eos = meta.bool(KEY_ADD_EOS)?.unwrap_or(false);
    let (bos, eos) = bos_eos_for_post(meta, vocab, add_bos, add_eos)?;
    let pp = post_processor(path, bos.as_ref().map(|(t, i)| (t.as_str(), *i)), eos.as_ref().map(|(t, i)| (t.as_str(), *i)))?;
    tok.with_post_processor(pp);

    let kind = TokenizerKind::GgufByteLevelBpe { pre: pre_name.unwrap_or_default().to_string() };
    Ok((tok, kind, add_bos))
}

/// Merges derived from SentencePiece scores, as HF's `SentencePieceExtractor` does: every split
/// `t = l + r` of a vocabulary token into two vocabulary tokens is a merge, ranked by `score(t)`
/// (highest first), ties broken by the ids of `l` and `r`.
fn merges_from_scores(tokens: &[&str], scores: &[f32], vocab: &Vocab) -> Merges {
    let mut ranked: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    for (tok, score) in tokens.iter().zip(scores) {
        for (k, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(k);
            if let (Some(&lid), Some(&rid)) = (vocab.get(l), vocab.get(r)) {
                ranked.push((*score, lid, rid, l, r));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    // A duplicated token string yields the same pair twice; keep its best rank.
    let mut seen = HashSet::new();
    ranked
        .into_iter()
        .filter(|(_, lid, rid, _, _)| seen.insert((*lid, *rid)))
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

fn sentencepiece(meta: &Meta<'_>, vocab: &Vocabulary<'_>) -> Result<(Tokenizer, TokenizerKind, bool)> {
    let path = meta.path;
    let scores = meta.floats(KEY_SCORES)?.ok_or_else(|| meta.err(KEY_SCORES, "missing (required for a llama/SentencePiece vocabulary)"))?;
    if scores.len() != vocab.tokens.len() {
        return Err(meta.err(KEY_SCORES, format!("has {} entries for {} tokens", scores.len(), vocab.tokens.len())));
    }
    let bpe_vocab = vocab.vocab();
    let merges = merges_from_scores(&vocab.tokens, &scores, &bpe_vocab);
    let unk = vocab.unk.map(|id| vocab.token(id).to_string()).or_else(|| bpe_vocab.contains_key("<unk>").then(|| "<unk>".to_string()));
    let mut builder = BPE::builder().vocab_and_merges(bpe_vocab, merges).fuse_unk(true).byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| TokenizerError::build(path, format!("{KEY_SCORES}: {e}")))?;

    let add_space_prefix = meta.bool(KEY_ADD_SPACE_PREFIX)?.unwrap_or(true);
    // Metaspace rather than a Prepend normalizer: it does not double a leading space, which is
    // what HF's conversion of the same tokenizer does (the fixtures' ids depend on it), and with
    // `Always` it still prefixes the text after a special token, as llama.cpp does.
    let scheme = if add_space_prefix { PrependScheme::Always } else { PrependScheme::Never };
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    let replace = Replace::new("▁", " ").map_err(|e| TokenizerError::build(path, format!("decoder: {e}")))?;
    let mut decoders: Vec<DecoderWrapper> = vec![replace.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    tok.add_special_tokens(&vocab.added_tokens());

    let add_bos = meta.bool(KEY_ADD_BOS)?.unwrap_or(true);
    let add_eos = meta.bool(KEY_ADD_EOS)?.unwrap_or(false);
    let (bos, eos) = bos_eos_for_post(meta, vocab, add_bos, add_eos)?;
    let pp = post_processor(path, bos.as_ref().map(|(t, i)| (t.as_str(), *i)), eos.as_ref().map(|(t, i)| (t.as_str(), *i)))?;
    tok.with_post_processor(pp);
    Ok((tok, TokenizerKind::GgufSentencePiece, add_bos))
}

/// Read the tokenizer parts out of GGUF metadata.
pub(crate) fn parts_from_gguf(path: &Path, content: &Content) -> Result<Parts> {
    let meta = Meta { path, md: &content.metadata };
    let vocab = Vocabulary::read(&meta)?;

    let (inner, kind, add_bos) = if let Some(json) = meta.string(KEY_HF_JSON)? {
        let tok: Tokenizer = json.parse().map_err(|e| TokenizerError::build(path, format!("{KEY_HF_JSON}: {e}")))?;
        let add_bos = crate::hf::post_processor_adds(&tok, vocab.bos);
        (tok, TokenizerKind::HfJson, add_bos)
    } else {
        match meta.string(KEY_MODEL)? {
            Some("gpt2") => byte_level(&meta, &vocab)?,
            Some("llama") => sentencepiece(&meta, &vocab)?,
            Some(other) => return Err(TokenizerError::UnsupportedModel { path: path.to_path_buf(), model: other.to_string() }),
            None => return Err(meta.err(KEY_MODEL, "missing")),
        }
    };

    Ok(Parts {
        inner,
        kind,
        vocab_size: vocab.tokens.len(),
        bos_token: vocab.bos.map(|id| vocab.token(id).to_string()),
        eos_token: vocab.eos.map(|id| vocab.token(id).to_string()),
        bos_id: vocab.bos,
        eos_id: vocab.eos,
        end_ids: [vocab.eot, vocab.eom].into_iter().flatten().collect(),
        add_bos,
    })
}
