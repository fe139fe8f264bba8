//! `config.json`, typed and read once at start-up. [`ModelConfig`] holds what every model's
//! configuration may carry (type, architectures, labels, task parameters) and the document
//! itself; each family parses its own typed config from it ([`ModelConfig::family`]) with serde,
//! with `transformers`' names, aliases and defaults.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::registry::{self, EncoderFamily};

/// The parts of `config.json` that are not a network's shape.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub torch_dtype: Option<String>,
    /// Label names by id (`"0": "NEGATIVE"`), as saved.
    #[serde(default, deserialize_with = "lenient")]
    pub id2label: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "lenient")]
    pub label2id: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "lenient")]
    pub num_labels: Option<usize>,
    #[serde(default, deserialize_with = "lenient")]
    pub problem_type: Option<String>,
    /// Per-task generation defaults (`summarization`, `translation_en_to_de`, ...).
    #[serde(default, deserialize_with = "lenient")]
    pub task_specific_params: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "lenient")]
    pub prefix: Option<String>,
    /// Remote code (`trust_remote_code`): we serve the built-in network instead.
    #[serde(default)]
    pub auto_map: Option<Value>,
    /// A sentence-transformers CrossEncoder's saved activation.
    #[serde(default, deserialize_with = "lenient")]
    pub sentence_transformers: Option<SentenceTransformersConfig>,
    #[serde(default, deserialize_with = "lenient")]
    pub sbert_ce_default_activation_function: Option<String>,
    #[serde(skip)]
    raw: Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SentenceTransformersConfig {
    pub activation_fn: Option<String>,
}

/// A field of the wrong type reads as absent, as `transformers`' attribute defaults do for
/// the keys our pipelines only consult.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

impl ModelConfig {
    pub fn from_json(raw: Value) -> Result<Self> {
        if !raw.is_object() {
            bail!("config.json must hold a JSON object");
        }
        let mut config: ModelConfig =
            serde_json::from_value(raw.clone()).context("reading config.json")?;
        config.raw = raw;
        Ok(config)
    }

    /// The family's typed config (its own serde struct) from the same document.
    pub fn family<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.raw.clone()).with_context(|| {
            format!(
                "reading config.json as a `{}` configuration",
                self.model_type
            )
        })
    }

    /// The document as read (for candle-transformers' own config structs).
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// `architectures[0]`, from which the DLC infers the task.
    pub fn architecture(&self) -> Option<&str> {
        self.architectures.first().map(String::as_str)
    }

    /// `id2label` in id order; `LABEL_i` for ids without a name (PretrainedConfig's default).
    pub fn labels(&self) -> Vec<String> {
        let map = self.id2label.as_ref();
        let count = map
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.parse::<usize>().ok())
                    .map(|k| k + 1)
                    .max()
                    .unwrap_or(0)
            })
            .filter(|&n| n > 0)
            .or(self.num_labels)
            .unwrap_or(2);
        (0..count)
            .map(|i| {
                map.and_then(|m| m.get(&i.to_string()))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }
}

/// Activations are a kernel concept (the fused CPU path applies them); `config.json` names them.
pub use crate::kernels::Activation;

#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub family: EncoderFamily,
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
    /// Whether the position table bounds the input (false: DeBERTa's relative positions only).
    pub absolute_positions: bool,
    /// ModernBERT's head activation (`gelu` when absent).
    pub classifier_activation: Option<String>,
    /// DeBERTa's pooler activation (`gelu` when absent).
    pub pooler_hidden_act: Option<String>,
    /// ModernBERT's sequence pooling for classification: `cls` (default) or `mean`.
    pub classifier_pooling: Option<String>,
    pub modernbert: ModernBertLayout,
}

/// `config.json` of an encoder, as the BERT-family configs name things (DistilBERT's own names
/// are aliases); the family's defaults are applied in [`EncoderConfig::from_config`].
#[derive(Debug, Deserialize)]
struct EncoderConfigJson {
    vocab_size: usize,
    #[serde(alias = "dim")]
    hidden_size: usize,
    #[serde(alias = "n_layers")]
    num_hidden_layers: usize,
    #[serde(alias = "n_heads")]
    num_attention_heads: usize,
    #[serde(alias = "hidden_dim")]
    intermediate_size: usize,
    max_position_embeddings: usize,
    hidden_act: Option<String>,
    /// DistilBERT's name for it.
    activation: Option<String>,
    /// ModernBERT's name for it.
    hidden_activation: Option<String>,
    layer_norm_eps: Option<f64>,
    /// ModernBERT's name for it.
    norm_eps: Option<f64>,
    pad_token_id: Option<u32>,
    type_vocab_size: Option<usize>,
    embedding_size: Option<usize>,
    position_embedding_type: Option<String>,
    /// DeBERTa-v2/v3: whether positions are also added to the input (absolute positions).
    position_biased_input: Option<bool>,
    classifier_activation: Option<String>,
    pooler_hidden_act: Option<String>,
    classifier_pooling: Option<String>,
    #[serde(flatten)]
    modernbert: ModernBertLayout,
}

/// ModernBERT's attention layout and options (`transformers`' defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ModernBertLayout {
    pub global_attn_every_n_layers: usize,
    pub global_rope_theta: f64,
    pub local_attention: usize,
    pub local_rope_theta: f64,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub norm_bias: bool,
}

