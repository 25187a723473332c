//! The hub's HTTP protocol, as `huggingface_hub` speaks it:
//!
//! - `GET {endpoint}/api/models/{repo}/revision/{revision}`: the commit (`sha`) and the files
//!   (`siblings`, with sizes when `blobs=true`).
//! - `HEAD {endpoint}/{repo}/resolve/{commit}/{path}`: `X-Repo-Commit`, the file's etag
//!   (`X-Linked-Etag` for LFS files, whose etag is their sha256, else `ETag`), its size
//!   (`X-Linked-Size` or `Content-Length`) and, for LFS files, a redirect to the CDN in `Location`.
//!   Relative redirects (a renamed repository) are followed; absolute ones are not.
//! - `GET` of that location, with `Range: bytes=N-` to resume (`206` and `Content-Range`; a `200`
//!   means the server ignored the range and the download starts over).
//!
//! The token goes only to the endpoint's own origin, never to the CDN a redirect names.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::env::{HubEnv, Token};
use crate::error::{io_err, HubError, Result};
use crate::progress::Progress;
use crate::select::Listed;

/// Attempts at one download before giving up (each resumes where the last stopped).
const ATTEMPTS: u32 = 5;
const MAX_REDIRECTS: usize = 5;
/// The repository API's answer is small; anything bigger is not the hub.
const MAX_API_BYTES: u64 = 64 << 20;

/// What the hub says about one file.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub commit: Option<String>,
    pub etag: String,
    pub size: Option<u64>,
    /// Where to GET the bytes (the CDN for LFS files).
    pub location: String,
}

/// What the hub says about a repository at a revision.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    pub commit: String,
    pub files: Vec<Listed>,
    pub gated: bool,
}

