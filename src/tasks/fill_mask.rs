//! `fill-mask`, as `transformers` 4.51's `FillMaskPipeline`: the model's own mask token, the
//! `top_k` most likely tokens (or only `targets`) for every mask, `token_str` and `sequence`
//! decoded as the pipeline decodes them.

use std::sync::Arc;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::params::Params;
use super::pipeline::{list_or_single, parse_texts, score, Loading, Pipeline, Prepared};
use super::text_classification::{apply, ScoreFunction};
use super::tokenize::TextEncoder;
use super::tokenizer_kwargs::{Loader, TokenizerKwargs, LOADER_PARAMETERS, TOKENIZER_KWARGS};
use crate::error::ServerError;
use crate::models::config::EncoderConfig;
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::Output;
use crate::task::Task;

const TASK: &str = "fill-mask";
const OWN_PARAMETERS: &[&str] = &["top_k", "targets", "tokenizer_kwargs"];

pub struct FillMask {
    shared: Arc<Shared>,
}

struct Shared {
    encoder: TextEncoder,
    mask_token: String,
    mask_id: u32,
}

impl FillMask {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (files, config) = (load.files, load.config);
        let limits = EncoderConfig::from_config(config)?;
        let encoder = TextEncoder::for_encoder(files, &limits, load.options)?;
        let Some((mask_token, mask_id)) = encoder.info().mask.clone() else {
            bail!("The tokenizer does not define a `mask_token`.");
        };
        let model = EncoderModel::load(
            files,
            config,
            load.placement,
            HeadKind::MaskedLm { mask_id },
        )?;
        Ok((
            FillMask {
                shared: Arc::new(Shared {
                    encoder,
                    mask_token,
                    mask_id,
                }),
            },
            model,
        ))
    }
}

