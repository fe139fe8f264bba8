//! TGI's (text-generation-inference's) generation routes on a text-generation model:
//! `POST /generate` (`{"generated_text", "details"}`) and `POST /generate_stream` (server-sent
//! events, one per token, the last with `generated_text` and `details`), with TGI's parameters
//! and defaults where they differ from the pipeline's: greedy unless `do_sample`, no top-k unless
//! asked, `max_new_tokens` 100, `return_full_text` false, a stop sequence kept at the end of the
//! text. `details` adds every token (id, text, log-probability, special) and the finish reason,
//! count and seed; `top_n_tokens` the most likely alternatives at each step; `grammar` a JSON
//! schema or regex the text follows. Errors are TGI's `{"error", "error_type"}`, with TGI's 422
//! for a request that does not validate and the server's usual statuses otherwise.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::AppState;
use crate::error::{cut, ServerError};
use crate::generation::choices::{ChoiceOptions, Choices, Finish, GeneratedToken};
use crate::generation::sse::{send_text, StreamEvent, StreamFailure};
use crate::generation::TextGeneration;
use crate::tasks::params::json_type;

/// TGI's default `max_new_tokens`.
const DEFAULT_MAX_NEW_TOKENS: u64 = 100;

/// `POST /generate`, or (`stream`) `POST /generate_stream`.
pub async fn generate(state: &AppState, request: Request, stream: bool) -> Response {
    match answer(state, request, stream).await {
        Ok(response) => response,
        Err(error) => {
            // TGI answers a request it cannot validate with 422, not 400.
            let status = match error.status() {
                StatusCode::BAD_REQUEST => StatusCode::UNPROCESSABLE_ENTITY,
                status => status,
            };
            if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), "{error}");
            }
            let body = error_json(&error).to_string();
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// A TGI request, read.
struct TgiRequest {
    inputs: String,
    parameters: Value,
    options: ChoiceOptions,
    details: bool,
    return_full_text: bool,
    top_n_tokens: usize,
}

