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

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::constrained::Constraints;
use super::job::Event;
use super::params::{Defaults, GenerationParameters, Length, PipelineKind, ValidParameters};
use super::sampling::Sampling;
use super::scheduler::{Generator, GeneratorConfig};
use crate::device::Placement;
use crate::error::ServerError;
use crate::models::bart::BartLm;
use crate::models::check;
use crate::models::config::ModelConfig;
use crate::models::decoders::CausalLm;
use crate::models::t5::T5Lm;
use crate::models::StepModel;
use crate::registry::{self, Network};
use crate::source::ModelFiles;
use crate::task::Task;
use crate::tasks::chat::ChatTemplate;
use crate::tasks::params::Params;
use crate::tasks::tokenize::{input_limit, TextEncoder};

/// Which pipeline family a model serves.
#[derive(Debug, Clone)]
pub(super) enum Flavor {
    /// text-generation (decoder-only): the answer continues the prompt.
    Causal,
    /// text2text-generation / summarization / translation (encoder–decoder).
    Text2Text {
        /// `generated_text`, `summary_text` or `translation_text`.
        key: &'static str,
        /// Put in front of every input (T5's task prefix).
        prefix: String,
        /// The decoder's start token (first in `return_tensors`' ids).
        decoder_start: u32,
    },
}

/// The model's `task_specific_params` entry the pipeline applies: the task's own (`summarization`,
/// `translation_en_to_de`), or for plain `translation` the first `translation_*` one.
fn task_specific_params<'a>(
    config: &'a ModelConfig,
    task: Task,
    hf_task: Option<&str>,
) -> Option<&'a Value> {
    let params = config.task_specific_params.as_ref()?;
    let name = hf_task.map(str::trim).unwrap_or(task.name());
    params.get(name).or_else(|| match task {
        Task::Translation => params
            .iter()
            .find(|(k, _)| k.starts_with("translation"))
            .map(|(_, v)| v),
        _ => None,
    })
}

pub struct TextGeneration {
    pub(super) task: &'static str,
    pub(super) flavor: Flavor,
    /// The model's tokenizer (its own padding and truncation off); for an encoder–decoder's
    /// input also `truncation` and the 400 for inputs past the model's positions.
    pub(super) tokens: TextEncoder,
    pub(super) chat: Option<ChatTemplate>,
    pub(super) generator: Generator,
    /// Positions a sequence may fill (prompt and new tokens; unbounded for T5's relative
    /// positions).
    pub(super) max_positions: usize,
    pub(super) defaults: Defaults,
    /// The grammar compiler for constrained decoding (built at the first grammar).
    pub(super) constraints: std::sync::OnceLock<Result<Constraints, String>>,
}

/// One prompt's generation request, ready to run.
pub struct Prompt {
    pub(super) text: String,
    pub(super) ids: Vec<u32>,
    /// Characters of the decoded prompt (computed once: every token's text needs it).
    pub(super) decoded_chars: usize,
    /// The chat the prompt was rendered from.
    pub(super) messages: Option<Value>,
    /// `clean_up_tokenization_spaces` for its text (text-generation: true, text2text: false).
    pub(super) cleanup: bool,
}

/// A request's prompts and its validated parameters.
pub struct GenerationRequest {
    pub(super) prompts: Vec<Prompt>,
    /// A list of inputs (answered with a list).
    as_list: bool,
    pub(super) params: ValidParameters,
}

impl GenerationRequest {
    /// Whether the answer is a stream of server-sent events.
    pub fn stream(&self) -> bool {
        self.params.stream
    }

    /// Jobs the request puts in the generator's queue: one per prompt for a beam search,
    /// otherwise one per prompt and return sequence.
    pub fn jobs(&self) -> usize {
        self.prompts.len().saturating_mul(self.jobs_per_prompt())
    }

    fn jobs_per_prompt(&self) -> usize {
        if self.params.sampling.num_beams > 1 {
            1
        } else {
            self.params.num_return_sequences
        }
    }
}

