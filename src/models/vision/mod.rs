//! Image networks in `transformers`' weight names: ViT, DeiT and DINOv2 (transformer encoders
//! over patches) and ResNet and ConvNeXt (convolutional). Each takes `pixel_values` [B, 3, H, W]
//! and returns its classification logits; [`ImageClassifier`] is what the batcher drives. They
//! run in f32.

pub mod blip;
pub mod clip;
pub mod convnext;
pub mod deit;
pub mod detr;
pub mod dinov2;
pub mod encoder;
pub mod resnet;
pub mod siglip;
pub mod vit;
pub mod yolos;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::layers::{LayerNorm, Linear};
use super::weights::WeightStore;
use super::{Batch, BatchModel, Output};
use crate::device::Placement;
use crate::source::ModelFiles;

pub use encoder::{multi_head_attention, read_tower, LayerBias, LayerNames, VitConfig, VitEncoder};

/// A network's classification forward pass: `pixel_values` [B, 3, H, W] → logits [B, labels].
pub trait ImageNetwork: Send + Sync {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor>;
    /// The last hidden state [B, S, D] (image-feature-extraction).
    fn hidden_states(&self, _pixels: &Tensor) -> Result<Tensor> {
        bail!("this network has no image features here")
    }
    /// The base model's `pooler_output` [B, D] from its last hidden state, if it has a pooler.
    fn pooled(&self, _hidden: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    fn has_pooler(&self) -> bool {
        false
    }
    /// For a convolutional network, the shape of its feature maps' pooler output (its last
    /// hidden state is [B, C, h, w] rather than token rows).
    fn feature_maps(&self) -> Option<PooledMaps> {
        None
    }
}

/// A convolutional network's feature maps: their channels, and how its `pooler_output` is
/// shaped, as the pipeline lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PooledMaps {
    pub channels: usize,
    /// [B, C, 1, 1] (ResNet's adaptive average pool); else [B, C] (ConvNeXt's normalised mean).
    pub grid: bool,
}

/// The `model_type`s with an image classifier here.
pub const MODEL_TYPES: &[&str] = &["vit", "deit", "dinov2", "resnet", "convnext"];

/// The checkpoint of an image network: f32 tensors, its ViT-family encoder's dense layers (and
/// ResNet's convolutions, DETR's backbone among them; ConvNeXt's pointwise layers) in the
/// requested precision (bfloat16, int8) where the CPU kernels run them.
pub fn vision_store(files: &ModelFiles, placement: &Placement) -> Result<WeightStore> {
    Ok(WeightStore::load(&files.weights, &placement.device)?
        .with_dense_dtype(placement.dtype)
        .with_quantize(placement.quantize))
}

/// The classifier of `config.json` (`...ForImageClassification`) with its weights.
pub fn load_classifier(
    files: &ModelFiles,
    config: &ModelConfig,
    placement: &Placement,
) -> Result<ImageClassifier> {
    let mut store = vision_store(files, placement)?;
    let network: Box<dyn ImageNetwork> = match config.model_type.as_str() {
        "vit" => Box::new(vit::Vit::load(config, &mut store)?),
        "deit" => Box::new(deit::Deit::load(config, &mut store)?),
        "dinov2" => Box::new(dinov2::Dinov2::load(config, &mut store)?),
        "resnet" => Box::new(resnet::ResNet::load(config, &mut store)?),
        "convnext" => Box::new(convnext::ConvNext::load(config, &mut store)?),
        other => bail!(
            "model_type `{other}` has no image classifier here; supported: {}",
            MODEL_TYPES.join(", ")
        ),
    };
    Ok(ImageClassifier {
        network,
        device: placement.device.clone(),
    })
}

/// The base model of `config.json` for image-feature-extraction (ViT, DINOv2).
pub fn load_features(
    files: &ModelFiles,
    config: &ModelConfig,
    placement: &Placement,
) -> Result<ImageFeatures> {
    let mut store = vision_store(files, placement)?;
    Ok(ImageFeatures {
        network: load_feature_network(config, &mut store)?,
        device: placement.device.clone(),
    })
}

/// A network that gives image features (its last hidden state): ViT, DINOv2, DeiT, ResNet,
/// ConvNeXt, CLIP's vision tower alone.
pub fn load_feature_network(
    config: &ModelConfig,
    store: &mut WeightStore,
) -> Result<Box<dyn ImageNetwork>> {
    Ok(match config.model_type.as_str() {
        "vit" => Box::new(vit::Vit::load(config, store)?),
        "dinov2" => Box::new(dinov2::Dinov2::load(config, store)?),
        "deit" => Box::new(deit::Deit::load(config, store)?),
        "resnet" => Box::new(resnet::ResNet::load_base(config, store)?),
        "convnext" => Box::new(convnext::ConvNext::load_base(config, store)?),
        "clip_vision_model" => Box::new(clip::ClipVision::load(config, store)?),
        other => {
            bail!("model_type `{other}` has no image features here; supported: vit, dinov2, deit, resnet, convnext, clip_vision_model (CLIPVisionModel)")
        }
    })
}

