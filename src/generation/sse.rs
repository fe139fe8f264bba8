//! Server-sent events for `"stream": true` generation, in TGI's format: one `data:` message per
//! token (`{"index", "token": {"id", "text", "logprob", "special"}, "generated_text", "details"}`),
//! the last one with the whole `generated_text` and `details`; an error ends the stream with
//! `{"error": ...}`. A client that goes away ends its sequence at the next step.
//!
//! Each event keeps the bytes `/invocations` sends for it and, on the error event, why the
//! stream failed: the SageMaker runtime API's response stream reports that as its own
//! exception event (`http::runtime_api`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::job::{Event, FinishReason};
use super::pipeline::{find_stop, full_text, GenerationRequest, TextGeneration};
use crate::error::ServerError;

/// One server-sent event: the bytes `/invocations` sends (`data:{...}\n\n`) and, on the
/// error event that ends a failed stream, the failure.
#[derive(Debug)]
pub struct StreamEvent {
    pub text: String,
    pub failure: Option<StreamFailure>,
}

/// Sends one event's text; false when the client has gone (its receiver dropped).
pub async fn send_text(events: &mpsc::Sender<StreamEvent>, text: String) -> bool {
    events
        .send(StreamEvent {
            text,
            failure: None,
        })
        .await
        .is_ok()
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamFailure {
    pub message: String,
    /// The request's deadline passed (not a failure of the model).
    pub timed_out: bool,
}

impl TextGeneration {
    /// Server-sent events, TGI's format: one `data:` message per token, the last one with
    /// `generated_text` and `details`; an error ends the stream with `{"error": ...}`.
    pub fn stream(
        self: &Arc<Self>,
        request: GenerationRequest,
        deadline: Duration,
    ) -> Result<mpsc::Receiver<StreamEvent>, ServerError> {
        let sampling = self.sampling(&request.params, &request.prompts[0], 0)?;
        let prompt = request
            .prompts
            .into_iter()
            .next()
            .expect("one prompt when streaming");
        let mut receiver = self.generator.submit(prompt.ids.clone(), sampling)?;
        let (events, out) = mpsc::channel(64);
        let this = self.clone();
        let stop = request.params.stop;
        let return_full_text = request.params.return_full_text;
        let seed = request.params.sampling.seed;
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
                let next = match tokio::time::timeout(remaining, receiver.recv()).await {
                    Ok(Some(Event::Token {
                        id,
                        logprob,
                        finish,
                        ..
                    })) => Ok((id, logprob, finish)),
                    // (the pipeline never asks for the prompt's scores)
                    Ok(Some(Event::Prompt(_))) => continue,
                    // (`prepare` refuses to stream a beam search)
                    Ok(Some(Event::Sequences(_))) => {
                        Err(failed("a beam search's answer cannot be streamed".into()))
                    }
                    Ok(Some(Event::Failed(error))) => Err(failed(error.to_string())),
                    Ok(None) => Err(failed(
                        "the generation scheduler dropped the sequence".into(),
                    )),
                    Err(_) => Err(StreamFailure {
                        message: format!(
                            "the request did not finish within {} s",
                            deadline.as_secs()
                        ),
                        timed_out: true,
                    }),
                };
                let (id, logprob, finish) = match next {
                    Ok(token) => token,
                    Err(failure) => {
                        let text = format!("data:{}\n\n", json!({"error": failure.message}));
                        let failure = Some(failure);
                        let _ = events.send(StreamEvent { text, failure }).await;
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
                let text = message(ids.len() - 1, id, logprob, piece, end);
                // A client gone, or the end: dropping `receiver` takes the sequence out of the batch.
                if !send_text(&events, text).await || last {
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

fn failed(message: String) -> StreamFailure {
    StreamFailure {
        message,
        timed_out: false,
    }
}

fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::EosToken => "eos_token",
    }
}
