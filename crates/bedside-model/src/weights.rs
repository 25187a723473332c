//! Reading weights from GGUF files and HF safetensors checkpoints behind one interface.
//!
//! The architecture asks for tensors by their HF module names and gets them in HF layout; the GGUF
//! reader maps names, slices stacked experts and undoes llama.cpp's q/k row permutation on the raw
//! quantized blocks (rows are whole blocks, so no requantization is needed).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, gguf_file, GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::embedding::Embedding;
use crate::error::{io_err, ModelError, Result};
use crate::linear::BaseWeight;

/// What the architecture needs from a checkpoint.
pub(crate) trait WeightSource {
    fn path(&self) -> &Path;
    /// A projection `[out, in]` by HF module name, e.g. `model.layers.0.self_attn.q_proj`.
    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<BaseWeight>;
    /// A 1-D tensor (norm weights) by HF module name, in f32.
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor>;
    /// The token embedding as a dense lookup table, plus the stored weight itself for a tied head.
    fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<(Embedding, BaseWeight)>;
    /// `lm_head`, or `None` when the checkpoint ties it to the embedding.
    fn lm_head(&mut self, vocab: usize, hidden: usize) -> Result<Option<BaseWeight>>;
    /// Precomputed per-frequency rope divisors (Llama 3.1 GGUFs), if present.
    fn rope_freqs(&mut self) -> Result<Option<Vec<f32>>>;
    /// dtype of activations and dense weights.
    fn dtype(&self) -> DType;
}

/// GGUF → HF q/k row order (inverse of llama.cpp's `permute`): HF row `h·d + t·d/2 + j` is GGUF
/// row `h·d + 2j + t`. Works on raw row bytes, whatever the quantization.
pub(crate) fn unpermute_rows_gguf_to_hf(raw: &[u8], rows: usize, n_head: usize) -> Vec<u8> {
    permute_rows(raw, rows, n_head, |h, d, t, j| (h * d + t * (d / 2) + j, h * d + 2 * j + t))
}

