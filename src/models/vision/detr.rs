//! DETR (`DetrForObjectDetection`) in `transformers`' names, with a `transformers` ResNet
//! backbone (`use_timm_backbone: false`): `model.backbone.conv_encoder.model.{embedder, encoder}`,
//! or a timm ResNet (`use_timm_backbone: true`, `backbone: "resnet50"`, as `facebook/detr-resnet-50`
//! ships; `dilation` for the DC5 ones): `model.backbone.conv_encoder.model.{conv1, bn1, layer1..4}`
//! (both our [`ResNetBody`];
//! BatchNorm frozen, folded; DETR takes the last map), `model.input_projection` (1x1 conv),
//! sine position embeddings, `model.encoder.layers.N` and `model.decoder.layers.N` (post-norm
//! layers; positions added to queries and keys, not values), `model.decoder.layernorm`,
//! `model.query_position_embeddings` (the object queries), `class_labels_classifier` and
//! `bbox_predictor.layers.{0,1,2}`. Images are never padded here (each shape runs as its own
//! group), so the pixel mask is all ones and no attention mask is needed. Per image the model
//! answers one row per query: the class logits (labels + "no object") then the box (cx, cy, w, h)
//! in [0, 1].

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::resnet::{ResNetBody, ResNetConfig};
use super::{every_image, for_each_image_group, linear_nd, multi_head_attention, Conv2d};
use crate::device::Placement;
use crate::models::config::{Activation, ModelConfig};
use crate::models::layers::{activate, LayerNorm, Linear};
use crate::models::weights::WeightStore;
use crate::models::{Batch, BatchModel, Output};
use crate::source::ModelFiles;

/// `nn.LayerNorm`'s default, which DETR's layers keep.
const LAYER_NORM_EPS: f64 = 1e-5;
const BACKBONE: &str = "model.backbone.conv_encoder.model";

#[derive(Debug, Clone, Deserialize)]
struct DetrConfig {
    #[serde(default = "default_d_model")]
    d_model: usize,
    #[serde(default = "default_layers")]
    encoder_layers: usize,
    #[serde(default = "default_layers")]
    decoder_layers: usize,
    #[serde(default = "default_heads")]
    encoder_attention_heads: usize,
    #[serde(default = "default_heads")]
    decoder_attention_heads: usize,
    #[serde(default = "default_act")]
    activation_function: String,
    #[serde(default = "default_position")]
    position_embedding_type: String,
    #[serde(default = "default_true")]
    use_timm_backbone: bool,
    #[serde(default)]
    backbone_config: Option<serde_json::Value>,
    /// The timm model (`use_timm_backbone`), e.g. `resnet50`.
    #[serde(default)]
    backbone: Option<String>,
    /// The arguments of timm's `create_model` (`out_indices`, `in_chans`, ...).
    #[serde(default)]
    backbone_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// DC5: the last stage dilated instead of strided (timm's `output_stride` 16).
    #[serde(default)]
    dilation: Option<bool>,
}

fn default_d_model() -> usize {
    256
}
fn default_layers() -> usize {
    6
}
fn default_heads() -> usize {
    8
}
fn default_act() -> String {
    "relu".into()
}
fn default_position() -> String {
    "sine".into()
}
fn default_true() -> bool {
    true
}

/// `DetrAttention`: positions added to the queries and keys, never to the values.
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    heads: usize,
}

impl Attention {
    fn load(store: &WeightStore, prefix: &str, heads: usize) -> Result<Self> {
        let lin = |n: &str| Linear::load(store, &format!("{prefix}.{n}"), true);
        Ok(Attention {
            query: lin("q_proj")?,
            key: lin("k_proj")?,
            value: lin("v_proj")?,
            output: lin("out_proj")?,
            heads,
        })
    }

    /// `x` (+ `x_pos`) attends over `memory` (+ `memory_pos`).
    fn forward(
        &self,
        x: &Tensor,
        x_pos: &Tensor,
        memory: &Tensor,
        memory_pos: &Tensor,
    ) -> Result<Tensor> {
        let q = linear_nd(&self.query, &x.broadcast_add(x_pos)?)?;
        let k = linear_nd(&self.key, &memory.broadcast_add(memory_pos)?)?;
        let v = linear_nd(&self.value, memory)?;
        let context = multi_head_attention(&q, &k, &v, self.heads, None)?;
        linear_nd(&self.output, &context)
    }
}

