//! A loopback server that speaks the Hugging Face hub's HTTP protocol for a few files, so the
//! online path is tested without a network. What it answers follows the hub (as read in
//! `huggingface_hub`'s `file_download.py` / `_http.py` and hf-hub's client):
//!
//! - `GET /api/models/{repo}/revision/{rev}`: `{"id", "sha", "siblings": [{"rfilename", "size"}], "gated"}`.
//! - `HEAD|GET /{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`; small files answer 200 with a
//!   git-object `ETag` and the bytes; LFS files (`.safetensors`, `.gguf`) answer 302 to the CDN
//!   with `X-Linked-Etag` (their sha256) and `X-Linked-Size`.
//! - `GET /cdn/{sha256}`: the bytes, `Accept-Ranges: bytes`, `Range: bytes=N-` → 206 with
//!   `Content-Range`.
//! - Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`,
//!   `GatedRepo`) and `X-Error-Message`; a gated repository answers 401 without a token and 403
//!   with a token it does not accept; a missing repository answers 401.
//!
//! Every connection and request is recorded, so a test can assert that nothing connected.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

/// One file of a fake repository.
#[derive(Clone)]
pub struct FakeFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

impl FakeFile {
    pub fn new(path: &str, bytes: Vec<u8>) -> Self {
        FakeFile { path: path.to_string(), bytes }
    }

    /// Stored in LFS on the hub (served from the CDN, etag = sha256).
    pub fn is_lfs(&self) -> bool {
        self.path.ends_with(".safetensors") || self.path.ends_with(".gguf")
    }

    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(&self.bytes))
    }

    /// A 40-hex git-object-like id for small files' `ETag`.
    fn git_oid(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("blob {}\0", self.bytes.len()));
        h.update(&self.bytes);
        hex(&h.finalize())[..40].to_string()
    }
}

/// A commit of a fake repository and the refs (branches, tags) that point at it.
#[derive(Clone)]
pub struct FakeCommit {
    pub sha: String,
    pub refs: Vec<String>,
    pub files: Vec<FakeFile>,
}

#[derive(Clone)]
pub struct FakeRepo {
    pub id: String,
    pub gated: bool,
    pub commits: Vec<FakeCommit>,
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    connections: usize,
    requests: Vec<Seen>,
    /// Cut the body of the next CDN response after this many bytes (a dropped connection).
    cut_next: Option<usize>,
}

pub struct FakeHub {
    pub url: String,
    pub token: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A commit hash made from a label.
pub fn commit_sha(label: &str) -> String {
    hex(&Sha256::digest(label.as_bytes()))[..40].to_string()
}

impl FakeHub {
    /// Serve `repos` on 127.0.0.1 (a free port); `token` is the one token gated repositories accept.
    pub fn start(repos: Vec<FakeRepo>, token: &str) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let url = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let repos = Arc::new(repos);
        let (st, sp, u, tok) = (state.clone(), stop.clone(), url.clone(), token.to_string());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                st.lock().unwrap().connections += 1;
                let (st, repos, u, tok) = (st.clone(), repos.clone(), u.clone(), tok.clone());
                thread::spawn(move || {
                    let _ = serve(conn, &st, &repos, &u, &tok);
                });
            }
        });
        FakeHub { url, token: token.to_string(), state, stop, addr }
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The next CDN download sends its full headers but only `n` body bytes, then hangs up.
    pub fn cut_next_download(&self, n: usize) {
        self.state.lock().unwrap().cut_next = Some(n);
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), body: Vec::new() }
    }
    fn header(mut self, k: &str, v: impl ToString) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    fn error(status: u16, code: &str, msg: &str) -> Reply {
        let mut r =
            Reply::new(status).header("X-Error-Code", code).header("X-Error-Message", msg).header("Content-Type", "application/json");
        r.body = serde_json::json!({ "error": msg }).to_string().into_bytes();
        r
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(conn: TcpStream, state: &Mutex<State>, repos: &[FakeRepo], url: &str, token: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let cut = {
        let mut st = state.lock().unwrap();
        st.requests.push(Seen { method: method.clone(), path: path.clone(), range: range.clone(), authorization: auth.clone() });
        if path.starts_with("/cdn/") && method == "GET" {
            st.cut_next.take()
        } else {
            None
        }
    };
    let reply = route(&method, &path, range.as_deref(), auth.as_deref(), repos, url, token);
    let mut conn = conn;
    let mut head = format!("HTTP/1.1 {} {}\r\nConnection: close\r\n", reply.status, reason(reply.status));
    let has_len = reply.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let body = match cut {
            Some(n) => &reply.body[..n.min(reply.body.len())],
            None => &reply.body[..],
        };
        conn.write_all(body)?;
    }
    conn.flush()?;
    // Drain what the client may still send so closing does not reset the connection early.
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 256];
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    let _ = (&conn).read(&mut sink);
    Ok(())
}

