//! The hub path for real, without a network: a loopback server speaking the hub's HTTP protocol
//! (bedside_testutil::fakehub) serves the tiny fixture models, reached through HF_ENDPOINT, and
//! the real `bedside` binary pulls, resumes, picks quant tags and revisions, meets a gated
//! repository, runs offline from the cache, and carries models through export/import.

use std::path::{Path, PathBuf};
use std::process::Command;

use bedside_testutil::fakehub::{commit_sha, FakeCommit, FakeFile, FakeHub, FakeRepo};

const TOKEN: &str = "hf_test_good_token";

/// Hub and cache variables a developer's shell may hold; each run gets only what the test sets.
const CLEARED: &[&str] = &[
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_HUB_CACHE",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "BEDSIDE_MODEL",
];

struct Site {
    hub: FakeHub,
    home: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Site {
    fn new(repos: Vec<FakeRepo>) -> Site {
        Site { hub: FakeHub::start(repos, TOKEN), home: tempfile::tempdir().unwrap() }
    }

    /// Run bedside with HF_ENDPOINT at the fake hub, HF_HOME in a temporary folder and the
    /// cache at `cache`; `env` adds variables.
    fn command(&self, cache: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bedside"));
        for k in CLEARED {
            c.env_remove(k);
        }
        c.env("HF_ENDPOINT", &self.hub.url).env("HF_HOME", self.home.path()).env("HF_HUB_CACHE", cache);
        for (k, v) in env {
            c.env(k, v);
        }
        c.args(args);
        c
    }

    fn run(&self, cache: &Path, env: &[(&str, &str)], args: &[&str]) -> Out {
        let out = self.command(cache, env, args).output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `tiny/llama` (HF checkpoint; `main` and tag `v1` with a different context length),
/// `tiny/gguf` (several quants), `tiny/gated` and `tiny/lora` (a PEFT adapter).
fn repos(fx: &Path) -> Vec<FakeRepo> {
    let hf_files = |config: Vec<u8>| {
        vec![
            FakeFile::new("config.json", config),
            FakeFile::new("model.safetensors", read(fx, "model.safetensors")),
            FakeFile::new("tokenizer.json", read(fx, "tokenizer.json")),
            FakeFile::new("tokenizer_config.json", read(fx, "tokenizer_config.json")),
            FakeFile::new("generation_config.json", read(fx, "generation_config.json")),
            FakeFile::new("README.md", b"# tiny llama\n".to_vec()),
        ]
    };
    let config = read(fx, "config.json");
    let v1_config =
        String::from_utf8(config.clone()).unwrap().replace("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 4321");
    assert!(v1_config.contains("4321"), "the fixture's config.json changed shape");
    let gguf = read(fx, "model-f32.gguf");
    let mut other = gguf.clone();
    other.extend_from_slice(b"another quant");
    vec![
        FakeRepo {
            id: "tiny/llama".into(),
            gated: false,
            commits: vec![
                FakeCommit { sha: commit_sha("llama main"), refs: vec!["main".into()], files: hf_files(config) },
                FakeCommit { sha: commit_sha("llama v1"), refs: vec!["v1".into()], files: hf_files(v1_config.into_bytes()) },
            ],
        },
        FakeRepo {
            id: "tiny/gguf".into(),
            gated: false,
            commits: vec![FakeCommit {
                sha: commit_sha("gguf main"),
                refs: vec!["main".into()],
                files: vec![
                    FakeFile::new("tiny-llama-F32.gguf", gguf.clone()),
                    FakeFile::new("tiny-llama-Q8_0.gguf", other),
                    FakeFile::new("tiny-llama-F16.gguf", b"f16".to_vec()),
                    FakeFile::new("tiny-llama-chat-F16.gguf", b"chat f16".to_vec()),
                    FakeFile::new("mmproj-tiny-Q4_K_M.gguf", b"projector".to_vec()),
                ],
            }],
        },
        FakeRepo {
            id: "tiny/gated".into(),
            gated: true,
            commits: vec![FakeCommit {
                sha: commit_sha("gated main"),
                refs: vec!["main".into()],
                files: vec![FakeFile::new("model-F32.gguf", gguf)],
            }],
        },
        FakeRepo {
            id: "tiny/lora".into(),
            gated: false,
            commits: vec![FakeCommit {
                sha: commit_sha("lora main"),
                refs: vec!["main".into()],
                files: vec![
                    FakeFile::new("adapter_config.json", read(&fx.join("lora"), "adapter_config.json")),
                    FakeFile::new("adapter_model.safetensors", read(&fx.join("lora"), "adapter_model.safetensors")),
                ],
            }],
        },
    ]
}

fn sha256(bytes: &[u8]) -> String {
    bedside_testutil::fakehub::sha256_hex(bytes)
}

fn setup() -> Option<(PathBuf, Site)> {
    let fx = bedside_testutil::fixture("tiny-llama")?;
    let site = Site::new(repos(&fx));
    Some((fx, site))
}

#[test]
fn pull_downloads_what_a_run_needs_and_offline_runs_from_the_cache() {
    let Some((fx, site)) = setup() else { return };
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let out = site.run(c, &[], &["pull", "tiny/llama", "--adapter", "tiny/lora"]);
    assert!(out.ok, "{}", out.stderr);
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        let line =
            out.stdout.lines().find(|l| l.contains(&format!(" {name} "))).unwrap_or_else(|| panic!("{name} not listed:\n{}", out.stdout));
        assert!(line.contains("downloaded") && line.contains(&sha256(&read(&fx, name))), "{line}");
    }
    let lora = out.stdout.lines().find(|l| l.contains("adapter_model.safetensors")).unwrap();
    assert!(lora.contains(&sha256(&read(&fx.join("lora"), "adapter_model.safetensors"))), "{lora}");
    assert!(out.stdout.contains("511.3 kB"), "sizes are printed:\n{}", out.stdout);
    assert!(!out.stdout.contains("README.md"), "only what a run needs is fetched");

    // The standard Hugging Face layout, which Python's huggingface_hub reads as its own.
    let repo = c.join("models--tiny--llama");
    let commit = commit_sha("llama main");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), commit);
    let weights = repo.join("snapshots").join(&commit).join("model.safetensors");
    let blob_name = sha256(&read(&fx, "model.safetensors"));
    #[cfg(unix)]
    assert_eq!(std::fs::read_link(&weights).unwrap(), Path::new("../../blobs").join(&blob_name), "LFS blobs are named by their sha256");
    assert_eq!(std::fs::read(&weights).unwrap(), read(&fx, "model.safetensors"));
    assert!(!repo.join("snapshots").join(&commit).join("README.md").exists());
    let config_link = std::fs::read_link(repo.join("snapshots").join(&commit).join("config.json")).unwrap();
    assert_eq!(config_link.file_name().unwrap().len(), 40, "small files are named by their git etag: {config_link:?}");

