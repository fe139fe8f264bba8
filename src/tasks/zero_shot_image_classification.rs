//! `zero-shot-image-classification` (CLIP, SigLIP), as `transformers` 4.51's pipeline answers
//! behind the DLC: each image against `candidate_labels` put into `hypothesis_template` (default
//! `This is a photo of {}.`), `[{"score", "label"}]` best first. CLIP: softmax over the labels of
//! `logit_scale.exp()` times the cosine of the embeddings; SigLIP: each label's own
//! `sigmoid(cosine * logit_scale.exp() + logit_bias)`, its texts truncated to 64 tokens (and
//! padded to them, in the model). The image and the hypotheses go through the batcher as
//! separate sequences, so the texts of concurrent requests share forward passes.

use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokenizers::utils::truncation::TruncationStrategy;

use super::image_classification::{
    image_pass_tokens, image_sequences, load_processor, probe_images,
};
use super::image_input::parse_images;
use super::params::Params;
use super::pipeline::{list_or_single, vectors, Loading, Pipeline, Prepared};
use super::tokenize::{TextEncoder, Truncation};
use crate::error::{cut, ServerError};
use crate::image::processor::ImageProcessor;
use crate::models::vision::clip::Clip;
use crate::models::vision::siglip::{self, Siglip};
use crate::models::{BatchModel, Sequence};
use crate::task::Task;

const TASK: &str = "zero-shot-image-classification";
const DEFAULT_TEMPLATE: &str = "This is a photo of {}.";

pub struct ZeroShotImageClassification {
    processor: Arc<ImageProcessor>,
    encoder: Arc<TextEncoder>,
    scoring: Scoring,
    /// SigLIP's texts: truncated to the length the pipeline pads them to.
    truncation: Truncation,
}

/// How the pipeline turns the cosines of an image and its labels into scores.
#[derive(Debug, Clone, Copy)]
enum Scoring {
    /// CLIP: softmax over the labels of `cos * scale`.
    Softmax { scale: f32 },
    /// SigLIP: each label's `sigmoid(cos * scale + bias)`.
    Sigmoid { scale: f32, bias: f32 },
}

impl ZeroShotImageClassification {
    pub fn load(load: &Loading) -> Result<(Self, Arc<dyn BatchModel>)> {
        let processor = load_processor(load.files)?;
        let (encoder, scoring, truncation, model): (_, _, _, Arc<dyn BatchModel>) =
            if load.config.model_type == "siglip" {
                let length = siglip::TEXT_LENGTH;
                let encoder = TextEncoder::load(&load.files.tokenizer, length, false, false)?;
                let pad_id = encoder.info().pad_id.context(
                "the SigLIP tokenizer has no pad token (the pipeline pads its texts to 64 tokens)",
            )?;
                let model = Siglip::load(load.files, load.config, load.placement, pad_id)?;
                let scoring = Scoring::Sigmoid {
                    scale: model.scale,
                    bias: model.bias,
                };
                let truncation =
                    Truncation::with(TruncationStrategy::LongestFirst, Some(length), 0);
                (encoder, scoring, truncation, Arc::new(model))
            } else {
                let model = Clip::load(load.files, load.config, load.placement)?;
                let encoder =
                    TextEncoder::load(&load.files.tokenizer, model.max_positions(), false, false)?;
                let scoring = Scoring::Softmax { scale: model.scale };
                (encoder, scoring, Truncation::none(), Arc::new(model))
            };
        Ok((
            ZeroShotImageClassification {
                processor: Arc::new(processor),
                encoder: Arc::new(encoder),
                scoring,
                truncation,
            },
            model,
        ))
    }

    /// An image and two hypotheses, for the load-time check.
    pub fn probe(&self) -> Result<Vec<Sequence>, ServerError> {
        let mut sequences = probe_images(&self.processor)?;
        for text in ["This is a photo of a cat.", "a dog"] {
            sequences.push(self.encoder.encode(text, None, &self.truncation)?);
        }
        Ok(sequences)
    }
}

/// `hypothesis_template.format(label)` for the templates Python formats with one argument.
fn format_template(template: &str, label: &str) -> Result<String, ServerError> {
    let bad = || {
        ServerError::bad_request(format!(
            "parameter `hypothesis_template` of {TASK} must hold one `{{}}` for the label, got {}",
            cut(template, 60)
        ))
    };
    let unnamed = template.matches("{}").count();
    let numbered = template.matches("{0}").count();
    let text = match (unnamed, numbered) {
        (1, 0) => template.replacen("{}", label, 1),
        (0, _) => template.replace("{0}", label),
        _ => return Err(bad()),
    };
    // Any other brace is a format field Python would refuse (or an escaped brace).
    let rest = template.replace("{}", "").replace("{0}", "");
    if rest.contains('{') || rest.contains('}') {
        return Err(bad());
    }
    Ok(text)
}

