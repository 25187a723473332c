//! `bedside eval`: did the adapter make the model more comforting without making it less
//! knowledgeable, less safe or less fair?
//!
//! A run ([`run()`]) is a pipeline of named steps (see [`run`](mod@run)): answer the test split,
//! the safety set and the equity probes with the base model and every adapter system, using
//! identical prompts, decoding settings and per-item seeds (`answers`, cached so an interrupted
//! run resumes); compute perplexities (`perplexity`); optionally ask an LLM judge (`judging`,
//! rubric in `judge`); score every answer (`scoring`: empathy, knowledge, safety — `safety` —
//! equity); aggregate the statistics of every tuned − base difference (`aggregate`); and write
//! `results.json` ([`results`], versioned), `report.md` and a self-contained `report.html`
//! ([`report`]). Where answers come from is the seam in `systems` (today: the base model with
//! LoRA adapters). The research behind each measure is in `../shared/reference/seeds.md`.
//!
//! Also here: [`compare`] (two runs' differences) and [`pairs`] (the input of `eval score`).

mod aggregate;
mod answers;
mod cache;
pub mod compare;
pub mod config;
pub mod controls;
pub mod endpoint;
mod hash;
mod items;
mod judge;
mod judging;
pub mod pairs;
pub mod perplexity;
pub mod report;
pub mod results;
pub mod run;
mod safety;
mod scoring;
pub mod systems;

pub use answers::GenStats;
pub use config::EvalConfig;
pub use run::{run, RunOptions, RunOutcome};

/// Read and check a safety set (the `data/eval/safety.jsonl` format): its number of items, or an
/// error naming the file, the line and the field.
pub fn check_safety_file(path: &std::path::Path) -> anyhow::Result<usize> {
    items::read_safety(path).map(|items| items.len())
}