/// An encoder layer (self-attention, MLP) or a decoder layer (with cross-attention between).
struct Layer {
    self_attn: Attention,
    self_attn_norm: LayerNorm,
    cross_attn: Option<(Attention, LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
}

impl Layer {
    fn load(store: &WeightStore, prefix: &str, heads: usize, decoder: bool) -> Result<Self> {
        let name = |n: &str| format!("{prefix}.{n}");
        let norm = |n: &str| LayerNorm::load(store, &name(n), LAYER_NORM_EPS);
        let cross_attn = if decoder {
            Some((
                Attention::load(store, &name("encoder_attn"), heads)?,
                norm("encoder_attn_layer_norm")?,
            ))
        } else {
            None
        };
        Ok(Layer {
            self_attn: Attention::load(store, &name("self_attn"), heads)?,
            self_attn_norm: norm("self_attn_layer_norm")?,
            cross_attn,
            fc1: Linear::load(store, &name("fc1"), true)?,
            fc2: Linear::load(store, &name("fc2"), true)?,
            final_norm: norm("final_layer_norm")?,
        })
    }

    /// Post-norm: `x` with its positions `pos`; a decoder layer also attends over `memory`
    /// (the encoder's output) with its positions `memory_pos`.
    fn forward(
        &self,
        x: &Tensor,
        pos: &Tensor,
        memory: Option<(&Tensor, &Tensor)>,
        activation: Activation,
    ) -> Result<Tensor> {
        let h = self.self_attn.forward(x, pos, x, pos)?;
        let mut x = self.self_attn_norm.forward(&(x + h)?)?;
        if let (Some((attn, norm)), Some((memory, memory_pos))) = (&self.cross_attn, memory) {
            let h = attn.forward(&x, pos, memory, memory_pos)?;
            x = norm.forward(&(x + h)?)?;
        }
        let h = linear_nd(
            &self.fc2,
            &activate(&linear_nd(&self.fc1, &x)?, activation)?,
        )?;
        self.final_norm.forward(&(x + h)?)
    }
}

pub struct Detr {
    backbone: ResNetBody,
    input_projection: Conv2d,
    query_positions: Tensor,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    decoder_norm: LayerNorm,
    classifier: Linear,
    bbox: PredictionHead,
    activation: Activation,
    d_model: usize,
    device: Device,
}

impl Detr {
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        let config: DetrConfig = model.family()?;
        if config.position_embedding_type != "sine" {
            bail!(
                "DETR position_embedding_type `{}` is not supported (sine is)",
                config.position_embedding_type
            );
        }
        let mut store = super::vision_store(files, placement)?;
        let backbone = if config.use_timm_backbone {
            store.detect_base_prefix(BACKBONE, "conv1.weight");
            let model = config
                .backbone
                .as_deref()
                .context("config.json's DETR has use_timm_backbone but no backbone")?;
            let (stages, dilate_last) = timm_stages(&config)?;
            let backbone_config = ResNetConfig::timm(model, stages, dilate_last, &store)?;
            ResNetBody::load(&backbone_config, &store)?
        } else {
            let backbone_config = config
                .backbone_config
                .clone()
                .context("config.json's DETR has no backbone_config")?;
            let backbone_type = backbone_config.get("model_type").and_then(|t| t.as_str());
            if backbone_type != Some("resnet") {
                bail!(
                    "DETR backbone `{}` is not supported (resnet is)",
                    backbone_type.unwrap_or("?")
                );
            }
            let backbone_config: ResNetConfig = serde_json::from_value(backbone_config)
                .context("reading DETR's backbone_config")?;
            store.detect_base_prefix(BACKBONE, "embedder.embedder.convolution.weight");
            ResNetBody::load(&backbone_config, &store)?
        };
        // The transformer's names are under the base model's `model.`.
        store.detect_base_prefix("model", "input_projection.weight");
        let layers = |prefix: &str, count: usize, heads: usize, decoder: bool| {
            (0..count)
                .map(|i| Layer::load(&store, &format!("{prefix}.{i}"), heads, decoder))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Detr {
            input_projection: Conv2d::load(&store, "input_projection", 1, 0, 1, true)?,
            query_positions: store.base("query_position_embeddings.weight")?,
            encoder: layers(
                "encoder.layers",
                config.encoder_layers,
                config.encoder_attention_heads,
                false,
            )?,
            decoder: layers(
                "decoder.layers",
                config.decoder_layers,
                config.decoder_attention_heads,
                true,
            )?,
            decoder_norm: LayerNorm::load(&store, "decoder.layernorm", LAYER_NORM_EPS)?,
            classifier: Linear::load(&store, "class_labels_classifier", false)?,
            bbox: PredictionHead::load(&store, "bbox_predictor", 3)?,
            activation: Activation::parse(&config.activation_function)?,
            d_model: config.d_model,
            backbone,
            device: placement.device.clone(),
        })
    }

