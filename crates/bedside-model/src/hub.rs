//! Finding model files: a local path, or `org/name[@revision][:file.gguf]` on the Hugging Face hub.
//!
//! A local path never touches any network code. Hub ids are downloaded with hf-hub into the
//! standard cache when online; offline (`--offline` or `HF_HUB_OFFLINE=1`) only the cache is read
//! and the error lists exactly the files that are missing from it.

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

/// A parsed hub id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
    pub gguf_file: Option<String>,
}

/// `org/name[@revision][:file.gguf]`, or `None` if `spec` does not look like a hub id.
pub fn parse_hub_id(spec: &str) -> Option<HubId> {
    let (rest, gguf_file) = match spec.split_once(':') {
        Some((r, f)) if f.ends_with(".gguf") => (r, Some(f.to_string())),
        Some(_) => return None,
        None => (spec, None),
    };
    let (repo, revision) = match rest.split_once('@') {
        Some((r, v)) if !v.is_empty() => (r, v.to_string()),
        Some(_) => return None,
        None => (rest, "main".to_string()),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    let ok_part = |p: &str| !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if parts.len() != 2 || !parts.iter().all(|p| ok_part(p)) {
        return None;
    }
    Some(HubId { repo: repo.to_string(), revision, gguf_file })
}

pub fn offline_from_env() -> bool {
    matches!(std::env::var("HF_HUB_OFFLINE").as_deref(), Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes"))
}

/// Resolve a `--model` argument.
pub fn resolve(spec: &str, offline: bool) -> Result<ModelLocation> {
    let p = Path::new(spec);
    if p.exists() {
        return local(p);
    }
    match parse_hub_id(spec) {
        Some(id) => resolve_hub(&id, offline || offline_from_env()),
        None => Err(ModelError::Io {
            path: p.into(),
            err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory (and not a hub id of the form org/name[@revision])"),
        }),
    }
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
        [] => Err(ModelError::Config { path: p.join("config.json"), msg: "missing: a model directory needs config.json (HF) or a single .gguf file".into() }),
        _ => Err(ModelError::Config { path: p.into(), msg: format!("{} .gguf files here; name the one to use", ggufs.len()) }),
    }
}

const OPTIONAL_FILES: &[&str] = &["tokenizer_config.json", "generation_config.json", "chat_template.jinja", "special_tokens_map.json"];

fn resolve_hub(id: &HubId, offline: bool) -> Result<ModelLocation> {
    use hf_hub::{Repo, RepoType};
    let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone());
    let name = format!("{}@{}", id.repo, id.revision);
    if offline {
        let cache = hf_hub::Cache::from_env().repo(repo);
        let get = |f: &str| cache.get(f);
        let mut missing = Vec::new();
        let found = if let Some(g) = &id.gguf_file {
            let r = get(g);
            if r.is_none() {
                missing.push(g.clone());
            }
            r.map(ModelLocation::Gguf)
        } else {
            let config = get("config.json");
            if config.is_none() {
                missing.push("config.json".into());
            }
            if get("tokenizer.json").is_none() {
                missing.push("tokenizer.json".into());
            }
            match get("model.safetensors.index.json") {
                Some(idx) => {
                    for shard in shards_of(&idx)? {
                        if get(&shard).is_none() {
                            missing.push(shard);
                        }
                    }
                }
                None => {
                    if get("model.safetensors").is_none() {
                        missing.push("model.safetensors (or model.safetensors.index.json and its shards)".into());
                    }
                }
            }
            config.and_then(|c| c.parent().map(|d| ModelLocation::HfDir(d.to_path_buf())))
        };
        if !missing.is_empty() {
            return Err(ModelError::Hub(format!(
                "offline mode: {name} is not complete in the hub cache ({}); missing: {}. Run once with network access, or pass a local path",
                hf_hub::Cache::from_env().path().display(),
                missing.join(", ")
            )));
        }
        return found.ok_or_else(|| ModelError::Hub(format!("offline mode: {name} not found in the hub cache")));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| ModelError::Hub(format!("{name}: {e}")))?;
    let r = api.repo(repo);
    let get = |f: &str| r.get(f).map_err(|e| ModelError::Hub(format!("{name}: downloading {f}: {e}")));
    if let Some(g) = &id.gguf_file {
        return Ok(ModelLocation::Gguf(get(g)?));
    }
    let config = get("config.json")?;
    get("tokenizer.json")?;
    match r.get("model.safetensors.index.json") {
        Ok(idx) => {
            for shard in shards_of(&idx)? {
                get(&shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    for f in OPTIONAL_FILES {
        let _ = r.get(f); // absent on many repos
    }
    let dir = config.parent().map(Path::to_path_buf).ok_or_else(|| ModelError::Hub(format!("{name}: bad cache path")))?;
    Ok(ModelLocation::HfDir(dir))
}

fn shards_of(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(crate::error::io_err(index))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Config { path: index.into(), msg: format!("malformed JSON: {e}") })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Config { path: index.into(), msg: "field 'weight_map' is missing".into() })?;
    let mut s: Vec<String> = map.values().filter_map(|x| x.as_str().map(String::from)).collect();
    s.sort();
    s.dedup();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        let id = parse_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!(id.revision, "main");
        let id = parse_hub_id("meta-llama/Llama-3.1-8B@v1.0:model-q4.gguf").unwrap();
        assert_eq!((id.repo.as_str(), id.revision.as_str(), id.gguf_file.as_deref()), ("meta-llama/Llama-3.1-8B", "v1.0", Some("model-q4.gguf")));
        assert!(parse_hub_id("just-a-name").is_none());
        assert!(parse_hub_id("a/b/c").is_none());
        assert!(parse_hub_id("../x").is_none());
        assert!(parse_hub_id("org/name@").is_none());
    }

    #[test]
    fn offline_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HUB_CACHE", dir.path());
        let err = resolve("nobody/not-cached", true).unwrap_err().to_string();
        assert!(err.contains("offline"), "{err}");
        assert!(err.contains("config.json") && err.contains("model.safetensors"), "{err}");
    }
}
