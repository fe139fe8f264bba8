//! YOLOS (`YolosForObjectDetection`) in `transformers`' names: a ViT over the patches of the
//! whole (unsquared) image with `num_detection_tokens` learned tokens after them,
//! `vit.embeddings.{cls_token, detection_tokens, position_embeddings,
//! patch_embeddings.projection}`, ViT layers `vit.encoder.layer.N`, optional
//! `vit.encoder.mid_position_embeddings` added after every layer but the last, `vit.layernorm`,
//! and two three-layer heads on the detection tokens, `class_labels_classifier` and
//! `bbox_predictor`. The position tables are learned for `image_size`'s patch grid and
//! interpolated (bicubic, as torch's `interpolate(mode="bicubic", align_corners=False)`) to each
//! image's grid; those of the most recent grids are kept (up to 256 MiB). Per image the model
//! answers DETR's rows: per detection token the class logits (labels + "no object"), then the
//! box (cx, cy, w, h) in [0, 1].

use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

use super::detr::{detection_outputs, PredictionHead};
use super::{
    load_patch_projection, patch_embeddings, vision_store, Conv2d, LayerNames, VitConfig,
    VitEncoder,
};
use crate::device::Placement;
use crate::kernels;
use crate::models::config::ModelConfig;
use crate::models::layers::LayerNorm;
use crate::models::{Batch, BatchModel, Output};
use crate::source::ModelFiles;

/// `YolosConfig`, with its defaults where config.json may omit a field.
#[derive(Debug, Clone, Deserialize)]
struct YolosConfig {
    #[serde(default = "default_hidden")]
    hidden_size: usize,
    #[serde(default = "default_layers")]
    num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    num_attention_heads: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_image_size")]
    image_size: ImageSize,
    #[serde(default = "default_patch")]
    patch_size: usize,
    #[serde(default = "default_channels")]
    num_channels: usize,
    #[serde(default = "default_detection_tokens")]
    num_detection_tokens: usize,
    #[serde(default = "default_true")]
    use_mid_position_embeddings: bool,
    #[serde(default = "default_true")]
    qkv_bias: bool,
}

/// `image_size`: [height, width] as YOLOS writes it, or one side of a square.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum ImageSize {
    Pair([usize; 2]),
    Square(usize),
}

fn default_hidden() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_image_size() -> ImageSize {
    ImageSize::Pair([512, 864])
}
fn default_patch() -> usize {
    16
}
fn default_channels() -> usize {
    3
}
fn default_detection_tokens() -> usize {
    100
}
fn default_true() -> bool {
    true
}

/// The position tables for one patch grid: the embeddings' (added before the first layer) and
/// the mid-layer ones, each [tokens * hidden].
struct Positions {
    initial: Vec<f32>,
    mid: Vec<Vec<f32>>,
}

impl Positions {
    fn bytes(&self) -> usize {
        4 * (self.initial.len() + self.mid.iter().map(Vec::len).sum::<usize>())
    }
}

/// How much memory the interpolated tables of recent grids may hold (at least one grid's):
/// yolos-base's tables for an 800 x 1333 image are about 160 MB.
const KEPT_BYTES: usize = 256 << 20;

/// The interpolated tables of the grids used most recently (last in the list), by (rows,
/// columns) of patches.
type KeptPositions = Mutex<Vec<((usize, usize), Arc<Positions>)>>;

pub struct Yolos {
    cls_token: Tensor,
    detection_tokens: Tensor,
    /// The learned tables for `grid`: [1 + grid + detection tokens][hidden], host copies.
    learned: Arc<Positions>,
    grid: (usize, usize),
    patch: usize,
    detection: usize,
    hidden: usize,
    projection: Conv2d,
    encoder: VitEncoder,
    layernorm: LayerNorm,
    classifier: PredictionHead,
    bbox: PredictionHead,
    interpolated: KeptPositions,
    device: Device,
}

