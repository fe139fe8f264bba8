//! The generation parameters beyond lengths and sampling: the output's form (`return_tensors`,
//! `return_text`, `clean_up_tokenization_spaces`), the prompt's handling (`prefix`,
//! `add_special_tokens`, `stop_sequence`), `max_time`, and the optional logits processors —
//! with `transformers` 4.51's names and meaning. Parameters that only a Python object can fill
//! (`assistant_model`, `logits_processor`, ...) and decoding strategies this server does not run
//! get a 400 that names them, instead of "unknown parameter".

use serde_json::Value;

use super::constrained::GrammarSpec;
use super::processors::Processors;
use crate::error::ServerError;
use crate::tasks::params::Params;

/// `generate` / pipeline parameters that take Python objects: a JSON request cannot carry them.
const PYTHON_OBJECTS: &[(&str, &str)] = &[
    ("assistant_model", "a PreTrainedModel"),
    ("assistant_tokenizer", "a tokenizer"),
    ("tokenizer", "a tokenizer"),
    ("logits_processor", "a LogitsProcessorList"),
    ("stopping_criteria", "a StoppingCriteriaList"),
    ("prefix_allowed_tokens_fn", "a Python function"),
    ("streamer", "a BaseStreamer"),
    ("generation_config", "a GenerationConfig"),
    ("negative_prompt_ids", "a tensor"),
    ("negative_prompt_attention_mask", "a tensor"),
    ("constraints", "a list of Constraint objects"),
    ("compile_config", "a CompileConfig"),
    ("return_type", "a ReturnType enum"),
    (
        "stop_strings",
        "a tokenizer passed to generate (the pipeline never passes one)",
    ),
    (
        "token_healing",
        "a tokenizer passed to generate (the pipeline never passes one)",
    ),
    (
        "forced_decoder_ids",
        "nothing: transformers 4.51 refuses it",
    ),
];

/// Decoding strategies and options `transformers` runs that this server does not (yet).
const NOT_SERVED: &[&str] = &[
    "num_beam_groups",
    "diversity_penalty",
    "penalty_alpha",
    "force_words_ids",
    "guidance_scale",
    "dola_layers",
    "prompt_lookup_num_tokens",
    "assistant_early_exit",
    "watermarking_config",
    "low_memory",
    "encoder_repetition_penalty",
    "encoder_no_repeat_ngram_size",
    "handle_long_generation",
    "continue_final_message",
    "padding",
    "cache_implementation",
    "prefill_chunk_size",
];

/// Parameters accepted and without effect here (they change nothing in the pipelines' JSON).
const WITHOUT_EFFECT: &[&str] = &[
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_legacy_cache",
    "disable_compile",
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "assistant_confidence_threshold",
    "remove_invalid_values",
];

/// The names `take` reads, for the 400 that lists what is accepted.
pub const EXTRA_ACCEPTED: &[&str] = &[
    "return_tensors",
    "return_text",
    "clean_up_tokenization_spaces",
    "prefix",
    "add_special_tokens",
    "stop_sequence",
    "max_time",
    "sequence_bias",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "renormalize_logits",
    "grammar",
];

/// Which pipeline's parameters these are: they differ in `return_full_text` and `truncation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    /// text-generation (decoder-only).
    Causal,
    /// text2text-generation, summarization, translation (encoder–decoder).
    Text2Text,
}

#[derive(Debug, Default)]
pub struct ExtraParameters {
    /// Token ids instead of text (text-generation: any value but null; text2text: a bool).
    pub return_tensors: Option<bool>,
    /// Given (it changes nothing but the mutual-exclusion errors, as in transformers).
    pub return_text: bool,
    pub clean_up_tokenization_spaces: Option<bool>,
    /// Put before a text prompt (text-generation).
    pub prefix: Option<String>,
    pub add_special_tokens: Option<bool>,
    /// Its tokens end the sequence (text-generation: any of them; text2text: the first).
    pub stop_sequence: Option<String>,
    /// Seconds after which a sequence stops (greedy and sampled sequences).
    pub max_time: Option<f32>,
    pub processors: Processors,
    /// TGI's `grammar`: the text follows a JSON schema or a regex (text-generation).
    pub grammar: Option<GrammarSpec>,
}

