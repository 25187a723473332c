//! Loading a tokenizer from a Hugging Face model directory: `tokenizer.json`, with special tokens
//! and end-of-generation ids from `tokenizer_config.json`, `generation_config.json` and
//! `config.json` (each optional).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::error::{Result, TokenizerError};
use crate::{Parts, TokenizerKind};

/// Read and parse a JSON file; `Ok(None)` when it does not exist.
pub(crate) fn read_json(path: &Path) -> Result<Option<Json>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TokenizerError::Io { path: path.to_path_buf(), source }),
    };
    serde_json::from_str(&text).map(Some).map_err(|source| TokenizerError::Json { path: path.to_path_buf(), source })
}

/// A special token in `tokenizer_config.json`: a string, an `AddedToken` object, or null.
fn token_string(path: &Path, config: Option<&Json>, key: &str) -> Result<Option<String>> {
    match config.and_then(|c| c.get(key)) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(o)) => match o.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(TokenizerError::field(path, key, "object without a string \"content\"")),
        },
        Some(_) => Err(TokenizerError::field(path, key, "expected a string or an object with \"content\"")),
    }
}

/// `eos_token_id` / `bos_token_id` in `config.json` or `generation_config.json`: an integer,
/// a list of integers, or null.
fn token_ids(path: &Path, config: Option<&Json>, key: &str) -> Result<Vec<u32>> {
    let bad = || TokenizerError::field(path, key, "expected a token id or a list of token ids");
    let as_id = |v: &Json| v.as_u64().and_then(|x| u32::try_from(x).ok());
    match config.and_then(|c| c.get(key)) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(a)) => a.iter().map(|v| as_id(v).ok_or_else(bad)).collect(),
        Some(v) => as_id(v).map(|id| vec![id]).ok_or_else(bad),
    }
}

/// Whether the tokenizer's post-processor puts `bos` in front of encoded text.
pub(crate) fn post_processor_adds(tok: &Tokenizer, bos: Option<u32>) -> bool {
    let Some(bos) = bos else { return false };
    tok.encode("", true).map(|enc| enc.get_ids().first() == Some(&bos)).unwrap_or(false)
}

pub(crate) fn parts_from_hf_dir(dir: &Path) -> Result<Parts> {
    let tok_path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&tok_path).map_err(|source| TokenizerError::Io { path: tok_path.clone(), source })?;
    let inner: Tokenizer = text.parse().map_err(|e| TokenizerError::build(&tok_path, e))?;

    let tc_path = dir.join("tokenizer_config.json");
    let gc_path = dir.join("generation_config.json");
    let cfg_path = dir.join("config.json");
    let tc = read_json(&tc_path)?;
    let gc = read_json(&gc_path)?;
    let cfg = read_json(&cfg_path)?;

    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t));
    let first_id =
        |p: &PathBuf, c: &Option<Json>, key: &str| -> Result<Option<u32>> { Ok(token_ids(p, c.as_ref(), key)?.first().copied()) };

    let mut bos_token = token_string(&tc_path, tc.as_ref(), "bos_token")?;
    let mut bos_id = id_of(&bos_token);
    if bos_id.is_none() {
        bos_id = first_id(&gc_path, &gc, "bos_token_id")?.or(first_id(&cfg_path, &cfg, "bos_token_id")?);
        if bos_token.is_none() {
            bos_token = bos_id.and_then(|id| inner.id_to_token(id));
        }
    }

    let mut eos_token = token_string(&tc_path, tc.as_ref(), "eos_token")?;
    let mut end_ids = token_ids(&gc_path, gc.as_ref(), "eos_token_id")?;
    end_ids.extend(token_ids(&cfg_path, cfg.as_ref(), "eos_token_id")?);
    let eos_id = id_of(&eos_token).or(end_ids.first().copied());
    if eos_token.is_none() {
        eos_token = eos_id.and_then(|id| inner.id_to_token(id));
    }

    let add_bos = post_processor_adds(&inner, bos_id);
    let vocab_size = inner.get_vocab_size(true);
    Ok(Parts { inner, kind: TokenizerKind::HfJson, vocab_size, bos_token, eos_token, bos_id, eos_id, end_ids, add_bos })
}
