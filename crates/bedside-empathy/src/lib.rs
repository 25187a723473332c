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
pub mod epitome;
pub mod features;
pub mod fit;
pub mod heads;
pub mod metrics;
pub mod ngrams;
pub mod text;
pub mod validate;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bedside_embed::{Embedder, EmbeddingTable};
use candle_core::Device;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use features::{analyse, Analysis, FeatureSet, Role};
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

/// Feature rows for `pairs` (context, response). Each distinct context and kept response text
/// ([`features::Analysis::kept_text`]) is embedded once, in batches.
pub fn featurize(embedder: &Embedder, set: FeatureSet, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
    if !set.uses_embeddings() {
        bail!("feature set {} has sparse rows: train it with `bedside eval train-scorer --epitome`", set.name());
    }
    let analyses: Vec<Analysis> = pairs.iter().map(|(c, r)| analyse(c, r)).collect();
    let kept: Vec<Cow<str>> = analyses.iter().map(Analysis::kept_text).collect();
    let table = embedder
        .embed_distinct(pairs.iter().map(|(c, _)| *c).chain(kept.iter().map(|k| k.as_ref())))
        .context("embedding texts for the empathy scorer")?;
    assemble_all(set, pairs, &analyses, &kept, |t| table.get(t))
}

/// [`featurize`] with the texts' embeddings already computed: every context and every kept
/// response text must be in `table` (see [`texts_to_embed`]).
pub fn featurize_embedded(set: FeatureSet, pairs: &[(&str, &str)], table: &EmbeddingTable) -> Result<Vec<Vec<f32>>> {
    let analyses: Vec<Analysis> = pairs.iter().map(|(c, r)| analyse(c, r)).collect();
    let kept: Vec<Cow<str>> = analyses.iter().map(Analysis::kept_text).collect();
    assemble_all(set, pairs, &analyses, &kept, |t| table.get(t))
}

/// The texts the scorer embeds for `pairs`: each context and each response's kept text (the
/// response itself unless sentences were set aside). A caller that embeds these once for other
/// measures can score with [`EmpathyScorer::score_embedded`] without embedding anything again.
pub fn texts_to_embed(pairs: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::with_capacity(2 * pairs.len());
    for (c, r) in pairs {
        out.push(c.to_string());
        out.push(analyse(c, r).kept_text().into_owned());
    }
    out
}

