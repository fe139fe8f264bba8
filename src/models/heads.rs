//! Task heads on top of the encoders, with `transformers`' weight names per family.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::config::{Activation, EncoderConfig};
use super::encoder::first_token;
use super::layers::{activate, LayerNorm, Linear};
use super::weights::WeightStore;
use crate::registry::EncoderFamily;

/// An activation named in `config.json`, `gelu` when absent.
fn activation_of(name: &Option<String>) -> Result<Activation> {
    Activation::parse(name.as_deref().unwrap_or("gelu"))
}

/// ModernBERT's prediction head before its classifier or decoder: dense (no bias), activation,
/// LayerNorm (no bias).
pub struct ModernBertHead {
    dense: Linear,
    activation: Activation,
    norm: LayerNorm,
}

impl ModernBertHead {
    fn load(config: &EncoderConfig, store: &WeightStore) -> Result<Self> {
        Ok(ModernBertHead {
            // `classifier_bias` (default false) decides whether the dense layer has a bias.
            dense: Linear::load(store, "head.dense", false)
                .or_else(|_| Linear::load_no_bias(store, "head.dense"))?,
            activation: activation_of(&config.classifier_activation)?,
            norm: LayerNorm::load_no_bias(store, "head.norm", config.layer_norm_eps)?,
        })
    }

    /// [n, hidden] → [n, hidden].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.norm
            .forward(&activate(&self.dense.forward(x)?, self.activation)?)
    }
}

/// `*ForSequenceClassification` heads.
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
    /// ELECTRA: `classifier.dense` + GELU, then `classifier.out_proj`.
    Electra { dense: Linear, out_proj: Linear },
    /// DeBERTa-v2: ContextPooler (`pooler.dense` + `pooler_hidden_act`), then `classifier`.
    DebertaV2 {
        pooler: Linear,
        activation: Activation,
        classifier: Linear,
    },
    /// ModernBERT: first-token or mean pooling (`classifier_pooling`), `head`, `classifier`.
    ModernBert {
        mean: bool,
        head: ModernBertHead,
        classifier: Linear,
    },
}

impl ClassificationHead {
    pub fn load(config: &EncoderConfig, store: &WeightStore) -> Result<Self> {
        Ok(match config.family {
            EncoderFamily::Bert => ClassificationHead::Bert {
                pooler: Linear::load(store, "pooler.dense", true)?,
                classifier: Linear::load(store, "classifier", false)?,
            },
            // AlbertModel's pooler is one Linear + tanh, as BERT's.
            EncoderFamily::Albert => ClassificationHead::Bert {
                pooler: Linear::load(store, "pooler", true)?,
                classifier: Linear::load(store, "classifier", false)?,
            },
            EncoderFamily::Roberta => ClassificationHead::Roberta {
                dense: Linear::load(store, "classifier.dense", false)?,
                out_proj: Linear::load(store, "classifier.out_proj", false)?,
            },
            EncoderFamily::DistilBert => ClassificationHead::DistilBert {
                pre_classifier: Linear::load(store, "pre_classifier", false)?,
                classifier: Linear::load(store, "classifier", false)?,
            },
            EncoderFamily::Electra => ClassificationHead::Electra {
                dense: Linear::load(store, "classifier.dense", false)?,
                out_proj: Linear::load(store, "classifier.out_proj", false)?,
            },
            EncoderFamily::DebertaV2 => ClassificationHead::DebertaV2 {
                pooler: Linear::load(store, "pooler.dense", false)?,
                activation: activation_of(&config.pooler_hidden_act)?,
                classifier: Linear::load(store, "classifier", false)?,
            },
            EncoderFamily::ModernBert => ClassificationHead::ModernBert {
                mean: match config.classifier_pooling.as_deref() {
                    None | Some("cls") => false,
                    Some("mean") => true,
                    Some(other) => bail!("classifier_pooling `{other}` is not supported"),
                },
                head: ModernBertHead::load(config, store)?,
                classifier: Linear::load(store, "classifier", false)?,
            },
        })
    }

    /// Whether the head reads more than the first token.
    pub fn needs_all_tokens(&self) -> bool {
        matches!(self, ClassificationHead::ModernBert { mean: true, .. })
    }

    /// `hidden`: [batch, seq, hidden] → logits [batch, labels].
    pub fn forward(&self, hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        if let ClassificationHead::ModernBert {
            mean,
            head,
            classifier,
        } = self
        {
            let pooled = if *mean {
                mean_over_tokens(hidden, lengths)?
            } else {
                first_token(hidden)?.contiguous()?
            };
            return classifier.forward(&head.forward(&pooled)?);
        }
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
            // ElectraClassificationHead hard-codes GELU.
            ClassificationHead::Electra { dense, out_proj } => {
                out_proj.forward(&dense.forward(&cls)?.gelu_erf()?)?
            }
            ClassificationHead::DebertaV2 {
                pooler,
                activation,
                classifier,
            } => classifier.forward(&activate(&pooler.forward(&cls)?, *activation)?)?,
            ClassificationHead::ModernBert { .. } => unreachable!("handled above"),
        })
    }
}

