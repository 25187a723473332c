//! Incremental decoding for streaming output.
//!
//! Decoding token by token breaks in two ways: a multi-byte character split across tokens
//! (byte-fallback `<0xE2>` tokens, byte-level BPE pieces) decodes to U+FFFD, and decoders that
//! look at their neighbours (SentencePiece's strip of the leading space) give different text for
//! a token alone than in context. So each step decodes a short window twice, with and without
//! the newest tokens, and emits the difference only once it no longer ends in U+FFFD (the
//! approach of HF text-generation-inference and `tokenizers`' `DecodeStream`).

use crate::error::Result;
use crate::ModelTokenizer;

const REPLACEMENT: char = '\u{FFFD}';

/// Push ids, get back only complete, valid text.
#[derive(Debug)]
pub struct TokenStream<'a> {
    tok: &'a ModelTokenizer,
    skip_special: bool,
    /// Ids from the start of the current window; earlier ones are dropped.
    ids: Vec<u32>,
    /// `ids[..prefix_offset]` are context already emitted before the previous chunk.
    prefix_offset: usize,
    /// `ids[..read_offset]` have been emitted.
    read_offset: usize,
}

impl<'a> TokenStream<'a> {
    /// A stream that skips special tokens (BOS, `<|im_end|>`, …), as chat output wants.
    pub fn new(tok: &'a ModelTokenizer) -> Self {
        Self::with_skip_special(tok, true)
    }

    /// A stream that keeps special tokens when `skip_special` is false.
    pub fn with_skip_special(tok: &'a ModelTokenizer, skip_special: bool) -> Self {
        Self { tok, skip_special, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// Add one id. Returns the text it completes, or `None` while a character is still split.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let (prefix, full) = self.window()?;
        if full.len() <= prefix.len() || full.ends_with(REPLACEMENT) {
            return Ok(None);
        }
        let chunk = suffix_after(&prefix, &full);
        // Keep the last emitted chunk's ids as context for the next window.
        self.ids.drain(..self.prefix_offset);
        self.prefix_offset = self.read_offset - self.prefix_offset;
        self.read_offset = self.ids.len();
        Ok(Some(chunk))
    }

    /// Flush what is left (including a genuinely invalid trailing byte sequence) and reset.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let (prefix, full) = self.window()?;
        let chunk = (full.len() > prefix.len()).then(|| suffix_after(&prefix, &full));
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        Ok(chunk)
    }

    /// The window's text without and with the ids not yet emitted.
    fn window(&self) -> Result<(String, String)> {
        let prefix = self.tok.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)?;
        let full = self.tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        Ok((prefix, full))
    }
}

/// `full` minus its leading `prefix`. Should a decoder ever rewrite the prefix, emit what
/// follows the longest common prefix rather than fail.
fn suffix_after(prefix: &str, full: &str) -> String {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest.to_string();
    }
    let common =
        prefix.char_indices().zip(full.chars()).find(|((_, a), b)| a != b).map(|((i, _), _)| i).unwrap_or(prefix.len().min(full.len()));
    tracing::debug!("token stream: decoded prefix {prefix:?} changed to {full:?}");
    full.get(common..).unwrap_or_default().to_string()
}
