//! Which files of a repository a run needs: an HF model (config, tokenizer, weights, chat
//! template), one GGUF file picked by name or quant tag, or a PEFT adapter.

use crate::error::{HubError, Result};
use crate::spec::{Pick, RepoSpec};

/// A file in a repository listing, with its size when the listing says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: String,
    pub size: Option<u64>,
}

/// What a repository is fetched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A model to run: an HF checkpoint directory or one GGUF file.
    Model,
    /// A PEFT LoRA adapter directory.
    Adapter,
}

/// The files to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Needed; missing ones are an error.
    pub required: Vec<String>,
    /// Fetched when the repository has them.
    pub optional: Vec<String>,
    /// The GGUF file the run loads, or `None` for a directory (HF checkpoint or adapter).
    pub gguf: Option<String>,
    /// A sharded checkpoint's index: its `weight_map` names more required files.
    pub index: Option<String>,
}

/// Files an HF checkpoint directory may carry that bedside reads when present.
pub const HF_OPTIONAL: &[&str] =
    &["tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json"];
pub const ADAPTER_FILES: &[&str] = &["adapter_config.json", "adapter_model.safetensors"];
const INDEX: &str = "model.safetensors.index.json";

/// GGUF files that are not a model on their own (llama.cpp skips the same).
fn gguf_is_model(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    name.ends_with(".gguf") && !["mmproj", "imatrix", "mtp-", "eagle3-", "dflash-"].iter().any(|k| name.contains(k))
}

/// `(index, count)` of a split GGUF part (`…-00001-of-00003.gguf`).
fn split_part(path: &str) -> Option<(u32, u32)> {
    let stem = path.get(..path.len().checked_sub(5)?)?; // ".gguf"
    let tail = stem.get(stem.len().checked_sub(15)?..)?; // "-00001-of-00003"
    if !tail.starts_with('-') || tail.get(6..10)? != "-of-" {
        return None;
    }
    Some((tail.get(1..6)?.parse().ok()?, tail.get(10..15)?.parse().ok()?))
}

