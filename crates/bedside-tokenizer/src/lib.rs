//! Tokenizers and chat templates for bedside's models.
//!
//! A GGUF file carries its vocabulary as metadata, not as a `tokenizer.json`. candle's
//! `TokenizerFromGguf` rebuilds it wrongly for SmolLM2 and Llama 3 (a ByteLevel pre-tokenizer
//! that prepends a space) and not at all for SentencePiece vocabularies, so this crate rebuilds
//! the `tokenizers` pipeline itself, following llama.cpp, and refuses `pre` values it cannot
//! reproduce instead of guessing. It also loads HF `tokenizer.json` directories, decodes token
//! streams without splitting multi-byte characters ([`TokenStream`]), and renders Jinja chat
//! templates the way `transformers` does ([`ChatTemplate`]). Tests compare all of this with
//! fixtures produced by HF transformers and llama.cpp.

mod chat;
mod error;
mod gguf;
mod hf;
mod stream;
mod template;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file::Content;
use tokenizers::pre_tokenizers::metaspace::PrependScheme;
use tokenizers::PreTokenizerWrapper;

pub use error::{Result, TokenizerError};
pub use stream::TokenStream;
pub use template::{ChatMessage, ChatTemplate};

/// Where a [`ModelTokenizer`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// A `tokenizer.json` (from a model directory, or embedded in a GGUF).
    HfJson,
    /// Rebuilt from GGUF `tokenizer.ggml.model = gpt2`, with this `tokenizer.ggml.pre`.
    GgufByteLevelBpe { pre: String },
    /// Rebuilt from GGUF `tokenizer.ggml.model = llama` (SentencePiece BPE, byte fallback).
    GgufSentencePiece,
}

/// Turn terminators that llama.cpp also treats as end of generation when they are special
/// tokens of the vocabulary, whatever the metadata names as EOS.
const KNOWN_TERMINATORS: [&str; 9] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "<end_of_utterance>",
];

/// What the GGUF and HF loaders produce; [`ModelTokenizer::from_parts`] finishes the job.
pub(crate) struct Parts {
    inner: tokenizers::Tokenizer,
    kind: TokenizerKind,
    vocab_size: usize,
    bos_token: Option<String>,
    eos_token: Option<String>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    /// Further configured end ids: EOT, EOM, `generation_config.json`'s list (may repeat EOS).
    end_ids: Vec<u32>,
    add_bos: bool,
}

/// A model's tokenizer plus the special-token facts generation needs.
#[derive(Clone, Debug)]
pub struct ModelTokenizer {
    inner: tokenizers::Tokenizer,
    kind: TokenizerKind,
    vocab_size: usize,
    bos_token: Option<String>,
    eos_token: Option<String>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eog_ids: Vec<u32>,
    add_bos: bool,
    /// The special tokens' texts and ids: what message text must never turn into.
    specials: chat::Specials,
    special_ids: HashSet<u32>,
    /// `inner` with special-token matching off, for text that is never markup: as it is (for
    /// text at the start of a prompt), and with a `Metaspace` "first" prefix switched off (for
    /// text after a special token, which a whole-prompt encode would not prefix either).
    plain: OnceLock<Arc<(tokenizers::Tokenizer, tokenizers::Tokenizer)>>,
}

impl ModelTokenizer {
    /// Rebuild from GGUF metadata (`path` only for error messages).
    pub fn from_gguf(path: &Path, content: &Content) -> Result<Self> {
        Ok(Self::from_parts(gguf::parts_from_gguf(path, content)?))
    }

