//! PEFT adapter directories: `adapter_config.json` + `adapter_model.safetensors`, read and written
//! exactly as PEFT does, and attached to a [`Model`]'s projections.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use bedside_io::safetensors::TensorEntry;
use bedside_model::{BaseWeight, LoraBranch, Model};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::config::LoraConfig;
use crate::error::{io_err, LoraError, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PeftModel → LoraModel → HF model: every saved key starts with this.
pub const KEY_PREFIX: &str = "base_model.model.";

/// Which factor of a LoRA pair a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Factor {
    /// `lora_A.weight`, `[r, in]`.
    A,
    /// `lora_B.weight`, `[out, r]`.
    B,
}

/// The PEFT key of one factor of `module`'s LoRA pair, e.g.
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
pub fn peft_key(module: &str, f: Factor) -> String {
    let ab = match f {
        Factor::A => "A",
        Factor::B => "B",
    };
    format!("{KEY_PREFIX}{module}.lora_{ab}.weight")
}

/// Split a saved key into (HF module name, factor). Accepts keys with or without
/// `base_model.model.` and with or without a `.default` adapter-name segment, as mistral.rs does;
/// anything else (biases, DoRA magnitudes, embedding LoRA, full weights) is an error naming it.
pub fn parse_key(key: &str) -> std::result::Result<(String, Factor), String> {
    let k = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    let k = k.strip_suffix(".weight").ok_or_else(|| unsupported(key))?;
    let k = k.strip_suffix(".default").unwrap_or(k);
    let (module, f) = if let Some(m) = k.strip_suffix(".lora_A") {
        (m, Factor::A)
    } else if let Some(m) = k.strip_suffix(".lora_B") {
        (m, Factor::B)
    } else {
        return Err(unsupported(key));
    };
    if module.is_empty() {
        return Err(unsupported(key));
    }
    Ok((module.to_string(), f))
}

fn unsupported(key: &str) -> String {
    let what = if key.contains("lora_magnitude_vector") {
        " (DoRA is not supported)"
    } else if key.contains("lora_embedding") {
        " (embedding LoRA is not supported)"
    } else if key.ends_with(".bias") {
        " (bias tensors are not supported; train with bias=\"none\")"
    } else {
        " (only <module>.lora_A.weight / <module>.lora_B.weight are supported; no modules_to_save)"
    };
    format!("tensor '{key}' is not a LoRA factor{what}")
}

/// A PEFT adapter read from disk. `tensors` are keyed by canonical PEFT key
/// (`base_model.model.<module>.lora_{A,B}.weight`) in the dtype they were stored in.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: LoraConfig,
    pub tensors: BTreeMap<String, Tensor>,
}

/// One module's pair of factors.
#[derive(Debug, Clone)]
pub struct LoraPair<'a> {
    pub module: String,
    /// `[r, in]`
    pub a: &'a Tensor,
    /// `[out, r]`
    pub b: &'a Tensor,
}

impl LoraPair<'_> {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
}

impl Adapter {
    /// Module pairs in key order (checked complete by [`load_peft`]).
    pub fn pairs(&self) -> Vec<LoraPair<'_>> {
        let mut out = Vec::new();
        for (k, a) in &self.tensors {
            if let Ok((module, Factor::A)) = parse_key(k) {
                if let Some(b) = self.tensors.get(&peft_key(&module, Factor::B)) {
                    out.push(LoraPair { module, a, b });
                }
            }
        }
        out
    }

    /// Number of trainable parameters (every element of every factor).
    pub fn param_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }

    /// `scale · B·A`, `[out, in]` in f32: what merging adds to `module`'s weight.
    pub fn delta(&self, module: &str) -> Result<Option<Tensor>> {
        let (Some(a), Some(b)) = (self.tensors.get(&peft_key(module, Factor::A)), self.tensors.get(&peft_key(module, Factor::B))) else {
            return Ok(None);
        };
        let d = b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?;
        Ok(Some((d * self.config.scale_for(module))?))
    }
}

