//! A speech request's parameters (the pipeline's, `generate_kwargs`) and its JSON `inputs`
//! (base64 audio: ours; the DLC reads a JSON string as a file path).

use serde_json::{Map, Value};

use crate::error::{cut, ServerError};
use crate::tasks::params::{json_type, Params};
use crate::tasks::tokenizer_kwargs::Loader;

/// A request's decoding settings (`generate_kwargs`, and the pipeline's own `max_new_tokens`)
/// and what the answer shows.
#[derive(Debug, Default)]
pub(super) struct DecodeOptions {
    pub language: Option<String>,
    pub task: Option<String>,
    pub max_new_tokens: Option<usize>,
    /// Beam search's width (`generate_kwargs` `num_beams`; 1: greedy).
    pub num_beams: Option<usize>,
    /// `generate_kwargs` `temperature`: one, or the list a window falls back along (`fallback`);
    /// above 0 it samples, else greedy (Whisper's `generate` sets `do_sample` from it, so
    /// `do_sample` alone changes nothing). Empty: greedy.
    pub temperatures: Vec<f64>,
    /// When a window's answer falls back to the next temperature, or is skipped as silence.
    pub thresholds: Thresholds,
    /// `generate_kwargs` `top_k` for sampling (0: none; else the generation config's, or 50).
    pub top_k: Option<usize>,
    /// `generate_kwargs` `condition_on_prev_tokens`: each window's prompt led by the tokens
    /// of the segments before it (`windows::History`).
    pub condition_on_prev_tokens: Option<bool>,
    /// The pipeline's `return_timestamps` (true: segment timestamps in the answer's chunks).
    pub return_timestamps: Option<bool>,
    /// `return_timestamps` given as a string: "char" or "word" (CTC), or another the models
    /// refuse (`check_whisper`, `check_ctc`).
    pub timestamp_level: Option<String>,
    /// `generate_kwargs` `return_timestamps`: what `generate` gets when the pipeline's own is
    /// absent (the answer still shows only the text).
    pub generate_timestamps: Option<bool>,
    /// `return_language`: each chunk's language (`None` unless a language token was generated,
    /// as in transformers 4.51.3, whose `generate` leaves the decoder prompt out).
    pub return_language: bool,
    /// `return_language` given (true or false): the pipeline refuses it for all but Whisper.
    pub language_asked: bool,
    /// `chunk_length_s` (non-zero) with its strides.
    pub chunking: Option<Chunking>,
}

/// `generate_kwargs`' fallback thresholds (see `fallback`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Thresholds {
    pub compression_ratio: Option<f64>,
    pub logprob: Option<f64>,
    pub no_speech: Option<f64>,
}

impl Thresholds {
    pub(super) fn any(&self) -> bool {
        self.compression_ratio.is_some() || self.logprob.is_some() || self.no_speech.is_some()
    }
}

/// `chunk_length_s` and `stride_length_s` (seconds; the strides default to a sixth of it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunking {
    pub length_s: f64,
    pub stride_s: (f64, f64),
}