impl Default for ModernBertLayout {
    fn default() -> Self {
        ModernBertLayout {
            global_attn_every_n_layers: 3,
            global_rope_theta: 160_000.0,
            local_attention: 128,
            local_rope_theta: 10_000.0,
            attention_bias: false,
            mlp_bias: false,
            norm_bias: false,
        }
    }
}

impl EncoderConfig {
    pub fn from_config(config: &ModelConfig) -> Result<Self> {
        let family = registry::encoder_family(&config.model_type)?;
        let json: EncoderConfigJson = config.family()?;
        if let Some(kind) = &json.position_embedding_type {
            if kind != "absolute" {
                bail!("position_embedding_type `{kind}` is not supported (only `absolute`)");
            }
        }
        let act_name = match family {
            EncoderFamily::DistilBert => json.activation.as_deref(),
            EncoderFamily::ModernBert => json.hidden_activation.as_deref(),
            _ => json.hidden_act.as_deref(),
        };
        let activation = Activation::parse(act_name.unwrap_or("gelu"))?;
        let layer_norm_eps = match family {
            EncoderFamily::DistilBert => 1e-12,
            EncoderFamily::ModernBert => json.norm_eps.unwrap_or(1e-5),
            _ => json.layer_norm_eps.unwrap_or(1e-12),
        };
        Ok(EncoderConfig {
            family,
            vocab_size: json.vocab_size,
            hidden_size: json.hidden_size,
            num_layers: json.num_hidden_layers,
            num_heads: json.num_attention_heads,
            intermediate_size: json.intermediate_size,
            activation,
            max_position_embeddings: json.max_position_embeddings,
            layer_norm_eps,
            pad_token_id: json.pad_token_id.unwrap_or(match family {
                EncoderFamily::Roberta => 1,
                _ => 0,
            }),
            type_vocab_size: json.type_vocab_size.unwrap_or(match family {
                EncoderFamily::Bert
                | EncoderFamily::Roberta
                | EncoderFamily::Electra
                | EncoderFamily::Albert => 2,
                _ => 0,
            }),
            embedding_size: json.embedding_size,
            // (DebertaV2Config's default is true; v3 checkpoints set false)
            absolute_positions: family != EncoderFamily::DebertaV2
                || json.position_biased_input.unwrap_or(true),
            classifier_activation: json.classifier_activation,
            pooler_hidden_act: json.pooler_hidden_act,
            classifier_pooling: json.classifier_pooling,
            modernbert: json.modernbert,
        })
    }

    /// Longest input (special tokens included) the position table allows; `None` when the
    /// positions are relative only (DeBERTa-v3), as in `transformers`, which then takes any
    /// length.
    pub fn max_input_tokens(&self) -> Option<usize> {
        if !self.absolute_positions {
            return None;
        }
        Some(match self.family {
            // Positions start at padding_idx + 1.
            EncoderFamily::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id as usize + 1),
            _ => self.max_position_embeddings,
        })
    }

    /// Name prefix of the base model inside task checkpoints (`transformers`' `base_model_prefix`).
    pub fn base_prefix(&self) -> &'static str {
        match self.family {
            EncoderFamily::Bert => "bert",
            EncoderFamily::Roberta => "roberta",
            EncoderFamily::DistilBert => "distilbert",
            EncoderFamily::Electra => "electra",
            EncoderFamily::Albert => "albert",
            EncoderFamily::DebertaV2 => "deberta",
            EncoderFamily::ModernBert => "model",
        }
    }

    /// Name of the input embedding matrix inside the base model (MLM decoders are tied to it).
    pub fn word_embeddings_name(&self) -> &'static str {
        match self.family {
            EncoderFamily::ModernBert => "embeddings.tok_embeddings.weight",
            _ => "embeddings.word_embeddings.weight",
        }
    }

    /// Whether the embeddings have a token-type table (RoBERTa's has one row, always 0).
    pub fn uses_token_type_ids(&self) -> bool {
        match self.family {
            EncoderFamily::Bert
            | EncoderFamily::Roberta
            | EncoderFamily::Electra
            | EncoderFamily::Albert => true,
            EncoderFamily::DebertaV2 => self.type_vocab_size > 0,
            EncoderFamily::DistilBert | EncoderFamily::ModernBert => false,
        }
    }

    /// Whether the tokenizer's type ids reach the model: BERT's, ELECTRA's, ALBERT's and
    /// DeBERTa's tokenizers list `token_type_ids` among their `model_input_names`; the others
    /// run on zeros.
    pub fn takes_token_type_ids(&self) -> bool {
        match self.family {
            EncoderFamily::Bert | EncoderFamily::Electra | EncoderFamily::Albert => true,
            EncoderFamily::DebertaV2 => self.type_vocab_size > 0,
            _ => false,
        }
    }

    /// Whether our own BERT-family encoder runs it (else a candle-transformers network does).
    pub fn is_bert_like(&self) -> bool {
        matches!(
            self.family,
            EncoderFamily::Bert
                | EncoderFamily::Roberta
                | EncoderFamily::DistilBert
                | EncoderFamily::Electra
                | EncoderFamily::Albert
        )
    }
}
