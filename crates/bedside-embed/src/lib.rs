//! Sentence embeddings with all-MiniLM-L6-v2, computed the way sentence-transformers does:
//! BERT token states, mean pooling over the attention mask, then L2 normalisation.
//!
//! ```no_run
//! use bedside_embed::{Embedder, cosine};
//! let dev = candle_core::Device::Cpu;
//! let e = Embedder::load(&Embedder::default_dir(), &dev)?;
//! let v = e.embed(&["I'm scared.", "That sounds frightening."])?;
//! println!("{}", cosine(&v[0], &v[1]));
//! # Ok::<(), bedside_embed::EmbedError>(())
//! ```

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2 (special tokens included).
pub const MAX_TOKENS: usize = 256;
/// Sentences per forward pass.
pub const BATCH_SIZE: usize = 32;
/// Directory name under `models/`.
pub const DEFAULT_SUBDIR: &str = "models/all-minilm-l6-v2";

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedder file {path} is missing ({hint})")]
    Missing { path: PathBuf, hint: &'static str },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid BERT config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("cannot load tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("cannot load weights {path} (corrupt or not a BERT checkpoint?): {source}")]
    Weights { path: PathBuf, source: candle_core::Error },
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("embedding forward pass failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EmbedError>;

/// A loaded sentence embedder.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    pad_id: u32,
    progress: bool,
}

const SETUP_HINT: &str =
    "run scripts/setup.sh, or point BEDSIDE_EMBEDDER at a directory with config.json, model.safetensors and tokenizer.json";

fn require(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(EmbedError::Missing { path: p, hint: SETUP_HINT })
    }
}

impl Embedder {
    /// The embedder directory: `$BEDSIDE_EMBEDDER` when set, else `models/all-minilm-l6-v2` under the
    /// current directory when it exists, else the one in the workspace this crate was built from.
    pub fn default_dir() -> PathBuf {
        if let Some(p) = std::env::var_os("BEDSIDE_EMBEDDER") {
            return PathBuf::from(p);
        }
        let local = PathBuf::from(DEFAULT_SUBDIR);
        if local.join("config.json").is_file() {
            return local;
        }
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(DEFAULT_SUBDIR);
        if ws.join("config.json").is_file() {
            return ws.canonicalize().unwrap_or(ws);
        }
        local
    }

    /// Load `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = require(dir, "config.json")?;
        let weights = require(dir, "model.safetensors")?;
        let tok_path = require(dir, "tokenizer.json")?;

        let text = std::fs::read_to_string(&cfg_path).map_err(|source| EmbedError::Io { path: cfg_path.clone(), source })?;
        let config: Config = serde_json::from_str(&text).map_err(|e| EmbedError::Config { path: cfg_path.clone(), msg: e.to_string() })?;
        if config.max_position_embeddings < MAX_TOKENS {
            return Err(EmbedError::Config {
                path: cfg_path,
                msg: format!("max_position_embeddings {} < {MAX_TOKENS}", config.max_position_embeddings),
            });
        }

        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| EmbedError::Tokenizer { path: tok_path.clone(), msg: e.to_string() })?;
        // tokenizer.json ships with truncation 128 and fixed padding 128; sentence-transformers
        // truncates at 256 and pads per batch, which we do ourselves after sorting by length.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedError::Tokenizer { path: tok_path.clone(), msg: e.to_string() })?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(config.pad_token_id as u32);

        // Read (not mmap) so a truncated or corrupt file gives an error rather than a fault.
        let tensors =
            candle_core::safetensors::load(&weights, device).map_err(|source| EmbedError::Weights { path: weights.clone(), source })?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(vb, &config).map_err(|source| EmbedError::Weights { path: weights.clone(), source })?;
        Ok(Self { model, tokenizer, device: device.clone(), dim: config.hidden_size, pad_id, progress: false })
    }

    /// Show a progress bar (stderr, with rate and ETA) when one call embeds more than 256 texts.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Embedding width (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Unit-length embeddings, one per text, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| EmbedError::Encode(e.to_string()))?;
        // Sort by length so each batch pads little.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out = vec![Vec::new(); texts.len()];
        let bar = (self.progress && texts.len() > 256).then(|| {
            let b = indicatif::ProgressBar::new(texts.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("embedding {bar:30} {pos}/{len} texts {per_sec} ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        for chunk in order.chunks(BATCH_SIZE) {
            let max_len = chunk.iter().map(|&i| encodings[i].get_ids().len()).max().unwrap_or(1).max(1);
            let n = chunk.len();
            let mut ids = Vec::with_capacity(n * max_len);
            let mut types = Vec::with_capacity(n * max_len);
            let mut mask = Vec::with_capacity(n * max_len);
            for &i in chunk {
                let e = &encodings[i];
                let len = e.get_ids().len();
                ids.extend_from_slice(e.get_ids());
                types.extend_from_slice(e.get_type_ids());
                mask.extend(std::iter::repeat_n(1u32, len));
                ids.extend(std::iter::repeat_n(self.pad_id, max_len - len));
                types.extend(std::iter::repeat_n(0u32, max_len - len));
                mask.extend(std::iter::repeat_n(0u32, max_len - len));
            }
            let ids = Tensor::from_vec(ids, (n, max_len), &self.device)?;
            let types = Tensor::from_vec(types, (n, max_len), &self.device)?;
            let mask = Tensor::from_vec(mask, (n, max_len), &self.device)?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, t, d)
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, t, 1)
            let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (n, d)
            let counts = m.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            let unit = mean.broadcast_div(&norm)?.to_vec2::<f32>()?;
            for (&i, v) in chunk.iter().zip(unit) {
                out[i] = v;
            }
            if let Some(b) = &bar {
                b.inc(n as u64);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(out)
    }

    /// One text's embedding.
    pub fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        Ok(self.embed(&[text])?.pop().unwrap_or_default())
    }

    /// Embed every distinct text of `texts` once, in one batched pass (a text that recurs — a
    /// prompt answered by several systems, a reference compared with each — costs nothing more).
    pub fn embed_distinct<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Result<EmbeddingTable<'a>> {
        let mut index = std::collections::HashMap::new();
        let mut uniq = Vec::new();
        for t in texts {
            index.entry(t).or_insert_with(|| {
                uniq.push(t);
                uniq.len() - 1
            });
        }
        let vectors = self.embed(&uniq)?;
        Ok(EmbeddingTable { index, vectors })
    }
}

/// Embeddings of distinct texts, looked up by text (see [`Embedder::embed_distinct`]).
pub struct EmbeddingTable<'a> {
    index: std::collections::HashMap<&'a str, usize>,
    vectors: Vec<Vec<f32>>,
}

impl EmbeddingTable<'_> {
    /// The embedding of `text`, if it was among the embedded texts.
    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.index.get(text).map(|&i| self.vectors[i].as_slice())
    }

    /// Number of distinct texts embedded.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }
}

/// Cosine similarity; 0 when either vector is all zeros or lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += x as f64 * y as f64;
        na += x as f64 * x as f64;
        nb += y as f64 * y as f64;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}
