//! ViT (`ViTForImageClassification`, `ViTModel`): `vit.embeddings.{cls_token,
//! position_embeddings, patch_embeddings.projection}`, `vit.encoder.layer.N...`,
//! `vit.layernorm`, and `classifier` on the [CLS] token (or, for features, the last hidden states
//! and `vit.pooler.dense` + tanh on [CLS]).

use anyhow::{Context, Result};
use candle_core::{IndexOp, Tensor};

use super::{
    check_size, first_token_pooled, linear_nd, load_patch_projection, patch_embeddings,
    with_tokens, Conv2d, ImageNetwork, LayerNames, VitConfig, VitEncoder,
};
use crate::models::config::ModelConfig;
use crate::models::layers::{LayerNorm, Linear};
use crate::models::weights::WeightStore;

pub struct Vit {
    config: VitConfig,
    cls_token: Tensor,
    position_embeddings: Tensor,
    projection: Conv2d,
    encoder: VitEncoder,
    layernorm: LayerNorm,
    classifier: Option<Linear>,
    pooler: Option<Linear>,
}

impl Vit {
    pub fn load(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let config: VitConfig = model.family()?;
        store.detect_base_prefix("vit", "embeddings.cls_token");
        let p = config.patch_size;
        Ok(Vit {
            cls_token: store.base("embeddings.cls_token")?,
            position_embeddings: store.base("embeddings.position_embeddings")?,
            projection: load_patch_projection(store, p)?,
            encoder: VitEncoder::load(&config, store, LayerNames::Vit)?,
            layernorm: LayerNorm::load(store, "layernorm", config.layer_norm_eps)?,
            classifier: optional(store, "classifier", false)?,
            pooler: optional(store, "pooler.dense", true)?,
            config,
        })
    }
}

impl ImageNetwork for Vit {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let classifier = self
            .classifier
            .as_ref()
            .context("the checkpoint has no `classifier`")?;
        let x = self.hidden_states(pixels)?;
        linear_nd(classifier, &x.i((.., 0, ..))?.contiguous()?)
    }

    fn hidden_states(&self, pixels: &Tensor) -> Result<Tensor> {
        check_size(pixels, self.config.image_size, "ViT")?;
        let x = with_tokens(
            &[&self.cls_token],
            &patch_embeddings(&self.projection, pixels)?,
        )?;
        let x = x.broadcast_add(&self.position_embeddings)?;
        self.layernorm.forward(&self.encoder.forward(x)?)
    }

    fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    fn pooled(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        first_token_pooled(self.pooler.as_ref(), hidden)
    }
}

/// A linear layer the checkpoint may lack (`base`: under the base model's prefix).
fn optional(store: &WeightStore, name: &str, base: bool) -> Result<Option<Linear>> {
    let present = if base {
        store.contains_base(&format!("{name}.weight"))
    } else {
        store.contains(&format!("{name}.weight"))
    };
    present.then(|| Linear::load(store, name, base)).transpose()
}