fn assemble_all<'t>(
    set: FeatureSet,
    pairs: &[(&str, &str)],
    analyses: &[Analysis],
    kept: &[Cow<str>],
    lookup: impl Fn(&str) -> Option<&'t [f32]>,
) -> Result<Vec<Vec<f32>>> {
    pairs
        .iter()
        .zip(analyses.iter().zip(kept))
        .map(|((c, _), (a, k))| match (lookup(c), lookup(k)) {
            (Some(ec), Some(er)) => Ok(set.assemble(a, ec, er)),
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

/// What a report needs to name the scorer and say how far its levels can be trusted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScorerInfo {
    /// The heads file, when loaded from one.
    pub heads_path: Option<PathBuf>,
    pub heads_sha256: Option<String>,
    /// e.g. `lex-v4/lex+cos+resp`.
    pub feature_spec: String,
    /// What the heads were trained on.
    pub trained_on: String,
    pub created: Option<String>,
    /// Agreement with human labels: (what, macro-F1 for ER, IP, EX).
    pub validation: Vec<(String, [f64; 3])>,
}

impl ScorerInfo {
    /// From the heads and, for the shipped heads, the EPITOME figures recorded beside them
    /// ([`validation_record_path`]) when that record names this file's SHA-256.
    pub fn of(heads: &Heads, path: Option<&Path>) -> Self {
        let meta = |k: &str| heads.metadata.get(k).cloned();
        let triple = |prefix: &str| -> Option<[f64; 3]> {
            let v: Vec<f64> = heads::SHORT.iter().filter_map(|s| meta(&format!("{prefix}_{s}"))?.parse().ok()).collect();
            <[f64; 3]>::try_from(v).ok()
        };
        let sha = path.and_then(|p| std::fs::read(p).ok()).map(|b| hex(&Sha256::digest(&b)));
        let mut validation = Vec::new();
        let trained_on = if let Some(t) = meta("training_data") {
            if let Some(v) = triple("heldout_macro_f1") {
                validation.push(("EPITOME held-out 20% macro-F1".to_string(), v));
            }
            t
        } else {
            if let Some(v) = triple("cv_macro_f1") {
                validation.push(("labelled set, 5-fold cross-validated macro-F1".to_string(), v));
            }
            format!("{} labelled pairs ({})", meta("n_train").unwrap_or_default(), meta("training_files").unwrap_or_default())
        };
        if let (Some(p), Some(sha)) = (path, &sha) {
            validation.extend(read_validation_record(&validation_record_path(p), sha));
        }
        ScorerInfo {
            heads_path: path.map(Path::to_path_buf),
            heads_sha256: sha,
            feature_spec: heads.features.spec(),
            trained_on,
            created: meta("created"),
            validation,
        }
    }

    /// One line for reports: the heads, what they were trained on and their agreement figures.
    pub fn summary(&self) -> String {
        let name = self.heads_path.as_ref().and_then(|p| p.file_name()).map_or("(in memory)".into(), |n| n.to_string_lossy().into_owned());
        let mut s = format!("empathy scorer {name} ({}), trained on {}", self.feature_spec, self.trained_on);
        for (what, v) in &self.validation {
            s += &format!("; {what}: ER {:.3}, IP {:.3}, EX {:.3}", v[0], v[1], v[2]);
        }
        s
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The EPITOME agreement record kept beside a heads file: `heads-v1.safetensors` →
/// `heads-v1.validation.json` (written by `bedside eval validate-scorer --record`).
pub fn validation_record_path(heads: &Path) -> PathBuf {
    heads.with_extension("validation.json")
}

/// The record's (label, macro-F1 per mechanism) entries, all pairs then the held-out 20%, when it
/// was made for the heads with `sha256`.
fn read_validation_record(path: &Path, sha256: &str) -> Vec<(String, [f64; 3])> {
    let Some(v) = std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) else { return Vec::new() };
    if v.get("heads_sha256").and_then(|s| s.as_str()) != Some(sha256) {
        return Vec::new();
    }
    let entry = |f1: &str, n: &str, label: &str| -> Option<(String, [f64; 3])> {
        let f = |m: &str| v.get(f1)?.get(m)?.as_f64();
        let n = v.get(n)?.as_u64()?;
        Some((format!("EPITOME macro-F1 ({label} {n} pairs per mechanism)"), [f("er")?, f("ip")?, f("ex")?]))
    };
    entry("macro_f1", "pairs", "all").into_iter().chain(entry("heldout_macro_f1", "heldout_pairs", "held-out 20%,")).collect()
}

/// The validation record for `report` of the heads at `heads_path`.
pub fn validation_record(report: &validate::ValidationReport, heads_path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(heads_path).with_context(|| format!("reading {}", heads_path.display()))?;
    let f1 = |ms: &[validate::MechanismReport]| -> serde_json::Map<String, serde_json::Value> {
        ms.iter()
            .enumerate()
            .map(|(m, r)| (heads::SHORT[m].to_string(), serde_json::json!((r.agreement.macro_f1 * 1e4).round() / 1e4)))
            .collect()
    };
    Ok(serde_json::json!({
        "heads_sha256": hex(&Sha256::digest(&bytes)),
        "heads_feature_spec": report.heads_feature_spec,
        "pairs": report.mechanisms.first().map_or(0, |r| r.agreement.n),
        "macro_f1": f1(&report.mechanisms),
        "heldout_pairs": report.heldout.first().map_or(0, |r| r.agreement.n),
        "heldout_macro_f1": f1(&report.heldout),
        "heldout_split": "seeker posts whose SHA-256(sp_id) first 8 bytes (little-endian) are 0 mod 5, as in train-scorer --epitome",
        "data": "EPITOME Reddit (Sharma et al. 2020); read at run time, never stored",
    }))
}

/// The embedder plus the three heads.
pub struct EmpathyScorer {
    heads: Heads,
    embedder: Embedder,
    info: ScorerInfo,
}

impl EmpathyScorer {
    pub fn load(heads_path: &Path, embedder_dir: &Path, device: &Device) -> Result<Self> {
        let heads = Heads::load(heads_path)?;
        let embedder = Embedder::load(embedder_dir, device).context("loading the sentence embedder for the empathy scorer")?;
        let mut s = Self::new(heads, embedder)?;
        s.info = ScorerInfo::of(&s.heads, Some(heads_path));
        Ok(s)
    }

    /// Named heads (or the shipped ones when `None`) with the default MiniLM directory, on the CPU.
    pub fn load_heads(heads_path: Option<&Path>) -> Result<Self> {
        let p = heads_path.map_or_else(default_heads_path, Path::to_path_buf);
        Self::load(&p, &Embedder::default_dir(), &Device::Cpu)
    }

    /// Shipped heads and the default MiniLM directory, on the CPU.
    pub fn load_default() -> Result<Self> {
        Self::load(&default_heads_path(), &Embedder::default_dir(), &Device::Cpu)
    }

    pub fn new(heads: Heads, embedder: Embedder) -> Result<Self> {
        if heads.features.uses_embeddings() && heads.embedding_dim != embedder.dim() {
            bail!("empathy heads expect {}-d embeddings but the embedder gives {}-d", heads.embedding_dim, embedder.dim());
        }
        let info = ScorerInfo::of(&heads, None);
        Ok(EmpathyScorer { heads, embedder, info })
    }

    /// The scorer's name, training data and validation figures, for reports.
    pub fn info(&self) -> &ScorerInfo {
        &self.info
    }

    pub fn heads(&self) -> &Heads {
        &self.heads
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Score (context, response) pairs, in order.
    pub fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<EmpathyScores>> {
        if !self.heads.features.uses_embeddings() {
            return Ok(self.score_sparse(pairs));
        }
        let x = featurize(&self.embedder, self.heads.features, pairs)?;
        Ok(x.iter().map(|r| EmpathyScores::from_probs(self.heads.predict(r))).collect())
    }

    /// [`EmpathyScorer::score`] with embeddings from this scorer's embedder already computed
    /// (a caller embedding the same texts for other measures embeds them once). Texts the scorer
    /// needs that are not in `table` (a response with sentences set aside is embedded without
    /// them, see [`texts_to_embed`]) are embedded here.
    pub fn score_embedded(&self, pairs: &[(&str, &str)], table: &EmbeddingTable) -> Result<Vec<EmpathyScores>> {
        if !self.heads.features.uses_embeddings() {
            return Ok(self.score_sparse(pairs));
        }
        let analyses: Vec<Analysis> = pairs.iter().map(|(c, r)| analyse(c, r)).collect();
        let kept: Vec<Cow<str>> = analyses.iter().map(Analysis::kept_text).collect();
        let mut missing: Vec<&str> =
            pairs.iter().map(|(c, _)| *c).chain(kept.iter().map(|k| k.as_ref())).filter(|t| table.get(t).is_none()).collect();
        missing.sort_unstable();
        missing.dedup();
        let extra: HashMap<&str, Vec<f32>> = missing.iter().copied().zip(self.embedder.embed(&missing)?).collect();
        let x = assemble_all(self.heads.features, pairs, &analyses, &kept, |t| table.get(t).or_else(|| extra.get(t).map(Vec::as_slice)))?;
        Ok(x.iter().map(|r| EmpathyScores::from_probs(self.heads.predict(r))).collect())
    }

    /// Heads on n-grams and cues alone ([`FeatureSet::NgramLexical`]): nothing is embedded.
    fn score_sparse(&self, pairs: &[(&str, &str)]) -> Vec<EmpathyScores> {
        pairs
            .iter()
            .map(|(c, r)| {
                let row = FeatureSet::sparse_row(&analyse(c, r), &self.heads.idf);
                EmpathyScores::from_probs(self.heads.predict_sparse(&row))
            })
            .collect()
    }
}
