//! CLIP (`CLIPModel`) in `transformers`' names: `text_model.{embeddings, encoder.layers.N,
//! final_layer_norm}` + `text_projection`, `vision_model.{embeddings.{class_embedding,
//! patch_embedding, position_embedding}, pre_layrnorm, encoder.layers.N, post_layernorm}` +
//! `visual_projection`, and `logit_scale`. Each tower answers its inputs' L2-normalised
//! embeddings; the zero-shot pipeline takes their dot products. One batch may hold images and
//! texts (of several requests): each tower runs on its own.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use serde::Deserialize;

use super::{for_each_image_group, linear_nd, patch_embeddings, with_tokens, Conv2d, LayerNames};
use super::{read_tower, VitConfig, VitEncoder};
use crate::device::Placement;
use crate::models::config::ModelConfig;
use crate::models::layers::{LayerNorm, Linear};
use crate::models::weights::WeightStore;
use crate::models::{Batch, BatchModel, Output};
use crate::source::ModelFiles;

/// `CLIPTextConfig`'s defaults (transformers 4.51), under what `text_config` sets.
fn text_defaults() -> serde_json::Value {
    serde_json::json!({
        "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 49407,
    })
}

/// `CLIPVisionConfig`'s defaults, under what `vision_config` sets.
fn vision_defaults() -> serde_json::Value {
    serde_json::json!({
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "image_size": 224, "patch_size": 32,
    })
}

/// The text tower's setting beyond the encoder's.
#[derive(Debug, Clone, Deserialize)]
struct TextPooling {
    eos_token_id: u32,
}

#[derive(Debug, Clone, Deserialize)]
struct ClipConfig {
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    #[serde(default)]
    vision_config: Option<serde_json::Value>,
}

/// The text tower's body that CLIP and SigLIP share (`text_model.*`): token and position
/// embeddings, the encoder (CLIP's layer names), the final norm.
pub(super) struct TextEncoder {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: VitEncoder,
    final_layer_norm: LayerNorm,
}

impl TextEncoder {
    pub(super) fn load(store: &WeightStore, config: &VitConfig) -> Result<Self> {
        let t = |n: &str| format!("text_model.{n}");
        Ok(TextEncoder {
            token_embedding: store.get(&t("embeddings.token_embedding.weight"))?,
            position_embedding: store.get(&t("embeddings.position_embedding.weight"))?,
            encoder: VitEncoder::load_at(config, store, LayerNames::Clip, &t("encoder.layers"))?,
            final_layer_norm: LayerNorm::load(
                store,
                &t("final_layer_norm"),
                config.layer_norm_eps,
            )?,
        })
    }

    /// The longest text the position table takes.
    pub(super) fn positions(&self) -> usize {
        self.position_embedding.dim(0).unwrap_or(0)
    }

    /// `ids`: `b` texts of `len` tokens each, row after row; `mask`: additive, broadcast over the
    /// heads (`(b, 1, len or 1, len)`). Answers the final norm's `(b, len, hidden)`.
    pub(super) fn forward(
        &self,
        ids: Vec<u32>,
        b: usize,
        len: usize,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let device = self.token_embedding.device();
        let ids = Tensor::from_vec(ids, (b * len,), device)?;
        let x = self
            .token_embedding
            .index_select(&ids, 0)?
            .reshape((b, len, ()))?
            .broadcast_add(&self.position_embedding.i(..len)?.unsqueeze(0)?)?;
        self.final_layer_norm
            .forward(&self.encoder.forward_masked(x, Some(mask))?)
    }
}

/// A standalone `CLIPTextModel` (Stable Diffusion's `text_encoder/`): the last hidden state of
/// texts of one length under the causal mask alone (the diffusers pipelines pass no padding
/// mask: they pad every prompt to the positions).
pub struct ClipTextModel {
    body: TextEncoder,
}

impl ClipTextModel {
    /// `config`: the text encoder's `config.json`.
    pub fn load(config: &serde_json::Value, store: &WeightStore) -> Result<Self> {
        let config: VitConfig = read_tower(Some(config), text_defaults(), "text_encoder config")?;
        Ok(ClipTextModel {
            body: TextEncoder::load(store, &config)?,
        })
    }

    pub fn positions(&self) -> usize {
        self.body.positions()
    }

