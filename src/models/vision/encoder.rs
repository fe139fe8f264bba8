//! The transformer encoder over patches (or tokens) that ViT, DeiT, DINOv2 and CLIP share,
//! with each one's weight names; Wav2Vec2's speech frames run on it too (post-norm or pre-norm).
//!
//! On the CPU with f32 weights it runs as the text encoder's fused path does: Q, K and V are one
//! packed dense layer with the 1/sqrt(d) scale folded into the queries, attention is
//! `kernels::attention` reading the fused rows in place, and norms, activations and residuals
//! are slice kernels: no per-op tensors, no head transposes. There its dense layers run in
//! bfloat16 (`SERVER_DTYPE=bfloat16` on a CPU whose bf16 kernels pay: AMX tiles, AVX512-BF16)
//! or int8 (`SERVER_QUANTIZE=int8`) as the text encoders' do, everything else in f32. Elsewhere
//! (GPU, or CLIP's masked text tower) it runs in candle tensors.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, D};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::linear_nd;
use crate::kernels;
use crate::models::config::Activation;
use crate::models::encoder::DenseForm;
use crate::models::layers::{activate, LayerNorm, Linear};
use crate::models::weights::WeightStore;

/// The transformer encoder that ViT, DeiT and DINOv2 share, with each one's weight names.
#[derive(Debug, Clone, Deserialize)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// DINOv2: the MLP width as a multiple of the hidden size.
    #[serde(default)]
    pub mlp_ratio: Option<f64>,
    /// DINOv2 (giant): a SwiGLU MLP.
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    /// ViT: Q, K and V with biases (TrOCR's ViT encoders have none).
    #[serde(default = "default_qkv_bias")]
    pub qkv_bias: bool,
}

fn default_qkv_bias() -> bool {
    true
}

/// A two-tower model's `text_config` or `vision_config` (CLIP, SigLIP), read as `T` (the tower's
/// [`VitConfig`], or its extra settings): `defaults`, the family's config class defaults, under
/// what config.json sets.
pub fn read_tower<T: DeserializeOwned>(
    value: Option<&serde_json::Value>,
    defaults: serde_json::Value,
    which: &str,
) -> Result<T> {
    let mut merged = defaults;
    match (value, &mut merged) {
        (Some(serde_json::Value::Object(set)), serde_json::Value::Object(out)) => {
            out.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())))
        }
        (None | Some(serde_json::Value::Null), _) => {}
        (Some(other), _) => anyhow::bail!("config.json's {which} is not an object: {other}"),
    }
    serde_json::from_value(merged).with_context(|| format!("reading config.json's {which}"))
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    16
}
fn default_channels() -> usize {
    3
}

/// Which names the layers use: ViT/DeiT's (`layernorm_before`, `intermediate.dense`),
/// DINOv2's (`norm1`, `mlp.fc1`, `layer_scale1`), CLIP's (`layer_norm1`, `self_attn.q_proj`),
/// BLIP's (CLIP's, but one `self_attn.qkv` and `self_attn.projection`) or Wav2Vec2's
/// (`attention.q_proj`, `layer_norm`, `feed_forward.intermediate_dense`, `final_layer_norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerNames {
    Vit,
    Dinov2,
    Clip,
    Blip,
    Wav2Vec2,
}

enum Mlp {
    Dense { fc1: Linear, fc2: Linear },
    SwiGlu { w_in: Linear, w_out: Linear },
}

/// DINOv2's LayerScale: a per-channel factor on each residual branch (with a host copy).
struct LayerScale {
    lambda: Tensor,
    host: Vec<f32>,
}

impl LayerScale {
    fn load(store: &WeightStore, name: &str) -> Result<Self> {
        let lambda = store.base(&format!("{name}.lambda1"))?;
        let host = lambda.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        Ok(LayerScale { lambda, host })
    }
}

struct EncoderLayer {
    norm1: LayerNorm,
    /// Q, K and V as one layer, the queries pre-scaled by 1/sqrt(head_dim).
    qkv: Linear,
    output: Linear,
    scale1: Option<LayerScale>,
    norm2: LayerNorm,
    mlp: Mlp,
    scale2: Option<LayerScale>,
}

impl EncoderLayer {
    fn is_packed(&self) -> bool {
        let mlp_packed = match &self.mlp {
            Mlp::Dense { fc1, fc2 } => fc1.is_packed() && fc2.is_packed(),
            Mlp::SwiGlu { .. } => false,
        };
        mlp_packed && self.qkv.is_packed() && self.output.is_packed()
    }
}

/// A bias on each layer's attention scores that depends on the layer's input (WavLM's gated
/// relative positions).
pub trait LayerBias {
    /// Layer `layer`'s bias, from its attention's input rows ([S, D], normalised where the
    /// layer normalises first).
    fn for_layer<'a>(
        &'a self,
        layer: usize,
        input: &[f32],
    ) -> Result<Box<dyn kernels::ScoreBias + 'a>>;
}

