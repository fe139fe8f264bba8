//! `question-answering`, as `transformers` 4.51's `QuestionAnsweringPipeline` with a fast
//! tokenizer: the question and a context that may be split into overlapping windows
//! (`max_seq_len`, `doc_stride`), span scores from start × end probabilities, answers as character
//! spans of the original context (aligned to whole words).

use std::sync::Arc;

use anyhow::Result;
use serde_json::{json, Value};
use tokenizers::utils::truncation::TruncationStrategy;
use tokenizers::Encoding;

use super::params::{compact, json_type, Params};
use super::pipeline::{list_or_single, rows, score, Loading, Pipeline, Prepared};
use super::text_classification::{apply, ScoreFunction};
use super::tokenize::{char_slice, TextEncoder, Truncation};
use super::tokenizer_kwargs::{Loader, TokenizerKwargs};
use crate::error::ServerError;
use crate::models::encoder_model::{EncoderModel, HeadKind};
use crate::models::Output;
use crate::task::Task;

const TASK: &str = "question-answering";
pub struct QuestionAnswering {
    encoder: Arc<TextEncoder>,
    cls_id: Option<u32>,
}

struct Example {
    question: String,
    context: String,
}

#[derive(Debug, Clone, Copy)]
struct Options {
    top_k: usize,
    max_answer_len: usize,
    handle_impossible_answer: bool,
    align_to_words: bool,
}

/// One candidate answer: score as the pipeline computes it in float32.
struct Answer {
    score: f32,
    start: usize,
    end: usize,
    text: String,
}

impl QuestionAnswering {
    pub fn load(load: &Loading) -> Result<(Self, EncoderModel)> {
        let (_files, _config) = (load.files, load.config);
        let (model, encoder) = load.encoder(HeadKind::QuestionAnswering)?;
        let cls_id = encoder.info().cls_id;
        Ok((
            QuestionAnswering {
                encoder: Arc::new(encoder),
                cls_id,
            },
            model,
        ))
    }
}

impl Pipeline for QuestionAnswering {
    fn task(&self) -> Task {
        Task::QuestionAnswering
    }

    fn prepare(&self, inputs: Value, parameters: Option<Value>) -> Result<Prepared, ServerError> {
        let mut params = Params::new(parameters, TASK)?;
        // `topk` is the deprecated name, used when `top_k` is absent.
        let (top_k, topk) = (params.take_usize("top_k")?, params.take_usize("topk")?);
        let top_k = top_k.or(topk);
        let max_answer_len = params.take_usize("max_answer_len")?;
        let max_seq_len = params.take_usize("max_seq_len")?;
        let doc_stride = params.take_usize("doc_stride")?;
        // Accepted for compatibility: the fast-tokenizer path of the pipeline ignores it.
        let _ = params.take_usize("max_question_len")?;
        let handle_impossible_answer = params.take_bool("handle_impossible_answer")?;
        let align_to_words = params.take_bool("align_to_words")?;
        // The tokenizer's padding: pads are never part of an answer, so only its value matters.
        TokenizerKwargs::take_padding(&mut params)?;
        let loader = Loader::take(&mut params);
        // The pipeline drops every other keyword argument (`question` and `context` included:
        // the DLC passes `inputs` positionally).
        params.ignore_rest();
        if top_k == Some(0) {
            return Err(ServerError::bad_request(
                "top_k parameter should be >= 1 (got 0)",
            ));
        }
        if max_answer_len == Some(0) {
            return Err(ServerError::bad_request(
                "max_answer_len parameter should be >= 1 (got 0",
            ));
        }
        let max_seq_len = max_seq_len.unwrap_or_else(|| self.encoder.default_max_length().min(384));
        let doc_stride = doc_stride.unwrap_or((max_seq_len / 2).min(128));
        if doc_stride > max_seq_len {
            return Err(ServerError::bad_request(format!(
                "`doc_stride` ({doc_stride}) is larger than `max_seq_len` ({max_seq_len})"
            )));
        }
        let options = Options {
            top_k: top_k.unwrap_or(1),
            max_answer_len: max_answer_len.unwrap_or(15),
            handle_impossible_answer: handle_impossible_answer.unwrap_or(false),
            align_to_words: align_to_words.unwrap_or(true),
        };

        let (is_list, examples) = parse_examples(inputs)?;
        loader.check(is_list && examples.len() > 1)?;
        let truncation = Truncation::with(
            TruncationStrategy::OnlySecond,
            Some(max_seq_len),
            doc_stride,
        );
        let mut sequences = Vec::new();
        let mut windows = Vec::with_capacity(examples.len());
        for example in &examples {
            let encoding = self.encoder.encode_full(
                &example.question,
                Some(&example.context),
                &truncation,
                true,
            )?;
            let mut spans = vec![encoding.clone()];
            spans.extend(encoding.get_overflowing().iter().cloned());
            sequences.extend(spans.iter().map(|s| self.encoder.to_sequence(s)));
            windows.push(spans);
        }

        let cls_id = self.cls_id;
        let finish = move |outputs: Vec<Output>| -> Result<Value, ServerError> {
            // Start and end logits per token.
            let mut rows = rows(outputs, 2)?.into_iter();
            let mut results = Vec::with_capacity(examples.len());
            for (example, spans) in examples.iter().zip(&windows) {
                let span_rows: Vec<Vec<f32>> = rows.by_ref().take(spans.len()).collect();
                results.push(answer(example, spans, span_rows, cls_id, options)?);
            }
            // A single example (or a list of one) is answered without the list.
            let as_list = is_list && results.len() != 1;
            Ok(list_or_single(results, as_list))
        };
        Ok(Prepared {
            sequences,
            finish: Box::new(finish),
        })
    }
}