impl Chunking {
    /// `chunk_iter`'s plan for `samples` at `rate`: each chunk's (start, length, left stride,
    /// right stride) in samples. The lengths round as the pipeline's `int(round(s x rate))`.
    /// The chunks (start, length, left stride, right stride in samples) as `chunk_iter` cuts
    /// them, the lengths rounded to multiples of `align_to` (the model's samples per output
    /// frame for CTC, 1 for Whisper) as the pipeline rounds them.
    pub(super) fn plan(
        &self,
        samples: usize,
        rate: u32,
        align_to: usize,
    ) -> Result<Vec<(usize, usize, usize, usize)>, ServerError> {
        let align = align_to.max(1) as f64;
        let in_samples = |s: f64| ((s * rate as f64 / align).round_ties_even() * align) as usize;
        let chunk_len = in_samples(self.length_s);
        let (left, right) = (in_samples(self.stride_s.0), in_samples(self.stride_s.1));
        if chunk_len < left + right {
            return Err(ServerError::bad_request(
                "Chunk length must be superior to stride length",
            ));
        }
        let step = chunk_len - left - right;
        if step == 0 {
            return Err(ServerError::bad_request(
                "`chunk_length_s` must be longer than its two strides (`stride_length_s`), or the chunks never advance (the pipeline: range() arg 3 must not be zero)",
            ));
        }
        let count = samples.div_ceil(step);
        if count > MAX_CHUNKS {
            return Err(ServerError::bad_request(format!(
                "`chunk_length_s` {} with strides {:?} cuts this audio into {count} chunks, more than this server's {MAX_CHUNKS}: make the chunks longer or the strides shorter",
                self.length_s, self.stride_s
            )));
        }
        let mut plan = Vec::new();
        for start in (0..samples).step_by(step) {
            let end = start + chunk_len;
            let length = end.min(samples) - start;
            let stride_left = if start == 0 { 0 } else { left };
            let is_last = end >= samples;
            let stride_right = if is_last { 0 } else { right };
            if length > stride_left {
                plan.push((start, length, stride_left, stride_right));
            }
            if is_last {
                break;
            }
        }
        Ok(plan)
    }
}

/// Chunks one request may be cut into (each is a 30 s window for the encoder).
const MAX_CHUNKS: usize = 2048;

/// `parameters`: the pipeline's (`generate_kwargs`, `max_new_tokens`, ...).
impl DecodeOptions {
    /// `return_timestamps` "word": each word's time in the answer's chunks.
    pub(super) fn word_timestamps(&self) -> bool {
        self.timestamp_level.as_deref() == Some("word")
    }

    /// What Whisper's pipeline refuses of `return_timestamps`.
    pub(super) fn check_whisper(&self) -> Result<(), ServerError> {
        match self.timestamp_level.as_deref() {
            None => Ok(()),
            Some("char") => Err(ServerError::bad_request("Whisper cannot return `char` timestamps, only word level or segment level timestamps. Use `return_timestamps='word'` or `return_timestamps=True` respectively.")),
            Some("word") => Ok(()),
            Some(other) => Err(ServerError::bad_request(format!(
                "`return_timestamps` {} is not one the pipeline takes: true (segment timestamps), false, or \"word\"",
                cut(&Value::String(other.to_string()).to_string(), 60)
            ))),
        }
    }

    /// What the pipeline's "ctc" type refuses: `return_timestamps` other than "char" or "word"
    /// (true and false included).
    pub(super) fn check_ctc(&self) -> Result<(), ServerError> {
        let refused = self.return_timestamps.is_some()
            || self
                .timestamp_level
                .as_deref()
                .is_some_and(|level| level != "char" && level != "word");
        if refused {
            return Err(ServerError::bad_request("CTC can either predict character level timestamps, or word level timestamps. Set `return_timestamps='char'` or `return_timestamps='word'` as required."));
        }
        if self.language_asked {
            return Err(ServerError::bad_request(
                "Only Whisper can return language for now.",
            ));
        }
        Ok(())
    }
}

