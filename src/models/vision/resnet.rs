//! ResNet as `transformers` names it (`ResNetForImageClassification`, not timm's names):
//! `resnet.embedder.embedder.{convolution,normalization}` (7x7 stride 2, BatchNorm, ReLU, 3x3
//! max-pool), `resnet.encoder.stages.S.layers.L.{layer.N,shortcut}.{convolution,normalization}`
//! (basic or bottleneck blocks), average pooling and `classifier.1`. [`ResNetBody`] (the
//! embedder and stages) is also DETR's backbone (`ResNetBackbone`, the same names), and, with
//! timm's names ([`ResNetConfig::timm`]), DETR's timm backbone: `conv1`, `bn1`,
//! `layerS.L.{convN,bnN}`, `layerS.L.downsample.{0,1}` (the same network: timm's bottleneck
//! strides its 3x3 convolution, as transformers' does without `downsample_in_bottleneck`).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::{host_maps, linear_nd, maps_tensor, Conv2d, ImageNetwork, PooledMaps};
use crate::kernels::{self, Activation, FeatureMaps, PackedConv2d};
use crate::models::config::ModelConfig;
use crate::models::encoder::DenseForm;
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
    /// Which library's weight names the checkpoint uses (not in config.json).
    #[serde(skip)]
    names: ResNetNames,
    /// DC5 (timm's `output_stride` 16): the last stage keeps the resolution, its 3x3
    /// convolutions dilated by 2 instead (the first block's first one, as timm builds it, not).
    #[serde(skip)]
    dilate_last: bool,
}

/// The weight names of a ResNet: `transformers`' or timm's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ResNetNames {
    #[default]
    Transformers,
    Timm,
}

impl ResNetNames {
    /// The stem convolution and its BatchNorm.
    fn stem(self) -> (String, String) {
        match self {
            ResNetNames::Transformers => (
                "embedder.embedder.convolution".into(),
                "embedder.embedder.normalization".into(),
            ),
            ResNetNames::Timm => ("conv1".into(), "bn1".into()),
        }
    }

    /// Convolution `n` (0-based) of block `l` of stage `s`, and its BatchNorm.
    fn layer(self, s: usize, l: usize, n: usize) -> (String, String) {
        match self {
            ResNetNames::Transformers => {
                let p = format!("encoder.stages.{s}.layers.{l}.layer.{n}");
                (format!("{p}.convolution"), format!("{p}.normalization"))
            }
            ResNetNames::Timm => {
                let p = format!("layer{}.{l}", s + 1);
                (format!("{p}.conv{}", n + 1), format!("{p}.bn{}", n + 1))
            }
        }
    }

    /// The projection shortcut of block `l` of stage `s`, and its BatchNorm.
    fn shortcut(self, s: usize, l: usize) -> (String, String) {
        match self {
            ResNetNames::Transformers => {
                let p = format!("encoder.stages.{s}.layers.{l}.shortcut");
                (format!("{p}.convolution"), format!("{p}.normalization"))
            }
            ResNetNames::Timm => {
                let p = format!("layer{}.{l}.downsample", s + 1);
                (format!("{p}.0"), format!("{p}.1"))
            }
        }
    }
}