/// Mean of each row's real tokens: [batch, seq, hidden] → [batch, hidden].
fn mean_over_tokens(hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let rows = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| hidden.get(i)?.narrow(0, 0, len)?.mean_keepdim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?.contiguous()?)
}

/// A linear layer on every token (after ModernBERT's `head`): `*ForTokenClassification`'s
/// `classifier`, and `*ForQuestionAnswering`'s start/end logits (`qa_outputs`; ModernBERT's
/// `classifier` with two outputs).
pub struct TokenHead {
    head: Option<ModernBertHead>,
    classifier: Linear,
}

impl TokenHead {
    pub fn load(config: &EncoderConfig, store: &WeightStore) -> Result<Self> {
        Self::load_named(config, store, "classifier")
    }

    pub fn load_span(config: &EncoderConfig, store: &WeightStore) -> Result<Self> {
        let name = match config.family {
            EncoderFamily::ModernBert => "classifier",
            _ => "qa_outputs",
        };
        Self::load_named(config, store, name)
    }

    fn load_named(config: &EncoderConfig, store: &WeightStore, classifier: &str) -> Result<Self> {
        let head = match config.family {
            EncoderFamily::ModernBert => Some(ModernBertHead::load(config, store)?),
            _ => None,
        };
        Ok(TokenHead {
            head,
            classifier: Linear::load(store, classifier, false)?,
        })
    }

    /// [tokens, hidden] → [tokens, labels].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.head {
            Some(head) => self.classifier.forward(&head.forward(x)?),
            None => self.classifier.forward(x),
        }
    }
}

/// The masked-LM head: a transform, then the decoder to the vocabulary, whose weight is tied to
/// the input embeddings unless the checkpoint stores it.
pub struct MaskedLmHead {
    transform: Transform,
    decoder: Linear,
    vocab_size: usize,
}

enum Transform {
    /// dense + activation + LayerNorm (BERT, RoBERTa, DistilBERT, DeBERTa-v2).
    Dense {
        dense: Linear,
        activation: Activation,
        norm: LayerNorm,
    },
    ModernBert(ModernBertHead),
}

impl MaskedLmHead {
    pub fn load(config: &EncoderConfig, store: &WeightStore) -> Result<Self> {
        // (dense, norm, decoder, decoder bias, activation) names per family.
        let (dense, norm, decoder, bias, activation) = match config.family {
            EncoderFamily::Bert | EncoderFamily::DebertaV2 => (
                "cls.predictions.transform.dense",
                "cls.predictions.transform.LayerNorm",
                "cls.predictions.decoder",
                "cls.predictions.bias",
                config.activation,
            ),
            // RobertaLMHead always uses exact GELU.
            EncoderFamily::Roberta => (
                "lm_head.dense",
                "lm_head.layer_norm",
                "lm_head.decoder",
                "lm_head.bias",
                Activation::Gelu,
            ),
            EncoderFamily::DistilBert => (
                "vocab_transform",
                "vocab_layer_norm",
                "vocab_projector",
                "vocab_projector.bias",
                config.activation,
            ),
            // ElectraGeneratorPredictions hard-codes GELU; the LM head maps from embedding_size.
            EncoderFamily::Electra => (
                "generator_predictions.dense",
                "generator_predictions.LayerNorm",
                "generator_lm_head",
                "generator_lm_head.bias",
                Activation::Gelu,
            ),
            // AlbertMLMHead: dense (hidden -> embedding_size), hidden_act, LayerNorm, decoder.
            EncoderFamily::Albert => (
                "predictions.dense",
                "predictions.LayerNorm",
                "predictions.decoder",
                "predictions.bias",
                config.activation,
            ),
            EncoderFamily::ModernBert => ("", "", "decoder", "decoder.bias", config.activation),
        };
        let weight = match store.get(&format!("{decoder}.weight")) {
            Ok(w) => w,
            Err(_) => store.base(config.word_embeddings_name())?,
        };
        let bias = store
            .get(bias)
            .or_else(|_| store.get(&format!("{decoder}.bias")))
            .context("the masked-LM decoder bias")?;
        let transform = match config.family {
            EncoderFamily::ModernBert => {
                Transform::ModernBert(ModernBertHead::load(config, store)?)
            }
            _ => Transform::Dense {
                dense: Linear::load(store, dense, false)?,
                activation,
                norm: LayerNorm::load_named(store, norm, config.layer_norm_eps, false)?,
            },
        };
        Ok(MaskedLmHead {
            transform,
            vocab_size: weight.dim(0)?,
            decoder: Linear::new(&weight, &bias)?,
        })
    }

    /// Rows of the decoder's output.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `hidden`: [n, hidden] (the masked positions only) → vocabulary logits [n, vocab].
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = match &self.transform {
            Transform::Dense {
                dense,
                activation,
                norm,
            } => norm.forward(&activate(&dense.forward(hidden)?, *activation)?)?,
            Transform::ModernBert(head) => head.forward(hidden)?,
        };
        self.decoder.forward(&x)
    }
}
