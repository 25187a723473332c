//! The Hugging Face environment, read the way `huggingface_hub` reads it, so a user who logged in
//! with `huggingface-cli login` (or set `HF_TOKEN`) and shares a cache with Python gets the same
//! token, the same cache and the same offline switch in bedside.

use std::fmt;
use std::path::PathBuf;

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// `huggingface_hub`'s `_is_true`: `1`, `ON`, `YES` or `TRUE`, in any case.
pub fn is_true(value: Option<&str>) -> bool {
    value.is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

/// A hub token and where it came from. Its value is never printed (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    /// `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN` or `the token file PATH`, for messages.
    pub source: String,
}

impl Token {
    pub(crate) fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(from {})", self.source)
    }
}

/// Everything bedside takes from the environment to reach the hub and its cache.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// `HF_ENDPOINT` without a trailing `/` (default <https://huggingface.co>).
    pub endpoint: String,
    /// `HF_HOME` (default `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`).
    pub hf_home: PathBuf,
    /// `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`; default `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Where a token file is looked for: `HF_TOKEN_PATH` (default `$HF_HOME/token`).
    pub token_path: PathBuf,
    /// `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`), else the token file.
    pub token: Option<Token>,
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is true.
    pub offline: bool,
}

impl HubEnv {
    /// Read the process environment.
    pub fn from_env() -> HubEnv {
        HubEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// Read variables through `get` (tests pass a map). An empty variable counts as unset.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> HubEnv {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let home = var("HOME").or_else(|| var("USERPROFILE")).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let expand = |v: String| -> PathBuf {
            match v.strip_prefix("~/").or_else(|| (v == "~").then_some("")) {
                Some(rest) => home.join(rest),
                None => PathBuf::from(v),
            }
        };
        let hf_home = match var("HF_HOME") {
            Some(v) => expand(v),
            None => var("XDG_CACHE_HOME").map(&expand).unwrap_or_else(|| home.join(".cache")).join("huggingface"),
        };
        let cache_dir = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")).map(&expand).unwrap_or_else(|| hf_home.join("hub"));
        let token_path = var("HF_TOKEN_PATH").map(&expand).unwrap_or_else(|| hf_home.join("token"));
        let from_var = |k: &str| var(k).map(|v| Token { value: v.trim().to_string(), source: k.to_string() });
        let token = from_var("HF_TOKEN").or_else(|| from_var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let text = std::fs::read_to_string(&token_path).ok()?;
            let value = text.trim();
            (!value.is_empty()).then(|| Token { value: value.to_string(), source: format!("the token file {}", token_path.display()) })
        });
        let endpoint =
            var("HF_ENDPOINT").map(|e| e.trim().trim_end_matches('/').to_string()).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let offline = is_true(get("HF_HUB_OFFLINE").as_deref()) || is_true(get("TRANSFORMERS_OFFLINE").as_deref());
        HubEnv { endpoint, hf_home, cache_dir, token_path, token, offline }
    }
}

/// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set to a true value.
pub fn offline_from_env() -> bool {
    HubEnv::from_env().offline
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HubEnv {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(e.endpoint, "https://huggingface.co");
        assert_eq!(e.hf_home, PathBuf::from("/home/u/.cache/huggingface"));
        assert_eq!(e.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(e.token_path, PathBuf::from("/home/u/.cache/huggingface/token"));
        assert!(e.token.is_none() && !e.offline);
        let e = env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(e.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    }

    #[test]
    fn variables_override_in_huggingface_hub_order() {
        let e = env(&[("HOME", "/h"), ("HF_HOME", "~/hf"), ("HUGGINGFACE_HUB_CACHE", "/old"), ("HF_ENDPOINT", "http://mirror:8080/")]);
        assert_eq!(e.hf_home, PathBuf::from("/h/hf"));
        assert_eq!(e.cache_dir, PathBuf::from("/old"), "the legacy variable still works");
        assert_eq!(e.endpoint, "http://mirror:8080");
        let e = env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/new"), ("HUGGINGFACE_HUB_CACHE", "/old")]);
        assert_eq!(e.cache_dir, PathBuf::from("/new"), "HF_HUB_CACHE wins over the legacy name");
        assert_eq!(e.token_path, PathBuf::from("/hf/token"));
    }

    #[test]
    fn offline_values() {
        for v in ["1", "true", "TRUE", "yes", "On", " on "] {
            assert!(env(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
        for v in ["0", "false", "no", "", "offline"] {
            assert!(!env(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
        assert!(env(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
    }

    #[test]
    fn token_from_variable_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("token"), "hf_from_file\n").unwrap();
        let e = env(&[("HF_HOME", home)]);
        let t = e.token.clone().unwrap();
        assert_eq!(t.value(), "hf_from_file");
        assert!(t.source.contains("token file"), "{}", t.source);
        assert!(!format!("{e:?}").contains("hf_from_file"), "Debug must not show the token");
        let e = env(&[("HF_HOME", home), ("HF_TOKEN", " hf_var ")]);
        assert_eq!(e.token.unwrap().value(), "hf_var");
        let e = env(&[("HF_HOME", home), ("HUGGING_FACE_HUB_TOKEN", "hf_legacy")]);
        assert_eq!(e.token.unwrap().source, "HUGGING_FACE_HUB_TOKEN");
        let other = dir.path().join("elsewhere");
        std::fs::write(&other, "hf_path").unwrap();
        let e = env(&[("HF_HOME", home), ("HF_TOKEN_PATH", other.to_str().unwrap())]);
        assert_eq!(e.token.unwrap().value(), "hf_path");
    }
}
