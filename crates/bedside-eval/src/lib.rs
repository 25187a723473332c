//! `bedside eval`: did the adapter make the model more comforting without making it less
//! knowledgeable, less safe or less fair?
//!
//! A run ([`run::run`]) answers the test split, the safety set and the equity probes with the base
//! model and every adapter system, using identical prompts, decoding settings and per-item seeds;
//! caches the answers ([`cache`]) so an interrupted run resumes; scores them (empathy, knowledge,
//! safety, equity, perplexity, optionally an LLM judge); computes the statistics of every
//! tuned − base difference; and writes `results.json` ([`results`], versioned), `report.md` and a
//! self-contained `report.html` ([`report`]). The research behind each measure is in
//! `../shared/reference/seeds.md`.

pub mod aggregate_extra;
pub mod cache;
pub mod compare;
pub mod config;
pub mod generate;
pub mod items;
pub mod judge;
pub mod measures;
pub mod report;
pub mod results;
pub mod run;
pub mod safety;
pub mod score;
pub mod stats;

pub use config::EvalConfig;
pub use run::{run, RunOptions, RunOutcome};
