//! Where each BERT-family checkpoint keeps its tensors: one file per family, each giving the
//! [`EncoderLayout`] our fused encoder (`models::encoder`) loads. Families whose networks are
//! candle-transformers' (DeBERTa-v2, ModernBERT) have none.

pub mod albert;
pub mod bert;
pub mod distilbert;

use anyhow::{bail, Result};

use super::config::{EncoderConfig, ModelConfig};
use super::encoder::EncoderLayout;
use crate::registry::EncoderFamily;

/// The layout of a BERT-family checkpoint.
pub fn layout(config: &EncoderConfig, model: &ModelConfig) -> Result<EncoderLayout> {
    Ok(match config.family {
        EncoderFamily::Bert | EncoderFamily::Roberta | EncoderFamily::Electra => {
            bert::layout(config)
        }
        EncoderFamily::DistilBert => distilbert::layout(config),
        EncoderFamily::Albert => albert::layout(config, model)?,
        EncoderFamily::DebertaV2 | EncoderFamily::ModernBert => {
            bail!("{:?} is not a BERT-family encoder", config.family)
        }
    })
}
