//! Loads a checkpoint's tensors (safetensors or PyTorch pickles, sharded or not) onto the target
//! device, and looks names up the way `transformers` does: with or without the base model prefix
//! (`bert.`, `roberta.`, ...), and with the old `gamma`/`beta` LayerNorm names. Tensors come out
//! in the store's dtype: f32, or the encoder's precision in the view [`WeightStore::in_dtype`] makes.

use std::collections::HashMap;

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::quantized::{BlockActivations, Quantize};

use crate::source::Weights;

pub struct WeightStore {
    tensors: HashMap<String, Tensor>,
    /// Prefix that the base-model tensors carry in this checkpoint ("bert." or "").
    base_prefix: String,
    /// What `get` and `base` return floating-point tensors as.
    dtype: DType,
    /// What the CPU's fused dense layers are asked to run in: the dtype, or for an image
    /// network (f32 everywhere else) the requested one ([`WeightStore::with_dense_dtype`]).
    dense_dtype: DType,
    /// A GGUF file's matrices, kept in their quantized blocks.
    quantized: HashMap<String, Arc<QTensor>>,
    /// GGUF query and key rows are in llama.cpp's order: rotary pairs interleaved.
    interleaved_rotary: bool,
    /// `SERVER_QUANTIZE`: decoders' dense matrices quantized as they are made layers.
    quantize: Option<Quantize>,
    /// `SERVER_QUANTIZED_ACTIVATIONS`: what quantized-block layers multiply.
    block_activations: BlockActivations,
}

impl WeightStore {
    pub fn load(weights: &Weights, device: &Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut quantized = HashMap::new();
        match weights {
            Weights::Safetensors(files) => {
                for file in files {
                    let loaded = candle_core::safetensors::load(file, device)
                        .with_context(|| format!("reading safetensors {}", file.display()))?;
                    tensors.extend(loaded);
                }
            }
            Weights::Gguf(file) => {
                let gguf = super::gguf::load_tensors(file, device)?;
                tensors.extend(gguf.dense);
                quantized.extend(gguf.quantized);
            }
            Weights::Pytorch(files) => {
                for file in files {
                    let loaded = candle_core::pickle::read_all(file)
                        .with_context(|| format!("reading PyTorch weights {}", file.display()))?;
                    for (name, tensor) in loaded {
                        tensors.insert(name, tensor.to_device(device)?);
                    }
                }
            }
        }
        Ok(WeightStore {
            tensors,
            base_prefix: String::new(),
            dtype: DType::F32,
            dense_dtype: DType::F32,
            interleaved_rotary: matches!(weights, Weights::Gguf(_)),
            quantized,
            quantize: None,
            block_activations: BlockActivations::default(),
        })
    }

    /// Decoders' dense matrices to be quantized to `quantize` (`SERVER_QUANTIZE`).
    pub fn with_quantize(mut self, quantize: Option<Quantize>) -> Self {
        self.quantize = quantize;
        self
    }

    /// What the quantized-block layers made from this store multiply their weights with.
    pub fn with_block_activations(mut self, activations: BlockActivations) -> Self {
        self.block_activations = activations;
        self
    }

    pub fn block_activations(&self) -> BlockActivations {
        self.block_activations
    }

    /// Whether query and key rows pair rotary dimensions as neighbours (GGUF files).
    pub fn interleaved_rotary(&self) -> bool {
        self.interleaved_rotary
    }

    /// The quantized matrix of this name, if the file keeps it quantized.
    pub fn quantized(&self, name: &str) -> Option<Arc<QTensor>> {
        self.quantized.get(name).cloned()
    }

    /// What `SERVER_QUANTIZE` asked for.
    pub fn quantize(&self) -> Option<Quantize> {
        self.quantize
    }

    /// Dense layers of the fused CPU path asked to run in `dtype` (bfloat16 where the CPU
    /// pays for it), the tensors still handed out in the store's dtype.
    pub fn with_dense_dtype(mut self, dtype: DType) -> Self {
        self.dense_dtype = dtype;
        self
    }