/// Read a PEFT adapter directory, checking every key, pairing and rank.
pub fn load_peft(dir: &Path, device: &Device) -> Result<Adapter> {
    if !dir.is_dir() {
        let msg = if dir.exists() {
            "is not a directory; pass the adapter directory (holding adapter_config.json and adapter_model.safetensors)"
        } else {
            "adapter directory does not exist"
        };
        return Err(LoraError::Invalid { path: dir.into(), msg: msg.into() });
    }
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(LoraError::Invalid {
            path: cfg_path,
            msg: "missing: a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors".into(),
        });
    }
    let config = LoraConfig::from_file(&cfg_path)?;
    let w_path = dir.join(WEIGHTS_FILE);
    if !w_path.is_file() {
        let msg = if dir.join("adapter_model.bin").exists() {
            "missing; the directory has only adapter_model.bin (a Python pickle, which bedside never loads): re-save it with safe_serialization=True"
        } else {
            "missing: a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors"
        };
        return Err(LoraError::Invalid { path: w_path, msg: msg.into() });
    }
    let bytes = std::fs::read(&w_path).map_err(io_err(&w_path))?;
    let raw = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| LoraError::Invalid { path: w_path.clone(), msg: format!("not a valid safetensors file: {e}") })?;
    let tensors = check_tensors(&w_path, &config, raw)?;
    Ok(Adapter { config, tensors })
}

fn check_tensors(path: &Path, config: &LoraConfig, raw: HashMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let err = |msg: String| LoraError::Invalid { path: path.into(), msg };
    if raw.is_empty() {
        return Err(err("holds no tensors".into()));
    }
    let mut tensors = BTreeMap::new();
    // In key order, so the error a broken file gives is always the same one.
    let mut raw: Vec<(String, Tensor)> = raw.into_iter().collect();
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, t) in raw {
        let (module, f) = parse_key(&key).map_err(err)?;
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(err(format!("tensor '{key}' has dtype {:?}; LoRA factors must be F32, F16 or BF16", t.dtype())));
        }
        if t.rank() != 2 {
            return Err(err(format!("tensor '{key}' has shape {:?}; LoRA factors are 2-D", t.dims())));
        }
        // PEFT saves factors only for modules its config targets; anything else is an adapter
        // of some other shape (or a tampered file) that must not be applied as if it were this.
        if !config.target_modules.is_empty() && !config.matches(&module) {
            return Err(err(format!(
                "tensor '{key}' is for module '{module}', which adapter_config.json's target_modules ({}) does not include",
                config.target_modules.join(", ")
            )));
        }
        if let Some((i, x)) = first_non_finite(&t)? {
            return Err(err(format!("tensor '{key}' holds a non-finite value ({x}) at element {i}")));
        }
        let canon = peft_key(&module, f);
        if tensors.insert(canon.clone(), t).is_some() {
            return Err(err(format!("tensor '{key}' appears twice (as '{canon}' under another spelling)")));
        }
    }
    for (key, t) in &tensors {
        let (module, f) = parse_key(key).map_err(err)?;
        let other = match f {
            Factor::A => Factor::B,
            Factor::B => Factor::A,
        };
        let other_key = peft_key(&module, other);
        let Some(o) = tensors.get(&other_key) else {
            return Err(err(format!("tensor '{key}' has no partner '{other_key}'")));
        };
        if f == Factor::A {
            let r = t.dims()[0];
            if o.dims()[1] != r {
                return Err(err(format!(
                    "tensor '{other_key}' has shape {:?} but '{key}' has shape {:?}: lora_B's columns must equal lora_A's rows (the rank)",
                    o.dims(),
                    t.dims()
                )));
            }
            let want = config.rank_for(&module);
            if r != want {
                return Err(err(format!("tensor '{key}' has rank {r} but adapter_config.json gives module '{module}' rank {want}")));
            }
            // The largest element B·A can reach, times the scaling: finite factors whose product
            // overflows (1e30 · 1e30) would still turn the model into NaN.
            let bound = update_bound(t, o, config.scale_for(&module))?;
            if !bound.is_finite() || bound > MAX_UPDATE {
                return Err(err(format!(
                    "module '{module}': its factors can add up to {bound:e} to a weight (scaling {} × rank {r} × max |lora_B| × max |lora_A|); a trained adapter adds well under 1, so these are not usable values",
                    config.scale_for(&module)
                )));
            }
        }
    }
    Ok(tensors)
}

/// Largest per-element update (`r · max|B| · max|A| · |scale|`) an adapter may make to a base
/// weight. Trained adapters stay far below 1 (base weights are of order 0.1); an adapter or a
/// weight past this bound is broken or hostile, and would drive the model's values to NaN.
pub const MAX_UPDATE: f64 = 1e4;

/// Largest |element| of a tensor, in f64.
fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F32)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64)
}

/// The first non-finite element of `t` (flat index and value).
fn first_non_finite(t: &Tensor) -> Result<Option<(usize, f32)>> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])))
}

