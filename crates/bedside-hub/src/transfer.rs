//! Carrying models to a machine that never touches a network: `export` copies snapshots from the
//! cache to a folder (removable media) with a manifest of sha256 sums; `import` verifies every
//! byte against it before anything enters the cache.
//!
//! ```text
//! DIR/bedside-export.json    the manifest: per model its repository, commit, refs and files
//! DIR/blobs/<sha256>         the file contents, named by their sha256 (no symbolic links, so
//!                            exFAT/NTFS media work; FAT32 cannot hold files over 4 GiB)
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::RepoCache;
use crate::error::{io_err, HubError, Result};
use crate::http::{hex, sha256_file};
use crate::progress::Progress;
use crate::spec::{is_commit_hash, repo_path_ok, revision_ok, RepoSpec};

pub const MANIFEST: &str = "bedside-export.json";
const FORMAT: &str = "bedside-hub-export/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    models: Vec<ManifestModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestModel {
    repo: String,
    commit: String,
    #[serde(default)]
    refs: Vec<String>,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    path: String,
    size: u64,
    sha256: String,
    /// The hub's etag, which names the blob in the cache (sha256 for LFS files, a git object id
    /// for small ones); absent when the cache held a copy rather than a link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
}

/// A snapshot (or some of its files) to export.
#[derive(Debug, Clone)]
pub struct ExportItem {
    pub repo: String,
    pub commit: String,
    pub files: Vec<String>,
}

impl From<&crate::Fetched> for ExportItem {
    fn from(f: &crate::Fetched) -> Self {
        ExportItem { repo: f.spec.repo.clone(), commit: f.commit.clone(), files: f.files.iter().map(|x| x.name.clone()).collect() }
    }
}

/// Every file of every snapshot in the cache.
pub fn everything(cache_dir: &Path) -> Result<Vec<ExportItem>> {
    Ok(crate::cache::list_cache(cache_dir)?
        .into_iter()
        .flat_map(|r| {
            let repo = r.repo.clone();
            r.snapshots.into_iter().map(move |s| ExportItem {
                repo: repo.clone(),
                commit: s.commit,
                files: s.files.into_iter().map(|f| f.0).collect(),
            })
        })
        .collect())
}

