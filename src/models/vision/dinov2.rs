//! DINOv2 (`Dinov2ForImageClassification`): `dinov2.embeddings` (position embeddings
//! interpolated bicubically to the image's patch grid, as torch's `interpolate` does),
//! layers with LayerScale (`norm1`, `layer_scale1`, `mlp.fc1`...), `dinov2.layernorm`, and a
//! `classifier` on [CLS] concatenated with the mean of the patch tokens.

use anyhow::{bail, Context, Result};
use candle_core::{IndexOp, Tensor, D};

use super::{
    linear_nd, load_patch_projection, patch_embeddings, with_tokens, Conv2d, ImageNetwork,
    LayerNames, VitConfig, VitEncoder,
};
use crate::models::config::ModelConfig;
use crate::models::layers::{LayerNorm, Linear};
use crate::models::weights::WeightStore;

pub struct Dinov2 {
    config: VitConfig,
    cls_token: Tensor,
    position_embeddings: Tensor,
    projection: Conv2d,
    encoder: VitEncoder,
    layernorm: LayerNorm,
    classifier: Option<Linear>,
}

impl Dinov2 {
    pub fn load(model: &ModelConfig, store: &mut WeightStore) -> Result<Self> {
        let mut config: VitConfig = model.family()?;
        if model.raw().get("layer_norm_eps").is_none() {
            config.layer_norm_eps = 1e-6; // Dinov2Config's default
        }
        store.detect_base_prefix("dinov2", "embeddings.cls_token");
        let p = config.patch_size;
        Ok(Dinov2 {
            cls_token: store.base("embeddings.cls_token")?,
            position_embeddings: store.base("embeddings.position_embeddings")?,
            projection: load_patch_projection(store, p)?,
            encoder: VitEncoder::load(&config, store, LayerNames::Dinov2)?,
            layernorm: LayerNorm::load(store, "layernorm", config.layer_norm_eps)?,
            classifier: store
                .contains("classifier.weight")
                .then(|| Linear::load(store, "classifier", false))
                .transpose()?,
            config,
        })
    }

    /// `Dinov2Embeddings.interpolate_pos_encoding`.
    fn positions(&self, height: usize, width: usize) -> Result<Tensor> {
        let (_, total, dim) = self.position_embeddings.dims3()?;
        let known = total - 1;
        let (gh, gw) = (
            height / self.config.patch_size,
            width / self.config.patch_size,
        );
        if gh * gw == known && height == width {
            return Ok(self.position_embeddings.clone());
        }
        let side = (known as f64).sqrt() as usize;
        if side * side != known {
            bail!("DINOv2 position embeddings are not a square grid ({known})");
        }
        let grid = self
            .position_embeddings
            .i((0, 1.., ..))?
            .to_vec2::<f32>()?
            .concat();
        let resized = crate::kernels::bicubic(&grid, (side, side), (gh, gw), dim);
        let patches = Tensor::from_vec(
            resized,
            (1, gh * gw, dim),
            self.position_embeddings.device(),
        )?;
        Ok(Tensor::cat(
            &[&self.position_embeddings.i((.., ..1, ..))?, &patches],
            1,
        )?)
    }
}

impl ImageNetwork for Dinov2 {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let classifier = self
            .classifier
            .as_ref()
            .context("the checkpoint has no `classifier`")?;
        let x = self.hidden_states(pixels)?;
        let cls = x.i((.., 0, ..))?;
        let mean = x.i((.., 1.., ..))?.mean(1)?;
        let features = Tensor::cat(&[&cls, &mean], D::Minus1)?.contiguous()?;
        linear_nd(classifier, &features)
    }

    fn hidden_states(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = pixels.dims4()?;
        let x = with_tokens(
            &[&self.cls_token],
            &patch_embeddings(&self.projection, pixels)?,
        )?;
        let x = x.broadcast_add(&self.positions(h, w)?)?;
        self.layernorm.forward(&self.encoder.forward(x)?)
    }

    fn has_pooler(&self) -> bool {
        true
    }

    /// `Dinov2Model`'s pooler output: the [CLS] row of the normalised last hidden state.
    fn pooled(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(hidden.i((.., 0, ..))?.contiguous()?))
    }
}
