//! SigLIP (`SiglipModel`) in `transformers`' names: `text_model.{embeddings.{token_embedding,
//! position_embedding}, encoder.layers.N, final_layer_norm, head}` and
//! `vision_model.{embeddings.{patch_embedding, position_embedding}, encoder.layers.N,
//! post_layernorm, head.{probe, attention, layernorm, mlp}}` (the attention-pooling "MAP" head),
//! `logit_scale` and `logit_bias`. The layers are CLIP's (same names, no causal mask). Each tower
//! answers L2-normalised embeddings; the zero-shot pipeline scores `sigmoid(cos * scale + bias)`.
//! The text tower pools the *last* position of texts padded to [`TEXT_LENGTH`] tokens, as the
//! pipeline pads them (`padding="max_length", max_length=64`), padding masked out.

use anyhow::{bail, Result};
use candle_core::{Device, IndexOp, Tensor};
use serde::Deserialize;

use super::clip::{forward_towers, normalized, scalar, TextEncoder};
use super::{
    linear_nd, multi_head_attention, patch_embeddings, read_tower, Conv2d, LayerNames, VitConfig,
    VitEncoder,
};
use crate::device::Placement;
use crate::models::config::Activation;
use crate::models::config::ModelConfig;
use crate::models::layers::{activate, LayerNorm, Linear};
use crate::models::weights::WeightStore;
use crate::models::{Batch, BatchModel, Output};
use crate::source::ModelFiles;

/// The length the zero-shot pipeline pads (and truncates) SigLIP's texts to.
pub const TEXT_LENGTH: usize = 64;

/// `SiglipTextConfig`'s and `SiglipVisionConfig`'s defaults (transformers 4.51; the same for
/// both towers but the image ones), under what `text_config` / `vision_config` set.
fn tower_defaults() -> serde_json::Value {
    serde_json::json!({
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "image_size": 224,
        "patch_size": 16, "vision_use_head": true,
    })
}

/// The vision tower's setting beyond the encoder's.
#[derive(Debug, Clone, Deserialize)]
struct VisionHead {
    vision_use_head: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct SiglipConfig {
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    #[serde(default)]
    vision_config: Option<serde_json::Value>,
}

struct TextTower {
    body: TextEncoder,
    head: Linear,
}

/// `SiglipMultiheadAttentionPoolingHead`: a learned probe attends over the patches
/// (`nn.MultiheadAttention`, its `in_proj` split into q, k, v), then a residual MLP.
struct PoolingHead {
    probe: Tensor,
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    layernorm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    activation: Activation,
}

impl PoolingHead {
    fn load(store: &WeightStore, prefix: &str, config: &VitConfig) -> Result<Self> {
        let name = |n: &str| format!("{prefix}.{n}");
        let in_weight = store.get(&name("attention.in_proj_weight"))?;
        let in_bias = store.get(&name("attention.in_proj_bias"))?;
        let d = config.hidden_size;
        let part = |i: usize| -> Result<Linear> {
            Linear::new(
                &in_weight.narrow(0, i * d, d)?,
                &in_bias.narrow(0, i * d, d)?,
            )
        };
        Ok(PoolingHead {
            probe: store.get(&name("probe"))?,
            query: part(0)?,
            key: part(1)?,
            value: part(2)?,
            output: Linear::load(store, &name("attention.out_proj"), false)?,
            layernorm: LayerNorm::load(store, &name("layernorm"), config.layer_norm_eps)?,
            fc1: Linear::load(store, &name("mlp.fc1"), false)?,
            fc2: Linear::load(store, &name("mlp.fc2"), false)?,
            heads: config.num_attention_heads,
            activation: Activation::parse(&config.hidden_act)?,
        })
    }

    /// [B, N, D] → [B, D].
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, _, d) = hidden.dims3()?;
        let probe = self.probe.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        let q = linear_nd(&self.query, &probe.contiguous()?)?;
        let k = linear_nd(&self.key, hidden)?;
        let v = linear_nd(&self.value, hidden)?;
        let context = multi_head_attention(&q, &k, &v, self.heads, None)?;
        let x = linear_nd(&self.output, &context)?;
        let h = linear_nd(&self.fc1, &self.layernorm.forward(&x)?)?;
        let x = (&x + linear_nd(&self.fc2, &activate(&h, self.activation)?)?)?;
        Ok(x.i((.., 0, ..))?.contiguous()?)
    }
}

struct VisionTower {
    patch_embedding: Conv2d,
    position_embedding: Tensor,
    encoder: VitEncoder,
    post_layernorm: LayerNorm,
    head: PoolingHead,
    image_size: usize,
}