    /// pixel_values [B, 3, H, W] → per query, logits then box: [B, queries, labels + 1 + 4].
    fn detect(&self, pixels: &Tensor) -> Result<Tensor> {
        let features = self.backbone.features(pixels)?;
        let projected = self.input_projection.forward(&features)?;
        let (b, d, h, w) = projected.dims4()?;
        let x = projected.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let pos = sine_positions(h, w, d, &self.device)?.unsqueeze(0)?;
        let mut memory = x;
        for layer in &self.encoder {
            memory = layer.forward(&memory, &pos, None, self.activation)?;
        }
        let queries = self.query_positions.unsqueeze(0)?;
        let mut x = Tensor::zeros(
            (b, self.query_positions.dim(0)?, self.d_model),
            DType::F32,
            &self.device,
        )?;
        for layer in &self.decoder {
            x = layer.forward(&x, &queries, Some((&memory, &pos)), self.activation)?;
        }
        let x = self.decoder_norm.forward(&x)?;
        let logits = linear_nd(&self.classifier, &x)?;
        let boxes = candle_nn::ops::sigmoid(&self.bbox.forward(&x)?)?;
        Ok(Tensor::cat(&[logits, boxes], 2)?)
    }
}

/// How many ResNet stages DETR's timm backbone runs, and whether the last is dilated:
/// `create_model(backbone, features_only=True, out_indices=..., **backbone_kwargs)` answers the
/// maps of `out_indices` (0 the stem, 1..4 the stages, negative from the end) and DETR keeps
/// the last; `dilation` (DC5) sets `output_stride` 16 unless the kwargs name one. config.json
/// without `backbone_kwargs` gets DetrConfig's defaults (`out_indices` 1..4).
fn timm_stages(config: &DetrConfig) -> Result<(usize, bool)> {
    let mut stages = 4;
    let mut output_stride = if config.dilation == Some(true) {
        16
    } else {
        32
    };
    let no_kwargs = serde_json::Map::new();
    for (key, value) in config.backbone_kwargs.as_ref().unwrap_or(&no_kwargs) {
        match key.as_str() {
            "out_indices" => {
                let indices = value
                    .as_array()
                    .and_then(|a| a.iter().map(|i| i.as_i64()).collect::<Option<Vec<_>>>())
                    .context("DETR backbone_kwargs out_indices is not a list of integers")?;
                let last = indices.iter().map(|&i| if i < 0 { 5 + i } else { i }).max();
                stages = match last {
                    Some(i @ 1..=4) => i as usize,
                    _ => bail!("DETR backbone_kwargs out_indices {value} is not supported (its last index must be a stage, 1 to 4)"),
                };
            }
            "in_chans" if value.as_u64() == Some(3) => {}
            "output_stride" if matches!(value.as_u64(), Some(16 | 32)) => {
                output_stride = value.as_u64().unwrap_or(32);
            }
            // The widths, which the weights say.
            "channels" => {}
            _ => bail!("DETR backbone_kwargs `{key}`: {value} is not supported (out_indices, in_chans 3, output_stride 16 or 32 and channels are)"),
        }
    }
    Ok((stages, output_stride == 16))
}

/// `DetrSinePositionEmbedding(d_model / 2, normalize=True)` for an unpadded `height` x `width`
/// map, flattened: [height * width, d_model], the y half then the x half, each
/// `[sin(p / t0), cos(p / t0), sin(p / t1), ...]` with `p` the 1-based row (column) scaled
/// to (0, 2π] and `t_i = 10000^(2i / (d_model / 2))`, in f32 as torch computes it.
fn sine_positions(height: usize, width: usize, d_model: usize, device: &Device) -> Result<Tensor> {
    let half = d_model / 2;
    let scale = 2.0 * std::f32::consts::PI;
    let dim_t: Vec<f32> = (0..half)
        .map(|i| 10000f32.powf((2 * (i / 2)) as f32 / half as f32))
        .collect();
    let embed = |p: usize, n: usize| (p as f32 + 1.0) / (n as f32 + 1e-6) * scale;
    let encode = |value: f32, out: &mut Vec<f32>| {
        for (i, t) in dim_t.iter().enumerate() {
            let v = value / t;
            out.push(if i % 2 == 0 { v.sin() } else { v.cos() });
        }
    };
    let mut data = Vec::with_capacity(height * width * half * 2);
    for y in 0..height {
        for x in 0..width {
            encode(embed(y, height), &mut data);
            encode(embed(x, width), &mut data);
        }
    }
    Ok(Tensor::from_vec(data, (height * width, half * 2), device)?)
}