fn permute_rows(raw: &[u8], rows: usize, n_head: usize, map: impl Fn(usize, usize, usize, usize) -> (usize, usize)) -> Vec<u8> {
    let row_bytes = raw.len() / rows;
    let d = rows / n_head;
    let mut out = vec![0u8; raw.len()];
    for h in 0..n_head {
        for t in 0..2 {
            for j in 0..d / 2 {
                let (dst, src) = map(h, d, t, j);
                out[dst * row_bytes..(dst + 1) * row_bytes].copy_from_slice(&raw[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// Same permutation on a dense `[rows, cols]` tensor.
pub fn permute_tensor_rows(w: &Tensor, n_head: usize, to_hf: bool) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d = rows / n_head;
    let t =
        if to_hf { w.reshape((n_head, d / 2, 2, cols))?.transpose(1, 2)? } else { w.reshape((n_head, 2, d / 2, cols))?.transpose(1, 2)? };
    Ok(t.contiguous()?.reshape((rows, cols))?)
}

pub(crate) fn supported_ggml(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(dtype, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K | Q8K)
}

pub(crate) struct GgufSource {
    path: PathBuf,
    file: File,
    pub content: gguf_file::Content,
    device: Device,
    /// Dequantize every weight to this dtype (the f32 reference path, or training on a float base).
    dequantize: Option<DType>,
    n_head: usize,
    n_kv_head: usize,
}

impl GgufSource {
    pub fn open(path: &Path, device: &Device, dequantize: Option<DType>) -> Result<(Self, ModelConfig)> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let content = read_gguf_content(path, &mut file)?;
        check_gguf_tensors(path, &content, file_len)?;
        let cfg = ModelConfig::from_gguf(path, &content)?;
        check_layer_count(path, "metadata key 'llama.block_count'", cfg.num_layers, layers_on_disk(content.tensor_infos.keys(), "blk."))?;
        let src = GgufSource {
            path: path.into(),
            file,
            content,
            device: device.clone(),
            dequantize,
            n_head: cfg.num_heads,
            n_kv_head: cfg.num_kv_heads,
        };
        Ok((src, cfg))
    }

    fn info(&self, name: &str) -> Result<&gguf_file::TensorInfo> {
        self.content.tensor_infos.get(name).ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), tensor: name.into() })
    }

    fn read_raw(&mut self, name: &str, byte_range: Option<(usize, usize)>) -> Result<(GgmlDType, Vec<u8>)> {
        let info = self.info(name)?;
        let dtype = info.ggml_dtype;
        let total = tensor_bytes(info);
        let (off, len) = byte_range.unwrap_or((0, total));
        let start = self.content.tensor_data_offset + info.offset + off as u64;
        let mut buf = vec![0u8; len];
        self.file.seek(SeekFrom::Start(start)).map_err(io_err(&self.path))?;
        self.file.read_exact(&mut buf).map_err(io_err(&self.path))?;
        Ok((dtype, buf))
    }

    /// A 2-D matrix `[out, in]` (ggml `ne = [in, out]`), optionally one expert of a stacked
    /// `[n_expert, out, in]` tensor, with q/k rows put in HF order.
    fn matrix(&mut self, gname: &str, expert: Option<usize>, out: usize, inp: usize, unpermute: Option<usize>) -> Result<QTensor> {
        let info = self.info(gname)?;
        let dims = info.shape.dims().to_vec();
        let (expected, range) = match expert {
            None => (vec![out, inp], None),
            Some(e) => {
                let n_exp = dims.first().copied().unwrap_or(0);
                let expected = vec![n_exp, out, inp];
                if dims.len() == 3 && dims[1..] == [out, inp] && e < n_exp {
                    let per = tensor_bytes(info) / n_exp;
                    (expected, Some((e * per, per)))
                } else {
                    (expected, None)
                }
            }
        };
        if dims != expected {
            return Err(ModelError::Shape { path: self.path.clone(), tensor: gname.into(), expected, got: dims });
        }
        let (dtype, raw) = self.read_raw(gname, range)?;
        let raw = match unpermute {
            Some(n) => {
                if !out.is_multiple_of(n) || !(out / n).is_multiple_of(2) {
                    return Err(ModelError::Shape {
                        path: self.path.clone(),
                        tensor: gname.into(),
                        expected: vec![out, inp],
                        got: vec![out, inp],
                    });
                }
                unpermute_rows_gguf_to_hf(&raw, out, n)
            }
            None => raw,
        };
        qtensor_from_ggml(dtype, &raw, vec![out, inp], &self.device)
            .map_err(|e| ModelError::Gguf { path: self.path.clone(), msg: format!("tensor '{gname}': {e}") })
    }

    fn to_weight(&self, q: QTensor) -> Result<BaseWeight> {
        match self.dequantize {
            Some(dt) => Ok(BaseWeight::Dense(q.dequantize(&self.device)?.to_dtype(dt)?)),
            None => BaseWeight::quantized(q),
        }
    }
}

fn tensor_bytes(info: &gguf_file::TensorInfo) -> usize {
    checked_tensor_bytes(info).unwrap_or(usize::MAX)
}

/// Bytes of a tensor's data, or `None` when its shape overflows or is not whole blocks.
fn checked_tensor_bytes(info: &gguf_file::TensorInfo) -> Option<usize> {
    let elems = info.shape.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let block = info.ggml_dtype.block_size();
    if block == 0 || elems % block != 0 {
        return None;
    }
    (elems / block).checked_mul(info.ggml_dtype.type_size())
}

/// Every tensor of a GGUF header has a type bedside runs and lies inside the file (the header's
/// shapes and offsets are checked against the file's real size before anything is read or
/// allocated), so a truncated download names the first tensor that runs off the end. `info`
/// checks what loading checks.
pub(crate) fn check_gguf_tensors(path: &Path, content: &gguf_file::Content, file_len: u64) -> Result<()> {
    let mut infos: Vec<_> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    for (name, info) in infos {
        if !supported_ggml(info.ggml_dtype) {
            return Err(ModelError::UnsupportedDType { path: path.into(), tensor: name.clone(), dtype: format!("{:?}", info.ggml_dtype) });
        }
        let Some(bytes) = checked_tensor_bytes(info) else {
            return Err(ModelError::Gguf {
                path: path.into(),
                msg: format!(
                    "tensor '{name}' has shape {:?}, which is not a whole number of {:?} blocks or is impossibly large",
                    info.shape.dims(),
                    info.ggml_dtype
                ),
            });
        };
        let start = (content.tensor_data_offset as u128) + (info.offset as u128);
        let end = start + bytes as u128;
        if end > file_len as u128 {
            let clamp = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
            return Err(ModelError::Truncated { path: path.into(), tensor: name.clone(), start: clamp(start), end: clamp(end), file_len });
        }
    }
    Ok(())
}

/// One more than the highest layer index in tensor names `{prefix}{N}.…` (0 when none).
pub(crate) fn layers_on_disk<'a>(names: impl Iterator<Item = &'a String>, prefix: &str) -> usize {
    names.filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok()).map(|i| i.saturating_add(1)).max().unwrap_or(0)
}

