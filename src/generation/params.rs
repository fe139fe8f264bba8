//! Generation parameters as TGI's router treats them: the request's `parameters` taken and typed
//! ([`GenerationParameters::take`]), then checked against each other and the model's defaults
//! ([`GenerationParameters::validate`]) into a [`ValidParameters`] that the pipeline runs as is.
//! The defaults come from `generation_config.json` (or `config.json`) as `transformers` reads
//! them, with the task's `task_specific_params` over them.

use std::path::Path;

use serde_json::{json, Value};

use super::constrained::GrammarSpec;
pub use super::extra_params::PipelineKind;
use super::extra_params::{ExtraParameters, EXTRA_ACCEPTED};
use super::sampling::{EarlyStopping, Sampling};
use crate::error::ServerError;
use crate::tasks::params::{compact, Params};

/// Every parameter the generation pipelines accept (more are a 400 that lists these).
pub const ACCEPTED: &[&str] = &[
    "max_new_tokens",
    "max_length",
    "min_new_tokens",
    "min_length",
    "no_repeat_ngram_size",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "num_return_sequences",
    "return_full_text",
    "stop",
    "stop_sequences",
    "seed",
    "eos_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "bad_words_ids",
    "truncation",
    "stream",
];

/// Beams one search may keep: each step scores beams x vocabulary continuations (32 x 150k
/// floats is 19 MB), and the beams' caches are held together.
const MAX_BEAMS: usize = 32;

/// `generation_config.json` (or `config.json`) values, `transformers`' defaults where absent.
#[derive(Debug, Clone)]
pub struct Defaults {
    max_length: usize,
    max_new_tokens: Option<usize>,
    min_length: usize,
    no_repeat_ngram_size: usize,
    do_sample: bool,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    eos_token_ids: Vec<u32>,
    num_beams: usize,
    length_penalty: f32,
    early_stopping: EarlyStopping,
    bad_words: Vec<Vec<u32>>,
    forced_bos: Option<u32>,
    forced_eos: Vec<u32>,
}

impl Defaults {
    /// The defaults with `id` as the only end token (a model whose `generate` passes its own,
    /// as BLIP's passes `sep_token_id`).
    pub fn with_end_token(self, id: u32) -> Defaults {
        Defaults {
            eos_token_ids: vec![id],
            ..self
        }
    }

