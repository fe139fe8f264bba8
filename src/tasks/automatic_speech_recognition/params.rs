//! A speech request's parameters (the pipeline's, `generate_kwargs`) and its JSON `inputs`
//! (base64 audio: ours; the DLC reads a JSON string as a file path).

use serde_json::{Map, Value};

use crate::error::{cut, ServerError};
use crate::tasks::params::json_type;

/// A request's decoding settings (`generate_kwargs`, and the pipeline's own `max_new_tokens`).
#[derive(Debug, Default)]
pub(super) struct DecodeOptions {
    pub language: Option<String>,
    pub task: Option<String>,
    pub max_new_tokens: Option<usize>,
    /// Segment timestamps (`return_timestamps=True`).
    pub return_timestamps: bool,
}

/// `parameters`: the pipeline's (`generate_kwargs`, `max_new_tokens`, ...).
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
                // Whisper's timestamp rules and chunks are ours already (the logits processor,
                // `text::decode_asr`), but with timestamps `generate` decodes segment after
                // segment through the window (seeking to each segment's last timestamp), which
                // is not: refused rather than answered differently.
                Value::Bool(true) => {
                    return Err(ServerError::bad_request(
                        "automatic-speech-recognition parameter `return_timestamps` is not supported by this server yet",
                    ))
                }
                Value::Bool(false) => options.return_timestamps = false,
                Value::Null => {}
                Value::String(kind) if kind == "char" => {
                    return Err(ServerError::bad_request("Whisper cannot return `char` timestamps, only word level or segment level timestamps. Use `return_timestamps='word'` or `return_timestamps=True` respectively."))
                }
                other => {
                    return Err(ServerError::bad_request(format!(
                        "`return_timestamps` {} is not supported by this server yet (it takes true or false)",
                        cut(&other.to_string(), 60)
                    )))
                }
            },
            "return_language" | "chunk_length_s" | "stride_length_s"
            | "decoder_kwargs" => {
                if !value.is_null() && value != Value::Bool(false) {
                    return Err(ServerError::bad_request(format!(
                        "automatic-speech-recognition parameter `{key}` is not supported by this server yet"
                    )));
                }
            }
            "ignore_warning" => {}
            _ => {
                return Err(ServerError::bad_request(format!(
                    "AutomaticSpeechRecognitionPipeline._sanitize_parameters() got an unexpected keyword argument '{key}'"
                )))
            }
        }
    }
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
            _ => {
                return Err(ServerError::bad_request(format!(
                    "generate_kwargs `{key}` is not supported by this server's speech recognition yet (it takes language, task, max_new_tokens)"
                )))
            }
        }
    }
    Ok(options)
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
