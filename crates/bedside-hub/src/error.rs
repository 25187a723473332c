use std::path::PathBuf;

/// What can go wrong getting a model from the hub or the cache. Every message names the
/// repository (and file) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Refused by the hub: gated, private, missing, bad token (401/403/404), with guidance.
    #[error("{msg}")]
    Access { status: u16, msg: String },
    /// Any other HTTP error status.
    #[error("{url}: HTTP {status}{detail}")]
    Http { url: String, status: u16, detail: String },
    /// The hub could not be reached at all.
    #[error("cannot reach {url}: {msg} (set HF_ENDPOINT for a mirror, or use --offline / HF_HUB_OFFLINE=1 with a filled cache)")]
    Connection { url: String, msg: String },
    /// Offline, and the cache does not have what is needed.
    #[error("{0}")]
    NotCached(String),
    /// The repository (or an export) lacks what is needed, or a quant tag matches nothing or
    /// more than one file.
    #[error("{0}")]
    Missing(String),
    /// Bytes that do not match their checksum or size, or a malformed manifest or response.
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// The hub answered with something bedside cannot use.
    #[error("{0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, HubError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |err| HubError::Io { path: path.to_path_buf(), err }
}