    /// `task_params`: the model's `task_specific_params` entry for the task, which the
    /// pipelines copy over the model's configuration.
    pub fn read(dir: &Path, config: &Value, task_params: Option<&Value>) -> Defaults {
        let mut generation: Value = std::fs::read_to_string(dir.join("generation_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| config.clone());
        if let (Some(Value::Object(over)), Value::Object(base)) = (task_params, &mut generation) {
            for (k, v) in over {
                base.insert(k.clone(), v.clone());
            }
        }
        let usize_of = |key: &str| {
            generation
                .get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
        };
        let f = |key: &str, default: f64| {
            generation
                .get(key)
                .and_then(Value::as_f64)
                .unwrap_or(default)
        };
        Defaults {
            max_length: usize_of("max_length").unwrap_or(20),
            max_new_tokens: usize_of("max_new_tokens"),
            min_length: usize_of("min_length").unwrap_or(0),
            no_repeat_ngram_size: usize_of("no_repeat_ngram_size").unwrap_or(0),
            do_sample: generation
                .get("do_sample")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            temperature: f("temperature", 1.0) as f32,
            top_k: usize_of("top_k").unwrap_or(50),
            top_p: f("top_p", 1.0) as f32,
            repetition_penalty: f("repetition_penalty", 1.0) as f32,
            num_beams: usize_of("num_beams").unwrap_or(1).max(1),
            length_penalty: f("length_penalty", 1.0) as f32,
            early_stopping: generation
                .get("early_stopping")
                .and_then(|v| early_stopping(v).ok())
                .unwrap_or(EarlyStopping::Heuristic),
            eos_token_ids: token_ids(
                generation
                    .get("eos_token_id")
                    .or(config.get("eos_token_id")),
            ),
            bad_words: generation
                .get("bad_words_ids")
                .and_then(|v| bad_words(v).ok())
                .unwrap_or_default(),
            forced_bos: generation
                .get("forced_bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            forced_eos: token_ids(generation.get("forced_eos_token_id")),
        }
    }
}

/// An `early_stopping` value: `true`, `false` or `"never"`.
fn early_stopping(value: &Value) -> Result<EarlyStopping, ()> {
    match value {
        Value::Bool(true) => Ok(EarlyStopping::Always),
        Value::Bool(false) => Ok(EarlyStopping::Heuristic),
        Value::String(s) if s == "never" => Ok(EarlyStopping::Never),
        _ => Err(()),
    }
}

/// A `bad_words_ids` value: a list of token-id lists.
fn bad_words(value: &Value) -> Result<Vec<Vec<u32>>, ()> {
    let lists = value.as_array().ok_or(())?;
    lists
        .iter()
        .map(|list| {
            let ids = list.as_array().filter(|ids| !ids.is_empty()).ok_or(())?;
            ids.iter()
                .map(|id| id.as_u64().map(|v| v as u32).ok_or(()))
                .collect()
        })
        .collect()
}

/// An `eos_token_id` value: one id or a list of them.
fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// A token-id parameter (`eos_token_id`, `forced_eos_token_id`): one id or a list of them.
fn take_token_ids(params: &mut Params, key: &str) -> Result<Option<Vec<u32>>, ServerError> {
    match params.take(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ (Value::Number(_) | Value::Array(_))) => Ok(Some(token_ids(Some(&v)))),
        Some(other) => Err(params.invalid(key, "an integer or a list of integers", &other)),
    }
}

fn take_float(params: &mut Params, key: &str) -> Result<Option<f32>, ServerError> {
    match params.take(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().map(|v| v as f32)),
        Some(other) => Err(params.invalid(key, "a number", &other)),
    }
}

/// `stop` and `stop_sequences`: strings or lists of strings, together; empty ones dropped.
fn take_stop(params: &mut Params) -> Result<Vec<String>, ServerError> {
    let mut stop = Vec::new();
    for key in ["stop", "stop_sequences"] {
        match params.take(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => stop.push(s),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => stop.extend(
                items
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_string)),
            ),
            Some(other) => {
                return Err(params.invalid(key, "a string or a list of strings", &other))
            }
        }
    }
    stop.retain(|s| !s.is_empty());
    Ok(stop)
}

/// The request's parameters, typed, as sent (`None`: not given).
#[derive(Debug, Default)]
pub struct GenerationParameters {
    /// The pipeline's name, for error messages.
    task: &'static str,
    extra: ExtraParameters,
    max_new_tokens: Option<usize>,
    max_length: Option<usize>,
    min_new_tokens: Option<usize>,
    min_length: Option<usize>,
    no_repeat_ngram_size: Option<usize>,
    num_beams: Option<usize>,
    length_penalty: Option<f32>,
    early_stopping: Option<EarlyStopping>,
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    num_return_sequences: Option<usize>,
    return_full_text: Option<bool>,
    stop: Vec<String>,
    seed: Option<u64>,
    eos_token_ids: Option<Vec<u32>>,
    forced_bos: Option<u32>,
    forced_eos: Option<Vec<u32>>,
    bad_words: Option<Vec<Vec<u32>>>,
    truncation: Option<bool>,
    stream: Option<bool>,
}

/// How long each sequence may grow, as `generate` reads its length parameters.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// `max_new_tokens`.
    New(usize),
    /// `max_length`: prompt and new tokens together; a prompt that long already is an error.
    Total(usize),
    /// Neither given and the model keeps `max_length` 20: 20 new tokens, within the positions.
    DefaultNew(usize),
}

