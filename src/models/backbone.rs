//! The encoder networks behind every head: our BERT-family encoder (BERT, RoBERTa, XLM-RoBERTa,
//! DistilBERT; fused CPU kernels), and candle-transformers' DeBERTa-v2 and ModernBERT, whose
//! attention (disentangled relative positions; rotary with local windows) is theirs to keep.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{debertav2, modernbert};

use super::config::{EncoderConfig, ModelConfig};
use super::encoder::{Encoder, EncoderInput};
use super::quantized::Quantize;
use super::weights::WeightStore;
use super::Batch;
use crate::registry::EncoderFamily;

pub enum Backbone {
    Bert(Box<Encoder>),
    // Boxed: candle's DeBERTa struct is large, and one backbone lives per model.
    DebertaV2(Box<debertav2::DebertaV2Model>),
    ModernBert(modernbert::ModernBert, Device),
}

impl Backbone {
    /// `store` must already have its base prefix detected; its dtype is the network's.
    pub fn load(
        config: &EncoderConfig,
        model: &ModelConfig,
        store: &WeightStore,
        device: &Device,
    ) -> Result<Self> {
        if config.is_bert_like() {
            let layout = super::encoders::layout(config, model)?;
            return Ok(Backbone::Bert(Box::new(Encoder::load(
                config, &layout, store, device,
            )?)));
        }
        if store.quantize() == Some(Quantize::Int8) {
            tracing::warn!(
                "SERVER_QUANTIZE=int8 applies to the BERT-family encoders; this {:?} encoder runs unquantized",
                config.family
            );
        }
        Ok(match config.family {
            EncoderFamily::Bert
            | EncoderFamily::Roberta
            | EncoderFamily::DistilBert
            | EncoderFamily::Electra
            | EncoderFamily::Albert => unreachable!("loaded above"),
            EncoderFamily::DebertaV2 => {
                let mut candle_config: debertav2::Config = model.family()?;
                if !config.absolute_positions {
                    // Relative positions only: any length runs, as in transformers. candle's
                    // network keeps position ids up to max_position_embeddings (and derives the
                    // relative span from it when max_relative_positions < 1): pin the span,
                    // then lift the table past any input we accept.
                    if candle_config.max_relative_positions < 1 {
                        candle_config.max_relative_positions =
                            candle_config.max_position_embeddings as isize;
                    }
                    candle_config.max_position_embeddings = u16::MAX as usize;
                }
                let vb = VarBuilder::from_tensors(store.base_tensors(""), store.dtype(), device);
                Backbone::DebertaV2(Box::new(
                    debertav2::DebertaV2Model::load(vb, &candle_config)
                        .context("loading the DeBERTa-v2 encoder")?,
                ))
            }
            EncoderFamily::ModernBert => {
                let layout = &config.modernbert;
                for (flag, set) in [
                    ("attention_bias", layout.attention_bias),
                    ("mlp_bias", layout.mlp_bias),
                    ("norm_bias", layout.norm_bias),
                ] {
                    if set {
                        bail!("ModernBERT with `{flag}: true` is not supported");
                    }
                }
                let candle_config = modernbert::Config {
                    vocab_size: config.vocab_size,
                    hidden_size: config.hidden_size,
                    num_hidden_layers: config.num_layers,
                    num_attention_heads: config.num_heads,
                    intermediate_size: config.intermediate_size,
                    max_position_embeddings: config.max_position_embeddings,
                    layer_norm_eps: config.layer_norm_eps,
                    pad_token_id: config.pad_token_id,
                    global_attn_every_n_layers: layout.global_attn_every_n_layers,
                    global_rope_theta: layout.global_rope_theta,
                    local_attention: layout.local_attention,
                    local_rope_theta: layout.local_rope_theta,
                    classifier_config: None,
                };
                // candle's network names its tensors `model.*`, as task checkpoints do.
                let vb =
                    VarBuilder::from_tensors(store.base_tensors("model."), store.dtype(), device);
                Backbone::ModernBert(
                    modernbert::ModernBert::load(vb, &candle_config)
                        .context("loading the ModernBERT encoder")?,
                    device.clone(),
                )
            }
        })
    }

    /// Last hidden states as f32, [batch, seq_len, hidden] (or [batch, 1, hidden] with
    /// `first_token_only`, which only our encoder turns into less work): heads and pooling read
    /// them in f32 whatever the network's precision.
    pub fn forward(&self, batch: &Batch, first_token_only: bool) -> Result<Tensor> {
        Ok(self
            .forward_native(batch, first_token_only)?
            .to_dtype(DType::F32)?)
    }

    fn forward_native(&self, batch: &Batch, first_token_only: bool) -> Result<Tensor> {
        match self {
            Backbone::Bert(encoder) => encoder.forward(
                &EncoderInput {
                    input_ids: &batch.input_ids,
                    type_ids: &batch.type_ids,
                    lengths: &batch.lengths,
                    seq_len: batch.seq_len,
                },
                first_token_only,
            ),
            Backbone::DebertaV2(model) => {
                let (ids, types, mask) = batch_tensors(batch, model.device.clone())?;
                let hidden = model.forward(&ids, Some(types), Some(mask))?;
                first(hidden, first_token_only)
            }
            Backbone::ModernBert(model, device) => {
                let (ids, _, mask) = batch_tensors(batch, device.clone())?;
                let hidden = model.forward(&ids, &mask)?;
                first(hidden, first_token_only)
            }
        }
    }
}

fn first(hidden: Tensor, first_token_only: bool) -> Result<Tensor> {
    Ok(if first_token_only {
        hidden.narrow(1, 0, 1)?
    } else {
        hidden
    })
}

/// input ids, token types and the attention mask (1 for tokens, 0 for padding), [batch, seq].
fn batch_tensors(batch: &Batch, device: Device) -> Result<(Tensor, Tensor, Tensor)> {
    let shape = (batch.len(), batch.seq_len);
    let mask: Vec<u32> = batch
        .lengths
        .iter()
        .flat_map(|&len| (0..batch.seq_len).map(move |i| u32::from(i < len)))
        .collect();
    Ok((
        Tensor::from_slice(&batch.input_ids, shape, &device)?,
        Tensor::from_slice(&batch.type_ids, shape, &device)?,
        Tensor::from_vec(mask, shape, &device)?,
    ))
}