const MISSING_KEYS: &str = "You need to provide a dictionary with keys {question:..., context:...}";

/// A `{question, context}` object or a list of them (`QuestionAnsweringArgumentHandler`). An
/// object whose `question` is a list asks each question (of one `context`, or of the context at
/// the same place in a list), as the pipeline's keyword call `pipe(question=[...], context=...)`
/// does; the DLC passes the object positionally, where transformers 4.51 mangles it.
fn parse_examples(inputs: Value) -> Result<(bool, Vec<Example>), ServerError> {
    match inputs {
        Value::Object(map) if matches!(map.get("question"), Some(Value::Array(_))) => {
            let examples = expand_questions(map)?;
            Ok((examples.len() != 1, examples))
        }
        Value::Object(_) => Ok((false, vec![parse_example(inputs)?])),
        Value::Array(items) if !items.is_empty() => Ok((
            true,
            items
                .into_iter()
                .map(parse_example)
                .collect::<Result<_, _>>()?,
        )),
        other => Err(ServerError::bad_request(format!(
            "question-answering takes `inputs` as {{\"question\": \"...\", \"context\": \"...\"}} or a list of such objects, got {}",
            json_type(&other)
        ))),
    }
}

/// `{"question": [...], "context": "..." or [...]}`: one example per question.
fn expand_questions(mut map: serde_json::Map<String, Value>) -> Result<Vec<Example>, ServerError> {
    let Some(Value::Array(questions)) = map.shift_remove("question") else {
        unreachable!("checked by the caller")
    };
    let contexts = match map.shift_remove("context") {
        Some(Value::String(c)) => vec![Value::String(c); questions.len()],
        Some(Value::Array(contexts)) if contexts.len() == questions.len() => contexts,
        Some(Value::Array(_)) => {
            return Err(ServerError::bad_request(
                "Questions and contexts don't have the same lengths (question: a list, context: a list of another length)",
            ))
        }
        _ => {
            return Err(ServerError::bad_request(
                "a list of `question`s needs a `context`: a string, or a list of as many strings",
            ))
        }
    };
    if questions.is_empty() {
        return Err(ServerError::bad_request("`question` cannot be empty"));
    }
    questions
        .into_iter()
        .zip(contexts)
        .map(|(question, context)| {
            parse_example(serde_json::json!({"question": question, "context": context}))
        })
        .collect()
}

