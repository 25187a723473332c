//! Models from the Hugging Face hub, the way Hugging Face users expect, and carried to machines
//! that never touch a network.
//!
//! - [`env::HubEnv`]: `HF_TOKEN` (and the token file), `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`,
//!   `HF_HUB_OFFLINE`, read as `huggingface_hub` reads them.
//! - [`spec::RepoSpec`]: `org/name[@revision][:QUANT|:file.gguf]`; a quant tag picks the GGUF
//!   file as llama.cpp's `-hf` does ([`select`]).
//! - [`Hub::fetch`]: everything a run needs in the standard cache ([`cache`], shared with
//!   Python), downloads resumed and checked against the hub's sha256; offline, the cache alone,
//!   and no network code runs.
//! - [`transfer`]: `export` / `import` with a manifest of sha256 sums, for removable media.
//!
//! This crate knows repositories and files, not model formats; `bedside-model` turns what it
//! fetched into a model.

pub mod cache;
pub mod env;
pub mod error;
pub mod fetch;
pub mod http;
pub mod progress;
pub mod select;
pub mod spec;
pub mod transfer;

pub use env::{offline_from_env, HubEnv};
pub use error::{HubError, Result};
pub use fetch::{Fetched, FetchedFile, Hub};
pub use http::sha256_file;
pub use select::Kind;
pub use spec::{Pick, RepoSpec};

/// `1.5 GB`, `861 B`: decimal units, as the hub shows sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::human_bytes(861), "861 B");
        assert_eq!(super::human_bytes(511_328), "511.3 kB");
        assert_eq!(super::human_bytes(4_920_000_000), "4.9 GB");
    }
}