pub(super) fn decode_options(parameters: Option<Value>) -> Result<DecodeOptions, ServerError> {
    let mut options = DecodeOptions::default();
    let parameters = match parameters {
        None | Some(Value::Null) => return Ok(options),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(ServerError::bad_request(format!(
                "`parameters` must be an object, got {}",
                json_type(&other)
            )))
        }
    };
    let mut chunk_length_s = None;
    let mut stride_length_s = None;
    let mut loader = Map::new();
    let mut generate_kwargs = Map::new();
    for (key, value) in parameters {
        match key.as_str() {
            "generate_kwargs" => match value {
                Value::Object(map) => generate_kwargs = map,
                Value::Null => {}
                other => {
                    return Err(ServerError::bad_request(format!(
                        "`generate_kwargs` must be an object, got {}",
                        json_type(&other)
                    )))
                }
            },
            "max_new_tokens" => options.max_new_tokens = Some(count(&key, &value)?),
            "return_timestamps" => match value {
                Value::Bool(on) => options.return_timestamps = Some(on),
                Value::Null => {}
                Value::String(level) => options.timestamp_level = Some(level),
                other => {
                    return Err(ServerError::bad_request(format!(
                        "`return_timestamps` {} is not one the pipeline takes: true (segment timestamps), false, or \"word\"",
                        cut(&other.to_string(), 60)
                    )))
                }
            },
            "return_language" => {
                if let Some(on) = flag("`return_language`", &value)? {
                    options.return_language = on;
                    options.language_asked = true;
                }
            }
            "chunk_length_s" => chunk_length_s = seconds(&key, &value)?,
            "stride_length_s" => {
                stride_length_s = match value {
                    Value::Array(pair) if pair.len() == 2 => {
                        match (seconds(&key, &pair[0])?, seconds(&key, &pair[1])?) {
                            (Some(left), Some(right)) => Some((left, right)),
                            _ => None,
                        }
                    }
                    Value::Array(_) => {
                        return Err(ServerError::bad_request(
                            "`stride_length_s` takes one number of seconds or a list of two (left, right)",
                        ))
                    }
                    other => seconds(&key, &other)?.map(|s| (s, s)),
                }
            }
            // Only CTC models with a language model read it; Whisper's pipeline ignores it.
            "decoder_kwargs" => {}
            // The DataLoader's (the pipeline is a ChunkPipeline: it always runs one): checked
            // as it checks them; no answer changes (chunks are decoded concurrently anyway,
            // and transformers' batched chunks give the unbatched answers, goldens show).
            "batch_size" | "num_workers" => {
                loader.insert(key, value);
            }
            "ignore_warning" => {}
            _ => {
                return Err(ServerError::bad_request(format!(
                    "AutomaticSpeechRecognitionPipeline._sanitize_parameters() got an unexpected keyword argument '{key}'"
                )))
            }
        }
    }
    let mut loader = Params::new(Some(Value::Object(loader)), "automatic-speech-recognition")?;
    Loader::take(&mut loader).check(true)?;
    // `if chunk_length_s:` — zero means no chunking.
    if let Some(length_s) = chunk_length_s.filter(|&s| s != 0.0) {
        options.chunking = Some(Chunking {
            length_s,
            stride_s: stride_length_s.unwrap_or((length_s / 6.0, length_s / 6.0)),
        });
    }
    generate_options(&mut options, generate_kwargs)?;
    Ok(options)
}