/// An upper bound on `|scale · (B·A)[i, j]|` for factors `a` `[r, in]` and `b` `[out, r]`.
fn update_bound(a: &Tensor, b: &Tensor, scale: f64) -> Result<f64> {
    Ok(a.dims()[0] as f64 * max_abs(a)? * max_abs(b)? * scale.abs())
}

/// A weight an adapter is applied with: finite, and not so large that the update it scales
/// passes [`MAX_UPDATE`] (`--adapter DIR:-1e30`).
fn check_weight(adapter: &Adapter, weight: f64) -> Result<()> {
    if !weight.is_finite() {
        return Err(LoraError::Mismatch(format!("adapter weight must be a finite number, found {weight}")));
    }
    for p in adapter.pairs() {
        let bound = update_bound(p.a, p.b, adapter.config.scale_for(&p.module))? * weight.abs();
        if !bound.is_finite() || bound > MAX_UPDATE {
            return Err(LoraError::Mismatch(format!(
                "adapter weight {weight} scales module '{}' to add up to {bound:e} to a weight; that is no longer the adapter (1 = as trained)",
                p.module
            )));
        }
    }
    Ok(())
}

/// Check an adapter against a model without changing it: every pair must name a projection the
/// model has, with matching in/out features.
fn plan(model: &mut Model, adapter: &Adapter) -> Result<Vec<(String, Tensor, Tensor, f64)>> {
    let dims: HashMap<String, (usize, usize)> = model.linears_mut().into_iter().map(|(n, l)| (n, (l.out_dim(), l.in_dim()))).collect();
    let mut out = Vec::new();
    for p in adapter.pairs() {
        let key_a = peft_key(&p.module, Factor::A);
        let key_b = peft_key(&p.module, Factor::B);
        let Some(&(o, i)) = dims.get(&p.module) else {
            let hint = if p.module.contains("embed_tokens") || p.module.ends_with("lm_head") {
                " (adapters on embeddings or the LM head are not supported)"
            } else {
                ""
            };
            return Err(LoraError::Mismatch(format!(
                "adapter tensor '{key_a}' is for module '{}', which this model ({} layers, {}) does not have{hint}",
                p.module,
                model.cfg.num_layers,
                model.cfg.arch.name()
            )));
        };
        let r = p.rank();
        if p.a.dims() != [r, i] {
            return Err(LoraError::Mismatch(format!(
                "adapter tensor '{key_a}' has shape {:?} but module '{}' takes {i} inputs, so it must be [{r}, {i}]",
                p.a.dims(),
                p.module
            )));
        }
        if p.b.dims() != [o, r] {
            return Err(LoraError::Mismatch(format!(
                "adapter tensor '{key_b}' has shape {:?} but module '{}' has {o} outputs, so it must be [{o}, {r}]",
                p.b.dims(),
                p.module
            )));
        }
        out.push((p.module.clone(), p.a.clone(), p.b.clone(), adapter.config.scale_for(&p.module)));
    }
    Ok(out)
}

/// Attach a loaded adapter for inference, its PEFT scaling multiplied by `weight`. Several
/// adapters may be attached; each adds its own branch. Nothing is changed if any key does not fit.
pub fn attach(model: &mut Model, adapter: &Adapter, weight: f64) -> Result<()> {
    check_weight(adapter, weight)?;
    let plan = plan(model, adapter)?;
    let (dtype, device) = (model.dtype(), model.device().clone());
    let mut branches: HashMap<String, LoraBranch> = HashMap::new();
    for (module, a, b, scale) in plan {
        let a = a.to_device(&device)?.to_dtype(dtype)?;
        let b = b.to_device(&device)?.to_dtype(dtype)?;
        branches.insert(module, LoraBranch { a, b, scale: scale * weight, dropout: 0.0, rows: None });
    }
    for (name, lin) in model.linears_mut() {
        if let Some(br) = branches.remove(&name) {
            lin.lora.push(br);
        }
    }
    Ok(())
}

/// Base weights that [`merge_into`] replaced, to put back with [`unmerge`].
#[derive(Debug, Default)]
pub struct Unmerge(Vec<(String, BaseWeight)>);

