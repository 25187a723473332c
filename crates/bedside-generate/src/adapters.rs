//! Several LoRA adapters on one base model, each applied only to the batch rows that asked for
//! it: requests for different adapters share the base weights and one forward pass.

use bedside_lora::Adapter;
use bedside_model::Model;
use candle_core::Tensor;

use crate::{GenerateError, Result};

/// Adapters attached as branches limited to chosen rows (see [`bedside_model::LoraBranch::rows`]).
pub struct RowAdapters {
    names: Vec<String>,
    /// Per adapter: `(projection index in Model::linears_mut order, branch index)`.
    branches: Vec<Vec<(usize, usize)>>,
    /// The selection currently set on the model, to skip setting it again.
    current: Option<Vec<Option<usize>>>,
}

impl RowAdapters {
    /// No adapters: every row runs the base model.
    pub fn none() -> Self {
        Self { names: Vec::new(), branches: Vec::new(), current: None }
    }

    /// Attach `adapters` (name, adapter, weight on its PEFT scaling) as branches that apply to no
    /// row until [`RowAdapters::select`] says which. Attached, never merged, whatever the base:
    /// a merged adapter would apply to every row.
    pub fn attach(model: &mut Model, adapters: Vec<(String, Adapter, f64)>) -> Result<Self> {
        let mut out = Self::none();
        let device = model.device().clone();
        for (name, adapter, weight) in adapters {
            if out.names.contains(&name) {
                return Err(GenerateError::Invalid(format!("adapter name `{name}` is given twice")));
            }
            let before: Vec<usize> = model.linears_mut().iter().map(|(_, l)| l.lora.len()).collect();
            bedside_lora::attach(model, &adapter, weight)?;
            let mut mine = Vec::new();
            for (i, (module, lin)) in model.linears_mut().into_iter().enumerate() {
                if lin.lora.len() > before[i] {
                    if module.contains("block_sparse_moe") {
                        // Expert projections see tokens routed across rows, not whole rows.
                        return Err(GenerateError::Invalid(format!(
                            "adapter `{name}` changes the Mixture-of-Experts layer `{module}`: per-request adapters can only change attention and dense MLP projections"
                        )));
                    }
                    lin.lora[before[i]].rows = Some(Tensor::from_vec(Vec::<u32>::new(), 0, &device)?);
                    mine.push((i, before[i]));
                }
            }
            out.names.push(name);
            out.branches.push(mine);
        }
        Ok(out)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The index of the adapter called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Make row `r` of the next forward pass run adapter `rows[r]` (`None`: the base model).
    pub fn select(&mut self, model: &mut Model, rows: &[Option<usize>]) -> Result<()> {
        if self.names.is_empty() || self.current.as_deref() == Some(rows) {
            return Ok(());
        }
        let device = model.device().clone();
        let mut chosen: Vec<Option<Tensor>> = Vec::with_capacity(self.names.len());
        for k in 0..self.names.len() {
            let idx: Vec<u32> = rows.iter().enumerate().filter(|(_, a)| **a == Some(k)).map(|(r, _)| r as u32).collect();
            // Every row: the plain branch, without gathering rows.
            chosen.push(if idx.len() == rows.len() { None } else { Some(Tensor::from_vec(idx.clone(), idx.len(), &device)?) });
        }
        let mut linears = model.linears_mut();
        for (k, places) in self.branches.iter().enumerate() {
            for &(i, b) in places {
                let (_, lin) = &mut linears[i];
                lin.lora[b].rows = chosen[k].clone();
            }
        }
        self.current = Some(rows.to_vec());
        Ok(())
    }
}
