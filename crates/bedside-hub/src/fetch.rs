//! Getting what a run needs into the cache (online), or finding it there (offline).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::{repo_folder, RepoCache};
use crate::env::HubEnv;
use crate::error::{io_err, HubError, Result};
use crate::http::{sha256_file, Client, Subject};
use crate::select::{plan, shards_of, Kind, Listed, Plan};
use crate::spec::{is_commit_hash, RepoSpec};

/// One file of a fetched model.
#[derive(Debug, Clone)]
pub struct FetchedFile {
    /// Its path in the repository.
    pub name: String,
    /// Its path in the cache snapshot.
    pub path: PathBuf,
    pub size: u64,
    /// Downloaded now (else it was in the cache already).
    pub downloaded: bool,
    /// sha256 of the bytes, when this fetch read them (downloads are always hashed).
    pub sha256: Option<String>,
}

/// A model (or adapter) in the cache, ready to load.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub spec: RepoSpec,
    pub commit: String,
    /// `snapshots/<commit>`.
    pub snapshot: PathBuf,
    /// The GGUF file to load, or `None` for a directory (the snapshot).
    pub gguf: Option<PathBuf>,
    pub files: Vec<FetchedFile>,
}

impl Fetched {
    /// What a loader opens: the GGUF file or the snapshot directory.
    pub fn main_path(&self) -> &Path {
        self.gguf.as_deref().unwrap_or(&self.snapshot)
    }
}

/// The hub as configured by the environment, online or not.
#[derive(Debug, Clone)]
pub struct Hub {
    pub env: HubEnv,
    /// Read the cache only; no network code runs.
    pub offline: bool,
}

impl Hub {
    /// The environment's hub; `offline` (a command's `--offline`) or `HF_HUB_OFFLINE` keeps it
    /// off the network.
    pub fn from_env(offline: bool) -> Hub {
        let env = HubEnv::from_env();
        let offline = offline || env.offline;
        Hub { env, offline }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.env.cache_dir
    }

