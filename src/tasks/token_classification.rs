//! `token-classification` (alias `ner`), as `transformers` 4.51's `TokenClassificationPipeline`:
//! per-token labels with character offsets, the five aggregation strategies, `ignore_labels`,
//! and long texts split into overlapping windows when `stride` is given.

use std::sync::Arc;

use anyhow::Result;
use serde_json::{json, Map, Value};
use tokenizers::utils::truncation::TruncationStrategy;
use tokenizers::Encoding;

use super::offset_mapping::{check_offsets_cover, parse_offset_mapping};
use super::params::Params;
use super::pipeline::{list_or_single, parse_texts, rows, score, Loading, Pipeline, Prepared};
use super::text_classification::{apply, ScoreFunction};
use super::tokenize::{char_slice, tokens_to_string, TextEncoder, Truncation};
use super::tokenizer_kwargs::Loader;
use crate::error::cut;
use crate::error::ServerError;
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::Output as ModelOutput;
use crate::task::Task;

const TASK: &str = "token-classification";
const PARAMETERS: &[&str] = &[
    "aggregation_strategy",
    "ignore_labels",
    "stride",
    "grouped_entities",
    "ignore_subwords",
    "offset_mapping",
    "batch_size",
    "num_workers",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    None,
    Simple,
    First,
    Average,
    Max,
}

impl Aggregation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "NONE" => Aggregation::None,
            "SIMPLE" => Aggregation::Simple,
            "FIRST" => Aggregation::First,
            "AVERAGE" => Aggregation::Average,
            "MAX" => Aggregation::Max,
            _ => return None,
        })
    }
}

pub struct TokenClassification {
    shared: Arc<Shared>,
}

/// What post-processing reads, shared with the `finish` closures.
struct Shared {
    encoder: TextEncoder,
    labels: Vec<String>,
}

/// One token of the input with its scores (`gather_pre_entities`).
struct PreEntity {
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    index: usize,
    is_subword: bool,
}

/// A labelled token or word; `index` only for tokens.
#[derive(Clone)]
struct Entity {
    entity: String,
    score: f32,
    index: Option<usize>,
    word: String,
    start: usize,
    end: usize,
}

/// An output item: a token entity (`aggregation_strategy` none) or a group.
#[derive(Clone)]
struct Output {
    grouped: bool,
    entity: Entity,
}

impl Output {
    fn to_json(&self) -> Value {
        let e = &self.entity;
        let mut map = Map::new();
        if self.grouped {
            map.insert("entity_group".into(), json!(e.entity));
            map.insert("score".into(), score(e.score));
        } else {
            map.insert("entity".into(), json!(e.entity));
            map.insert("score".into(), score(e.score));
            map.insert("index".into(), json!(e.index));
        }
        map.insert("word".into(), json!(e.word));
        map.insert("start".into(), json!(e.start));
        map.insert("end".into(), json!(e.end));
        Value::Object(map)
    }
}

impl TokenClassification {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (_files, config) = (load.files, load.config);
        let (model, encoder) = load.encoder(HeadKind::TokenClassification)?;
        let shared = Shared {
            encoder,
            labels: config.labels(),
        };
        Ok((
            TokenClassification {
                shared: Arc::new(shared),
            },
            model,
        ))
    }
}

