//! Bearer API keys, each with a label that the logs name instead of the key.

use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The accepted keys, kept only as SHA-256 digests.
pub struct KeyRing {
    keys: Vec<(String, [u8; 32])>,
}

/// Keys shorter than this are refused: they could be guessed.
const MIN_KEY_LEN: usize = 16;

impl KeyRing {
    /// Read `label:key` lines; blank lines and lines starting with `#` are skipped. Errors name
    /// the line, never the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the API key file", path.display()))?;
        warn_if_readable_by_others(path);
        let ring = Self::parse(&text).with_context(|| format!("{}", path.display()))?;
        if ring.keys.is_empty() {
            bail!("{}: no keys (one `label:key` per line)", path.display());
        }
        Ok(ring)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = n + 1;
            let Some((label, key)) = line.split_once(':') else {
                bail!("line {lineno}: expected `label:key`");
            };
            let (label, key) = (label.trim(), key.trim());
            if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
                bail!("line {lineno}: the label must be letters, digits, '.', '_' or '-'");
            }
            if key.len() < MIN_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
                bail!("line {lineno} (label `{label}`): the key must be at least {MIN_KEY_LEN} printable characters without spaces");
            }
            if keys.iter().any(|(l, _)| l == label) {
                bail!("line {lineno}: label `{label}` is used twice");
            }
            let digest = digest(key);
            if keys.iter().any(|(_, d)| *d == digest) {
                bail!("line {lineno} (label `{label}`): the same key appears under another label");
            }
            keys.push((label.to_string(), digest));
        }
        Ok(Self { keys })
    }

    /// The label of `presented`, if it is one of the keys. Every key is compared, in constant
    /// time, whatever matches.
    pub fn verify(&self, presented: &str) -> Option<&str> {
        let d = digest(presented);
        let mut found = None;
        for (label, k) in &self.keys {
            if bool::from(k.ct_eq(&d)) {
                found = Some(label.as_str());
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "the API key file can be read by other users; chmod 600 it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_by_label() {
        let r = KeyRing::parse("# comment\nward-7:0123456789abcdefXYZ\n\nehr:sk-bedside-00000000000000\n").unwrap();
        assert_eq!(r.verify("0123456789abcdefXYZ"), Some("ward-7"));
        assert_eq!(r.verify("sk-bedside-00000000000000"), Some("ehr"));
        assert_eq!(r.verify("0123456789abcdefXY"), None);
        assert_eq!(r.verify(""), None);
    }

    #[test]
    fn bad_lines_name_the_line_not_the_key() {
        for (text, want) in [
            ("nolabel0123456789abcdef", "line 1"),
            ("a:short", "at least 16"),
            ("a:0123456789abcdef\na:fedcba9876543210", "used twice"),
            ("a:0123456789abcdef\nb:0123456789abcdef", "another label"),
            ("bad label:0123456789abcdef", "label must be"),
        ] {
            let e = KeyRing::parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("0123456789abcdef"), "the error shows the key: {e}");
        }
    }
}
