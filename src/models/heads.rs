//! Task heads on top of the encoder, with `transformers`' weight names.

use anyhow::Result;
use candle_core::Tensor;

use super::config::Family;
use super::encoder::{first_token, Linear};
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
