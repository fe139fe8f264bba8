//! Dense layers and embeddings whose weights stay in GGUF quantized blocks: the tensors of a GGUF
//! file as they are stored, or a safetensors decoder's weights quantized at load
//! (`SERVER_QUANTIZE=q8_0|q4_k`). Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 on the CPU run our kernels
//! (`kernels::quant`: int8 activations per block of 32 where the CPU has AVX-512 VNNI or AVX2, as
//! llama.cpp rounds them, unless `SERVER_QUANTIZED_ACTIVATIONS=f32`; else f32 activations, so the
//! products are the dequantized weights' up to rounding; candle has no SIMD kernel for Q4_1);
//! every other type runs candle's `QMatMul` (its own SIMD kernels, with the activations
//! quantized to 8 bits per call; CUDA kernels on a GPU).

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use super::host::on_host_f32;
use crate::kernels::quant::{BlockType, QuantMatrix};

/// `SERVER_QUANTIZED_ACTIVATIONS`: what our block kernels multiply the weights with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockActivations {
    /// Rounded to int8 per block of 32 (x86 with AVX-512 VNNI or AVX2; else f32): llama.cpp's
    /// way, 3.2-3.8x the single-stream tokens/s of f32 activations on SmolLM2 Q4_1.
    #[default]
    Int8,
    /// Exact: products equal the dequantized weights' up to f32 rounding (next-token logits
    /// within 1e-3 of transformers' GGUF loader).
    F32,
}

impl std::str::FromStr for BlockActivations {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "int8" => Ok(BlockActivations::Int8),
            "f32" | "float32" => Ok(BlockActivations::F32),
            other => Err(format!(
                "SERVER_QUANTIZED_ACTIVATIONS `{other}` is not one of: int8, f32"
            )),
        }
    }
}

/// What `SERVER_QUANTIZE` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    /// Encoders' dense layers in int8 (`kernels::int8`); a decoder takes Q8_0, its 8-bit blocks.
    Int8,
    Q8_0,
    Q4K,
}

impl std::str::FromStr for Quantize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "int8" => Ok(Quantize::Int8),
            "q8_0" => Ok(Quantize::Q8_0),
            "q4_k" => Ok(Quantize::Q4K),
            other => Err(format!(
                "SERVER_QUANTIZE `{other}` is not one of: int8, q8_0, q4_k"
            )),
        }
    }
}

impl Quantize {
    /// The `SERVER_QUANTIZE` value.
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Int8 => "int8",
            Quantize::Q8_0 => "q8_0",
            Quantize::Q4K => "q4_k",
        }
    }

    /// The GGUF type for a weight `cols` wide: k-quants need rows of whole 256-value super-blocks,
    /// narrower or odd rows take Q8_0 (llama.cpp also falls back for them).
    fn dtype_for(self, cols: usize) -> GgmlDType {
        match self {
            Quantize::Q4K if cols.is_multiple_of(GgmlDType::Q4K.block_size()) => GgmlDType::Q4K,
            _ => GgmlDType::Q8_0,
        }
    }
}

/// A [out, in] weight kept quantized.
pub enum QLinear {
    /// Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 blocks on the CPU, our kernels.
    Blocks(QuantMatrix),
    /// Any GGUF type through candle.
    Candle(QMatMul),
    /// Projections of different types side by side: their outputs concatenated.
    Stack(Vec<QLinear>),
}

impl QLinear {
    pub fn new(weight: Arc<QTensor>, activations: BlockActivations) -> Result<Self> {
        let (rows, cols) = weight.shape().dims2()?;
        let kind = match weight.dtype() {
            GgmlDType::Q4_0 => Some(BlockType::Q4_0),
            GgmlDType::Q4_1 => Some(BlockType::Q4_1),
            GgmlDType::Q5_0 => Some(BlockType::Q5_0),
            GgmlDType::Q5_1 => Some(BlockType::Q5_1),
            GgmlDType::Q8_0 => Some(BlockType::Q8_0),
            _ => None,
        };
        if let Some(kind) = kind.filter(|_| {
            matches!(weight.device(), Device::Cpu) && !crate::kernels::generic_kernels_forced()
        }) {
            let bytes = weight.data()?.into_owned();
            let int8 = activations == BlockActivations::Int8;
            return Ok(QLinear::Blocks(QuantMatrix::new(
                kind, bytes, rows, cols, int8,
            )?));
        }
        Ok(QLinear::Candle(QMatMul::from_arc(weight)?))
    }

