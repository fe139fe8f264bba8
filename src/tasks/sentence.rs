//! The sentence-transformers tasks of Hugging Face's inference toolkit (contract section 11):
//! `sentence-embeddings` and `sentence-similarity` (a bi-encoder with the pooling and
//! normalisation its `modules.json` declares) and `sentence-ranking` (a cross-encoder).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokenizers::utils::truncation::TruncationStrategy;

use super::params::{json_type, Params};
use super::pipeline::{list_or_single, parse_texts, score, vectors, Loading, Pipeline, Prepared};
use super::text_classification::{apply, ScoreFunction};
use super::tokenize::{TextEncoder, Truncation};
use crate::error::{cut, ServerError};
use crate::models::config::{EncoderConfig, ModelConfig};
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::pooling::Pooling;
use crate::models::Output;
use crate::task::Task;

/// What a sentence-transformers folder declares about its modules.
struct SentenceConfig {
    pooling: Pooling,
    max_seq_length: Option<usize>,
    do_lower_case: bool,
}

impl SentenceConfig {
    fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Option<Value>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            ))
        };
        let modules = read("modules.json")?;
        let modules = modules
            .as_ref()
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let module_type = |m: &Value| {
            m.get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let mut pooling_dir = None;
        let mut normalize = false;
        for module in &modules {
            let kind = module_type(module);
            let path = module.get("path").and_then(Value::as_str).unwrap_or("");
            match kind.rsplit('.').next().unwrap_or("") {
                "Transformer" => {}
                "Pooling" => pooling_dir = Some(dir.join(path)),
                "Normalize" => normalize = true,
                other => bail!(
                    "sentence-transformers module `{other}` ({kind}) is not supported; supported modules: Transformer, Pooling, Normalize"
                ),
            }
        }
        let pooling = Pooling::from_dir(pooling_dir.as_deref(), normalize)?;
        let st_config = read("sentence_bert_config.json")?.unwrap_or(Value::Null);
        Ok(SentenceConfig {
            pooling,
            max_seq_length: st_config
                .get("max_seq_length")
                .and_then(Value::as_u64)
                .map(|n| n as usize),
            do_lower_case: st_config
                .get("do_lower_case")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// A bi-encoder: texts → pooled (and maybe normalised) sentence vectors.
struct Embedder {
    encoder: TextEncoder,
    truncation: Truncation,
    do_lower_case: bool,
}

impl Embedder {
    fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (files, _config) = (load.files, load.config);
        let st = SentenceConfig::load(&files.dir)?;
        let (model, encoder) = load.encoder(HeadKind::Pooled(st.pooling))?;
        // SentenceTransformer.encode always truncates to max_seq_length.
        let truncation = Truncation::with(TruncationStrategy::LongestFirst, st.max_seq_length, 0);
        Ok((
            Embedder {
                encoder,
                truncation,
                do_lower_case: st.do_lower_case,
            },
            model,
        ))
    }

    fn sequences(&self, texts: &[String]) -> Result<Vec<crate::models::Sequence>, ServerError> {
        texts
            .iter()
            .map(|t| {
                let text = if self.do_lower_case {
                    t.to_lowercase()
                } else {
                    t.clone()
                };
                self.encoder.encode(&text, None, &self.truncation)
            })
            .collect()
    }
}

fn no_parameters(parameters: Option<Value>, task: &'static str) -> Result<(), ServerError> {
    Params::new(parameters, task)?.finish(&[])
}

fn vector(v: &[f32]) -> Value {
    Value::Array(v.iter().map(|&x| score(x)).collect())
}

pub struct SentenceEmbeddings {
    embedder: Embedder,
}

impl SentenceEmbeddings {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (_files, _config) = (load.files, load.config);
        let (embedder, model) = Embedder::load(load)?;
        Ok((SentenceEmbeddings { embedder }, model))
    }
}

impl Pipeline for SentenceEmbeddings {
    fn task(&self) -> Task {
        Task::SentenceEmbeddings
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        no_parameters(parameters, "sentence-embeddings")?;
        let (is_list, texts) = parse_texts(inputs, "sentence-embeddings")?;
        let sequences = self.embedder.sequences(&texts)?;
        let finish = move |outputs: Vec<Output>| -> Result<Value, ServerError> {
            let rows = vectors(outputs)?;
            let embeddings = list_or_single(rows.iter().map(|r| vector(r)).collect(), is_list);
            Ok(json!({ "embeddings": embeddings }))
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}

pub struct SentenceSimilarity {
    embedder: Embedder,
}

impl SentenceSimilarity {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (_files, _config) = (load.files, load.config);
        let (embedder, model) = Embedder::load(load)?;
        Ok((SentenceSimilarity { embedder }, model))
    }
}

const SIMILARITY_INPUT: &str = "sentence-similarity takes `inputs` as {\"source_sentence\": \"...\", \"sentences\": [\"...\", ...]}";

impl Pipeline for SentenceSimilarity {
    fn task(&self) -> Task {
        Task::SentenceSimilarity
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        no_parameters(parameters, "sentence-similarity")?;
        let Value::Object(mut map) = inputs else {
            return Err(ServerError::bad_request(SIMILARITY_INPUT));
        };
        let source = match map.shift_remove("source_sentence") {
            Some(Value::String(s)) => s,
            _ => return Err(ServerError::bad_request(SIMILARITY_INPUT)),
        };
        let (_, others) = match map.shift_remove("sentences") {
            Some(v @ (Value::Array(_) | Value::String(_))) => {
                parse_texts(v, "sentence-similarity")?
            }
            _ => return Err(ServerError::bad_request(SIMILARITY_INPUT)),
        };
        if let Some(key) = map.keys().next() {
            return Err(ServerError::bad_request(format!(
                "unexpected key `{}`: {SIMILARITY_INPUT}",
                cut(key, 60)
            )));
        }
        let mut texts = vec![source];
        texts.extend(others);
        let sequences = self.embedder.sequences(&texts)?;
        let finish = move |outputs: Vec<Output>| -> Result<Value, ServerError> {
            let rows = vectors(outputs)?;
            let unit = |v: &[f32]| {
                let mut v = v.to_vec();
                crate::models::pooling::normalize(&mut v);
                v
            };
            let source = unit(&rows[0]);
            let similarities: Vec<Value> = rows[1..]
                .iter()
                .map(|r| {
                    let other = unit(r);
                    score(source.iter().zip(&other).map(|(a, b)| a * b).sum())
                })
                .collect();
            Ok(json!({ "similarities": similarities }))
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}

pub struct SentenceRanking {
    encoder: Arc<TextEncoder>,
    activation: ScoreFunction,
}

impl SentenceRanking {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (_files, config) = (load.files, load.config);
        EncoderConfig::from_config(config)?;
        let (model, encoder) = load.encoder(HeadKind::SequenceClassification)?;
        Ok((
            SentenceRanking {
                encoder: Arc::new(encoder),
                activation: cross_encoder_activation(config),
            },
            model,
        ))
    }
}

/// CrossEncoder's default activation: the one saved in `config.json`, else sigmoid for a
/// single-label model and none otherwise.
fn cross_encoder_activation(config: &ModelConfig) -> ScoreFunction {
    let saved = config
        .sentence_transformers
        .as_ref()
        .and_then(|s| s.activation_fn.as_deref())
        .or(config.sbert_ce_default_activation_function.as_deref());
    match saved {
        Some(name) if name.ends_with("Sigmoid") => ScoreFunction::Sigmoid,
        Some(name) if name.ends_with("Identity") => ScoreFunction::None,
        _ if config.labels().len() == 1 => ScoreFunction::Sigmoid,
        _ => ScoreFunction::None,
    }
}

const RANKING_INPUT: &str = "sentence-ranking takes `inputs` as [\"query\", \"text\"], a list of such pairs, or {\"query\": \"...\", \"texts\": [\"...\", ...]}";

/// The request's pairs and how to shape the answer.
enum RankingShape {
    /// `["q", "d"]`: one score.
    Pair,
    /// `[["q", "d1"], ...]`: a list of scores.
    Pairs,
    /// `{"query", "texts"}`: ranked `{index, score[, text]}` objects.
    Rerank { return_documents: bool },
}

fn parse_ranking(inputs: Value) -> Result<(RankingShape, Vec<(String, String)>), ServerError> {
    let as_pair = |v: &Value| -> Option<(String, String)> {
        match v {
            Value::Array(p) if p.len() == 2 => {
                Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string()))
            }
            _ => None,
        }
    };
    match inputs {
        Value::Array(items) if items.len() == 2 && items.iter().all(Value::is_string) => {
            let pair = as_pair(&Value::Array(items))
                .ok_or_else(|| ServerError::bad_request(RANKING_INPUT))?;
            Ok((RankingShape::Pair, vec![pair]))
        }
        Value::Array(items) if !items.is_empty() => {
            let pairs = items
                .iter()
                .map(|v| as_pair(v).ok_or_else(|| ServerError::bad_request(RANKING_INPUT)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((RankingShape::Pairs, pairs))
        }
        Value::Object(mut map) => {
            let query = match map.shift_remove("query") {
                Some(Value::String(q)) => q,
                _ => return Err(ServerError::bad_request(RANKING_INPUT)),
            };
            let texts = match map.shift_remove("texts") {
                Some(v @ Value::Array(_)) => parse_texts(v, "sentence-ranking")?.1,
                _ => return Err(ServerError::bad_request(RANKING_INPUT)),
            };
            if texts.is_empty() {
                return Err(ServerError::bad_request("`texts` must not be empty"));
            }
            let return_documents = match map.shift_remove("return_documents") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(other) => {
                    return Err(ServerError::bad_request(format!(
                        "`return_documents` must be true or false, got {}",
                        json_type(&other)
                    )))
                }
            };
            if let Some(key) = map.keys().next() {
                return Err(ServerError::bad_request(format!(
                    "unexpected key `{}`: {RANKING_INPUT}",
                    cut(key, 60)
                )));
            }
            let pairs = texts.into_iter().map(|t| (query.clone(), t)).collect();
            Ok((RankingShape::Rerank { return_documents }, pairs))
        }
        _ => Err(ServerError::bad_request(RANKING_INPUT)),
    }
}

impl Pipeline for SentenceRanking {
    fn task(&self) -> Task {
        Task::SentenceRanking
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        no_parameters(parameters, "sentence-ranking")?;
        let (shape, pairs) = parse_ranking(inputs)?;
        let truncation = Truncation::with(TruncationStrategy::LongestFirst, None, 0);
        let sequences = pairs
            .iter()
            .map(|(q, d)| self.encoder.encode(q, Some(d), &truncation))
            .collect::<Result<Vec<_>, _>>()?;
        let activation = self.activation;
        let finish = move |outputs: Vec<Output>| -> Result<Value, ServerError> {
            let rows = vectors(outputs)?;
            // One score per pair for single-label models, else the activated logit row.
            let scores: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let s = apply(activation, r);
                    if s.len() == 1 {
                        score(s[0])
                    } else {
                        vector(&s)
                    }
                })
                .collect();
            Ok(match shape {
                RankingShape::Pair => json!({ "scores": scores[0] }),
                RankingShape::Pairs => json!({ "scores": scores }),
                RankingShape::Rerank { return_documents } => {
                    let mut ranked: Vec<(usize, f32)> = rows
                        .iter()
                        .map(|r| apply(activation, r)[0])
                        .enumerate()
                        .collect();
                    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                    Value::Array(
                        ranked
                            .into_iter()
                            .map(|(i, s)| {
                                if return_documents {
                                    json!({"index": i, "score": score(s), "text": pairs[i].1})
                                } else {
                                    json!({"index": i, "score": score(s)})
                                }
                            })
                            .collect(),
                    )
                }
            })
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_inputs() {
        assert!(matches!(
            parse_ranking(json!(["q", "d"])).unwrap().0,
            RankingShape::Pair
        ));
        let (shape, pairs) = parse_ranking(json!([["q", "a"], ["q", "b"]])).unwrap();
        assert!(matches!(shape, RankingShape::Pairs) && pairs.len() == 2);
        let (shape, pairs) = parse_ranking(
            json!({"query": "q", "texts": ["a", "b", "c"], "return_documents": true}),
        )
        .unwrap();
        assert!(matches!(
            shape,
            RankingShape::Rerank {
                return_documents: true
            }
        ));
        assert_eq!(pairs[2], ("q".to_string(), "c".to_string()));
        assert!(parse_ranking(json!("q")).is_err());
        assert!(parse_ranking(json!([["q"]])).is_err());
    }

    #[test]
    fn cross_encoder_activation_defaults() {
        assert_eq!(
            cross_encoder_activation(&ModelConfig::from_json(json!({"num_labels": 1})).unwrap()),
            ScoreFunction::Sigmoid
        );
        assert_eq!(
            cross_encoder_activation(
                &ModelConfig::from_json(json!({"id2label": {"0": "a", "1": "b", "2": "c"}}))
                    .unwrap()
            ),
            ScoreFunction::None
        );
        assert_eq!(
            cross_encoder_activation(&ModelConfig::from_json(json!({"id2label": {"0": "x"}, "sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}})).unwrap()),
            ScoreFunction::None
        );
    }
}
