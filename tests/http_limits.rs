//! Bounded input, whatever arrives: every task refuses an input longer than the model's
//! positions or `MAX_INPUT_TOKENS` with a 400 before any work (models with relative positions
//! only — T5, DeBERTa-v3 — have a default bound, 4096 tokens), and truncates instead where the
//! request asks for it.

mod common;

use std::time::{Duration, Instant};

use common::{repo_path, Server};
use serde_json::json;

fn words(n: usize) -> String {
    vec!["good"; n].join(" ")
}

#[test]
fn t5_inputs_are_bounded_by_default_and_by_max_input_tokens() {
    // T5's relative positions set no limit of their own: 24 KB of text used to grow the
    // process to ~20 GB. Now it is a 400 at once, by the default bound.
    let server = Server::start(
        &repo_path("models/tiny/t5-lm"),
        &[("HF_TASK", "text2text-generation")],
    );
    let started = Instant::now();
    let message = server
        .invoke_json(&json!({"inputs": words(6000)}).to_string())
        .envelope(400);
    assert!(
        message.contains("at most 4096") && message.contains("truncation"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Within the bound it runs.
    let ok = server.invoke_json(
        &json!({"inputs": words(20), "parameters": {"max_new_tokens": 2}}).to_string(),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    drop(server);

    let server = Server::start(
        &repo_path("models/tiny/t5-lm"),
        &[
            ("HF_TASK", "text2text-generation"),
            ("MAX_INPUT_TOKENS", "16"),
        ],
    );
    let message = server
        .invoke_json(&json!({"inputs": words(40)}).to_string())
        .envelope(400);
    assert!(message.contains("at most 16"), "{message}");
    let truncated = server.invoke_json(
        &json!({"inputs": words(40), "parameters": {"truncation": true, "max_new_tokens": 2}})
            .to_string(),
    );
    assert_eq!(truncated.status, 200, "{}", truncated.text());
}

#[test]
fn encoder_and_decoder_inputs_honour_max_input_tokens() {
    let server = Server::start(
        &repo_path("models/tiny/bert-cls"),
        &[("MAX_INPUT_TOKENS", "8")],
    );
    let message = server
        .invoke_json(&json!({"inputs": words(20)}).to_string())
        .envelope(400);
    assert!(message.contains("at most 8"), "{message}");
    let ok = server
        .invoke_json(&json!({"inputs": words(20), "parameters": {"truncation": true}}).to_string());
    assert_eq!(ok.status, 200, "{}", ok.text());
    drop(server);

    let server = Server::start(
        &repo_path("models/tiny/llama-lm"),
        &[("HF_TASK", "text-generation"), ("MAX_INPUT_TOKENS", "8")],
    );
    let message = server
        .invoke_json(&json!({"inputs": words(20)}).to_string())
        .envelope(400);
    assert!(message.contains("MAX_INPUT_TOKENS"), "{message}");
}
