//! `zero-shot-classification`, as `transformers` 4.51's `ZeroShotClassificationPipeline`: each
//! candidate label becomes an NLI hypothesis; the entailment logit scores it. The DLC runs the N
//! premise–hypothesis pairs of a request one forward pass at a time; here they are N sequences of
//! one request and go through the batcher together.

use std::sync::Arc;

use anyhow::Result;
use serde_json::{json, Value};
use tokenizers::utils::truncation::TruncationStrategy;

use super::params::Params;
use super::pipeline::{list_or_single, parse_texts, score, vectors, Loading, Pipeline, Prepared};
use super::tokenize::{TextEncoder, Truncation};
use super::tokenizer_kwargs::Loader;
use crate::error::{cut, ServerError};
use crate::models::config::ModelConfig;
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::Output;
use crate::task::Task;

const TASK: &str = "zero-shot-classification";
const DEFAULT_TEMPLATE: &str = "This example is {}.";

pub struct ZeroShotClassification {
    encoder: Arc<TextEncoder>,
    /// Logit columns of entailment and contradiction.
    entailment: usize,
    contradiction: usize,
    num_labels: usize,
}

impl ZeroShotClassification {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (_files, config) = (load.files, load.config);
        let (model, encoder) = load.encoder(HeadKind::SequenceClassification)?;
        let num_labels = config.labels().len();
        let (entailment, contradiction) = nli_columns(config, num_labels);
        if entailment.max(contradiction) >= num_labels {
            anyhow::bail!(
                "label2id puts entailment at {entailment} but the model has {num_labels} labels"
            );
        }
        Ok((
            ZeroShotClassification {
                encoder: Arc::new(encoder),
                entailment,
                contradiction,
                num_labels,
            },
            model,
        ))
    }
}

/// The pipeline's `entailment_id` (first `label2id` entry starting with "entail", else -1) and
/// `contradiction_id` (-1 when entailment is 0, else 0), with -1 read as the last column.
fn nli_columns(config: &ModelConfig, num_labels: usize) -> (usize, usize) {
    let last = num_labels.saturating_sub(1);
    let entailment = config
        .label2id
        .as_ref()
        .and_then(|m| {
            m.iter()
                .find(|(label, _)| label.to_lowercase().starts_with("entail"))
                .and_then(|(_, id)| id.as_u64())
        })
        .map(|id| id as usize);
    if entailment.is_none() {
        tracing::warn!("Failed to determine 'entailment' label id from the label2id mapping in the model config. Using the last label.");
    }
    let entailment = entailment.unwrap_or(last);
    let contradiction = if entailment == 0 { last } else { 0 };
    (entailment, contradiction)
}

impl Pipeline for ZeroShotClassification {
    fn task(&self) -> Task {
        Task::ZeroShotClassification
    }

