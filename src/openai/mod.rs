//! OpenAI's chat completions and completions APIs on the text-generation engine, as TGI's and
//! vLLM's SageMaker containers serve them (on `/invocations` for a body with `messages` or
//! `prompt`, and on `/v1/chat/completions` / `/v1/completions`).
//!
//! A request is read here into the pipeline's own parameters (`return_full_text` false, one
//! beam, no top-k unless asked) and the engine's [`ChoiceOptions`] (`n`, `stop`, penalties,
//! log-probabilities); `response` shapes the answer, whole or as a stream of chunks. Sampling
//! follows OpenAI: `temperature` 0 is greedy decoding, any other value (or none: the model's
//! `generation_config.json` temperature, else 1) samples. Without `max_tokens` a sequence may
//! run to the model's positions, as vLLM does.

pub mod response;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::error::{cut, ServerError};
use crate::generation::choices::ChoiceOptions;
use crate::generation::constrained::GrammarSpec;
use crate::generation::sse::StreamEvent;
use crate::generation::TextGeneration;
use crate::tasks::params::json_type;

/// Which API a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: `messages`.
    Chat,
    /// `/v1/completions`: `prompt`.
    Completion,
}

/// The log-probabilities a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogprobsAsk {
    None,
    /// The chosen token's and this many alternatives'.
    Top(usize),
}

/// An OpenAI request, read.
pub struct OpenAiRequest {
    pub endpoint: Endpoint,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    pub logprobs: LogprobsAsk,
    /// The chat (messages with text contents) or the prompt string.
    input: Value,
    /// The pipeline's parameters.
    parameters: Value,
    options: ChoiceOptions,
    /// `tools` with a `tool_choice` that allows calls (chat only).
    pub tools: Option<tools::Tools>,
}

/// The largest `top_logprobs` (chat) or `logprobs` (completions), as vLLM allows.
const MAX_TOP_LOGPROBS: u64 = 20;

/// Which API a `/invocations` body speaks: `messages` or `prompt` without `inputs`.
pub fn endpoint_of(body: &Value) -> Option<Endpoint> {
    let object = body.as_object()?;
    if object.contains_key("inputs") {
        return None;
    }
    if object.contains_key("messages") {
        Some(Endpoint::Chat)
    } else if object.contains_key("prompt") {
        Some(Endpoint::Completion)
    } else {
        None
    }
}

/// An OpenAI answer: the whole response, or its chunks as server-sent events.
pub enum OpenAiReply {
    Json(Value),
    Events(tokio::sync::mpsc::Receiver<StreamEvent>),
}

/// Answers an OpenAI request. `model`: the name the answer gives.
pub async fn reply(
    generation: &Arc<TextGeneration>,
    request: OpenAiRequest,
    model: String,
    deadline: Duration,
) -> Result<OpenAiReply, ServerError> {
    let shape = response::Shape::new(&request, model);
    let OpenAiRequest {
        mut input,
        mut parameters,
        mut options,
        tools,
        ..
    } = request;
    if let Some(tools) = &tools {
        // The template's own tools section, or the default system prompt.
        if generation.chat_reads_tools() {
            options.tools = Some(Value::Array(tools.declared.clone()));
        } else if let Value::Array(chat) = &mut input {
            tools.into_system_prompt(chat);
        }
        parameters["add_special_tokens"] = json!(false);
    }
    let prepared = crate::offload::cpu_work(crate::offload::ALWAYS, {
        let generation = generation.clone();
        move || generation.prepare_choices(input, parameters, options)
    })
    .await?;
    let choices = generation.start_choices(prepared, deadline)?;
    if shape.stream {
        return Ok(OpenAiReply::Events(response::stream(shape, choices)));
    }
    Ok(OpenAiReply::Json(response::whole(&shape, choices).await?))
}

pub(crate) fn bad(message: String) -> ServerError {
    ServerError::bad_request(message)
}

