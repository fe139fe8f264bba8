//! `text-classification` (alias `sentiment-analysis`), as `transformers` 4.51's
//! `TextClassificationPipeline` behaves behind the DLC: inputs, parameters, legacy wrapping.

use std::sync::Arc;

use anyhow::Result;
use serde_json::{json, Value};

use super::params::{json_type, Params};
use super::pipeline::{vectors, Loading, Pipeline, Prepared};
use super::tokenize::TextEncoder;
use super::tokenizer_kwargs::{
    truthy, Loader, TokenizerKwargs, LOADER_PARAMETERS, TOKENIZER_KWARGS,
};
use crate::error::{cut, ServerError};
use crate::models::config::ModelConfig;
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::Output;
use crate::task::Task;

const TASK: &str = "text-classification";
const OWN_PARAMETERS: &[&str] = &["top_k", "function_to_apply", "return_all_scores"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFunction {
    Softmax,
    Sigmoid,
    None,
}

impl ScoreFunction {
    /// The pipelines' `function_to_apply` parameter (any case), `default` when absent or null.
    pub fn take(params: &mut Params, default: ScoreFunction) -> Result<ScoreFunction, ServerError> {
        const EXPECTED: &str = "\"softmax\", \"sigmoid\" or \"none\"";
        match params.take("function_to_apply") {
            None | Some(Value::Null) => Ok(default),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "softmax" => Ok(ScoreFunction::Softmax),
                "sigmoid" => Ok(ScoreFunction::Sigmoid),
                "none" => Ok(ScoreFunction::None),
                _ => Err(params.invalid("function_to_apply", EXPECTED, &Value::String(s))),
            },
            Some(other) => Err(params.invalid("function_to_apply", EXPECTED, &other)),
        }
    }
}

pub struct TextClassification {
    encoder: Arc<TextEncoder>,
    labels: Arc<Vec<String>>,
    default_function: ScoreFunction,
}

/// One input: a text, or a text pair.
struct Item {
    text: String,
    pair: Option<String>,
}

/// `top_k` as `_sanitize_parameters` reads it.
enum TopK {
    /// Not sent: the legacy output.
    Absent,
    /// An int (a bool is one in Python) or None: sorted, sliced as `scores[:k]`.
    Slice(Option<i64>),
    /// Anything else (2.0, "2"): ignored, but its presence still drops the list wrapping.
    Ignored,
}

/// How the pipeline wraps results, which depends on the shape of `inputs`.
enum Shape {
    /// A string: the legacy call wraps the result in a list.
    Single,
    List,
    /// `{"text", "text_pair"}`: a bare result.
    Pair,
}

impl TextClassification {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (_files, config) = (load.files, load.config);
        let (model, encoder) = load.encoder(HeadKind::SequenceClassification)?;
        let labels = config.labels();
        let default_function = default_function(config, labels.len());
        Ok((
            TextClassification {
                encoder: Arc::new(encoder),
                labels: Arc::new(labels),
                default_function,
            },
            model,
        ))
    }
}

/// The pipeline's default `function_to_apply` from `problem_type` and the label count.
pub fn default_function(config: &ModelConfig, num_labels: usize) -> ScoreFunction {
    match config.problem_type.as_deref() {
        Some("regression") => ScoreFunction::None,
        Some("multi_label_classification") => ScoreFunction::Sigmoid,
        _ if num_labels == 1 => ScoreFunction::Sigmoid,
        _ => ScoreFunction::Softmax,
    }
}

