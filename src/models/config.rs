//! The parts of a Hugging Face `config.json` the encoder families need, normalised across the
//! BERT / RoBERTa / XLM-RoBERTa naming and DistilBERT's own names (`dim`, `n_layers`, ...).

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    /// RoBERTa, XLM-RoBERTa and CamemBERT: BERT layers, positions offset by the padding index.
    Roberta,
    DistilBert,
    /// ELECTRA: BERT layers; embeddings may be narrower than the hidden size (projected).
    Electra,
    /// DeBERTa-v2/v3: disentangled relative attention (candle-transformers' network).
    DebertaV2,
    /// ModernBERT: rotary positions, GeGLU, alternating local/global attention (candle-transformers).
    ModernBert,
}

pub const SUPPORTED_FAMILIES: &str =
    "bert, roberta, xlm-roberta, camembert, distilbert, electra, deberta-v2, modernbert";

/// Activations are a kernel concept (the fused CPU path applies them); `config.json` names them.
pub use crate::kernels::Activation;

#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub type_vocab_size: usize,
    /// ELECTRA's embedding width (the hidden size when absent).
    pub embedding_size: Option<usize>,
}

fn usize_field(config: &Value, names: &[&str]) -> Result<usize> {
    names
        .iter()
        .find_map(|n| config.get(n).and_then(Value::as_u64))
        .map(|v| v as usize)
        .ok_or_else(|| anyhow!("config.json has no `{}`", names[0]))
}

impl EncoderConfig {
    pub fn from_json(config: &Value) -> Result<Self> {
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let family = match model_type {
            "bert" => Family::Bert,
            "roberta" | "xlm-roberta" | "camembert" => Family::Roberta,
            "distilbert" => Family::DistilBert,
            "electra" => Family::Electra,
            "deberta-v2" => Family::DebertaV2,
            "modernbert" => Family::ModernBert,
            other => bail!(
                "model_type `{other}` is not supported for this task; supported encoder families: {SUPPORTED_FAMILIES}"
            ),
        };
        if let Some(kind) = config
            .get("position_embedding_type")
            .and_then(Value::as_str)
        {
            if kind != "absolute" {
                bail!("position_embedding_type `{kind}` is not supported (only `absolute`)");
            }
        }
        let act_name = config
            .get(match family {
                Family::DistilBert => "activation",
                Family::ModernBert => "hidden_activation",
                _ => "hidden_act",
            })
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        let activation = Activation::parse(act_name)?;
        let layer_norm_eps = match family {
            Family::DistilBert => 1e-12,
            Family::ModernBert => config
                .get("norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            _ => config
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12),
        };
        let pad_token_id = config
            .get("pad_token_id")
            .and_then(Value::as_u64)
            .unwrap_or(match family {
                Family::Roberta => 1,
                _ => 0,
            }) as u32;
        Ok(EncoderConfig {
            family,
            vocab_size: usize_field(config, &["vocab_size"])?,
            hidden_size: usize_field(config, &["hidden_size", "dim"])?,
            num_layers: usize_field(config, &["num_hidden_layers", "n_layers"])?,
            num_heads: usize_field(config, &["num_attention_heads", "n_heads"])?,
            intermediate_size: usize_field(config, &["intermediate_size", "hidden_dim"])?,
            activation,
            max_position_embeddings: usize_field(config, &["max_position_embeddings"])?,
            layer_norm_eps,
            pad_token_id,
            type_vocab_size: config
                .get("type_vocab_size")
                .and_then(Value::as_u64)
                .unwrap_or(match family {
                    Family::Bert | Family::Roberta | Family::Electra => 2,
                    _ => 0,
                }) as usize,
            embedding_size: config
                .get("embedding_size")
                .and_then(Value::as_u64)
                .map(|n| n as usize),
        })
    }

    /// Longest input (special tokens included) the position table allows.
    pub fn max_input_tokens(&self) -> usize {
        match self.family {
            // Positions start at padding_idx + 1.
            Family::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id as usize + 1),
            _ => self.max_position_embeddings,
        }
    }

    /// Name prefix of the base model inside task checkpoints (`transformers`' `base_model_prefix`).
    pub fn base_prefix(&self) -> &'static str {
        match self.family {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::DistilBert => "distilbert",
            Family::Electra => "electra",
            Family::DebertaV2 => "deberta",
            Family::ModernBert => "model",
        }
    }

    /// Name of the input embedding matrix inside the base model (MLM decoders are tied to it).
    pub fn word_embeddings_name(&self) -> &'static str {
        match self.family {
            Family::ModernBert => "embeddings.tok_embeddings.weight",
            _ => "embeddings.word_embeddings.weight",
        }
    }

    /// Whether the embeddings have a token-type table (RoBERTa's has one row, always 0).
    pub fn uses_token_type_ids(&self) -> bool {
        match self.family {
            Family::Bert | Family::Roberta | Family::Electra => true,
            Family::DebertaV2 => self.type_vocab_size > 0,
            Family::DistilBert | Family::ModernBert => false,
        }
    }

    /// Whether the tokenizer's type ids reach the model: BERT's and DeBERTa's tokenizers list
    /// `token_type_ids` among their `model_input_names`; the others run on zeros.
    pub fn takes_token_type_ids(&self) -> bool {
        match self.family {
            Family::Bert | Family::Electra => true,
            Family::DebertaV2 => self.type_vocab_size > 0,
            _ => false,
        }
    }

    /// Whether our own BERT-family encoder runs it (else a candle-transformers network does).
    pub fn is_bert_like(&self) -> bool {
        matches!(
            self.family,
            Family::Bert | Family::Roberta | Family::DistilBert | Family::Electra
        )
    }
}
