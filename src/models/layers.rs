//! The layers the model families share: dense (`Linear`), `LayerNorm`, `RmsNorm`, activations
//! and rotary position tables, in candle tensors, with their fused CPU forms where the encoder
//! has one (`Linear::forward_slice`, `LayerNorm::apply`; the slice kernels are `crate::kernels`).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::config::Activation;
use super::host::on_host_f32;
use super::weights::WeightStore;
use crate::kernels::{self, PackedLinear};

/// A dense layer `y = x W^T + b`: packed panels for the CPU kernels (f32 weights on the CPU),
/// candle's matmul elsewhere.
pub enum Linear {
    Packed(PackedLinear),
    Candle {
        weight_t: Tensor,
        bias: Tensor,
    },
    /// Weights in GGUF quantized blocks (decoders: GGUF files, `SERVER_QUANTIZE`); no bias.
    Quantized(super::quantized::QLinear),
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
        let get = |suffix: &str| store.named(&format!("{name}.{suffix}"), base);
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

    /// Q, K and V (`(weight, bias)` each) as one layer, the 1/sqrt(d) attention scale folded
    /// into the queries: one GEMM for the three, whose rows `kernels::attention` reads in place.
    pub fn fused_qkv(parts: [(Tensor, Tensor); 3], query_scale: f64) -> Result<Self> {
        let [(qw, qb), (kw, kb), (vw, vb)] = parts;
        let qw = (qw * query_scale)?;
        let qb = (qb * query_scale)?;
        let weight = Tensor::cat(&[&qw, &kw, &vw], 0)?;
        let bias = Tensor::cat(&[&qb, &kb, &vb], 0)?;
        Linear::new(&weight, &bias)
    }

    /// Whether the layer runs on the packed CPU kernels (host slices).
    pub fn is_packed(&self) -> bool {
        matches!(self, Linear::Packed(_))
    }

    /// The packed CPU kernel on a host slice: n rows of `in` → n rows of `out`.
    pub fn forward_slice(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.forward_slice_activated(x, n, None)
    }

    /// `forward_slice`, then `activation` (fused into the product where the kernel can).
    pub fn forward_slice_activated(
        &self,
        x: &[f32],
        n: usize,
        activation: Option<Activation>,
    ) -> Result<Vec<f32>> {
        match self {
            Linear::Packed(packed) if x.len() == n * packed.inputs() => {
                Ok(packed.forward_activated(x, n, activation))
            }
            Linear::Packed(packed) => bail!(
                "linear layer expects {} x {} inputs, got {}",
                n,
                packed.inputs(),
                x.len()
            ),
            Linear::Candle { .. } => {
                bail!("this linear layer lives on a device, not in host memory")
            }
            Linear::Quantized(_) => bail!("quantized layers take tensors"),
        }
    }

    /// A packed layer with its weights in bfloat16 (when the CPU can); others unchanged.
    pub fn into_bf16(self) -> Linear {
        match &self {
            Linear::Packed(packed) => packed.to_bf16().map_or(self, Linear::Packed),
            Linear::Candle { .. } | Linear::Quantized(_) => self,
        }
    }

    /// A packed f32 layer with int8 weights (`SERVER_QUANTIZE=int8`); others unchanged.
    pub fn into_int8(self) -> Linear {
        match &self {
            Linear::Packed(packed) => packed.to_int8().map_or(self, Linear::Packed),
            Linear::Candle { .. } | Linear::Quantized(_) => self,
        }
    }

    /// Which int8 kernel a packed int8 layer runs (None for every other layer).
    pub fn int8_kernel(&self) -> Option<&'static str> {
        match self {
            Linear::Packed(packed) => packed.int8_kernel(),
            Linear::Candle { .. } | Linear::Quantized(_) => None,
        }
    }

    /// Which of our GGUF block kernels a quantized layer runs (None for every other layer).
    pub fn block_kernel(&self) -> Option<&'static str> {
        match self {
            Linear::Quantized(super::quantized::QLinear::Blocks(matrix)) => {
                Some(matrix.kernel_name())
            }
            _ => None,
        }
    }

    /// Which bf16 kernel a packed bf16 layer runs (None for every other layer).
    pub fn bf16_kernel(&self) -> Option<&'static str> {
        match self {
            Linear::Packed(packed) => packed.bf16_kernel(),
            Linear::Candle { .. } | Linear::Quantized(_) => None,
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
                let y = on_host_f32(&x, "packed linear layers", |x| packed.forward(x, n))?;
                Ok(Tensor::from_vec(y, (n, packed.outputs()), x.device())?)
            }
            Linear::Candle { weight_t, bias } => Ok(x.matmul(weight_t)?.broadcast_add(bias)?),
            Linear::Quantized(q) => q.forward(x),
        }
    }
}

/// LayerNorm over the last dimension, with weight and bias (a zero bias for `bias=False`).
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    /// Host copies for the fused CPU path (a few KiB).
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// `{name}.weight` / `{name}.bias` inside the base model.
    pub fn load(store: &WeightStore, name: &str, eps: f64) -> Result<Self> {
        Self::load_named(store, name, eps, true)
    }

    /// `{name}.weight` / `{name}.bias`; `base` names are inside the base model.
    pub fn load_named(store: &WeightStore, name: &str, eps: f64, base: bool) -> Result<Self> {
        let get = |suffix: &str| store.named(&format!("{name}.{suffix}"), base);
        let weight = get("weight")?;
        let bias = get("bias")?;
        Self::new(weight, bias, eps)
    }

    /// `{name}.weight` of a LayerNorm built with `bias=False` (ModernBERT's).
    pub fn load_no_bias(store: &WeightStore, name: &str, eps: f64) -> Result<Self> {
        let weight = store.get(&format!("{name}.weight"))?;
        let bias = weight.zeros_like()?;
        Self::new(weight, bias, eps)
    }

    fn new(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        let host = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        Ok(LayerNorm {
            gamma: host(&weight)?,
            beta: host(&bias)?,
            weight,
            bias,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }

    /// The fused CPU form: rows of `x` (host memory) normalised in place.
    pub fn apply(&self, x: &mut [f32]) {
        kernels::layer_norm(x, self.gamma.len(), &self.gamma, &self.beta, self.eps);
    }
}

/// RMSNorm: x / sqrt(mean(x²) + eps) * weight, no mean, no bias (T5LayerNorm, LlamaRMSNorm).
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f32) -> Self {
        RmsNorm { weight, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

/// `activation` applied to a tensor (the device-generic twin of `kernels::activate`).
pub fn activate(x: &Tensor, activation: Activation) -> Result<Tensor> {
    Ok(match activation {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
        Activation::Silu => candle_nn::ops::silu(x)?,
        Activation::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
    })
}

/// cos and sin of position x inverse frequency, [positions, head_dim / 2], as `transformers`
/// computes them (in f32, then cast).
pub fn rotary_tables(
    theta: f64,
    head_dim: usize,
    positions: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64) as f32)
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
    let t = Tensor::arange(0u32, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let angles = t.broadcast_mul(&inv_freq)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?.contiguous()?,
        angles.sin()?.to_dtype(dtype)?.contiguous()?,
    ))
}