/// `{scheme}://{host[:port]}` of a URL, for the same-origin test.
fn origin(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

fn host_of(url: &str) -> &str {
    let o = origin(url);
    let h = o.find("://").map(|i| &o[i + 3..]).unwrap_or(o);
    let h = h.rsplit('@').next().unwrap_or(h);
    match h.rfind(':') {
        Some(i) if !h.ends_with(']') => &h[..i],
        _ => h,
    }
}

/// Percent-encoding of one path segment (RFC 3986 unreserved characters stay).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(p: &str) -> String {
    p.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` (either case) for a URL, unless `NO_PROXY` covers its
/// host (a comma list of host suffixes, or `*`).
fn proxy_for(url: &str) -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let no_proxy = var("NO_PROXY").or_else(|| var("no_proxy")).unwrap_or_default();
    let host = host_of(url).to_ascii_lowercase();
    for entry in no_proxy.split(',').map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase()).filter(|e| !e.is_empty()) {
        if entry == "*" || host == entry || host.ends_with(&format!(".{entry}")) {
            return None;
        }
    }
    let https = url.starts_with("https://");
    let names: &[&str] = if https {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    names.iter().find_map(|k| var(k))
}

pub struct Client {
    endpoint: String,
    token: Option<Token>,
    direct: ureq::Agent,
}

fn agent(proxy: Option<ureq::Proxy>) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("bedside/", env!("CARGO_PKG_VERSION")));
    if let Some(p) = proxy {
        b = b.proxy(p);
    }
    b.build()
}

/// The repository and file names in an error's subject.
pub struct Subject<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub file: Option<&'a str>,
}

impl Client {
    pub fn new(env: &HubEnv) -> Result<Client> {
        if !(env.endpoint.starts_with("http://") || env.endpoint.starts_with("https://")) {
            return Err(HubError::Protocol(format!("HF_ENDPOINT={} is not an http:// or https:// URL", env.endpoint)));
        }
        Ok(Client { endpoint: env.endpoint.clone(), token: env.token.clone(), direct: agent(None) })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn request(&self, method: &str, url: &str) -> Result<ureq::Request> {
        let agent = match proxy_for(url) {
            Some(p) => agent(Some(ureq::Proxy::new(&p).map_err(|e| HubError::Protocol(format!("proxy {p}: {e}")))?)),
            None => self.direct.clone(),
        };
        // Compressed bodies would make sizes and byte ranges those of the compressed stream.
        let mut r = agent.request(method, url).set("Accept-Encoding", "identity");
        if let Some(t) = &self.token {
            if origin(url) == origin(&self.endpoint) {
                r = r.set("Authorization", &format!("Bearer {}", t.value()));
            }
        }
        Ok(r)
    }

    /// Send, turning error statuses and transport failures into [`HubError`]s about `subject`.
    fn send(&self, method: &str, url: &str, range_from: u64, subject: &Subject) -> Result<ureq::Response> {
        let mut req = self.request(method, url)?;
        if range_from > 0 {
            req = req.set("Range", &format!("bytes={range_from}-"));
        }
        match req.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, resp)) => Err(self.status_error(status, &resp, url, subject)),
            Err(ureq::Error::Transport(t)) => Err(HubError::Connection { url: url.to_string(), msg: t.to_string() }),
        }
    }

    /// A follow-every-redirect GET (the token only where the origin is the endpoint's).
    fn get(&self, url: &str, range_from: u64, subject: &Subject) -> Result<ureq::Response> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let r = self.send("GET", &url, range_from, subject)?;
            if !(300..400).contains(&r.status()) {
                return Ok(r);
            }
            url = self.next_location(&url, &r)?;
        }
        Err(HubError::Protocol(format!("{url}: more than {MAX_REDIRECTS} redirects")))
    }

    fn next_location(&self, url: &str, r: &ureq::Response) -> Result<String> {
        let loc = r.header("Location").ok_or_else(|| HubError::Protocol(format!("{url}: HTTP {} without a Location", r.status())))?;
        Ok(if loc.starts_with('/') { format!("{}{loc}", origin(url)) } else { loc.to_string() })
    }

    fn status_error(&self, status: u16, resp: &ureq::Response, url: &str, s: &Subject) -> HubError {
        let code = resp.header("X-Error-Code").unwrap_or("").to_string();
        let server = resp.header("X-Error-Message").map(|m| format!(" (the hub says: {m})")).unwrap_or_default();
        let page = format!("{}/{}", self.endpoint, s.repo);
        let login = "log in with `huggingface-cli login` (or `hf auth login`), or set HF_TOKEN to a token from https://huggingface.co/settings/tokens";
        let what = match s.file {
            Some(f) => format!("{f} from {}@{}", s.repo, s.revision),
            None => format!("{}@{}", s.repo, s.revision),
        };
        let token_note = match &self.token {
            Some(t) => format!("a token from {} was sent", t.source),
            None => "no token was sent (HF_TOKEN is unset and there is no token file)".to_string(),
        };
        let invalid_token = resp.header("X-Error-Message").is_some_and(|m| m.contains("Invalid credentials"));
        let msg = if code == "GatedRepo" || (status == 401 && self.token.is_some() && invalid_token) {
            match (&self.token, status) {
                (None, _) => format!(
                    "{} is a gated repository and {token_note}: {login}, after accepting the model's licence on {page}{server}",
                    s.repo
                ),
                (Some(_), 401) => format!("{} refused the token ({token_note}): it may be invalid or expired; {login}{server}", s.repo),
                (Some(_), _) => format!(
                    "{} is gated and the token may not read it ({token_note}): accept the licence on {page} (access may need the authors' approval), and make sure the token can read gated repositories (fine-grained tokens need that permission){server}",
                    s.repo
                ),
            }
        } else if status == 401 || code == "RepoNotFound" {
            // The hub answers 401 for a missing repository as for a private or gated one.
            format!(
                "{} not found on {} ({token_note}); check the name, or if it is private or gated, {login} and accept its licence on {page}{server}",
                s.repo, self.endpoint
            )
        } else if status == 403 {
            format!("{} refused access to {what} ({token_note}); make sure the token may read it and that you accepted any licence on {page}{server}", self.endpoint)
        } else if status == 404 && code == "RevisionNotFound" {
            format!("{}: no revision (branch, tag or commit) named {}{server}", s.repo, s.revision)
        } else if status == 404 && s.file.is_some() {
            format!("{what}: the file is not in the repository{server}")
        } else if status == 404 {
            format!("{what} not found on {}{server}", self.endpoint)
        } else {
            return HubError::Http { url: url.to_string(), status, detail: server };
        };
        HubError::Access { status, msg }
    }

    /// The commit and file list of `repo` at `revision`.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        let url = format!("{}/api/models/{repo}/revision/{}?blobs=true", self.endpoint, encode_segment(revision));
        let subject = Subject { repo, revision, file: None };
        let r = self.get(&url, 0, &subject)?;
        #[derive(Deserialize)]
        struct Sibling {
            rfilename: String,
            size: Option<u64>,
        }
        #[derive(Deserialize)]
        struct Info {
            sha: Option<String>,
            #[serde(default)]
            siblings: Vec<Sibling>,
            #[serde(default)]
            gated: serde_json::Value,
        }
        let info: Info = serde_json::from_reader(r.into_reader().take(MAX_API_BYTES))
            .map_err(|e| HubError::Protocol(format!("{url}: not the hub's repository JSON: {e}")))?;
        let commit = info
            .sha
            .filter(|c| crate::spec::is_commit_hash(c))
            .ok_or_else(|| HubError::Protocol(format!("{url}: the answer has no commit hash ('sha')")))?;
        let files = info
            .siblings
            .into_iter()
            .filter(|s| crate::spec::repo_path_ok(&s.rfilename))
            .map(|s| Listed { path: s.rfilename, size: s.size })
            .collect();
        let gated = !matches!(info.gated, serde_json::Value::Null | serde_json::Value::Bool(false));
        Ok(RepoInfo { commit, files, gated })
    }

    /// Metadata of one file at a commit (a HEAD request; relative redirects followed).
    pub fn file_meta(&self, repo: &str, commit: &str, path: &str) -> Result<FileMeta> {
        let mut url = format!("{}/{repo}/resolve/{}/{}", self.endpoint, encode_segment(commit), encode_path(path));
        let subject = Subject { repo, revision: commit, file: Some(path) };
        for _ in 0..=MAX_REDIRECTS {
            let r = self.send("HEAD", &url, 0, &subject)?;
            let redirect = (300..400).contains(&r.status());
            let location = if redirect { self.next_location(&url, &r)? } else { url.clone() };
            if redirect && r.header("Location").is_some_and(|l| l.starts_with('/')) {
                url = location;
                continue;
            }
            let etag = r
                .header("X-Linked-Etag")
                .or_else(|| r.header("ETag"))
                .map(|e| e.trim().trim_start_matches("W/").trim_matches('"').to_string())
                .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                .ok_or_else(|| HubError::Protocol(format!("{url}: the hub sent no usable ETag for {path}")))?;
            let size = r
                .header("X-Linked-Size")
                .or_else(|| if redirect { None } else { r.header("Content-Length") })
                .and_then(|s| s.trim().parse().ok());
            let commit = r.header("X-Repo-Commit").map(str::to_string);
            return Ok(FileMeta { commit, etag, size, location });
        }
        Err(HubError::Protocol(format!("{url}: more than {MAX_REDIRECTS} redirects")))
    }

    /// Download `meta.location` into `partial`, resuming from what `partial` already holds and
    /// retrying (with resumption) when the connection drops. On return `partial` holds the whole
    /// file, synced; its length is checked against the hub's size.
    pub fn download(&self, meta: &FileMeta, partial: &Path, label: &str, subject: &Subject) -> Result<()> {
        let mut attempt = 0;
        let mut progress: Option<Progress> = None;
        loop {
            let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
            if let Some(size) = meta.size {
                if have == size && size > 0 {
                    break;
                }
            }
            let result = self.fetch_into(meta, partial, have, label, subject, &mut progress);
            match result {
                Ok(()) => match meta.size {
                    Some(size) if std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0) != size => {
                        attempt += 1;
                        if attempt >= ATTEMPTS {
                            return Err(HubError::Corrupt {
                                path: partial.into(),
                                msg: format!("{label}: the download keeps ending short of the {size} bytes the hub announced"),
                            });
                        }
                    }
                    _ => break,
                },
                Err(e @ HubError::Connection { .. }) if attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(file = label, attempt, "download interrupted ({e}); resuming");
                    std::thread::sleep(Duration::from_millis(250 << attempt.min(4)));
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(p) = progress {
            p.finish();
        }
        let f = OpenOptions::new().append(true).open(partial).map_err(io_err(partial))?;
        f.sync_all().map_err(io_err(partial))?;
        Ok(())
    }

    fn fetch_into(
        &self,
        meta: &FileMeta,
        partial: &Path,
        have: u64,
        label: &str,
        subject: &Subject,
        progress: &mut Option<Progress>,
    ) -> Result<()> {
        let r = match self.get(&meta.location, have, subject) {
            // The range starts at or past the end: what we hold is not a prefix of this file.
            Err(HubError::Http { status: 416, .. }) if have > 0 => {
                std::fs::write(partial, b"").map_err(io_err(partial))?;
                return Ok(());
            }
            other => other?,
        };
        let mut start = have;
        match r.status() {
            206 => {
                let range = r.header("Content-Range").unwrap_or("");
                let from = range.strip_prefix("bytes ").and_then(|s| s.split('-').next()).and_then(|s| s.trim().parse::<u64>().ok());
                if from != Some(have) {
                    return Err(HubError::Protocol(format!("{}: asked for bytes {have}- and got Content-Range {range:?}", meta.location)));
                }
            }
            200 => start = 0, // the server ignored the range: start over
            s => return Err(HubError::Protocol(format!("{}: unexpected HTTP {s}", meta.location))),
        }
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(partial).map_err(io_err(partial))?;
        file.set_len(start).map_err(io_err(partial))?;
        drop(file);
        let mut file = OpenOptions::new().append(true).open(partial).map_err(io_err(partial))?;
        let p = progress.get_or_insert_with(|| Progress::new(label, meta.size, start));
        p.set(start);
        let mut body = r.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut pos = start;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(HubError::Connection { url: meta.location.clone(), msg: format!("reading the body: {e}") }),
            };
            file.write_all(&buf[..n]).map_err(io_err(partial))?;
            pos += n as u64;
            p.set(pos);
            if meta.size.is_some_and(|s| pos > s) {
                return Err(HubError::Corrupt {
                    path: partial.into(),
                    msg: format!("{label}: more bytes than the {} the hub announced", meta.size.unwrap_or(0)),
                });
            }
        }
        file.flush().map_err(io_err(partial))?;
        Ok(())
    }
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(origin("https://huggingface.co/api/models/x"), "https://huggingface.co");
        assert_eq!(origin("http://127.0.0.1:8080/a/b"), "http://127.0.0.1:8080");
        assert_eq!(host_of("http://user:pw@127.0.0.1:8080/a"), "127.0.0.1");
        assert_eq!(host_of("https://cdn-lfs.hf.co/x?sig=1"), "cdn-lfs.hf.co");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("sub dir/m+1.gguf"), "sub%20dir/m%2B1.gguf");
    }
}