impl Pipeline for TextClassification {
    fn task(&self) -> Task {
        Task::TextClassification
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        let top_k = match params.take("top_k") {
            None => TopK::Absent,
            Some(Value::Null) => TopK::Slice(None),
            Some(Value::Bool(b)) => TopK::Slice(Some(b as i64)),
            Some(Value::Number(n)) if n.as_i64().is_some() => TopK::Slice(n.as_i64()),
            // Digits beyond i64 arrive as a float; Python reads them as an int.
            Some(Value::Number(n))
                if n.as_f64()
                    .is_some_and(|v| v.fract() == 0.0 && v.abs() >= 9.2e18) =>
            {
                TopK::Slice(Some(if n.as_f64() > Some(0.0) {
                    i64::MAX
                } else {
                    i64::MIN
                }))
            }
            Some(_) => TopK::Ignored,
        };
        let function = ScoreFunction::take(&mut params, self.default_function)?;
        // Python's truth value: `return_all_scores: 1` is true, `0` false.
        let return_all_scores = params
            .take("return_all_scores")
            .filter(|v| !v.is_null())
            .map(|v| truthy(&v));
        let loader = Loader::take(&mut params);
        // Every other parameter goes to the tokenizer, which refuses what it does not know.
        let kwargs = TokenizerKwargs::take(&mut params)?;
        params.finish(&[OWN_PARAMETERS, LOADER_PARAMETERS, TOKENIZER_KWARGS].concat())?;

        // (how many labels, legacy output) as `_sanitize_parameters` decides them.
        let (keep, legacy) = match (&top_k, return_all_scores) {
            (TopK::Slice(k), _) => (*k, false),
            (_, Some(true)) => (None, true),
            _ => (Some(1), true),
        };
        let top_k_given = !matches!(top_k, TopK::Absent);
        let (shape, items) = parse_inputs(inputs)?;
        loader.check(matches!(shape, Shape::List))?;
        let mut sequences = Vec::with_capacity(items.len());
        for item in &items {
            let pair = match (&item.pair, &kwargs.text_pair) {
                (Some(_), Some(_)) => {
                    return Err(ServerError::bad_request(
                        "parameter `text_pair`: the input is already a pair (the tokenizer got multiple values for keyword argument 'text_pair')",
                    ))
                }
                (pair, param) => pair.as_ref().or(param.as_ref()),
            };
            let encoding = self.encoder.encode_with(
                &item.text,
                pair.map(String::as_str),
                &kwargs.truncation,
                kwargs.options,
            )?;
            kwargs.check_padding(encoding.len(), &self.encoder)?;
            sequences.push(self.encoder.to_sequence_with(&encoding, kwargs.options));
        }

        let labels = self.labels.clone();
        let finish = move |outputs: Vec<Output>| -> Result<Value, ServerError> {
            let rows = vectors(outputs)?;
            let mut results = Vec::with_capacity(rows.len());
            for logits in rows {
                if logits.len() != labels.len() {
                    return Err(ServerError::Internal(format!(
                        "the model produced {} scores for {} labels",
                        logits.len(),
                        labels.len()
                    )));
                }
                results.push(classify(&logits, &labels, function, keep, legacy)?);
            }
            Ok(match shape {
                Shape::Single if !top_k_given => Value::Array(results),
                Shape::Single | Shape::Pair => results.into_iter().next().unwrap_or(Value::Null),
                Shape::List => Value::Array(results),
            })
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}

const NO_TEXT: &str = "You need to specify either `text` or `text_target`.";
const BAD_TYPE: &str = "text input must be of type `str` (single example), `List[str]` (batch or single pretokenized example) or `List[List[str]]` (batch of pretokenized examples).";

fn parse_inputs(inputs: Value) -> Result<(Shape, Vec<Item>), ServerError> {
    match inputs {
        Value::String(text) => Ok((Shape::Single, vec![Item { text, pair: None }])),
        Value::Object(_) => Ok((Shape::Pair, vec![parse_item(inputs)?])),
        Value::Array(values) => Ok((
            Shape::List,
            values
                .into_iter()
                .map(parse_item)
                .collect::<Result<_, _>>()?,
        )),
        Value::Null => Err(ServerError::bad_request(NO_TEXT)),
        _ => Err(ServerError::bad_request(BAD_TYPE)),
    }
}

fn parse_item(value: Value) -> Result<Item, ServerError> {
    match value {
        Value::String(text) => Ok(Item { text, pair: None }),
        // A dict is the tokenizer's keyword arguments: `text` and `text_pair`.
        Value::Object(mut map) => {
            let text = map.shift_remove("text");
            let pair = map.shift_remove("text_pair");
            if let Some(key) = map.keys().next() {
                return Err(ServerError::bad_request(format!(
                    "unexpected key `{}` in a text-classification input: send {{\"inputs\": \"...\"}}, or a pair as `text` and `text_pair`", cut(key, 60)
                )));
            }
            let text = match text {
                None | Some(Value::Null) => return Err(ServerError::bad_request(NO_TEXT)),
                Some(Value::String(s)) => s,
                Some(_) => return Err(ServerError::bad_request(BAD_TYPE)),
            };
            let pair = match pair {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(other) => {
                    return Err(ServerError::bad_request(format!("`text_pair` must be a string, got {}", json_type(&other))))
                }
            };
            Ok(Item { text, pair })
        }
        // The pipeline's backward-compatible pair form: [["text", "pair"]].
        Value::Array(outer) if outer.len() == 1 && matches!(&outer[0], Value::Array(p) if p.len() == 2) => {
            match &outer[0] {
                Value::Array(p) => match (&p[0], &p[1]) {
                    (Value::String(a), Value::String(b)) => Ok(Item { text: a.clone(), pair: Some(b.clone()) }),
                    _ => Err(ServerError::bad_request(BAD_TYPE)),
                },
                _ => unreachable!("matched above"),
            }
        }
        Value::Array(_) => Err(ServerError::bad_request(
            "The pipeline received invalid inputs, if you are trying to send text pairs, you can try to send a dictionary `{\"text\": \"My text\", \"text_pair\": \"My pair\"}` in order to send a text pair.",
        )),
        Value::Null => Err(ServerError::bad_request(NO_TEXT)),
        _ => Err(ServerError::bad_request(BAD_TYPE)),
    }
}

/// Scores of one sequence, shaped as `TextClassificationPipeline.postprocess` returns them.
fn classify(
    logits: &[f32],
    labels: &[String],
    function: ScoreFunction,
    keep: Option<i64>,
    legacy: bool,
) -> Result<Value, ServerError> {
    let scores = apply(function, logits);
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(ServerError::bad_request(
            "Out of range float values are not JSON compliant",
        ));
    }
    if legacy && keep == Some(1) {
        // numpy argmax: the first maximum.
        let (best, score) =
            scores
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (i, &s)| if s > acc.1 { (i, s) } else { acc },
                );
        return Ok(json!({"label": labels[best], "score": score as f64}));
    }
    let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    if !legacy {
        // Stable, like Python's sort(reverse=True): ties keep label order.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        // `scores[:k]`: a negative k drops that many from the end.
        if let Some(k) = keep {
            let len = ranked.len() as i64;
            let end = if k < 0 { (len + k).max(0) } else { k.min(len) };
            ranked.truncate(end as usize);
        }
    }
    Ok(Value::Array(
        ranked
            .into_iter()
            .map(|(i, s)| json!({"label": labels[i], "score": s as f64}))
            .collect(),
    ))
}