impl TextGeneration {
    pub fn load(
        files: &ModelFiles,
        config: &ModelConfig,
        placement: &Placement,
        generator: GeneratorConfig,
        task: Task,
        hf_task: Option<&str>,
        max_input_tokens: Option<usize>,
    ) -> Result<Self> {
        let mut decoder_start = 0;
        let (positions, generator) = match registry::network(&config.model_type, task)? {
            Network::Decoder(family) => {
                let model = CausalLm::load(files, config, family, placement)?;
                check::probe_steps(&model)?;
                (
                    model.max_positions(),
                    Generator::start(Arc::new(model), generator)?,
                )
            }
            Network::Bart => {
                let model = BartLm::load(files, config, placement)?;
                check::probe_steps(&model)?;
                decoder_start = model.context(&[])[0];
                (
                    model.max_positions(),
                    Generator::start(Arc::new(model), generator)?,
                )
            }
            // (relative positions: no length limit of the network's own)
            Network::T5 => {
                let model = T5Lm::load(files, config, placement)?;
                check::probe_steps(&model)?;
                decoder_start = model.context(&[])[0];
                (usize::MAX, Generator::start(Arc::new(model), generator)?)
            }
            Network::Encoder(family) => {
                anyhow::bail!("{family:?} is an encoder: it cannot generate")
            }
            Network::Vision | Network::Whisper | Network::Wav2Vec2 | Network::Captioner => {
                anyhow::bail!("an image or speech network cannot generate text from text")
            }
        };
        let (flavor, task_params) = match task {
            Task::TextGeneration => (Flavor::Causal, None),
            _ => {
                let task_params = task_specific_params(config, task, hf_task);
                let prefix = task_params
                    .and_then(|p| p.get("prefix"))
                    .and_then(Value::as_str)
                    .or(config.prefix.as_deref())
                    .unwrap_or_default()
                    .to_string();
                let key = match task {
                    Task::Summarization => "summary_text",
                    Task::Translation => "translation_text",
                    _ => "generated_text",
                };
                let flavor = Flavor::Text2Text {
                    key,
                    prefix,
                    decoder_start,
                };
                (flavor, task_params.cloned())
            }
        };
        let model_max_positions = positions;
        let tokenizer_config: Value = files
            .optional("tokenizer_config.json")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        Ok(TextGeneration {
            // (an encoder–decoder's input is bounded by `MAX_INPUT_TOKENS` too; a decoder-only
            // prompt by the positions, checked with its new tokens)
            tokens: TextEncoder::load(
                &files.tokenizer,
                input_limit(
                    Some(model_max_positions).filter(|&p| p != usize::MAX),
                    max_input_tokens,
                ),
                false,
                false,
            )?,
            task: task.name(),
            flavor,
            chat: ChatTemplate::load(&files.dir, &tokenizer_config)?,
            defaults: Defaults::read(&files.dir, config.raw(), task_params.as_ref()),
            max_positions: model_max_positions,
            generator,
            constraints: std::sync::OnceLock::new(),
        })
    }