impl ExtraParameters {
    pub fn take(p: &mut Params, kind: PipelineKind) -> Result<Self, ServerError> {
        for (name, needs) in PYTHON_OBJECTS {
            if p.take(name).is_some_and(|v| !v.is_null()) {
                return Err(ServerError::bad_request(format!(
                    "parameter `{name}` of {} takes {needs}, which a JSON request cannot carry",
                    p.task()
                )));
            }
        }
        for name in NOT_SERVED {
            if p.take(name).is_some_and(|v| !v.is_null()) {
                return Err(ServerError::bad_request(format!(
                    "parameter `{name}` of {} is not supported by this server",
                    p.task()
                )));
            }
        }
        for name in WITHOUT_EFFECT {
            p.take(name);
        }
        let causal = kind == PipelineKind::Causal;
        let return_tensors = match (kind, p.take("return_tensors")) {
            (_, None | Some(Value::Null)) => None,
            // (the text-generation pipeline tests `is not None`: false asks for tensors too)
            (PipelineKind::Causal, Some(_)) => Some(true),
            (PipelineKind::Text2Text, Some(Value::Bool(b))) => Some(b),
            (PipelineKind::Text2Text, Some(other)) => {
                return Err(p.invalid("return_tensors", "true or false", &other))
            }
        };
        Ok(ExtraParameters {
            return_tensors,
            return_text: p.take("return_text").is_some_and(|v| !v.is_null()),
            clean_up_tokenization_spaces: p.take_bool("clean_up_tokenization_spaces")?,
            prefix: if causal {
                take_string(p, "prefix")?
            } else {
                None
            },
            add_special_tokens: if causal {
                p.take_bool("add_special_tokens")?
            } else {
                None
            },
            stop_sequence: take_string(p, "stop_sequence")?,
            max_time: take_number(p, "max_time", 0.0, f32::MAX)?,
            processors: take_processors(p)?,
            grammar: match p.take("grammar") {
                None | Some(Value::Null) => None,
                Some(_) if !causal => {
                    return Err(ServerError::bad_request(
                        "`grammar` is a text-generation parameter (decoder-only models)",
                    ))
                }
                Some(v) => GrammarSpec::from_tgi(&v)?,
            },
        })
    }
}

fn take_processors(p: &mut Params) -> Result<Processors, ServerError> {
    let sequence_bias = match p.take("sequence_bias") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => sequence_bias(&v)
            .ok_or_else(|| p.invalid("sequence_bias", "a list of [[token ids], bias] pairs", &v))?,
    };
    let exponential_decay = match p.take("exponential_decay_length_penalty") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_f64()? as f32)))
                .ok_or_else(|| {
                    p.invalid(
                        "exponential_decay_length_penalty",
                        "[start index, decay factor]",
                        &v,
                    )
                })?,
        ),
    };
    Ok(Processors {
        sequence_bias,
        exponential_decay,
        suppress_tokens: take_ids(p, "suppress_tokens")?,
        begin_suppress_tokens: take_ids(p, "begin_suppress_tokens")?,
        min_p: take_number(p, "min_p", 0.0, 1.0)?,
        typical_p: take_number(p, "typical_p", f32::MIN_POSITIVE, 1.0)?,
        epsilon_cutoff: take_number(p, "epsilon_cutoff", 0.0, 1.0)?,
        eta_cutoff: take_number(p, "eta_cutoff", 0.0, 1.0)?,
        renormalize: p.take_bool("renormalize_logits")?.unwrap_or(false),
        ..Processors::default()
    })
}

fn take_string(p: &mut Params, key: &str) -> Result<Option<String>, ServerError> {
    match p.take(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(p.invalid(key, "a string", &other)),
    }
}

/// A number within `low..=high`.
fn take_number(p: &mut Params, key: &str, low: f32, high: f32) -> Result<Option<f32>, ServerError> {
    match p.take(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64().map(|x| x as f32) {
            Some(x) if (low..=high).contains(&x) => Ok(Some(x)),
            _ => Err(p.invalid(key, &format!("a number from {low} to {high}"), &v)),
        },
    }
}

fn take_ids(p: &mut Params, key: &str) -> Result<Vec<u32>, ServerError> {
    match p.take(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => v
            .as_array()
            .and_then(|ids| {
                ids.iter()
                    .map(|id| id.as_u64().map(|id| id as u32))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| p.invalid(key, "a list of token ids", &v)),
    }
}

/// `[[[ids], bias], ...]` (the list form; the dict form needs tuple keys JSON cannot write).
fn sequence_bias(value: &Value) -> Option<Vec<(Vec<u32>, f32)>> {
    value
        .as_array()?
        .iter()
        .map(|pair| {
            let pair = pair.as_array().filter(|p| p.len() == 2)?;
            let ids = pair[0]
                .as_array()
                .filter(|ids| !ids.is_empty())?
                .iter()
                .map(|id| id.as_u64().map(|id| id as u32))
                .collect::<Option<Vec<_>>>()?;
            Some((ids, pair[1].as_f64()? as f32))
        })
        .collect()
}