/// In f32, as the pipeline's numpy code computes it.
pub fn apply(function: ScoreFunction, logits: &[f32]) -> Vec<f32> {
    match function {
        ScoreFunction::None => logits.to_vec(),
        ScoreFunction::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        ScoreFunction::Softmax => crate::kernels::softmax(logits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["NEG".into(), "POS".into(), "MID".into()]
    }

    fn label_names(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["label"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn legacy_top1_is_a_dict_and_top_k_sorts() {
        let logits = [0.1, 2.0, 0.5];
        let v = classify(&logits, &labels(), ScoreFunction::Softmax, Some(1), true).unwrap();
        assert_eq!(v["label"], "POS");
        let v = classify(&logits, &labels(), ScoreFunction::Softmax, Some(2), false).unwrap();
        assert_eq!(label_names(&v), ["POS", "MID"]);
        // return_all_scores: all labels in id order, unsorted.
        let v = classify(&logits, &labels(), ScoreFunction::Softmax, None, true).unwrap();
        assert_eq!(label_names(&v), ["NEG", "POS", "MID"]);
    }

    #[test]
    fn score_functions() {
        let s = apply(ScoreFunction::Softmax, &[1.0, 1.0]);
        assert_eq!(s, vec![0.5, 0.5]);
        let s = apply(ScoreFunction::Sigmoid, &[0.0]);
        assert_eq!(s, vec![0.5]);
        assert_eq!(apply(ScoreFunction::None, &[-3.0]), vec![-3.0]);
    }

    fn model(json: Value) -> ModelConfig {
        ModelConfig::from_json(json).unwrap()
    }

    #[test]
    fn defaults_follow_problem_type_and_label_count() {
        assert_eq!(
            default_function(&model(json!({"problem_type": "regression"})), 1),
            ScoreFunction::None
        );
        assert_eq!(
            default_function(
                &model(json!({"problem_type": "multi_label_classification"})),
                3
            ),
            ScoreFunction::Sigmoid
        );
        assert_eq!(
            default_function(&model(json!({})), 1),
            ScoreFunction::Sigmoid
        );
        assert_eq!(
            default_function(&model(json!({})), 2),
            ScoreFunction::Softmax
        );
    }

    #[test]
    fn labels_fall_back_to_label_i() {
        assert_eq!(
            model(json!({"id2label": {"0": "a", "1": "b"}})).labels(),
            ["a", "b"]
        );
        assert_eq!(
            model(json!({"num_labels": 3})).labels(),
            ["LABEL_0", "LABEL_1", "LABEL_2"]
        );
    }

    #[test]
    fn input_shapes() {
        assert!(matches!(parse_inputs(json!("a")).unwrap().0, Shape::Single));
        assert!(matches!(
            parse_inputs(json!({"text": "a", "text_pair": "b"}))
                .unwrap()
                .0,
            Shape::Pair
        ));
        let (_, items) = parse_inputs(json!([[["a", "b"]]])).unwrap();
        assert_eq!(items[0].pair.as_deref(), Some("b"));
        assert!(parse_inputs(json!(["a", ["b", "c"]])).is_err());
        assert_eq!(
            parse_inputs(json!(null)).err().unwrap().to_string(),
            NO_TEXT
        );
        assert_eq!(
            parse_inputs(json!(123)).err().unwrap().to_string(),
            BAD_TYPE
        );
    }
}
