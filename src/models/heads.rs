//! Task heads on top of the encoder, with `transformers`' weight names.

use anyhow::{Context, Result};
use candle_core::Tensor;

use super::config::{Activation, EncoderConfig, Family};
use super::encoder::{activate, first_token, LayerNorm, Linear};
use super::weights::WeightStore;

/// `*ForSequenceClassification` heads: all read the first token (`[CLS]` / `<s>`).
pub enum ClassificationHead {
    /// BERT: pooler (dense + tanh) then `classifier`.
    Bert { pooler: Linear, classifier: Linear },
    /// RoBERTa / XLM-RoBERTa: `classifier.dense` + tanh, then `classifier.out_proj`.
    Roberta { dense: Linear, out_proj: Linear },
    /// DistilBERT: `pre_classifier` + ReLU, then `classifier`.
    DistilBert {
        pre_classifier: Linear,
        classifier: Linear,
    },
}

impl ClassificationHead {
    pub fn load(family: Family, store: &WeightStore) -> Result<Self> {
        Ok(match family {
            Family::Bert => ClassificationHead::Bert {
                pooler: Linear::load(store, "pooler.dense", true)?,
                classifier: Linear::load(store, "classifier", false)?,
            },
            Family::Roberta => ClassificationHead::Roberta {
                dense: Linear::load(store, "classifier.dense", false)?,
                out_proj: Linear::load(store, "classifier.out_proj", false)?,
            },
            Family::DistilBert => ClassificationHead::DistilBert {
                pre_classifier: Linear::load(store, "pre_classifier", false)?,
                classifier: Linear::load(store, "classifier", false)?,
            },
        })
    }

    /// `hidden`: [batch, seq, hidden] → logits [batch, labels].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let cls = first_token(hidden)?.contiguous()?;
        Ok(match self {
            ClassificationHead::Bert { pooler, classifier } => {
                classifier.forward(&pooler.forward(&cls)?.tanh()?)?
            }
            ClassificationHead::Roberta { dense, out_proj } => {
                out_proj.forward(&dense.forward(&cls)?.tanh()?)?
            }
            ClassificationHead::DistilBert {
                pre_classifier,
                classifier,
            } => classifier.forward(&pre_classifier.forward(&cls)?.relu()?)?,
        })
    }
}

/// The masked-LM head: transform (dense + activation + LayerNorm), then the decoder to the
/// vocabulary, whose weight is tied to the input embeddings unless the checkpoint stores it.
pub struct MaskedLmHead {
    dense: Linear,
    activation: Activation,
    norm: LayerNorm,
    decoder: Linear,
}

impl MaskedLmHead {
    pub fn load(config: &EncoderConfig, store: &WeightStore, embeddings: &Tensor) -> Result<Self> {
        // (dense, norm, decoder, decoder bias, activation) names per family.
        let (dense, norm, decoder, bias, activation) = match config.family {
            Family::Bert => (
                "cls.predictions.transform.dense",
                "cls.predictions.transform.LayerNorm",
                "cls.predictions.decoder",
                "cls.predictions.bias",
                config.activation,
            ),
            // RobertaLMHead always uses exact GELU.
            Family::Roberta => (
                "lm_head.dense",
                "lm_head.layer_norm",
                "lm_head.decoder",
                "lm_head.bias",
                Activation::Gelu,
            ),
            Family::DistilBert => (
                "vocab_transform",
                "vocab_layer_norm",
                "vocab_projector",
                "vocab_projector.bias",
                config.activation,
            ),
        };
        let weight = match store.get(&format!("{decoder}.weight")) {
            Ok(w) => w,
            Err(_) => embeddings.clone(),
        };
        let bias = store
            .get(bias)
            .or_else(|_| store.get(&format!("{decoder}.bias")))
            .context("the masked-LM decoder bias")?;
        Ok(MaskedLmHead {
            dense: Linear::load(store, dense, false)?,
            activation,
            norm: LayerNorm::load_named(store, norm, config.layer_norm_eps, false)?,
            decoder: Linear::new(&weight, &bias)?,
        })
    }

    /// `hidden`: [n, hidden] (the masked positions only) → vocabulary logits [n, vocab].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = activate(&self.dense.forward(hidden)?, self.activation)?;
        self.decoder.forward(&self.norm.forward(&x)?)
    }
}
