//! Model families: candle networks and their task heads. An encoder takes a padded [`Batch`] of
//! token ids and returns one [`Output`] per sequence; a generative model advances sequences one
//! step at a time ([`StepModel`]). Which network serves a `config.json` is `crate::registry`'s
//! decision; this module holds the types every network shares.

pub mod backbone;
pub mod bart;
pub mod blip;
pub mod captioner;
pub mod check;
pub mod config;
mod cross_decoder;
pub mod decoders;
pub mod encoder;
pub mod encoder_model;
pub mod encoders;
pub mod gguf;
pub mod heads;
mod host;
pub mod kv_blocks;
pub mod layers;
pub mod pooling;
pub mod quantized;
pub mod seq2seq;
pub mod stable_diffusion;
pub mod t5;
pub mod trocr;
pub mod vision;
pub mod vision_encoder_decoder;
pub mod wav2vec2;
pub mod wav2vec2_positions;
pub mod wavlm;
pub mod weights;
pub mod whisper;

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Tensor};

use self::config::ModelConfig;
use crate::error::ServerError;
use crate::image::Pixels;
use crate::registry::EncoderFamily;

/// The precision an encoder with this `config.json` runs in: `requested`, except that candle's
/// DeBERTa-v2 and ModernBERT networks build f32 masks and biases into their activations and so
/// only run in f32 (a warning says so).
pub fn supported_dtype(config: &ModelConfig, requested: DType) -> DType {
    // T5's activations overflow float16 (a known property of the model, not of this server).
    if config.model_type == "t5" && requested == DType::F16 {
        tracing::warn!("dtype f16: T5 overflows in float16; using f32 (bfloat16 can be asked for)");
        return DType::F32;
    }
    let vision = crate::registry::architecture(&config.model_type).is_some_and(|a| {
        matches!(
            a.network,
            crate::registry::Network::Vision | crate::registry::Network::Captioner
        )
    });
    if vision {
        // bfloat16: the ViT-family encoders' dense layers, on the CPU (everything else in f32).
        if requested == DType::BF16 {
            tracing::info!("dtype bf16: an image network's ViT-family encoder runs its dense layers in bfloat16 where this CPU pays for it; the rest in f32");
            return DType::BF16;
        }
        if requested != DType::F32 {
            tracing::warn!("dtype {}: image networks run in f32", requested.as_str());
        }
        return DType::F32;
    }
    let family = crate::registry::encoder_family(&config.model_type);
    match family {
        Ok(family @ (EncoderFamily::DebertaV2 | EncoderFamily::ModernBert))
            if requested != DType::F32 =>
        {
            tracing::warn!(
                "dtype {}: {family:?} runs in f32 only; using f32",
                requested.as_str()
            );
            DType::F32
        }
        _ => requested,
    }
}

/// One tokenized sequence, or one image's pixels, as tasks hand them to the batcher.
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// An image model's input (its `ids` are empty).
    pub pixels: Option<Arc<Pixels>>,
}

impl Sequence {
    pub fn image(pixels: Pixels) -> Sequence {
        Sequence {
            pixels: Some(Arc::new(pixels)),
            ..Default::default()
        }
    }

    /// What the sequence counts for against the batcher's token budget (at least 1).
    pub fn cost(&self) -> usize {
        match &self.pixels {
            Some(pixels) => pixels.cost(),
            None => self.ids.len().max(1),
        }
    }
}

/// Several sequences padded on the right to one length: what one forward pass computes.
#[derive(Debug, Default)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub lengths: Vec<usize>,
    pub seq_len: usize,
    /// Each sequence's image, if it is one (image models).
    pub pixels: Vec<Option<Arc<Pixels>>>,
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
            batch.pixels.push(s.pixels.clone());
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

/// One sequence's result of a forward pass, shaped by the model's head.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// One vector for the sequence: label logits, or a pooled sentence embedding.
    Vector(Vec<f32>),
    /// `width` values per position, one row after another: per-token logits (token
    /// classification; question answering's start and end), the last hidden states, or one
    /// vocabulary row per masked position (fill-mask).
    Rows { values: Vec<f32>, width: usize },
}

impl Output {
    /// A sequence-level head's vector.
    pub fn into_vector(self) -> Result<Vec<f32>, ServerError> {
        match self {
            Output::Vector(values) => Ok(values),
            Output::Rows { .. } => Err(ServerError::Internal(
                "the model answered per position where one vector was expected".into(),
            )),
        }
    }

    /// Per-position rows of `width` values; `width` is what the task expects (a check).
    pub fn into_rows(self, width: usize) -> Result<Vec<f32>, ServerError> {
        match self {
            Output::Rows { values, width: w } if w == width && values.len() % width.max(1) == 0 => {
                Ok(values)
            }
            Output::Rows { width: w, .. } => Err(ServerError::Internal(format!(
                "the model answered rows of {w} values where {width} were expected"
            ))),
            Output::Vector(_) => Err(ServerError::Internal(
                "the model answered one vector where per-position rows were expected".into(),
            )),
        }
    }

    /// Per-position rows, whatever their width: `(values, width)`.
    pub fn into_rows_any(self) -> Result<(Vec<f32>, usize), ServerError> {
        match self {
            Output::Rows { values, width } => Ok((values, width)),
            Output::Vector(_) => Err(ServerError::Internal(
                "the model answered one vector where per-position rows were expected".into(),
            )),
        }
    }
}

/// What the batcher drives: a forward pass over a padded batch, one output per sequence.
pub trait BatchModel: Send + Sync {
    fn forward(&self, batch: &Batch) -> Result<Vec<Output>>;
}

/// What the generation scheduler drives: a language model that advances several sequences per
/// step, each by its own new tokens, keeping per-sequence state in a cache it creates.
pub trait StepModel: Send + Sync + 'static {
    /// Cloned when a beam-search hypothesis branches (cheap: tensors are shared).
    type Cache: Send + Clone;
    fn new_cache(&self) -> Self::Cache;
    /// The cache of a sequence whose encoder reads `source` (a speech model's features),
    /// encoded at its first step.
    fn cache_with_source(&self, _source: &Tensor) -> Self::Cache {
        self.new_cache()
    }
    /// The f32 logits that follow each sequence's last token; caches grow by the tokens fed.
    fn step(&self, inputs: &mut [StepInput<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>>;
    /// The tokens before the first generated one, as `generate`'s logits processors see them
    /// (repetition penalty, n-gram blocking): the prompt, or an encoder–decoder's start token.
    fn context(&self, prompt: &[u32]) -> Vec<u32> {
        prompt.to_vec()
    }
    /// The log-probability of each prompt token after the ones before it (all but the first),
    /// from a pass of its own (TGI's `decoder_input_details`).
    fn prompt_logprobs(&self, _prompt: &[u32]) -> Result<Vec<f32>> {
        anyhow::bail!("this model does not score its prompt")
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
