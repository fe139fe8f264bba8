//! text-generation through the real binary: server-sent events that arrive while the sequence
//! is still being generated, client disconnects that take the sequence out of the batch,
//! sampling controls, stop sequences, and bad parameters (400 envelopes).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{repo_path, Server};
use serde_json::{json, Value};

fn smollm2() -> Server {
    Server::start(&common::smollm2(), &[("RUST_LOG", "info")])
}

/// Each body gets a 400 envelope whose message names what is wrong.
fn assert_400s(server: &Server, cases: &[(Value, &str)]) {
    for (body, fragment) in cases {
        let message = server.invoke_json(&body.to_string()).envelope(400);
        assert!(message.contains(fragment), "{body}: {message}");
    }
}

/// Opens a streaming request and returns a reader positioned after the response head.
fn open_stream(port: u16, body: &Value) -> (BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.to_string();
    write!(
        stream,
        "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    (reader, head)
}

/// The next `data:` event of a chunked SSE body (None at the end).
fn next_event(reader: &mut BufReader<TcpStream>) -> Option<Value> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            return Some(serde_json::from_str(data).unwrap());
        }
        if line.trim_end() == "0" {
            return None; // last chunk
        }
    }
}

#[test]
fn streamed_tokens_arrive_while_the_sequence_is_generated() {
    let server = smollm2();
    let parameters = json!({"max_new_tokens": 40, "return_full_text": false});
    let started = Instant::now();
    let (mut reader, head) = open_stream(
        server.port,
        &json!({"inputs": "Once upon a time", "parameters": parameters, "stream": true}),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let first = next_event(&mut reader).expect("a first event");
    let first_at = started.elapsed();
    let mut events = vec![first];
    while let Some(event) = next_event(&mut reader) {
        events.push(event);
    }
    let done_at = started.elapsed();
    assert_eq!(events.len(), 40);
    // The first token came long before the last: events are sent as tokens are made.
    assert!(
        first_at * 3 < done_at,
        "first event at {first_at:?}, end at {done_at:?}"
    );
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["index"], i);
        assert!(event["token"]["id"].is_u64());
        assert!(event["token"]["logprob"].as_f64().unwrap() <= 0.0);
    }
    let last = events.last().unwrap();
    assert_eq!(last["details"]["finish_reason"], "length");
    assert_eq!(last["details"]["generated_tokens"], 40);
    // The pieces add up to the final text, which is what the same request answers unstreamed.
    let pieces: String = events
        .iter()
        .map(|e| e["token"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(last["generated_text"].as_str().unwrap(), pieces);
    let plain = server
        .invoke_json(&json!({"inputs": "Once upon a time", "parameters": parameters}).to_string())
        .json();
    assert_eq!(plain[0]["generated_text"], last["generated_text"]);
}

#[test]
fn a_client_that_goes_away_takes_its_sequence_out_of_the_batch() {
    let server = smollm2();
    let (mut reader, _) = open_stream(
        server.port,
        &json!({"inputs": "Write a long story.", "parameters": {"max_new_tokens": 2000}, "stream": true}),
    );
    assert!(next_event(&mut reader).is_some());
    drop(reader); // the client disconnects mid-stream
                  // A request after it is served at once (the long sequence does not hold the batch).
    let started = Instant::now();
    let answer = server.invoke_json(
        r#"{"inputs": "The capital of France is", "parameters": {"max_new_tokens": 4}}"#,
    );
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() < Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let log = server.stop();
    assert!(
        log.contains("a sequence left the batch") && log.contains("of 2000 tokens"),
        "{log}"
    );
}

#[test]
fn stop_sequences_seeds_and_return_sequences() {
    let server = smollm2();
    let ask = |body: Value| server.invoke_json(&body.to_string());
    let stopped = ask(
        json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 20, "stop": ["."]}}),
    );
    assert_eq!(
        stopped.json(),
        json!([{"generated_text": "The capital of France is Paris."}])
    );
    let sampled = |seed: u64| {
        ask(json!({"inputs": "My favourite food is", "parameters": {
            "do_sample": true, "temperature": 1.5, "top_p": 0.95, "max_new_tokens": 12,
            "seed": seed, "num_return_sequences": 2}}))
        .json()
    };
    let a = sampled(1);
    assert_eq!(a.as_array().unwrap().len(), 2);
    assert_eq!(a, sampled(1), "the same seed draws the same text");
    assert_ne!(a, sampled(2));
    assert_ne!(a[0], a[1], "each return sequence draws its own text");
}

/// Beam searches share the scheduler's steps with greedy sequences: both answer as they do alone.
#[test]
fn beam_searches_and_greedy_sequences_decode_together() {
    let server = smollm2();
    let beams = json!({"inputs": "The capital of France is",
        "parameters": {"max_new_tokens": 12, "num_beams": 4, "num_return_sequences": 2}});
    let greedy = json!({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 24}});
    let alone = (
        server.invoke_json(&beams.to_string()).json(),
        server.invoke_json(&greedy.to_string()).json(),
    );
    assert_eq!(alone.0.as_array().unwrap().len(), 2);
    assert_ne!(alone.0[0], alone.0[1], "two distinct hypotheses");
    assert!(alone.0[0]["generated_text"]
        .as_str()
        .unwrap()
        .contains("Paris"));
    let together: Vec<(Value, Value)> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let b = scope.spawn(|| server.invoke_json(&beams.to_string()).json());
                    let g = server.invoke_json(&greedy.to_string()).json();
                    (b.join().unwrap(), g)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for pair in together {
        assert_eq!(pair, alone);
    }
    // Beam sampling: a seed repeats the draw.
    let sampled = |seed: u64| {
        server
            .invoke_json(
                &json!({"inputs": "My favourite food is", "parameters": {
                "max_new_tokens": 10, "num_beams": 3, "do_sample": true, "seed": seed,
                "num_return_sequences": 3}})
                .to_string(),
            )
            .json()
    };
    let a = sampled(11);
    assert_eq!(a.as_array().unwrap().len(), 3);
    assert_eq!(a, sampled(11));
}

