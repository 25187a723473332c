//! Where tests find their references.
//!
//! Fixtures from independent implementations live in `../shared/fixtures` beside the checkout
//! (override with `BEDSIDE_SHARED_DIR`). A user's clone has no `../shared`, so tests that need it
//! skip there; CI sets `BEDSIDE_REQUIRE_SHARED=1`, which turns a missing directory into a failure.
//! The real default models come from `scripts/setup.sh` into `models/`; `BEDSIDE_REQUIRE_MODELS=1`
//! makes their absence a failure too.

pub mod fakehub;

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives at `crates/bedside-testutil`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn required(var: &str) -> bool {
    matches!(std::env::var(var).as_deref(), Ok("1") | Ok("true") | Ok("yes"))
}

/// `../shared`, or `None` (with a note on stderr) when absent and not required.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BEDSIDE_SHARED_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("../shared"));
    if dir.join("fixtures").is_dir() {
        return Some(dir);
    }
    if required("BEDSIDE_REQUIRE_SHARED") {
        panic!("BEDSIDE_REQUIRE_SHARED is set but {} has no fixtures/", dir.display());
    }
    eprintln!("skipping: reference fixtures not found at {} (set BEDSIDE_SHARED_DIR)", dir.display());
    None
}

/// A fixture file or folder under `../shared/fixtures/`, or `None` when the fixtures are absent.
pub fn fixture(rel: &str) -> Option<PathBuf> {
    let p = shared_dir()?.join("fixtures").join(rel);
    assert!(p.exists(), "fixture {} is missing from the shared fixtures", p.display());
    Some(p)
}

/// A file fetched by `scripts/setup.sh` under `models/`, or `None` when setup has not run.
pub fn model_file(rel: &str) -> Option<PathBuf> {
    let p = workspace_root().join("models").join(rel);
    if p.exists() {
        return Some(p);
    }
    if required("BEDSIDE_REQUIRE_MODELS") {
        panic!("BEDSIDE_REQUIRE_MODELS is set but {} is missing: run scripts/setup.sh", p.display());
    }
    eprintln!("skipping: {} not found (run scripts/setup.sh)", p.display());
    None
}

/// The default chat model, SmolLM2-135M-Instruct Q4_1.
pub fn smollm2_gguf() -> Option<PathBuf> {
    model_file("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// `n` deterministic values in [-1, 1) from a fixed LCG seeded by `seed`, so a failing test
/// reproduces with the same inputs.
pub fn lcg_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
