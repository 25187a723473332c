//! The token embedding table, dense or ggml-quantized.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// The token embedding table.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// A dense `[vocab, hidden]` table.
    Dense(Tensor),
    /// A ggml-quantized `[vocab, hidden]` table on the CPU, shared with a tied output head: the
    /// rows a batch needs are dequantized per lookup, so the model holds no f32 copy of the
    /// vocabulary-sized table.
    Quantized(Arc<QTensor>),
}

impl Embedding {
    /// Rows `ids` (any shape) as `(n, hidden)` in `dtype`.
    pub(crate) fn rows(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&ids.flatten_all()?, 0)?),
            Embedding::Quantized(q) => {
                let (vocab, hidden) = q.shape().dims2()?;
                let gd = q.dtype();
                let row_bytes = hidden / gd.block_size() * gd.type_size();
                let data = q.data()?;
                let ids: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
                let mut buf = Vec::with_capacity(ids.len() * row_bytes);
                for &id in &ids {
                    let id = id as usize;
                    if id >= vocab {
                        return Err(ModelError::Candle(candle_core::Error::Msg(format!(
                            "token id {id} is outside the vocabulary ({vocab})"
                        ))));
                    }
                    buf.extend_from_slice(&data[id * row_bytes..(id + 1) * row_bytes]);
                }
                let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(buf), &Device::Cpu, gd)?;
                let rows = QTensor::new(storage, (ids.len(), hidden))?;
                Ok(rows.dequantize(&Device::Cpu)?.to_dtype(dtype)?)
            }
        }
    }

    /// The whole table as a dense tensor of `dtype` (dequantizing when needed).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Embedding::Dense(t) => t.to_dtype(dtype)?,
            Embedding::Quantized(q) => q.dequantize(&Device::Cpu)?.to_dtype(dtype)?,
        })
    }

    pub fn elem_count(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.elem_count(),
            Embedding::Quantized(q) => q.shape().elem_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn quantized_embedding_rows_equal_the_dequantized_table() {
        let vals: Vec<f32> = (0..40 * 64).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let table = Tensor::from_vec(vals, (40, 64), &Device::Cpu).unwrap();
        for dt in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K] {
            let cols = if dt == GgmlDType::Q4K { 256 } else { 64 };
            let t = if cols == 64 { table.clone() } else { Tensor::cat(&[&table; 4], 1).unwrap() };
            let q = Arc::new(QTensor::quantize(&t, dt).unwrap());
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let emb = Embedding::Quantized(q);
            let ids = Tensor::new(&[[3u32, 39, 0], [3, 17, 22]], &Device::Cpu).unwrap();
            let got = emb.rows(&ids, DType::F32).unwrap();
            let want = dense.index_select(&ids.flatten_all().unwrap(), 0).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{dt:?}");
            let err = emb.rows(&Tensor::new(&[40u32], &Device::Cpu).unwrap(), DType::F32).unwrap_err();
            assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        }
    }
}
