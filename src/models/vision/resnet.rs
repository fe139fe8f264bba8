//! ResNet as `transformers` names it (`ResNetForImageClassification`, not timm's names):
//! `resnet.embedder.embedder.{convolution,normalization}` (7x7 stride 2, BatchNorm, ReLU, 3x3
//! max-pool), `resnet.encoder.stages.S.layers.L.{layer.N,shortcut}.{convolution,normalization}`
//! (basic or bottleneck blocks), average pooling and `classifier.1`. [`ResNetBody`] (the
//! embedder and stages) is also DETR's backbone (`ResNetBackbone`, the same names).

use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::Deserialize;

use super::{linear_nd, Conv2d, ImageNetwork};
use crate::models::config::ModelConfig;
use crate::models::layers::Linear;
use crate::models::weights::WeightStore;

/// `ResNetConfig` (a DETR config's `backbone_config`, or a classifier's config.json).
#[derive(Debug, Clone, Deserialize)]
pub struct ResNetConfig {
    #[serde(default = "default_embedding_size")]
    embedding_size: usize,
    #[serde(default = "default_hidden_sizes")]
    hidden_sizes: Vec<usize>,
    #[serde(default = "default_depths")]
    depths: Vec<usize>,
    #[serde(default = "default_layer_type")]
    layer_type: String,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    downsample_in_first_stage: bool,
    #[serde(default)]
    downsample_in_bottleneck: bool,
    /// As a backbone: the stages whose maps it answers (`stage4`); the last is used.
    #[serde(default)]
    out_features: Option<Vec<String>>,
}

fn default_embedding_size() -> usize {
    64
}
fn default_hidden_sizes() -> Vec<usize> {
    vec![256, 512, 1024, 2048]
}
fn default_depths() -> Vec<usize> {
    vec![3, 4, 6, 3]
}
fn default_layer_type() -> String {
    "bottleneck".into()
}
fn default_act() -> String {
    "relu".into()
}

/// A convolution without bias, its BatchNorm folded in at load (eval mode), and ReLU or not.
struct ConvLayer {
    conv: Conv2d,
    scale: Tensor,
    shift: Tensor,
    relu: bool,
}

