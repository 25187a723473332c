//! Append-only JSONL caches (`generations.jsonl`, `nll.jsonl`, `judge.jsonl`) that make a run
//! resumable: every record is appended and flushed as soon as it exists, and a rerun skips the
//! keys already present. A torn last line (the process was killed mid-write) is dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Records that live in a cache file: `cache_key` identifies what was computed, `fingerprint`
/// the settings it was computed with (a record with another fingerprint is stale).
pub(crate) trait Cached {
    fn cache_key(&self) -> String;
    fn fingerprint(&self) -> &str;
}

pub(crate) struct JsonlCache<T> {
    path: PathBuf,
    file: File,
    records: HashMap<String, T>,
}

impl<T: Cached + Serialize + DeserializeOwned + Clone> JsonlCache<T> {
    /// Opens (creating if needed) and loads the cache. The last record per key wins.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut records = HashMap::new();
        if path.exists() {
            let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let complete = match bytes.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => 0,
            };
            if complete < bytes.len() {
                tracing::warn!(file = %path.display(), "dropping an incomplete last line (interrupted write)");
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(complete as u64)?;
                f.sync_all()?;
            }
            let text = String::from_utf8_lossy(&bytes[..complete]);
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let r: T =
                    serde_json::from_str(line).with_context(|| format!("{}:{}: not a record of this cache", path.display(), i + 1))?;
                records.insert(r.cache_key(), r);
            }
        }
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        Ok(Self { path: path.to_path_buf(), file, records })
    }

    /// A cached record for `key` made with `fingerprint`.
    pub(crate) fn get(&self, key: &str, fingerprint: &str) -> Option<&T> {
        self.records.get(key).filter(|r| r.fingerprint() == fingerprint)
    }

    /// The latest record for `key`, whatever its settings (after a run, the current one).
    pub(crate) fn get_any(&self, key: &str) -> Option<&T> {
        self.records.get(key)
    }

    pub(crate) fn contains(&self, key: &str, fingerprint: &str) -> bool {
        self.get(key, fingerprint).is_some()
    }

    /// Appends and flushes one record.
    pub(crate) fn put(&mut self, r: T) -> Result<()> {
        let mut line = serde_json::to_vec(&r)?;
        line.push(b'\n');
        self.file.write_all(&line).with_context(|| format!("{}: cannot append", self.path.display()))?;
        self.file.flush()?;
        self.records.insert(r.cache_key(), r);
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct R {
        k: String,
        f: String,
        v: u32,
    }
    impl Cached for R {
        fn cache_key(&self) -> String {
            self.k.clone()
        }
        fn fingerprint(&self) -> &str {
            &self.f
        }
    }

    #[test]
    fn torn_line_dropped_and_stale_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        {
            let mut c = JsonlCache::<R>::open(&p).unwrap();
            c.put(R { k: "a".into(), f: "x".into(), v: 1 }).unwrap();
            c.put(R { k: "b".into(), f: "x".into(), v: 2 }).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"k\":\"c\",\"f\":\"x\",\"v\"").unwrap();
        drop(f);
        let mut c = JsonlCache::<R>::open(&p).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.contains("a", "x"));
        assert!(!c.contains("a", "y"), "another fingerprint is stale");
        c.put(R { k: "c".into(), f: "x".into(), v: 3 }).unwrap();
        drop(c);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    }
}
