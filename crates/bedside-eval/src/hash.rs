//! sha256 of bytes, files and adapter directories: the fingerprints that tie every cached answer
//! and every result to the exact model, adapters and settings that produced it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("{:x}", h.finalize())
}

/// Files above this size are hashed by their first 64 MiB and their length (labelled as such).
const FULL_HASH_LIMIT: u64 = 2 << 30;

/// sha256 of a file, streaming; for very large files, of its head and length.
pub(crate) fn file_hash(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let limit = if len > FULL_HASH_LIMIT { 64 << 20 } else { len };
    let mut read = 0u64;
    while read < limit {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let take = n.min((limit - read) as usize);
        h.update(&buf[..take]);
        read += take as u64;
    }
    if len > FULL_HASH_LIMIT {
        Ok(format!("sha256-head64M-len{len}:{:x}", h.finalize()))
    } else {
        Ok(format!("{:x}", h.finalize()))
    }
}

/// Hash of every regular file in a directory (sorted by name), or of the file itself.
pub(crate) fn path_hash(path: &Path) -> Result<String> {
    if path.is_file() {
        return file_hash(path);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let mut parts = String::new();
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        parts.push_str(&format!("{name}={}\n", file_hash(&p)?));
    }
    Ok(sha256_hex(parts.as_bytes()))
}

/// The first 8 bytes (little-endian) of sha256(`text`).
pub(crate) fn hash_u64(text: &str) -> u64 {
    let d = Sha256::digest(text.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_value() {
        // FIPS 180-2 example: sha256("abc").
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hash_u64("abc"), u64::from_le_bytes([0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea]));
    }
}