/// Image features: per image, the last hidden state's rows and, when the network has a pooler,
/// one more row after them, the pooled output (the pipeline keeps what `pool` asks for).
pub struct ImageFeatures {
    network: Box<dyn ImageNetwork>,
    device: Device,
}

impl ImageFeatures {
    /// Whether the outputs end with a pooled row.
    pub fn has_pooler(&self) -> bool {
        self.network.has_pooler()
    }

    /// A convolutional network's pooler shape (its outputs are maps, `Output::Rows` of one
    /// map row each: channels x height rows of `width`, then the pooled values, one per
    /// channel).
    pub fn feature_maps(&self) -> Option<PooledMaps> {
        self.network.feature_maps()
    }
}

impl BatchModel for ImageFeatures {
    fn forward(&self, batch: &Batch) -> Result<Vec<Output>> {
        let mut outputs: Vec<Option<Output>> = vec![None; batch.len()];
        for_each_image_group(batch, &self.device, |members, pixels| {
            let hidden = self.network.hidden_states(pixels)?;
            let pooled = self.network.pooled(&hidden)?;
            // Token rows [B, S, D], or maps [B, C, h, w] as C * h rows of w.
            let hidden = match hidden.dims() {
                &[b, c, h, w] => hidden.reshape((b, c * h, w))?,
                _ => hidden,
            };
            let (_, _, width) = hidden.dims3()?;
            let hidden = hidden.to_dtype(DType::F32)?.to_vec3::<f32>()?;
            let pooled = match pooled {
                Some(p) => Some(p.to_dtype(DType::F32)?.to_vec2::<f32>()?),
                None => None,
            };
            for (n, (&i, rows)) in members.iter().zip(hidden).enumerate() {
                let mut values: Vec<f32> = rows.concat();
                if let Some(pooled) = &pooled {
                    values.extend_from_slice(&pooled[n]);
                }
                outputs[i] = Some(Output::Rows { values, width });
            }
            Ok(())
        })?;
        every_image(outputs)
    }
}

pub struct ImageClassifier {
    network: Box<dyn ImageNetwork>,
    device: Device,
}

impl ImageClassifier {
    /// The network itself (benches time its forward pass without the batcher).
    pub fn network(&self) -> &dyn ImageNetwork {
        self.network.as_ref()
    }
}

impl BatchModel for ImageClassifier {
    fn forward(&self, batch: &Batch) -> Result<Vec<Output>> {
        let mut outputs: Vec<Option<Output>> = vec![None; batch.len()];
        for_each_image_group(batch, &self.device, |members, pixels| {
            let logits = self
                .network
                .logits(pixels)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (&i, row) in members.iter().zip(logits) {
                outputs[i] = Some(Output::Vector(row));
            }
            Ok(())
        })?;
        every_image(outputs)
    }
}

/// Each batch member's output, once every image group has run: an error for a member without
/// an image (which an image model's batch never holds).
pub fn every_image(outputs: Vec<Option<Output>>) -> Result<Vec<Output>> {
    outputs
        .into_iter()
        .map(|o| o.context("a sequence without an image in an image model's batch"))
        .collect()
}

/// The images of a batch stacked by shape (processors with a crop make them all one shape):
/// `run(indices in the batch, pixel_values [n, C, H, W])` once per shape.
pub fn for_each_image_group(
    batch: &Batch,
    device: &Device,
    mut run: impl FnMut(&[usize], &Tensor) -> Result<()>,
) -> Result<()> {
    let mut groups: BTreeMap<(usize, usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, p) in batch.pixels.iter().enumerate() {
        if let Some(p) = p {
            groups
                .entry((p.channels, p.height, p.width))
                .or_default()
                .push(i);
        }
    }
    for ((channels, height, width), members) in groups {
        let mut data = Vec::with_capacity(members.len() * channels * height * width);
        for &i in &members {
            if let Some(p) = &batch.pixels[i] {
                data.extend_from_slice(&p.data);
            }
        }
        let pixels = Tensor::from_vec(data, (members.len(), channels, height, width), device)?;
        run(&members, &pixels)?;
    }
    Ok(())
}