/// Parameters checked and completed with the model's defaults: what a request runs with.
#[derive(Debug, Clone)]
pub struct ValidParameters {
    pub length: Length,
    /// `min_length` (counting the prompt, or the decoder's start token) and `min_new_tokens`.
    pub min_length: usize,
    pub min_new_tokens: Option<usize>,
    /// Every sequence's settings but its lengths and seed (see the pipeline's `sampling`).
    pub sampling: Sampling,
    pub num_return_sequences: usize,
    pub return_full_text: bool,
    pub stop: Vec<String>,
    /// An encoder–decoder's input cut to the model's length.
    pub truncation: bool,
    /// Whether `min_length` / `max_new_tokens` were given (a `prefix` lengthens the others).
    pub min_length_given: bool,
    pub max_new_tokens_given: bool,
    /// Token ids instead of text.
    pub return_tensors: bool,
    /// `None`: the pipeline's default (true for text-generation, false for text2text).
    pub clean_up_tokenization_spaces: Option<bool>,
    pub prefix: Option<String>,
    pub add_special_tokens: Option<bool>,
    pub stop_sequence: Option<String>,
    pub stream: bool,
    /// The grammar the text must follow (compiled by the pipeline into `sampling`).
    pub grammar: Option<GrammarSpec>,
}