impl Pipeline for TokenClassification {
    fn task(&self) -> Task {
        Task::TokenClassification
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        let grouped = params.take_bool("grouped_entities")?;
        let ignore_subwords = params.take_bool("ignore_subwords")?;
        let mut aggregation = match params.take("aggregation_strategy") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Aggregation::parse(&s).ok_or_else(|| {
                ServerError::bad_request(format!(
                    "aggregation_strategy `{}` is not one of none, simple, first, average, max",
                    cut(&s, 60)
                ))
            })?),
            Some(other) => {
                return Err(params.invalid(
                    "aggregation_strategy",
                    "one of \"none\", \"simple\", \"first\", \"average\", \"max\"",
                    &other,
                ))
            }
        };
        // The deprecated flags override `aggregation_strategy`, as in `_sanitize_parameters`.
        if grouped.is_some() || ignore_subwords.is_some() {
            aggregation = Some(
                match (grouped.unwrap_or(false), ignore_subwords.unwrap_or(false)) {
                    (true, true) => Aggregation::First,
                    (true, false) => Aggregation::Simple,
                    _ => Aggregation::None,
                },
            );
        }
        let ignore_labels = match params.take("ignore_labels") {
            None | Some(Value::Null) => vec!["O".to_string()],
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(other) => {
                return Err(params.invalid("ignore_labels", "a list of label names", &other))
            }
        };
        let stride = params.take_usize("stride")?;
        let offset_mapping = params.take("offset_mapping");
        let loader = Loader::take(&mut params);
        params.finish(PARAMETERS)?;
        if let Some(stride) = stride {
            if stride >= self.shared.encoder.default_max_length() {
                return Err(ServerError::bad_request(
                    "`stride` must be less than `tokenizer.model_max_length` (or even lower if the tokenizer adds special tokens)",
                ));
            }
            if aggregation == Some(Aggregation::None) {
                return Err(ServerError::bad_request(
                    "`stride` was provided to process all the text but `aggregation_strategy=\"AggregationStrategy.NONE\"`, please select another one instead.",
                ));
            }
        }
        let aggregation = aggregation.unwrap_or(Aggregation::None);

        let (is_list, texts) = parse_texts(inputs, TASK)?;
        loader.check(is_list)?;
        let offsets = parse_offset_mapping(offset_mapping, texts.len())?.map(Arc::new);
        // The pipeline always truncates to the tokenizer's length; `stride` keeps the rest as
        // overlapping windows instead of dropping it.
        let truncation =
            Truncation::with(TruncationStrategy::LongestFirst, None, stride.unwrap_or(0));
        let mut sequences = Vec::new();
        let mut windows = Vec::with_capacity(texts.len());
        for text in &texts {
            let encoding = self
                .shared
                .encoder
                .encode_full(text, None, &truncation, true)?;
            let mut chunks = vec![encoding.clone()];
            if stride.is_some() {
                chunks.extend(encoding.get_overflowing().iter().cloned());
            }
            if let Some(offsets) = &offsets {
                check_offsets_cover(offsets, &chunks)?;
            }
            sequences.extend(chunks.iter().map(|c| self.shared.encoder.to_sequence(c)));
            windows.push(chunks);
        }

        let shared = self.shared.clone();
        let finish = move |outputs: Vec<ModelOutput>| -> Result<Value, ServerError> {
            let mut rows = rows(outputs, shared.labels.len())?.into_iter();
            let mut results = Vec::with_capacity(texts.len());
            for (text, chunks) in texts.iter().zip(&windows) {
                let chunk_rows: Vec<Vec<f32>> = rows.by_ref().take(chunks.len()).collect();
                let entities = shared.postprocess(
                    text,
                    chunks,
                    chunk_rows,
                    aggregation,
                    &ignore_labels,
                    offsets.as_deref().map(Vec::as_slice),
                )?;
                results.push(Value::Array(entities.iter().map(Output::to_json).collect()));
            }
            Ok(list_or_single(results, is_list))
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}

impl Shared {
    fn postprocess(
        &self,
        text: &str,
        chunks: &[Encoding],
        rows: Vec<Vec<f32>>,
        aggregation: Aggregation,
        ignore_labels: &[String],
        offsets: Option<&[(usize, usize)]>,
    ) -> Result<Vec<Output>, ServerError> {
        let n = self.labels.len();
        let mut all = Vec::new();
        for (encoding, logits) in chunks.iter().zip(rows) {
            if logits.len() != encoding.len() * n {
                return Err(ServerError::Internal(format!(
                    "the model produced {} scores for {} tokens x {n} labels",
                    logits.len(),
                    encoding.len()
                )));
            }
            let scores: Vec<Vec<f32>> = logits
                .chunks_exact(n)
                .map(|l| apply(ScoreFunction::Softmax, l))
                .collect();
            let pre = self.gather_pre_entities(text, encoding, scores, offsets);
            let grouped = self.aggregate(pre, aggregation)?;
            all.extend(
                grouped
                    .into_iter()
                    .filter(|o| !ignore_labels.contains(&o.entity.entity)),
            );
        }
        if chunks.len() > 1 {
            all = aggregate_overlapping(all);
        }
        Ok(all)
    }

