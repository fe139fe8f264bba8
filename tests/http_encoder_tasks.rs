//! The encoder tasks through the real binary: task inference, the input forms each task takes
//! (CSV included), and bad inputs answered with a 400 envelope that says what is wrong.

mod common;

use common::{repo_path, Server};
use serde_json::{json, Value};

fn tiny(name: &str) -> std::path::PathBuf {
    repo_path(&format!("models/tiny/{name}"))
}

/// Sends `body` and expects a 400 whose message contains `needle`.
fn refused(server: &Server, body: Value, needle: &str) {
    let response = server.invoke_json(&body.to_string());
    let message = response.envelope(400);
    assert!(
        message.contains(needle),
        "{body}: expected a 400 mentioning {needle:?}, got {message:?}"
    );
}

fn csv(server: &Server, body: &str) -> common::Response {
    server.request(
        "POST",
        "/invocations",
        &[("Content-Type", "text/csv")],
        body.as_bytes(),
    )
}

#[test]
fn question_answering_inputs_and_errors() {
    // ForQuestionAnswering infers question-answering, as in the DLC.
    let server = Server::start(&tiny("bert-qa"), &[]);
    let context = "The food was great but the service was slow.";
    let wrapped = server.invoke_json(
        &json!({"inputs": {"question": "How was the food?", "context": context}}).to_string(),
    );
    let bare = server
        .invoke_json(&json!({"question": "How was the food?", "context": context}).to_string());
    assert_eq!(wrapped.status, 200, "{}", wrapped.text());
    assert_eq!(wrapped.json(), bare.json());
    let answer = wrapped.json();
    let (start, end) = (
        answer["start"].as_u64().unwrap() as usize,
        answer["end"].as_u64().unwrap() as usize,
    );
    assert_eq!(answer["answer"], context[start..end], "{answer}");

    // CSV with a question,context header: one answer per row.
    let response = csv(
        &server,
        &format!("question,context\nHow was the food?,{context}\nWhat was slow?,{context}\n"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json().as_array().unwrap().len(), 2);

    refused(
        &server,
        json!({"inputs": {"context": context}}),
        "{question:..., context:...}",
    );
    refused(
        &server,
        json!({"inputs": {"question": "", "context": context}}),
        "`question` cannot be empty",
    );
    refused(
        &server,
        json!({"inputs": {"question": 3, "context": context}}),
        "`question` must be a string",
    );
    refused(
        &server,
        json!({"inputs": "just text"}),
        "question-answering takes",
    );
    refused(
        &server,
        json!({"inputs": {"question": "q", "context": context}, "parameters": {"top_k": "two"}}),
        "top_k",
    );
    refused(
        &server,
        json!({"inputs": {"question": "q", "context": context}, "parameters": {"doc_stride": 100, "max_seq_len": 20}}),
        "larger than `max_seq_len`",
    );
}

#[test]
fn fill_mask_errors() {
    let server = Server::start(&tiny("roberta-mlm"), &[]);
    let ok = server.invoke_json(r#"{"inputs": "I <mask> this movie."}"#);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json().as_array().unwrap().len(), 5);
    refused(
        &server,
        json!({"inputs": "I [MASK] this."}),
        "No mask_token (<mask>) found on the input",
    );
    refused(&server, json!({"inputs": {"text": "x"}}), "fill-mask takes");
    refused(
        &server,
        json!({"inputs": "I <mask> it", "parameters": {"targets": 5}}),
        "targets",
    );
    refused(
        &server,
        json!({"inputs": "I <mask> it", "parameters": {"temperature": 1}}),
        "unknown parameter `temperature`",
    );
}

#[test]
fn zero_shot_errors_and_csv_refusal() {
    let server = Server::start(
        &tiny("bert-nli"),
        &[("HF_TASK", "zero-shot-classification")],
    );
    let ok = server.invoke_json(
        &json!({"inputs": "the food was great", "parameters": {"candidate_labels": ["food", "music", "sports"]}})
            .to_string(),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let scores: f64 = ok.json()["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .sum();
    assert!((scores - 1.0).abs() < 1e-5, "{}", ok.text());

    refused(&server, json!({"inputs": "x"}), "candidate_labels");
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"candidate_labels": []}}),
        "at least one label",
    );
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"candidate_labels": ",,"}}),
        "at least one label",
    );
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"candidate_labels": [1, 2]}}),
        "candidate_labels",
    );
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"candidate_labels": ["a"], "hypothesis_template": "none"}}),
        "hypothesis_template",
    );
    refused(
        &server,
        json!({"inputs": 7, "parameters": {"candidate_labels": ["a"]}}),
        "zero-shot-classification takes",
    );
    let response = csv(&server, "inputs\nthe food was great\n");
    assert!(response
        .envelope(400)
        .contains("content type text/csv not support with zero-shot-classification"));
}