async fn answer(state: &AppState, request: Request, stream: bool) -> Result<Response, ServerError> {
    let (parts, body) = request.into_parts();
    let service = state.service(None, &parts.headers)?;
    let body = super::read_json(state, &parts.headers, body).await?;
    let request = parse(body, stream)?;
    let generation = service.text_generation()?.clone();
    let TgiRequest {
        inputs,
        parameters,
        options,
        details,
        return_full_text,
        top_n_tokens,
    } = request;
    let prepared = crate::offload::cpu_work(crate::offload::ALWAYS, {
        let generation = generation.clone();
        move || generation.prepare_choices(Value::String(inputs), parameters, options)
    })
    .await?;
    let seed = prepared.seed();
    let choices = generation.start_choices(prepared, service.timeout())?;
    let shape = Shape {
        seed,
        details,
        return_full_text,
        top_n_tokens,
    };
    if stream {
        return Ok(super::event_stream(shape.stream(choices)));
    }
    let body = shape.whole(choices).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

/// Reads `{"inputs": "...", "parameters": {...}}` into the pipeline's parameters and options.
fn parse(body: Value, stream: bool) -> Result<TgiRequest, ServerError> {
    let Value::Object(mut body) = body else {
        return Err(ServerError::bad_request(format!(
            "the request body must be {{\"inputs\": \"...\", \"parameters\": {{...}}}}, got {}",
            json_type(&body)
        )));
    };
    let inputs = match body.remove("inputs") {
        Some(Value::String(text)) => text,
        other => {
            return Err(ServerError::bad_request(format!(
                "`inputs` must be a string, got {}",
                other.as_ref().map_or("nothing", json_type)
            )))
        }
    };
    let mut p = match body.remove("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(other) => {
            return Err(ServerError::bad_request(format!(
                "`parameters` must be an object, got {}",
                json_type(&other)
            )))
        }
    };
    let flag = |p: &mut Map<String, Value>, key: &str| match p.remove(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(ServerError::bad_request(format!(
            "`{key}` must be true or false, got {}",
            cut(&other.to_string(), 100)
        ))),
    };
    // (TGI's clients send unset parameters as null: the same as absent)
    p.retain(|_, v| !v.is_null());
    let details = flag(&mut p, "details")?;
    let decoder_input_details = flag(&mut p, "decoder_input_details")?;
    if decoder_input_details && stream {
        return Err(ServerError::bad_request(
            "decoder_input_details == true is not supported when streaming tokens",
        ));
    }
    if flag(&mut p, "watermark")? {
        return Err(ServerError::bad_request("watermark is not supported"));
    }
    for key in ["adapter_id", "truncate"] {
        if p.remove(key).is_some_and(|v| !v.is_null()) {
            return Err(ServerError::bad_request(format!(
                "`{key}` is not supported yet by this server"
            )));
        }
    }
    match p.remove("best_of") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(_) => return Err(ServerError::bad_request("best_of is not supported yet")),
    }
    let number = |p: &mut Map<String, Value>, key: &str| -> Result<Option<f64>, ServerError> {
        match p.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(ServerError::bad_request(format!(
                "`{key}` must be a number, got {}",
                cut(&other.to_string(), 100)
            ))),
        }
    };
    let top_n_tokens = number(&mut p, "top_n_tokens")?.map_or(0, |n| n.max(0.0) as usize);
    let frequency_penalty = number(&mut p, "frequency_penalty")?.unwrap_or(0.0) as f32;
    let return_full_text = p
        .get("return_full_text")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    p.insert("return_full_text".into(), json!(false));
    p.insert("num_beams".into(), json!(1));
    let sampling = p.get("do_sample").and_then(Value::as_bool).unwrap_or(false);
    p.entry("do_sample").or_insert(json!(false));
    p.entry("top_k").or_insert(json!(0));
    p.entry("max_new_tokens")
        .or_insert(json!(DEFAULT_MAX_NEW_TOKENS));
    if sampling && p.get("seed").is_none_or(Value::is_null) {
        // TGI reports the seed a sampled sequence used: one is drawn here so it can be.
        p.insert("seed".into(), json!(rand::random::<u32>()));
    }
    let stop = match p.remove("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .into_iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
            .collect(),
        Some(other) => {
            return Err(ServerError::bad_request(format!(
                "`stop` must be a list of strings, got {}",
                cut(&other.to_string(), 100)
            )))
        }
    };
    Ok(TgiRequest {
        inputs,
        parameters: Value::Object(p),
        options: ChoiceOptions {
            n: 1,
            stop,
            keep_stop: true,
            logprobs: (top_n_tokens > 0).then_some(top_n_tokens),
            frequency_penalty,
            prompt_logprobs: details && decoder_input_details,
            ..ChoiceOptions::default()
        },
        details,
        return_full_text,
        top_n_tokens,
    })
}

/// How the answer is shaped.
struct Shape {
    seed: Option<u64>,
    details: bool,
    return_full_text: bool,
    top_n_tokens: usize,
}

impl Shape {
    fn token(generation: &TextGeneration, id: u32, logprob: f32) -> Value {
        let (text, special) = generation.token_text(id);
        json!({"id": id, "text": text, "logprob": logprob, "special": special})
    }

    fn top_tokens(&self, generation: &TextGeneration, token: &GeneratedToken) -> Value {
        let top = token.model_logprobs.as_ref().map(|l| l.top.as_slice());
        let top = top.unwrap_or_default();
        top.iter()
            .map(|&(id, logprob)| Self::token(generation, id, logprob))
            .collect()
    }

    /// The text TGI answers with: the new text, after the prompt with `return_full_text`.
    fn generated_text(&self, choices: &Choices) -> String {
        if !self.return_full_text {
            return choices.text(0).to_string();
        }
        format!("{}{}", choices.prompt_text(), choices.text(0))
    }