pub struct Siglip {
    text: TextTower,
    vision: VisionTower,
    /// `logit_scale.exp()` and `logit_bias`: `logits = cos * scale + bias`.
    pub scale: f32,
    pub bias: f32,
    /// The tokenizer's pad id, which fills texts up to [`TEXT_LENGTH`].
    pad_id: u32,
    device: Device,
}

impl Siglip {
    pub fn load(
        files: &ModelFiles,
        model: &ModelConfig,
        placement: &Placement,
        pad_id: u32,
    ) -> Result<Self> {
        let config: SiglipConfig = model.family()?;
        let text_config: VitConfig =
            read_tower(config.text_config.as_ref(), tower_defaults(), "text_config")?;
        let vision_config: VitConfig = read_tower(
            config.vision_config.as_ref(),
            tower_defaults(),
            "vision_config",
        )?;
        let head: VisionHead = read_tower(
            config.vision_config.as_ref(),
            tower_defaults(),
            "vision_config",
        )?;
        if !head.vision_use_head {
            bail!("a SigLIP vision tower without its pooling head (vision_use_head false) gives no image embedding");
        }
        let store = super::vision_store(files, placement)?;
        let v = |n: &str| format!("vision_model.{n}");
        let text = TextTower {
            body: TextEncoder::load(&store, &text_config)?,
            head: Linear::load(&store, "text_model.head", false)?,
        };
        let positions = text.body.positions();
        if positions < TEXT_LENGTH {
            bail!("the SigLIP text tower has {positions} positions; the pipeline pads texts to {TEXT_LENGTH}");
        }
        let p = vision_config.patch_size;
        let vision = VisionTower {
            patch_embedding: Conv2d::load(&store, &v("embeddings.patch_embedding"), p, 0, 1, true)?,
            position_embedding: store.get(&v("embeddings.position_embedding.weight"))?,
            encoder: VitEncoder::load_at(
                &vision_config,
                &store,
                LayerNames::Clip,
                &v("encoder.layers"),
            )?,
            post_layernorm: LayerNorm::load(
                &store,
                &v("post_layernorm"),
                vision_config.layer_norm_eps,
            )?,
            head: PoolingHead::load(&store, &v("head"), &vision_config)?,
            image_size: vision_config.image_size,
        };
        Ok(Siglip {
            text,
            vision,
            scale: scalar(&store, "logit_scale")?.exp(),
            bias: scalar(&store, "logit_bias")?,
            pad_id,
            device: placement.device.clone(),
        })
    }

    fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        let v = &self.vision;
        let (_, _, h, w) = pixels.dims4()?;
        if (h, w) != (v.image_size, v.image_size) {
            bail!(
                "Input image size ({h}*{w}) doesn't match model ({0}*{0})",
                v.image_size
            );
        }
        let x = patch_embeddings(&v.patch_embedding, pixels)?
            .broadcast_add(&v.position_embedding.unsqueeze(0)?)?;
        let x = v.post_layernorm.forward(&v.encoder.forward(x)?)?;
        normalized(&v.head.forward(&x)?)
    }

    /// Texts (at most [`TEXT_LENGTH`] tokens, the pipeline truncates) padded to [`TEXT_LENGTH`]
    /// with the pad id; the padding is masked out as keys; the last position is pooled.
    fn text_embeds(&self, texts: &[&[u32]]) -> Result<Tensor> {
        let t = &self.text;
        let len = TEXT_LENGTH;
        let b = texts.len();
        let mut ids = Vec::with_capacity(b * len);
        let mut mask = vec![0f32; b * len];
        for (n, text) in texts.iter().enumerate() {
            if text.len() > len {
                bail!("a text of {} tokens is longer than {len}", text.len());
            }
            ids.extend_from_slice(text);
            ids.extend(std::iter::repeat_n(self.pad_id, len - text.len()));
            mask[n * len + text.len()..(n + 1) * len].fill(f32::MIN);
        }
        let mask = Tensor::from_vec(mask, (b, 1, 1, len), &self.device)?;
        let x = t.body.forward(ids, b, len, &mask)?;
        let pooled = x.i((.., len - 1, ..))?.contiguous()?;
        normalized(&linear_nd(&t.head, &pooled)?)
    }
}

impl BatchModel for Siglip {
    fn forward(&self, batch: &Batch) -> Result<Vec<Output>> {
        forward_towers(
            batch,
            &self.device,
            |pixels| self.image_embeds(pixels),
            |texts| self.text_embeds(texts),
        )
    }
}