impl ResNetConfig {
    /// The configuration of timm's `resnet18/26/34/50/101/152` (a pretrained tag such as
    /// `.a1_in1k` aside) as DETR's timm backbone, its first `stages` stages, with the widths of
    /// the weights under the store's base prefix (timm's `channels` argument changes them);
    /// `dilate_last`: timm's `output_stride` 16.
    pub fn timm(
        model: &str,
        stages: usize,
        dilate_last: bool,
        store: &WeightStore,
    ) -> Result<Self> {
        let arch = model.split('.').next().unwrap_or(model);
        let (bottleneck, depths) = match arch {
            "resnet18" => (false, vec![2, 2, 2, 2]),
            "resnet34" => (false, vec![3, 4, 6, 3]),
            "resnet26" => (true, vec![2, 2, 2, 2]),
            "resnet50" => (true, vec![3, 4, 6, 3]),
            "resnet101" => (true, vec![3, 4, 23, 3]),
            "resnet152" => (true, vec![3, 8, 36, 3]),
            _ => bail!("timm backbone `{model}` is not supported (resnet18, resnet26, resnet34, resnet50, resnet101 and resnet152 are)"),
        };
        if !(1..=depths.len()).contains(&stages) {
            bail!("timm ResNet backbone with {stages} stages is not supported (1 to 4 are)");
        }
        let names = ResNetNames::Timm;
        let out_channels =
            |name: &str| -> Result<usize> { Ok(store.base(&format!("{name}.weight"))?.dim(0)?) };
        let last_conv = if bottleneck { 2 } else { 1 };
        let hidden_sizes = (0..depths.len())
            .map(|s| out_channels(&names.layer(s, 0, last_conv).0))
            .collect::<Result<Vec<_>>>()?;
        Ok(ResNetConfig {
            embedding_size: out_channels(&names.stem().0)?,
            hidden_sizes,
            depths,
            layer_type: if bottleneck { "bottleneck" } else { "basic" }.into(),
            hidden_act: "relu".into(),
            downsample_in_first_stage: false,
            downsample_in_bottleneck: false,
            out_features: Some(vec![format!("stage{stages}")]),
            names,
            dilate_last,
        })
    }
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

/// A convolution without bias, its BatchNorm folded in at load (eval mode), and ReLU or not:
/// on the CPU into the packed channels-last kernel's weights and bias (the ReLU applied to each
/// strip of outputs while in cache), elsewhere as candle ops.
enum ConvLayer {
    Packed(PackedConv2d),
    Tensors {
        conv: Conv2d,
        scale: Tensor,
        shift: Tensor,
        relu: bool,
    },
}

impl ConvLayer {
    /// The convolution and the BatchNorm named by `(conv, norm)`; on the CPU its product in
    /// `form` (`SERVER_DTYPE=bfloat16`, `SERVER_QUANTIZE=int8`).
    fn load(
        store: &WeightStore,
        (conv, norm): (String, String),
        kernel: usize,
        stride: usize,
        relu: bool,
        form: DenseForm,
    ) -> Result<Self> {
        Self::load_dilated(store, (conv, norm), kernel, stride, 1, relu, form)
    }