pub struct VitEncoder {
    layers: Vec<EncoderLayer>,
    heads: usize,
    hidden: usize,
    activation: Activation,
    /// Post-norm layers (Wav2Vec2 without `do_stable_layer_norm`): x = norm1(x + attention(x)),
    /// then x = norm2(x + mlp(x)); pre-norm otherwise.
    post_norm: bool,
}

impl VitEncoder {
    /// The layers `{prefix}.N` (ViT, DeiT, DINOv2: `encoder.layer`).
    pub fn load(config: &VitConfig, store: &WeightStore, names: LayerNames) -> Result<Self> {
        Self::load_at(config, store, names, "encoder.layer")
    }

    pub fn load_at(
        config: &VitConfig,
        store: &WeightStore,
        names: LayerNames,
        prefix: &str,
    ) -> Result<Self> {
        let eps = config.layer_norm_eps;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let mut form = None;
        for i in 0..config.num_hidden_layers {
            let p = format!("{prefix}.{i}");
            let lin = |n: &str| Linear::load(store, &format!("{p}.{n}"), true);
            let norm = |n: &str| LayerNorm::load(store, &format!("{p}.{n}"), eps);
            // `n`: q, k or v (CLIP's `q_proj`; ViT's and DINOv2's `query`, `key`, `value`).
            let attention = |n: &str| -> Result<(Tensor, Tensor)> {
                if names == LayerNames::Blip {
                    // One [3 x hidden, hidden] layer: Q's rows, then K's, then V's.
                    let part = match n {
                        "q" => 0,
                        "k" => 1,
                        _ => 2,
                    };
                    let d = config.hidden_size;
                    let get = |s: &str| store.base(&format!("{p}.self_attn.qkv.{s}"));
                    return Ok((
                        get("weight")?.narrow(0, part * d, d)?,
                        get("bias")?.narrow(0, part * d, d)?,
                    ));
                }
                let name = match (names, n) {
                    (LayerNames::Clip, _) => format!("{p}.self_attn.{n}_proj"),
                    (LayerNames::Wav2Vec2, _) => format!("{p}.attention.{n}_proj"),
                    (_, "q") => format!("{p}.attention.attention.query"),
                    (_, "k") => format!("{p}.attention.attention.key"),
                    _ => format!("{p}.attention.attention.value"),
                };
                let weight = store.base(&format!("{name}.weight"))?;
                let bias = if config.qkv_bias {
                    store.base(&format!("{name}.bias"))?
                } else {
                    Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?
                };
                Ok((weight, bias))
            };
            let (norm1, norm2) = match names {
                LayerNames::Vit => (norm("layernorm_before")?, norm("layernorm_after")?),
                LayerNames::Dinov2 => (norm("norm1")?, norm("norm2")?),
                LayerNames::Clip | LayerNames::Blip => (norm("layer_norm1")?, norm("layer_norm2")?),
                LayerNames::Wav2Vec2 => (norm("layer_norm")?, norm("final_layer_norm")?),
            };
            let mlp = match names {
                LayerNames::Clip | LayerNames::Blip => Mlp::Dense {
                    fc1: lin("mlp.fc1")?,
                    fc2: lin("mlp.fc2")?,
                },
                LayerNames::Vit => Mlp::Dense {
                    fc1: lin("intermediate.dense")?,
                    fc2: lin("output.dense")?,
                },
                LayerNames::Wav2Vec2 => Mlp::Dense {
                    fc1: lin("feed_forward.intermediate_dense")?,
                    fc2: lin("feed_forward.output_dense")?,
                },
                LayerNames::Dinov2 if config.use_swiglu_ffn => Mlp::SwiGlu {
                    w_in: lin("mlp.weights_in")?,
                    w_out: lin("mlp.weights_out")?,
                },
                LayerNames::Dinov2 => Mlp::Dense {
                    fc1: lin("mlp.fc1")?,
                    fc2: lin("mlp.fc2")?,
                },
            };
            let scale = |n: &str| -> Result<Option<LayerScale>> {
                match names {
                    LayerNames::Dinov2 => Ok(Some(LayerScale::load(store, &format!("{p}.{n}"))?)),
                    _ => Ok(None),
                }
            };
            let head_dim = config.hidden_size / config.num_attention_heads;
            let q = attention("q")?;
            let form = *form.get_or_insert_with(|| DenseForm::choose(store, q.0.device()));
            let mlp = match mlp {
                Mlp::Dense { fc1, fc2 } => Mlp::Dense {
                    fc1: form.convert(fc1),
                    fc2: form.convert(fc2),
                },
                swiglu => swiglu,
            };
            layers.push(EncoderLayer {
                norm1,
                qkv: form.convert(Linear::fused_qkv(
                    [q, attention("k")?, attention("v")?],
                    1.0 / (head_dim as f64).sqrt(),
                )?),
                output: form.convert(match names {
                    LayerNames::Clip => lin("self_attn.out_proj")?,
                    LayerNames::Wav2Vec2 => lin("attention.out_proj")?,
                    LayerNames::Blip => lin("self_attn.projection")?,
                    _ => lin("attention.output.dense")?,
                }),
                scale1: scale("layer_scale1")?,
                norm2,
                mlp,
                scale2: scale("layer_scale2")?,
            });
        }
        if let Some(first) = layers.first() {
            let dense = DenseForm::describe(Some(&first.qkv), candle_core::DType::F32);
            tracing::info!("image encoder ({prefix}): dense layers in {dense}");
        }
        Ok(VitEncoder {
            layers,
            heads: config.num_attention_heads,
            hidden: config.hidden_size,
            activation: Activation::parse(&config.hidden_act)
                .with_context(|| format!("hidden_act `{}`", config.hidden_act))?,
            post_norm: false,
        })
    }