#[test]
fn bad_generation_requests_get_a_400_envelope() {
    let server = Server::start(
        &repo_path("models/tiny/llama-lm"),
        &[("HF_TASK", "text-generation")],
    );
    assert_400s(
        &server,
        &[
            (json!({"inputs": 5}), "inputs"),
            (json!({"inputs": []}), "inputs"),
            (
                json!({"inputs": "hi", "parameters": {"max_new_tokens": "ten"}}),
                "max_new_tokens",
            ),
            (
                json!({"inputs": "hi", "parameters": {"max_new_tokens": 0}}),
                "max_new_tokens",
            ),
            (
                json!({"inputs": "hi", "parameters": {"do_sample": true, "temperature": 0}}),
                "temperature",
            ),
            (json!({"inputs": "hi", "parameters": {"top_p": 2}}), "top_p"),
            (
                json!({"inputs": "hi", "parameters": {"repetition_penalty": -1}}),
                "repetition_penalty",
            ),
            (json!({"inputs": "hi", "parameters": {"stop": 3}}), "stop"),
            (
                json!({"inputs": "hi", "parameters": {"beams": 3}}),
                "unknown parameter `beams`",
            ),
            (
                json!({"inputs": "hi", "parameters": {"num_beams": 1000}}),
                "from 1 to 32",
            ),
            (
                json!({"inputs": "hi there friend", "parameters": {"max_length": 2}}),
                "max_length",
            ),
            (
                json!({"inputs": "hi", "parameters": {"max_new_tokens": 500}}),
                "positions",
            ),
            (
                json!({"inputs": "hi", "parameters": {"max_new_tokens": u64::MAX}}),
                "positions",
            ),
            (
                json!({"inputs": ["a", "b"], "stream": true}),
                "streaming takes one prompt",
            ),
            (json!({"inputs": "hi", "stream": "yes"}), "stream"),
            (
                json!({"inputs": [{"role": "user", "content": "hi"}]}),
                "no chat template",
            ),
            (
                json!({"inputs": "hi", "parameters": {"num_return_sequences": 0, "do_sample": true}}),
                "num_return_sequences",
            ),
            (
                json!({"inputs": "hi", "parameters": {"min_new_tokens": 9, "max_new_tokens": 3}}),
                "min_new_tokens (9)",
            ),
            // More sequences than the queue holds: a 400 that says why, not a retryable 503.
            (json!({"inputs": vec!["hi"; 300]}), "300 sequences"),
            (
                json!({"inputs": "hi", "parameters": {"num_return_sequences": 257, "do_sample": true}}),
                "MAX_QUEUE",
            ),
        ],
    );
    // An unknown parameter's name is echoed cut short, never whole.
    let name = "x".repeat(100_000);
    let message = server
        .invoke_json(&json!({"inputs": "hi", "parameters": {name: 1}}).to_string())
        .envelope(400);
    assert!(
        message.contains("unknown parameter `xxx") && message.len() < 2000,
        "{} bytes",
        message.len()
    );
}

#[test]
fn encoder_decoder_tasks_refuse_what_they_cannot_do() {
    let server = Server::start(
        &repo_path("models/tiny/t5-tasks"),
        &[("HF_TASK", "summarization")],
    );
    assert_400s(
        &server,
        &[
            (
                json!({"inputs": "hi", "parameters": {"num_beams": 0}}),
                "num_beams",
            ),
            (
                json!({"inputs": "hi", "parameters": {"early_stopping": "sometimes"}}),
                "early_stopping",
            ),
            (
                json!({"inputs": "hi", "parameters": {"num_beams": 2}, "stream": true}),
                "num_beams 1",
            ),
            (
                json!({"inputs": [{"role": "user", "content": "hi"}]}),
                "a string or a non-empty list of strings",
            ),
            (
                json!({"inputs": "hi", "parameters": {"return_full_text": false}}),
                "unknown parameter `return_full_text`",
            ),
            (
                json!({"inputs": "hi", "parameters": {"min_length": "long"}}),
                "min_length",
            ),
        ],
    );
    // Streaming works for encoder–decoder models too; the model's default beams (this
    // summarization task asks for 4) give way to one streamed sequence.
    let (mut reader, head) = open_stream(
        server.port,
        &json!({"inputs": "I love this", "parameters": {"max_length": 8}, "stream": true}),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut events = Vec::new();
    while let Some(event) = next_event(&mut reader) {
        events.push(event);
    }
    assert_eq!(
        events.len(),
        7,
        "max_length 8 counts the decoder's start token"
    );
    let plain = server
        .invoke_json(
            r#"{"inputs": "I love this", "parameters": {"max_length": 8, "num_beams": 1}}"#,
        )
        .json();
    assert_eq!(
        events.last().unwrap()["generated_text"],
        plain[0]["summary_text"]
    );
}
