//! text-generation: `transformers`' TextGenerationPipeline as the DLC calls it
//! (`pipeline(inputs, **parameters)`), on the continuous-batching [`Generator`].
//!
//! Inputs: a string (→ `[{"generated_text"}]`, one per `num_return_sequences`), a chat (a list
//! of `{"role", "content"}` messages, rendered with the model's chat template; the answer is the
//! messages plus the assistant's), or a list of either (→ a list of such lists). Defaults come from `generation_config.json` as
//! `transformers` reads them (`max_length` 20 counts the prompt; `top_k` 50 when sampling). The
//! text is decoded as the pipeline does it: the whole sequence without special tokens, minus the
//! decoded prompt's length in characters, after the prompt when `return_full_text`.
//! text2text-generation, summarization and translation (encoder–decoder models) run through the
//! same code as the Text2TextGenerationPipeline family: the input after the task's `prefix`
//! (T5's `task_specific_params`, whose generation defaults apply too), lengths counting the
//! decoder's start token, the generated tokens decoded alone under `generated_text` /
//! `summary_text` / `translation_text`, and a flat list for a list of inputs.
//! Beyond the DLC: `stop` / `stop_sequences` (generation ends after the first stop string, which
//! stays in the text, as in TGI), `seed`, and `"stream": true` (server-sent events, TGI's format).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::chat::{is_chat, ChatTemplate};
use super::params::{json_type, Params};
use super::tokenize::{TextEncoder, Truncation};
use crate::batching::beam::EarlyStopping;
use crate::batching::generation::{Event, FinishReason, Generator, GeneratorConfig, Sampling};
use crate::device::Placement;
use crate::error::ServerError;
use crate::models::bart::BartLm;
use crate::models::causal::CausalLm;
use crate::models::t5::T5Lm;
use crate::source::ModelFiles;
use crate::task::Task;

const ACCEPTED: &[&str] = &[
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
    "stream",
];

/// Beams one search may keep: each step scores beams x vocabulary continuations (32 x 150k
/// floats is 19 MB), and the beams' caches are held together.
const MAX_BEAMS: usize = 32;

/// Which pipeline family a model serves.
#[derive(Debug, Clone)]
enum Flavor {
    /// text-generation (decoder-only): the answer continues the prompt.
    Causal,
    /// text2text-generation / summarization / translation (encoder–decoder).
    Text2Text {
        /// `generated_text`, `summary_text` or `translation_text`.
        key: &'static str,
        /// Put in front of every input (T5's task prefix).
        prefix: String,
    },
}