/// Reads the request's fields, checked (unknown fields are ignored, as vLLM does).
pub fn parse(endpoint: Endpoint, body: Value) -> Result<OpenAiRequest, ServerError> {
    let Value::Object(mut body) = body else {
        return Err(bad(format!(
            "the request body must be a JSON object, got {}",
            json_type(&body)
        )));
    };
    refuse_unsupported(&body)?;
    let tools = match endpoint {
        Endpoint::Chat => tools::parse(&body)?,
        Endpoint::Completion => None,
    };
    let input = match endpoint {
        Endpoint::Chat => messages(body.remove("messages"))?,
        Endpoint::Completion => prompt(body.remove("prompt"))?,
    };
    let stream = flag(&body, "stream")?.unwrap_or(false);
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) if stream => flag(o, "include_usage")?.unwrap_or(false),
        Some(Value::Object(_)) => {
            return Err(bad(
                "stream_options is only allowed with \"stream\": true".into()
            ))
        }
        Some(other) => return Err(expected("stream_options", "an object", other)),
    };
    let logprobs = logprobs(endpoint, &body)?;
    let n = integer(&body, "n", 1, u32::MAX as u64)?.unwrap_or(1) as usize;
    let options = ChoiceOptions {
        n,
        stop: stop(&body)?,
        keep_stop: false,
        logprobs: match logprobs {
            LogprobsAsk::None => None,
            LogprobsAsk::Top(k) => Some(k),
        },
        frequency_penalty: number(&body, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        presence_penalty: number(&body, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        logit_bias: logit_bias(&body)?,
        until_context_end: true,
        grammar: match (&tools, response_format(&body)?) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "response_format cannot be used with tools that may be called".into(),
                ))
            }
            (Some(tools), None) => Some(tools.grammar()),
            (None, format) => format,
        },
        ..ChoiceOptions::default()
    };
    Ok(OpenAiRequest {
        endpoint,
        stream,
        include_usage,
        logprobs,
        input,
        parameters: parameters(&body)?,
        options,
        tools,
    })
}

/// `response_format` (`json_object`, `json_schema` with `strict`), or vLLM's `guided_json` /
/// `guided_regex`: the grammar the answer must follow.
fn response_format(body: &Map<String, Value>) -> Result<Option<GrammarSpec>, ServerError> {
    let format = match body.get("response_format") {
        None | Some(Value::Null) => None,
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(GrammarSpec::Json {
                schema: json!({"type": "object"}),
                strict: false,
            }),
            Some("json_schema") => {
                let Some(inner) = format.get("json_schema").and_then(Value::as_object) else {
                    return Err(expected(
                        "response_format.json_schema",
                        "an object {\"name\", \"schema\", \"strict\"}",
                        format.get("json_schema").unwrap_or(&Value::Null),
                    ));
                };
                let schema = match inner.get("schema") {
                    Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema.clone(),
                    None | Some(Value::Null) => json!({"type": "object"}),
                    Some(other) => {
                        return Err(expected(
                            "response_format.json_schema.schema",
                            "a JSON schema object",
                            other,
                        ))
                    }
                };
                let strict = flag(inner, "strict")?;
                Some(GrammarSpec::Json {
                    schema,
                    strict: strict.unwrap_or(false),
                })
            }
            _ => {
                return Err(expected(
                    "response_format",
                    "{\"type\": \"text\", \"json_object\" or \"json_schema\"}",
                    format,
                ))
            }
        },
    };
    let guided = match (body.get("guided_json"), body.get("guided_regex")) {
        (Some(json), _) if !json.is_null() => {
            GrammarSpec::from_tgi(&json!({"type": "json", "value": json}))?
        }
        (_, Some(regex)) if !regex.is_null() => {
            GrammarSpec::from_tgi(&json!({"type": "regex", "value": regex}))?
        }
        _ => None,
    };
    match (format, guided) {
        (Some(_), Some(_)) => Err(bad(
            "response_format and guided_json / guided_regex cannot be used together".into(),
        )),
        (format, guided) => Ok(format.or(guided)),
    }
}

/// What this server does not do: refused by name.
fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), ServerError> {
    if flag(body, "echo")? == Some(true) {
        return Err(bad(
            "echo is not supported: the answer holds the new text only".into(),
        ));
    }
    match body.get("suffix") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => return Err(bad("suffix is not supported (no fill-in-the-middle)".into())),
    }
    Ok(())
}

