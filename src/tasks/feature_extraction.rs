//! `feature-extraction`, as `transformers` 4.51's `FeatureExtractionPipeline` behind the DLC: the
//! last hidden state of every token, not pooled, nested `[1][tokens][hidden]` per input.

use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;

use super::params::Params;
use super::pipeline::{list_or_single, parse_texts, rows, score, Loading, Pipeline, Prepared};
use super::tokenize::TextEncoder;
use super::tokenizer_kwargs::{Loader, TokenizerKwargs, TOKENIZER_KWARGS};
use crate::error::ServerError;
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::Output;
use crate::task::Task;

const TASK: &str = "feature-extraction";

pub struct FeatureExtraction {
    encoder: Arc<TextEncoder>,
    hidden_size: usize,
}

impl FeatureExtraction {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (_files, _config) = (load.files, load.config);
        let (model, encoder) = load.encoder(HeadKind::HiddenStates)?;
        Ok((
            FeatureExtraction {
                encoder: Arc::new(encoder),
                hidden_size: model.config().hidden_size,
            },
            model,
        ))
    }
}

impl Pipeline for FeatureExtraction {
    fn task(&self) -> Task {
        Task::FeatureExtraction
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        // `tokenize_kwargs` are the tokenizer's arguments; `truncation` may come either way, once.
        let mut kwargs = match params.take("tokenize_kwargs") {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => return Err(params.invalid("tokenize_kwargs", "an object", &other)),
        };
        if let Some(truncation) = params.take("truncation").filter(|v| !v.is_null()) {
            if kwargs.contains_key("truncation") {
                return Err(ServerError::bad_request(
                    "truncation parameter defined twice (given as keyword argument as well as in tokenize_kwargs)",
                ));
            }
            kwargs.insert("truncation".into(), truncation);
        }
        let mut tokenizer_params = Params::new(Some(Value::Object(kwargs)), TASK)?;
        let kwargs = TokenizerKwargs::take(&mut tokenizer_params)?;
        tokenizer_params.finish(TOKENIZER_KWARGS)?;
        // `return_tensors` (any value) returns a tensor that the DLC's JSON encoder turns into
        // the same nested list.
        let _ = params.take("return_tensors");
        let loader = Loader::take(&mut params);
        // The pipeline drops every other keyword argument.
        params.ignore_rest();

        let (is_list, texts) = parse_texts(inputs, TASK)?;
        loader.check(is_list)?;
        let mut sequences = Vec::with_capacity(texts.len());
        for text in &texts {
            let pair = kwargs.text_pair.as_deref();
            let encoding =
                self.encoder
                    .encode_with(text, pair, &kwargs.truncation, kwargs.options)?;
            if kwargs.pads(encoding.len(), &self.encoder) > 0 {
                return Err(ServerError::bad_request(
                    "parameter `padding`: padding one input to a longer length is not served for feature-extraction (the pipeline would return vectors for the pad tokens)",
                ));
            }
            sequences.push(self.encoder.to_sequence_with(&encoding, kwargs.options));
        }
        // The DataLoader pads each batch of a list to its longest text, and the pipeline returns
        // the pads' vectors too: not served (the batcher's padding never reaches a response).
        if is_list
            && sequences
                .chunks(loader.batch_size())
                .any(|batch| batch.iter().any(|s| s.ids.len() != batch[0].ids.len()))
        {
            return Err(ServerError::bad_request(
                "parameter `batch_size` above 1 over texts of different lengths is not served for feature-extraction (the pipeline would pad each batch and return vectors for the pad tokens); leave batch_size out",
            ));
        }
        let width = self.hidden_size;
        let finish = move |outputs: Vec<Output>| -> Result<Value, ServerError> {
            let results: Vec<Value> = rows(outputs, width)?
                .into_iter()
                .map(|row| {
                    let tokens: Vec<Value> = row
                        .chunks_exact(width)
                        .map(|t| Value::Array(t.iter().map(|&v| score(v)).collect()))
                        .collect();
                    Value::Array(vec![Value::Array(tokens)])
                })
                .collect();
            Ok(list_or_single(results, is_list))
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}
