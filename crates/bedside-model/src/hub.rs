//! Finding model files: a local path, or `org/name[@revision][:QUANT|:file.gguf]` on the Hugging
//! Face hub.
//!
//! A local path never touches any network code. Hub ids go through `bedside-hub`: downloaded into
//! the standard cache when online; offline (`--offline` or `HF_HUB_OFFLINE=1`) only the cache is
//! read and the error lists exactly the files that are missing from it.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// What a model spec resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A single GGUF file (weights, tokenizer and chat template inside).
    Gguf(PathBuf),
    /// A directory with `config.json`, safetensors weights and tokenizer files.
    HfDir(PathBuf),
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Gguf(p) | ModelLocation::HfDir(p) => p,
        }
    }
}

pub use bedside_hub::{offline_from_env, RepoSpec};

/// Resolve a `--model` argument: a local GGUF file or model directory (no network code runs),
/// else a hub id fetched into the standard cache (the cache alone when `offline` or
/// `HF_HUB_OFFLINE` is set). Every command that takes `--model` comes through here.
pub fn resolve(spec: &str, offline: bool) -> Result<ModelLocation> {
    Ok(fetch(spec, offline)?.0)
}

/// [`resolve`], with what the hub fetch did (`None` for a local path), for `bedside pull`.
pub fn fetch(spec: &str, offline: bool) -> Result<(ModelLocation, Option<bedside_hub::Fetched>)> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok((local(p)?, None));
    }
    match RepoSpec::parse(spec) {
        Some(id) => {
            let fetched = bedside_hub::Hub::from_env(offline).fetch(&id, bedside_hub::Kind::Model).map_err(|e| hub_error(e, spec))?;
            let loc = match &fetched.gguf {
                Some(g) => ModelLocation::Gguf(g.clone()),
                None => ModelLocation::HfDir(fetched.snapshot.clone()),
            };
            Ok((loc, Some(fetched)))
        }
        None => Err(ModelError::Io {
            path: p.into(),
            err: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or directory (and not a hub id of the form org/name[@revision][:QUANT or :file.gguf])",
            ),
        }),
    }
}

/// Resolve an `--adapter` argument: a local directory as it is, else a hub id `org/name[@revision]`
/// of a PEFT adapter repository, fetched like a model. Anything else is returned unchanged, for the
/// adapter loader to report.
pub fn resolve_adapter(spec: &Path, offline: bool) -> Result<PathBuf> {
    Ok(fetch_adapter(spec, offline)?.0)
}

/// [`resolve_adapter`], with what the hub fetch did.
pub fn fetch_adapter(spec: &Path, offline: bool) -> Result<(PathBuf, Option<bedside_hub::Fetched>)> {
    if spec.exists() {
        return Ok((spec.to_path_buf(), None));
    }
    match spec.to_str().and_then(RepoSpec::parse) {
        Some(id) => {
            let fetched = bedside_hub::Hub::from_env(offline)
                .fetch(&id, bedside_hub::Kind::Adapter)
                .map_err(|e| hub_error(e, &spec.display().to_string()))?;
            Ok((fetched.snapshot.clone(), Some(fetched)))
        }
        None => Ok((spec.to_path_buf(), None)),
    }
}

/// A hub error for a spec that was also tried as a local path: say so when the repository itself
/// was not found, since a mistyped relative path looks like a hub id.
fn hub_error(e: bedside_hub::HubError, spec: &str) -> ModelError {
    let hint = match &e {
        bedside_hub::HubError::Access { .. } | bedside_hub::HubError::NotCached(_) => {
            format!(" (there is no local file or directory {spec} either)")
        }
        _ => String::new(),
    };
    ModelError::Hub(format!("{e}{hint}"))
}

fn local(p: &Path) -> Result<ModelLocation> {
    if p.is_file() {
        return Ok(ModelLocation::Gguf(p.into()));
    }
    if p.join("config.json").exists() {
        return Ok(ModelLocation::HfDir(p.into()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(crate::error::io_err(p))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelLocation::Gguf(one.clone())),
        [] => Err(ModelError::Config {
            path: p.join("config.json"),
            msg: "missing: a model directory needs config.json (HF) or a single .gguf file".into(),
        }),
        _ => Err(ModelError::Config { path: p.into(), msg: format!("{} .gguf files here; name the one to use", ggufs.len()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HUB_CACHE", dir.path());
        let err = resolve("nobody/not-cached", true).unwrap_err().to_string();
        assert!(err.contains("offline") && err.contains("not in the hub cache") && err.contains("bedside pull nobody/not-cached"), "{err}");
        // A snapshot with only config.json: the error lists the rest.
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = dir.path().join("models--nobody--partial");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        std::fs::write(repo.join("snapshots").join(commit).join("config.json"), "{}").unwrap();
        let err = resolve("nobody/partial", true).unwrap_err().to_string();
        assert!(err.contains("missing: tokenizer.json, model.safetensors"), "{err}");
        // A local path is never a hub id, even offline with nothing cached.
        assert!(resolve(dir.path().to_str().unwrap(), true).unwrap_err().to_string().contains("config.json"));
    }
}