/// `nn.Conv2d` with its weight [out, in / groups, k, k] and optional bias.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    groups: usize,
    dilation: usize,
}

impl Conv2d {
    pub fn load(
        store: &WeightStore,
        name: &str,
        stride: usize,
        padding: usize,
        groups: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = store.base(&format!("{name}.weight"))?;
        let bias = if bias {
            Some(store.base(&format!("{name}.bias"))?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
            groups,
            dilation: 1,
        })
    }

    /// The convolution with its kernel's taps `dilation` apart, padded by `padding`.
    pub fn dilated(self, dilation: usize, padding: usize) -> Self {
        Conv2d {
            dilation,
            padding,
            ..self
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(
            &self.weight,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
        )?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
            None => y,
        })
    }
}

/// A linear layer on the last axis of a tensor of any rank (the packed kernels take 2-D input).
/// Pixels [B, C, H, W] (any dtype) as channels-last host maps, for the CPU's convolution kernels.
pub fn host_maps(pixels: &Tensor) -> Result<crate::kernels::FeatureMaps> {
    let (n, c, h, w) = pixels.dims4()?;
    let data = pixels
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(crate::kernels::FeatureMaps::from_nchw(n, c, h, w, &data))
}

/// Host maps back as an f32 tensor [B, C, H, W] on the CPU.
pub fn maps_tensor(maps: &crate::kernels::FeatureMaps) -> Result<Tensor> {
    let shape = (maps.images, maps.channels, maps.height, maps.width);
    Ok(Tensor::from_vec(maps.to_nchw(), shape, &Device::Cpu)?)
}

pub fn linear_nd(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let last = *dims.last().context("a tensor without axes")?;
    let rows = x.elem_count() / last.max(1);
    let y = layer.forward(&x.reshape((rows, last))?)?;
    let mut out_dims = dims;
    let width = y.dim(1)?;
    *out_dims.last_mut().expect("non-empty") = width;
    Ok(y.reshape(out_dims)?)
}

/// A base model's pooler output from its last hidden state [B, S, D]: the first token through
/// the `pooler` dense layer and tanh (ViT's and DeiT's poolers); None without a pooler.
pub fn first_token_pooled(pooler: Option<&Linear>, hidden: &Tensor) -> Result<Option<Tensor>> {
    use candle_core::IndexOp;
    match pooler {
        Some(dense) => Ok(Some(
            linear_nd(dense, &hidden.i((.., 0, ..))?.contiguous()?)?.tanh()?,
        )),
        None => Ok(None),
    }
}

/// LayerNorm over the channels of [B, C, H, W] (ConvNeXt's `channels_first`).
pub fn layer_norm_channels_first(norm: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    let y = norm.forward(&x.permute((0, 2, 3, 1))?.contiguous()?)?;
    Ok(y.permute((0, 3, 1, 2))?.contiguous()?)
}

/// The ViT family's `embeddings.patch_embeddings.projection`: a `patch` x `patch` convolution
/// with stride `patch` (one output per patch).
pub fn load_patch_projection(store: &WeightStore, patch: usize) -> Result<Conv2d> {
    Conv2d::load(
        store,
        "embeddings.patch_embeddings.projection",
        patch,
        0,
        1,
        true,
    )
}

/// Patch embeddings: the `patch_embeddings.projection` convolution, as [B, patches, D].
pub fn patch_embeddings(projection: &Conv2d, pixels: &Tensor) -> Result<Tensor> {
    let y = projection.forward(pixels)?;
    Ok(y.flatten_from(2)?.transpose(1, 2)?.contiguous()?)
}

/// Prepends tokens ([1, 1, D] each, in order) to [B, N, D] patch embeddings.
pub fn with_tokens(tokens: &[&Tensor], patches: &Tensor) -> Result<Tensor> {
    let (b, _, d) = patches.dims3()?;
    let mut parts: Vec<Tensor> = tokens
        .iter()
        .map(|t| t.broadcast_as((b, 1, d)).map_err(Into::into))
        .collect::<Result<_>>()?;
    parts.push(patches.clone());
    Ok(Tensor::cat(&parts, 1)?)
}

/// The model's `image_size` against the processed image's: ViT and DeiT (without
/// `interpolate_pos_encoding`, as the pipelines call them) refuse another size.
pub fn check_size(pixels: &Tensor, image_size: usize, model: &str) -> Result<()> {
    let (_, _, h, w) = pixels.dims4()?;
    if (h, w) != (image_size, image_size) {
        bail!("Input image size ({h}*{w}) doesn't match model ({image_size}*{image_size}) of {model}: check preprocessor_config.json's size");
    }
    Ok(())
}