    /// An f32 weight quantized at load (`SERVER_QUANTIZE`).
    pub fn quantize(
        weight: &Tensor,
        quantize: Quantize,
        activations: BlockActivations,
    ) -> Result<Self> {
        let (_, cols) = weight.dims2()?;
        let dtype = quantize.dtype_for(cols);
        let weight = weight.to_dtype(DType::F32)?;
        let q = QTensor::quantize(&weight, dtype)
            .with_context(|| format!("quantizing a [{:?}] weight to {dtype:?}", weight.dims()))?;
        QLinear::new(Arc::new(q), activations)
    }

    /// `x`: [n, in] → [n, out], in x's dtype (the products run on f32 activations).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let y = match self {
            QLinear::Blocks(matrix) => {
                let (n, inp) = x.dims2()?;
                if inp != matrix.cols() {
                    bail!("linear layer expects {} inputs, got {inp}", matrix.cols());
                }
                let y = on_host_f32(&x, "quantized CPU layers", |x| matrix.forward(x, n))?;
                Tensor::from_vec(y, (n, matrix.rows()), x.device())?
            }
            QLinear::Candle(matmul) => x.apply(matmul)?,
            QLinear::Stack(parts) => {
                let outputs = parts
                    .iter()
                    .map(|p| p.forward(&x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&outputs, 1)?
            }
        };
        Ok(y.to_dtype(dtype)?)
    }
}

/// GGUF tensors of one type stacked along their rows (Q, K and V as one projection): the
/// blocks of a row never cross rows, so the bytes concatenate. None when the types differ.
pub fn stack_rows(parts: &[Arc<QTensor>]) -> Result<Option<Arc<QTensor>>> {
    let first = parts.first().context("nothing to stack")?;
    let (dtype, device) = (first.dtype(), first.device());
    let mut rows = 0;
    let mut bytes = Vec::new();
    for part in parts {
        let (r, c) = part.shape().dims2()?;
        if part.dtype() != dtype || c != first.shape().dims2()?.1 {
            return Ok(None);
        }
        rows += r;
        bytes.extend_from_slice(&part.data()?);
    }
    let cols = first.shape().dims2()?.1;
    let storage = QStorage::from_data(Cow::Owned(bytes), &device, dtype)?;
    Ok(Some(Arc::new(QTensor::new(storage, (rows, cols))?)))
}

/// The token embedding table: dense, or quantized rows dequantized only when looked up.
#[derive(Clone)]
pub enum Embedding {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl Embedding {
    /// [rows, width].
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Embedding::Dense(t) => t.dims2()?,
            Embedding::Quantized(q) => q.shape().dims2()?,
        })
    }

    /// Rows `ids` as [ids, width] in `dtype`.
    pub fn lookup(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Embedding::Dense(t) => t.index_select(ids, 0)?,
            Embedding::Quantized(q) => q.embedding(ids)?.to_dtype(dtype)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SERVER_QUANTIZE` layers: q4_k on rows of 256 values (k-quant super-blocks), q8_0 on
    /// narrower ones, each close to the f32 product (4 bits over evenly spread weights: within a
    /// quarter of the largest output; 8 bits: 1%, or 2% with the activations rounded to 8 bits
    /// too).
    #[test]
    fn quantized_layers_approximate_the_dense_product() {
        let device = Device::Cpu;
        for (cols, quantize, tolerance) in [
            (256, Quantize::Q4K, 0.25),
            (96, Quantize::Q4K, 0.01),
            (64, Quantize::Q8_0, 0.01),
        ] {
            let rows = 24;
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
                .collect();
            let x: Vec<f32> = (0..3 * cols)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 14.0)
                .collect();
            let weight = Tensor::from_vec(w, (rows, cols), &device).unwrap();
            let x = Tensor::from_vec(x, (3, cols), &device).unwrap();
            let want = x.matmul(&weight.t().unwrap()).unwrap();
            for activations in [BlockActivations::Int8, BlockActivations::F32] {
                let layer = QLinear::quantize(&weight, quantize, activations).unwrap();
                let got = layer.forward(&x).unwrap();
                let largest = |t: &Tensor| {
                    t.abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                };
                let scale = largest(&want);
                let diff = largest(&(got - &want).unwrap());
                let rounded = activations == BlockActivations::Int8;
                let tolerance = if rounded && tolerance < 0.25 {
                    0.02
                } else {
                    tolerance
                };
                assert!(
                diff <= tolerance * scale,
                "{quantize:?} over {cols} columns, {activations:?} activations: {diff} (largest output {scale})"
            );
            }
        }
    }
}
