//! OpenAI's response shapes: `chat.completion` and `text_completion` objects, and, streamed,
//! `chat.completion.chunk` / `text_completion` chunks as `data: {...}` events ending with
//! `data: [DONE]` (a last chunk with the usage first, for `stream_options.include_usage`).
//! Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::{tools, Endpoint, LogprobsAsk, OpenAiRequest};
use crate::error::{cut, ServerError};
use crate::generation::choices::{Choices, Finish, GeneratedToken};
use crate::generation::sse::{send_text, StreamEvent, StreamFailure};
use crate::generation::TextGeneration;

/// What every object of one answer shares.
pub struct Shape {
    endpoint: Endpoint,
    pub stream: bool,
    include_usage: bool,
    logprobs: LogprobsAsk,
    id: String,
    created: u64,
    model: String,
    /// Answers may be tool calls (chat with `tools`).
    tools: bool,
}

impl Shape {
    pub fn new(request: &OpenAiRequest, model: String) -> Shape {
        let prefix = match request.endpoint {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completion => "cmpl-",
        };
        Shape {
            endpoint: request.endpoint,
            stream: request.stream,
            include_usage: request.include_usage,
            logprobs: request.logprobs,
            id: format!("{prefix}{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model,
            tools: request.tools.is_some(),
        }
    }

    /// `id`, `object`, `created`, `model` and `system_fingerprint`, then `choices`.
    fn object(&self, chunk: bool, choices: Vec<Value>) -> Map<String, Value> {
        let object = match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        };
        let mut map = Map::new();
        map.insert("id".into(), json!(self.id));
        map.insert("object".into(), json!(object));
        map.insert("created".into(), json!(self.created));
        map.insert("model".into(), json!(self.model));
        map.insert("system_fingerprint".into(), Value::Null);
        map.insert("choices".into(), Value::Array(choices));
        map
    }

    /// One choice: chat's `message` (or a chunk's `delta`), or completions' `text`.
    fn choice(
        &self,
        index: usize,
        text: &str,
        logprobs: Value,
        finish: Option<Finish>,
        chunk: bool,
    ) -> Value {
        let finish_reason = finish.map(|f| match f {
            Finish::Length => "length",
            Finish::EosToken | Finish::StopSequence => "stop",
        });
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => json!({
                "index": index,
                "message": {"role": "assistant", "content": text, "refusal": null, "tool_calls": []},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }),
            (Endpoint::Chat, true) => {
                let delta = if text.is_empty() && finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason})
            }
            (Endpoint::Completion, _) => json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }),
        }
    }

    /// The tokens' log-probabilities in the API's form (`null` unless asked for); `offset`:
    /// characters of the completion before the first of them.
    fn logprobs(
        &self,
        generation: &TextGeneration,
        tokens: &[GeneratedToken],
        offset: usize,
    ) -> Value {
        if self.logprobs == LogprobsAsk::None {
            return Value::Null;
        }
        let text = |id: u32| generation.token_text(id).0;
        let model = |t: &GeneratedToken| t.model_logprobs.as_deref().cloned().unwrap_or_default();
        match self.endpoint {
            Endpoint::Chat => {
                let entry = |token: String, logprob: f32| json!({"bytes": token.as_bytes(), "token": token, "logprob": logprob});
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let lp = model(t);
                        let mut e = entry(text(t.id), lp.logprob);
                        let top: Vec<Value> =
                            lp.top.iter().map(|&(id, l)| entry(text(id), l)).collect();
                        e["top_logprobs"] = Value::Array(top);
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Endpoint::Completion => {
                let mut offsets = Vec::with_capacity(tokens.len());
                let mut at = offset;
                let mut texts = Vec::with_capacity(tokens.len());
                for t in tokens {
                    let token = text(t.id);
                    offsets.push(at);
                    at += token.chars().count();
                    texts.push(token);
                }
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let alternatives: Map<String, Value> = model(t)
                            .top
                            .iter()
                            .map(|&(id, l)| (text(id), json!(l)))
                            .collect();
                        Value::Object(alternatives)
                    })
                    .collect();
                json!({
                    "tokens": texts,
                    "token_logprobs": tokens.iter().map(|t| model(t).logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    /// A finished answer that is a tool call: its tool's name and arguments.
    fn call(&self, text: &str, finish: Option<Finish>) -> Option<(String, Value)> {
        let complete = matches!(finish, Some(Finish::EosToken | Finish::StopSequence));
        (self.tools && complete)
            .then(|| tools::as_call(text))
            .flatten()
    }

    fn usage(&self, choices: &Choices) -> Value {
        let prompt = choices.prompt_ids().len();
        let completion = choices.generated_tokens();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        })
    }
}

/// Runs every choice to its end and answers with the whole object.
pub async fn whole(shape: &Shape, mut choices: Choices) -> Result<Value, ServerError> {
    choices.finish_all().await?;
    let generation = choices.generation().clone();
    let list = (0..choices.n())
        .map(|i| {
            let logprobs = shape.logprobs(&generation, choices.tokens(i), 0);
            match shape.call(choices.text(i), choices.finish(i)) {
                Some((name, arguments)) => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [tools::call_json(&name, &arguments, None)]},
                    "logprobs": logprobs,
                    "finish_reason": "tool_calls",
                }),
                None => shape.choice(i, choices.text(i), logprobs, choices.finish(i), false),
            }
        })
        .collect();
    let mut object = shape.object(false, list);
    object.insert("usage".into(), shape.usage(&choices));
    Ok(Value::Object(object))
}