#[test]
fn token_classification_and_feature_extraction_errors() {
    let server = Server::start(&tiny("distilbert-ner"), &[]);
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"aggregation_strategy": "bogus"}}),
        "aggregation_strategy",
    );
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"stride": 4, "aggregation_strategy": "none"}}),
        "`stride` was provided",
    );
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"stride": 64, "aggregation_strategy": "first"}}),
        "`stride` must be less than",
    );
    refused(
        &server,
        json!({"inputs": [1]}),
        "token-classification takes",
    );
    // CSV `inputs` column: one entity list per row.
    let response = csv(&server, "inputs\nI love this\nthe food was great\n");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json().as_array().unwrap().len(), 2);
    drop(server);

    let server = Server::start(&tiny("bert-st"), &[("HF_TASK", "feature-extraction")]);
    let long = vec!["word"; 100].join(" ");
    refused(&server, json!({"inputs": long}), "truncation");
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"truncation": true, "tokenize_kwargs": {"truncation": true}}}),
        "truncation parameter defined twice",
    );
}

#[test]
fn sentence_tasks_on_the_real_minilm() {
    let minilm = repo_path("models/all-MiniLM-L6-v2");
    // HF_TASK unset and architectures = BertModel: the DLC gives up; modules.json marks a
    // sentence-transformers model, so it is served as sentence-embeddings.
    let server = Server::start(&minilm, &[]);
    let response = server.invoke_json(r#"{"inputs": "A man is eating food."}"#);
    assert_eq!(response.status, 200, "{}", response.text());
    let embedding = response.json()["embeddings"].as_array().unwrap().clone();
    assert_eq!(embedding.len(), 384);
    let norm: f64 = embedding
        .iter()
        .map(|v| v.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
    refused(
        &server,
        json!({"inputs": {"a": 1}}),
        "sentence-embeddings takes",
    );
    refused(
        &server,
        json!({"inputs": "x", "parameters": {"normalize": false}}),
        "unknown parameter",
    );
    drop(server);

    let server = Server::start(&minilm, &[("HF_TASK", "sentence-similarity")]);
    let response = server.invoke_json(
        r#"{"inputs": {"source_sentence": "A man is eating food.", "sentences": ["A man is eating a piece of bread.", "The girl is carrying a baby."]}}"#,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let similarities = response.json()["similarities"].clone();
    let s: Vec<f64> = similarities
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        (s[0] - 0.7553).abs() < 1e-4 && (s[1] + 0.1050).abs() < 1e-4,
        "{s:?}"
    );
    refused(
        &server,
        json!({"inputs": {"source_sentence": "x"}}),
        "source_sentence",
    );
}

#[test]
fn sentence_ranking_shapes() {
    let server = Server::start(&tiny("bert-ranker"), &[("HF_TASK", "text-ranking")]);
    let one = server.invoke_json(r#"{"inputs": ["good food", "the food was great"]}"#);
    assert_eq!(one.status, 200, "{}", one.text());
    assert!(one.json()["scores"].is_f64(), "{}", one.text());
    let ranked = server.invoke_json(
        r#"{"inputs": {"query": "good food", "texts": ["slow service", "the food was great", "tasty"], "return_documents": true}}"#,
    );
    let ranked = ranked.json();
    let items = ranked.as_array().unwrap();
    assert_eq!(items.len(), 3);
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted: {ranked}");
    for item in items {
        let index = item["index"].as_u64().unwrap() as usize;
        assert_eq!(
            item["text"],
            ["slow service", "the food was great", "tasty"][index]
        );
    }
    refused(&server, json!({"inputs": "q"}), "sentence-ranking takes");
    refused(
        &server,
        json!({"inputs": [["q"]]}),
        "sentence-ranking takes",
    );
}

#[test]
fn unsupported_architecture_fails_at_start_up_with_the_supported_list() {
    let dir = std::env::temp_dir().join(format!("funnel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(tiny("bert-ner").join(file), dir.join(file)).unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["FunnelForTokenClassification"], "model_type": "funnel"}"#,
    )
    .unwrap();
    let server = Server::spawn(dir.to_str().unwrap(), &[]);
    let (code, output) = server.wait_exit(std::time::Duration::from_secs(30));
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("model_type `funnel` is not supported") && output.contains("distilbert"),
        "{output}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