/// The pipeline's parameters for the sampling fields.
fn parameters(body: &Map<String, Value>) -> Result<Value, ServerError> {
    let mut p = Map::new();
    p.insert("return_full_text".into(), json!(false));
    p.insert("num_beams".into(), json!(1));
    let max_tokens = match integer(body, "max_completion_tokens", 1, u32::MAX as u64)? {
        Some(n) => Some(n),
        None => integer(body, "max_tokens", 1, u32::MAX as u64)?,
    };
    if let Some(n) = max_tokens {
        p.insert("max_new_tokens".into(), json!(n));
    }
    match number(body, "temperature", 0.0, 2.0)? {
        Some(0.0) => {
            p.insert("do_sample".into(), json!(false));
        }
        Some(t) => {
            p.insert("do_sample".into(), json!(true));
            p.insert("temperature".into(), json!(t));
        }
        None => {
            p.insert("do_sample".into(), json!(true));
        }
    }
    if let Some(top_p) = number(body, "top_p", 0.0, 1.0)? {
        p.insert("top_p".into(), json!(top_p));
    }
    // OpenAI has no top-k (vLLM's extension: -1 or 0 for none).
    let top_k = match body.get("top_k") {
        Some(Value::Number(k)) if k.as_i64() == Some(-1) => 0,
        _ => integer(body, "top_k", 0, u32::MAX as u64)?.unwrap_or(0),
    };
    p.insert("top_k".into(), json!(top_k));
    match body.get("seed") {
        None | Some(Value::Null) => {}
        // (OpenAI takes any 64-bit integer; the engine's seeds are unsigned)
        Some(Value::Number(n)) if n.as_i64().is_some() || n.as_u64().is_some() => {
            let seed = n.as_u64().unwrap_or_else(|| n.as_i64().unwrap_or(0) as u64);
            p.insert("seed".into(), json!(seed));
        }
        Some(other) => return Err(expected("seed", "an integer", other)),
    }
    if let Some(r) = number(body, "repetition_penalty", f32::MIN_POSITIVE as f64, 100.0)? {
        p.insert("repetition_penalty".into(), json!(r));
    }
    if let Some(min) = integer(body, "min_tokens", 0, u32::MAX as u64)? {
        p.insert("min_new_tokens".into(), json!(min));
    }
    Ok(Value::Object(p))
}

/// `logprobs` / `top_logprobs` (chat: a flag and a count) or `logprobs` (completions: a count).
fn logprobs(endpoint: Endpoint, body: &Map<String, Value>) -> Result<LogprobsAsk, ServerError> {
    Ok(match endpoint {
        Endpoint::Chat => {
            let top = integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)?;
            match (flag(body, "logprobs")?.unwrap_or(false), top) {
                (true, top) => LogprobsAsk::Top(top.unwrap_or(0) as usize),
                (false, None | Some(0)) => LogprobsAsk::None,
                (false, Some(_)) => {
                    return Err(bad("top_logprobs needs \"logprobs\": true".into()));
                }
            }
        }
        Endpoint::Completion => match body.get("logprobs") {
            // (a flag here is what a chat client would send: take it as 0 alternatives)
            Some(Value::Bool(true)) => LogprobsAsk::Top(0),
            Some(Value::Bool(false)) => LogprobsAsk::None,
            _ => match integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)? {
                Some(k) => LogprobsAsk::Top(k as usize),
                None => LogprobsAsk::None,
            },
        },
    })
}

/// The chat, each message's content as text (a list of text parts joined).
fn messages(value: Option<Value>) -> Result<Value, ServerError> {
    let Some(Value::Array(items)) = value else {
        return Err(bad(
            "messages must be a non-empty list of {\"role\", \"content\"} objects".into(),
        ));
    };
    if items.is_empty() {
        return Err(bad("messages must not be empty".into()));
    }
    let mut chat = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut message) = item else {
            return Err(bad(format!("messages[{i}] must be an object")));
        };
        let role = match message.get("role") {
            Some(Value::String(role)) if role == "developer" => "system".to_string(),
            Some(Value::String(role)) => role.clone(),
            _ => return Err(bad(format!("messages[{i}].role must be a string"))),
        };
        let calls = message.get("tool_calls").is_some_and(|t| !t.is_null());
        if calls {
            tools::calls_for_template(i, &mut message)?;
        }
        let content = match message.remove("content") {
            Some(Value::String(text)) => text,
            Some(Value::Array(parts)) => text_parts(i, parts)?,
            // (the template shows the calls; without a tools section, `Tools` writes them out)
            None | Some(Value::Null) if calls => String::new(),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            _ => {
                return Err(bad(format!(
                    "messages[{i}].content must be a string or a list of text parts"
                )))
            }
        };
        message.insert("role".into(), Value::String(role));
        message.insert("content".into(), Value::String(content));
        chat.push(Value::Object(message));
    }
    Ok(Value::Array(chat))
}

fn text_parts(i: usize, parts: Vec<Value>) -> Result<String, ServerError> {
    let mut text = String::new();
    for part in parts {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(t))) => text.push_str(t),
            (kind, _) => {
                return Err(bad(format!(
                    "messages[{i}].content: only text parts are supported, got {}",
                    cut(kind.unwrap_or("a part without a type"), 40)
                )))
            }
        }
    }
    Ok(text)
}

/// One prompt: a string, or a list holding one string.
fn prompt(value: Option<Value>) -> Result<Value, ServerError> {
    match value {
        Some(Value::String(text)) => Ok(Value::String(text)),
        Some(Value::Array(mut items)) if items.len() == 1 && items[0].is_string() => {
            Ok(items.remove(0))
        }
        Some(Value::Array(items)) if items.len() > 1 && items.iter().all(Value::is_string) => {
            Err(bad(
                "several prompts in one request are not supported yet: send one per request".into(),
            ))
        }
        Some(other) => Err(expected("prompt", "a string", &other)),
        None => Err(bad("prompt is missing".into())),
    }
}

