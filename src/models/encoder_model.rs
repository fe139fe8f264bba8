//! An encoder with one task head: what every encoder pipeline loads and the batcher runs. The
//! head decides what an [`Output`] holds for each sequence.

use anyhow::{Context, Result};
use candle_core::Tensor;

use super::backbone::Backbone;
use super::config::{EncoderConfig, ModelConfig};
use super::heads::{ClassificationHead, MaskedLmHead, TokenHead};
use super::pooling::Pooling;
use super::weights::WeightStore;
use super::{Batch, BatchModel, Output};
use crate::device::Placement;
use crate::source::ModelFiles;

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
        model: &ModelConfig,
        placement: &Placement,
        kind: HeadKind,
    ) -> Result<Self> {
        let config = EncoderConfig::from_config(model)?;
        let device = &placement.device;
        let mut store = WeightStore::load(&files.weights, device)?;
        store.detect_base_prefix(config.base_prefix(), config.word_embeddings_name());
        // The encoder in the chosen precision; the heads below stay f32 (`store`'s dtype).
        let backbone = Backbone::load(
            &config,
            model,
            &store
                .in_dtype(placement.dtype)
                .with_quantize(placement.quantize),
            device,
        )?;
        let head = match kind {
            HeadKind::SequenceClassification => Head::Sequence(
                ClassificationHead::load(&config, &store)
                    .context("loading the classification head")?,
            ),
            HeadKind::TokenClassification => Head::Token(
                TokenHead::load(&config, &store)
                    .context("loading the token-classification head")?,
            ),
            HeadKind::QuestionAnswering => Head::Span(
                TokenHead::load_span(&config, &store)
                    .context("loading the question-answering head")?,
            ),
            HeadKind::MaskedLm { mask_id } => Head::MaskedLm {
                head: MaskedLmHead::load(&config, &store).context("loading the masked-LM head")?,
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
    fn forward(&self, batch: &Batch) -> Result<Vec<Output>> {
        let first_token_only = matches!(&self.head, Head::Sequence(h) if !h.needs_all_tokens());
        let hidden = self.backbone.forward(batch, first_token_only)?;
        let width = self.config().hidden_size;
        let seq_len = batch.seq_len;
        // Per-token rows of `n` values → each sequence's rows, padding dropped.
        let per_token = |values: Vec<f32>, n: usize| -> Vec<Output> {
            batch
                .lengths
                .iter()
                .enumerate()
                .map(|(i, &len)| Output::Rows {
                    values: values[i * seq_len * n..(i * seq_len + len) * n].to_vec(),
                    width: n,
                })
                .collect()
        };
        let tokens = batch.len() * seq_len;
        Ok(match &self.head {
            Head::Sequence(head) => head
                .forward(&hidden, &batch.lengths)?
                .to_vec2::<f32>()?
                .into_iter()
                .map(Output::Vector)
                .collect(),
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
                        Output::Vector(pooling.pool(
                            &values[i * seq_len * width..(i * seq_len + len) * width],
                            width,
                        ))
                    })
                    .collect()
            }
            Head::MaskedLm { head, mask_id } => {
                masked_lm(head, *mask_id, &hidden.reshape((tokens, width))?, batch)?
            }
        })
    }
}

/// The vocabulary logits of every `mask_id` position, one row per mask in order: only those
/// positions go through the (vocabulary-sized) decoder.
fn masked_lm(
    head: &MaskedLmHead,
    mask_id: u32,
    hidden: &Tensor,
    batch: &Batch,
) -> Result<Vec<Output>> {
    let mut positions = Vec::new();
    let mut owner = Vec::new();
    for (i, &len) in batch.lengths.iter().enumerate() {
        for t in 0..len {
            if batch.input_ids[i * batch.seq_len + t] == mask_id {
                positions.push((i * batch.seq_len + t) as u32);
                owner.push(i);
            }
        }
    }
    let mut rows = vec![Vec::new(); batch.len()];
    let mut width = head.vocab_size();
    if !positions.is_empty() {
        let index = Tensor::from_vec(positions, owner.len(), hidden.device())?;
        let logits = head.forward(&hidden.index_select(&index, 0)?)?;
        width = logits.dim(1)?;
        for (row, i) in logits.to_vec2::<f32>()?.into_iter().zip(owner) {
            rows[i].extend(row);
        }
    }
    Ok(rows
        .into_iter()
        .map(|values| Output::Rows { values, width })
        .collect())
}