    /// `texts`: token ids, all of one length → `(texts, length, hidden)`.
    pub fn last_hidden_state(&self, texts: &[Vec<u32>]) -> Result<Tensor> {
        let (b, len) = (texts.len(), texts.first().map_or(0, Vec::len));
        if texts.iter().any(|t| t.len() != len) || len > self.positions() {
            bail!(
                "texts of one length, at most {}, expected",
                self.positions()
            );
        }
        let causal: Vec<f32> = (0..len * len)
            .map(|i| if i % len > i / len { f32::MIN } else { 0.0 })
            .collect();
        let device = self.body.token_embedding.device();
        let mask = Tensor::from_vec(causal, (1, 1, len, len), device)?;
        self.body.forward(texts.concat(), b, len, &mask)
    }
}

struct TextTower {
    body: TextEncoder,
    projection: Linear,
    eos_token_id: u32,
}

/// `vision_model.*`: `CLIPVisionTransformer`.
struct VisionTower {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: VitEncoder,
    post_layernorm: LayerNorm,
    image_size: usize,
}

impl VisionTower {
    fn load(store: &WeightStore, config: &VitConfig) -> Result<Self> {
        let v = |n: &str| format!("vision_model.{n}");
        let eps = config.layer_norm_eps;
        let p = config.patch_size;
        Ok(VisionTower {
            class_embedding: store.get(&v("embeddings.class_embedding"))?,
            patch_embedding: Conv2d::load(store, &v("embeddings.patch_embedding"), p, 0, 1, false)?,
            position_embedding: store.get(&v("embeddings.position_embedding.weight"))?,
            pre_layrnorm: LayerNorm::load(store, &v("pre_layrnorm"), eps)?,
            encoder: VitEncoder::load_at(config, store, LayerNames::Clip, &v("encoder.layers"))?,
            post_layernorm: LayerNorm::load(store, &v("post_layernorm"), eps)?,
            image_size: config.image_size,
        })
    }

    /// `last_hidden_state`: the encoder's output (no final norm).
    fn last_hidden_state(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = pixels.dims4()?;
        if (h, w) != (self.image_size, self.image_size) {
            bail!(
                "Input image size ({h}*{w}) doesn't match model ({0}*{0})",
                self.image_size
            );
        }
        let class = self.class_embedding.reshape((1, 1, ()))?;
        let x = with_tokens(&[&class], &patch_embeddings(&self.patch_embedding, pixels)?)?;
        let x = x.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        self.encoder.forward(self.pre_layrnorm.forward(&x)?)
    }

    /// `pooler_output`: the class token's row, normalised by `post_layernorm`.
    fn pooled(&self, hidden: &Tensor) -> Result<Tensor> {
        self.post_layernorm
            .forward(&hidden.i((.., 0, ..))?.contiguous()?)
    }
}

/// `CLIPVisionModel` (`model_type` `clip_vision_model`: the vision tower alone, config.json
/// holding its settings), for image-feature-extraction.
pub struct ClipVision {
    tower: VisionTower,
}

impl ClipVision {
    pub fn load(model: &ModelConfig, store: &WeightStore) -> Result<Self> {
        let config: VitConfig = read_tower(Some(model.raw()), vision_defaults(), "config.json")?;
        Ok(ClipVision {
            tower: VisionTower::load(store, &config)?,
        })
    }
}

impl super::ImageNetwork for ClipVision {
    fn logits(&self, _pixels: &Tensor) -> Result<Tensor> {
        bail!("CLIPVisionModel has no classifier")
    }

    fn hidden_states(&self, pixels: &Tensor) -> Result<Tensor> {
        self.tower.last_hidden_state(pixels)
    }

    fn pooled(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.tower.pooled(hidden)?))
    }

    fn has_pooler(&self) -> bool {
        true
    }
}

pub struct Clip {
    text: TextTower,
    vision: VisionTower,
    visual_projection: Linear,
    /// `logit_scale.exp()`: what the dot products are multiplied by.
    pub scale: f32,
    device: Device,
}

