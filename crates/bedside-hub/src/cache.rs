//! The standard Hugging Face cache, shared with Python's `huggingface_hub`:
//!
//! ```text
//! HF_HUB_CACHE/models--org--name/
//!   blobs/<etag>                    file contents, named by the hub's etag (sha256 for LFS files)
//!   blobs/<etag>.incomplete         a download in progress (resumed from its length)
//!   refs/<revision>                 the commit a branch or tag pointed to (no newline)
//!   snapshots/<commit>/<path>       relative symbolic links to ../../blobs/<etag>
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};
use crate::spec::{is_commit_hash, repo_path_ok, revision_ok};

/// `models--org--name`.
pub fn repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// `org/name` from `models--org--name` (`None` for anything else in the cache).
pub fn repo_from_folder(folder: &str) -> Option<String> {
    let rest = folder.strip_prefix("models--")?;
    let (org, name) = rest.split_once("--")?;
    (!org.is_empty() && !name.is_empty() && !name.contains("--")).then(|| format!("{org}/{name}"))
}

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub dir: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> RepoCache {
        RepoCache { dir: cache_dir.join(repo_folder(repo)) }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// The commit `revision` stands for in the cache: a commit hash with a snapshot is itself,
    /// a branch or tag is what `refs/<revision>` says.
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return self.snapshot(revision).is_dir().then(|| revision.to_string());
        }
        if !revision_ok(revision) {
            return None;
        }
        let text = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_string())
    }

    /// Every file of a snapshot whose contents are present (a link to a missing blob is not), as
    /// `/`-separated paths, sorted.
    pub fn snapshot_files(&self, commit: &str) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.snapshot(commit), "", &mut out);
        out.sort();
        out
    }

    /// The refs (branches, tags) in the cache and the commits they name.
    pub fn refs(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        walk(&self.dir.join("refs"), "", &mut files);
        let mut out: Vec<(String, String)> = files
            .into_iter()
            .filter_map(|name| {
                let text = std::fs::read_to_string(self.dir.join("refs").join(&name)).ok()?;
                let commit = text.trim().to_string();
                is_commit_hash(&commit).then_some((name, commit))
            })
            .collect();
        out.sort();
        out
    }

    /// The commits that have a snapshot folder.
    pub fn commits(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.join("snapshots"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|c| is_commit_hash(c))
            .collect();
        out.sort();
        out
    }

    /// Record that `revision` is `commit` (nothing to do for a commit hash).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit || !revision_ok(revision) {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == commit) {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        bedside_io::write_atomic(&path, commit.as_bytes()).map_err(io_err(&path))
    }

    /// Point `snapshots/<commit>/<path>` at `blobs/<etag>` (replacing what was there) and return
    /// the link's path.
    pub fn link(&self, commit: &str, path: &str, etag: &str) -> Result<PathBuf> {
        if !repo_path_ok(path) {
            return Err(crate::HubError::Protocol(format!("refusing the file path {path:?}: not a plain relative path")));
        }
        let link = self.snapshot(commit).join(path);
        let dir = link.parent().map(Path::to_path_buf).unwrap_or_else(|| self.snapshot(commit));
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let depth = path.split('/').count() + 1; // up from the file's folder to the repo folder
        let target: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(etag);
        place_link(&target, &self.blob(etag), &link).map_err(io_err(&link))?;
        Ok(link)
    }
}

/// A relative symbolic link at `link` to `target`, created under a temporary name and renamed
/// over `link` so a reader never sees it missing or half-made. Where symbolic links cannot be
/// made (Windows without developer mode), the blob is copied, as `huggingface_hub` does.
fn place_link(target: &Path, blob: &Path, link: &Path) -> io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.link.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(target, &tmp);
    #[cfg(windows)]
    let made = std::os::windows::fs::symlink_file(target, &tmp);
    #[cfg(not(any(unix, windows)))]
    let made: io::Result<()> = Err(io::Error::new(io::ErrorKind::Unsupported, "no symbolic links"));
    match made {
        Ok(()) => {
            if let Err(e) = std::fs::rename(&tmp, link) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            bedside_io::sync_dir(dir)
        }
        Err(_) => {
            let _ = target;
            bedside_io::write_atomic_with(link, |w| {
                let mut f = std::fs::File::open(blob)?;
                io::copy(&mut f, w).map(|_| ())
            })
            .map_err(bedside_io::WriteError::into_io)
        }
    }
}

