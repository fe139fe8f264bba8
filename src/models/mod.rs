//! Model families: candle networks and their task heads. A model takes a padded [`Batch`] of
//! token ids and returns one row of numbers per sequence; tasks give those numbers meaning.

pub mod backbone;
pub mod bart;
pub mod causal;
pub mod config;
pub mod encoder;
pub mod gguf;
pub mod heads;
pub mod layers;
pub mod pooling;
pub mod seq2seq;
pub mod t5;
pub mod weights;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use serde_json::Value;

use self::backbone::Backbone;
use self::config::{EncoderConfig, Family};
use self::heads::{ClassificationHead, MaskedLmHead, TokenHead};
use self::pooling::Pooling;
use self::weights::WeightStore;
use crate::device::Placement;
use crate::source::ModelFiles;

/// The precision an encoder with this `config.json` runs in: `requested`, except that candle's
/// DeBERTa-v2 and ModernBERT networks build f32 masks and biases into their activations and so
/// only run in f32 (a warning says so).
pub fn supported_dtype(config_json: &Value, requested: DType) -> DType {
    // T5's activations overflow float16 (a known property of the model, not of this server).
    if config_json.get("model_type").and_then(Value::as_str) == Some("t5")
        && requested == DType::F16
    {
        tracing::warn!("dtype f16: T5 overflows in float16; using f32 (bfloat16 can be asked for)");
        return DType::F32;
    }
    let family = EncoderConfig::from_json(config_json).map(|c| c.family);
    match family {
        Ok(family @ (Family::DebertaV2 | Family::ModernBert)) if requested != DType::F32 => {
            tracing::warn!(
                "dtype {}: {family:?} runs in f32 only; using f32",
                requested.as_str()
            );
            DType::F32
        }
        _ => requested,
    }
}

/// One tokenized sequence, as tasks hand it to the batcher.
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// Several sequences padded on the right to one length: what one forward pass computes.
#[derive(Debug, Default)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub lengths: Vec<usize>,
    pub seq_len: usize,
}

impl Batch {
    pub fn from_sequences<'a>(sequences: impl IntoIterator<Item = &'a Sequence> + Clone) -> Batch {
        let seq_len = sequences
            .clone()
            .into_iter()
            .map(|s| s.ids.len())
            .max()
            .unwrap_or(0);
        let mut batch = Batch {
            seq_len,
            ..Default::default()
        };
        for s in sequences {
            let pad = seq_len - s.ids.len();
            batch.input_ids.extend_from_slice(&s.ids);
            batch.input_ids.extend(std::iter::repeat_n(0, pad));
            batch.type_ids.extend_from_slice(&s.type_ids);
            batch
                .type_ids
                .extend(std::iter::repeat_n(0, seq_len - s.type_ids.len()));
            batch.lengths.push(s.ids.len());
        }
        batch
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }
}

/// What the batcher drives: a forward pass over a padded batch, one output row per sequence.
pub trait BatchModel: Send + Sync {
    fn forward(&self, batch: &Batch) -> Result<Vec<Vec<f32>>>;
}

/// What the generation scheduler drives: a language model that advances several sequences per
/// step, each by its own new tokens, keeping per-sequence state in a cache it creates.
pub trait StepModel: Send + Sync + 'static {
    /// Cloned when a beam-search hypothesis branches (cheap: tensors are shared).
    type Cache: Send + Clone;
    fn new_cache(&self) -> Self::Cache;
    /// The f32 logits that follow each sequence's last token; caches grow by the tokens fed.
    fn step(&self, inputs: &mut [StepInput<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>>;
    /// The tokens before the first generated one, as `generate`'s logits processors see them
    /// (repetition penalty, n-gram blocking): the prompt, or an encoder–decoder's start token.
    fn context(&self, prompt: &[u32]) -> Vec<u32> {
        prompt.to_vec()
    }
}

/// Appends a layer's new keys and values to a sequence's cached ones along the sequence axis
/// `dim` and returns all of them. (A new tensor each time, never written in place: beam-search
/// hypotheses share their parent's cached tensors.)
pub(crate) fn append_keys_values(
    slot: &mut Option<(Tensor, Tensor)>,
    (k, v): (Tensor, Tensor),
    dim: usize,
) -> Result<(Tensor, Tensor)> {
    let (k, v) = match slot.take() {
        Some((past_k, past_v)) => (
            Tensor::cat(&[&past_k, &k], dim)?,
            Tensor::cat(&[&past_v, &v], dim)?,
        ),
        None => (k, v),
    };
    *slot = Some((k.clone(), v.clone()));
    Ok((k, v))
}

/// One sequence's part in a step: its new tokens and its cache.
pub struct StepInput<'a, C> {
    pub tokens: &'a [u32],
    pub cache: &'a mut C,
}