/// Fold an adapter, its PEFT scaling multiplied by `weight`, into the model's dense f32 base
/// weights (`W + weight·scale·B·A`, [`Adapter::delta`]) for inference: the function [`attach`]
/// computes, up to float rounding, without the two extra small matmuls per projection per call
/// (about a quarter of CPU prompt-processing time at r = 8). Only when every targeted projection
/// has a dense f32 base and no attached branch; otherwise returns `Ok(false)` and changes nothing
/// (use [`attach`]). Adapters merged one after another add up; `saved` keeps each replaced
/// weight's original across calls.
pub fn merge_into(model: &mut Model, adapter: &Adapter, weight: f64, saved: &mut Unmerge) -> Result<bool> {
    check_weight(adapter, weight)?;
    let targets: std::collections::HashSet<String> = plan(model, adapter)?.into_iter().map(|(m, ..)| m).collect();
    let dense_f32 = |l: &bedside_model::Linear| matches!(&l.base, BaseWeight::Dense(w) if w.dtype() == DType::F32);
    if !model.linears_mut().into_iter().filter(|(n, _)| targets.contains(n)).all(|(_, l)| l.lora.is_empty() && dense_f32(l)) {
        return Ok(false);
    }
    for (name, lin) in model.linears_mut() {
        let (true, BaseWeight::Dense(w)) = (targets.contains(&name), &lin.base) else { continue };
        let Some(delta) = adapter.delta(&name)? else { continue };
        let merged = (w + (delta.to_device(w.device())? * weight)?)?;
        let old = std::mem::replace(&mut lin.base, BaseWeight::Dense(merged));
        if !saved.0.iter().any(|(n, _)| *n == name) {
            saved.0.push((name, old));
        }
    }
    Ok(true)
}

/// How [`apply`] added an adapter to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Folded into the dense base weights ([`merge_into`]).
    Merged,
    /// Attached as LoRA branches ([`attach`]).
    Attached,
}

/// Add an adapter for inference the fastest exact-enough way: merged into dense f32 base weights
/// when every target has one ([`merge_into`]; originals collected in `saved`), attached as
/// branches otherwise (quantized, f16 or bf16 bases, where a merge would round).
pub fn apply(model: &mut Model, adapter: &Adapter, weight: f64, saved: &mut Unmerge) -> Result<Applied> {
    if merge_into(model, adapter, weight, saved)? {
        return Ok(Applied::Merged);
    }
    attach(model, adapter, weight)?;
    Ok(Applied::Attached)
}

/// Put back the base weights [`merge_into`] replaced.
pub fn unmerge(model: &mut Model, saved: Unmerge) {
    let mut saved: HashMap<String, BaseWeight> = saved.0.into_iter().collect();
    for (name, lin) in model.linears_mut() {
        if let Some(w) = saved.remove(&name) {
            lin.base = w;
        }
    }
}

/// Remove every LoRA branch from the model (back to the base).
pub fn detach_all(model: &mut Model) {
    for (_, lin) in model.linears_mut() {
        lin.lora.clear();
    }
}

/// Attach fresh trainable LoRA branches to every projection `cfg` targets (never the LM head;
/// the MoE router only when targeted). A ~ U(−1/√in, 1/√in) — PEFT's `kaiming_uniform_(a=√5)` —
/// and B = 0, so the untrained adapter is an exact no-op. Draws come from a ChaCha RNG seeded
/// with `seed`, in model order (layer by layer, q k v o then the MLP / router / experts), A before
/// B. Returns the variables keyed by PEFT key, in that order; the model's branches hold the same
/// tensors, so gradients and `Var::set` updates reach the forward pass.
pub fn attach_trainable(model: &mut Model, cfg: &LoraConfig, seed: u64, dtype: DType) -> Result<Vec<(String, Var)>> {
    cfg.validate().map_err(|m| LoraError::Mismatch(format!("LoRA config: {m}")))?;
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(LoraError::Mismatch(format!("LoRA parameters must be f32, f16 or bf16, not {dtype:?}")));
    }
    let device = model.device().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut vars = Vec::new();
    let mut names = Vec::new();
    for (name, lin) in model.linears_mut() {
        if names.len() < 3 {
            names.push(name.clone());
        }
        if !cfg.matches(&name) {
            continue;
        }
        let r = cfg.rank_for(&name);
        let (o, i) = (lin.out_dim(), lin.in_dim());
        let bound = 1.0 / (i as f64).sqrt();
        let vals: Vec<f32> = (0..r * i).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(vals, (r, i), &device)?.to_dtype(dtype)?)?;
        let b = Var::zeros((o, r), dtype, &device)?;
        lin.lora.push(LoraBranch {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: cfg.scale_for(&name),
            dropout: cfg.lora_dropout,
            rows: None,
        });
        vars.push((peft_key(&name, Factor::A), a));
        vars.push((peft_key(&name, Factor::B), b));
    }
    if vars.is_empty() {
        return Err(LoraError::Mismatch(format!(
            "target_modules {:?} match no projection of this model (its projections are named like {})",
            cfg.target_modules,
            names.join(", ")
        )));
    }
    Ok(vars)
}

