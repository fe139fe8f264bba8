//! Golden parity: every request recorded from the Python `transformers` pipelines (see
//! models/make_fixtures.py) sent to the real binary; same labels and shapes, scores within 1e-4.
//! Each file is replayed twice: one request at a time, then all at once, so that requests share
//! padded batches and masking is exercised against the unbatched reference.

mod common;

use common::{assert_close, repo_path, Server};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn replay(golden: &str, model_dir: std::path::PathBuf) {
    let text = std::fs::read_to_string(repo_path(golden)).unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    let records = golden["records"].as_array().unwrap().clone();
    // HF_TASK unset: the task is inferred from config.json, as the DLC does.
    let server = Server::start(&model_dir, &[]);

    let check = |i: usize, record: &Value, response: common::Response| {
        let request = record["request"].to_string();
        match record.get("response") {
            Some(want) => {
                assert_eq!(response.status, 200, "{request}: {}", response.text());
                assert_close(
                    &response.json(),
                    want,
                    TOLERANCE,
                    &format!("record {i} {request}"),
                );
            }
            None => {
                let message = response.envelope(400);
                assert!(!message.is_empty(), "{request}");
            }
        }
    };

    for (i, record) in records.iter().enumerate() {
        check(
            i,
            record,
            server.invoke_json(&record["request"].to_string()),
        );
    }
    let port = server.port;
    let handles: Vec<_> = records
        .iter()
        .cloned()
        .map(|record| {
            std::thread::spawn(move || {
                let body = record["request"].to_string();
                let r = common::request(
                    port,
                    "POST",
                    "/invocations",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                );
                (record, r)
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (record, response) = handle.join().unwrap();
        check(i, &record, response);
    }
}

#[test]
fn bert_matches_transformers() {
    replay(
        "models/golden/text-classification/bert-cls.json",
        repo_path("models/tiny/bert-cls"),
    );
}

#[test]
fn distilbert_matches_transformers() {
    replay(
        "models/golden/text-classification/distilbert-cls.json",
        repo_path("models/tiny/distilbert-cls"),
    );
}

#[test]
fn roberta_matches_transformers() {
    replay(
        "models/golden/text-classification/roberta-cls.json",
        repo_path("models/tiny/roberta-cls"),
    );
}

#[test]
fn xlm_roberta_matches_transformers() {
    replay(
        "models/golden/text-classification/xlm-roberta-cls.json",
        repo_path("models/tiny/xlm-roberta-cls"),
    );
}

#[test]
fn real_minilm_classifier_matches_transformers() {
    replay(
        "models/golden/text-classification/minilm-l6-cls.json",
        common::minilm_cls(),
    );
}

/// The same BERT classifier saved as a PyTorch pickle and as sharded safetensors (with the index)
/// serves exactly what the single safetensors file serves.
#[test]
fn pytorch_bin_and_sharded_safetensors_load_the_same_model() {
    let reference = Server::start(&repo_path("models/tiny/bert-cls"), &[]);
    let bodies = [
        r#"{"inputs": ["I love this!", "I hate this.", "J’adore ça 😀"], "parameters": {"top_k": null}}"#,
        r#"{"inputs": {"text": "Is it good?", "text_pair": "It is great."}}"#,
    ];
    let want: Vec<Value> = bodies
        .iter()
        .map(|b| reference.invoke_json(b).json())
        .collect();
    for layout in [
        "models/tiny/bert-cls-pytorch-bin",
        "models/tiny/bert-cls-sharded",
    ] {
        let server = Server::start(&repo_path(layout), &[]);
        for (body, want) in bodies.iter().zip(&want) {
            assert_eq!(&server.invoke_json(body).json(), want, "{layout}: {body}");
        }
    }
}