impl Yolos {
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        let config: YolosConfig = model.family()?;
        let mut store = vision_store(files, placement)?;
        store.detect_base_prefix("vit", "embeddings.cls_token");
        let (height, width) = match config.image_size {
            ImageSize::Pair([h, w]) => (h, w),
            ImageSize::Square(s) => (s, s),
        };
        let p = config.patch_size;
        if p == 0 || height < p || width < p {
            bail!("YOLOS image_size {height} x {width} holds no {p} x {p} patch");
        }
        let grid = (height / p, width / p);
        let (hidden, detection) = (config.hidden_size, config.num_detection_tokens);
        let tokens = 1 + grid.0 * grid.1 + detection;
        let host = |name: &str| store.base_host(name);
        let initial = host("embeddings.position_embeddings")?;
        let mid_layers = if config.use_mid_position_embeddings {
            config.num_hidden_layers.saturating_sub(1)
        } else {
            0
        };
        let mid = if mid_layers > 0 {
            host("encoder.mid_position_embeddings")?
                .chunks(tokens * hidden)
                .map(<[f32]>::to_vec)
                .collect()
        } else {
            Vec::new()
        };
        if initial.len() != tokens * hidden
            || mid.len() != mid_layers
            || mid.iter().any(|m| m.len() != tokens * hidden)
        {
            bail!("YOLOS position embeddings do not fit {tokens} tokens ({} x {} patches and {detection} detection tokens) of {hidden}", grid.0, grid.1);
        }
        let vit = VitConfig {
            hidden_size: hidden,
            num_hidden_layers: config.num_hidden_layers,
            num_attention_heads: config.num_attention_heads,
            hidden_act: config.hidden_act.clone(),
            layer_norm_eps: config.layer_norm_eps,
            image_size: height,
            patch_size: p,
            num_channels: config.num_channels,
            mlp_ratio: None,
            use_swiglu_ffn: false,
            qkv_bias: config.qkv_bias,
        };
        tracing::info!(
            "object detection network: yolos, {} layers, hidden {hidden}, {detection} detection tokens, positions learned for {} x {} patches{}",
            config.num_hidden_layers,
            grid.0,
            grid.1,
            if mid_layers > 0 { " (and mid-layer)" } else { "" }
        );
        Ok(Yolos {
            cls_token: store.base("embeddings.cls_token")?,
            detection_tokens: store.base("embeddings.detection_tokens")?,
            learned: Arc::new(Positions { initial, mid }),
            grid,
            patch: p,
            detection,
            hidden,
            projection: load_patch_projection(&store, p)?,
            encoder: VitEncoder::load(&vit, &store, LayerNames::Vit)?,
            layernorm: LayerNorm::load(&store, "layernorm", config.layer_norm_eps)?,
            classifier: PredictionHead::load(&store, "class_labels_classifier", 3)?,
            bbox: PredictionHead::load(&store, "bbox_predictor", 3)?,
            interpolated: Mutex::new(Vec::new()),
            device: placement.device.clone(),
        })
    }

    /// The position tables for a `grid` of patches: the learned ones for their own grid, else
    /// interpolated (outside the lock: other requests go on meanwhile) and kept while recent.
    fn positions(&self, grid: (usize, usize)) -> Arc<Positions> {
        if grid == self.grid {
            return self.learned.clone();
        }
        let lock = || {
            self.interpolated
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        {
            let mut kept = lock();
            if let Some(at) = kept.iter().position(|(g, _)| *g == grid) {
                let hit = kept.remove(at);
                kept.push(hit.clone());
                return hit.1;
            }
        }
        let resize = |table: &Vec<f32>| {
            resize_positions(table, self.grid, grid, self.hidden, self.detection)
        };
        let positions = Arc::new(Positions {
            initial: resize(&self.learned.initial),
            mid: self.learned.mid.par_iter().map(resize).collect(),
        });
        let mut kept = lock();
        kept.retain(|(g, _)| *g != grid);
        kept.push((grid, positions.clone()));
        while kept.len() > 1 && kept.iter().map(|(_, p)| p.bytes()).sum::<usize>() > KEPT_BYTES {
            kept.remove(0);
        }
        positions
    }

    /// pixel_values [B, 3, H, W] → per detection token, logits then box: [B, tokens, labels + 5].
    fn detect(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = pixels.dims4()?;
        let grid = (h / self.patch, w / self.patch);
        if grid.0 == 0 || grid.1 == 0 {
            bail!("a {h} x {w} image holds no {0} x {0} patch", self.patch);
        }
        let patches = patch_embeddings(&self.projection, pixels)?;
        let d = self.hidden;
        let x = Tensor::cat(
            &[
                self.cls_token.broadcast_as((b, 1, d))?,
                patches,
                self.detection_tokens.broadcast_as((b, self.detection, d))?,
            ],
            1,
        )?;
        let positions = self.positions(grid);
        let tokens = x.dim(1)?;
        let initial = Tensor::from_slice(&positions.initial, (1, tokens, d), &self.device)?;
        let x = x.broadcast_add(&initial)?;
        let x = self
            .layernorm
            .forward(&self.encoder.forward_adding(x, &positions.mid)?)?;
        let x = x.narrow(1, tokens - self.detection, self.detection)?;
        let logits = self.classifier.forward(&x)?;
        let boxes = candle_nn::ops::sigmoid(&self.bbox.forward(&x)?)?;
        Ok(Tensor::cat(&[logits, boxes], 2)?)
    }
}

impl BatchModel for Yolos {
    fn forward(&self, batch: &Batch) -> Result<Vec<Output>> {
        detection_outputs(batch, &self.device, |pixels| self.detect(pixels))
    }
}

/// A position table ([1 + from grid + detection][hidden]) for another patch grid: the [CLS] and
/// detection rows as they are, the patch rows resized bicubically
/// (`InterpolateInitialPositionEmbeddings` / `InterpolateMidPositionEmbeddings`).
fn resize_positions(
    table: &[f32],
    from: (usize, usize),
    to: (usize, usize),
    hidden: usize,
    detection: usize,
) -> Vec<f32> {
    let patches = &table[hidden..(1 + from.0 * from.1) * hidden];
    let mut out = Vec::with_capacity((1 + to.0 * to.1 + detection) * hidden);
    out.extend_from_slice(&table[..hidden]);
    out.extend(kernels::bicubic(patches, from, to, hidden));
    out.extend_from_slice(&table[(1 + from.0 * from.1) * hidden..]);
    out
}
