//! ConvNeXt as `transformers` names it (`ConvNextForImageClassification`):
//! `convnext.embeddings.{patch_embeddings,layernorm}`, `convnext.encoder.stages.S.
//! {downsampling_layer.0/1, layers.L.{dwconv,layernorm,pwconv1,pwconv2,layer_scale_parameter}}`,
//! `convnext.layernorm` over the pooled features, and `classifier`.
//!
//! On the CPU the layers run on channels-last maps through our kernels (`HostLayers`): the
//! patch and downsampling convolutions packed, the 7 x 7 depthwise convolutions channel-vectorized
//! (candle's grouped convolution was most of the time), the pointwise layers as packed dense
//! products over the pixels with GELU on each block of rows, the layer scale folded into the
//! second one; no permutes between them. Elsewhere candle's ops.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::{
    host_maps, layer_norm_channels_first, linear_nd, maps_tensor, Conv2d, ImageNetwork, PooledMaps,
};
use crate::kernels::{self, DepthwiseConv2d, FeatureMaps, PackedConv2d, PackedLinear};
use crate::models::config::{Activation, ModelConfig};
use crate::models::encoder::DenseForm;
use crate::models::layers::{activate, LayerNorm, Linear};
use crate::models::weights::WeightStore;

#[derive(Debug, Clone, Deserialize)]
struct ConvNextConfig {
    #[serde(default = "default_patch_size")]
    patch_size: usize,
    hidden_sizes: Vec<usize>,
    depths: Vec<usize>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
}

fn default_patch_size() -> usize {
    4
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}

/// The LayerNorms inside the network (`ConvNextLayerNorm`) use a fixed epsilon.
const INNER_EPS: f64 = 1e-6;

struct Layer {
    dwconv: Conv2d,
    layernorm: LayerNorm,
    pwconv1: Linear,
    pwconv2: Linear,
    scale: Option<Tensor>,
}

struct Stage {
    downsampling: Option<(LayerNorm, Conv2d)>,
    layers: Vec<Layer>,
}

pub struct ConvNext {
    patch_embeddings: Conv2d,
    embeddings_norm: LayerNorm,
    stages: Vec<Stage>,
    layernorm: LayerNorm,
    /// None for a base `ConvNextModel` (image features).
    classifier: Option<Linear>,
    activation: Activation,
    /// The last stage's channels.
    channels: usize,
    /// The same layers for channels-last maps on the CPU.
    host: Option<HostLayers>,
}

/// A LayerNorm over channels on the host: weight, bias.
type HostNorm = (Vec<f32>, Vec<f32>);

struct HostLayers {
    stem: PackedConv2d,
    stem_norm: HostNorm,
    stages: Vec<HostStage>,
}

struct HostStage {
    downsampling: Option<(HostNorm, PackedConv2d)>,
    layers: Vec<HostLayer>,
}

struct HostLayer {
    dwconv: DepthwiseConv2d,
    norm: HostNorm,
    pwconv1: PackedLinear,
    /// The layer scale folded into its rows and bias.
    pwconv2: PackedLinear,
}

impl ConvNext {
    /// `ConvNextForImageClassification`.
    pub fn load(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let mut convnext = Self::load_base(model, store)?;
        convnext.classifier = Some(Linear::load(store, "classifier", false)?);
        Ok(convnext)
    }