/// Save trainable variables exactly as PEFT does (see [`save_peft_tensors`]).
pub fn save_peft(dir: &Path, cfg: &LoraConfig, vars: &[(String, Var)]) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    save_peft_tensors(dir, cfg, &tensors)
}

/// Write `dir/adapter_model.safetensors` (PEFT keys, header metadata `{"format": "pt"}`) and
/// `dir/adapter_config.json`, each atomically (temp file, fsync, rename).
pub fn save_peft_tensors(dir: &Path, cfg: &LoraConfig, tensors: &[(String, Tensor)]) -> Result<()> {
    cfg.validate().map_err(|m| LoraError::Mismatch(format!("LoRA config: {m}")))?;
    let mut named = BTreeMap::new();
    for (k, t) in tensors {
        let (module, f) = parse_key(k).map_err(LoraError::Mismatch)?;
        let canon = peft_key(&module, f);
        if named.insert(canon.clone(), t.clone()).is_some() {
            return Err(LoraError::Mismatch(format!("tensor '{canon}' given twice")));
        }
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    atomic_write_safetensors(&dir.join(WEIGHTS_FILE), &named, &meta)?;
    atomic_write(&dir.join(CONFIG_FILE), cfg.to_json_string().as_bytes())?;
    Ok(())
}

/// The safetensors header of `tensors` (keys sorted, padded to 8 bytes as the reference
/// implementation does; F32, F16 and BF16 only), length prefix included.
fn safetensors_header(tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = match t.dtype() {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            other => return Err(LoraError::Mismatch(format!("tensor '{name}': cannot save dtype {other:?}"))),
        };
        entries.push(TensorEntry { name, dtype, shape: t.dims(), bytes: t.elem_count() * t.dtype().size_in_bytes() });
    }
    let metadata = (!metadata.is_empty()).then_some(metadata);
    bedside_io::safetensors::header(&entries, metadata).map_err(|e| LoraError::Mismatch(e.to_string()))
}

/// Write `header` and then the tensors' data one tensor at a time: no copy of all the data is
/// held (building the whole file in memory first raised a training run's peak by the size of
/// its checkpoint, ~30 MB for SmolLM2's optimizer state).
fn write_safetensors(w: &mut dyn Write, header: &[u8], tensors: &BTreeMap<String, Tensor>) -> std::io::Result<()> {
    w.write_all(header)?;
    let mut buf = Vec::new();
    for t in tensors.values() {
        let flat = t.to_device(&Device::Cpu).and_then(|t| t.flatten_all()).map_err(std::io::Error::other)?;
        buf.clear();
        match t.dtype() {
            DType::F32 => {
                flat.to_vec1::<f32>().map_err(std::io::Error::other)?.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()))
            }
            DType::F16 => flat
                .to_vec1::<half::f16>()
                .map_err(std::io::Error::other)?
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_bits().to_le_bytes())),
            _ => flat
                .to_vec1::<half::bf16>()
                .map_err(std::io::Error::other)?
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_bits().to_le_bytes())),
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Serialize tensors to the safetensors format (keys sorted, header padded to 8 bytes as the
/// reference implementation does). F32, F16 and BF16 only.
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let header = safetensors_header(tensors, metadata)?;
    let mut out = Vec::new();
    write_safetensors(&mut out, &header, tensors).map_err(|e| LoraError::Mismatch(e.to_string()))?;
    Ok(out)
}

/// Write tensors as a safetensors file atomically (see [`atomic_write`]), streamed to the file.
pub fn atomic_write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> Result<()> {
    let header = safetensors_header(tensors, metadata)?;
    atomic_write_with(path, |w| write_safetensors(w, &header, tensors))
}

/// Write a file atomically: a temp file beside it, fsync, rename over the target, fsync the
/// directory. A crash leaves either the old file or the new one, never half of one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// [`atomic_write`] with the contents written by `fill` (through a buffered writer), by the
/// workspace's one atomic writer (`bedside_io`).
fn atomic_write_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    bedside_io::write_atomic_with(path, fill).map_err(|e| LoraError::Io { path: path.into(), err: e.into_io() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_in_every_spelling() {
        let m = "model.layers.0.self_attn.q_proj";
        for k in [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        ] {
            assert_eq!(parse_key(k).unwrap(), (m.to_string(), Factor::A));
        }
        assert_eq!(peft_key(m, Factor::B), "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
        for bad in [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "base_model.model.lm_head.weight",
        ] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }
}
