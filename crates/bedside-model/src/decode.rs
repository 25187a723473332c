//! One decoding step (one new position for every row of a batch) on the CPU, without candle's
//! per-op overhead: the activations live in buffers reused from step to step, each projection's
//! input is normalised and quantized once, q/k/v and gate/up are one matmul each (one round of
//! the thread pool, one quantization of their shared input), the residual adds are folded into
//! the output projections, and attention reads the preallocated key/value cache in one pass per
//! head. LoRA branches left unmerged run beside their base projections.
//!
//! It computes what [`Model::forward`]'s composed path computes with the kernels' 8-bit
//! activations. [`Model::forward_with`] calls it for inference only ([`crate::Mode::Infer`]);
//! when anything is outside what it handles (MoE, another device or dtype, weights it cannot
//! read, [`Model::set_fused_decode`] off), [`step`] returns `None` and the composed path runs.

use std::cell::RefCell;

use bedside_kernels as bk;
use candle_core::{CpuStorage, DType, Layout, Tensor};

use crate::embedding::Embedding;
use crate::error::{ModelError, Result};
use crate::kernels::{qmatrix, Pool};
use crate::linear::{BaseWeight, Linear};
use crate::model::{Cache, FeedForward, Model};

/// Buffers of one step, kept per thread and reused (resized, never shrunk).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    lora: Vec<f32>,
    acts32: Option<bk::Activations>,
    acts256: Option<bk::Activations>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A projection as the kernels read it.
struct Proj<'a> {
    weight: bk::Weight<'a>,
    lora: Vec<Lora<'a>>,
}

struct Lora<'a> {
    a: bk::Weight<'a>,
    b: bk::Weight<'a>,
    rank: usize,
    scale: f32,
    /// The batch rows this branch applies to (a server mixing adapters in one batch); all when
    /// `None`.
    rows: Option<&'a [u32]>,
}

/// A LoRA branch before its tensors are read: the [`Held`] indices of A, B and the rows.
struct LoraSrc {
    a: usize,
    b: usize,
    rank: usize,
    scale: f32,
    rows: Option<usize>,
}

struct Layer<'a> {
    attn_norm: &'a [f32],
    ffn_norm: &'a [f32],
    q: Proj<'a>,
    k: Proj<'a>,
    v: Proj<'a>,
    o: Proj<'a>,
    gate: Proj<'a>,
    up: Proj<'a>,
    down: Proj<'a>,
}

/// Read access to the f32 tensors a step uses, held for the step.
struct Held<'t> {
    guards: Vec<(candle_core::StorageRef<'t>, &'t Layout)>,
}

impl<'t> Held<'t> {
    fn new() -> Self {
        Self { guards: Vec::new() }
    }
    /// Hold `t` (a contiguous f32 CPU tensor); its index for [`Held::slice`].
    fn hold(&mut self, t: &'t Tensor) -> Option<usize> {
        if !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous() {
            return None;
        }
        self.guards.push(t.storage_and_layout());
        Some(self.guards.len() - 1)
    }
    /// Hold `t` (a contiguous u32 CPU tensor of batch rows); its index for [`Held::rows`].
    fn hold_rows(&mut self, t: &'t Tensor) -> Option<usize> {
        if !t.device().is_cpu() || t.dtype() != DType::U32 || !t.is_contiguous() {
            return None;
        }
        self.guards.push(t.storage_and_layout());
        Some(self.guards.len() - 1)
    }
    fn rows(&self, i: usize) -> Option<&[u32]> {
        let (s, l) = &self.guards[i];
        match (&**s, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::U32(v)), Some((a, b))) => v.get(a..b),
            _ => None,
        }
    }
    fn slice(&self, i: usize) -> Option<&[f32]> {
        let (s, l) = &self.guards[i];
        match (&**s, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => v.get(a..b),
            _ => None,
        }
    }
}