/// The configured layer count is the one on disk: more would read missing tensors (or, for a
/// hostile count, size a huge allocation first); fewer would silently drop layers.
pub(crate) fn check_layer_count(path: &Path, field: &str, configured: usize, on_disk: usize) -> Result<()> {
    if configured != on_disk {
        return Err(ModelError::Config {
            path: path.into(),
            msg: format!("{field} says {configured} layers, but the weights hold {on_disk} (layers 0 to {})", on_disk.saturating_sub(1)),
        });
    }
    Ok(())
}

/// Rows of `t` read a block at a time as f32: the first non-finite value, as (row, value).
fn first_non_finite(t: &Tensor) -> Result<Option<(usize, f32)>> {
    let rows = t.dims().first().copied().unwrap_or(1).max(1);
    let per_row = t.elem_count() / rows;
    let block = ((1 << 20) / per_row.max(1)).max(1);
    let t = if t.rank() == 0 { t.reshape(1)? } else { t.clone() };
    for start in (0..rows).step_by(block) {
        let len = block.min(rows - start);
        let v = t.narrow(0, start, len)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Ok(Some((start + i / per_row.max(1), v[i])));
        }
    }
    Ok(None)
}

/// A weight the forward pass reads whole and early (norms, the embedding table) must be finite:
/// a NaN there turns every answer into nothing. A cheap check (one pass over a few vectors and
/// one table) that names the tensor and row.
fn check_finite(path: &Path, tensor: &str, t: &Tensor) -> Result<()> {
    match first_non_finite(t)? {
        None => Ok(()),
        Some((row, x)) => {
            Err(ModelError::Config { path: path.into(), msg: format!("tensor '{tensor}' holds a non-finite value ({x}) in row {row}") })
        }
    }
}

/// [`check_finite`] for a quantized table, dequantized a block of rows at a time.
fn check_finite_quantized(path: &Path, tensor: &str, q: &QTensor) -> Result<()> {
    let (n, k) = q.shape().dims2()?;
    let gd = q.dtype();
    let row_bytes = k / gd.block_size() * gd.type_size();
    let data = q.data()?;
    let block = ((1 << 20) / k.max(1)).max(1);
    for start in (0..n).step_by(block) {
        let len = block.min(n - start);
        let bytes = data.get(start * row_bytes..(start + len) * row_bytes).ok_or_else(|| ModelError::Gguf {
            path: path.into(),
            msg: format!("tensor '{tensor}': rows {start}..{} lie outside its data", start + len),
        })?;
        let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &Device::Cpu, gd)?;
        let rows = QTensor::new(storage, (len, k))?.dequantize(&Device::Cpu)?;
        if let Some((row, x)) = first_non_finite(&rows)? {
            return Err(ModelError::Config {
                path: path.into(),
                msg: format!("tensor '{tensor}' holds a non-finite value ({x}) in row {}", start + row),
            });
        }
    }
    Ok(())
}