    // A second pull finds everything cached: one API call, no file requests.
    let before = site.hub.requests().len();
    let out = site.run(c, &[], &["pull", "tiny/llama"]);
    assert!(out.ok && !out.stdout.contains("downloaded") && out.stdout.contains("cached"), "{}\n{}", out.stdout, out.stderr);
    let new: Vec<_> = site.hub.requests()[before..].iter().map(|r| r.path.clone()).collect();
    assert_eq!(new, vec![format!("/api/models/tiny/llama/revision/main")], "{new:?}");

    // Offline (flag or HF_HUB_OFFLINE): every command reads the cache and nothing connects.
    let connections = site.hub.connections();
    let out = site.run(c, &[], &["info", "tiny/llama", "--offline", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()["model"]["config"]["max_position_embeddings"], 128);
    let out = site.run(c, &[("HF_HUB_OFFLINE", "1")], &["info", "tiny/llama"]);
    assert!(out.ok, "{}", out.stderr);
    let out = site.run(
        c,
        &[("HF_HUB_OFFLINE", "yes")],
        &["generate", "--model", "tiny/llama", "--adapter", "tiny/lora", "--prompt", "Hello", "--max-tokens", "2", "--temperature", "0"],
    );
    assert!(out.ok, "{}", out.stderr);
    let out = site.run(c, &[], &["cache", "ls"]);
    assert!(
        out.ok && out.stdout.contains("tiny/llama") && out.stdout.contains(&commit[..12]) && out.stdout.contains("tiny/lora"),
        "{}",
        out.stdout
    );
    let out = site.run(c, &[], &["info", "tiny/not-pulled", "--offline"]);
    assert!(
        !out.ok && out.stderr.contains("not in the hub cache") && out.stderr.contains("bedside pull tiny/not-pulled"),
        "{}",
        out.stderr
    );
    // `bedside serve` takes the same hub ids, from the cache alone even without --offline.
    // An adapter can be a hub id from the cache too.
    let models = serve_models(&site, c, "tiny/llama", &["--adapter", "kind=tiny/lora"]);
    assert_eq!(models["data"][0]["id"], "llama", "{models}");
    assert_eq!(models["data"][1]["id"], "kind", "{models}");
    assert_eq!(models["data"][1]["parent"], "llama", "{models}");
    assert_eq!(site.hub.connections(), connections, "an offline command or the server connected to the hub");
}

#[test]
fn partial_downloads_resume_with_a_range() {
    let Some((fx, site)) = setup() else { return };
    let gguf = read(&fx, "model-f32.gguf");
    let sha = sha256(&gguf);

    // Across runs: a partial blob left by an interrupted run is continued, not restarted.
    let cache = tempfile::tempdir().unwrap();
    let blobs = cache.path().join("models--tiny--gguf/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha}.incomplete")), &gguf[..100_000]).unwrap();
    let out = site.run(cache.path(), &[], &["pull", "tiny/gguf:F32"]);
    assert!(out.ok, "{}", out.stderr);
    let gets: Vec<_> = site.hub.requests().into_iter().filter(|r| r.path == format!("/cdn/{sha}") && r.method == "GET").collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), gguf, "the resumed file is whole");
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
    assert!(out.stdout.contains(&sha), "{}", out.stdout);

    // Within a run: the connection drops mid-file and the download resumes where it stopped.
    let cache = tempfile::tempdir().unwrap();
    site.hub.cut_next_download(50_000);
    let before = site.hub.requests().len();
    let out = site.run(cache.path(), &[], &["pull", "tiny/llama"]);
    assert!(out.ok, "{}", out.stderr);
    let cdn: Vec<_> = site.hub.requests()[before..].iter().filter(|r| r.path.starts_with("/cdn/")).cloned().collect();
    assert!(cdn.iter().any(|r| r.range.as_deref() == Some("bytes=50000-")), "{cdn:?}");
    let weights = cache.path().join("models--tiny--llama/snapshots").join(commit_sha("llama main")).join("model.safetensors");
    assert_eq!(std::fs::read(weights).unwrap(), read(&fx, "model.safetensors"));
}