/// Which head an encoder model carries, i.e. what one output row means.
#[derive(Debug, Clone)]
pub enum HeadKind {
    /// `*ForSequenceClassification`: one row of label logits per sequence.
    SequenceClassification,
    /// `*ForTokenClassification` (`classifier`): `len × labels` logits per sequence.
    TokenClassification,
    /// `*ForQuestionAnswering` (`qa_outputs`): `len × 2` (start, end) logits per sequence.
    QuestionAnswering,
    /// `*ForMaskedLM`: the vocabulary logits of every `mask_id` position, one after another.
    MaskedLm { mask_id: u32 },
    /// No head: the last hidden states, `len × hidden` per sequence.
    HiddenStates,
    /// Sentence-transformers pooling: one sentence vector per sequence.
    Pooled(Pooling),
}

enum Head {
    Sequence(ClassificationHead),
    Token(TokenHead),
    Span(TokenHead),
    MaskedLm { head: MaskedLmHead, mask_id: u32 },
    Hidden,
    Pooled(Pooling),
}

/// An encoder with one task head.
pub struct EncoderModel {
    config: EncoderConfig,
    backbone: Backbone,
    head: Head,
}

impl EncoderModel {
    pub fn load(
        files: &ModelFiles,
        config_json: &Value,
        placement: &Placement,
        kind: HeadKind,
    ) -> Result<Self> {
        let config = EncoderConfig::from_json(config_json)?;
        let device = &placement.device;
        let mut store = WeightStore::load(&files.weights, device)?;
        store.detect_base_prefix(config.base_prefix(), config.word_embeddings_name());
        // The encoder in the chosen precision; the heads below stay f32 (`store`'s dtype).
        let backbone = Backbone::load(
            &config,
            config_json,
            &store.in_dtype(placement.dtype),
            device,
        )?;
        let head = match kind {
            HeadKind::SequenceClassification => Head::Sequence(
                ClassificationHead::load(&config, config_json, &store)
                    .context("loading the classification head")?,
            ),
            HeadKind::TokenClassification => Head::Token(
                TokenHead::load(&config, config_json, &store)
                    .context("loading the token-classification head")?,
            ),
            HeadKind::QuestionAnswering => Head::Span(
                TokenHead::load_span(&config, config_json, &store)
                    .context("loading the question-answering head")?,
            ),
            HeadKind::MaskedLm { mask_id } => Head::MaskedLm {
                head: MaskedLmHead::load(&config, config_json, &store)
                    .context("loading the masked-LM head")?,
                mask_id,
            },
            HeadKind::HiddenStates => Head::Hidden,
            HeadKind::Pooled(pooling) => Head::Pooled(pooling),
        };
        Ok(EncoderModel {
            config,
            backbone,
            head,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }
}

impl BatchModel for EncoderModel {
    fn forward(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let first_token_only = matches!(&self.head, Head::Sequence(h) if !h.needs_all_tokens());
        let hidden = self.backbone.forward(batch, first_token_only)?;
        let width = self.config().hidden_size;
        let seq_len = batch.seq_len;
        // Per-token rows of `n` values → one row per sequence, padding dropped.
        let per_token = |values: Vec<f32>, n: usize| -> Vec<Vec<f32>> {
            batch
                .lengths
                .iter()
                .enumerate()
                .map(|(i, &len)| values[i * seq_len * n..(i * seq_len + len) * n].to_vec())
                .collect()
        };
        let tokens = batch.len() * seq_len;
        Ok(match &self.head {
            Head::Sequence(head) => head.forward(&hidden, &batch.lengths)?.to_vec2::<f32>()?,
            Head::Token(head) | Head::Span(head) => {
                let logits = head.forward(&hidden.reshape((tokens, width))?)?;
                let n = logits.dim(1)?;
                per_token(logits.flatten_all()?.to_vec1()?, n)
            }
            Head::Hidden => per_token(hidden.flatten_all()?.to_vec1()?, width),
            Head::Pooled(pooling) => {
                // Pooled straight from each sequence's rows: no per-sequence copy.
                let values: Vec<f32> = hidden.flatten_all()?.to_vec1()?;
                batch
                    .lengths
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| {
                        pooling.pool(
                            &values[i * seq_len * width..(i * seq_len + len) * width],
                            width,
                        )
                    })
                    .collect()
            }
            Head::MaskedLm { head, mask_id } => {
                // Only the masked positions go through the (vocabulary-sized) decoder.
                let mut positions = Vec::new();
                let mut owner = Vec::new();
                for (i, &len) in batch.lengths.iter().enumerate() {
                    for t in 0..len {
                        if batch.input_ids[i * seq_len + t] == *mask_id {
                            positions.push((i * seq_len + t) as u32);
                            owner.push(i);
                        }
                    }
                }
                let mut rows = vec![Vec::new(); batch.len()];
                if !positions.is_empty() {
                    let index = Tensor::from_vec(positions, owner.len(), hidden.device())?;
                    let selected = hidden.reshape((tokens, width))?.index_select(&index, 0)?;
                    let logits = head.forward(&selected)?.to_vec2::<f32>()?;
                    for (row, i) in logits.into_iter().zip(owner) {
                        rows[i].extend(row);
                    }
                }
                rows
            }
        })
    }
}