    fn load_dilated(
        store: &WeightStore,
        (conv, norm): (String, String),
        kernel: usize,
        stride: usize,
        dilation: usize,
        relu: bool,
        form: DenseForm,
    ) -> Result<Self> {
        let (scale, shift) = batch_norm(store, &norm)?;
        let padding = dilation * (kernel / 2);
        let weight = store.base(&format!("{conv}.weight"))?;
        if matches!(weight.device(), Device::Cpu) && !kernels::generic_kernels_forced() {
            let host = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
            };
            let (scale, shift) = (host(&scale)?, host(&shift)?);
            let (outputs, inputs, kh, kw) = weight.dims4()?;
            if (kh, kw) != (kernel, kernel) || scale.len() != outputs {
                bail!("{conv}: a {kh} x {kw} kernel with {outputs} outputs and {norm} of {} channels, where this ResNet has {kernel} x {kernel} kernels and matching norms", scale.len());
            }
            let mut folded = host(&weight)?;
            let per_output = folded.len() / outputs.max(1);
            for (o, row) in folded.chunks_exact_mut(per_output).enumerate() {
                row.iter_mut().for_each(|w| *w *= scale[o]);
            }
            let packed = PackedConv2d::pack(&folded, &shift, inputs, kernel, stride, kernel / 2)
                .dilated(dilation, padding)
                .map_layer(|layer| form.convert_packed(layer));
            return Ok(ConvLayer::Packed(if relu {
                packed.activated(Activation::Relu)
            } else {
                packed
            }));
        }
        let conv =
            Conv2d::load(store, &conv, stride, kernel / 2, 1, false)?.dilated(dilation, padding);
        Ok(ConvLayer::Tensors {
            conv,
            scale,
            shift,
            relu,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ConvLayer::Tensors {
            conv,
            scale,
            shift,
            relu,
        } = self
        else {
            bail!("a packed ResNet convolution on a tensor");
        };
        let y = conv
            .forward(x)?
            .broadcast_mul(scale)?
            .broadcast_add(shift)?;
        Ok(if *relu { y.relu()? } else { y })
    }

    fn forward_maps(&self, x: &FeatureMaps) -> Result<FeatureMaps> {
        match self {
            ConvLayer::Packed(conv) => Ok(conv.forward(x)),
            ConvLayer::Tensors { .. } => bail!("a tensor ResNet convolution on host maps"),
        }
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
    /// None for a base `ResNetModel` (image features).
    classifier: Option<Linear>,
}

impl ResNet {
    /// `ResNetForImageClassification`.
    pub fn load(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let mut resnet = Self::load_base(model, store)?;
        resnet.classifier = Some(Linear::load(store, "classifier.1", false)?);
        Ok(resnet)
    }

    /// The base `ResNetModel` (a classifier's checkpoint too: its head is left out).
    pub fn load_base(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let config: ResNetConfig = model.family()?;
        store.detect_base_prefix("resnet", "embedder.embedder.convolution.weight");
        Ok(ResNet {
            body: ResNetBody::load(&config, store)?,
            classifier: None,
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
        let names = config.names;
        let stem_weight = store.base(&format!("{}.weight", names.stem().0))?;
        let form = DenseForm::choose(store, stem_weight.device());
        let embedder = ConvLayer::load(store, names.stem(), 7, 2, true, form)?;
        let mut stages = Vec::new();
        let mut in_channels = config.embedding_size;
        for (s, (&out, &depth)) in config
            .hidden_sizes
            .iter()
            .zip(&config.depths)
            .enumerate()
            .take(used)
        {
            let dilated = config.dilate_last && s + 1 == config.depths.len();
            let first_stride = if (s == 0 && !config.downsample_in_first_stage) || dilated {
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
                let shortcut = if inp != out || stride != 1 {
                    Some(ConvLayer::load(
                        store,
                        names.shortcut(s, l),
                        1,
                        stride,
                        false,
                        form,
                    )?)
                } else {
                    None
                };
                // timm's dilated stage: its first 3x3 convolution keeps the previous
                // stage's dilation (1), the others dilate by 2.
                let (first_dilation, dilation) = match (dilated, l) {
                    (false, _) => (1, 1),
                    (true, 0) => (1, 2),
                    (true, _) => (2, 2),
                };
                let conv = |n: usize, kernel, stride, dilation, relu| {
                    ConvLayer::load_dilated(
                        store,
                        names.layer(s, l, n),
                        kernel,
                        stride,
                        dilation,
                        relu,
                        form,
                    )
                };
                let layers = if bottleneck {
                    let (s0, s1) = if config.downsample_in_bottleneck {
                        (stride, 1)
                    } else {
                        (1, stride)
                    };
                    vec![
                        conv(0, 1, s0, 1, true)?,
                        conv(1, 3, s1, first_dilation, true)?,
                        conv(2, 1, 1, 1, false)?,
                    ]
                } else {
                    vec![
                        conv(0, 3, stride, first_dilation, true)?,
                        conv(1, 3, 1, dilation, false)?,
                    ]
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
        if matches!(self.embedder, ConvLayer::Packed(_)) {
            return self.features_on_host(pixels);
        }
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

    /// [`features`](Self::features) on the CPU: channels-last maps through the packed
    /// convolutions, the residual added and ReLU applied in one pass.
    fn features_on_host(&self, pixels: &Tensor) -> Result<Tensor> {
        let ConvLayer::Packed(stem) = &self.embedder else {
            bail!("a tensor ResNet stem on host maps");
        };
        let maps = host_maps(pixels)?;
        if maps.channels != stem.inputs() {
            bail!(
                "{} image channels for a ResNet stem of {} (check num_channels)",
                maps.channels,
                stem.inputs()
            );
        }
        let x = self.embedder.forward_maps(&maps)?;
        let mut x = kernels::max_pool(&x, 3, 2, 1);
        for stage in &self.stages {
            for block in stage {
                let mut h = block.layers[0].forward_maps(&x)?;
                for layer in &block.layers[1..] {
                    h = layer.forward_maps(&h)?;
                }
                let shortcut = match &block.shortcut {
                    Some(shortcut) => Some(shortcut.forward_maps(&x)?),
                    None => None,
                };
                let residual = &shortcut.as_ref().unwrap_or(&x).data;
                let channels = h.channels;
                kernels::in_row_blocks(&mut h.data, channels, |first, rows| {
                    let from = &residual[first * channels..][..rows.len()];
                    for (v, r) in rows.iter_mut().zip(from) {
                        *v = (*v + r).max(0.0);
                    }
                });
                x = h;
            }
        }
        maps_tensor(&x)
    }
}

impl ImageNetwork for ResNet {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let classifier = self
            .classifier
            .as_ref()
            .context("a ResNet without a classifier")?;
        let pooled = self.body.features(pixels)?.mean((2, 3))?;
        linear_nd(classifier, &pooled.contiguous()?)
    }

    fn hidden_states(&self, pixels: &Tensor) -> Result<Tensor> {
        self.body.features(pixels)
    }

    /// `ResNetModel`'s pooler: an adaptive average pool to 1 x 1.
    fn pooled(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(hidden.mean((2, 3))?))
    }

    fn has_pooler(&self) -> bool {
        true
    }

    fn feature_maps(&self) -> Option<PooledMaps> {
        Some(PooledMaps {
            channels: self.body.channels(),
            grid: true,
        })
    }
}