#[test]
fn quant_tags_and_revisions() {
    let Some((_fx, site)) = setup() else { return };
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let out = site.run(c, &[], &["pull", "tiny/gguf:q8_0"]);
    assert!(out.ok && out.stdout.contains("tiny-llama-Q8_0.gguf") && !out.stdout.contains("F32.gguf"), "{}\n{}", out.stdout, out.stderr);
    let out = site.run(c, &[], &["pull", "tiny/gguf:Q4_K_M"]);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("no GGUF file with the quant tag Q4_K_M"), "{}", out.stderr);
    assert!(out.stderr.contains("F32 (tiny-llama-F32.gguf") && out.stderr.contains("Q8_0 (tiny-llama-Q8_0.gguf"), "{}", out.stderr);
    assert!(!out.stderr.contains("mmproj"), "a projector is not a model: {}", out.stderr);
    let out = site.run(c, &[], &["pull", "tiny/gguf:F16"]);
    assert!(!out.ok && out.stderr.contains("matches 2 files") && out.stderr.contains("tiny-llama-chat-F16.gguf"), "{}", out.stderr);
    // A quant tag and a file name load the same file.
    let out = site.run(c, &[], &["info", "tiny/gguf:F32", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["model"]["path"].as_str().unwrap().ends_with("tiny-llama-F32.gguf"), "{v}");
    assert!(site.run(c, &[], &["info", "tiny/gguf:tiny-llama-f32.gguf", "--offline"]).ok);

    // Revisions: a tag, then its commit hash offline.
    let v1 = commit_sha("llama v1");
    let out = site.run(c, &[], &["info", "tiny/llama@v1", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["model"]["config"]["max_position_embeddings"], 4321);
    assert_eq!(std::fs::read_to_string(c.join("models--tiny--llama/refs/v1")).unwrap(), v1);
    assert!(!c.join("models--tiny--llama/refs/main").exists(), "only the revision asked for is recorded");
    let out = site.run(c, &[], &["info", &format!("tiny/llama@{v1}"), "--offline"]);
    assert!(out.ok && out.stdout.contains("4321"), "{}", out.stderr);
    // The server names a hub revision's model with an id the API allows.
    let models = serve_models(&site, c, "tiny/llama@v1", &[]);
    assert_eq!(models["data"][0]["id"], "llama-v1", "{models}");
    let out = site.run(c, &[], &["info", "tiny/llama", "--offline"]);
    assert!(!out.ok && out.stderr.contains("not in the hub cache"), "main was never fetched: {}", out.stderr);
    let out = site.run(c, &[], &["pull", "tiny/llama@nope"]);
    assert!(!out.ok && out.stderr.contains("no revision") && out.stderr.contains("nope"), "{}", out.stderr);
}

#[test]
fn gated_repositories_need_a_token() {
    let Some((_fx, site)) = setup() else { return };
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let out = site.run(c, &[], &["pull", "tiny/gated"]);
    assert!(!out.ok);
    for want in [
        "tiny/gated",
        "gated",
        "no token was sent",
        "huggingface-cli login",
        "HF_TOKEN",
        "licence",
        &format!("{}/tiny/gated", site.hub.url),
    ] {
        assert!(out.stderr.contains(want), "missing {want:?}: {}", out.stderr);
    }
    let out = site.run(c, &[("HF_TOKEN", "hf_not_accepted")], &["pull", "tiny/gated"]);
    assert!(!out.ok && out.stderr.contains("accept the licence") && out.stderr.contains("HF_TOKEN"), "{}", out.stderr);
    let out = site.run(c, &[("HF_TOKEN", TOKEN)], &["pull", "tiny/gated"]);
    assert!(out.ok && out.stdout.contains("model-F32.gguf"), "{}", out.stderr);
    let resolve: Vec<_> = site.hub.requests().into_iter().filter(|r| r.path.contains("/resolve/")).collect();
    assert!(resolve.last().unwrap().authorization.as_deref() == Some(&format!("Bearer {TOKEN}")), "{resolve:?}");
    assert!(!out.stderr.contains(TOKEN) && !out.stdout.contains(TOKEN), "the token is never printed");

    // The token file `huggingface-cli login` writes works without HF_TOKEN.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(site.home.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let out = site.run(fresh.path(), &[], &["pull", "tiny/gated"]);
    assert!(out.ok, "{}", out.stderr);
    std::fs::remove_file(site.home.path().join("token")).unwrap();
}

#[test]
fn export_and_import_carry_a_model_and_refuse_corruption() {
    let Some((_fx, site)) = setup() else { return };
    let (online, media, airgap) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert!(site.run(online.path(), &[], &["pull", "tiny/llama", "--adapter", "tiny/lora"]).ok);
    let usb = media.path().join("usb");
    let out = site.run(online.path(), &[], &["cache", "export", s(&usb), "tiny/llama", "--adapter", "tiny/lora"]);
    assert!(out.ok, "{}", out.stderr);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(usb.join("bedside-export.json")).unwrap()).unwrap();
    assert_eq!(manifest["models"].as_array().unwrap().len(), 2, "{manifest}");

    // The air-gapped machine: no hub reachable, so any connection attempt would show.
    let connections = site.hub.connections();
    let out = site.run(airgap.path(), &[("HF_HUB_OFFLINE", "1")], &["cache", "import", s(&usb)]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("imported") && out.stdout.contains("model.safetensors"), "{}", out.stdout);
    for args in [
        vec!["info", "tiny/llama", "--offline"],
        vec![
            "generate",
            "--model",
            "tiny/llama",
            "--offline",
            "--adapter",
            "tiny/lora",
            "--prompt",
            "Hi",
            "--max-tokens",
            "2",
            "--temperature",
            "0",
        ],
        vec!["pull", "tiny/llama", "--offline"],
    ] {
        let out = site.run(airgap.path(), &[], &args);
        assert!(out.ok, "{args:?}: {}", out.stderr);
    }
    assert_eq!(site.hub.connections(), connections, "import and offline runs touched the network");

    // A flipped byte on the media: detected, named, and nothing enters the cache.
    let bad = media.path().join("bad");
    std::fs::create_dir_all(bad.join("blobs")).unwrap();
    for e in std::fs::read_dir(usb.join("blobs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join("blobs").join(e.file_name())).unwrap();
    }
    std::fs::copy(usb.join("bedside-export.json"), bad.join("bedside-export.json")).unwrap();
    let weights_sha = manifest["models"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap())
        .find(|f| f["path"] == "model.safetensors")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = bad.join("blobs").join(&weights_sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = site.run(fresh.path(), &[], &["cache", "import", s(&bad)]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("model.safetensors") && out.stderr.contains("corrupt") && out.stderr.contains("nothing was imported"),
        "{}",
        out.stderr
    );
    let left: Vec<_> = walk(fresh.path());
    assert!(left.is_empty(), "a failed import left {left:?}");
    let out = site.run(fresh.path(), &[], &["info", "tiny/llama", "--offline"]);
    assert!(!out.ok);
}

/// Start `bedside serve --model MODEL EXTRA…` on a free loopback port, wait until it has loaded
/// the model, and return its `GET /v1/models` answer; the server is killed either way.
fn serve_models(site: &Site, cache: &Path, model: &str, extra: &[&str]) -> serde_json::Value {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("stderr.log");
    let mut child = site
        .command(cache, &[], &[&["serve", "--port", "0", "--model", model], extra].concat())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let get = |addr: &str, path: &str| -> Option<(u16, String)> {
        let mut conn = std::net::TcpStream::connect(addr).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_string()))
    };
    let start = Instant::now();
    let result = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if start.elapsed() > Duration::from_secs(60) {
            break Err(format!("not ready within 60 s:\n{text}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("the server exited ({status}):\n{text}"));
        }
        let addr = text.find("http://127.0.0.1:").map(|i| {
            let rest = &text[i + "http://".len()..];
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).unwrap_or(rest.len());
            rest[..end].to_string()
        });
        if let Some(addr) = addr {
            if get(&addr, "/health").is_some_and(|(status, _)| status == 200) {
                break get(&addr, "/v1/models").ok_or_else(|| "GET /v1/models failed".to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    let (status, body) = result.unwrap_or_else(|e| panic!("bedside serve --model {model}: {e}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Every file (not folder) under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