impl BatchModel for Detr {
    fn forward(&self, batch: &Batch) -> Result<Vec<Output>> {
        detection_outputs(batch, &self.device, |pixels| self.detect(pixels))
    }
}

/// A detector's batch: per image, its rows from `detect` (pixel_values [n, 3, H, W] → [n,
/// queries, labels + 1 + 4]: the class logits, then the box), images of one shape together.
pub fn detection_outputs(
    batch: &Batch,
    device: &Device,
    detect: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Output>> {
    let mut outputs: Vec<Option<Output>> = vec![None; batch.len()];
    for_each_image_group(batch, device, |members, pixels| {
        let rows = detect(pixels)?.to_dtype(DType::F32)?;
        let width = rows.dim(2)?;
        for (&i, image) in members.iter().zip(rows.to_vec3::<f32>()?) {
            outputs[i] = Some(Output::Rows {
                values: image.concat(),
                width,
            });
        }
        Ok(())
    })?;
    every_image(outputs)
}

/// DETR's and YOLOS's `...MLPPredictionHead`: `{prefix}.layers.N`, ReLU between them.
pub struct PredictionHead {
    layers: Vec<Linear>,
}

impl PredictionHead {
    pub fn load(store: &WeightStore, prefix: &str, layers: usize) -> Result<Self> {
        let layers = (0..layers)
            .map(|i| Linear::load(store, &format!("{prefix}.layers.{i}"), false))
            .collect::<Result<_>>()?;
        Ok(PredictionHead { layers })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = linear_nd(layer, &x)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timm_config(extra: serde_json::Value) -> DetrConfig {
        let mut config = serde_json::json!({"use_timm_backbone": true, "backbone": "resnet50"});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(config).unwrap()
    }

    #[test]
    fn timm_stages_follow_the_last_out_index() {
        let stages = |extra| timm_stages(&timm_config(extra)).unwrap();
        let refused = |extra| timm_stages(&timm_config(extra)).unwrap_err().to_string();
        let kwargs = |k| serde_json::json!({ "backbone_kwargs": k });
        assert_eq!(stages(serde_json::json!({})), (4, false));
        assert_eq!(stages(serde_json::json!({"dilation": true})), (4, true));
        let all = serde_json::json!({"out_indices": [1, 2, 3, 4], "in_chans": 3});
        assert_eq!(stages(kwargs(all)), (4, false));
        assert_eq!(
            stages(kwargs(serde_json::json!({"out_indices": [2, 3]}))),
            (3, false)
        );
        assert_eq!(
            stages(kwargs(serde_json::json!({"out_indices": [-2]}))),
            (3, false)
        );
        assert_eq!(
            stages(kwargs(serde_json::json!({"output_stride": 16}))),
            (4, true)
        );
        assert!(refused(kwargs(serde_json::json!({"out_indices": [0]}))).contains("out_indices"));
        assert!(refused(kwargs(serde_json::json!({"output_stride": 8}))).contains("output_stride"));
        assert!(refused(kwargs(serde_json::json!({"avg_down": true}))).contains("avg_down"));
    }

    #[test]
    fn sine_positions_interleave_sin_and_cos() {
        let pos = sine_positions(2, 3, 8, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let scale = 2.0 * std::f32::consts::PI;
        // Row 1 (y = 2 of 2), column 0 (x = 1 of 3).
        let row = &pos[3];
        let y = 2.0 / (2.0 + 1e-6) * scale;
        let x = 1.0 / (3.0 + 1e-6) * scale;
        assert!((row[0] - y.sin()).abs() < 1e-6);
        assert!((row[1] - y.cos()).abs() < 1e-6);
        assert!((row[2] - (y / 100.0).sin()).abs() < 1e-6);
        assert!((row[4] - x.sin()).abs() < 1e-6);
        assert!((row[7] - (x / 100.0).cos()).abs() < 1e-6);
    }
}