/// What a projection is before its tensors are held: a quantized view, or the index of a held
/// dense weight; LoRA factors likewise.
enum ProjSrc<'a> {
    Quantized(bk::QMatrix<'a>, Vec<LoraSrc>),
    Dense(usize, Vec<LoraSrc>),
}

/// `l` as the step reads it.
fn proj_src<'t>(l: &'t Linear, held: &mut Held<'t>) -> Option<ProjSrc<'t>> {
    let mut lora = Vec::with_capacity(l.lora.len());
    for br in &l.lora {
        let rows = match &br.rows {
            None => None,
            Some(t) => Some(held.hold_rows(t)?),
        };
        let (a, b) = (held.hold(&br.a)?, held.hold(&br.b)?);
        lora.push(LoraSrc { a, b, rank: br.rank(), scale: br.scale as f32, rows });
    }
    match &l.base {
        BaseWeight::Quantized(q, _) => Some(ProjSrc::Quantized(qmatrix(q)?, lora)),
        BaseWeight::Dense(t) => Some(ProjSrc::Dense(held.hold(t)?, lora)),
    }
}

/// The projection of `src` for a batch of `batch` rows (`None` when a branch names a row outside it).
fn proj<'a>(src: &ProjSrc<'a>, held: &'a Held<'_>, out_dim: usize, in_dim: usize, batch: usize) -> Option<Proj<'a>> {
    let (weight, lora) = match src {
        ProjSrc::Quantized(q, lora) => (bk::Weight::Quantized(*q), lora),
        ProjSrc::Dense(i, lora) => (bk::Weight::Dense(bk::DenseMatrix::new(held.slice(*i)?, out_dim, in_dim).ok()?), lora),
    };
    if weight.rows() != out_dim || weight.cols() != in_dim {
        return None;
    }
    let mut branches = Vec::with_capacity(lora.len());
    for l in lora {
        let rows = match l.rows {
            None => None,
            Some(i) => {
                let rows = held.rows(i)?;
                if rows.iter().any(|&r| r as usize >= batch) {
                    return None;
                }
                Some(rows)
            }
        };
        branches.push(Lora {
            a: bk::Weight::Dense(bk::DenseMatrix::new(held.slice(l.a)?, l.rank, in_dim).ok()?),
            b: bk::Weight::Dense(bk::DenseMatrix::new(held.slice(l.b)?, out_dim, l.rank).ok()?),
            rank: l.rank,
            scale: l.scale,
            rows,
        });
    }
    Some(Proj { weight, lora: branches })
}

