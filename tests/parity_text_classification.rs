//! Golden parity: every request recorded from the Python `transformers` pipelines (see
//! models/make_fixtures.py) sent to the real binary; same labels and shapes, scores within 1e-4.
//! Each file is replayed twice: one request at a time, then all at once, so that requests share
//! padded batches and masking is exercised against the unbatched reference.

mod common;

use common::{repo_path, Server};
use serde_json::Value;

/// HF_TASK unset: the task is inferred from config.json, as the DLC does.
fn replay(golden: &str, model_dir: std::path::PathBuf) {
    common::replay_golden(golden, &model_dir, &[]);
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
