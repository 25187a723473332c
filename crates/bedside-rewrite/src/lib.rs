//! bedside's LLM rewrite pipeline (`bedside data rewrite`): turns neutral dialogues (schema v1,
//! `patient_neutral` / `answer_neutral`) into emotional patient turns and comforting answers
//! with any model bedside can load, keeping every fact, number and question.
//!
//! * [`emotions`]: the EmpatheticDialogues negative emotions, a word lexicon per emotion, and the
//!   deterministic balanced or weighted assignment of target emotions.
//! * [`prompts`]: versioned minijinja prompt templates (`configs/prompts/<version>/`).
//! * [`generator`]: the [`Generator`] trait, implemented by a loaded engine
//!   ([`EngineGenerator`]) and by scripted generators in tests.
//! * [`checks`]: the acceptance checks, each failure a named [`Reason`]; [`ComfortScorer`] with
//!   the documented [`HeuristicComfort`] and the project's empathy scorer ([`EmpathyComfort`]);
//!   [`Similarity`] for MiniLM fact matching ([`MiniLmSimilarity`]).
//! * [`pipeline`]: the resumable, deterministic loop with reject file, progress bar and dry run.
//!
//! Logs never contain patient text; the texts go only to the output and rejects files.

pub mod checks;
pub mod emotions;
pub mod empathy;
pub mod generator;
pub mod pipeline;
pub mod prompts;
pub mod seed;
pub mod semantic;

pub use checks::{AcceptOptions, Checker, ComfortScorer, HeuristicComfort, Reason, Similarity};
pub use emotions::EmotionPlan;
pub use empathy::EmpathyComfort;
pub use generator::{EngineGenerator, GenRequest, Generated, Generator, Turn};
pub use pipeline::{dry_run, read_input, run, RejectLine, RewriteConfig, Summary};
pub use prompts::{Prompt, PromptContext, PromptSet};
pub use semantic::MiniLmSimilarity;
