//! Encoder–decoder language models for text2text-generation, summarization and translation:
//! T5 / Flan-T5 on candle-transformers' network. candle's T5 keeps its attention cache inside
//! the model, so each sequence decodes on its own copy of the model (the copy shares the weight
//! tensors; only the cache is its own): sequences join and leave the scheduler's steps like
//! decoder-only ones, but each one's forward pass runs separately.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::t5;
use serde_json::Value;

use super::weights::WeightStore;
use super::{StepInput, StepModel};
use crate::device::Placement;
use crate::source::ModelFiles;

pub struct Seq2SeqLm {
    model: t5::T5ForConditionalGeneration,
    decoder_start: u32,
    /// Multiplies candle's logits into `transformers`' (see `load`).
    logit_scale: f64,
    device: Device,
}

/// One sequence: its own model copy (its attention cache) and its encoded input.
#[derive(Clone)]
pub struct Seq2SeqCache {
    state: Option<(t5::T5ForConditionalGeneration, Tensor)>,
}

impl Seq2SeqLm {
    pub fn load(files: &ModelFiles, config: &Value, placement: &Placement) -> Result<Self> {
        let model_type = config.get("model_type").and_then(Value::as_str);
        if model_type != Some("t5") {
            anyhow::bail!(
                "model_type `{}` is not supported for text2text generation; supported: t5 (T5, Flan-T5), bart, marian",
                model_type.unwrap_or("")
            );
        }
        let mut t5_config: t5::Config =
            serde_json::from_value(config.clone()).context("reading the T5 config.json")?;
        t5_config.use_cache = true;
        let store = WeightStore::load(&files.weights, &placement.device)?;
        let vb =
            VarBuilder::from_tensors(store.base_tensors(""), placement.dtype, &placement.device);
        let model = t5::T5ForConditionalGeneration::load(vb, &t5_config)
            .context("loading the T5 network")?;
        tracing::info!(
            "text2text network: t5, {} encoder / {} decoder layers, vocabulary {}",
            t5_config.num_layers,
            t5_config.num_decoder_layers.unwrap_or(t5_config.num_layers),
            t5_config.vocab_size
        );
        // With tied embeddings transformers scales the decoder output by 1/sqrt(d_model) before
        // the vocabulary projection; candle 0.11 multiplies by sqrt(d_model). The argmax is the
        // same, but log-probabilities (beam search, sampling) are not: divide by d_model.
        let logit_scale = if t5_config.tie_word_embeddings {
            1.0 / t5_config.d_model as f64
        } else {
            1.0
        };
        Ok(Seq2SeqLm {
            model,
            logit_scale,
            decoder_start: t5_config
                .decoder_start_token_id
                .unwrap_or(t5_config.pad_token_id) as u32,
            device: placement.device.clone(),
        })
    }
}

impl StepModel for Seq2SeqLm {
    type Cache = Seq2SeqCache;

    fn new_cache(&self) -> Seq2SeqCache {
        Seq2SeqCache { state: None }
    }

    /// A sequence's first step encodes its tokens (the input text) and decodes the start
    /// token; later steps decode the token they are fed.
    fn step(&self, inputs: &mut [StepInput<Seq2SeqCache>]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(inputs.len());
        for input in inputs.iter_mut() {
            let (decoder_ids, state) = match input.cache.state.take() {
                Some(state) => (input.tokens.to_vec(), state),
                None => {
                    let mut model = self.model.clone();
                    model.clear_kv_cache();
                    let ids = Tensor::new(input.tokens, &self.device)?.unsqueeze(0)?;
                    let encoded = model.encode(&ids)?;
                    (vec![self.decoder_start], (model, encoded))
                }
            };
            let (mut model, encoded) = state;
            let ids = Tensor::new(decoder_ids.as_slice(), &self.device)?.unsqueeze(0)?;
            let logits = (model.decode(&ids, &encoded)? * self.logit_scale)?;
            rows.push(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?);
            input.cache.state = Some((model, encoded));
        }
        Ok(rows)
    }

    fn context(&self, _prompt: &[u32]) -> Vec<u32> {
        vec![self.decoder_start]
    }
}
