//! DeiT (`DeiTForImageClassification`, `DeiTForImageClassificationWithTeacher`, and the base
//! `DeiTModel` for image features): ViT layers under `deit.`, with a distillation token after
//! [CLS]. The teacher variant averages `cls_classifier` on [CLS] and `distillation_classifier` on
//! the distillation token; the base model's pooler is a dense layer and tanh on [CLS].

use anyhow::{Context, Result};
use candle_core::{IndexOp, Tensor};

use super::{
    check_size, first_token_pooled, linear_nd, load_patch_projection, patch_embeddings,
    with_tokens, Conv2d, ImageNetwork, LayerNames, VitConfig, VitEncoder,
};
use crate::models::config::ModelConfig;
use crate::models::layers::{LayerNorm, Linear};
use crate::models::weights::WeightStore;

enum Head {
    Single(Linear),
    WithTeacher { cls: Linear, distillation: Linear },
}

pub struct Deit {
    config: VitConfig,
    cls_token: Tensor,
    distillation_token: Tensor,
    position_embeddings: Tensor,
    projection: Conv2d,
    encoder: VitEncoder,
    layernorm: LayerNorm,
    /// None for a base `DeiTModel`.
    head: Option<Head>,
    pooler: Option<Linear>,
}

impl Deit {
    pub fn load(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let config: VitConfig = model.family()?;
        store.detect_base_prefix("deit", "embeddings.cls_token");
        let p = config.patch_size;
        let head = if store.contains("cls_classifier.weight") {
            Some(Head::WithTeacher {
                cls: Linear::load(store, "cls_classifier", false)?,
                distillation: Linear::load(store, "distillation_classifier", false)?,
            })
        } else if store.contains("classifier.weight") {
            Some(Head::Single(Linear::load(store, "classifier", false)?))
        } else {
            None
        };
        let pooler = store
            .contains_base("pooler.dense.weight")
            .then(|| Linear::load(store, "pooler.dense", true))
            .transpose()?;
        Ok(Deit {
            cls_token: store.base("embeddings.cls_token")?,
            distillation_token: store.base("embeddings.distillation_token")?,
            position_embeddings: store.base("embeddings.position_embeddings")?,
            projection: load_patch_projection(store, p)?,
            encoder: VitEncoder::load(&config, store, LayerNames::Vit)?,
            layernorm: LayerNorm::load(store, "layernorm", config.layer_norm_eps)?,
            head,
            pooler,
            config,
        })
    }
}

impl ImageNetwork for Deit {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let head = self
            .head
            .as_ref()
            .context("the checkpoint has no classifier")?;
        let x = self.hidden_states(pixels)?;
        let token = |i: usize| x.i((.., i, ..)).and_then(|t| t.contiguous());
        match head {
            Head::Single(classifier) => linear_nd(classifier, &token(0)?),
            Head::WithTeacher { cls, distillation } => {
                let sum = (linear_nd(cls, &token(0)?)? + linear_nd(distillation, &token(1)?)?)?;
                Ok((sum / 2.0)?)
            }
        }
    }

    fn hidden_states(&self, pixels: &Tensor) -> Result<Tensor> {
        check_size(pixels, self.config.image_size, "DeiT")?;
        let patches = patch_embeddings(&self.projection, pixels)?;
        let x = with_tokens(&[&self.cls_token, &self.distillation_token], &patches)?;
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