impl Pipeline for ZeroShotImageClassification {
    fn task(&self) -> Task {
        Task::ZeroShotImageClassification
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        let labels: Vec<String> = match params.take("candidate_labels") {
            // The pipeline iterates a string: each character is a label.
            Some(Value::String(s)) => s.chars().map(String::from).collect(),
            // (Python formats a non-string label with str(); JSON text is close enough.)
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            None | Some(Value::Null) => {
                return Err(ServerError::bad_request(format!(
                    "{TASK} needs \"parameters\": {{\"candidate_labels\": [...]}}: the labels to score the image against"
                )))
            }
            Some(other) => {
                return Err(params.invalid("candidate_labels", "a list of strings", &other))
            }
        };
        if labels.is_empty() {
            return Err(ServerError::bad_request(format!(
                "{TASK}: `candidate_labels` is empty; send at least one label"
            )));
        }
        let template = match params.take("hypothesis_template") {
            None | Some(Value::Null) => DEFAULT_TEMPLATE.to_string(),
            Some(Value::String(s)) => s,
            Some(other) => return Err(params.invalid("hypothesis_template", "a string", &other)),
        };
        match params.take("tokenizer_kwargs") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) if map.is_empty() => {}
            Some(other) => {
                return Err(params.invalid(
                    "tokenizer_kwargs",
                    "absent or {} (not supported yet)",
                    &other,
                ))
            }
        }
        params.take("timeout");
        params.ignore_rest();
        let (as_list, images) = parse_images(inputs, TASK)?;
        let mut sequences: Vec<Sequence> = image_sequences(&self.processor, &images)?;
        for label in &labels {
            let text = format_template(&template, label)?;
            sequences.push(self.encoder.encode(&text, None, &self.truncation)?);
        }
        let images = images.len();
        let scoring = self.scoring;
        Ok(Prepared {
            sequences,
            finish: Box::new(move |outputs| {
                let embeds = vectors(outputs)?;
                let (image_embeds, text_embeds) = embeds.split_at(images);
                let results = image_embeds
                    .iter()
                    .map(|image| rank(image, text_embeds, &labels, scoring))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(list_or_single(results, as_list))
            }),
        })
    }

    fn prepare_image(&self, _body: &[u8]) -> Result<Prepared, ServerError> {
        Err(ServerError::bad_request(format!(
            "{TASK} needs \"parameters\": {{\"candidate_labels\": [...]}}, which an image body cannot carry: send JSON {{\"inputs\": \"<base64 image>\", \"parameters\": {{\"candidate_labels\": [...]}}}}"
        )))
    }

    fn accepts_csv(&self) -> bool {
        false
    }
    fn cpu_pass_tokens(&self) -> Option<usize> {
        image_pass_tokens(&self.processor)
    }
}

/// The labels' scores (see [`Scoring`]), sorted high to low (ties in label order).
fn rank(
    image: &[f32],
    texts: &[Vec<f32>],
    labels: &[String],
    scoring: Scoring,
) -> Result<Value, ServerError> {
    let cosines = texts
        .iter()
        .map(|t| t.iter().zip(image).map(|(a, b)| a * b).sum::<f32>());
    let scores: Vec<f32> = match scoring {
        Scoring::Softmax { scale } => {
            crate::kernels::softmax(&cosines.map(|c| c * scale).collect::<Vec<_>>())
        }
        Scoring::Sigmoid { scale, bias } => cosines
            .map(|c| 1.0 / (1.0 + (-(c * scale + bias)).exp()))
            .collect(),
    };
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(ServerError::bad_request(
            "Out of range float values are not JSON compliant",
        ));
    }
    let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Value::Array(
        ranked
            .into_iter()
            .map(|(i, s)| json!({"score": s as f64, "label": labels[i]}))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_format_as_python() {
        assert_eq!(format_template("a {} b", "x").unwrap(), "a x b");
        assert_eq!(format_template("{0} and {0}", "x").unwrap(), "x and x");
        assert_eq!(format_template("no field", "x").unwrap(), "no field");
        assert!(format_template("{} {}", "x").is_err());
        assert!(format_template("{name}", "x").is_err());
    }
}
