//! `org/name[@revision][:QUANT|:file.gguf]`: which repository, which revision, which file.

use std::fmt;

/// Which GGUF file of a repository to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// A file path in the repository (`:model-q4_k_m.gguf`, `:sub/dir/model.gguf`).
    File(String),
    /// A quantization tag (`:Q4_K_M`), matched against the repository's GGUF file names as
    /// llama.cpp's `-hf` does.
    Quant(String),
}

/// A parsed hub model spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit (default `main`).
    pub revision: String,
    pub pick: Option<Pick>,
}

impl fmt::Display for RepoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo)?;
        if self.revision != DEFAULT_REVISION {
            write!(f, "@{}", self.revision)?;
        }
        match &self.pick {
            Some(Pick::File(p)) | Some(Pick::Quant(p)) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

pub const DEFAULT_REVISION: &str = "main";

/// One part of a repository id: what the hub allows (letters, digits, `-`, `_`, `.`), not `.`/`..`.
fn repo_part_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && p != "."
        && p != ".."
        && !p.starts_with(['-', '.'])
        && !p.ends_with(['-', '.'])
        && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A branch or tag name (`main`, `v1.0`, `refs/pr/3`) or a commit hash.
pub fn revision_ok(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 256
        && !r.starts_with('/')
        && !r.ends_with('/')
        && r.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && r.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// A relative file path inside a repository: `/`-separated, no empty, `.` or `..` parts, no
/// backslashes or control characters (it becomes a path in the cache).
pub fn repo_path_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.starts_with('/')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && !p.chars().any(|c| c.is_control() || c == '\\' || c == ':')
}

fn quant_ok(q: &str) -> bool {
    !q.is_empty() && q.len() <= 64 && q.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Whether `s` is a 40-character lowercase hex commit hash.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

impl RepoSpec {
    /// Parse a spec, or `None` when `spec` does not have the shape of one (so a caller can say
    /// "no such file, and not a hub id").
    pub fn parse(spec: &str) -> Option<RepoSpec> {
        let (rest, pick) = match spec.split_once(':') {
            Some((r, p)) if p.to_ascii_lowercase().ends_with(".gguf") => (r, Some(Pick::File(p.to_string()))),
            Some((r, p)) => (r, Some(Pick::Quant(p.to_string()))),
            None => (spec, None),
        };
        match &pick {
            Some(Pick::File(f)) if !repo_path_ok(f) => return None,
            Some(Pick::Quant(q)) if !quant_ok(q) => return None,
            _ => {}
        }
        let (repo, revision) = match rest.split_once('@') {
            Some((r, v)) => (r, v.to_string()),
            None => (rest, DEFAULT_REVISION.to_string()),
        };
        if !revision_ok(&revision) {
            return None;
        }
        let mut parts = repo.split('/');
        let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        if !repo_part_ok(org) || !repo_part_ok(name) {
            return None;
        }
        Some(RepoSpec { repo: repo.to_string(), revision, pick })
    }

    /// The same repository and revision without a file pick (what an adapter spec must be).
    pub fn without_pick(&self) -> RepoSpec {
        RepoSpec { pick: None, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = RepoSpec::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!((s.repo.as_str(), s.revision.as_str(), s.pick.clone()), ("HuggingFaceTB/SmolLM2-135M-Instruct", "main", None));
        let s = RepoSpec::parse("meta-llama/Llama-3.1-8B@v1.0:model-q4.gguf").unwrap();
        assert_eq!((s.revision.as_str(), s.pick.clone()), ("v1.0", Some(Pick::File("model-q4.gguf".into()))));
        let s = RepoSpec::parse("bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M").unwrap();
        assert_eq!(s.pick, Some(Pick::Quant("Q4_K_M".into())));
        let s = RepoSpec::parse("org/name@refs/pr/3:sub/dir/M.GGUF").unwrap();
        assert_eq!((s.revision.as_str(), s.pick.clone()), ("refs/pr/3", Some(Pick::File("sub/dir/M.GGUF".into()))));
        assert_eq!(s.to_string(), "org/name@refs/pr/3:sub/dir/M.GGUF");
        assert_eq!(RepoSpec::parse("a/b:q8_0").unwrap().to_string(), "a/b:q8_0");
        for bad in [
            "just-a-name",
            "a/b/c",
            "../x",
            "./x",
            "org/name@",
            "org/name@../x",
            "org/name:",
            "org/name:../../etc/x.gguf",
            "org/name:/abs.gguf",
            "org/name:Q4 K",
            "org/.hidden",
            "-org/name",
            "/abs/path",
            "C:\\models\\x.gguf",
        ] {
            assert!(RepoSpec::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn commit_hashes() {
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("0123456789ABCDEF0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
    }
}