/// Parse the GGUF header with errors that say which file is broken and how.
pub(crate) fn read_gguf_content(path: &Path, file: &mut File) -> Result<gguf_file::Content> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(io_err(path))?;
    if n < 4 {
        return Err(ModelError::Gguf { path: path.into(), msg: format!("file is only {n} bytes long") });
    }
    if &magic != b"GGUF" {
        return Err(ModelError::Gguf {
            path: path.into(),
            msg: format!("wrong magic {:?} (expected \"GGUF\")", String::from_utf8_lossy(&magic)),
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut reader = std::io::BufReader::new(file);
    gguf_file::Content::read(&mut reader)
        .map_err(|e| ModelError::Gguf { path: path.into(), msg: format!("header is truncated or corrupt: {e}") })
}

/// HF module name → GGUF tensor name, expert index and whether it holds permuted q/k rows.
fn gguf_name(name: &str) -> Option<(String, Option<usize>, Option<&'static str>)> {
    if name == "model.embed_tokens" {
        return Some(("token_embd.weight".into(), None, None));
    }
    if name == "model.norm" {
        return Some(("output_norm.weight".into(), None, None));
    }
    if name == "lm_head" {
        return Some(("output.weight".into(), None, None));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let i: usize = layer.parse().ok()?;
    let simple = |s: &str| Some((format!("blk.{i}.{s}.weight"), None, None));
    match rest {
        "input_layernorm" => simple("attn_norm"),
        "post_attention_layernorm" => simple("ffn_norm"),
        "self_attn.q_proj" => Some((format!("blk.{i}.attn_q.weight"), None, Some("q"))),
        "self_attn.k_proj" => Some((format!("blk.{i}.attn_k.weight"), None, Some("k"))),
        "self_attn.v_proj" => simple("attn_v"),
        "self_attn.o_proj" => simple("attn_output"),
        "mlp.gate_proj" => simple("ffn_gate"),
        "mlp.up_proj" => simple("ffn_up"),
        "mlp.down_proj" => simple("ffn_down"),
        "block_sparse_moe.gate" => simple("ffn_gate_inp"),
        _ => {
            let rest = rest.strip_prefix("block_sparse_moe.experts.")?;
            let (e, w) = rest.split_once('.')?;
            let e: usize = e.parse().ok()?;
            let base = match w {
                "w1" => "ffn_gate_exps",
                "w3" => "ffn_up_exps",
                "w2" => "ffn_down_exps",
                _ => return None,
            };
            Some((format!("blk.{i}.{base}.weight"), Some(e), None))
        }
    }
}

impl WeightSource for GgufSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn dtype(&self) -> DType {
        self.dequantize.unwrap_or(DType::F32)
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<BaseWeight> {
        let (gname, expert, perm) =
            gguf_name(name).ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        let unpermute = match perm {
            Some("q") => Some(self.n_head),
            Some(_) => Some(self.n_kv_head),
            None => None,
        };
        let q = match expert {
            // Older Mixtral GGUFs store one tensor per expert: blk.N.ffn_gate.E.weight.
            Some(e) if !self.content.tensor_infos.contains_key(&gname) => {
                let legacy = gname.replace("_exps.weight", &format!(".{e}.weight"));
                self.matrix(&legacy, None, out, inp, None)?
            }
            _ => self.matrix(&gname, expert, out, inp, unpermute)?,
        };
        self.to_weight(q)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        let (gname, _, _) = gguf_name(name).ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        let info = self.info(&gname)?;
        let dims = info.shape.dims().to_vec();
        if dims != [len] {
            return Err(ModelError::Shape { path: self.path.clone(), tensor: gname, expected: vec![len], got: dims });
        }
        let (dtype, raw) = self.read_raw(&gname, None)?;
        let q = qtensor_from_ggml(dtype, &raw, vec![len], &self.device)?;
        let t = q.dequantize(&self.device)?;
        check_finite(&self.path, &gname, &t)?;
        Ok(t.to_dtype(self.dtype())?)
    }

    fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<(Embedding, BaseWeight)> {
        let q = self.matrix("token_embd.weight", None, vocab, hidden, None)?;
        check_finite_quantized(&self.path, "token_embd.weight", &q)?;
        let stored = self.to_weight(q)?;
        // On the CPU a quantized table stays quantized and is shared with a tied head.
        let table = match &stored {
            BaseWeight::Quantized(q, _) if self.device.is_cpu() => Embedding::Quantized(q.clone()),
            BaseWeight::Quantized(q, _) => Embedding::Dense(q.dequantize(&self.device)?.to_dtype(self.dtype())?),
            BaseWeight::Dense(t) => Embedding::Dense(t.to_dtype(self.dtype())?),
        };
        Ok((table, stored))
    }

    fn lm_head(&mut self, vocab: usize, hidden: usize) -> Result<Option<BaseWeight>> {
        if !self.content.tensor_infos.contains_key("output.weight") {
            return Ok(None);
        }
        let q = self.matrix("output.weight", None, vocab, hidden, None)?;
        Ok(Some(self.to_weight(q)?))
    }

    fn rope_freqs(&mut self) -> Result<Option<Vec<f32>>> {
        let Some(info) = self.content.tensor_infos.get("rope_freqs.weight") else { return Ok(None) };
        let dims = info.shape.dims().to_vec();
        let (dtype, raw) = self.read_raw("rope_freqs.weight", None)?;
        let q = qtensor_from_ggml(dtype, &raw, dims, &Device::Cpu)?;
        Ok(Some(q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?))
    }
}

/// An HF checkpoint: one or more safetensors files, memory-mapped.
pub(crate) struct SafetensorsSource {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
    device: Device,
    dtype: DType,
}

impl SafetensorsSource {
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io_err(&index_path))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Config { path: index_path.clone(), msg: format!("malformed JSON: {e}") })?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Config {
                path: index_path.clone(),
                msg: "field 'weight_map' is missing or not an object".into(),
            })?;
            let mut shards: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io_err(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            all.sort();
            all
        };
        if paths.is_empty() {
            return Err(ModelError::Config { path: dir.into(), msg: "no *.safetensors weights in this directory".into() });
        }
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.into_iter().enumerate() {
            if !p.exists() {
                return Err(ModelError::Io {
                    path: p,
                    err: std::io::Error::new(std::io::ErrorKind::NotFound, "shard listed in the index is missing"),
                });
            }
            // Safety: the file is only read; bedside never writes checkpoints it has mapped.
            let st = unsafe { MmapedSafetensors::new(&p) }.map_err(|e| ModelError::Safetensors { path: p.clone(), msg: e.to_string() })?;
            for (name, _) in st.tensors() {
                index.insert(name, i);
            }
            files.push((p, st));
        }
        Ok(Self { dir: dir.into(), files, index, device: device.clone(), dtype })
    }

    /// One more than the highest `model.layers.N` in the checkpoint.
    pub fn layers_on_disk(&self) -> usize {
        layers_on_disk(self.index.keys(), "model.layers.")
    }

    fn tensor(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| ModelError::MissingTensor { path: self.dir.clone(), tensor: name.into() })?;
        let (path, st) = &self.files[i];
        let view = st.get(name).map_err(|e| ModelError::Safetensors { path: path.clone(), msg: e.to_string() })?;
        if view.shape() != expected {
            return Err(ModelError::Shape {
                path: path.clone(),
                tensor: name.into(),
                expected: expected.to_vec(),
                got: view.shape().to_vec(),
            });
        }
        let t = st
            .load(name, &self.device)
            .map_err(|e| ModelError::Safetensors { path: path.clone(), msg: format!("tensor '{name}': {e}") })?;
        Ok(t.to_dtype(self.dtype)?)
    }
}

impl WeightSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<BaseWeight> {
        Ok(BaseWeight::Dense(self.tensor(&format!("{name}.weight"), &[out, inp])?))
    }
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        let t = self.tensor(&format!("{name}.weight"), &[len])?;
        check_finite(&self.dir, &format!("{name}.weight"), &t)?;
        Ok(t)
    }
    fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<(Embedding, BaseWeight)> {
        let t = self.tensor("model.embed_tokens.weight", &[vocab, hidden])?;
        check_finite(&self.dir, "model.embed_tokens.weight", &t)?;
        Ok((Embedding::Dense(t.clone()), BaseWeight::Dense(t)))
    }
    fn lm_head(&mut self, vocab: usize, hidden: usize) -> Result<Option<BaseWeight>> {
        if !self.index.contains_key("lm_head.weight") {
            return Ok(None);
        }
        Ok(Some(BaseWeight::Dense(self.tensor("lm_head.weight", &[vocab, hidden])?)))
    }
    fn rope_freqs(&mut self) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }
}