/// Decode one position for every row of `ids` `(b, 1)`, appending to `cache`; the logits
/// `(b, vocab)`. `None` when the model or input is outside what this path handles (nothing has
/// been changed then).
pub(crate) fn step(model: &Model, ids: &Tensor, cache: &mut Cache) -> Result<Option<Tensor>> {
    let (b, t) = ids.dims2()?;
    let cfg = &model.cfg;
    if !model.fused_decode() || t != 1 || b == 0 || !model.device().is_cpu() || model.dtype() != DType::F32 || cfg.moe.is_some() {
        return Ok(None);
    }
    if cache.batch_size() != b {
        return Ok(None);
    }
    let (h, nh, nkv, d, f) = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size);
    let (qd, kvd) = (nh * d, nkv * d);
    let offset = cache.len();
    if offset + 1 > cfg.max_position_embeddings {
        return Err(ModelError::ContextOverflow { needed: offset + 1, limit: cfg.max_position_embeddings });
    }

    // Hold every f32 tensor the step reads, then build the kernels' views of them.
    let mut held = Held::new();
    let mut srcs = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        let FeedForward::Dense { gate_proj, up_proj, down_proj } = &layer.ffn else {
            return Ok(None);
        };
        let a = &layer.self_attn;
        let (Some(n1), Some(n2)) = (held.hold(&layer.input_layernorm.weight), held.hold(&layer.post_attention_layernorm.weight)) else {
            return Ok(None);
        };
        let mut p = Vec::with_capacity(7);
        for l in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, gate_proj, up_proj, down_proj] {
            let Some(s) = proj_src(l, &mut held) else {
                return Ok(None);
            };
            p.push(s);
        }
        srcs.push((n1, n2, p));
    }
    let Some(head_src) = proj_src(&model.lm_head, &mut held) else {
        return Ok(None);
    };
    let Some(final_norm) = held.hold(&model.norm.weight) else {
        return Ok(None);
    };
    let (Some(cos_i), Some(sin_i)) = (held.hold(model.rope_tables().0), held.hold(model.rope_tables().1)) else {
        return Ok(None);
    };
    let dense_embed = match &model.embed_tokens {
        Embedding::Dense(t) => match held.hold(t) {
            Some(i) => Some(i),
            None => return Ok(None),
        },
        Embedding::Quantized(_) => None,
    };
    let quant_embed = match &model.embed_tokens {
        Embedding::Quantized(q) => match qmatrix(q) {
            Some(m) => Some(m),
            None => return Ok(None),
        },
        Embedding::Dense(_) => None,
    };
    let mut layers = Vec::with_capacity(srcs.len());
    for (n1, n2, p) in &srcs {
        let dims = [(qd, h), (kvd, h), (kvd, h), (h, qd), (f, h), (f, h), (h, f)];
        let mut ps = p.iter().zip(dims).map(|(s, (o, i))| proj(s, &held, o, i, b));
        let mut next = || ps.next().flatten();
        let (Some(q), Some(k), Some(v), Some(o), Some(gate), Some(up), Some(down)) =
            (next(), next(), next(), next(), next(), next(), next())
        else {
            return Ok(None);
        };
        let (Some(attn_norm), Some(ffn_norm)) = (held.slice(*n1), held.slice(*n2)) else {
            return Ok(None);
        };
        if attn_norm.len() != h || ffn_norm.len() != h {
            return Ok(None);
        }
        layers.push(Layer { attn_norm, ffn_norm, q, k, v, o, gate, up, down });
    }
    let vocab = cfg.vocab_size;
    let Some(head) = proj(&head_src, &held, vocab, h, b) else {
        return Ok(None);
    };
    let (Some(final_norm), Some(cos), Some(sin)) = (held.slice(final_norm), held.slice(cos_i), held.slice(sin_i)) else {
        return Ok(None);
    };
    let ids: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let pads: Vec<usize> = cache.pads().to_vec();

    // Keys and values of this position go into each layer's buffer, grown (or unshared) first.
    let mut kv_bufs = Vec::with_capacity(layers.len());
    for i in 0..layers.len() {
        let (k, v) = cache.reserve_layer(i, 1, (b, nkv, d), cache.stored_dtype(DType::F32), model.device())?;
        let cap = k.dim(2)?;
        kv_bufs.push(KvBuf { k, v, cap });
    }

    let backend = bk::Backend::detected();
    let eps = cfg.rms_norm_eps as f32;
    let half = d / 2;
    let logits = SCRATCH.with(|cell| -> Result<Vec<f32>> {
        let mut s = cell.borrow_mut();
        let s = &mut *s;
        s.x.resize(b * h, 0.0);
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(candle_core::Error::Msg(format!("token id {id} is outside the vocabulary ({vocab})")).into());
            }
            let row = &mut s.x[r * h..(r + 1) * h];
            match (quant_embed, dense_embed) {
                (Some(q), _) => bk::dequantize_row(q.ty(), q.row(id), row),
                (None, Some(i)) => {
                    let table = held.slice(i).ok_or_else(|| candle_core::Error::Msg("embedding table unreadable".into()))?;
                    row.copy_from_slice(&table[id * h..(id + 1) * h]);
                }
                (None, None) => unreachable!("one of the embedding forms is set"),
            }
        }
        for (li, layer) in layers.iter().enumerate() {
            // Attention: norm, q/k/v in one matmul, rotary, this position into the cache.
            normed_input(s, b, h, Some(layer.attn_norm), eps, &[&layer.q, &layer.k, &layer.v]);
            s.q.resize(b * qd, 0.0);
            s.k.resize(b * kvd, 0.0);
            s.v.resize(b * kvd, 0.0);
            {
                let Scratch { xn, q, k, v, acts32, acts256, lora, .. } = s;
                let input = bk_input(b, h, xn, acts32, acts256);
                let mut jobs = [job(&layer.q, q, false), job(&layer.k, k, false), job(&layer.v, v, false)];
                bk::matmul(backend, &Pool, input, &mut jobs).map_err(candle_core::Error::Msg)?;
                for (p, out) in [(&layer.q, &mut *q), (&layer.k, &mut *k), (&layer.v, &mut *v)] {
                    add_lora(backend, p, b, h, xn, out, lora)?;
                }
            }
            for (r, &pad) in pads.iter().enumerate() {
                let pos = offset.saturating_sub(pad);
                let (c, sn) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
                for hd in s.q[r * qd..(r + 1) * qd].chunks_exact_mut(d).chain(s.k[r * kvd..(r + 1) * kvd].chunks_exact_mut(d)) {
                    rotate_half(hd, c, sn);
                }
            }
            let kv = &kv_bufs[li];
            kv.write_position(offset, &s.k, &s.v)?;
            // Attention of each row's query heads over its cached positions, on the pool, the heads
            // that share a key/value head together where that keeps the threads busy.
            s.att.resize(b * qd, 0.0);
            {
                let (kg, vg) = (kv.k.storage_and_layout(), kv.v.storage_and_layout());
                let (kc, vc) = (cpu_kv(&kg.0, kg.1)?, cpu_kv(&vg.0, vg.1)?);
                let cap = kv.cap;
                let att_ptr = SendPtr(s.att.as_mut_ptr());
                let q = &s.q;
                let group = nh / nkv;
                let scale = 1.0 / (d as f32).sqrt();
                let per_task = heads_per_task(b * nkv, group, bk::Parallel::threads(&Pool));
                let tasks_per_row = nh / per_task;
                bk::Parallel::run(&Pool, b * tasks_per_row, &|task| {
                    let (r, hd) = (task / tasks_per_row, task % tasks_per_row * per_task);
                    let g = hd / group;
                    let first = pads[r].min(offset);
                    let n = offset + 1 - first;
                    let base = ((r * nkv + g) * cap + first) * d;
                    let heads = r * qd + hd * d..r * qd + (hd + per_task) * d;
                    // SAFETY: task (r, hd) writes only att[r][hd·d..(hd + per_task)·d].
                    let out = unsafe { std::slice::from_raw_parts_mut({ att_ptr }.0.add(heads.start), heads.len()) };
                    bk::attend(backend, &q[heads], per_task, kc.from(base), vc.from(base), n, d, scale, out);
                });
            }
            // Output projection added onto the residual.
            quantize_plain(s, b, qd, false, &[&layer.o]);
            {
                let Scratch { att, x, acts32, acts256, lora, .. } = s;
                let input = bk_input(b, qd, att, acts32, acts256);
                bk::matmul(backend, &Pool, input, &mut [job(&layer.o, x, true)]).map_err(candle_core::Error::Msg)?;
                add_lora(backend, &layer.o, b, qd, att, x, lora)?;
            }
            // MLP: norm, gate/up in one matmul, silu(gate)·up, down added onto the residual.
            normed_input(s, b, h, Some(layer.ffn_norm), eps, &[&layer.gate, &layer.up]);
            s.gate.resize(b * f, 0.0);
            s.up.resize(b * f, 0.0);
            {
                let Scratch { xn, gate, up, acts32, acts256, lora, .. } = s;
                let input = bk_input(b, h, xn, acts32, acts256);
                let mut jobs = [job(&layer.gate, gate, false), job(&layer.up, up, false)];
                bk::matmul(backend, &Pool, input, &mut jobs).map_err(candle_core::Error::Msg)?;
                add_lora(backend, &layer.gate, b, h, xn, gate, lora)?;
                add_lora(backend, &layer.up, b, h, xn, up, lora)?;
            }
            for (g, u) in s.gate.iter_mut().zip(&s.up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            quantize_plain(s, b, f, true, &[&layer.down]);
            {
                let Scratch { gate, x, acts32, acts256, lora, .. } = s;
                let input = bk_input(b, f, gate, acts32, acts256);
                bk::matmul(backend, &Pool, input, &mut [job(&layer.down, x, true)]).map_err(candle_core::Error::Msg)?;
                add_lora(backend, &layer.down, b, f, gate, x, lora)?;
            }
        }
        normed_input(s, b, h, Some(final_norm), eps, &[&head]);
        let mut logits = vec![0f32; b * vocab];
        let Scratch { xn, acts32, acts256, lora, .. } = s;
        let input = bk_input(b, h, xn, acts32, acts256);
        bk::matmul(backend, &Pool, input, &mut [job(&head, &mut logits, false)]).map_err(candle_core::Error::Msg)?;
        add_lora(backend, &head, b, h, xn, &mut logits, lora)?;
        Ok(logits)
    })?;
    drop(layers);
    drop(held);
    cache.advance_fused();
    Ok(Some(Tensor::from_vec(logits, (b, vocab), model.device())?))
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: written only at disjoint offsets by the tasks of one pool round.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Query heads each attention task takes: all that share a key/value head (each key and value
/// is then read once for all of them), unless that leaves fewer than four tasks per thread, in
/// which case the group is split (down to one head) so the pool's threads stay evenly loaded.
fn heads_per_task(kv_heads: usize, group: usize, threads: usize) -> usize {
    (1..=group).rev().find(|&p| group.is_multiple_of(p) && kv_heads * (group / p) >= 4 * threads).unwrap_or(1)
}

/// A key or value buffer as the attention kernel reads it, from where its view starts (a
/// trimmed cache can be a view into its old buffer).
fn cpu_kv<'a>(s: &'a candle_core::Storage, layout: &Layout) -> Result<bk::KvSlice<'a>> {
    let Some((start, _)) = layout.contiguous_offsets() else {
        return Err(candle_core::Error::Msg("key/value cache is not a contiguous buffer".into()).into());
    };
    let all = match s {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => bk::KvSlice::F32(v),
        candle_core::Storage::Cpu(CpuStorage::F16(v)) => bk::KvSlice::F16(v),
        _ => return Err(candle_core::Error::Msg("key/value cache is not f32 or f16 on the CPU".into()).into()),
    };
    Ok(all.from(start))
}