impl GenerationParameters {
    /// Takes every generation parameter out of `params` with its type checked; `stream` may
    /// also come at the top level of the body, as TGI takes it. Unknown names are a 400.
    pub fn take(
        mut params: Params,
        kind: PipelineKind,
        stream_top_level: Option<Value>,
    ) -> Result<Self, ServerError> {
        let p = &mut params;
        let early_stopping = match p.take("early_stopping") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                early_stopping(&v)
                    .map_err(|_| p.invalid("early_stopping", "true, false or \"never\"", &v))?,
            ),
        };
        let forced_bos = match p.take("forced_bos_token_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| p.invalid("forced_bos_token_id", "a token id", &v))?
                    as u32,
            ),
        };
        let bad_words = match p.take("bad_words_ids") {
            None | Some(Value::Null) => None,
            Some(v) => Some(bad_words(&v).map_err(|_| {
                p.invalid(
                    "bad_words_ids",
                    "a list of non-empty lists of token ids",
                    &v,
                )
            })?),
        };
        let extra = ExtraParameters::take(p, kind)?;
        let taken = GenerationParameters {
            task: p.task(),
            extra,
            max_new_tokens: p.take_usize("max_new_tokens")?,
            max_length: p.take_usize("max_length")?,
            min_new_tokens: p.take_usize("min_new_tokens")?,
            min_length: p.take_usize("min_length")?,
            no_repeat_ngram_size: p.take_usize("no_repeat_ngram_size")?,
            num_beams: p.take_usize("num_beams")?,
            length_penalty: take_float(p, "length_penalty")?,
            early_stopping,
            do_sample: p.take_bool("do_sample")?,
            temperature: take_float(p, "temperature")?,
            top_k: p.take_usize("top_k")?,
            top_p: take_float(p, "top_p")?,
            repetition_penalty: take_float(p, "repetition_penalty")?,
            num_return_sequences: p.take_usize("num_return_sequences")?,
            // (the encoder–decoder pipelines have no return_full_text: there it is unknown)
            return_full_text: match kind {
                PipelineKind::Causal => p.take_bool("return_full_text")?,
                PipelineKind::Text2Text => Some(false),
            },
            stop: take_stop(p)?,
            seed: p.take_usize("seed")?.map(|s| s as u64),
            eos_token_ids: take_token_ids(p, "eos_token_id")?,
            forced_bos,
            forced_eos: take_token_ids(p, "forced_eos_token_id")?,
            bad_words,
            truncation: take_truncation(p, kind)?,
            stream: match p.take("stream").or(stream_top_level) {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(b),
                Some(other) => return Err(p.invalid("stream", "true or false", &other)),
            },
        };
        let accepted: Vec<&str> = ACCEPTED
            .iter()
            .chain(EXTRA_ACCEPTED)
            .copied()
            .filter(|&k| match kind {
                PipelineKind::Causal => k != "truncation",
                PipelineKind::Text2Text => k != "return_full_text",
            })
            .collect();
        params.finish(&accepted)?;
        Ok(taken)
    }

    /// transformers' mutual exclusions of the output's form (text-generation; text2text
    /// ignores `return_text`), and no token ids in a stream.
    fn check_output_form(&self, stream: bool) -> Result<(), ServerError> {
        let x = &self.extra;
        // transformers' mutual exclusions (text-generation; text2text ignores return_text).
        if self.task == "text-generation" {
            let exclusive = match (
                self.return_full_text.is_some(),
                x.return_text,
                x.return_tensors.is_some(),
            ) {
                (true, true, _) => {
                    Some("`return_text` is mutually exclusive with `return_full_text`")
                }
                (true, false, true) => {
                    Some("`return_full_text` is mutually exclusive with `return_tensors`")
                }
                (false, true, true) => {
                    Some("`return_text` is mutually exclusive with `return_tensors`")
                }
                _ => None,
            };
            if let Some(message) = exclusive {
                return Err(ServerError::bad_request(message));
            }
        }
        if stream && x.return_tensors == Some(true) {
            return Err(ServerError::bad_request(
                "streaming sends text: `return_tensors` cannot be streamed",
            ));
        }
        Ok(())
    }

    /// How long sequences may grow, from `max_new_tokens` / `max_length` and the defaults.
    fn length(&self, d: &Defaults) -> Result<Length, ServerError> {
        Ok(
            match (self.max_new_tokens.or(d.max_new_tokens), self.max_length) {
                (Some(0), _) => {
                    return Err(ServerError::bad_request(
                        "max_new_tokens must be at least 1",
                    ))
                }
                (Some(n), _) => Length::New(n),
                (None, Some(total)) => Length::Total(total),
                (None, None) if d.max_length == 20 => Length::DefaultNew(20),
                (None, None) => Length::Total(d.max_length),
            },
        )
    }

    /// Applies the model's defaults and checks the values against each other.
    pub fn validate(self, d: &Defaults, as_list: bool) -> Result<ValidParameters, ServerError> {
        let invalid = |key: &str, expected: &str, got: Value| {
            ServerError::bad_request(format!(
                "parameter `{key}` of {} must be {expected}, got {}",
                self.task,
                compact(&got)
            ))
        };
        let stream = self.stream.unwrap_or(false);
        self.check_output_form(stream)?;
        let length = self.length(d)?;
        let num_beams = match self.num_beams {
            // The model's default beams (T5's summarization) would make streaming impossible:
            // a streamed request decodes one sequence unless it asks for beams.
            None if stream => 1,
            asked => asked.unwrap_or(d.num_beams),
        };
        if num_beams == 0 || num_beams > MAX_BEAMS {
            return Err(invalid(
                "num_beams",
                &format!("an integer from 1 to {MAX_BEAMS}"),
                json!(num_beams),
            ));
        }
        let do_sample = self.do_sample.unwrap_or(d.do_sample);
        let temperature = self.temperature.unwrap_or(d.temperature);
        if do_sample && temperature <= 0.0 {
            return Err(invalid(
                "temperature",
                "a strictly positive number when sampling",
                json!(temperature),
            ));
        }
        let top_k = self.top_k.unwrap_or(d.top_k);
        let top_p = self.top_p.unwrap_or(d.top_p);
        if !(0.0..=1.0).contains(&top_p) {
            return Err(invalid("top_p", "a number between 0 and 1", json!(top_p)));
        }
        let repetition_penalty = self.repetition_penalty.unwrap_or(d.repetition_penalty);
        if repetition_penalty <= 0.0 {
            return Err(invalid(
                "repetition_penalty",
                "a strictly positive number",
                json!(repetition_penalty),
            ));
        }
        let num_return_sequences = self.num_return_sequences.unwrap_or(1);
        if num_return_sequences == 0 {
            return Err(invalid(
                "num_return_sequences",
                "at least 1",
                json!(num_return_sequences),
            ));
        }
        if num_return_sequences > 1 && !do_sample && num_beams == 1 {
            return Err(ServerError::bad_request(
                "Greedy methods without beam search do not support `num_return_sequences` different than 1 (got it with do_sample=false)",
            ));
        }
        if num_beams > 1 && num_return_sequences > num_beams {
            return Err(ServerError::bad_request(format!(
                "`num_return_sequences` ({num_return_sequences}) has to be smaller or equal to `num_beams` ({num_beams})."
            )));
        }
        if stream && (as_list || num_return_sequences > 1 || num_beams > 1) {
            return Err(ServerError::bad_request(
                "streaming takes one prompt (a string), num_return_sequences 1 and num_beams 1 (beam search knows its answer only at the end)",
            ));
        }
        let eos_token_ids = self
            .eos_token_ids
            .unwrap_or_else(|| d.eos_token_ids.clone());
        let mut bad_words = self.bad_words.unwrap_or_else(|| d.bad_words.clone());
        // As transformers: an end-of-sequence token alone is never a bad word.
        bad_words.retain(|w| !(w.len() == 1 && eos_token_ids.contains(&w[0])));
        Ok(ValidParameters {
            length,
            min_length: self.min_length.unwrap_or(d.min_length),
            min_length_given: self.min_length.is_some(),
            max_new_tokens_given: self.max_new_tokens.or(d.max_new_tokens).is_some(),
            min_new_tokens: self.min_new_tokens,
            sampling: Sampling {
                max_new_tokens: 0, // per prompt: see the pipeline's `sampling`
                min_new_tokens: 0,
                no_repeat_ngram_size: self.no_repeat_ngram_size.unwrap_or(d.no_repeat_ngram_size),
                do_sample,
                temperature,
                top_k: (do_sample && top_k > 0).then_some(top_k),
                top_p,
                repetition_penalty,
                seed: self.seed,
                eos_token_ids,
                bad_words,
                forced_bos: self.forced_bos.or(d.forced_bos),
                forced_eos: self.forced_eos.unwrap_or_else(|| d.forced_eos.clone()),
                num_beams,
                // Beam-search settings: without beams they change nothing, in transformers too.
                length_penalty: self.length_penalty.unwrap_or(d.length_penalty),
                early_stopping: self.early_stopping.unwrap_or(d.early_stopping),
                processors: self.extra.processors.clone(),
                max_time: self.extra.max_time,
                logprobs: None,
                grammar: None,
                prompt_logprobs: false,
                untempered_logprob: false,
            },
            return_tensors: self.extra.return_tensors.unwrap_or(false),
            clean_up_tokenization_spaces: self.extra.clean_up_tokenization_spaces,
            prefix: self.extra.prefix.clone(),
            add_special_tokens: self.extra.add_special_tokens,
            stop_sequence: self.extra.stop_sequence.clone(),
            grammar: self.extra.grammar.clone(),
            num_return_sequences,
            return_full_text: self.return_full_text.unwrap_or(true),
            stop: self.stop,
            truncation: self.truncation.unwrap_or(false),
            stream,
        })
    }
}

/// The encoder–decoder pipelines' one tokenizer kwarg; text-generation never cuts the prompt.
fn take_truncation(params: &mut Params, kind: PipelineKind) -> Result<Option<bool>, ServerError> {
    match (kind, params.take("truncation")) {
        (_, None | Some(Value::Null)) => Ok(None),
        (PipelineKind::Text2Text, Some(Value::Bool(b))) => Ok(Some(b)),
        (PipelineKind::Text2Text, Some(other)) => {
            Err(params.invalid("truncation", "true or false", &other))
        }
        (PipelineKind::Causal, Some(_)) => Err(ServerError::bad_request(
            "truncation is not a text-generation parameter: the prompt is never cut",
        )),
    }
}