    pub fn dense_dtype(&self) -> DType {
        self.dense_dtype
    }

    /// The same tensors, handed out as `dtype` (converted when read; integer tensors unchanged),
    /// dense layers asked for in it too.
    pub fn in_dtype(&self, dtype: DType) -> WeightStore {
        WeightStore {
            tensors: self.tensors.clone(),
            base_prefix: self.base_prefix.clone(),
            dtype,
            dense_dtype: dtype,
            quantized: self.quantized.clone(),
            interleaved_rotary: self.interleaved_rotary,
            quantize: self.quantize,
            block_activations: self.block_activations,
        }
    }

    /// The tensors under `prefix` (`encoder.`), named without it: one part of a composite
    /// checkpoint (VisionEncoderDecoder's encoder and decoder) as its own model's store.
    pub fn sub(&self, prefix: &str) -> WeightStore {
        fn under<T: Clone>(map: &HashMap<String, T>, prefix: &str) -> HashMap<String, T> {
            map.iter()
                .filter_map(|(name, t)| Some((name.strip_prefix(prefix)?.to_string(), t.clone())))
                .collect()
        }
        WeightStore {
            tensors: under(&self.tensors, prefix),
            base_prefix: String::new(),
            dtype: self.dtype,
            dense_dtype: self.dense_dtype,
            quantized: under(&self.quantized, prefix),
            interleaved_rotary: self.interleaved_rotary,
            quantize: self.quantize,
            block_activations: self.block_activations,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Chooses the base-model prefix: `prefix` when the checkpoint is a task model
    /// (`bert.embeddings...`), none when it is a bare base model (`embeddings...`).
    pub fn detect_base_prefix(&mut self, prefix: &str, probe: &str) {
        let with = format!("{prefix}.{probe}");
        self.base_prefix = if self.contains(&with) {
            format!("{prefix}.")
        } else {
            String::new()
        };
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.quantized.contains_key(name)
    }

    /// Whether the base model has this tensor.
    pub fn contains_base(&self, name: &str) -> bool {
        self.contains(&format!("{}{name}", self.base_prefix))
    }

    /// A base-model tensor (the prefix is added when the checkpoint has it).
    pub fn base(&self, name: &str) -> Result<Tensor> {
        self.get(&format!("{}{name}", self.base_prefix))
    }

    /// A base-model tensor's values as host f32, flattened (for our CPU kernels' packing).
    pub fn base_host(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self
            .base(name)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// A tensor inside the base model (`base`) or by its full name.
    pub fn named(&self, name: &str, base: bool) -> Result<Tensor> {
        if base {
            self.base(name)
        } else {
            self.get(name)
        }
    }

    /// The base model's tensors, renamed from this checkpoint's prefix to `prefix` (for networks
    /// that load through a candle `VarBuilder`, which converts them to its own dtype).
    pub fn base_tensors(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(name, tensor)| {
                let rest = name.strip_prefix(&self.base_prefix)?;
                Some((format!("{prefix}{rest}"), tensor.clone()))
            })
            .collect()
    }

    /// A tensor by its full name, in the store's dtype.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .or_else(|| {
                // Old checkpoints name LayerNorm parameters gamma/beta.
                let legacy = name.strip_suffix(".weight").map(|s| format!("{s}.gamma"));
                let legacy =
                    legacy.or_else(|| name.strip_suffix(".bias").map(|s| format!("{s}.beta")));
                legacy.and_then(|l| self.tensors.get(&l))
            })
            .ok_or_else(|| anyhow!("weight `{name}` is missing from the checkpoint"));
        let tensor = match (tensor, self.quantized.get(name)) {
            (Ok(tensor), _) => tensor.clone(),
            // A quantized matrix read as a tensor (what no decoder layer does): dequantized.
            (Err(_), Some(q)) => q.dequantize(&q.device())?,
            (Err(e), None) => return Err(e),
        };
        Ok(if tensor.dtype().is_float() {
            tensor.to_dtype(self.dtype)?
        } else {
            tensor
        })
    }
}