    fn accepts_csv(&self) -> bool {
        false
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        let labels: Vec<String> = match params.take("candidate_labels") {
            None | Some(Value::Null) => {
                return Err(ServerError::bad_request(
                    "zero-shot-classification needs \"parameters\": {\"candidate_labels\": [...]} (a list of labels or a comma-separated string)",
                ))
            }
            Some(Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(other) => {
                return Err(params.invalid(
                    "candidate_labels",
                    "a list of strings or a comma-separated string",
                    &other,
                ))
            }
        };
        let template = match params.take("hypothesis_template") {
            None | Some(Value::Null) => DEFAULT_TEMPLATE.to_string(),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(params.invalid("hypothesis_template", "a string with {}", &other))
            }
        };
        let multi_class = params.take_bool("multi_class")?;
        let multi_label = match multi_class {
            Some(m) => {
                params.take("multi_label");
                m
            }
            None => params.take_bool("multi_label")?.unwrap_or(false),
        };
        let loader = Loader::take(&mut params);
        // The pipeline drops every other keyword argument (`truncation` included).
        params.ignore_rest();

        let (is_list, sequences_in) = parse_texts(inputs, TASK)?;
        loader.check(is_list)?;
        if labels.is_empty() || sequences_in.is_empty() {
            return Err(ServerError::bad_request(
                "You must include at least one label and at least one sequence.",
            ));
        }
        let hypotheses = labels
            .iter()
            .map(|l| format_template(&template, l))
            .collect::<Result<Vec<_>, _>>()?;

        let truncate = Truncation::with(TruncationStrategy::OnlyFirst, None, 0);
        let mut sequences = Vec::with_capacity(sequences_in.len() * labels.len());
        for text in &sequences_in {
            for hypothesis in &hypotheses {
                let encoded = match self.encoder.encode(text, Some(hypothesis), &truncate) {
                    // The pipeline retries without truncation when the premise is too short to
                    // be cut (tokenizers says "too short").
                    Err(e) if e.to_string().contains("too short") => {
                        self.encoder
                            .encode(text, Some(hypothesis), &Truncation::none())?
                    }
                    other => other?,
                };
                sequences.push(encoded);
            }
        }

        let (entailment, contradiction, width) =
            (self.entailment, self.contradiction, self.num_labels);
        let finish = move |outputs: Vec<Output>| -> Result<Value, ServerError> {
            let rows = vectors(outputs)?;
            if rows.iter().any(|r| r.len() != width) {
                return Err(ServerError::Internal(
                    "the model produced a logit row of the wrong width".into(),
                ));
            }
            let mut results = Vec::with_capacity(sequences_in.len());
            for (text, group) in sequences_in.iter().zip(rows.chunks(labels.len())) {
                let scores: Vec<f32> = if multi_label || labels.len() == 1 {
                    group
                        .iter()
                        .map(|r| {
                            let (c, e) = (r[contradiction].exp(), r[entailment].exp());
                            e / (c + e)
                        })
                        .collect()
                } else {
                    let exps: Vec<f32> = group.iter().map(|r| r[entailment].exp()).collect();
                    let sum: f32 = exps.iter().sum();
                    exps.into_iter().map(|e| e / sum).collect()
                };
                // `reversed(argsort)`: numpy sorts these short rows stably, so among equal
                // scores the later label comes first.
                let mut order: Vec<usize> = (0..scores.len()).collect();
                order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
                order.reverse();
                results.push(json!({
                    "sequence": text,
                    "labels": order.iter().map(|&i| labels[i].clone()).collect::<Vec<_>>(),
                    "scores": order.iter().map(|&i| score(scores[i])).collect::<Vec<_>>(),
                }));
            }
            Ok(list_or_single(results, is_list))
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}

/// `hypothesis_template.format(label)` for the `{}` / `{0}` placeholders.
fn format_template(template: &str, label: &str) -> Result<String, ServerError> {
    let formatted = template.replace("{}", label).replace("{0}", label);
    if formatted == template {
        return Err(ServerError::bad_request(format!(
            "The provided hypothesis_template \"{}\" was not able to be formatted with the target labels. Make sure the passed template includes formatting syntax such as {{}} where the label should go.",
            cut(template, 60)
        )));
    }
    Ok(formatted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entailment_column_from_label2id() {
        let model = |json| ModelConfig::from_json(json).unwrap();
        let config =
            model(json!({"label2id": {"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2}}));
        assert_eq!(nli_columns(&config, 3), (2, 0));
        let config =
            model(json!({"label2id": {"entailment": 0, "neutral": 1, "contradiction": 2}}));
        assert_eq!(nli_columns(&config, 3), (0, 2));
        assert_eq!(nli_columns(&model(json!({})), 3), (2, 0));
    }

    #[test]
    fn templates() {
        assert_eq!(format_template("It is {}.", "red").unwrap(), "It is red.");
        assert!(format_template("no placeholder", "red").is_err());
        // Found by tests/properties.rs: a 2 KB template without `{}` came back whole.
        let e = format_template(&"é".repeat(1000), "red")
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{e}");
    }
}
