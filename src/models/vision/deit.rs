//! DeiT (`DeiTForImageClassification`, `DeiTForImageClassificationWithTeacher`): ViT layers
//! under `deit.`, with a distillation token after [CLS]. The teacher variant averages
//! `cls_classifier` on [CLS] and `distillation_classifier` on the distillation token.

use anyhow::Result;
use candle_core::{IndexOp, Tensor};

use super::{
    check_size, linear_nd, load_patch_projection, patch_embeddings, with_tokens, Conv2d,
    ImageNetwork, LayerNames, VitConfig, VitEncoder,
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
    head: Head,
}

impl Deit {
    pub fn load(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let config: VitConfig = model.family()?;
        store.detect_base_prefix("deit", "embeddings.cls_token");
        let p = config.patch_size;
        let head = if store.contains("cls_classifier.weight") {
            Head::WithTeacher {
                cls: Linear::load(store, "cls_classifier", false)?,
                distillation: Linear::load(store, "distillation_classifier", false)?,
            }
        } else {
            Head::Single(Linear::load(store, "classifier", false)?)
        };
        Ok(Deit {
            cls_token: store.base("embeddings.cls_token")?,
            distillation_token: store.base("embeddings.distillation_token")?,
            position_embeddings: store.base("embeddings.position_embeddings")?,
            projection: load_patch_projection(store, p)?,
            encoder: VitEncoder::load(&config, store, LayerNames::Vit)?,
            layernorm: LayerNorm::load(store, "layernorm", config.layer_norm_eps)?,
            head,
            config,
        })
    }
}

impl ImageNetwork for Deit {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        check_size(pixels, self.config.image_size, "DeiT")?;
        let patches = patch_embeddings(&self.projection, pixels)?;
        let x = with_tokens(&[&self.cls_token, &self.distillation_token], &patches)?;
        let x = x.broadcast_add(&self.position_embeddings)?;
        let x = self.layernorm.forward(&self.encoder.forward(x)?)?;
        let token = |i: usize| x.i((.., i, ..)).and_then(|t| t.contiguous());
        match &self.head {
            Head::Single(classifier) => linear_nd(classifier, &token(0)?),
            Head::WithTeacher { cls, distillation } => {
                let sum = (linear_nd(cls, &token(0)?)? + linear_nd(distillation, &token(1)?)?)?;
                Ok((sum / 2.0)?)
            }
        }
    }
}