/// The quant tag of a GGUF file name: what follows its last `-` or `.` (llama.cpp's rule),
/// upper-cased, split suffix removed.
pub fn quant_of(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    let mut stem = name.get(..name.len().checked_sub(5)?)?;
    if split_part(name).is_some() {
        stem = &stem[..stem.len() - 15];
    }
    let tag = &stem[stem.rfind(['-', '.'])? + 1..];
    (!tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then(|| tag.to_ascii_uppercase())
}

/// Whether `tag` stands in `path` as a whole quant name: preceded by the start, `-`, `.` or `/`
/// and followed by `-` or `.` (so `Q4_K` is not `Q4_K_M`, nor `Q4_XS` part of `IQ4_XS`).
fn tag_matches(path: &str, tag: &str) -> bool {
    let p = path.to_ascii_uppercase().into_bytes();
    let t = tag.to_ascii_uppercase().into_bytes();
    if t.is_empty() || t.len() > p.len() {
        return false;
    }
    (0..=p.len() - t.len()).any(|start| {
        let end = start + t.len();
        p[start..end] == t[..]
            && (start == 0 || matches!(p[start - 1], b'-' | b'.' | b'/'))
            && matches!(p.get(end), Some(b'-') | Some(b'.'))
    })
}

fn human(size: Option<u64>) -> String {
    size.map(crate::human_bytes).unwrap_or_else(|| "size unknown".into())
}

/// The repository's model GGUF files, as a listing for an error message.
fn gguf_menu(files: &[Listed]) -> String {
    let ggufs: Vec<String> = files
        .iter()
        .filter(|f| gguf_is_model(&f.path) && split_part(&f.path).is_none_or(|(i, _)| i == 1))
        .map(|f| match quant_of(&f.path) {
            Some(q) => format!("{q} ({}, {})", f.path, human(f.size)),
            None => format!("{} ({})", f.path, human(f.size)),
        })
        .collect();
    if ggufs.is_empty() {
        "the repository has no GGUF model files".into()
    } else {
        format!("available: {}", ggufs.join(", "))
    }
}

fn refuse_split(label: &str, path: &str) -> Result<String> {
    match split_part(path) {
        Some((_, n)) if n > 1 => Err(HubError::Missing(format!(
            "{label}: {path} is part of a GGUF split into {n} files; bedside loads single-file GGUFs: merge the parts with llama.cpp's `llama-gguf-split --merge` and pass the merged file, or pick another quant"
        ))),
        _ => Ok(path.to_string()),
    }
}

/// The GGUF file `pick` names in `files` (llama.cpp's `-hf` rules: a file name matches
/// case-insensitively; a quant tag must match exactly one model file; without a pick, Q4_K_M,
/// then Q8_0, then the only model file).
pub fn pick_gguf(label: &str, files: &[Listed], pick: Option<&Pick>) -> Result<String> {
    let models: Vec<&Listed> = files.iter().filter(|f| gguf_is_model(&f.path)).collect();
    match pick {
        Some(Pick::File(name)) => {
            let hit = files.iter().find(|f| f.path == *name).or_else(|| files.iter().find(|f| f.path.eq_ignore_ascii_case(name)));
            match hit {
                Some(f) => refuse_split(label, &f.path),
                None => Err(HubError::Missing(format!("{label}: the repository has no file {name}; {}", gguf_menu(files)))),
            }
        }
        Some(Pick::Quant(tag)) => {
            let hits: Vec<&&Listed> =
                models.iter().filter(|f| tag_matches(&f.path, tag) && split_part(&f.path).is_none_or(|(i, _)| i == 1)).collect();
            match hits.as_slice() {
                [one] => refuse_split(label, &one.path),
                [] => Err(HubError::Missing(format!("{label}: no GGUF file with the quant tag {tag}; {}", gguf_menu(files)))),
                many => Err(HubError::Missing(format!(
                    "{label}: the quant tag {tag} matches {} files ({}); name one with org/name:FILE.gguf",
                    many.len(),
                    many.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
        None => {
            for tag in ["Q4_K_M", "Q8_0"] {
                if let Ok(p) = pick_gguf(label, files, Some(&Pick::Quant(tag.into()))) {
                    return Ok(p);
                }
            }
            match models.as_slice() {
                [one] => refuse_split(label, &one.path),
                [] => Err(HubError::Missing(format!(
                    "{label}: the repository has neither config.json (an HF checkpoint) nor a GGUF model file"
                ))),
                _ => Err(HubError::Missing(format!(
                    "{label}: several GGUF files and none is Q4_K_M or Q8_0; choose one with {label}:QUANT; {}",
                    gguf_menu(files)
                ))),
            }
        }
    }
}

/// The files a run needs from a repository with these `files`.
pub fn plan(spec: &RepoSpec, kind: Kind, files: &[Listed]) -> Result<Plan> {
    let label = spec.to_string();
    let has = |name: &str| files.iter().any(|f| f.path == name);
    let present = |names: &[&str]| names.iter().filter(|n| has(n)).map(|n| n.to_string()).collect::<Vec<_>>();
    match kind {
        Kind::Adapter => {
            if spec.pick.is_some() {
                return Err(HubError::Missing(format!("{label}: an adapter is a whole repository; drop the :FILE part")));
            }
            Ok(Plan { required: ADAPTER_FILES.iter().map(|s| s.to_string()).collect(), optional: vec![], gguf: None, index: None })
        }
        Kind::Model if spec.pick.is_some() || (!has("config.json") && files.iter().any(|f| gguf_is_model(&f.path))) => {
            let gguf = pick_gguf(&label, files, spec.pick.as_ref())?;
            Ok(Plan { required: vec![gguf.clone()], optional: vec![], gguf: Some(gguf), index: None })
        }
        Kind::Model => {
            let mut required = vec!["config.json".to_string(), "tokenizer.json".to_string()];
            let index = has(INDEX).then(|| INDEX.to_string());
            match &index {
                Some(i) => required.push(i.clone()),
                None => required.push("model.safetensors".to_string()),
            }
            Ok(Plan { required, optional: present(HF_OPTIONAL), gguf: None, index })
        }
    }
}

/// The shard files a `model.safetensors.index.json` names.
pub fn shards_of(index_path: &std::path::Path) -> Result<Vec<String>> {
    let corrupt = |msg: String| HubError::Corrupt { path: index_path.into(), msg };
    let text = std::fs::read_to_string(index_path).map_err(crate::error::io_err(index_path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(format!("malformed JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| corrupt("field 'weight_map' is missing".into()))?;
    let mut shards = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| corrupt(format!("weight_map['{tensor}'] is not a file name")))?;
        if !crate::spec::repo_path_ok(file) {
            return Err(corrupt(format!("weight_map['{tensor}'] = {file:?} is not a plain relative path")));
        }
        shards.push(file.to_string());
    }
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> Vec<Listed> {
        names.iter().map(|n| Listed { path: n.to_string(), size: Some(1000) }).collect()
    }

    fn quant(files: &[Listed], tag: &str) -> Result<String> {
        pick_gguf("o/r", files, Some(&Pick::Quant(tag.into())))
    }

    #[test]
    fn quant_tags_pick_one_file() {
        let files = listing(&[
            "README.md",
            "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
            "Llama-3.2-1B-Instruct-Q4_K.gguf",
            "Llama-3.2-1B-Instruct-IQ4_XS.gguf",
            "Llama-3.2-1B-Instruct.Q8_0.gguf",
            "Llama-3.2-1B-Instruct-UD-Q4_K_XL.gguf",
            "mmproj-Llama-3.2-1B-F16.gguf",
            "Llama-3.2-1B-Instruct-f16.gguf",
            "Q6_K/Llama-3.2-1B-Instruct-Q6_K-00001-of-00002.gguf",
            "Q6_K/Llama-3.2-1B-Instruct-Q6_K-00002-of-00002.gguf",
        ]);
        assert_eq!(quant(&files, "Q4_K_M").unwrap(), "Llama-3.2-1B-Instruct-Q4_K_M.gguf");
        assert_eq!(quant(&files, "q4_k_m").unwrap(), "Llama-3.2-1B-Instruct-Q4_K_M.gguf", "case-insensitive");
        assert_eq!(quant(&files, "Q4_K").unwrap(), "Llama-3.2-1B-Instruct-Q4_K.gguf", "a prefix of another tag is not that tag");
        assert_eq!(quant(&files, "Q8_0").unwrap(), "Llama-3.2-1B-Instruct.Q8_0.gguf");
        assert_eq!(quant(&files, "UD-Q4_K_XL").unwrap(), "Llama-3.2-1B-Instruct-UD-Q4_K_XL.gguf");
        assert_eq!(quant(&files, "F16").unwrap(), "Llama-3.2-1B-Instruct-f16.gguf", "mmproj files are not models");
        let e = quant(&files, "Q4_XS").unwrap_err().to_string();
        assert!(e.contains("no GGUF file with the quant tag Q4_XS") && e.contains("IQ4_XS (Llama-3.2-1B-Instruct-IQ4_XS.gguf"), "{e}");
        assert!(!e.contains("mmproj") && !e.contains("00002-of"), "{e}");
        let e = quant(&files, "Q6_K").unwrap_err().to_string();
        assert!(e.contains("split into 2 files") && e.contains("llama-gguf-split"), "{e}");
        let amb = listing(&["a-Q4_0.gguf", "b-chat-Q4_0.gguf"]);
        let e = quant(&amb, "Q4_0").unwrap_err().to_string();
        assert!(e.contains("matches 2 files") && e.contains("a-Q4_0.gguf") && e.contains("b-chat-Q4_0.gguf"), "{e}");
    }

    #[test]
    fn default_and_file_picks() {
        let files = listing(&["m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-F16.gguf"]);
        assert_eq!(pick_gguf("o/r", &files, None).unwrap(), "m-Q4_K_M.gguf");
        assert_eq!(pick_gguf("o/r", &listing(&["m-F16.gguf", "m-Q8_0.gguf"]), None).unwrap(), "m-Q8_0.gguf");
        assert_eq!(pick_gguf("o/r", &listing(&["only.gguf"]), None).unwrap(), "only.gguf");
        assert!(pick_gguf("o/r", &listing(&["m-F16.gguf", "m-F32.gguf"]), None).unwrap_err().to_string().contains("F32 (m-F32.gguf"));
        assert_eq!(pick_gguf("o/r", &files, Some(&Pick::File("M-f16.GGUF".into()))).unwrap(), "m-F16.gguf");
        assert!(pick_gguf("o/r", &files, Some(&Pick::File("x.gguf".into()))).is_err());
        assert_eq!(quant_of("dir/Model-UD-Q4_K_XL-00001-of-00003.gguf").as_deref(), Some("Q4_K_XL"));
    }

    #[test]
    fn plans() {
        let spec = RepoSpec::parse("o/r").unwrap();
        let hf = listing(&["config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json", "README.md", "x-Q4_0.gguf"]);
        let p = plan(&spec, Kind::Model, &hf).unwrap();
        assert_eq!(p.required, vec!["config.json", "tokenizer.json", "model.safetensors"]);
        assert_eq!(p.optional, vec!["tokenizer_config.json"]);
        assert_eq!(p.gguf, None, "a checkpoint with config.json is used as a directory");
        let sharded = listing(&["config.json", "tokenizer.json", INDEX, "model-00001-of-00002.safetensors"]);
        assert_eq!(plan(&spec, Kind::Model, &sharded).unwrap().index.as_deref(), Some(INDEX));
        let p = plan(&spec, Kind::Model, &listing(&["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf"])).unwrap();
        assert_eq!(p.gguf.as_deref(), Some("m-Q4_K_M.gguf"));
        let tagged = RepoSpec::parse("o/r:Q4_0").unwrap();
        assert_eq!(plan(&tagged, Kind::Model, &hf).unwrap().gguf.as_deref(), Some("x-Q4_0.gguf"));
        assert_eq!(plan(&spec, Kind::Adapter, &[]).unwrap().required, ADAPTER_FILES);
        assert!(plan(&tagged, Kind::Adapter, &[]).is_err());
    }

    #[test]
    fn hostile_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(INDEX);
        std::fs::write(&p, r#"{"weight_map": {"a": "../../../etc/passwd"}}"#).unwrap();
        assert!(shards_of(&p).unwrap_err().to_string().contains("not a plain relative path"));
        std::fs::write(&p, r#"{"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors", "c": "s1.safetensors"}}"#).unwrap();
        assert_eq!(shards_of(&p).unwrap(), vec!["s1.safetensors", "s2.safetensors"]);
    }
}
