//! Shared helpers: fixture loading. Fixtures come from HF transformers / llama.cpp and are read
//! at test time from `../shared/fixtures` (absent: the test skips).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bedside_tokenizer::{ChatMessage, ModelTokenizer};
use candle_core::quantized::gguf_file::Content;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct TokenizerCase {
    pub text: String,
    pub ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct ChatCase {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub add_generation_prompt: bool,
    pub rendered: String,
    #[serde(default)]
    pub ids: Option<Vec<u32>>,
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn read_gguf(path: &Path) -> Content {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture directory (e.g. `tiny-llama`), or `None` to skip.
pub fn fixture_dir(name: &str) -> Option<PathBuf> {
    bedside_testutil::fixture(name)
}

pub fn gguf_tokenizer(path: &Path) -> (ModelTokenizer, Content) {
    let content = read_gguf(path);
    let tok = ModelTokenizer::from_gguf(path, &content).unwrap_or_else(|e| panic!("{e}"));
    (tok, content)
}

/// Every case's ids match (no special tokens added); returns the failures, all at once.
pub fn check_cases(label: &str, tok: &ModelTokenizer, cases: &[TokenizerCase]) {
    let mut failures = Vec::new();
    for case in cases {
        let ids = tok.encode(&case.text, false).unwrap_or_else(|e| panic!("{label}: {e}"));
        if ids != case.ids {
            failures.push(format!("{label}: {:?}\n  got      {ids:?}\n  expected {:?}", case.text, case.ids));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