impl ConvLayer {
    fn load(
        store: &WeightStore,
        name: &str,
        kernel: usize,
        stride: usize,
        relu: bool,
    ) -> Result<Self> {
        let conv = Conv2d::load(
            store,
            &format!("{name}.convolution"),
            stride,
            kernel / 2,
            1,
            false,
        )?;
        let (scale, shift) = batch_norm(store, &format!("{name}.normalization"))?;
        Ok(ConvLayer {
            conv,
            scale,
            shift,
            relu,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self
            .conv
            .forward(x)?
            .broadcast_mul(&self.scale)?
            .broadcast_add(&self.shift)?;
        Ok(if self.relu { y.relu()? } else { y })
    }
}

/// `nn.BatchNorm2d` in eval mode as a per-channel scale and shift ([1, C, 1, 1]):
/// `(x - mean) / sqrt(var + eps) * weight + bias`.
fn batch_norm(store: &WeightStore, name: &str) -> Result<(Tensor, Tensor)> {
    let get = |n: &str| store.base(&format!("{name}.{n}"));
    let (weight, bias) = (get("weight")?, get("bias")?);
    let (mean, var) = (get("running_mean")?, get("running_var")?);
    let channels = weight.dim(0)?;
    let scale = weight.div(&(var + 1e-5)?.sqrt()?)?;
    let shift = (bias - mean.mul(&scale)?)?;
    Ok((
        scale.reshape((1, channels, 1, 1))?,
        shift.reshape((1, channels, 1, 1))?,
    ))
}

struct Block {
    layers: Vec<ConvLayer>,
    shortcut: Option<ConvLayer>,
}

/// The embedder and the stages (a backbone's `embedder`, `encoder.stages.S`).
pub struct ResNetBody {
    embedder: ConvLayer,
    stages: Vec<Vec<Block>>,
    channels: usize,
}

pub struct ResNet {
    body: ResNetBody,
    classifier: Linear,
}

impl ResNet {
    pub fn load(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let config: ResNetConfig = model.family()?;
        store.detect_base_prefix("resnet", "embedder.embedder.convolution.weight");
        Ok(ResNet {
            body: ResNetBody::load(&config, store)?,
            classifier: Linear::load(store, "classifier.1", false)?,
        })
    }
}

impl ResNetBody {
    /// The layers under the store's base prefix, up to the last of `out_features` (all stages
    /// without it).
    pub fn load(config: &ResNetConfig, store: &WeightStore) -> Result<Self> {
        if config.hidden_act != "relu" {
            bail!(
                "ResNet hidden_act `{}` is not supported (relu is)",
                config.hidden_act
            );
        }
        let bottleneck = match config.layer_type.as_str() {
            "bottleneck" => true,
            "basic" => false,
            other => bail!("ResNet layer_type `{other}` is not supported"),
        };
        if config.hidden_sizes.len() != config.depths.len() {
            bail!("ResNet hidden_sizes and depths differ in length");
        }
        let used = match config.out_features.as_ref().and_then(|f| f.last()) {
            None => config.depths.len(),
            Some(name) => match name.strip_prefix("stage").and_then(|n| n.parse().ok()) {
                Some(n) if (1..=config.depths.len()).contains(&n) => n,
                _ => bail!(
                    "ResNet backbone out_features `{name}` is not supported (stage1.. stage{} are)",
                    config.depths.len()
                ),
            },
        };
        let embedder = ConvLayer::load(store, "embedder.embedder", 7, 2, true)?;
        let mut stages = Vec::new();
        let mut in_channels = config.embedding_size;
        for (s, (&out, &depth)) in config
            .hidden_sizes
            .iter()
            .zip(&config.depths)
            .enumerate()
            .take(used)
        {
            let first_stride = if s == 0 && !config.downsample_in_first_stage {
                1
            } else {
                2
            };
            let mut blocks = Vec::with_capacity(depth);
            for l in 0..depth {
                let (inp, stride) = if l == 0 {
                    (in_channels, first_stride)
                } else {
                    (out, 1)
                };
                let p = format!("encoder.stages.{s}.layers.{l}");
                let shortcut = if inp != out || stride != 1 {
                    Some(ConvLayer::load(
                        store,
                        &format!("{p}.shortcut"),
                        1,
                        stride,
                        false,
                    )?)
                } else {
                    None
                };
                let conv = |n: usize, kernel, stride, relu| {
                    ConvLayer::load(store, &format!("{p}.layer.{n}"), kernel, stride, relu)
                };
                let layers = if bottleneck {
                    let (s0, s1) = if config.downsample_in_bottleneck {
                        (stride, 1)
                    } else {
                        (1, stride)
                    };
                    vec![
                        conv(0, 1, s0, true)?,
                        conv(1, 3, s1, true)?,
                        conv(2, 1, 1, false)?,
                    ]
                } else {
                    vec![conv(0, 3, stride, true)?, conv(1, 3, 1, false)?]
                };
                blocks.push(Block { layers, shortcut });
            }
            stages.push(blocks);
            in_channels = out;
        }
        Ok(ResNetBody {
            embedder,
            stages,
            channels: in_channels,
        })
    }

    /// The channels of the feature map [`features`](Self::features) answers.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The last stage's feature map [B, C, H / 32, W / 32] (at 4 stages).
    pub fn features(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.embedder.forward(pixels)?;
        // MaxPool2d(3, stride 2, padding 1): after ReLU every value is >= 0, so zero padding
        // never wins over a real value and equals torch's -inf padding.
        let mut x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        x = x.max_pool2d_with_stride(3, 2)?;
        for stage in &self.stages {
            for block in stage {
                let residual = match &block.shortcut {
                    Some(shortcut) => shortcut.forward(&x)?,
                    None => x.clone(),
                };
                let mut h = x;
                for layer in &block.layers {
                    h = layer.forward(&h)?;
                }
                x = (h + residual)?.relu()?;
            }
        }
        Ok(x)
    }
}

impl ImageNetwork for ResNet {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self.body.features(pixels)?.mean((2, 3))?;
        linear_nd(&self.classifier, &pooled.contiguous()?)
    }
}
