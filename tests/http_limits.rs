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

/// Large requests' CPU work (parsing, tokenizing, shaping the answer) runs off the async
/// runtime's threads: `/ping` stays fast while two 6 MB bodies are tokenized (it used to wait for
/// them, and SageMaker's health check gives up after 2 s).
#[test]
fn ping_stays_fast_while_large_requests_are_tokenized() {
    let server = Server::start(&repo_path("models/minilm-l6-cls"), &[]);
    let port = server.port;
    let body = json!({"inputs": words(1_200_000)}).to_string();
    assert!(body.len() > 5_000_000 && body.len() < 6_500_000);
    let started = Instant::now();
    let heavy: Vec<_> = (0..2)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                let answer = common::request(
                    port,
                    "POST",
                    "/invocations",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                );
                (answer.status, Instant::now())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut pings = 0;
    while !heavy.iter().all(|h| h.is_finished()) {
        let asked = Instant::now();
        let ping = common::request(port, "GET", "/ping", &[], b"");
        assert_eq!(ping.status, 200);
        slowest = slowest.max(asked.elapsed());
        pings += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut busy = Duration::ZERO;
    for h in heavy {
        let (status, done) = h.join().unwrap();
        // Longer than the model's 512 positions: a 400, after tokenizing all of it.
        assert_eq!(status, 400);
        busy = busy.max(done - started);
    }
    eprintln!("heavy requests took {busy:?}; {pings} pings, slowest {slowest:?}");
    assert!(
        pings >= 5,
        "the requests were too quick to test anything: {busy:?}"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a ping took {slowest:?} while the requests took {busy:?}"
    );
}
