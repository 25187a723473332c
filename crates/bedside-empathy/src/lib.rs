//! Offline, deterministic empathy scorer for EPITOME's three communication mechanisms
//! (Sharma et al. 2020): emotional reactions (ER), interpretations (IP) and explorations (EX),
//! each 0 = none, 1 = weak, 2 = strong.
//!
//! Features are MiniLM embeddings (bedside-embed) plus lexical cues written from the EPITOME
//! definitions ([`features`]); three multinomial logistic heads ([`heads`]) map them to levels.
//! The shipped heads (`data/empathy/heads-v1.safetensors`) are trained only on the project's own
//! labelled pairs (`data/empathy/labelled-part-*.jsonl`, CC BY 4.0); the EPITOME Reddit data is
//! research-only and is read at run time for validation alone.
//!
//! ```no_run
//! let scorer = bedside_empathy::EmpathyScorer::load_default()?;
//! let s = scorer.score(&[("I'm scared of the biopsy.", "That sounds frightening. What worries you most?")])?;
//! println!("ER {} IP {} EX {} (total {})", s[0].emotional_reactions, s[0].interpretations, s[0].explorations, s[0].total());
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod data;
pub mod features;
pub mod heads;
pub mod metrics;
pub mod train;
pub mod validate;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bedside_embed::{Embedder, EmbeddingTable};
use candle_core::Device;
use serde::Serialize;

pub use features::FeatureSet;
pub use heads::{Heads, TrainOptions, MECHANISMS};

/// Shipped heads, relative to the workspace root.
pub const DEFAULT_HEADS: &str = "data/empathy/heads-v1.safetensors";

/// Levels for one (context, response) pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmpathyScores {
    pub emotional_reactions: u8,
    pub interpretations: u8,
    pub explorations: u8,
    /// Class probabilities: `probs[m][level]`, m = ER, IP, EX.
    pub probs: [[f32; 3]; 3],
    /// Expected level Σ p·level per mechanism (continuous, 0–2), m = ER, IP, EX.
    pub expected: [f32; 3],
}

impl EmpathyScores {
    pub fn from_probs(probs: [[f32; 3]; 3]) -> Self {
        let argmax = |p: &[f32; 3]| -> u8 {
            let mut best = 0;
            for k in 1..3 {
                if p[k] > p[best] {
                    best = k;
                }
            }
            best as u8
        };
        let expected = probs.map(|p| p[1] + 2.0 * p[2]);
        EmpathyScores {
            emotional_reactions: argmax(&probs[0]),
            interpretations: argmax(&probs[1]),
            explorations: argmax(&probs[2]),
            probs,
            expected,
        }
    }

    /// Levels as [ER, IP, EX].
    pub fn levels(&self) -> [u8; 3] {
        [self.emotional_reactions, self.interpretations, self.explorations]
    }

    /// Sum of the three levels (0–6).
    pub fn total(&self) -> u8 {
        self.emotional_reactions + self.interpretations + self.explorations
    }

    /// Sum of the three expected levels (0–6, continuous).
    pub fn expected_total(&self) -> f32 {
        self.expected.iter().sum()
    }
}

/// Feature rows for `pairs` (context, response). Each distinct text is embedded once; texts are
/// embedded in batches by the embedder.
pub fn featurize(embedder: &Embedder, set: FeatureSet, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
    let table = embedder
        .embed_distinct(pairs.iter().flat_map(|(c, r)| [*c, *r]))
        .context("embedding texts for the empathy scorer")?;
    featurize_embedded(set, pairs, &table)
}

/// [`featurize`] with the texts' embeddings already computed (every context and response must be
/// in `table`).
pub fn featurize_embedded(set: FeatureSet, pairs: &[(&str, &str)], table: &EmbeddingTable) -> Result<Vec<Vec<f32>>> {
    pairs
        .iter()
        .map(|(c, r)| match (table.get(c), table.get(r)) {
            (Some(ec), Some(er)) => Ok(set.assemble(c, r, ec, er)),
            _ => bail!("a context or response of the pairs to score was not embedded"),
        })
        .collect()
}

/// The shipped heads file: `$BEDSIDE_EMPATHY_HEADS`, else `data/empathy/heads-v1.safetensors`
/// under the current directory when present, else the one in the workspace this was built from.
pub fn default_heads_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BEDSIDE_EMPATHY_HEADS") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(DEFAULT_HEADS);
    if local.is_file() {
        return local;
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(DEFAULT_HEADS);
    if ws.is_file() {
        return ws.canonicalize().unwrap_or(ws);
    }
    local
}

/// The embedder plus the three heads.
pub struct EmpathyScorer {
    heads: Heads,
    embedder: Embedder,
}

impl EmpathyScorer {
    pub fn load(heads: &Path, embedder_dir: &Path, device: &Device) -> Result<Self> {
        let heads = Heads::load(heads)?;
        let embedder = Embedder::load(embedder_dir, device).context("loading the sentence embedder for the empathy scorer")?;
        Self::new(heads, embedder)
    }

    /// Shipped heads and the default MiniLM directory, on the CPU.
    pub fn load_default() -> Result<Self> {
        Self::load(&default_heads_path(), &Embedder::default_dir(), &Device::Cpu)
    }

    pub fn new(heads: Heads, embedder: Embedder) -> Result<Self> {
        if heads.embedding_dim != embedder.dim() {
            bail!("empathy heads expect {}-d embeddings but the embedder gives {}-d", heads.embedding_dim, embedder.dim());
        }
        Ok(EmpathyScorer { heads, embedder })
    }

    pub fn heads(&self) -> &Heads {
        &self.heads
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Score (context, response) pairs, in order.
    pub fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<EmpathyScores>> {
        let x = featurize(&self.embedder, self.heads.features, pairs)?;
        Ok(x.iter().map(|r| EmpathyScores::from_probs(self.heads.predict(r))).collect())
    }

    /// [`EmpathyScorer::score`] with embeddings from this scorer's embedder already computed
    /// (a caller embedding the same texts for other measures embeds them once).
    pub fn score_embedded(&self, pairs: &[(&str, &str)], table: &EmbeddingTable) -> Result<Vec<EmpathyScores>> {
        let x = featurize_embedded(self.heads.features, pairs, table)?;
        Ok(x.iter().map(|r| EmpathyScores::from_probs(self.heads.predict(r))).collect())
    }
}
