//! What a model file holds, read from headers only (no weights loaded), for `bedside info`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::safetensors::MmapedSafetensors;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::hub::ModelLocation;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub format: &'static str,
    pub name: Option<String>,
    pub config: ModelConfig,
    pub parameters: usize,
    /// Number of tensors per storage type (F32, Q4_1, BF16, …).
    pub tensor_types: BTreeMap<String, usize>,
    /// GGUF `general.file_type` as llama.cpp names it, e.g. `MOSTLY_Q4_1`.
    pub file_type: Option<String>,
    pub bytes: u64,
}

fn gguf_file_type(n: u32) -> &'static str {
    match n {
        0 => "ALL_F32",
        1 => "MOSTLY_F16",
        2 => "MOSTLY_Q4_0",
        3 => "MOSTLY_Q4_1",
        7 => "MOSTLY_Q8_0",
        8 => "MOSTLY_Q5_0",
        9 => "MOSTLY_Q5_1",
        10 => "MOSTLY_Q2_K",
        11 => "MOSTLY_Q3_K_S",
        12 => "MOSTLY_Q3_K_M",
        13 => "MOSTLY_Q3_K_L",
        14 => "MOSTLY_Q4_K_S",
        15 => "MOSTLY_Q4_K_M",
        16 => "MOSTLY_Q5_K_S",
        17 => "MOSTLY_Q5_K_M",
        18 => "MOSTLY_Q6_K",
        32 => "MOSTLY_BF16",
        _ => "OTHER",
    }
}

/// Inspect a model; for GGUF also return the parsed header (tokenizer, template).
pub fn inspect(loc: &ModelLocation) -> Result<(ModelInfo, Option<gguf_file::Content>)> {
    match loc {
        ModelLocation::Gguf(p) => {
            let content = crate::read_gguf_header(p)?;
            // What loading checks, without reading the weights: every tensor's type and extent
            // against the file's real size, the hyperparameters, the layer count on disk.
            let file_len = std::fs::metadata(p).map_err(crate::error::io_err(p))?.len();
            crate::weights::check_gguf_tensors(p, &content, file_len)?;
            let config = ModelConfig::from_gguf(p, &content)?;
            let on_disk = crate::weights::layers_on_disk(content.tensor_infos.keys(), "blk.");
            crate::weights::check_layer_count(p, "metadata key 'llama.block_count'", config.num_layers, on_disk)?;
            let mut types = BTreeMap::new();
            let mut params = 0;
            for info in content.tensor_infos.values() {
                params += info.shape.elem_count();
                *types.entry(format!("{:?}", info.ggml_dtype).to_uppercase()).or_insert(0) += 1;
            }
            let md = &content.metadata;
            let info = ModelInfo {
                path: p.display().to_string(),
                format: "gguf",
                name: md.get("general.name").and_then(|v| v.to_string().ok().cloned()),
                config,
                parameters: params,
                tensor_types: types,
                file_type: md
                    .get("general.file_type")
                    .and_then(|v| v.to_u32().ok().or_else(|| v.to_i32().ok().map(|x| x as u32)))
                    .map(|n| gguf_file_type(n).to_string()),
                bytes: file_len,
            };
            Ok((info, Some(content)))
        }
        ModelLocation::HfDir(d) => Ok((inspect_hf(d)?, None)),
    }
}

fn inspect_hf(dir: &Path) -> Result<ModelInfo> {
    let cfg_path = dir.join("config.json");
    let config = ModelConfig::from_hf_file(&cfg_path)?;
    let mut names = Vec::new();
    let mut types = BTreeMap::new();
    let mut params = 0;
    let mut bytes = 0;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(crate::error::io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        bytes += std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        // Safety: read-only mapping of a file bedside does not modify.
        let st = unsafe { MmapedSafetensors::new(&f) }.map_err(|e| ModelError::Safetensors { path: f.clone(), msg: e.to_string() })?;
        for (name, view) in st.tensors() {
            params += view.shape().iter().product::<usize>();
            names.push(name);
            *types.entry(format!("{:?}", view.dtype()).to_uppercase()).or_insert(0) += 1;
        }
    }
    let on_disk = crate::weights::layers_on_disk(names.iter(), "model.layers.");
    crate::weights::check_layer_count(&cfg_path, "field 'num_hidden_layers'", config.num_layers, on_disk)?;
    Ok(ModelInfo {
        path: dir.display().to_string(),
        format: "safetensors",
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        config,
        parameters: params,
        tensor_types: types,
        file_type: None,
        bytes,
    })
}