fn job<'a>(p: &Proj<'a>, out: &'a mut [f32], accumulate: bool) -> bk::Job<'a> {
    bk::Job { weight: p.weight, out, accumulate }
}

fn bk_input<'a>(
    rows: usize,
    cols: usize,
    x: &'a [f32],
    a32: &'a Option<bk::Activations>,
    a256: &'a Option<bk::Activations>,
) -> bk::Input<'a> {
    bk::Input {
        rows,
        cols,
        f32: Some(&x[..rows * cols]),
        blocks32: a32.as_ref().filter(|a| a.rows() == rows && a.cols() == cols),
        blocks256: a256.as_ref().filter(|a| a.rows() == rows && a.cols() == cols),
    }
}

/// The layouts `projs` need their input in.
fn layouts(projs: &[&Proj]) -> (bool, bool) {
    let need = |l| projs.iter().any(|p| p.weight.act_layout() == Some(l));
    (need(bk::ActLayout::Blocks32), need(bk::ActLayout::Blocks256))
}

/// `xn = rms_norm(x) · weight` for `b` rows of `h`, quantized as `projs` need it.
fn normed_input(s: &mut Scratch, b: usize, h: usize, weight: Option<&[f32]>, eps: f32, projs: &[&Proj]) {
    s.xn.resize(b * h, 0.0);
    for r in 0..b {
        let (x, y) = (&s.x[r * h..(r + 1) * h], &mut s.xn[r * h..(r + 1) * h]);
        let ss: f32 = x.iter().map(|v| v * v).sum();
        let inv = 1.0 / (ss / h as f32 + eps).sqrt();
        match weight {
            Some(w) => y.iter_mut().zip(x).zip(w).for_each(|((y, x), w)| *y = x * inv * w),
            None => y.iter_mut().zip(x).for_each(|(y, x)| *y = x * inv),
        }
    }
    let Scratch { xn, acts32, acts256, .. } = s;
    quantize_for(xn, b, h, acts32, acts256, projs);
}

