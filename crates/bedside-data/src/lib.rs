//! bedside's medical dialogue corpus (schema version 1, see `data/README.md`) and the tools around
//! it, used by `bedside data …`:
//!
//! * [`record`]: the [`Dialogue`] record, line-numbered JSONL reading ([`read_jsonl`],
//!   [`read_dialogues`]) and atomic writing ([`write_jsonl_atomic`], and back into the files
//!   read with [`write_back_in_place`]).
//! * [`import`]: ChatDoctor / HealthCareMagic / iCliniq, MedDialog-EN text, OpenAI chat JSONL,
//!   ShareGPT and Alpaca into the schema. Fields a source cannot fill stay empty, never invented.
//! * [`export`]: OpenAI chat or ShareGPT JSONL for other trainers.
//! * [`validate`]: schema, duplicate ids, exact and near duplicates, condition leakage between
//!   splits, key facts, the numbers rule, balance and length bounds, with a text or JSON report.
//! * [`split`]: a deterministic split, stratified by specialty and emotion, grouped by condition.
//! * [`corpus_stats`]: counts and word (and, given a counter, token) length distributions.
//! * [`equity`]: the deterministic generator of demographic-cue probes for equity evaluation.
//! * [`text`]: word, content-word and number extraction shared by the checks.
//!
//! Every error about user input names the file, the line and, where there is one, the field
//! ([`RecordError`]). Nothing in this crate logs or prints patient text.

pub mod corpus_stats;
pub mod equity;
pub mod error;
pub mod export;
pub mod import;
pub mod record;
pub mod split;
pub mod text;
pub mod validate;

pub use error::{DataError, RecordError};
pub use record::{
    jsonl_files, read_dialogues, read_jsonl, write_atomic, write_back_in_place, write_jsonl_atomic, Dialogue, Located, Provenance,
    SCHEMA_VERSION, SPLITS,
};