    /// The base `ConvNextModel` (a classifier's checkpoint too: its head is left out).
    pub fn load_base(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let config: ConvNextConfig = model.family()?;
        if config.hidden_sizes.len() != config.depths.len() || config.depths.is_empty() {
            bail!("ConvNeXt hidden_sizes and depths differ in length");
        }
        store.detect_base_prefix("convnext", "embeddings.patch_embeddings.weight");
        let p = config.patch_size;
        let patch_embeddings = Conv2d::load(store, "embeddings.patch_embeddings", p, 0, 1, true)?;
        let embeddings_norm = LayerNorm::load(store, "embeddings.layernorm", INNER_EPS)?;
        let mut stages = Vec::new();
        let mut in_channels = config.hidden_sizes[0];
        for (s, (&out, &depth)) in config.hidden_sizes.iter().zip(&config.depths).enumerate() {
            let stride = if s > 0 { 2 } else { 1 };
            let prefix = format!("encoder.stages.{s}");
            let downsampling = if in_channels != out || stride > 1 {
                let d = format!("{prefix}.downsampling_layer");
                Some((
                    LayerNorm::load(store, &format!("{d}.0"), INNER_EPS)?,
                    Conv2d::load(store, &format!("{d}.1"), stride, 0, 1, true)?,
                ))
            } else {
                None
            };
            let mut layers = Vec::with_capacity(depth);
            for l in 0..depth {
                let n = |x: &str| format!("{prefix}.layers.{l}.{x}");
                let scale_name = n("layer_scale_parameter");
                layers.push(Layer {
                    dwconv: Conv2d::load(store, &n("dwconv"), 1, 3, out, true)?,
                    layernorm: LayerNorm::load(store, &n("layernorm"), INNER_EPS)?,
                    pwconv1: Linear::load(store, &n("pwconv1"), true)?,
                    pwconv2: Linear::load(store, &n("pwconv2"), true)?,
                    scale: if store.contains_base(&scale_name) {
                        Some(store.base(&scale_name)?)
                    } else {
                        None
                    },
                });
            }
            stages.push(Stage {
                downsampling,
                layers,
            });
            in_channels = out;
        }
        let on_cpu = matches!(
            store.base("embeddings.patch_embeddings.weight")?.device(),
            Device::Cpu
        );
        let host = (on_cpu && !kernels::generic_kernels_forced())
            .then(|| HostLayers::load(&config, store))
            .transpose()?;
        Ok(ConvNext {
            patch_embeddings,
            embeddings_norm,
            stages,
            layernorm: LayerNorm::load(store, "layernorm", config.layer_norm_eps)?,
            classifier: None,
            channels: in_channels,
            activation: Activation::parse(&config.hidden_act)
                .with_context(|| format!("hidden_act `{}`", config.hidden_act))?,
            host,
        })
    }
}

