//! The answering step: every system answers every item (test split, safety set, equity probes)
//! with the same prompts, decoding settings and per-item seeds; answers are cached in
//! `generations.jsonl` as they are produced, so an interrupted run resumes.

use std::collections::BTreeMap;

use anyhow::Result;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::cache::{Cached, JsonlCache};
use crate::config::{EvalConfig, SystemConfig};
use crate::controls::{is_control, ControlBuilder};
use crate::hash::{hash_u64, sha256_hex};
use crate::items::EvalItem;
use crate::systems::{chat, AnswerSource};

/// The item's seed: derived from the base seed and the item key, identical for every system.
pub(crate) fn item_seed(base: u64, key: &str) -> u64 {
    hash_u64(&format!("{base}:{key}"))
}

pub(crate) fn item_fingerprint(system_fp: &str, prompt: &str, seed: u64) -> String {
    sha256_hex(format!("{system_fp}\n{seed}\n{prompt}").as_bytes())
}

/// One cached answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GenRecord {
    pub system: String,
    pub key: String,
    pub seed: u64,
    pub fingerprint: String,
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: String,
    /// This answer's share of its batch's wall time.
    pub secs: f64,
}

impl Cached for GenRecord {
    fn cache_key(&self) -> String {
        format!("{}|{}", self.system, self.key)
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Generated and reused counts of one generation pass.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct GenStats {
    pub generated: usize,
    pub reused: usize,
    pub secs: f64,
}

/// Generate every missing (system, item) answer with `source`, appending each answer to the
/// cache as its batch finishes.
pub(crate) fn answer_items(
    cfg: &EvalConfig,
    system: &SystemConfig,
    source: &mut dyn AnswerSource,
    items: &[EvalItem],
    cache: &mut JsonlCache<GenRecord>,
    pb: &ProgressBar,
) -> Result<GenStats> {
    let mut stats = GenStats::default();
    let mut todo: Vec<(&EvalItem, u64, String)> = Vec::new();
    for it in items {
        let seed = item_seed(cfg.decoding.seed, &it.key);
        let fp = item_fingerprint(source.fingerprint(), &it.prompt, seed);
        if cache.contains(&format!("{}|{}", system.name, it.key), &fp) {
            stats.reused += 1;
            pb.inc(1);
        } else {
            todo.push((it, seed, fp));
        }
    }
    let chats: Vec<_> = todo.iter().map(|(it, _, _)| chat(&cfg.system_prompt, &it.prompt)).collect();
    let params = todo.iter().map(|(_, seed, _)| cfg.sampling_params(*seed).map_err(anyhow::Error::msg)).collect::<Result<Vec<_>>>()?;
    pb.set_message(system.name.clone());
    source.answer_all(&chats, &params, &mut |i, a| {
        let (it, seed, fp) = &todo[i];
        cache.put(GenRecord {
            system: system.name.clone(),
            key: it.key.clone(),
            seed: *seed,
            fingerprint: fp.clone(),
            text: a.text,
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
            finish_reason: a.finish_reason,
            secs: a.secs,
        })?;
        stats.generated += 1;
        stats.secs += a.secs;
        pb.inc(1);
        Ok(())
    })?;
    Ok(stats)
}

/// Every answer of the run: generated ones from the cache (checked against their system's
/// fingerprint) and the control answers, built from the items.
pub(crate) struct AnswerBook<'a> {
    cfg: &'a EvalConfig,
    gens: &'a JsonlCache<GenRecord>,
    /// system → fingerprint of its answers.
    fingerprints: &'a BTreeMap<String, String>,
    controls: &'a ControlBuilder,
}

impl<'a> AnswerBook<'a> {
    pub fn new(
        cfg: &'a EvalConfig,
        gens: &'a JsonlCache<GenRecord>,
        fingerprints: &'a BTreeMap<String, String>,
        controls: &'a ControlBuilder,
    ) -> Self {
        Self { cfg, gens, fingerprints, controls }
    }

    /// The answer of `system` (or control) to `item`, if there is one. Controls answer only the
    /// first sample of an item (they are the same for every sample).
    pub fn get(&self, system: &str, it: &EvalItem) -> Option<String> {
        if is_control(system) {
            return if it.sample == 0 { self.controls.answer(system, it) } else { None };
        }
        let seed = item_seed(self.cfg.decoding.seed, &it.key);
        let fp = item_fingerprint(self.fingerprints.get(system)?, &it.prompt, seed);
        self.gens.get(&format!("{system}|{}", it.key), &fp).map(|g| g.text.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_per_item_and_stable() {
        assert_eq!(item_seed(1, "test/a"), item_seed(1, "test/a"));
        assert_ne!(item_seed(1, "test/a"), item_seed(1, "test/b"));
        assert_ne!(item_seed(1, "test/a"), item_seed(2, "test/a"));
    }
}