/// `generation_config.json` (or `config.json`) values, `transformers`' defaults where absent.
#[derive(Debug, Clone)]
struct Defaults {
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
    /// `task_params`: the model's `task_specific_params` entry for the task, which the
    /// pipelines copy over the model's configuration.
    fn read(dir: &Path, config: &Value, task_params: Option<&Value>) -> Defaults {
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
            max_length: generation
                .get("max_length")
                .and_then(Value::as_u64)
                .unwrap_or(20) as usize,
            max_new_tokens: usize_of("max_new_tokens"),
            min_length: usize_of("min_length").unwrap_or(0),
            no_repeat_ngram_size: usize_of("no_repeat_ngram_size").unwrap_or(0),
            do_sample: generation
                .get("do_sample")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            temperature: f("temperature", 1.0) as f32,
            top_k: generation
                .get("top_k")
                .and_then(Value::as_u64)
                .unwrap_or(50) as usize,
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

/// The model's `task_specific_params` entry the pipeline applies: the task's own (`summarization`,
/// `translation_en_to_de`), or for plain `translation` the first `translation_*` one.
fn task_specific_params<'a>(
    config: &'a Value,
    task: Task,
    hf_task: Option<&str>,
) -> Option<&'a Value> {
    let params = config.get("task_specific_params")?.as_object()?;
    let name = hf_task.map(str::trim).unwrap_or(task.name());
    params.get(name).or_else(|| match task {
        Task::Translation => params
            .iter()
            .find(|(k, _)| k.starts_with("translation"))
            .map(|(_, v)| v),
        _ => None,
    })
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

pub struct TextGeneration {
    task: &'static str,
    flavor: Flavor,
    /// The model's tokenizer (its own padding and truncation off); for an encoder–decoder's
    /// input also `truncation` and the 400 for inputs past the model's positions.
    tokens: TextEncoder,
    chat: Option<ChatTemplate>,
    generator: Generator,
    /// Positions a sequence may fill (prompt and new tokens; unbounded for T5's relative
    /// positions).
    max_positions: usize,
    defaults: Defaults,
}

/// One prompt's generation request, ready to run.
pub struct Prompt {
    text: String,
    ids: Vec<u32>,
    /// Characters of the decoded prompt (computed once: every token's text needs it).
    decoded_chars: usize,
    /// The chat the prompt was rendered from.
    messages: Option<Value>,
}

/// How long each sequence may grow, as `generate` reads its length parameters.
#[derive(Debug, Clone, Copy)]
enum Length {
    /// `max_new_tokens`.
    New(usize),
    /// `max_length`: prompt and new tokens together; a prompt that long already is an error.
    Total(usize),
    /// Neither given and the model keeps `max_length` 20: 20 new tokens, within the positions.
    DefaultNew(usize),
}

pub struct GenerationRequest {
    prompts: Vec<Prompt>,
    length: Length,
    /// `min_length` (counting the prompt, or the decoder's start token) and `min_new_tokens`.
    min_length: usize,
    min_new_tokens: Option<usize>,
    as_list: bool,
    sampling: Sampling,
    num_return_sequences: usize,
    return_full_text: bool,
    stop: Vec<String>,
    pub stream: bool,
}

impl TextGeneration {
    pub fn load(
        files: &ModelFiles,
        config: &Value,
        placement: &Placement,
        generator: GeneratorConfig,
        task: Task,
        hf_task: Option<&str>,
    ) -> Result<Self> {
        let (flavor, task_params, model_max_positions, generator) = match task {
            Task::TextGeneration => {
                let model = CausalLm::load(files, config, placement)?;
                let positions = model.max_positions();
                (
                    Flavor::Causal,
                    None,
                    positions,
                    Generator::start(Arc::new(model), generator)?,
                )
            }
            _ => {
                let (positions, generator) = match config.get("model_type").and_then(Value::as_str)
                {
                    Some("bart" | "marian") => {
                        let model = BartLm::load(files, config, placement)?;
                        (
                            model.max_positions(),
                            Generator::start(Arc::new(model), generator)?,
                        )
                    }
                    // (relative positions: no length limit of the network's own)
                    Some("t5") => {
                        let model = T5Lm::load(files, config, placement)?;
                        (usize::MAX, Generator::start(Arc::new(model), generator)?)
                    }
                    other => anyhow::bail!(
                        "model_type `{}` is not supported for {}; supported: t5 (T5, Flan-T5), bart, marian",
                        other.unwrap_or(""),
                        task.name()
                    ),
                };
                let task_params = task_specific_params(config, task, hf_task);
                let prefix = task_params
                    .and_then(|p| p.get("prefix"))
                    .or_else(|| config.get("prefix"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let key = match task {
                    Task::Summarization => "summary_text",
                    Task::Translation => "translation_text",
                    _ => "generated_text",
                };
                let flavor = Flavor::Text2Text { key, prefix };
                (flavor, task_params.cloned(), positions, generator)
            }
        };
        let tokenizer_config: Value = files
            .optional("tokenizer_config.json")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        Ok(TextGeneration {
            tokens: TextEncoder::load(&files.tokenizer, model_max_positions, false, false)?,
            task: task.name(),
            flavor,
            chat: ChatTemplate::load(&files.dir, &tokenizer_config)?,
            defaults: Defaults::read(&files.dir, config, task_params.as_ref()),
            max_positions: model_max_positions,
            generator,
        })
    }

    /// The text of `ids`, special tokens skipped, as the pipelines decode.
    fn decode(&self, ids: &[u32]) -> Result<String, ServerError> {
        self.tokens.decode(ids, true)
    }

    /// Parses `inputs` and `parameters` (and a top-level `stream`, as TGI accepts it).
    pub fn prepare(
        &self,
        inputs: Value,
        parameters: Option<Value>,
        stream_top_level: Option<Value>,
    ) -> Result<GenerationRequest, ServerError> {
        let causal = matches!(self.flavor, Flavor::Causal);
        // Chats are text-generation's (the encoder–decoder pipelines take text only).
        let chat = |v: &Value| causal && is_chat(v);
        let (as_list, inputs) = match inputs {
            Value::String(_) => (false, vec![inputs]),
            messages if chat(&messages) => (false, vec![messages]),
            Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_string() || chat(i)) =>
            {
                (true, items)
            }
            other => {
                let forms = if causal {
                    "a string, a chat ([{\"role\", \"content\"}, ...]) or a non-empty list of either"
                } else {
                    "a string or a non-empty list of strings"
                };
                return Err(ServerError::bad_request(format!(
                    "{} takes `inputs` as {forms}, got {}",
                    self.task,
                    json_type(&other)
                )));
            }
        };
        let mut params = Params::new(parameters, self.task)?;
        let d = &self.defaults;
        let float = |params: &mut Params, key: &str| -> Result<Option<f32>, ServerError> {
            match params.take(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64().map(|v| v as f32)),
                Some(other) => Err(params.invalid(key, "a number", &other)),
            }
        };
        let max_new_tokens = params.take_usize("max_new_tokens")?;
        let max_length = params.take_usize("max_length")?;
        let min_new_tokens = params.take_usize("min_new_tokens")?;
        let min_length = params.take_usize("min_length")?.unwrap_or(d.min_length);
        let no_repeat_ngram_size = params
            .take_usize("no_repeat_ngram_size")?
            .unwrap_or(d.no_repeat_ngram_size);
        let asked_beams = params.take_usize("num_beams")?;
        let mut num_beams = asked_beams.unwrap_or(d.num_beams);
        if num_beams == 0 || num_beams > MAX_BEAMS {
            return Err(params.invalid(
                "num_beams",
                &format!("an integer from 1 to {MAX_BEAMS}"),
                &json!(num_beams),
            ));
        }
        // Beam-search settings: without beams they change nothing, in transformers too.
        let length_penalty = float(&mut params, "length_penalty")?.unwrap_or(d.length_penalty);
        let early_stopping = match params.take("early_stopping") {
            None | Some(Value::Null) => d.early_stopping,
            Some(v) => early_stopping(&v)
                .map_err(|_| params.invalid("early_stopping", "true, false or \"never\"", &v))?,
        };
        let do_sample = params.take_bool("do_sample")?.unwrap_or(d.do_sample);
        let temperature = float(&mut params, "temperature")?.unwrap_or(d.temperature);
        if do_sample && temperature <= 0.0 {
            return Err(params.invalid(
                "temperature",
                "a strictly positive number when sampling",
                &json!(temperature),
            ));
        }
        let top_k = params.take_usize("top_k")?.unwrap_or(d.top_k);
        let top_p = float(&mut params, "top_p")?.unwrap_or(d.top_p);
        if !(0.0..=1.0).contains(&top_p) {
            return Err(params.invalid("top_p", "a number between 0 and 1", &json!(top_p)));
        }
        let repetition_penalty =
            float(&mut params, "repetition_penalty")?.unwrap_or(d.repetition_penalty);
        if repetition_penalty <= 0.0 {
            return Err(params.invalid(
                "repetition_penalty",
                "a strictly positive number",
                &json!(repetition_penalty),
            ));
        }
        let num_return_sequences = params
            .take_usize("num_return_sequences")?
            .unwrap_or(1)
            .max(1);
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
        // (the encoder–decoder pipelines have no return_full_text: there it is an unknown parameter)
        let return_full_text = if causal {
            params.take_bool("return_full_text")?.unwrap_or(true)
        } else {
            false
        };
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
        let seed = params.take_usize("seed")?.map(|s| s as u64);
        let eos_token_ids =
            take_token_ids(&mut params, "eos_token_id")?.unwrap_or_else(|| d.eos_token_ids.clone());
        let forced_bos = match params.take("forced_bos_token_id") {
            None | Some(Value::Null) => d.forced_bos,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| params.invalid("forced_bos_token_id", "a token id", &v))?
                    as u32,
            ),
        };
        let forced_eos = take_token_ids(&mut params, "forced_eos_token_id")?
            .unwrap_or_else(|| d.forced_eos.clone());
        let mut bad_words_ids = match params.take("bad_words_ids") {
            None | Some(Value::Null) => d.bad_words.clone(),
            Some(v) => bad_words(&v).map_err(|_| {
                params.invalid(
                    "bad_words_ids",
                    "a list of non-empty lists of token ids",
                    &v,
                )
            })?,
        };
        // As transformers: an end-of-sequence token alone is never a bad word.
        bad_words_ids.retain(|w| !(w.len() == 1 && eos_token_ids.contains(&w[0])));
        // The encoder–decoder pipelines' one tokenizer kwarg.
        let truncation = match (&self.flavor, params.take("truncation")) {
            (_, None | Some(Value::Null)) => false,
            (Flavor::Text2Text { .. }, Some(Value::Bool(b))) => b,
            (Flavor::Text2Text { .. }, Some(other)) => {
                return Err(params.invalid("truncation", "true or false", &other))
            }
            (Flavor::Causal, Some(_)) => {
                return Err(ServerError::bad_request(
                    "truncation is not a text-generation parameter: the prompt is never cut",
                ))
            }
        };
        let stream = match params.take("stream").or(stream_top_level) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(other) => return Err(params.invalid("stream", "true or false", &other)),
        };
        params.finish(ACCEPTED)?;
        if stream && asked_beams.is_none() {
            // The model's default beams (T5's summarization) would make streaming impossible:
            // a streamed request decodes one sequence unless it asks for beams.
            num_beams = 1;
        }
        if stream && (as_list || num_return_sequences > 1 || num_beams > 1) {
            return Err(ServerError::bad_request(
                "streaming takes one prompt (a string), num_return_sequences 1 and num_beams 1 (beam search knows its answer only at the end)",
            ));
        }

        let mut prompts = Vec::with_capacity(inputs.len());
        for input in inputs {
            // A chat's rendered template already holds its special tokens.
            let (text, messages) = match input {
                Value::String(text) => match &self.flavor {
                    Flavor::Text2Text { prefix, .. } => (format!("{prefix}{text}"), None),
                    Flavor::Causal => (text, None),
                },
                messages => {
                    let chat = self.chat.as_ref().ok_or_else(|| {
                        ServerError::bad_request(
                            "this model has no chat template: send the prompt as a string",
                        )
                    })?;
                    (chat.render(&messages)?, Some(messages))
                }
            };
            let ids = match &self.flavor {
                // (an encoder–decoder's input: a 400 past the model's positions, unless truncated)
                Flavor::Text2Text { .. } => {
                    self.tokens
                        .encode(&text, None, &Truncation::to_model_length(truncation))?
                        .ids
                }
                Flavor::Causal => self
                    .tokens
                    .tokenizer()
                    .encode(text.as_str(), messages.is_none())
                    .map_err(|e| {
                        ServerError::bad_request(format!("could not tokenize the prompt: {e}"))
                    })?
                    .get_ids()
                    .to_vec(),
            };
            // The pipeline cuts the new text after the decoded prompt's length in characters.
            let decoded_chars = self.decode(&ids)?.chars().count();
            prompts.push(Prompt {
                text,
                ids,
                decoded_chars,
                messages,
            });
        }
        let length = match (max_new_tokens.or(d.max_new_tokens), max_length) {
            (Some(0), _) => {
                return Err(ServerError::bad_request(
                    "max_new_tokens must be at least 1",
                ))
            }
            (Some(n), _) => Length::New(n),
            (None, Some(total)) => Length::Total(total),
            (None, None) if d.max_length == 20 => Length::DefaultNew(20),
            (None, None) => Length::Total(d.max_length),
        };
        let request = GenerationRequest {
            prompts,
            length,
            as_list,
            min_length,
            min_new_tokens,
            sampling: Sampling {
                max_new_tokens: 0, // per prompt: see `sampling`
                min_new_tokens: 0,
                no_repeat_ngram_size,
                do_sample,
                temperature,
                top_k: (do_sample && top_k > 0).then_some(top_k),
                top_p,
                repetition_penalty,
                seed,
                eos_token_ids,
                bad_words: bad_words_ids,
                forced_bos,
                forced_eos,
                num_beams,
                length_penalty,
                early_stopping,
            },
            num_return_sequences,
            return_full_text,
            stop,
            stream,
        };
        for prompt in &request.prompts {
            self.max_new_tokens(&request, prompt)?;
        }
        Ok(request)
    }

    /// The length `generate`'s length parameters count for this prompt: the prompt for a
    /// decoder-only model, the start token for an encoder–decoder one.
    fn decoder_length(&self, prompt: &Prompt) -> usize {
        match self.flavor {
            Flavor::Causal => prompt.ids.len(),
            Flavor::Text2Text { .. } => 1,
        }
    }

    /// New tokens this prompt may get under the request's length parameters.
    fn max_new_tokens(
        &self,
        request: &GenerationRequest,
        prompt: &Prompt,
    ) -> Result<usize, ServerError> {
        let len = self.decoder_length(prompt);
        match request.length {
            Length::New(n) => Ok(n),
            Length::Total(total) if len >= total => Err(ServerError::bad_request(format!(
                "Input length of input_ids is {len}, but `max_length` is set to {total}. Increase `max_length` or, better yet, set `max_new_tokens`."
            ))),
            Length::Total(total) => Ok(total - len),
            Length::DefaultNew(n) => Ok(n.min(self.max_positions.saturating_sub(len)).max(1)),
        }
    }

    /// The sampling settings of one of the request's sequences.
    fn sampling(
        &self,
        request: &GenerationRequest,
        prompt: &Prompt,
        index: usize,
    ) -> Result<Sampling, ServerError> {
        let mut sampling = request.sampling.clone();
        sampling.max_new_tokens = self.max_new_tokens(request, prompt)?;
        let len = self.decoder_length(prompt);
        if len.saturating_add(sampling.max_new_tokens) > self.max_positions {
            return Err(ServerError::bad_request(format!(
                "the prompt ({len} tokens) plus max_new_tokens ({}) is longer than the model's {} positions",
                sampling.max_new_tokens, self.max_positions
            )));
        }
        sampling.min_new_tokens = request.min_new_tokens.unwrap_or_else(|| {
            request
                .min_length
                .saturating_sub(self.decoder_length(prompt))
        });
        // Distinct draws for the return sequences of one seeded request.
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(index as u64));
        Ok(sampling)
    }

    /// Runs every sequence of the request (all submitted first, so they share steps) and
    /// shapes the pipeline's JSON. A beam search is one job per prompt answering with its
    /// `num_return_sequences` best hypotheses; otherwise each return sequence is its own job.
    pub async fn run(
        &self,
        request: GenerationRequest,
        deadline: Duration,
    ) -> Result<Value, ServerError> {
        let started = Instant::now();
        let jobs_per_prompt = if request.sampling.num_beams > 1 {
            1
        } else {
            request.num_return_sequences
        };
        let mut receivers = Vec::new();
        for prompt in &request.prompts {
            for n in 0..jobs_per_prompt {
                let sampling = self.sampling(&request, prompt, n)?;
                receivers.push(self.generator.submit(prompt.ids.clone(), sampling)?);
            }
        }
        let mut results = Vec::with_capacity(request.prompts.len());
        let mut receivers = receivers.into_iter();
        for prompt in &request.prompts {
            let mut sequences = Vec::new();
            for _ in 0..jobs_per_prompt {
                let receiver = receivers.next().expect("one receiver per job");
                let remaining = deadline.saturating_sub(started.elapsed());
                let generated =
                    tokio::time::timeout(remaining, self.collect(receiver, prompt, &request.stop))
                        .await
                        .map_err(|_| ServerError::Timeout(deadline.as_secs()))??;
                sequences.extend(generated);
            }
            sequences.truncate(request.num_return_sequences);
            let key = match &self.flavor {
                Flavor::Causal => "generated_text",
                Flavor::Text2Text { key, .. } => key,
            };
            let mut answers = Vec::with_capacity(sequences.len());
            for generated in &sequences {
                let mut answer = serde_json::Map::new();
                answer.insert(key.into(), self.text(prompt, generated, &request)?);
                answers.push(Value::Object(answer));
            }
            results.push(Value::Array(answers));
        }
        // The encoder–decoder pipelines flatten a list of inputs with one answer each.
        let flat =
            matches!(self.flavor, Flavor::Text2Text { .. }) && request.num_return_sequences == 1;
        Ok(match (request.as_list, flat) {
            (true, true) => Value::Array(
                results
                    .into_iter()
                    .filter_map(|mut r| r.as_array_mut().and_then(|a| a.pop()))
                    .collect(),
            ),
            (true, false) => Value::Array(results),
            (false, _) => results.pop().unwrap_or(Value::Null),
        })
    }

    /// A job's generated tokens: one sequence's, until it finishes or a stop string appears in
    /// its text, or a beam search's hypotheses, best first.
    async fn collect(
        &self,
        mut receiver: mpsc::UnboundedReceiver<Event>,
        prompt: &Prompt,
        stop: &[String],
    ) -> Result<Vec<Vec<u32>>, ServerError> {
        let mut ids = Vec::new();
        while let Some(event) = receiver.recv().await {
            match event {
                Event::Token { id, finish, .. } => {
                    ids.push(id);
                    if finish.is_some() {
                        return Ok(vec![ids]);
                    }
                    if !stop.is_empty() && find_stop(&self.new_text(prompt, &ids)?, stop).is_some()
                    {
                        // Dropping the receiver takes the sequence out of the batch.
                        return Ok(vec![ids]);
                    }
                }
                Event::Sequences(sequences) => return Ok(sequences),
                Event::Failed(message) => return Err(ServerError::Internal(message)),
            }
        }
        Err(ServerError::Internal(
            "the generation scheduler dropped the sequence".into(),
        ))
    }

    /// `generated_text` as the pipeline makes it, cut after a stop string: the prompt and the
    /// new text, or for a chat its messages and the assistant's answer.
    fn text(
        &self,
        prompt: &Prompt,
        generated: &[u32],
        request: &GenerationRequest,
    ) -> Result<Value, ServerError> {
        let mut new_text = self.new_text(prompt, generated)?;
        if let Some(end) = find_stop(&new_text, &request.stop) {
            new_text.truncate(end);
        }
        Ok(full_text(prompt, new_text, request.return_full_text))
    }

    /// decode(prompt + generated) minus the decoded prompt's length in characters; for an
    /// encoder–decoder model, decode(generated).
    fn new_text(&self, prompt: &Prompt, generated: &[u32]) -> Result<String, ServerError> {
        if let Flavor::Text2Text { .. } = self.flavor {
            return self.decode(generated);
        }
        let all: Vec<u32> = prompt.ids.iter().chain(generated).copied().collect();
        Ok(self
            .decode(&all)?
            .chars()
            .skip(prompt.decoded_chars)
            .collect())
    }

    /// Server-sent events, TGI's format: one `data:` message per token, the last one with
    /// `generated_text` and `details`; an error ends the stream with `{"error": ...}`.
    pub fn stream(
        self: &Arc<Self>,
        request: GenerationRequest,
        deadline: Duration,
    ) -> Result<mpsc::Receiver<String>, ServerError> {
        let sampling = self.sampling(&request, &request.prompts[0], 0)?;
        let prompt = request
            .prompts
            .into_iter()
            .next()
            .expect("one prompt when streaming");
        let mut receiver = self.generator.submit(prompt.ids.clone(), sampling)?;
        let (events, out) = mpsc::channel(64);
        let this = self.clone();
        let stop = request.stop;
        let return_full_text = request.return_full_text;
        let seed = request.sampling.seed;
        tokio::spawn(async move {
            let started = Instant::now();
            let mut ids: Vec<u32> = Vec::new();
            let mut sent_chars = 0;
            let message = |index: usize,
                           id: u32,
                           logprob: f32,
                           text: String,
                           end: Option<(&str, Value)>| {
                let tokenizer = this.tokens.tokenizer();
                let special = tokenizer
                    .id_to_token(id)
                    .is_some_and(|t| tokenizer.get_added_vocabulary().is_special_token(&t));
                let (generated_text, details) = match end {
                    Some((reason, full)) => (
                        full,
                        json!({"finish_reason": reason, "generated_tokens": index + 1, "seed": seed}),
                    ),
                    None => (Value::Null, Value::Null),
                };
                format!(
                    "data:{}\n\n",
                    json!({
                        "index": index,
                        "token": {"id": id, "text": text, "logprob": logprob, "special": special},
                        "generated_text": generated_text,
                        "details": details,
                    })
                )
            };
            loop {
                let remaining = deadline.saturating_sub(started.elapsed());
                let event = match tokio::time::timeout(remaining, receiver.recv()).await {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        Event::Failed("the generation scheduler dropped the sequence".into())
                    }
                    Err(_) => Event::Failed(format!(
                        "the request did not finish within {} s",
                        deadline.as_secs()
                    )),
                };
                let (id, logprob, finish) = match event {
                    Event::Token {
                        id,
                        logprob,
                        finish,
                    } => (id, logprob, finish),
                    // (`prepare` refuses to stream a beam search)
                    Event::Sequences(_) | Event::Failed(_) => {
                        let error = match event {
                            Event::Failed(error) => error,
                            _ => "a beam search's answer cannot be streamed".into(),
                        };
                        let _ = events
                            .send(format!("data:{}\n\n", json!({"error": error})))
                            .await;
                        return;
                    }
                };
                ids.push(id);
                let mut text = this.new_text(&prompt, &ids).unwrap_or_default();
                let stop_end = find_stop(&text, &stop);
                let reason = match stop_end {
                    Some(_) => Some("stop_sequence"),
                    None => finish.map(finish_name),
                };
                let piece = piece(&text, &mut sent_chars, reason.is_some());
                let end = reason.map(|reason| {
                    if let Some(cut) = stop_end {
                        text.truncate(cut);
                    }
                    (reason, full_text(&prompt, text, return_full_text))
                });
                let last = end.is_some();
                let sent = events
                    .send(message(ids.len() - 1, id, logprob, piece, end))
                    .await;
                // A client gone, or the end: dropping `receiver` takes the sequence out of the batch.
                if sent.is_err() || last {
                    return;
                }
            }
        });
        Ok(out)
    }
}

/// What `text` (the new text so far) adds since the last piece; held back while it ends in an
/// incomplete multi-byte character, unless this is the last piece.
fn piece(text: &str, sent_chars: &mut usize, last: bool) -> String {
    if text.ends_with('\u{FFFD}') && !last {
        return String::new();
    }
    let piece: String = text.chars().skip(*sent_chars).collect();
    *sent_chars += piece.chars().count();
    piece
}

/// The pipeline's `generated_text`: the new text alone, after the prompt, or for a chat the
/// messages with the assistant's answer appended.
fn full_text(prompt: &Prompt, new_text: String, return_full_text: bool) -> Value {
    match (&prompt.messages, return_full_text) {
        (_, false) => Value::String(new_text),
        (Some(Value::Array(messages)), true) => {
            let mut messages = messages.clone();
            messages.push(json!({"role": "assistant", "content": new_text}));
            Value::Array(messages)
        }
        _ => Value::String(format!("{}{new_text}", prompt.text)),
    }
}

/// The byte offset just past the first stop string in `text`.
fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter_map(|s| text.find(s.as_str()).map(|i| i + s.len()))
        .min()
}

fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::EosToken => "eos_token",
    }
}
