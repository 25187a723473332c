//! What `bedside serve` runs: a TOML file (`--config`) and command-line flags, checked before
//! anything listens.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Everything `bedside serve` can be told, with its defaults. Unknown TOML keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// A GGUF file, an HF model directory or a hub id (read from the local cache only).
    pub model: String,
    /// The base model's id in `/v1/models` and requests (default: the file or directory name).
    pub name: Option<String>,
    /// auto, cpu, cuda, cuda:N or metal.
    pub device: String,
    /// f32, f16 or bf16 for safetensors models (and with `dequantize`).
    pub dtype: Option<String>,
    pub dequantize: bool,
    /// f16 or f32: the key/value cache's element type (default: the activations'). f16 halves
    /// the memory each concurrent answer holds.
    pub kv_cache: Option<String>,
    /// A Jinja chat template to use instead of the model's own.
    pub chat_template: Option<PathBuf>,
    /// Adapters by name: `name = "DIR"` (a PEFT adapter directory, or a hub id already in the
    /// local cache: the server never downloads).
    pub adapters: BTreeMap<String, PathBuf>,
    /// Every subdirectory of this folder holding an `adapter_config.json` is an adapter named
    /// after the subdirectory (only those found at start; nothing outside the folder).
    pub adapter_root: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    /// API keys, one `label:key` per line; requests without one of them get 401.
    pub api_key_file: Option<PathBuf>,
    /// Serve without API keys on a non-loopback address (something in front authenticates).
    pub no_auth: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Requests generated at once (rows of the decode batch, prompts being processed included).
    pub parallel: usize,
    /// Requests waiting for a free row; more get 429.
    pub queue: usize,
    /// Positions (prompt + answer) one request may use (default and maximum: the model's).
    pub ctx: Option<usize>,
    /// The largest `max_tokens` a request may ask for (default: the context).
    pub max_tokens: Option<usize>,
    /// Positions of prompt processing per forward pass; a longer prompt is processed in pieces
    /// between decode steps.
    pub prefill_chunk: usize,
    pub max_body_bytes: usize,
    pub max_messages: usize,
    /// A request still generating after this long is stopped (504).
    pub timeout_secs: u64,
    /// A request body not received within this long gets 408.
    pub body_timeout_secs: u64,
    /// `text` or `json` (one JSON object per line, for a log collector).
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("log format `{s}`: expected text or json")),
        }
    }
}

pub const DEFAULT_MODEL: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.into(),
            name: None,
            device: "auto".into(),
            dtype: None,
            dequantize: false,
            kv_cache: None,
            chat_template: None,
            adapters: BTreeMap::new(),
            adapter_root: None,
            host: "127.0.0.1".into(),
            port: 8080,
            api_key_file: None,
            no_auth: false,
            tls_cert: None,
            tls_key: None,
            parallel: 8,
            queue: 64,
            ctx: None,
            max_tokens: None,
            prefill_chunk: bedside_generate::batch::DEFAULT_PREFILL_BUDGET,
            max_body_bytes: 1 << 20,
            max_messages: 256,
            timeout_secs: 600,
            body_timeout_secs: 30,
            log_format: LogFormat::Text,
        }
    }
}

impl ServeConfig {
    /// Read a TOML file (every key optional).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: not a valid serve config", path.display()))
    }

    /// Check everything that can be checked before loading the model; returns the address to
    /// listen on.
    pub fn validate(&self) -> Result<SocketAddr> {
        for (what, v) in
            [("parallel", self.parallel), ("queue", self.queue), ("prefill_chunk", self.prefill_chunk), ("max_messages", self.max_messages)]
        {
            if v == 0 {
                bail!("{what} must be at least 1");
            }
        }
        if self.max_body_bytes < 1024 {
            bail!("max_body_bytes must be at least 1024");
        }
        if self.timeout_secs == 0 || self.body_timeout_secs == 0 {
            bail!("timeout_secs and body_timeout_secs must be at least 1");
        }
        if matches!(self.ctx, Some(c) if c < 2) {
            bail!("ctx must be at least 2");
        }
        if matches!(self.max_tokens, Some(0)) {
            bail!("max_tokens must be at least 1");
        }
        if let Some(d) = &self.dtype {
            if !["f32", "f16", "bf16"].contains(&d.as_str()) {
                bail!("dtype `{d}`: expected f32, f16 or bf16");
            }
        }
        if let Some(k) = &self.kv_cache {
            if !["f32", "f16"].contains(&k.as_str()) {
                bail!("kv_cache `{k}`: expected f32 or f16");
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("TLS needs both a certificate (--tls-cert) and its key (--tls-key)");
        }
        if self.no_auth && self.api_key_file.is_some() {
            bail!("--no-auth and --api-key-file contradict each other: choose one");
        }
        for (name, spec) in &self.adapters {
            check_adapter_name(name)?;
            let dir = cached_adapter(name, spec)?;
            if !dir.join(bedside_lora::CONFIG_FILE).is_file() {
                bail!("adapter `{name}`: {} has no {}", dir.display(), bedside_lora::CONFIG_FILE);
            }
        }
        if let Some(root) = &self.adapter_root {
            if !root.is_dir() {
                bail!("adapter_root {}: not a directory", root.display());
            }
        }
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve the listening address {}:{}", self.host, self.port))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.host))?;
        if !is_loopback(addr.ip()) && self.api_key_file.is_none() && !self.no_auth {
            bail!(
                "refusing to listen on {} without API keys: anyone who can reach it could read and send patient messages. \
                 Give --api-key-file FILE, or --no-auth if something in front of bedside authenticates every request",
                self.host
            );
        }
        Ok(addr)
    }

    /// Every adapter to load: the named ones, then those found under `adapter_root`.
    pub fn adapter_dirs(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::with_capacity(self.adapters.len());
        for (name, spec) in &self.adapters {
            out.push((name.clone(), cached_adapter(name, spec)?));
        }
        if let Some(root) = &self.adapter_root {
            for (name, dir) in scan_adapter_root(root)? {
                if out.iter().any(|(n, _)| *n == name) {
                    bail!("adapter `{name}` is named in the config and also found under {}", root.display());
                }
                out.push((name, dir));
            }
        }
        Ok(out)
    }
}