fn parse_example(value: Value) -> Result<Example, ServerError> {
    let Value::Object(mut map) = value else {
        // (the DLC's message, with the item cut short: it may be megabytes)
        return Err(ServerError::bad_request(format!(
            "{} argument needs to be of type (SquadExample, dict)",
            compact(&value)
        )));
    };
    let mut field = |key: &str| -> Result<String, ServerError> {
        match map.shift_remove(key) {
            None => Err(ServerError::bad_request(MISSING_KEYS)),
            Some(Value::Null) => Err(ServerError::bad_request(format!("`{key}` cannot be None"))),
            Some(Value::String(s)) if s.is_empty() => {
                Err(ServerError::bad_request(format!("`{key}` cannot be empty")))
            }
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(ServerError::bad_request(format!(
                "`{key}` must be a string, got {}",
                json_type(&other)
            ))),
        }
    };
    let question = field("question")?;
    let context = field("context")?;
    Ok(Example { question, context })
}

/// `postprocess` over the windows of one example.
fn answer(
    example: &Example,
    spans: &[Encoding],
    rows: Vec<Vec<f32>>,
    cls_id: Option<u32>,
    options: Options,
) -> Result<Value, ServerError> {
    let mut min_null_score = 1_000_000f32;
    let mut answers = Vec::new();
    for (encoding, logits) in spans.iter().zip(rows) {
        let len = encoding.len();
        if logits.len() != 2 * len {
            return Err(ServerError::Internal(format!(
                "the model produced {} span logits for {len} tokens",
                logits.len()
            )));
        }
        // Only context tokens (and the CLS token) may be part of an answer.
        let allowed: Vec<bool> = (0..len)
            .map(|t| {
                encoding.get_sequence_ids()[t] == Some(1) || Some(encoding.get_ids()[t]) == cls_id
            })
            .collect();
        let masked = |offset: usize| -> Vec<f32> {
            (0..len)
                .map(|t| {
                    if allowed[t] {
                        logits[2 * t + offset]
                    } else {
                        -10000.0
                    }
                })
                .collect()
        };
        let mut start = apply(ScoreFunction::Softmax, &masked(0));
        let mut end = apply(ScoreFunction::Softmax, &masked(1));
        if options.handle_impossible_answer {
            min_null_score = min_null_score.min(start[0] * end[0]);
        }
        start[0] = 0.0;
        end[0] = 0.0;
        for (s, e, score) in decode_spans(&start, &end, &allowed, options) {
            let (start_char, end_char) = char_span(encoding, s, e, options.align_to_words);
            answers.push(Answer {
                score,
                start: start_char,
                end: end_char,
                text: char_slice(&example.context, start_char, end_char).to_string(),
            });
        }
    }
    if options.handle_impossible_answer {
        answers.push(Answer {
            score: min_null_score,
            start: 0,
            end: 0,
            text: String::new(),
        });
    }
    // Python's sorted(reverse=True) is stable: equal scores keep their order.
    answers.sort_by(|a, b| b.score.total_cmp(&a.score));
    answers.truncate(options.top_k);
    let mut json: Vec<Value> = answers
        .into_iter()
        .map(|a| json!({"score": score(a.score), "start": a.start, "end": a.end, "answer": a.text}))
        .collect();
    Ok(if json.len() == 1 {
        json.pop().unwrap_or(Value::Null)
    } else {
        Value::Array(json)
    })
}