    /// The same layers with their norms after each residual (see `post_norm`).
    pub fn post_norm(self) -> Self {
        VitEncoder {
            post_norm: true,
            ..self
        }
    }

    /// The layers over [B, S, D].
    pub fn forward(&self, x: Tensor) -> Result<Tensor> {
        self.forward_adding(x, &[])
    }

    /// The layers over one sequence [1, S, D], each layer's attention scores biased by
    /// `bias` (WavLM's relative positions); the fused CPU path only.
    pub fn forward_biased(&self, x: Tensor, bias: &dyn LayerBias) -> Result<Tensor> {
        anyhow::ensure!(
            matches!(x.device(), Device::Cpu) && self.layers.iter().all(EncoderLayer::is_packed),
            "biased attention runs on the CPU kernels only (not with SAGEMAKER_HF_GENERIC_KERNELS)"
        );
        anyhow::ensure!(x.dims3()?.0 == 1, "biased attention takes one sequence");
        self.forward_cpu(x, &[], Some(bias))
    }

    /// The layers over [B, S, D], `after_layers[i]` ([S * D], the same for every batch member)
    /// added to the states after layer `i` (YOLOS's mid-layer position embeddings).
    pub fn forward_adding(&self, x: Tensor, after_layers: &[Vec<f32>]) -> Result<Tensor> {
        let (_, seq_len, hidden) = x.dims3()?;
        anyhow::ensure!(
            after_layers.len() <= self.layers.len()
                && after_layers.iter().all(|a| a.len() == seq_len * hidden),
            "additions after the layers do not fit {seq_len} x {hidden} states"
        );
        if matches!(x.device(), Device::Cpu) && self.layers.iter().all(EncoderLayer::is_packed) {
            return self.forward_cpu(x, after_layers, None);
        }
        let after_layers = after_layers
            .iter()
            .map(|a| Tensor::from_slice(a, (1, seq_len, hidden), x.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.forward_tensors(x, None, &after_layers)
    }

    /// The fused CPU path (see the module's comment): the same layers on host rows.
    fn forward_cpu(
        &self,
        x: Tensor,
        after_layers: &[Vec<f32>],
        bias: Option<&dyn LayerBias>,
    ) -> Result<Tensor> {
        let (batch, seq_len, hidden) = x.dims3()?;
        anyhow::ensure!(
            hidden == self.hidden,
            "{hidden} features, expected {}",
            self.hidden
        );
        let tokens = batch * seq_len;
        let lengths = vec![seq_len; batch];
        let mut x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        // A branch's input: x itself (post-norm), or x normalised (pre-norm).
        let branch_input = |x: &Vec<f32>, norm: &LayerNorm| {
            let mut h = x.clone();
            if !self.post_norm {
                norm.apply(&mut h);
            }
            h
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = branch_input(&x, &layer.norm1);
            let qkv = layer.qkv.forward_slice(&h, tokens)?;
            let bf16 = layer.qkv.bf16_kernel().is_some();
            let context = match bias {
                Some(bias) => {
                    let scores = bias.for_layer(i, &h)?;
                    kernels::attention_with_bias(&qkv, seq_len, hidden, self.heads, scores.as_ref())
                }
                None => {
                    kernels::attention(&qkv, &lengths, seq_len, seq_len, hidden, self.heads, bf16)
                }
            };
            let h = layer.output.forward_slice(&context, tokens)?;
            add_scaled(&mut x, &h, &layer.scale1);
            if self.post_norm {
                layer.norm1.apply(&mut x);
            }
            let h = branch_input(&x, &layer.norm2);
            let Mlp::Dense { fc1, fc2 } = &layer.mlp else {
                unreachable!("is_packed: the fused path runs dense MLPs only")
            };
            let inner = fc1.forward_slice_activated(&h, tokens, Some(self.activation))?;
            let h = fc2.forward_slice(&inner, tokens)?;
            add_scaled(&mut x, &h, &layer.scale2);
            if self.post_norm {
                layer.norm2.apply(&mut x);
            }
            if let Some(addition) = after_layers.get(i) {
                for member in x.chunks_exact_mut(addition.len()) {
                    kernels::add(member, addition);
                }
            }
        }
        Ok(Tensor::from_vec(x, (batch, seq_len, hidden), &Device::Cpu)?)
    }

    /// With an additive attention mask broadcast to [B, heads, S, S] (CLIP's text: causal and
    /// padding).
    pub fn forward_masked(&self, x: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_tensors(x, mask, &[])
    }

    /// The candle-tensor path: `mask` as in `forward_masked`, `after_layers` ([1, S, D]) as in
    /// `forward_adding`.
    fn forward_tensors(
        &self,
        mut x: Tensor,
        mask: Option<&Tensor>,
        after_layers: &[Tensor],
    ) -> Result<Tensor> {
        let branch_input = |x: &Tensor, norm: &LayerNorm| -> Result<Tensor> {
            if self.post_norm {
                Ok(x.clone())
            } else {
                norm.forward(x)
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = self.attention(layer, &branch_input(&x, &layer.norm1)?, mask)?;
            let h = scaled(h, &layer.scale1)?;
            x = (x + h)?;
            if self.post_norm {
                x = layer.norm1.forward(&x)?;
            }
            let h = branch_input(&x, &layer.norm2)?;
            let h = match &layer.mlp {
                Mlp::Dense { fc1, fc2 } => {
                    linear_nd(fc2, &activate(&linear_nd(fc1, &h)?, self.activation)?)?
                }
                Mlp::SwiGlu { w_in, w_out } => {
                    let both = linear_nd(w_in, &h)?;
                    let half = both.dim(D::Minus1)? / 2;
                    let gate = candle_nn::ops::silu(&both.narrow(D::Minus1, 0, half)?)?;
                    let up = both.narrow(D::Minus1, half, half)?;
                    linear_nd(w_out, &(gate * up)?)?
                }
            };
            x = (x + scaled(h, &layer.scale2)?)?;
            if self.post_norm {
                x = layer.norm2.forward(&x)?;
            }
            if let Some(addition) = after_layers.get(i) {
                x = x.broadcast_add(addition)?;
            }
        }
        Ok(x)
    }

    fn attention(&self, layer: &EncoderLayer, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let qkv = linear_nd(&layer.qkv, x)?;
        let d = self.hidden;
        let (q, k, v) = (
            qkv.narrow(D::Minus1, 0, d)?,
            qkv.narrow(D::Minus1, d, d)?,
            qkv.narrow(D::Minus1, 2 * d, d)?,
        );
        // The queries are pre-scaled (in the fused weights).
        let context = attend(&q, &k, &v, self.heads, mask, 1.0)?;
        linear_nd(&layer.output, &context)
    }
}

/// Scaled dot-product attention over `heads` heads of projected queries [B, Sq, D] and keys and
/// values [B, Sk, D]: the context [B, Sq, D]. `mask` is additive, broadcast to [B, heads, Sq, Sk].
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)? / heads;
    attend(q, k, v, heads, mask, (head_dim as f64).sqrt())
}

/// The same with the scores divided by `divisor` (1 when the queries are pre-scaled).
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    divisor: f64,
) -> Result<Tensor> {
    let (b, sq, d) = q.dims3()?;
    let dh = d / heads;
    let split = |t: &Tensor| -> Result<Tensor> {
        let s = t.dim(1)?;
        Ok(t.reshape((b, s, heads, dh))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let mut scores = q.matmul(&k.t()?.contiguous()?)?;
    if divisor != 1.0 {
        scores = (scores / divisor)?;
    }
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    Ok(probs
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, sq, d))?)
}

fn scaled(x: Tensor, scale: &Option<LayerScale>) -> Result<Tensor> {
    Ok(match scale {
        Some(s) => x.broadcast_mul(&s.lambda)?,
        None => x,
    })
}

/// `x += h` (each row of `h` times the layer scale, when there is one).
fn add_scaled(x: &mut [f32], h: &[f32], scale: &Option<LayerScale>) {
    match scale {
        None => kernels::add(x, h),
        Some(s) => {
            let width = s.host.len();
            for (xr, hr) in x.chunks_exact_mut(width).zip(h.chunks_exact(width)) {
                for ((a, b), l) in xr.iter_mut().zip(hr).zip(&s.host) {
                    *a += b * l;
                }
            }
        }
    }
}