fn find_commit<'a>(repo: &'a FakeRepo, rev: &str) -> Option<&'a FakeCommit> {
    repo.commits.iter().find(|c| c.sha == rev || c.refs.iter().any(|r| r == rev))
}

fn route(method: &str, path: &str, range: Option<&str>, auth: Option<&str>, repos: &[FakeRepo], url: &str, token: &str) -> Reply {
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = repos.iter().flat_map(|r| &r.commits).flat_map(|c| &c.files).find(|f| f.is_lfs() && f.sha256() == sha);
        let Some(f) = file else {
            return Reply::new(404);
        };
        let len = f.bytes.len();
        let base = Reply::new(200).header("Accept-Ranges", "bytes").header("ETag", format!("\"{sha}\""));
        let from = range.and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<usize>().ok());
        return match from {
            Some(n) if n >= len => Reply::new(416).header("Content-Range", format!("bytes */{len}")),
            Some(n) => {
                let mut r = base.header("Content-Range", format!("bytes {n}-{}/{len}", len - 1));
                r.status = 206;
                r.body = f.bytes[n..].to_vec();
                r
            }
            None => Reply { body: f.bytes.clone(), ..base },
        };
    }
    let authorized = |repo: &FakeRepo| -> Option<Reply> {
        if !repo.gated {
            return None;
        }
        match auth {
            None => Some(Reply::error(
                401,
                "GatedRepo",
                &format!(
                    "Access to model {} is restricted. You must have access to it and be authenticated to access it. Please log in.",
                    repo.id
                ),
            )),
            Some(a) if a == format!("Bearer {token}") => None,
            Some(_) => Some(Reply::error(
                403,
                "GatedRepo",
                &format!(
                    "Access to model {} is restricted and you are not in the authorized list. Visit {url}/{} to ask for access.",
                    repo.id, repo.id
                ),
            )),
        }
    };
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo_id, rev)) = rest.split_once("/revision/") else {
            return Reply::new(404);
        };
        let rev = decode(rev);
        let Some(repo) = repos.iter().find(|r| r.id == repo_id) else {
            return Reply::error(401, "RepoNotFound", "Repository not found");
        };
        let Some(c) = find_commit(repo, &rev) else {
            return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let siblings: Vec<serde_json::Value> =
            c.files.iter().map(|f| serde_json::json!({"rfilename": f.path, "size": f.bytes.len()})).collect();
        let body = serde_json::json!({
            "_id": "0", "id": repo.id, "modelId": repo.id, "sha": c.sha, "private": false,
            "gated": if repo.gated { serde_json::json!("manual") } else { serde_json::json!(false) },
            "siblings": siblings,
        });
        let mut r = Reply::new(200).header("Content-Type", "application/json");
        r.body = body.to_string().into_bytes();
        return r;
    }
    // /{org}/{name}/resolve/{rev}/{file...}
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segs.len() == 5 && segs[2] == "resolve" {
        let repo_id = format!("{}/{}", segs[0], segs[1]);
        let (rev, file) = (decode(segs[3]), decode(segs[4]));
        let Some(repo) = repos.iter().find(|r| r.id == repo_id) else {
            return Reply::error(401, "RepoNotFound", "Repository not found");
        };
        if let Some(denied) = authorized(repo) {
            return denied;
        }
        let Some(c) = find_commit(repo, &rev) else {
            return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let Some(f) = c.files.iter().find(|f| f.path == file) else {
            return Reply::error(404, "EntryNotFound", &format!("{file} does not exist on \"{rev}\""));
        };
        let r = Reply::new(200).header("X-Repo-Commit", &c.sha);
        if f.is_lfs() {
            let sha = f.sha256();
            return Reply { status: 302, ..r }
                .header("Location", format!("{url}/cdn/{sha}"))
                .header("X-Linked-Etag", format!("\"{sha}\""))
                .header("X-Linked-Size", f.bytes.len())
                .header("ETag", format!("\"{}\"", f.git_oid()));
        }
        let mut r = r.header("ETag", format!("\"{}\"", f.git_oid())).header("Content-Length", f.bytes.len());
        if method == "GET" {
            r.body = f.bytes.clone();
        }
        return r;
    }
    Reply::new(404)
}