    /// Compiles the request's grammar (if any) into its sampling settings.
    pub(super) fn constrain(
        &self,
        mut params: ValidParameters,
    ) -> Result<ValidParameters, ServerError> {
        let Some(spec) = &params.grammar else {
            return Ok(params);
        };
        if !self.is_text_generation() {
            return Err(ServerError::bad_request(
                "constrained decoding (`grammar`, `response_format`) is for text-generation models",
            ));
        }
        if params.sampling.num_beams > 1 {
            return Err(ServerError::bad_request(
                "a grammar cannot be used with beam search (num_beams > 1)",
            ));
        }
        let constraints = self
            .constraints
            .get_or_init(|| {
                Constraints::new(self.tokens.tokenizer(), &params.sampling.eos_token_ids)
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| {
                ServerError::bad_request(format!(
                    "constrained decoding is not available for this model's tokenizer: {e}"
                ))
            })?;
        params.sampling.grammar = Some(constraints.compile(spec)?);
        Ok(params)
    }

    /// The text of `ids`, special tokens skipped, as the pipelines decode (`cleanup`: their
    /// `clean_up_tokenization_spaces`).
    pub(super) fn decode(&self, ids: &[u32], cleanup: bool) -> Result<String, ServerError> {
        self.tokens.decode_with(ids, true, cleanup)
    }

    /// Parses `inputs` and `parameters` (and a top-level `stream`, as TGI accepts it) into a
    /// request whose every sequence is known to fit the model.
    pub fn prepare(
        &self,
        inputs: Value,
        parameters: Option<Value>,
        stream_top_level: Option<Value>,
    ) -> Result<GenerationRequest, ServerError> {
        let (as_list, inputs) = self.inputs(inputs)?;
        let kind = match self.flavor {
            Flavor::Causal => PipelineKind::Causal,
            Flavor::Text2Text { .. } => PipelineKind::Text2Text,
        };
        let params = GenerationParameters::take(
            Params::new(parameters, self.task)?,
            kind,
            stream_top_level,
        )?
        .validate(&self.defaults, as_list)?;
        let params = self.constrain(self.apply_prompt_parameters(params)?)?;
        let prompts = inputs
            .into_iter()
            .map(|input| self.prompt(input, &params))
            .collect::<Result<Vec<_>, _>>()?;
        let request = GenerationRequest {
            prompts,
            as_list,
            params,
        };
        for prompt in &request.prompts {
            self.max_new_tokens(&request.params, prompt)?;
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
        params: &ValidParameters,
        prompt: &Prompt,
    ) -> Result<usize, ServerError> {
        new_tokens(params, self.decoder_length(prompt), self.max_positions)
    }

    /// The sampling settings of one of the request's sequences.
    pub(super) fn sampling(
        &self,
        params: &ValidParameters,
        prompt: &Prompt,
        index: usize,
    ) -> Result<Sampling, ServerError> {
        sequence_sampling(
            params,
            self.decoder_length(prompt),
            self.max_positions,
            index,
        )
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
        let jobs_per_prompt = request.jobs_per_prompt();
        let jobs = request.jobs();
        if jobs > self.generator.capacity() {
            // More than can ever wait at once: retrying would not help (a 503 would say it does).
            return Err(ServerError::bad_request(format!(
                "the request holds {jobs} sequences (prompts x num_return_sequences); at most {} can wait to be generated at once (MAX_QUEUE): send fewer per request",
                self.generator.capacity()
            )));
        }
        let mut receivers = Vec::new();
        for prompt in &request.prompts {
            for n in 0..jobs_per_prompt {
                let sampling = self.sampling(&request.params, prompt, n)?;
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
                let generated = tokio::time::timeout(
                    remaining,
                    self.collect(receiver, prompt, &request.params.stop),
                )
                .await
                .map_err(|_| ServerError::Timeout(deadline.as_secs()))??;
                sequences.extend(generated);
            }
            sequences.truncate(request.params.num_return_sequences);
            let key = match &self.flavor {
                Flavor::Causal => "generated_text",
                Flavor::Text2Text { key, .. } => key,
            };
            let mut answers = Vec::with_capacity(sequences.len());
            for generated in &sequences {
                let mut answer = serde_json::Map::new();
                if request.params.return_tensors {
                    // `<name>_token_ids`: the whole sequence, as the pipelines return it.
                    let (ids, start): (&[u32], &[u32]) = match &self.flavor {
                        Flavor::Causal => (&prompt.ids, &[]),
                        Flavor::Text2Text { decoder_start, .. } => {
                            (&[], std::slice::from_ref(decoder_start))
                        }
                    };
                    let all: Vec<u32> = start.iter().chain(ids).chain(generated).copied().collect();
                    answer.insert(key.replace("_text", "_token_ids"), json!(all));
                } else {
                    answer.insert(key.into(), self.text(prompt, generated, &request.params)?);
                }
                answers.push(Value::Object(answer));
            }
            results.push(Value::Array(answers));
        }
        // The encoder–decoder pipelines flatten a list of inputs with one answer each.
        let flat = matches!(self.flavor, Flavor::Text2Text { .. })
            && request.params.num_return_sequences == 1;
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
        receiver: mpsc::UnboundedReceiver<Event>,
        prompt: &Prompt,
        stop: &[String],
    ) -> Result<Vec<Vec<u32>>, ServerError> {
        super::job::sequences_until(receiver, |ids| {
            Ok(!stop.is_empty() && find_stop(&self.new_text(prompt, ids)?, stop).is_some())
        })
        .await
    }

    /// `generated_text` as the pipeline makes it, cut after a stop string: the prompt and the
    /// new text, or for a chat its messages and the assistant's answer.
    fn text(
        &self,
        prompt: &Prompt,
        generated: &[u32],
        params: &ValidParameters,
    ) -> Result<Value, ServerError> {
        let mut new_text = self.new_text(prompt, generated)?;
        if let Some(end) = find_stop(&new_text, &params.stop) {
            new_text.truncate(end);
        }
        Ok(full_text(prompt, new_text, params.return_full_text))
    }

    /// decode(prompt + generated) minus the decoded prompt's length in characters; for an
    /// encoder–decoder model, decode(generated).
    pub(super) fn new_text(
        &self,
        prompt: &Prompt,
        generated: &[u32],
    ) -> Result<String, ServerError> {
        if let Flavor::Text2Text { .. } = self.flavor {
            return self.decode(generated, prompt.cleanup);
        }
        let all: Vec<u32> = prompt.ids.iter().chain(generated).copied().collect();
        Ok(self
            .decode(&all, prompt.cleanup)?
            .chars()
            .skip(prompt.decoded_chars)
            .collect())
    }
}

/// The pipeline's `generated_text`: the new text alone, after the prompt, or for a chat the
/// messages with the assistant's answer appended.
pub(super) fn full_text(prompt: &Prompt, new_text: String, return_full_text: bool) -> Value {
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
pub(super) fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter_map(|s| text.find(s.as_str()).map(|i| i + s.len()))
        .min()
}

/// New tokens a sequence whose decoder starts from `len` tokens may get under the request's
/// length parameters, in a model of `max_positions` positions.
fn new_tokens(
    params: &ValidParameters,
    len: usize,
    max_positions: usize,
) -> Result<usize, ServerError> {
    match params.length {
        Length::New(n) => Ok(n),
        Length::Total(total) if len >= total => Err(ServerError::bad_request(format!(
            "Input length of input_ids is {len}, but `max_length` is set to {total}. Increase `max_length` or, better yet, set `max_new_tokens`."
        ))),
        Length::Total(total) => Ok(total - len),
        Length::DefaultNew(n) => Ok(n.min(max_positions.saturating_sub(len)).max(1)),
    }
}

/// The sampling settings of sequence `index` of a request (its return sequences draw apart
/// under one seed) whose decoder starts from `len` tokens (the prompt, or an encoder–decoder's
/// start token), in a model of `max_positions` positions.
pub fn sequence_sampling(
    params: &ValidParameters,
    len: usize,
    max_positions: usize,
    index: usize,
) -> Result<Sampling, ServerError> {
    let mut sampling = params.sampling.clone();
    sampling.max_new_tokens = new_tokens(params, len, max_positions)?;
    if len.saturating_add(sampling.max_new_tokens) > max_positions {
        return Err(ServerError::bad_request(format!(
            "the prompt ({len} tokens) plus max_new_tokens ({}) is longer than the model's {max_positions} positions",
            sampling.max_new_tokens
        )));
    }
    sampling.min_new_tokens = params
        .min_new_tokens
        .unwrap_or_else(|| params.min_length.saturating_sub(len));
    if params.min_new_tokens.is_some() && sampling.min_new_tokens > sampling.max_new_tokens {
        return Err(ServerError::bad_request(format!(
            "min_new_tokens ({}) is more than the {} new tokens the length parameters allow",
            sampling.min_new_tokens, sampling.max_new_tokens
        )));
    }
    // Distinct draws for the return sequences of one seeded request.
    sampling.seed = sampling.seed.map(|s| s.wrapping_add(index as u64));
    Ok(sampling)
}