impl Pipeline for FillMask {
    fn task(&self) -> Task {
        Task::FillMask
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        let top_k = params.take_usize("top_k")?;
        let targets = match params.take("targets") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(vec![t]),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(
                items
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            Some(other) => {
                return Err(params.invalid("targets", "a string or a list of strings", &other))
            }
        };
        // `tokenizer_kwargs` carries the tokenizer's own arguments.
        let kwargs = match params.take("tokenizer_kwargs") {
            None | Some(Value::Null) => TokenizerKwargs::none(),
            Some(kwargs @ Value::Object(_)) => {
                let mut inner = Params::new(Some(kwargs), TASK)?;
                let kwargs = TokenizerKwargs::take(&mut inner)?;
                inner.finish(TOKENIZER_KWARGS)?;
                kwargs
            }
            Some(other) => return Err(params.invalid("tokenizer_kwargs", "an object", &other)),
        };
        let loader = Loader::take(&mut params);
        params.finish(&[OWN_PARAMETERS, LOADER_PARAMETERS].concat())?;
        let target_ids = targets.map(|t| self.shared.target_ids(&t)).transpose()?;
        let mut top_k = top_k.unwrap_or(5);
        if let Some(ids) = &target_ids {
            top_k = top_k.min(ids.len());
        }

        let (is_list, texts) = parse_texts(inputs, TASK)?;
        loader.check(is_list)?;
        let encoder = &self.shared.encoder;
        let mut sequences = Vec::with_capacity(texts.len());
        for text in &texts {
            let pair = kwargs.text_pair.as_deref();
            let encoding = encoder.encode_with(text, pair, &kwargs.truncation, kwargs.options)?;
            kwargs.check_padding(encoding.len(), encoder)?;
            let sequence = encoder.to_sequence_with(&encoding, kwargs.options);
            if !sequence.ids.contains(&self.shared.mask_id) {
                return Err(ServerError::bad_request(format!(
                    "No mask_token ({}) found on the input",
                    self.shared.mask_token
                )));
            }
            sequences.push(sequence);
        }
        let inputs_ids: Vec<Vec<u32>> = sequences.iter().map(|s| s.ids.clone()).collect();

        let shared = self.shared.clone();
        let finish = move |outputs: Vec<Output>| -> Result<Value, ServerError> {
            let mut results = Vec::with_capacity(outputs.len());
            for (ids, output) in inputs_ids.iter().zip(outputs) {
                // One vocabulary row per mask.
                let (logits, _vocab) = output.into_rows_any()?;
                results.push(shared.fill(ids, &logits, top_k, target_ids.as_deref())?);
            }
            // A single text, or a list of one, is answered without the outer list.
            let as_list = is_list && results.len() != 1;
            Ok(list_or_single(results, as_list))
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}

impl Shared {
    /// `get_target_ids`: vocabulary entries, else the first token of the target's tokenization.
    fn target_ids(&self, targets: &[String]) -> Result<Vec<u32>, ServerError> {
        let tokenizer = self.encoder.tokenizer();
        let mut ids = Vec::new();
        for target in targets {
            let id = match tokenizer.token_to_id(target) {
                Some(id) => Some(id),
                None => tokenizer
                    .encode_fast(target.as_str(), false)
                    .map_err(|e| ServerError::bad_request(format!("tokenization failed: {e}")))?
                    .get_ids()
                    .first()
                    .copied(),
            };
            if let Some(id) = id {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            } else {
                tracing::warn!("The specified target token `{target}` does not exist in the model vocabulary; ignoring it");
            }
        }
        if ids.is_empty() {
            return Err(ServerError::bad_request(
                "At least one target must be provided when passed.",
            ));
        }
        Ok(ids)
    }

    /// `postprocess` for one input: one list of propositions per mask.
    fn fill(
        &self,
        ids: &[u32],
        logits: &[f32],
        top_k: usize,
        targets: Option<&[u32]>,
    ) -> Result<Value, ServerError> {
        let masks: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == self.mask_id).collect();
        let vocab = logits.len() / masks.len().max(1);
        if vocab == 0 || logits.len() != vocab * masks.len() {
            return Err(ServerError::Internal(format!(
                "the model produced {} logits for {} masks",
                logits.len(),
                masks.len()
            )));
        }
        let single_mask = masks.len() == 1;
        let mut per_mask = Vec::with_capacity(masks.len());
        for (i, &position) in masks.iter().enumerate() {
            let probs = apply(ScoreFunction::Softmax, &logits[i * vocab..(i + 1) * vocab]);
            let mut candidates: Vec<(u32, f32)> = match targets {
                Some(t) => t
                    .iter()
                    .map(|&id| match probs.get(id as usize) {
                        Some(&p) => Ok((id, p)),
                        // The tokenizer knows more tokens than the model predicts.
                        None => Err(ServerError::bad_request(format!(
                            "target token id {id} is outside the model's vocabulary of {vocab}"
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
                None => probs
                    .iter()
                    .enumerate()
                    .map(|(id, &p)| (id as u32, p))
                    .collect(),
            };
            // torch.topk: the k highest, highest first; only those k get sorted (not the
            // whole vocabulary, for every mask).
            if top_k < candidates.len() {
                candidates.select_nth_unstable_by(top_k, |a, b| b.1.total_cmp(&a.1));
                candidates.truncate(top_k);
            }
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut row = Vec::with_capacity(candidates.len());
            for (token, p) in candidates {
                let mut filled = ids.to_vec();
                filled[position] = token;
                filled.retain(|&t| Some(t) != self.encoder.info().pad_id);
                let sequence = self.encoder.decode(&filled, single_mask)?;
                let token_str = self.encoder.decode(&[token], false)?;
                row.push(json!({
                    "score": score(p),
                    "token": token,
                    "token_str": token_str,
                    "sequence": sequence,
                }));
            }
            per_mask.push(Value::Array(row));
        }
        Ok(if single_mask {
            per_mask.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(per_mask)
        })
    }
}