impl HostLayers {
    fn load(config: &ConvNextConfig, store: &WeightStore) -> Result<Self> {
        // (weight, bias) of a layer
        let weight_bias = |name: &str| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                store.base_host(&format!("{name}.weight"))?,
                store.base_host(&format!("{name}.bias"))?,
            ))
        };
        let conv = |name: &str, inputs: usize, kernel: usize| -> Result<PackedConv2d> {
            let (weight, bias) = weight_bias(name)?;
            Ok(PackedConv2d::pack(
                &weight, &bias, inputs, kernel, kernel, 0,
            ))
        };
        // SERVER_DTYPE=bfloat16 / SERVER_QUANTIZE=int8: the pointwise layers (most of the work)
        let form = DenseForm::choose(store, &Device::Cpu);
        let dense = |name: &str, scale: Option<&[f32]>| -> Result<PackedLinear> {
            let (mut weight, mut bias) = weight_bias(name)?;
            let (out, inp) = (bias.len(), weight.len() / bias.len().max(1));
            if let Some(scale) = scale {
                for (o, row) in weight.chunks_exact_mut(inp).enumerate() {
                    row.iter_mut().for_each(|w| *w *= scale[o]);
                    bias[o] *= scale[o];
                }
            }
            Ok(form.convert_packed(PackedLinear::pack(&weight, &bias, out, inp)))
        };
        let channels_in = store.base("embeddings.patch_embeddings.weight")?.dim(1)?;
        let p = config.patch_size;
        let mut stages = Vec::new();
        let mut in_channels = config.hidden_sizes[0];
        for (s, (&out, &depth)) in config.hidden_sizes.iter().zip(&config.depths).enumerate() {
            let prefix = format!("encoder.stages.{s}");
            let d = format!("{prefix}.downsampling_layer");
            let downsampling = if in_channels != out || s > 0 {
                Some((
                    weight_bias(&format!("{d}.0"))?,
                    conv(&format!("{d}.1"), in_channels, 2)?,
                ))
            } else {
                None
            };
            let layers = (0..depth)
                .map(|l| {
                    let n = |x: &str| format!("{prefix}.layers.{l}.{x}");
                    let scale_name = n("layer_scale_parameter");
                    let scale = store
                        .contains_base(&scale_name)
                        .then(|| store.base_host(&scale_name))
                        .transpose()?;
                    let dw = n("dwconv");
                    let (_, _, kernel, _) = store.base(&format!("{dw}.weight"))?.dims4()?;
                    let (weight, bias) = weight_bias(&dw)?;
                    Ok(HostLayer {
                        dwconv: DepthwiseConv2d::pack(&weight, &bias, kernel),
                        norm: weight_bias(&n("layernorm"))?,
                        pwconv1: dense(&n("pwconv1"), None)?,
                        pwconv2: dense(&n("pwconv2"), scale.as_deref())?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            stages.push(HostStage {
                downsampling,
                layers,
            });
            in_channels = out;
        }
        let first = stages.iter().flat_map(|s| &s.layers).next();
        let form = match first.map(|l| (l.pwconv1.bf16_kernel(), l.pwconv1.int8_kernel())) {
            Some((Some(kernel), _)) => format!("bfloat16 ({kernel})"),
            Some((_, Some(kernel))) => format!("int8 ({kernel})"),
            _ => "f32".into(),
        };
        tracing::info!("convnext: channels-last CPU layers, pointwise layers in {form}");
        Ok(HostLayers {
            stem: conv("embeddings.patch_embeddings", channels_in, p)?,
            stem_norm: weight_bias("embeddings.layernorm")?,
            stages,
        })
    }

    /// The last stage's maps [B, C, h, w] from pixels [B, 3, H, W].
    fn hidden_states(&self, pixels: &Tensor, activation: Activation) -> Result<Tensor> {
        let maps = host_maps(pixels)?;
        if maps.channels != self.stem.inputs() {
            bail!(
                "{} image channels for a ConvNeXt of {}",
                maps.channels,
                self.stem.inputs()
            );
        }
        let mut x = self.stem.forward(&maps);
        normalize(&mut x, &self.stem_norm);
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsampling {
                normalize(&mut x, norm);
                x = conv.forward(&x);
            }
            for layer in &stage.layers {
                if layer.dwconv.channels() != x.channels {
                    bail!(
                        "ConvNeXt layer of {} channels over {}",
                        layer.dwconv.channels(),
                        x.channels
                    );
                }
                let mut h = layer.dwconv.forward(&x);
                normalize(&mut h, &layer.norm);
                let pixels = h.pixels();
                let inner = layer
                    .pwconv1
                    .forward_rows_activated(&h.data, pixels, Some(activation));
                let out = layer.pwconv2.forward_rows(&inner, pixels);
                let channels = x.channels;
                kernels::in_row_blocks(&mut x.data, channels, |first, rows| {
                    kernels::add(rows, &out[first * channels..][..rows.len()]);
                });
            }
        }
        maps_tensor(&x)
    }
}

/// `ConvNextLayerNorm` over each pixel's channels, in place.
fn normalize(x: &mut FeatureMaps, (weight, bias): &HostNorm) {
    let channels = x.channels;
    kernels::in_row_blocks(&mut x.data, channels, |_, rows| {
        kernels::layer_norm(rows, channels, weight, bias, INNER_EPS as f32);
    });
}

impl ImageNetwork for ConvNext {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let classifier = self
            .classifier
            .as_ref()
            .context("a ConvNeXt without a classifier")?;
        let pooled = self.pooled(&self.hidden_states(pixels)?)?;
        let pooled = pooled.context("ConvNeXt pools")?;
        linear_nd(classifier, &pooled.contiguous()?)
    }

    /// The last stage's maps [B, C, h, w] (before the final norm, as `last_hidden_state`).
    fn hidden_states(&self, pixels: &Tensor) -> Result<Tensor> {
        if let Some(host) = &self.host {
            return host.hidden_states(pixels, self.activation);
        }
        let x = self.patch_embeddings.forward(pixels)?;
        let mut x = layer_norm_channels_first(&self.embeddings_norm, &x)?;
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsampling {
                x = conv.forward(&layer_norm_channels_first(norm, &x)?)?;
            }
            for layer in &stage.layers {
                let h = layer
                    .dwconv
                    .forward(&x)?
                    .permute((0, 2, 3, 1))?
                    .contiguous()?;
                let h = layer.layernorm.forward(&h)?;
                let h = activate(&linear_nd(&layer.pwconv1, &h)?, self.activation)?;
                let mut h = linear_nd(&layer.pwconv2, &h)?;
                if let Some(scale) = &layer.scale {
                    h = h.broadcast_mul(scale)?;
                }
                x = (x + h.permute((0, 3, 1, 2))?)?;
            }
        }
        Ok(x)
    }

    /// `ConvNextModel`'s pooler: the maps' mean, normalised.
    fn pooled(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.layernorm.forward(&hidden.mean((2, 3))?)?))
    }

    fn has_pooler(&self) -> bool {
        true
    }

    fn feature_maps(&self) -> Option<PooledMaps> {
        Some(PooledMaps {
            channels: self.channels,
            grid: false,
        })
    }
}