    fn gather_pre_entities(
        &self,
        text: &str,
        encoding: &Encoding,
        scores: Vec<Vec<f32>>,
        offsets: Option<&[(usize, usize)]>,
    ) -> Vec<PreEntity> {
        let tokenizer = self.encoder.tokenizer();
        let mut pre = Vec::new();
        for (idx, token_scores) in scores.into_iter().enumerate() {
            if encoding.get_special_tokens_mask()[idx] == 1 {
                continue;
            }
            let id = encoding.get_ids()[idx];
            // A request's `offset_mapping` replaces the tokenizer's (checked to cover the tokens).
            let (start, end) = offsets.map_or(encoding.get_offsets()[idx], |o| o[idx]);
            let mut word = tokenizer.id_to_token(id).unwrap_or_default();
            let word_ref = char_slice(text, start, end);
            let mut is_subword = if self.encoder.info().has_subword_prefix {
                word.chars().count() != word_ref.chars().count()
            } else {
                // The pipeline's fallback heuristic: no space just before or at the start.
                start > 0 && !char_slice(text, start - 1, start + 1).contains(' ')
            };
            if Some(id) == self.encoder.info().unk_id {
                word = word_ref.to_string();
                is_subword = false;
            }
            pre.push(PreEntity {
                word,
                scores: token_scores,
                start,
                end,
                index: idx,
                is_subword,
            });
        }
        pre
    }

    fn aggregate(
        &self,
        pre: Vec<PreEntity>,
        aggregation: Aggregation,
    ) -> Result<Vec<Output>, ServerError> {
        let entities: Vec<Entity> = match aggregation {
            Aggregation::None | Aggregation::Simple => pre
                .into_iter()
                .map(|p| {
                    let (best, score) = argmax(&p.scores);
                    Entity {
                        entity: self.labels[best].clone(),
                        score,
                        index: Some(p.index),
                        word: p.word,
                        start: p.start,
                        end: p.end,
                    }
                })
                .collect(),
            _ => self.aggregate_words(pre, aggregation)?,
        };
        if aggregation == Aggregation::None {
            return Ok(entities
                .into_iter()
                .map(|entity| Output {
                    grouped: false,
                    entity,
                })
                .collect());
        }
        self.group_entities(entities)
    }

    /// Forces one label per word (FIRST / AVERAGE / MAX over its subword tokens).
    fn aggregate_words(
        &self,
        pre: Vec<PreEntity>,
        aggregation: Aggregation,
    ) -> Result<Vec<Entity>, ServerError> {
        let mut words = Vec::new();
        let mut group: Vec<PreEntity> = Vec::new();
        for p in pre {
            if !group.is_empty() && !p.is_subword {
                words.push(self.aggregate_word(std::mem::take(&mut group), aggregation)?);
            }
            group.push(p);
        }
        if !group.is_empty() {
            words.push(self.aggregate_word(group, aggregation)?);
        }
        Ok(words)
    }

    fn aggregate_word(
        &self,
        group: Vec<PreEntity>,
        aggregation: Aggregation,
    ) -> Result<Entity, ServerError> {
        let (best, score) = match aggregation {
            Aggregation::First => argmax(&group[0].scores),
            Aggregation::Max => {
                // `max(entities, key=...)`: the first token with the highest top score.
                let mut chosen = &group[0];
                for p in &group[1..] {
                    if argmax(&p.scores).1 > argmax(&chosen.scores).1 {
                        chosen = p;
                    }
                }
                argmax(&chosen.scores)
            }
            _ => {
                let n = group[0].scores.len();
                let average: Vec<f32> = (0..n)
                    .map(|j| group.iter().map(|p| p.scores[j]).sum::<f32>() / group.len() as f32)
                    .collect();
                argmax(&average)
            }
        };
        let start = group[0].start;
        let end = group[group.len() - 1].end;
        let word = tokens_to_string(
            self.encoder.tokenizer(),
            group.into_iter().map(|p| p.word).collect(),
        )?;
        Ok(Entity {
            entity: self.labels[best].clone(),
            score,
            index: None,
            word,
            start,
            end,
        })
    }

