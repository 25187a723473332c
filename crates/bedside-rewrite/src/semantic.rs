//! MiniLM (all-MiniLM-L6-v2) similarity for the fact and question checks, via `bedside-embed`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use bedside_embed::{cosine, Embedder};

use crate::checks::Similarity;

/// Cosine similarity of sentence embeddings; embeddings are cached per text (a record's facts
/// and answer sentences are compared many times across checks).
pub struct MiniLmSimilarity {
    embedder: Embedder,
    cache: RefCell<HashMap<String, Vec<f32>>>,
}

impl MiniLmSimilarity {
    /// Loads the embedder from `dir` (config.json, model.safetensors, tokenizer.json) on the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        let embedder = Embedder::load(dir, &candle_core::Device::Cpu)
            .with_context(|| format!("loading the MiniLM embedder from {}", dir.display()))?;
        Ok(Self::new(embedder))
    }

    pub fn new(embedder: Embedder) -> Self {
        MiniLmSimilarity { embedder, cache: RefCell::new(HashMap::new()) }
    }

    fn embed_all(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let missing: Vec<&str> = {
            let c = self.cache.borrow();
            let mut m: Vec<&str> = texts.iter().copied().filter(|t| !c.contains_key(*t)).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let v = self.embedder.embed(&missing).context("embedding texts for the fact check")?;
            let mut c = self.cache.borrow_mut();
            // Bound memory on long runs: the cache only needs the current record's texts.
            if c.len() > 4096 {
                c.clear();
            }
            for (t, e) in missing.into_iter().zip(v) {
                c.insert(t.to_string(), e);
            }
        }
        let c = self.cache.borrow();
        texts.iter().map(|t| c.get(*t).cloned().context("embedding cache miss")).collect()
    }
}

impl Similarity for MiniLmSimilarity {
    fn max_similarity(&self, query: &str, candidates: &[String]) -> Result<f32> {
        if candidates.is_empty() {
            return Ok(-1.0);
        }
        let mut texts: Vec<&str> = vec![query];
        texts.extend(candidates.iter().map(String::as_str));
        let e = self.embed_all(&texts)?;
        Ok(e[1..].iter().map(|c| cosine(&e[0], c)).fold(-1.0, f32::max))
    }
}