/// One repository in the cache, for `bedside cache ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedRepo {
    pub repo: String,
    /// Branch or tag → commit.
    pub refs: Vec<(String, String)>,
    pub snapshots: Vec<CachedSnapshot>,
    /// Bytes of complete blobs (shared between snapshots, counted once).
    pub bytes: u64,
    /// Bytes of unfinished downloads (`*.incomplete`), resumed by the next fetch.
    pub partial_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedSnapshot {
    pub commit: String,
    /// Path in the repository → size.
    pub files: Vec<(String, u64)>,
}

/// Every model repository in the cache at `cache_dir`, sorted by name.
pub fn list_cache(cache_dir: &Path) -> Result<Vec<CachedRepo>> {
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::HubError::Io { path: cache_dir.into(), err: e }),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(repo) = e.file_name().to_str().and_then(repo_from_folder) else {
            continue;
        };
        let c = RepoCache { dir: e.path() };
        let (mut bytes, mut partial_bytes) = (0, 0);
        for b in std::fs::read_dir(c.dir.join("blobs")).into_iter().flatten().flatten() {
            let len = b.metadata().map(|m| m.len()).unwrap_or(0);
            if b.file_name().to_string_lossy().ends_with(".incomplete") {
                partial_bytes += len;
            } else {
                bytes += len;
            }
        }
        let snapshots = c
            .commits()
            .into_iter()
            .map(|commit| {
                let files = c
                    .snapshot_files(&commit)
                    .into_iter()
                    .map(|f| {
                        let size = std::fs::metadata(c.snapshot(&commit).join(&f)).map(|m| m.len()).unwrap_or(0);
                        (f, size)
                    })
                    .collect();
                CachedSnapshot { commit, files }
            })
            .collect();
        out.push(CachedRepo { repo, refs: c.refs(), snapshots, bytes, partial_bytes });
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue; // temporaries
        }
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let path = e.path();
        // `metadata` follows the link: a link to a missing blob is not a file.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, &rel, out),
            Ok(m) if m.is_file() => out.push(rel),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders() {
        assert_eq!(repo_folder("org/name"), "models--org--name");
        assert_eq!(repo_from_folder("models--org--name").as_deref(), Some("org/name"));
        assert_eq!(repo_from_folder("datasets--org--name"), None);
        assert_eq!(repo_from_folder(".locks"), None);
    }

    #[test]
    fn links_refs_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let c = RepoCache::new(dir.path(), "org/name");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(c.dir.join("blobs")).unwrap();
        std::fs::write(c.blob("e1"), b"one").unwrap();
        std::fs::write(c.blob("e2"), b"two").unwrap();
        let a = c.link(commit, "config.json", "e1").unwrap();
        let b = c.link(commit, "sub/dir/m.gguf", "e2").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&b).unwrap(), b"two");
        #[cfg(unix)]
        {
            assert_eq!(std::fs::read_link(&a).unwrap(), PathBuf::from("../../blobs/e1"));
            assert_eq!(std::fs::read_link(&b).unwrap(), PathBuf::from("../../../../blobs/e2"));
        }
        // a link to a missing blob does not count as cached
        c.link(commit, "gone.bin", "e3").unwrap();
        assert_eq!(c.snapshot_files(commit), vec!["config.json", "sub/dir/m.gguf"]);
        assert_eq!(c.commit_for("main"), None);
        c.write_ref("main", commit).unwrap();
        c.write_ref("refs/pr/1", commit).unwrap();
        assert_eq!(std::fs::read_to_string(c.dir.join("refs/main")).unwrap(), commit, "no newline, as huggingface_hub writes it");
        assert_eq!(c.commit_for("main").as_deref(), Some(commit));
        assert_eq!(c.commit_for(commit).as_deref(), Some(commit));
        assert_eq!(c.refs().len(), 2);
        assert_eq!(c.commits(), vec![commit.to_string()]);
        assert!(c.link(commit, "../escape", "e1").is_err());
    }
}