/// `stop`: a string or a list of strings (empty ones dropped).
fn stop(body: &Map<String, Value>) -> Result<Vec<String>, ServerError> {
    let mut stop: Vec<String> = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(other) => return Err(expected("stop", "a string or a list of strings", other)),
    };
    stop.retain(|s| !s.is_empty());
    Ok(stop)
}

/// `logit_bias`: token id (as a string) to a bias from -100 to 100.
fn logit_bias(body: &Map<String, Value>) -> Result<Vec<(u32, f32)>, ServerError> {
    let Some(bias) = body.get("logit_bias").filter(|b| !b.is_null()) else {
        return Ok(Vec::new());
    };
    let Value::Object(entries) = bias else {
        return Err(expected(
            "logit_bias",
            "an object of token ids to biases",
            bias,
        ));
    };
    entries
        .iter()
        .map(|(id, value)| {
            let id: u32 = id
                .parse()
                .map_err(|_| bad(format!("logit_bias: `{}` is not a token id", cut(id, 40))))?;
            match value.as_f64() {
                Some(b) if (-100.0..=100.0).contains(&b) => Ok((id, b as f32)),
                _ => Err(expected(
                    "logit_bias values",
                    "numbers from -100 to 100",
                    value,
                )),
            }
        })
        .collect()
}

pub(crate) fn expected(key: &str, what: &str, got: &Value) -> ServerError {
    bad(format!(
        "`{key}` must be {what}, got {}",
        cut(&got.to_string(), 100)
    ))
}

fn flag(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, ServerError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(expected(key, "true or false", other)),
    }
}

fn number(
    body: &Map<String, Value>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<Option<f32>, ServerError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v as f32)),
            _ => Err(expected(
                key,
                &format!("a number from {min} to {max}"),
                &json!(n),
            )),
        },
        Some(other) => Err(expected(key, "a number", other)),
    }
}

fn integer(
    body: &Map<String, Value>,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ServerError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(expected(
                key,
                &format!("an integer from {min} to {max}"),
                value,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_request_becomes_pipeline_parameters_and_options() {
        let body = json!({
            "model": "x", "messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}, {"role": "user", "content": "Hi"}],
            "max_tokens": 5, "temperature": 0, "stop": "\n", "n": 2, "logprobs": true, "top_logprobs": 3,
            "frequency_penalty": 0.5, "logit_bias": {"7": -100}
        });
        let request = parse(Endpoint::Chat, body).unwrap();
        assert_eq!(
            request.input[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(request.parameters["max_new_tokens"], 5);
        assert_eq!(request.parameters["do_sample"], false);
        assert_eq!(request.logprobs, LogprobsAsk::Top(3));
        assert_eq!(request.options.stop, vec!["\n".to_string()]);
        assert_eq!(request.options.n, 2);
        assert_eq!(request.options.logit_bias, vec![(7, -100.0)]);
        assert_eq!(request.options.frequency_penalty, 0.5);
    }

    #[test]
    fn unsupported_and_bad_fields_are_refused_by_name() {
        let chat = |extra: Value| {
            let mut body = json!({"messages": [{"role": "user", "content": "Hi"}]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            parse(Endpoint::Chat, body).err().map(|e| e.to_string())
        };
        let schema =
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}});
        assert!(chat(schema).unwrap().contains("json_schema.schema"));
        let tools = json!({"tools": [{"type": "function", "function": {"name": "f"}}], "response_format": {"type": "json_object"}});
        assert!(chat(tools)
            .unwrap()
            .contains("response_format cannot be used"));
        assert!(chat(json!({"response_format": {"type": "text"}})).is_none());
        assert!(chat(json!({"temperature": 3}))
            .unwrap()
            .contains("temperature"));
        assert!(chat(json!({"top_logprobs": 2}))
            .unwrap()
            .contains("logprobs"));
        assert!(chat(json!({"stream_options": {"include_usage": true}}))
            .unwrap()
            .contains("stream"));
        assert!(parse(Endpoint::Completion, json!({"prompt": ["a", "b"]}))
            .err()
            .unwrap()
            .to_string()
            .contains("several prompts"));
        assert_eq!(
            endpoint_of(&json!({"prompt": "a"})),
            Some(Endpoint::Completion)
        );
        assert_eq!(endpoint_of(&json!({"inputs": "a", "messages": []})), None);
    }
}
