//! BLIP's vision transformer (`BlipVisionModel`, `vision_model.*` in `transformers`' names):
//! CLIP's layout without the pre-norm, Q, K and V as one `self_attn.qkv` layer, and the last
//! hidden state passed through `post_layernorm` (what BLIP's text decoder cross-attends to).

use anyhow::Result;
use candle_core::Tensor;
use serde::Deserialize;

use super::LayerNames;
use super::{check_size, patch_embeddings, read_tower, with_tokens, Conv2d, ImageNetwork};
use super::{VitConfig, VitEncoder};
use crate::models::layers::LayerNorm;
use crate::models::weights::WeightStore;

/// `BlipVisionConfig`'s defaults (transformers 4.51), under what `vision_config` sets.
fn defaults() -> serde_json::Value {
    serde_json::json!({
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "hidden_act": "gelu", "layer_norm_eps": 1e-5, "image_size": 384, "patch_size": 16,
    })
}

/// The part of a BLIP `config.json` the vision tower reads.
#[derive(Debug, Clone, Deserialize)]
pub struct BlipTowers {
    #[serde(default)]
    pub text_config: Option<serde_json::Value>,
    #[serde(default)]
    pub vision_config: Option<serde_json::Value>,
}

pub struct BlipVision {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    /// [positions, hidden]: the class token's row, then the patches'.
    position_embedding: Tensor,
    encoder: VitEncoder,
    post_layernorm: LayerNorm,
    image_size: usize,
    hidden: usize,
}

impl BlipVision {
    /// The tower under `vision_model.` of `store`.
    pub fn load(towers: &BlipTowers, store: &WeightStore) -> Result<Self> {
        let config: VitConfig =
            read_tower(towers.vision_config.as_ref(), defaults(), "vision_config")?;
        let v = |n: &str| format!("vision_model.{n}");
        let position_embedding = store.get(&v("embeddings.position_embedding"))?;
        let positions = (config.image_size / config.patch_size).pow(2) + 1;
        crate::models::check::rows(
            &position_embedding.squeeze(0)?,
            "vision_model.embeddings.position_embedding",
            "(image_size / patch_size)^2 + 1",
            positions,
        )?;
        Ok(BlipVision {
            class_embedding: store.get(&v("embeddings.class_embedding"))?,
            patch_embedding: Conv2d::load(
                store,
                &v("embeddings.patch_embedding"),
                config.patch_size,
                0,
                1,
                true,
            )?,
            position_embedding: position_embedding.squeeze(0)?,
            encoder: VitEncoder::load_at(&config, store, LayerNames::Blip, &v("encoder.layers"))?,
            post_layernorm: LayerNorm::load(store, &v("post_layernorm"), config.layer_norm_eps)?,
            image_size: config.image_size,
            hidden: config.hidden_size,
        })
    }

    /// The width of what [`forward`](Self::forward) answers.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// `pixel_values` [B, 3, H, W] → the normalised last hidden state [B, 1 + patches, hidden].
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        check_size(pixels, self.image_size, "BLIP")?;
        let class = self.class_embedding.reshape((1, 1, ()))?;
        let x = with_tokens(&[&class], &patch_embeddings(&self.patch_embedding, pixels)?)?;
        let x = x.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        self.post_layernorm.forward(&self.encoder.forward(x)?)
    }
}

impl ImageNetwork for BlipVision {
    fn logits(&self, _pixels: &Tensor) -> Result<Tensor> {
        anyhow::bail!("BLIP's vision model has no classifier")
    }

    fn hidden_states(&self, pixels: &Tensor) -> Result<Tensor> {
        self.forward(pixels)
    }
}