    /// Merges adjacent entities with the same tag (B-/I- prefixes as the pipeline reads them).
    fn group_entities(&self, entities: Vec<Entity>) -> Result<Vec<Output>, ServerError> {
        let mut groups = Vec::new();
        let mut current: Vec<Entity> = Vec::new();
        for entity in entities {
            if let Some(last) = current.last() {
                let (bi, tag) = tag_of(&entity.entity);
                let (_, last_tag) = tag_of(&last.entity);
                if !(tag == last_tag && bi != "B") {
                    groups.push(self.group_sub_entities(std::mem::take(&mut current))?);
                }
            }
            current.push(entity);
        }
        if !current.is_empty() {
            groups.push(self.group_sub_entities(current)?);
        }
        Ok(groups)
    }

    fn group_sub_entities(&self, entities: Vec<Entity>) -> Result<Output, ServerError> {
        let label = entities[0]
            .entity
            .split_once('-')
            .map_or(entities[0].entity.as_str(), |(_, rest)| rest)
            .to_string();
        let score = entities.iter().map(|e| e.score).sum::<f32>() / entities.len() as f32;
        let start = entities[0].start;
        let end = entities[entities.len() - 1].end;
        let word = tokens_to_string(
            self.encoder.tokenizer(),
            entities.into_iter().map(|e| e.word).collect(),
        )?;
        Ok(Output {
            grouped: true,
            entity: Entity {
                entity: label,
                score,
                index: None,
                word,
                start,
                end,
            },
        })
    }
}

/// numpy's argmax: the first maximum, with its value.
fn argmax(scores: &[f32]) -> (usize, f32) {
    scores.iter().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |acc, (i, &s)| {
            if s > acc.1 {
                (i, s)
            } else {
                acc
            }
        },
    )
}

fn tag_of(name: &str) -> (&str, &str) {
    if let Some(tag) = name.strip_prefix("B-") {
        ("B", tag)
    } else if let Some(tag) = name.strip_prefix("I-") {
        ("I", tag)
    } else {
        ("I", name)
    }
}

/// Entities from overlapping windows: of those that overlap, the longest (then the most
/// confident) wins (`aggregate_overlapping_entities`).
fn aggregate_overlapping(mut entities: Vec<Output>) -> Vec<Output> {
    if entities.is_empty() {
        return entities;
    }
    entities.sort_by_key(|o| o.entity.start);
    let mut kept = Vec::new();
    let mut previous = entities[0].clone();
    for entity in entities {
        let (p, e) = (&previous.entity, &entity.entity);
        if p.start <= e.start && e.start < p.end {
            let current_length = e.end - e.start;
            let previous_length = p.end - p.start;
            if current_length > previous_length
                || (current_length == previous_length && e.score > p.score)
            {
                previous = entity;
            }
        } else {
            kept.push(std::mem::replace(&mut previous, entity));
        }
    }
    kept.push(previous);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(tag_of("B-PER"), ("B", "PER"));
        assert_eq!(tag_of("I-LOC"), ("I", "LOC"));
        assert_eq!(tag_of("$REPLACE_have"), ("I", "$REPLACE_have"));
    }

    #[test]
    fn overlapping_windows_keep_the_longest_entity() {
        let e = |start, end, score| Output {
            grouped: true,
            entity: Entity {
                entity: "X".into(),
                score,
                index: None,
                word: String::new(),
                start,
                end,
            },
        };
        let kept = aggregate_overlapping(vec![
            e(0, 4, 0.5),
            e(10, 12, 0.9),
            e(0, 6, 0.1),
            e(10, 12, 0.95),
        ]);
        let spans: Vec<_> = kept
            .iter()
            .map(|o| (o.entity.start, o.entity.end, o.entity.score))
            .collect();
        assert_eq!(spans, [(0, 6, 0.1), (10, 12, 0.95)]);
    }
}