    /// Make sure everything `kind` needs from `spec` is in the cache, downloading what is missing
    /// unless offline.
    pub fn fetch(&self, spec: &RepoSpec, kind: Kind) -> Result<Fetched> {
        if self.offline {
            return self.read_cache(spec, kind, "offline mode (--offline or HF_HUB_OFFLINE)");
        }
        // A commit never changes: when the cache has all of it, there is nothing to ask the hub.
        if is_commit_hash(&spec.revision) {
            if let Ok(f) = self.read_cache(spec, kind, "cached") {
                return Ok(f);
            }
        }
        let client = Client::new(&self.env)?;
        let info = match client.repo_info(&spec.repo, &spec.revision) {
            Ok(info) => info,
            Err(e @ HubError::Connection { .. }) => {
                // As huggingface_hub does: without a network, a complete cached copy still works.
                return match self.read_cache(spec, kind, "the hub is unreachable") {
                    Ok(f) => {
                        tracing::warn!(repo = %spec.repo, "{e}; using the cached snapshot {}", f.commit);
                        Ok(f)
                    }
                    Err(_) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let repo = RepoCache::new(&self.env.cache_dir, &spec.repo);
        let plan = plan(spec, kind, &info.files)?;
        let listed = |name: &str| info.files.iter().find(|f| f.path == name);
        let absent: Vec<&String> = plan.required.iter().filter(|f| listed(f).is_none()).collect();
        if !absent.is_empty() {
            return Err(missing_in_repo(spec, kind, &absent, &info.files));
        }
        let mut getter = Getter { client: &client, repo: &repo, spec, commit: &info.commit, lock: None, cache_dir: &self.env.cache_dir };
        let mut files = Vec::new();
        for name in plan.required.iter().chain(&plan.optional) {
            files.push(getter.get(name, listed(name).and_then(|f| f.size))?);
        }
        if let Some(index) = &plan.index {
            let index_path = repo.snapshot(&info.commit).join(index);
            let shards = shards_of(&index_path)?;
            let absent: Vec<&String> = shards.iter().filter(|f| listed(f).is_none()).collect();
            if !absent.is_empty() {
                return Err(HubError::Missing(format!("{spec}: {index} names shards the repository does not have: {}", join(&absent))));
            }
            for shard in &shards {
                files.push(getter.get(shard, listed(shard).and_then(|f| f.size))?);
            }
        }
        repo.write_ref(&spec.revision, &info.commit)?;
        Ok(self.fetched(spec, &repo, &info.commit, &plan, files))
    }

    fn fetched(&self, spec: &RepoSpec, repo: &RepoCache, commit: &str, plan: &Plan, files: Vec<FetchedFile>) -> Fetched {
        let snapshot = repo.snapshot(commit);
        let gguf = plan.gguf.as_ref().map(|g| snapshot.join(g));
        Fetched { spec: spec.clone(), commit: commit.to_string(), snapshot, gguf, files }
    }

    /// Everything from the cache alone; `why` says why the network is not used.
    fn read_cache(&self, spec: &RepoSpec, kind: Kind, why: &str) -> Result<Fetched> {
        let repo = RepoCache::new(&self.env.cache_dir, &spec.repo);
        let cache = self.env.cache_dir.display();
        let hint = format!(
            "fetch it on a connected machine with `bedside pull {spec}`{} and bring it here with `bedside cache export DIR` / `bedside cache import DIR`, or pass a local path",
            if kind == Kind::Adapter { " (as --adapter)" } else { "" }
        );
        let Some(commit) = repo.commit_for(&spec.revision) else {
            return Err(HubError::NotCached(format!("{why}: {spec} is not in the hub cache {cache}; {hint}")));
        };
        let listing: Vec<Listed> = repo.snapshot_files(&commit).into_iter().map(|path| Listed { path, size: None }).collect();
        let plan = plan(spec, kind, &listing)
            .map_err(|e| HubError::NotCached(format!("{why}: {e} (looking only at the files in the cache {cache}); {hint}")))?;
        let has = |name: &str| listing.iter().any(|f| f.path == name);
        let mut missing: Vec<String> = plan.required.iter().filter(|f| !has(f)).cloned().collect();
        let mut names: Vec<String> = plan.required.iter().chain(&plan.optional).cloned().collect();
        if let Some(index) = plan.index.as_ref().filter(|i| has(i)) {
            let shards = shards_of(&repo.snapshot(&commit).join(index))?;
            missing.extend(shards.iter().filter(|s| !has(s)).cloned());
            names.extend(shards);
        }
        if !missing.is_empty() {
            return Err(HubError::NotCached(format!(
                "{why}: {spec} (commit {commit}) is not complete in the hub cache {cache}; missing: {}; {hint}",
                missing.join(", ")
            )));
        }
        let files = names
            .into_iter()
            .filter(|n| has(n))
            .map(|name| {
                let path = repo.snapshot(&commit).join(&name);
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                FetchedFile { name, path, size, downloaded: false, sha256: None }
            })
            .collect();
        Ok(self.fetched(spec, &repo, &commit, &plan, files))
    }
}

fn join(items: &[&String]) -> String {
    items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn missing_in_repo(spec: &RepoSpec, kind: Kind, absent: &[&String], files: &[Listed]) -> HubError {
    let why = match kind {
        Kind::Adapter => "a PEFT adapter needs adapter_config.json and adapter_model.safetensors".to_string(),
        Kind::Model
            if files.iter().any(|f| f.path.ends_with(".bin") || f.path.ends_with(".pth"))
                && absent.iter().any(|a| a.contains("safetensors")) =>
        {
            "the repository has only PyTorch pickle weights, which bedside never loads; use a repository with safetensors or GGUF files"
                .to_string()
        }
        Kind::Model => "an HF checkpoint needs config.json, tokenizer.json and safetensors weights".to_string(),
    };
    HubError::Missing(format!("{spec}: the repository has no {} ({why})", join(absent)))
}

/// Downloads files of one commit into the cache, holding the repository's download lock from
/// the first download on.
struct Getter<'a> {
    client: &'a Client,
    repo: &'a RepoCache,
    spec: &'a RepoSpec,
    commit: &'a str,
    cache_dir: &'a Path,
    lock: Option<bedside_io::DirLock>,
}

impl Getter<'_> {
    fn get(&mut self, name: &str, listed_size: Option<u64>) -> Result<FetchedFile> {
        let link = self.repo.snapshot(self.commit).join(name);
        if let Ok(m) = std::fs::metadata(&link) {
            if m.is_file() {
                return Ok(FetchedFile { name: name.to_string(), path: link, size: m.len(), downloaded: false, sha256: None });
            }
        }
        self.lock()?;
        let meta = self.client.file_meta(&self.spec.repo, self.commit, name)?;
        if let Some(c) = meta.commit.as_deref().filter(|c| is_commit_hash(c) && *c != self.commit) {
            return Err(HubError::Protocol(format!(
                "{}: asked for {name} at commit {} and the hub answered for commit {c}",
                self.spec, self.commit
            )));
        }
        let meta = crate::http::FileMeta { size: meta.size.or(listed_size), ..meta };
        let blob = self.repo.blob(&meta.etag);
        let mut sha256 = None;
        let downloaded = !blob.is_file();
        if downloaded {
            let blobs = self.repo.dir.join("blobs");
            std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
            let partial = blobs.join(format!("{}.incomplete", meta.etag));
            let label = format!("{} {name}", self.spec.repo);
            let subject = Subject { repo: &self.spec.repo, revision: &self.spec.revision, file: Some(name) };
            self.client.download(&meta, &partial, &label, &subject)?;
            let sum = sha256_file(&partial)?;
            // An LFS file's etag is its sha256: a mismatch is a corrupt transfer, not a new file.
            if meta.etag.len() == 64 && meta.etag.chars().all(|c| c.is_ascii_hexdigit()) && !meta.etag.eq_ignore_ascii_case(&sum) {
                let _ = std::fs::remove_file(&partial);
                return Err(HubError::Corrupt {
                    path: partial,
                    msg: format!(
                        "{}: downloaded {name} has sha256 {sum} but the hub says {}; the partial file was removed, run again",
                        self.spec, meta.etag
                    ),
                });
            }
            std::fs::rename(&partial, &blob).map_err(io_err(&blob))?;
            bedside_io::sync_dir(&blobs).map_err(io_err(&blobs))?;
            sha256 = Some(sum);
        }
        let path = self.repo.link(self.commit, name, &meta.etag)?;
        let size = std::fs::metadata(&path).map_err(io_err(&path))?.len();
        if downloaded {
            tracing::info!(repo = %self.spec.repo, file = name, size, "downloaded");
        }
        Ok(FetchedFile { name: name.to_string(), path, size, downloaded, sha256 })
    }

    /// One bedside process downloads a repository at a time; another waits (saying so) rather
    /// than writing the same partial file.
    fn lock(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let dir = self.cache_dir.join(".locks").join(repo_folder(&self.spec.repo));
        let mut said = false;
        loop {
            match bedside_io::DirLock::acquire(&dir, "a download of this repository") {
                Ok(l) => {
                    self.lock = Some(l);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !said {
                        eprintln!("waiting: {e}");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(HubError::Io { path: dir, err: e }),
            }
        }
    }
}
