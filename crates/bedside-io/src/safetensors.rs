//! The header of a safetensors file, for every writer of one (PEFT adapters and checkpoints,
//! streamed merged models, empathy heads), so they all lay files out the same way.

use std::collections::BTreeMap;
use std::io;

/// One tensor of a safetensors file, in the order its data follows the header.
pub struct TensorEntry<'a> {
    pub name: &'a str,
    /// The safetensors dtype name: `F32`, `F16`, `BF16`, …
    pub dtype: &'a str,
    pub shape: &'a [usize],
    /// Bytes of its data.
    pub bytes: usize,
}

/// The header: the little-endian length, then the JSON object (keys sorted; each tensor's
/// `data_offsets` in the order of `entries`; `__metadata__` when given), padded with spaces to a
/// multiple of 8 bytes as the reference implementation pads it. The data is written after it,
/// tensor by tensor in the order of `entries`.
pub fn header(entries: &[TensorEntry], metadata: Option<&BTreeMap<String, String>>) -> io::Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    if let Some(m) = metadata {
        map.insert("__metadata__".into(), serde_json::json!(m));
    }
    let mut end = 0usize;
    for e in entries {
        let start = end;
        end = start
            .checked_add(e.bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("tensor '{}': data offsets overflow", e.name)))?;
        map.insert(e.name.to_string(), serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [start, end]}));
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map)).map_err(io::Error::other)?;
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_sorted_padded_and_offsets_follow_the_entries() {
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let entries = [
            TensorEntry { name: "z.weight", dtype: "F32", shape: &[2, 3], bytes: 24 },
            TensorEntry { name: "a.weight", dtype: "F16", shape: &[4], bytes: 8 },
        ];
        let h = header(&entries, Some(&meta)).unwrap();
        let len = u64::from_le_bytes(h[..8].try_into().unwrap()) as usize;
        assert_eq!(len, h.len() - 8);
        assert_eq!(len % 8, 0);
        let json = std::str::from_utf8(&h[8..]).unwrap();
        assert_eq!(
            json.trim_end(),
            r#"{"__metadata__":{"format":"pt"},"a.weight":{"data_offsets":[24,32],"dtype":"F16","shape":[4]},"z.weight":{"data_offsets":[0,24],"dtype":"F32","shape":[2,3]}}"#
        );
        assert!(json[json.trim_end().len()..].bytes().all(|b| b == b' '));
        let bare = header(&entries[1..], None).unwrap();
        assert!(!std::str::from_utf8(&bare[8..]).unwrap().contains("__metadata__"));
        let huge = [
            TensorEntry { name: "a", dtype: "F32", shape: &[1], bytes: usize::MAX },
            TensorEntry { name: "b", dtype: "F32", shape: &[1], bytes: 1 },
        ];
        assert!(header(&huge, None).is_err());
    }
}