    async fn whole(&self, mut choices: Choices) -> Result<Value, ServerError> {
        choices.finish_all().await?;
        let generation = choices.generation().clone();
        let mut answer = json!({"generated_text": self.generated_text(&choices)});
        if self.details {
            let tokens = choices.tokens(0);
            let mut details = json!({
                "finish_reason": finish_name(choices.finish(0)),
                "generated_tokens": tokens.len(),
                "seed": self.seed,
                "prefill": prefill(&generation, &choices),
                "tokens": tokens
                    .iter()
                    .map(|t| Self::token(&generation, t.id, t.logprob))
                    .collect::<Vec<_>>(),
            });
            if self.top_n_tokens > 0 {
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|t| self.top_tokens(&generation, t))
                    .collect();
                details["top_tokens"] = Value::Array(top);
            }
            answer["details"] = details;
        }
        Ok(answer)
    }

    /// One event per token (`data:{...}`), the last with `generated_text` and `details`.
    fn stream(self, mut choices: Choices) -> mpsc::Receiver<StreamEvent> {
        let (events, out) = mpsc::channel(64);
        tokio::spawn(async move {
            let generation = choices.generation().clone();
            loop {
                let progress = match choices.next().await {
                    Ok(Some(progress)) => progress,
                    Ok(None) => return,
                    Err(error) => {
                        let failure = StreamFailure {
                            message: error.to_string(),
                            timed_out: matches!(error, ServerError::Timeout(_)),
                        };
                        let text = format!("data:{}\n\n", error_json(&error));
                        let event = StreamEvent {
                            text,
                            failure: Some(failure),
                        };
                        let _ = events.send(event).await;
                        return;
                    }
                };
                let token = &progress.token;
                let (_, special) = generation.token_text(token.id);
                let count = choices.tokens(0).len();
                let mut event = json!({
                    "index": count - 1,
                    "token": {"id": token.id, "text": progress.piece, "logprob": token.logprob, "special": special},
                    "generated_text": null,
                    "details": null,
                });
                if self.top_n_tokens > 0 {
                    event["top_tokens"] = self.top_tokens(&generation, token);
                }
                if let Some(finish) = progress.finish {
                    event["generated_text"] = json!(self.generated_text(&choices));
                    event["details"] = json!({
                        "finish_reason": finish_name(Some(finish)),
                        "generated_tokens": count,
                        "seed": self.seed,
                        "input_length": choices.prompt_ids().len(),
                    });
                }
                let text = format!("data:{event}\n\n");
                let last = progress.finish.is_some();
                if !send_text(&events, text).await || last {
                    return;
                }
            }
        });
        out
    }
}

/// TGI's `prefill` (with `decoder_input_details`): every prompt token with its id, text and
/// log-probability after the ones before it (none for the first).
fn prefill(generation: &TextGeneration, choices: &Choices) -> Value {
    let Some(logprobs) = choices.prompt_logprobs() else {
        return json!([]);
    };
    let ids = choices.prompt_ids();
    let scores = std::iter::once(None).chain(logprobs.iter().map(|&l| Some(l)));
    ids.iter()
        .zip(scores)
        .map(|(&id, logprob)| json!({"id": id, "text": generation.token_text(id).0, "logprob": logprob}))
        .collect()
}

fn finish_name(finish: Option<Finish>) -> &'static str {
    match finish {
        Some(Finish::EosToken) => "eos_token",
        Some(Finish::StopSequence) => "stop_sequence",
        Some(Finish::Length) | None => "length",
    }
}

/// TGI's error body: `{"error", "error_type"}`.
fn error_json(error: &ServerError) -> Value {
    let kind = match error.status().as_u16() {
        400..=499 => "validation",
        503 => "overloaded",
        _ => "generation",
    };
    json!({"error": cut(&error.to_string(), 4096), "error_type": kind})
}