/// Quantize the attention output (`gated == false`) or the gated MLP activations for `projs`.
fn quantize_plain(s: &mut Scratch, b: usize, cols: usize, gated: bool, projs: &[&Proj]) {
    let Scratch { att, gate, acts32, acts256, .. } = s;
    let x = if gated { gate } else { att };
    quantize_for(x, b, cols, acts32, acts256, projs);
}

fn quantize_for(
    x: &[f32],
    rows: usize,
    cols: usize,
    a32: &mut Option<bk::Activations>,
    a256: &mut Option<bk::Activations>,
    projs: &[&Proj],
) {
    let (n32, n256) = layouts(projs);
    if n32 {
        a32.get_or_insert_with(|| bk::Activations::new(bk::ActLayout::Blocks32)).quantize_on(&Pool, &x[..rows * cols], rows, cols);
    }
    if n256 {
        a256.get_or_insert_with(|| bk::Activations::new(bk::ActLayout::Blocks256)).quantize_on(&Pool, &x[..rows * cols], rows, cols);
    }
}

/// `out += Σ scale · (x · Aᵀ) · Bᵀ` over `p`'s LoRA branches, in f32; a branch limited to some
/// batch rows reads and adds only those rows.
fn add_lora(backend: bk::Backend, p: &Proj, rows: usize, cols: usize, x: &[f32], out: &mut [f32], tmp: &mut Vec<f32>) -> Result<()> {
    for l in &p.lora {
        match l.rows {
            None => {
                tmp.resize(rows * l.rank, 0.0);
                lora_rows(backend, l, rows, cols, &x[..rows * cols], tmp, out)?;
            }
            Some([]) => {}
            Some(sel) => {
                // Gather the branch's rows, run it on them alone, add its output back to them.
                let (n, od) = (sel.len(), l.b.rows());
                tmp.resize(n * (cols + l.rank + od), 0.0);
                let (xg, rest) = tmp.split_at_mut(n * cols);
                let (t, yg) = rest.split_at_mut(n * l.rank);
                for (j, &r) in sel.iter().enumerate() {
                    let r = r as usize;
                    xg[j * cols..(j + 1) * cols].copy_from_slice(&x[r * cols..(r + 1) * cols]);
                }
                yg.fill(0.0);
                lora_rows(backend, l, n, cols, xg, t, yg)?;
                for (j, &r) in sel.iter().enumerate() {
                    let r = r as usize;
                    let dst = &mut out[r * od..(r + 1) * od];
                    dst.iter_mut().zip(&yg[j * od..(j + 1) * od]).for_each(|(o, y)| *o += y);
                }
            }
        }
    }
    Ok(())
}

