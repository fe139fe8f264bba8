//! `feature-extraction`, as `transformers` 4.51's `FeatureExtractionPipeline` behind the DLC: the
//! last hidden state of every token, not pooled, nested `[1][tokens][hidden]` per input.

use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;

use super::params::Params;
use super::pipeline::{list_or_single, parse_texts, rows, score, Loading, Pipeline, Prepared};
use super::tokenize::{TextEncoder, Truncation, TOKENIZER_PARAMETERS};
use crate::error::ServerError;
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::Output;
use crate::task::Task;

const TASK: &str = "feature-extraction";
const OWN_PARAMETERS: &[&str] = &["truncation", "tokenize_kwargs", "return_tensors"];

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
        let truncation_given = params.contains("truncation");
        // `tokenize_kwargs` are the tokenizer's arguments; `truncation` may come either way, once.
        let mut tokenizer_params = match params.take("tokenize_kwargs") {
            None | Some(Value::Null) => Params::new(None, TASK)?,
            Some(kwargs @ Value::Object(_)) => {
                if truncation_given && kwargs.get("truncation").is_some() {
                    return Err(ServerError::bad_request(
                        "truncation parameter defined twice (given as keyword argument as well as in tokenize_kwargs)",
                    ));
                }
                Params::new(Some(kwargs), TASK)?
            }
            Some(other) => return Err(params.invalid("tokenize_kwargs", "an object", &other)),
        };
        let truncation = if truncation_given {
            Truncation::from_params(&mut params)?
        } else {
            Truncation::from_params(&mut tokenizer_params)?
        };
        tokenizer_params.finish(TOKENIZER_PARAMETERS)?;
        // `return_tensors: true` returns a tensor that the DLC's JSON encoder turns into the
        // same nested list.
        let _ = params.take_bool("return_tensors")?;
        params.finish(OWN_PARAMETERS)?;

        let (is_list, texts) = parse_texts(inputs, TASK)?;
        let sequences = texts
            .iter()
            .map(|t| self.encoder.encode(t, None, &truncation))
            .collect::<Result<Vec<_>, _>>()?;
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