/// One file moved (or found already in place).
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub repo: String,
    pub commit: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Copied now (else an identical copy was already there).
    pub copied: bool,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let corrupt = |msg: String| HubError::Corrupt { path: path.into(), msg };
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| corrupt(format!("not a bedside export manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(corrupt(format!("format {:?}; this bedside reads {FORMAT:?}", m.format)));
    }
    for (i, model) in m.models.iter().enumerate() {
        let at = format!("models[{i}]");
        let spec_ok = RepoSpec::parse(&model.repo).is_some_and(|s| s.repo == model.repo && s.pick.is_none());
        if !spec_ok {
            return Err(corrupt(format!("{at}.repo {:?} is not a repository id org/name", model.repo)));
        }
        if !is_commit_hash(&model.commit) {
            return Err(corrupt(format!("{at}.commit {:?} is not a commit hash", model.commit)));
        }
        if let Some(r) = model.refs.iter().find(|r| !revision_ok(r) || is_commit_hash(r)) {
            return Err(corrupt(format!("{at}.refs: {r:?} is not a branch or tag name")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (j, f) in model.files.iter().enumerate() {
            let at = format!("{at}.files[{j}]");
            if !repo_path_ok(&f.path) {
                return Err(corrupt(format!("{at}.path {:?} is not a plain relative path", f.path)));
            }
            if !seen.insert(&f.path) {
                return Err(corrupt(format!("{at}.path {:?} appears twice", f.path)));
            }
            if !is_hex(&f.sha256, 64) {
                return Err(corrupt(format!("{at}.sha256 {:?} is not 64 lowercase hex digits", f.sha256)));
            }
            if let Some(e) = f.etag.as_deref().filter(|e| !is_hex(e, 40) && !is_hex(e, 64)) {
                return Err(corrupt(format!("{at}.etag {e:?} is not a hub etag (40 or 64 hex digits)")));
            }
        }
    }
    Ok(m)
}

/// Copy `src` into `dest` (atomically, through bedside-io) while hashing it; refuse it, writing
/// nothing, unless it has `size` bytes and sha256 `sha256`.
fn copy_verified(src: &Path, dest: &Path, size: u64, sha256: &str, label: &str) -> Result<()> {
    let mut input = std::fs::File::open(src).map_err(io_err(src))?;
    let mut progress = Progress::new(label, Some(size), 0);
    let written = bedside_io::write_atomic_with(dest, |w| -> Result<()> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n_total = 0u64;
        loop {
            let n = input.read(&mut buf).map_err(io_err(src))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).map_err(io_err(dest))?;
            n_total += n as u64;
            progress.set(n_total);
        }
        let got = hex(&h.finalize());
        if n_total != size || got != sha256 {
            return Err(HubError::Corrupt {
                path: src.into(),
                msg: format!("{label} is corrupt: {n_total} bytes with sha256 {got}, the manifest says {size} bytes with sha256 {sha256}"),
            });
        }
        Ok(())
    });
    progress.finish();
    written.map_err(|e| e.into_inner(|io| HubError::Io { path: dest.into(), err: io }))
}

/// The blob a snapshot file links to (its etag), when it is a link into `blobs/`.
fn etag_of(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    (is_hex(&name, 40) || is_hex(&name, 64)).then_some(name)
}

/// Copy `items` from the cache into `dest`, adding to a manifest already there.
pub fn export(cache_dir: &Path, dest: &Path, items: &[ExportItem]) -> Result<Vec<Moved>> {
    bedside_io::check_output_not_input(dest, &[cache_dir]).map_err(io_err(dest))?;
    let blobs = dest.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let manifest_path = dest.join(MANIFEST);
    let mut manifest =
        if manifest_path.exists() { read_manifest(&manifest_path)? } else { Manifest { format: FORMAT.into(), models: vec![] } };
    let mut moved = Vec::new();
    for item in items {
        let repo = RepoCache::new(cache_dir, &item.repo);
        let refs: Vec<String> = repo.refs().into_iter().filter(|(_, c)| *c == item.commit).map(|(r, _)| r).collect();
        let mut files = Vec::new();
        for name in &item.files {
            let src = repo.snapshot(&item.commit).join(name);
            let size = std::fs::metadata(&src).map_err(io_err(&src))?.len();
            let etag = etag_of(&src);
            // An LFS blob is named by its sha256: the copy is checked against it on the way.
            let sha256 = match etag.as_deref().filter(|e| is_hex(e, 64)) {
                Some(e) => e.to_string(),
                None => sha256_file(&src)?,
            };
            let target = blobs.join(&sha256);
            let label = format!("{} {name}", item.repo);
            let present = target.is_file() && sha256_file(&target)? == sha256;
            if !present {
                copy_verified(&src, &target, size, &sha256, &label)?;
            }
            moved.push(Moved {
                repo: item.repo.clone(),
                commit: item.commit.clone(),
                path: name.clone(),
                size,
                sha256: sha256.clone(),
                copied: !present,
            });
            files.push(ManifestFile { path: name.clone(), size, sha256, etag });
        }
        match manifest.models.iter_mut().find(|m| m.repo == item.repo && m.commit == item.commit) {
            Some(m) => {
                for r in refs {
                    if !m.refs.contains(&r) {
                        m.refs.push(r);
                    }
                }
                for f in files {
                    match m.files.iter().find(|x| x.path == f.path) {
                        Some(old) if old.sha256 != f.sha256 => {
                            return Err(HubError::Corrupt {
                                path: manifest_path,
                                msg: format!(
                                    "{}@{} {} is already exported with sha256 {}, the cache has {}",
                                    item.repo, item.commit, f.path, old.sha256, f.sha256
                                ),
                            })
                        }
                        Some(_) => {}
                        None => m.files.push(f),
                    }
                }
            }
            None => manifest.models.push(ManifestModel { repo: item.repo.clone(), commit: item.commit.clone(), refs, files }),
        }
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| HubError::Protocol(format!("manifest: {e}")))?;
    bedside_io::write_atomic(&manifest_path, &json).map_err(io_err(&manifest_path))?;
    Ok(moved)
}

/// Verify every file of the export in `src` against its manifest and put it into the cache. Any
/// missing or corrupt file stops the import before anything is visible in the cache.
pub fn import(cache_dir: &Path, src: &Path) -> Result<Vec<Moved>> {
    let manifest_path = src.join(MANIFEST);
    if !manifest_path.is_file() {
        return Err(HubError::Missing(format!("{}: no {MANIFEST} here; point at the folder `bedside cache export` wrote", src.display())));
    }
    let manifest = read_manifest(&manifest_path)?;
    std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    // Staged in the cache's file system, so the final moves are renames.
    let staging = cache_dir.join(format!(".bedside-import.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    let result = stage_and_commit(cache_dir, src, &manifest, &staging);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn stage_and_commit(cache_dir: &Path, src: &Path, manifest: &Manifest, staging: &Path) -> Result<Vec<Moved>> {
    // 1. Copy and verify every blob the cache lacks into the staging folder.
    let mut staged: BTreeMap<PathBuf, PathBuf> = BTreeMap::new(); // cache blob ← staged copy
    let mut moved = Vec::new();
    for model in &manifest.models {
        let repo = RepoCache::new(cache_dir, &model.repo);
        for f in &model.files {
            let blob = repo.blob(f.etag.as_deref().unwrap_or(&f.sha256));
            let copied = !blob.is_file() && !staged.contains_key(&blob);
            if copied {
                let from = src.join("blobs").join(&f.sha256);
                if !from.is_file() {
                    return Err(HubError::Missing(format!(
                        "{}: {}@{} {} is missing from the export (blobs/{}); nothing was imported",
                        src.display(),
                        model.repo,
                        model.commit,
                        f.path,
                        f.sha256
                    )));
                }
                let to = staging.join(format!("{}", staged.len()));
                let label = format!("{} {}", model.repo, f.path);
                copy_verified(&from, &to, f.size, &f.sha256, &label).map_err(|e| match e {
                    HubError::Corrupt { path, msg } => HubError::Corrupt { path, msg: format!("{msg}; nothing was imported") },
                    other => other,
                })?;
                staged.insert(blob, to);
            }
            moved.push(Moved {
                repo: model.repo.clone(),
                commit: model.commit.clone(),
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                copied,
            });
        }
    }
    // 2. Everything verified: move the blobs in, then link the snapshots, then write the refs,
    // so a reader finds a snapshot file only once its blob is in place.
    for (blob, from) in &staged {
        let dir = blob.parent().unwrap_or(cache_dir);
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        std::fs::rename(from, blob).map_err(io_err(blob))?;
        bedside_io::sync_dir(dir).map_err(io_err(dir))?;
    }
    for model in &manifest.models {
        let repo = RepoCache::new(cache_dir, &model.repo);
        for f in &model.files {
            repo.link(&model.commit, &f.path, f.etag.as_deref().unwrap_or(&f.sha256))?;
        }
        for r in &model.refs {
            repo.write_ref(r, &model.commit)?;
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "0123456789abcdef0123456789abcdef01234567";

    fn write(dir: &Path, json: serde_json::Value) -> PathBuf {
        let p = dir.join(MANIFEST);
        std::fs::write(&p, serde_json::to_vec(&json).unwrap()).unwrap();
        p
    }

    #[test]
    fn hostile_manifests_are_refused_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "a".repeat(64);
        let file = |path: &str| serde_json::json!({"path": path, "size": 1, "sha256": sha});
        let cases = [
            (serde_json::json!({"format": "other/9", "models": []}), "format"),
            (serde_json::json!({"format": FORMAT, "models": [{"repo": "../x", "commit": C, "files": []}]}), "models[0].repo"),
            (serde_json::json!({"format": FORMAT, "models": [{"repo": "o/r", "commit": "main", "files": []}]}), "models[0].commit"),
            (
                serde_json::json!({"format": FORMAT, "models": [{"repo": "o/r", "commit": C, "refs": ["../../x"], "files": []}]}),
                "models[0].refs",
            ),
            (
                serde_json::json!({"format": FORMAT, "models": [{"repo": "o/r", "commit": C, "files": [file("../../etc/passwd")]}]}),
                "files[0].path",
            ),
            (serde_json::json!({"format": FORMAT, "models": [{"repo": "o/r", "commit": C, "files": [file("/abs")]}]}), "files[0].path"),
            (
                serde_json::json!({"format": FORMAT, "models": [{"repo": "o/r", "commit": C, "files": [file("a"), file("a")]}]}),
                "appears twice",
            ),
            (
                serde_json::json!({"format": FORMAT, "models": [{"repo": "o/r", "commit": C, "files": [{"path": "a", "size": 1, "sha256": "../x"}]}]}),
                "files[0].sha256",
            ),
            (
                serde_json::json!({"format": FORMAT, "models": [{"repo": "o/r", "commit": C, "files": [{"path": "a", "size": 1, "sha256": sha, "etag": "../../x"}]}]}),
                "files[0].etag",
            ),
            (serde_json::json!({"format": FORMAT, "models": [], "extra": 1}), "unknown field"),
        ];
        for (json, want) in cases {
            let p = write(dir.path(), json);
            let e = read_manifest(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(MANIFEST), "{want}: {e}");
        }
        assert!(import(dir.path(), &dir.path().join("nowhere")).unwrap_err().to_string().contains("no bedside-export.json"));
    }
}