/// `out += scale · (x · Aᵀ) · Bᵀ` for `rows` contiguous rows of `x`; `t` holds `rows × rank`.
fn lora_rows(backend: bk::Backend, l: &Lora, rows: usize, cols: usize, x: &[f32], t: &mut [f32], out: &mut [f32]) -> Result<()> {
    let x_in = bk::Input { rows, cols, f32: Some(x), blocks32: None, blocks256: None };
    bk::matmul(backend, &bk::Serial, x_in, &mut [bk::Job { weight: l.a, out: t, accumulate: false }]).map_err(candle_core::Error::Msg)?;
    t.iter_mut().for_each(|v| *v *= l.scale);
    let t_in = bk::Input { rows, cols: l.rank, f32: Some(t), blocks32: None, blocks256: None };
    bk::matmul(backend, &Pool, t_in, &mut [bk::Job { weight: l.b, out, accumulate: true }]).map_err(candle_core::Error::Msg)?;
    Ok(())
}

/// Rotary embedding in the "rotate half" pairing (HF layout): value `i` pairs with `i + d/2`.
#[inline]
fn rotate_half(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (a, b) = x.split_at_mut(half);
    for i in 0..half {
        let (x1, x2) = (a[i], b[i]);
        a[i] = x1 * cos[i] - x2 * sin[i];
        b[i] = x2 * cos[i] + x1 * sin[i];
    }
}

