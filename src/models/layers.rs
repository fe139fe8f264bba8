//! Layers the model families share, in candle tensors, each with its fused CPU form where there
//! is one (the slice kernels are in `crate::kernels`).

use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

use super::weights::WeightStore;
use crate::kernels::{self, PackedLinear};

/// A dense layer `y = x W^T + b`: packed panels for the CPU kernels (f32 weights on the CPU),
/// candle's matmul elsewhere.
pub enum Linear {
    Packed(PackedLinear),
    Candle { weight_t: Tensor, bias: Tensor },
}

impl Linear {
    /// `weight`: [out, in] as stored by PyTorch; `bias`: [out].
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        if matches!(weight.device(), Device::Cpu)
            && weight.dtype() == DType::F32
            && !kernels::generic_kernels_forced()
        {
            let (out, inp) = weight.dims2()?;
            let w = weight.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            Ok(Linear::Packed(PackedLinear::pack(&w, &b, out, inp)))
        } else {
            Ok(Linear::Candle {
                weight_t: weight.t()?.contiguous()?,
                bias: bias.clone(),
            })
        }
    }

    /// Loads `{name}.weight` and `{name}.bias`; `base` names are inside the base model.
    pub fn load(store: &WeightStore, name: &str, base: bool) -> Result<Self> {
        let get = |suffix: &str| {
            let full = format!("{name}.{suffix}");
            if base {
                store.base(&full)
            } else {
                store.get(&full)
            }
        };
        Linear::new(&get("weight")?, &get("bias")?)
    }

    /// `{name}.weight` of a layer built with `bias=False`.
    pub fn load_no_bias(store: &WeightStore, name: &str) -> Result<Self> {
        Linear::no_bias(&store.get(&format!("{name}.weight"))?)
    }

    /// A layer without bias (a zero bias keeps one kernel).
    pub fn no_bias(weight: &Tensor) -> Result<Self> {
        let bias = Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?;
        Linear::new(weight, &bias)
    }

    /// The packed CPU kernel on a host slice: n rows of `in` → n rows of `out`.
    pub fn forward_slice(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Linear::Packed(packed) if x.len() == n * packed.inputs() => Ok(packed.forward(x, n)),
            Linear::Packed(packed) => bail!(
                "linear layer expects {} x {} inputs, got {}",
                n,
                packed.inputs(),
                x.len()
            ),
            Linear::Candle { .. } => {
                bail!("this linear layer lives on a device, not in host memory")
            }
        }
    }

    /// A packed layer with its weights in bfloat16 (when the CPU can); others unchanged.
    pub fn into_bf16(self) -> Linear {
        match &self {
            Linear::Packed(packed) => packed.to_bf16().map_or(self, Linear::Packed),
            Linear::Candle { .. } => self,
        }
    }

    /// `x`: [n, in] → [n, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Packed(packed) => {
                let (n, inp) = x.dims2()?;
                if inp != packed.inputs() {
                    bail!("linear layer expects {} inputs, got {inp}", packed.inputs());
                }
                let x = x.contiguous()?;
                let y = {
                    let (storage, layout) = x.storage_and_layout();
                    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                        bail!("packed linear layers take f32 CPU tensors");
                    };
                    let start = layout.start_offset();
                    packed.forward(&data[start..start + n * inp], n)
                };
                Ok(Tensor::from_vec(y, (n, packed.outputs()), x.device())?)
            }
            Linear::Candle { weight_t, bias } => Ok(x.matmul(weight_t)?.broadcast_add(bias)?),
        }
    }
}
