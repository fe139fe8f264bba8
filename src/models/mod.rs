//! Model families: candle networks and their task heads. A model takes a padded [`Batch`] of
//! token ids and returns one row of numbers per sequence; tasks give those numbers meaning.

pub mod config;
pub mod cpu_kernels;
pub mod encoder;
pub mod heads;
pub mod linear;
pub mod weights;

use anyhow::{Context, Result};
use candle_core::Device;
use serde_json::Value;

use self::config::EncoderConfig;
use self::encoder::{Encoder, EncoderInput};
use self::heads::ClassificationHead;
use self::weights::WeightStore;
use crate::source::ModelFiles;

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

/// An encoder with a sequence-classification head: one row of logits per sequence.
pub struct SequenceClassifier {
    encoder: Encoder,
    head: ClassificationHead,
}

impl SequenceClassifier {
    pub fn load(files: &ModelFiles, config_json: &Value, device: &Device) -> Result<Self> {
        let config = EncoderConfig::from_json(config_json)?;
        let mut store = WeightStore::load(&files.weights, device)?;
        store.detect_base_prefix(config.base_prefix(), "embeddings.word_embeddings.weight");
        let encoder = Encoder::load(&config, &store, device)?;
        let head = ClassificationHead::load(config.family, &store)
            .context("loading the classification head")?;
        Ok(SequenceClassifier { encoder, head })
    }

    pub fn config(&self) -> &EncoderConfig {
        self.encoder.config()
    }
}

impl BatchModel for SequenceClassifier {
    fn forward(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let hidden = self.encoder.forward(
            &EncoderInput {
                input_ids: &batch.input_ids,
                type_ids: &batch.type_ids,
                lengths: &batch.lengths,
                seq_len: batch.seq_len,
            },
            true,
        )?;
        let logits = self.head.forward(&hidden)?;
        Ok(logits.to_vec2::<f32>()?)
    }
}