impl Clip {
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        let config: ClipConfig = model.family()?;
        let text_config: VitConfig =
            read_tower(config.text_config.as_ref(), text_defaults(), "text_config")?;
        let pooling: TextPooling =
            read_tower(config.text_config.as_ref(), text_defaults(), "text_config")?;
        let vision_config: VitConfig = read_tower(
            config.vision_config.as_ref(),
            vision_defaults(),
            "vision_config",
        )?;
        let store = super::vision_store(files, placement)?;
        let text = TextTower {
            body: TextEncoder::load(&store, &text_config)?,
            projection: Linear::load_no_bias(&store, "text_projection")?,
            eos_token_id: pooling.eos_token_id,
        };
        let vision = VisionTower::load(&store, &vision_config)?;
        let visual_projection = Linear::load_no_bias(&store, "visual_projection")?;
        let scale = scalar(&store, "logit_scale")?.exp();
        Ok(Clip {
            text,
            vision,
            visual_projection,
            scale,
            device: placement.device.clone(),
        })
    }

    /// The longest text the position table takes.
    pub fn max_positions(&self) -> usize {
        self.text.body.positions()
    }

    fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self
            .vision
            .pooled(&self.vision.last_hidden_state(pixels)?)?;
        normalized(&linear_nd(&self.visual_projection, &pooled)?)
    }

    /// Texts padded on the right to the longest; causal and padding masks as `CLIPTextModel`.
    fn text_embeds(&self, texts: &[&[u32]]) -> Result<Tensor> {
        let t = &self.text;
        let len = texts.iter().map(|ids| ids.len()).max().unwrap_or(0);
        if len > self.max_positions() {
            bail!(
                "a text of {len} tokens is longer than the model's {} positions",
                self.max_positions()
            );
        }
        let b = texts.len();
        let mut ids = Vec::with_capacity(b * len);
        let mut mask = vec![0f32; b * len * len];
        for (n, text) in texts.iter().enumerate() {
            ids.extend_from_slice(text);
            ids.extend(std::iter::repeat_n(0u32, len - text.len()));
            for q in 0..len {
                for k in 0..len {
                    if k > q || k >= text.len() {
                        mask[(n * len + q) * len + k] = f32::MIN;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, len, len), &self.device)?;
        let x = t.body.forward(ids, b, len, &mask)?;
        let rows: Vec<Tensor> = texts
            .iter()
            .enumerate()
            .map(|(n, text)| x.i((n, pool_position(text, t.eos_token_id), ..)))
            .collect::<candle_core::Result<_>>()?;
        let pooled = Tensor::stack(&rows, 0)?;
        normalized(&linear_nd(&t.projection, &pooled)?)
    }
}

/// Where `CLIPTextTransformer` pools: the first maximum id for configs with the legacy
/// `eos_token_id` 2, else the first `eos_token_id` (position 0 without one, as argmax).
fn pool_position(ids: &[u32], eos_token_id: u32) -> usize {
    if eos_token_id == 2 {
        let max = ids.iter().copied().max().unwrap_or(0);
        ids.iter().position(|&i| i == max).unwrap_or(0)
    } else {
        ids.iter().position(|&i| i == eos_token_id).unwrap_or(0)
    }
}

/// A one-value parameter (`logit_scale`, `logit_bias`).
pub(super) fn scalar(store: &WeightStore, name: &str) -> Result<f32> {
    store
        .get(name)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .first()
        .copied()
        .with_context(|| format!("{name} is empty"))
}

/// `x / x.norm(p=2, dim=-1, keepdim=True)`.
pub(super) fn normalized(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

impl BatchModel for Clip {
    fn forward(&self, batch: &Batch) -> Result<Vec<Output>> {
        forward_towers(
            batch,
            &self.device,
            |pixels| self.image_embeds(pixels),
            |texts| self.text_embeds(texts),
        )
    }
}

/// A two-tower batch (CLIP, SigLIP): the images through `images`, the texts (the sequences
/// without pixels) through `texts`, each sequence's embedding row in batch order.
pub(super) fn forward_towers(
    batch: &Batch,
    device: &Device,
    images: impl Fn(&Tensor) -> Result<Tensor>,
    texts: impl Fn(&[&[u32]]) -> Result<Tensor>,
) -> Result<Vec<Output>> {
    let mut outputs: Vec<Option<Output>> = vec![None; batch.len()];
    for_each_image_group(batch, device, |members, pixels| {
        let embeds = images(pixels)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        for (&i, row) in members.iter().zip(embeds) {
            outputs[i] = Some(Output::Vector(row));
        }
        Ok(())
    })?;
    let mut offset = 0;
    let mut text_ids: Vec<(usize, &[u32])> = Vec::new();
    for (i, &len) in batch.lengths.iter().enumerate() {
        if batch.pixels[i].is_none() {
            text_ids.push((i, &batch.input_ids[offset..offset + len]));
        }
        offset += batch.seq_len;
    }
    if !text_ids.is_empty() {
        let ids: Vec<&[u32]> = text_ids.iter().map(|(_, ids)| *ids).collect();
        let embeds = texts(&ids)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        for ((i, _), row) in text_ids.iter().zip(embeds) {
            outputs[*i] = Some(Output::Vector(row));
        }
    }
    outputs
        .into_iter()
        .map(|o| o.context("a sequence without an output"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_follows_the_eos_rule() {
        assert_eq!(pool_position(&[5, 9, 7, 9], 2), 1);
        assert_eq!(pool_position(&[5, 8, 7, 8], 8), 1);
        assert_eq!(pool_position(&[5, 6], 8), 0);
    }
}