/// The answer as chunks, sent as the tokens come: for chat, first each choice's role; then a
/// chunk per piece of text (with its tokens' log-probabilities), the last of each choice with
/// its `finish_reason`; the usage (when asked) and `[DONE]`. A client that goes away ends the
/// sequences.
pub fn stream(shape: Shape, mut choices: Choices) -> mpsc::Receiver<StreamEvent> {
    let (events, out) = mpsc::channel(64);
    tokio::spawn(async move {
        let generation = choices.generation().clone();
        let n = choices.n();
        let chunk = |shape: &Shape, choice: Value| {
            let mut object = shape.object(true, vec![choice]);
            if shape.include_usage {
                object.insert("usage".into(), Value::Null);
            }
            data(&Value::Object(object))
        };
        if shape.endpoint == Endpoint::Chat {
            for i in 0..n {
                let role = json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
                if !send_text(&events, chunk(&shape, role)).await {
                    return;
                }
            }
        }
        let mut pending: Vec<Vec<GeneratedToken>> = vec![Vec::new(); n];
        let mut sent_chars = vec![0usize; n];
        // With tools, a choice's text is held until it shows whether it is a call (it starts
        // with `{`); a call is sent whole when it ends.
        let mut mode = vec![
            if shape.tools {
                Mode::Undecided
            } else {
                Mode::Text
            };
            n
        ];
        let mut unsent = vec![String::new(); n];
        loop {
            let progress = match choices.next().await {
                Ok(Some(progress)) => progress,
                Ok(None) => break,
                Err(error) => {
                    let failure = StreamFailure {
                        message: error.to_string(),
                        timed_out: matches!(error, ServerError::Timeout(_)),
                    };
                    let text = data(&error_json(&error));
                    let _ = events
                        .send(StreamEvent {
                            text,
                            failure: Some(failure),
                        })
                        .await;
                    return;
                }
            };
            let i = progress.index;
            pending[i].push(progress.token);
            let mut piece = progress.piece;
            if mode[i] != Mode::Text {
                unsent[i].push_str(&piece);
                let text = choices.text(i);
                if mode[i] == Mode::Undecided {
                    let start = text.trim_start();
                    if start.starts_with('{') {
                        mode[i] = Mode::Call;
                    } else if !start.is_empty() {
                        mode[i] = Mode::Text;
                    }
                }
                if progress.finish.is_none() && mode[i] != Mode::Text {
                    continue;
                }
                if let Some((name, arguments)) = shape.call(text, progress.finish) {
                    let tokens = std::mem::take(&mut pending[i]);
                    let logprobs = shape.logprobs(&generation, &tokens, 0);
                    let call = tools::call_json(&name, &arguments, Some(0));
                    let delta = json!({"index": i, "delta": {"tool_calls": [call]}, "logprobs": logprobs, "finish_reason": null});
                    let end = json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"});
                    if !send_text(&events, chunk(&shape, delta)).await
                        || !send_text(&events, chunk(&shape, end)).await
                    {
                        return;
                    }
                    continue;
                }
                // Plain text after all: what was held, now.
                piece = std::mem::take(&mut unsent[i]);
                mode[i] = Mode::Text;
            }
            if piece.is_empty() && progress.finish.is_none() {
                continue;
            }
            let tokens = std::mem::take(&mut pending[i]);
            let logprobs = shape.logprobs(&generation, &tokens, sent_chars[i]);
            sent_chars[i] += tokens
                .iter()
                .map(|t| generation.token_text(t.id).0.chars().count())
                .sum::<usize>();
            let choice = shape.choice(i, &piece, logprobs, progress.finish, true);
            if !send_text(&events, chunk(&shape, choice)).await {
                return;
            }
        }
        if shape.include_usage {
            let mut object = shape.object(true, Vec::new());
            object.insert("usage".into(), shape.usage(&choices));
            if !send_text(&events, data(&Value::Object(object))).await {
                return;
            }
        }
        send_text(&events, "data: [DONE]\n\n".into()).await;
    });
    out
}

/// A streamed choice's text, with tools: not yet known, plain text, or a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Undecided,
    Text,
    Call,
}

fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// OpenAI's error object for `error`: `type` from its status, `code` for the cases clients
/// branch on.
pub fn error_json(error: &ServerError) -> Value {
    let status = error.status();
    let kind = match status.as_u16() {
        400..=499 => "invalid_request_error",
        503 => "service_unavailable_error",
        _ => "server_error",
    };
    let code = match error {
        ServerError::ModelNotFound(_) => json!("model_not_found"),
        ServerError::RouteNotFound => json!("unknown_url"),
        ServerError::Timeout(_) => json!("timeout"),
        _ => Value::Null,
    };
    // (bounded, as the DLC envelope's message is)
    let message = cut(&error.to_string(), 4096);
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}