/// `generate_kwargs`: `language`, `task`, `max_new_tokens`, `num_beams`, `return_timestamps`,
/// `temperature`, `do_sample`.
fn generate_options(
    options: &mut DecodeOptions,
    generate_kwargs: Map<String, Value>,
) -> Result<(), ServerError> {
    for (key, value) in generate_kwargs {
        match key.as_str() {
            "language" | "task" => {
                let text = match value {
                    Value::String(s) => Some(s),
                    Value::Null => None,
                    other => {
                        return Err(ServerError::bad_request(format!(
                            "generate_kwargs `{key}` must be a string, got {}",
                            json_type(&other)
                        )))
                    }
                };
                if key == "language" {
                    options.language = text;
                } else {
                    options.task = text;
                }
            }
            "max_new_tokens" => {
                if options.max_new_tokens.is_some() {
                    return Err(ServerError::bad_request("`max_new_tokens` is defined both as an argument and inside `generate_kwargs` argument, please use only 1 version"));
                }
                options.max_new_tokens = Some(count(&key, &value)?);
            }
            "return_timestamps" => {
                if let Some(on) = flag("generate_kwargs `return_timestamps`", &value)? {
                    options.generate_timestamps = Some(on);
                }
            }
            // Whisper's `generate` sets `do_sample` from the temperature: checked, not used.
            "do_sample" => {
                flag("generate_kwargs `do_sample`", &value)?;
            }
            "temperature" => {
                let listed = match value {
                    Value::Array(list) => list,
                    Value::Null => Vec::new(),
                    other => vec![other],
                };
                options.temperatures = listed
                    .iter()
                    .map(|t| match t.as_f64() {
                        Some(t) if t >= 0.0 && t.is_finite() => Ok(t),
                        _ => Err(ServerError::bad_request(format!(
                            "generate_kwargs `temperature` must be a non-negative number or a list of them, got {}",
                            cut(&t.to_string(), 40)
                        ))),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "compression_ratio_threshold" | "logprob_threshold" | "no_speech_threshold" => {
                let threshold = match value {
                    Value::Null => None,
                    Value::Number(n) => n.as_f64(),
                    other => {
                        return Err(ServerError::bad_request(format!(
                            "generate_kwargs `{key}` must be a number, got {}",
                            json_type(&other)
                        )))
                    }
                };
                let t = &mut options.thresholds;
                match key.as_str() {
                    "compression_ratio_threshold" => t.compression_ratio = threshold,
                    "logprob_threshold" => t.logprob = threshold,
                    _ => t.no_speech = threshold,
                }
            }
            "condition_on_prev_tokens" => {
                options.condition_on_prev_tokens =
                    flag("generate_kwargs `condition_on_prev_tokens`", &value)?;
            }
            "top_k" => options.top_k = Some(count(&key, &value)?),
            "num_beams" => match count(&key, &value)? {
                0 => return Err(ServerError::bad_request(
                    "generate_kwargs `num_beams` must be a positive integer (the pipeline fails with ZeroDivisionError: integer division or modulo by zero)",
                )),
                beams => options.num_beams = Some(beams),
            },
            _ => {
                return Err(ServerError::bad_request(format!(
                    "generate_kwargs `{key}` is not supported by this server's speech recognition yet (it takes language, task, max_new_tokens, num_beams, return_timestamps, temperature, do_sample, top_k, compression_ratio_threshold, logprob_threshold, no_speech_threshold, condition_on_prev_tokens)"
                )))
            }
        }
    }
    Ok(())
}

/// A boolean (null: not given); `name` as the error names it.
fn flag(name: &str, value: &Value) -> Result<Option<bool>, ServerError> {
    match value {
        Value::Bool(on) => Ok(Some(*on)),
        Value::Null => Ok(None),
        other => Err(ServerError::bad_request(format!(
            "{name} must be true or false, got {}",
            json_type(other)
        ))),
    }
}

/// A non-negative number of seconds (null: not given).
fn seconds(key: &str, value: &Value) -> Result<Option<f64>, ServerError> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_f64() {
            Some(s) if s >= 0.0 && s.is_finite() => Ok(Some(s)),
            _ => Err(ServerError::bad_request(format!(
                "`{key}` must be a non-negative number of seconds, got {n}"
            ))),
        },
        other => Err(ServerError::bad_request(format!(
            "`{key}` must be a number of seconds, got {}",
            json_type(other)
        ))),
    }
}

fn count(key: &str, value: &Value) -> Result<usize, ServerError> {
    value.as_u64().map(|n| n as usize).ok_or_else(|| {
        ServerError::bad_request(format!(
            "`{key}` must be a non-negative integer, got {value}"
        ))
    })
}

pub(super) fn bad_inputs(got: &str) -> ServerError {
    ServerError::bad_request(format!(
        "automatic-speech-recognition takes the audio file as the body (Content-Type audio/x-flac, audio/mpeg, audio/wave, audio/ogg, audio/x-audio), or JSON `inputs` holding it base64-encoded (or a data:audio/...;base64, URL), or a list of them; got {got}"
    ))
}

/// Base64 audio (a data URL's payload after its comma).
pub(super) fn audio_of_string(text: &str) -> Result<Vec<u8>, ServerError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        return Err(ServerError::bad_request(format!(
            "audio URLs are not fetched by this server ({}): send the audio itself, base64-encoded in `inputs` or as the request body",
            cut(trimmed, 80)
        )));
    }
    let payload = if text.starts_with("data:") {
        text.split(',').nth(1).unwrap_or("")
    } else {
        text
    };
    crate::tasks::image_input::decode_base64(payload).map_err(|e| {
        ServerError::bad_request(format!(
            "`inputs` is not base64-encoded audio ({}): {e}",
            cut(text, 60)
        ))
    })
}