    /// From an HF model directory: `tokenizer.json`, plus `tokenizer_config.json`,
    /// `generation_config.json` and `config.json` (when present) for special tokens and EOS ids.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        Ok(Self::from_parts(hf::parts_from_hf_dir(dir)?))
    }

    /// The tokenizer and chat template source of a model: from the GGUF metadata when `gguf`
    /// holds the file's header (`path` is then the file), from the HF directory `path`
    /// otherwise. Every command that needs a model's tokenizer chooses through here.
    pub fn for_model(path: &Path, gguf: Option<&Content>) -> Result<(Self, Option<String>)> {
        match gguf {
            Some(content) => Ok((Self::from_gguf(path, content)?, ChatTemplate::from_gguf(content))),
            None => Ok((Self::from_hf_dir(path)?, ChatTemplate::from_hf_dir(path)?)),
        }
    }

    fn from_parts(p: Parts) -> Self {
        let mut eog_ids: Vec<u32> = Vec::new();
        for id in p.eos_id.into_iter().chain(p.end_ids.iter().copied()) {
            if !eog_ids.contains(&id) {
                eog_ids.push(id);
            }
        }
        let mut extra: Vec<u32> = p
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(id, t)| t.special && KNOWN_TERMINATORS.contains(&t.content.as_str()) && !eog_ids.contains(id))
            .map(|(id, _)| id)
            .collect();
        extra.sort_unstable();
        eog_ids.extend(extra);
        let special_tokens: Vec<(u32, String)> =
            p.inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, t)| (id, t.content)).collect();
        let special_ids = special_tokens.iter().map(|(id, _)| *id).collect();
        let specials = chat::Specials::new(special_tokens.into_iter().map(|(_, t)| t).collect());
        Self {
            eos_id: p.eos_id,
            inner: p.inner,
            kind: p.kind,
            vocab_size: p.vocab_size,
            bos_token: p.bos_token,
            eos_token: p.eos_token,
            bos_id: p.bos_id,
            eog_ids,
            add_bos: p.add_bos,
            specials,
            special_ids,
            plain: OnceLock::new(),
        }
    }

    pub fn kind(&self) -> &TokenizerKind {
        &self.kind
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Number of token ids: the GGUF vocabulary length, or `tokenizer.json`'s vocabulary with
    /// its added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Encode text. `add_special` adds BOS etc. as the model's post-processor says; pass false
    /// for chat-rendered text, which already starts with BOS.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.inner.encode(text, add_special).map(|enc| enc.get_ids().to_vec()).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Encode text that is never markup: a special token's text in it (`<|im_start|>`) becomes
    /// the ordinary tokens that spell it, not the special token. No BOS is added.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_plain_at(text, true)
    }

    /// [`Self::encode_plain`] for text at the start of a prompt (`at_start`) or after a
    /// special token.
    fn encode_plain_at(&self, text: &str, at_start: bool) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut first = self.inner.clone();
            first.set_encode_special_tokens(true);
            let mut later = first.clone();
            if let Some(pre) = later.get_pre_tokenizer().cloned() {
                later.with_pre_tokenizer(Some(without_first_prefix(pre)));
            }
            Arc::new((first, later))
        });
        let tok = if at_start { &plain.0 } else { &plain.1 };
        tok.encode(text, false).map(|enc| enc.get_ids().to_vec()).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Token ids of `messages` rendered by `template`, with special tokens only where the
    /// template writes them: the text of every message (role and content) is plain text, so a
    /// patient cannot forge a turn by typing `<|im_end|>` or `[/INST]`. Every caller that turns
    /// a chat into ids (generation, scoring, training data) goes through here, so all of them
    /// see the same ids for the same chat. Add no BOS: templates write their own.
    pub fn encode_chat(&self, template: &ChatTemplate, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        let coded: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage {
                role: self.specials.encode_codes(&m.role).into_owned(),
                content: self.specials.encode_codes(&m.content).into_owned(),
            })
            .collect();
        let text = template.render(&coded, add_generation_prompt)?;
        if !chat::Specials::has_codes(&text) {
            return self.encode(&text, false);
        }
        // The template's own special tokens split the prompt into stretches of text; each
        // stretch that holds message text with codes is tokenized again as plain text.
        let enc = self.inner.encode(text.as_str(), false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len());
        let mut stretch: Vec<u32> = Vec::new();
        let mut start = 0;
        let flush = |ids: &mut Vec<u32>, stretch: &mut Vec<u32>, from: usize, to: usize| -> Result<()> {
            let piece = text.get(from..to).unwrap_or("");
            if chat::Specials::has_codes(piece) {
                ids.extend(self.encode_plain_at(&self.specials.decode_codes(piece), from == 0)?);
            } else {
                ids.append(stretch);
            }
            stretch.clear();
            Ok(())
        };
        for (&id, &(s, e)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            if self.special_ids.contains(&id) {
                flush(&mut ids, &mut stretch, start, s.max(start))?;
                ids.push(id);
                start = e.max(start);
            } else {
                stretch.push(id);
            }
        }
        flush(&mut ids, &mut stretch, start, text.len())?;
        Ok(ids)
    }

    /// Decode ids; `skip_special` drops special tokens (BOS, `<|im_end|>`, …).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::IdOutOfRange { id, vocab_size: self.vocab_size });
        }
        self.inner.decode(ids, skip_special).map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The EOS id named by the metadata or configs (also the first of [`Self::eog_ids`]).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// End-of-generation ids, deduplicated: EOS, EOT and EOM from the metadata/configs, then
    /// known turn terminators (`<|eot_id|>`, `<|im_end|>`, …) that are special tokens.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog_ids
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// Whether plain text (no chat template) should start with BOS; `encode(_, true)` does so.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
}

/// `pre` with every `Metaspace` that prefixes only the first piece of a text prefixing none.
fn without_first_prefix(pre: PreTokenizerWrapper) -> PreTokenizerWrapper {
    match pre {
        PreTokenizerWrapper::Metaspace(mut m) if m.get_prepend_scheme() == PrependScheme::First => {
            m.set_prepend_scheme(PrependScheme::Never);
            PreTokenizerWrapper::Metaspace(m)
        }
        PreTokenizerWrapper::Sequence(mut seq) => {
            for p in seq.as_mut() {
                *p = without_first_prefix(p.clone());
            }
            PreTokenizerWrapper::Sequence(seq)
        }
        other => other,
    }
}