/// A named adapter's directory: the path itself, or a hub id's snapshot from the local cache
/// (offline: a server never downloads).
fn cached_adapter(name: &str, spec: &Path) -> Result<PathBuf> {
    bedside_model::resolve_adapter(spec, true).with_context(|| format!("adapter `{name}`"))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Adapter (and model) names are ids in URLs and JSON: letters, digits, `.`, `_`, `-`, `:`.
pub fn check_adapter_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if !ok {
        bail!("adapter name `{name}`: use 1-128 letters, digits, '.', '_', '-' or ':', not starting with '.'");
    }
    Ok(())
}

/// Subdirectories of `root` with an adapter config, resolved inside `root` (a symlink that
/// leads out of it is refused).
pub fn scan_adapter_root(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let real_root = root.canonicalize().with_context(|| format!("adapter_root {}: cannot resolve", root.display()))?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&real_root).with_context(|| format!("adapter_root {}: cannot list", root.display()))? {
        let entry = entry.with_context(|| format!("adapter_root {}: cannot list", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().join(bedside_lora::CONFIG_FILE).is_file() {
            continue;
        }
        let real = entry.path().canonicalize().with_context(|| format!("{}: cannot resolve", entry.path().display()))?;
        if !real.starts_with(&real_root) || real.parent() != Some(real_root.as_path()) {
            bail!("adapter_root {}: `{name}` leads outside the folder ({}); adapters must live inside it", root.display(), real.display());
        }
        check_adapter_name(&name).with_context(|| format!("adapter_root {}", root.display()))?;
        out.push((name, real));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_without_keys() {
        let mut c = ServeConfig::default();
        assert!(c.validate().is_ok());
        c.host = "0.0.0.0".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("refusing to listen"), "{e}");
        c.no_auth = true;
        assert!(c.validate().is_ok());
        c.host = "::1".into();
        c.no_auth = false;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<ServeConfig>("prot = 80").is_err());
        let c: ServeConfig = toml::from_str("port = 9000\nparallel = 0").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("parallel"));
        let c: ServeConfig = toml::from_str("tls_cert = \"c.pem\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("tls-key"));
        let c: ServeConfig = toml::from_str("[adapters]\n\"../x\" = \"/tmp\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("adapter name"));
        let c: ServeConfig = toml::from_str("kv_cache = \"q8\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("kv_cache `q8`"));
        let c: ServeConfig = toml::from_str("kv_cache = \"f16\"").unwrap();
        c.validate().unwrap();
    }

    /// The shipped example states the defaults it claims.
    #[test]
    fn the_example_config_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/serve.toml");
        assert_eq!(ServeConfig::from_file(&path).unwrap(), ServeConfig::default());
    }

    #[test]
    fn adapter_root_lists_only_adapters_inside_it() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        for d in [root.path().join("tuned"), root.path().join("notes"), outside.path().join("evil")] {
            std::fs::create_dir_all(&d).unwrap();
        }
        std::fs::write(root.path().join("tuned").join(bedside_lora::CONFIG_FILE), "{}").unwrap();
        let found = scan_adapter_root(root.path()).unwrap();
        assert_eq!(found.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["tuned"]);
        #[cfg(unix)]
        {
            std::fs::write(outside.path().join("evil").join(bedside_lora::CONFIG_FILE), "{}").unwrap();
            std::os::unix::fs::symlink(outside.path().join("evil"), root.path().join("evil")).unwrap();
            let e = scan_adapter_root(root.path()).unwrap_err().to_string();
            assert!(e.contains("outside"), "{e}");
        }
    }
}