/// `decode_spans`: the best `top_k` spans with start <= end < start + max_answer_len, by
/// start × end probability, keeping only spans whose ends are both allowed tokens.
fn decode_spans(
    start: &[f32],
    end: &[f32],
    allowed: &[bool],
    options: Options,
) -> Vec<(usize, usize, f32)> {
    let len = start.len();
    // Candidate scores in row-major (start, end) order, zero outside the band, like
    // np.tril(np.triu(outer), max_answer_len - 1).
    let score_at = |s: usize, e: usize| -> f32 {
        // (`e - s`, not `s + max_answer_len`: a request may send any length, u64::MAX too)
        if e >= s && e - s < options.max_answer_len {
            start[s] * end[e]
        } else {
            0.0
        }
    };
    let mut chosen: Vec<(usize, usize)> = if options.top_k == 1 {
        // np.argmax: the first maximum in flattened order.
        let mut best = (0, 0);
        let mut best_score = f32::NEG_INFINITY;
        for s in 0..len {
            for e in 0..len {
                let v = score_at(s, e);
                if v > best_score {
                    best_score = v;
                    best = (s, e);
                }
            }
        }
        vec![best]
    } else {
        let mut all: Vec<(usize, usize)> = (0..len)
            .flat_map(|s| (0..len).map(move |e| (s, e)))
            .collect();
        all.sort_by(|a, b| score_at(b.0, b.1).total_cmp(&score_at(a.0, a.1)));
        all.truncate(options.top_k);
        all
    };
    chosen.retain(|&(s, e)| allowed[s] && allowed[e]);
    chosen
        .into_iter()
        .map(|(s, e)| (s, e, score_at(s, e)))
        .collect()
}

/// `get_indices`: the characters of the words the span starts and ends in, or of the tokens
/// themselves when a token belongs to no word.
fn char_span(encoding: &Encoding, s: usize, e: usize, align_to_words: bool) -> (usize, usize) {
    let offsets = encoding.get_offsets();
    if align_to_words {
        let word_chars = |t: usize, side: usize| -> Option<usize> {
            let (_, word) = encoding.token_to_word(t)?;
            let (a, b) = encoding.word_to_chars(word, 1)?;
            Some(if side == 0 { a } else { b })
        };
        if let (Some(a), Some(b)) = (word_chars(s, 0), word_chars(e, 1)) {
            return (a, b);
        }
    }
    (offsets[s].0, offsets[e].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_that_is_not_an_object_is_echoed_cut_short() {
        // Found by tests/properties.rs: a list holding a 4 KB list came back whole in the 400.
        let item = json!(["[MASK] ".repeat(1000), ""]);
        let e = parse_examples(json!([item])).err().unwrap().to_string();
        assert!(
            e.ends_with("... argument needs to be of type (SquadExample, dict)"),
            "{e}"
        );
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn spans_respect_the_band_and_the_mask() {
        let opts = Options {
            top_k: 3,
            max_answer_len: 2,
            handle_impossible_answer: false,
            align_to_words: true,
        };
        let start = [0.0, 0.1, 0.6, 0.3];
        let end = [0.0, 0.2, 0.1, 0.7];
        let allowed = [true, true, true, true];
        let spans = decode_spans(&start, &end, &allowed, opts);
        // (2,3) = 0.42, (3,3) = 0.21, (2,2) = 0.06
        let got: Vec<_> = spans.iter().map(|&(s, e, _)| (s, e)).collect();
        assert_eq!(got, [(2, 3), (3, 3), (2, 2)]);
        let allowed = [true, true, true, false];
        let spans = decode_spans(&start, &end, &allowed, Options { top_k: 1, ..opts });
        assert!(spans.is_empty(), "the best span ends on a masked token");
        // Found by tests/properties.rs: `max_answer_len` 18446744073709551615 overflowed
        // `start + max_answer_len` (a panic with overflow checks, a wrong band without).
        let unbounded = Options {
            max_answer_len: usize::MAX,
            ..opts
        };
        let spans = decode_spans(&start, &end, &[true; 4], unbounded);
        let got: Vec<_> = spans.iter().map(|&(s, e, _)| (s, e)).collect();
        assert_eq!(got, [(2, 3), (3, 3), (1, 3)]);
    }

    #[test]
    fn inputs_are_checked_like_the_argument_handler() {
        let e = parse_examples(json!({"question": "q"})).err().unwrap();
        assert_eq!(e.to_string(), MISSING_KEYS);
        let e = parse_examples(json!({"question": "", "context": "c"}))
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "`question` cannot be empty");
        let (list, ex) = parse_examples(json!([{"question": "q", "context": "c"}])).unwrap();
        assert!(list && ex.len() == 1);
    }
}