/// One layer's key and value buffers `(b, kv_heads, cap, d)`, shared with the cache.
struct KvBuf {
    k: Tensor,
    v: Tensor,
    cap: usize,
}

impl KvBuf {
    /// Write this position's keys and values (`b × kv_heads × d`, row-major) at `pos`.
    fn write_position(&self, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (b, nkv, cap, d) = self.k.dims4()?;
        if pos >= cap || k.len() != b * nkv * d || v.len() != k.len() {
            return Err(candle_core::Error::Msg(format!("key/value write at {pos} of {cap} with {} values", k.len())).into());
        }
        for (buf, src) in [(&self.k, k), (&self.v, v)] {
            buf.inplace_op1(&WritePosition { pos, src, dims: (b, nkv, cap, d) })?;
        }
        Ok(())
    }
}

/// Writes one position of a `(b, kv_heads, cap, d)` cache buffer in place.
struct WritePosition<'a> {
    pos: usize,
    src: &'a [f32],
    dims: (usize, usize, usize, usize),
}

impl candle_core::InplaceOp1 for WritePosition<'_> {
    fn name(&self) -> &'static str {
        "kv-write-position"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (b, nkv, cap, d) = self.dims;
        let Some((start, _)) = layout.contiguous_offsets() else {
            candle_core::bail!("key/value cache is not a contiguous CPU buffer");
        };
        for r in 0..b {
            for g in 0..nkv {
                let dst = start + ((r * nkv + g) * cap + self.pos) * d;
                let src = &self.src[(r * nkv + g) * d..(r * nkv + g + 1) * d];
                match storage {
                    CpuStorage::F32(buf) => buf[dst..dst + d].copy_from_slice(src),
                    // Rounded to nearest, ties to even, as candle's (and llama.cpp's) conversion.
                    CpuStorage::F16(buf) => buf[dst..dst + d].iter_mut().zip(src).for_each(|(o, &x)| *o = half::f16::from_f32(x)),
                    _ => candle_core::bail!("key/value cache is not f32 or f16"),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::heads_per_task;

    #[test]
    fn heads_share_a_task_only_when_the_threads_stay_busy() {
        // SmolLM2 (9 query heads on 3 key/value heads) on 2 threads: one row gives 3 groups,
        // too few for 2 threads, so each head is a task; 16 rows give 48 groups.
        assert_eq!(heads_per_task(3, 3, 2), 1);
        assert_eq!(heads_per_task(48, 3, 2), 3);
        // Llama 3 8B (32 on 8) on 16 threads: one row keeps heads apart, eight rows share.
        assert_eq!(heads_per_task(8, 4, 16), 1);
        assert_eq!(heads_per_task(64, 4, 16), 4);
        // In between, the group is split evenly: 2 of 4 heads per task.
        assert_eq!(heads_per_task(16, 4, 8), 2);
        // Multi-head attention has nothing to share.
        assert_eq!(heads_per_task(32, 1, 2), 1);
    }
}
