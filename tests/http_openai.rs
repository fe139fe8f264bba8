//! The LLM routes through real clients against the real binary on SmolLM2: the official
//! `openai` Python client (from the test venv `models/fetch_models.sh` makes) on
//! `/v1/chat/completions`, `/v1/completions` and `/v1/models`; `/invocations` with OpenAI
//! bodies; TGI's `/generate` and `/generate_stream` with `details`. Greedy text through every
//! route equals the pipeline's (`/invocations` with `inputs`) for the same prompt.
//! tests/openai_client.py makes each call.

mod common;

use common::Server;
use serde_json::{json, Value};

/// One call through tests/openai_client.py.
fn client(server: &Server, operation: &str, params: Value) -> Value {
    common::python_client(
        "openai_client.py",
        server.port,
        &json!({"operation": operation, "params": params}),
    )
}

fn chat(server: &Server, params: Value) -> Value {
    let answer = client(server, "chat", params);
    answer["response"].clone()
}

/// A POST through httpx: (status, body text).
fn post(server: &Server, path: &str, body: Value) -> (u64, String) {
    let answer = client(server, "post", json!({"path": path, "body": body}));
    (
        answer["status"].as_u64().unwrap(),
        answer["text"].as_str().unwrap().to_string(),
    )
}

/// The pipeline's greedy `generated_text` (new text only) for `inputs`.
fn pipeline_text(server: &Server, inputs: Value, max_new_tokens: usize) -> String {
    let parameters =
        json!({"max_new_tokens": max_new_tokens, "do_sample": false, "return_full_text": false});
    let body = json!({"inputs": inputs, "parameters": parameters});
    let answer = server.invoke_json(&body.to_string()).json();
    answer[0]["generated_text"].as_str().unwrap().to_string()
}

/// The `data:` payloads of a server-sent event body.
fn events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

#[test]
fn greedy_text_through_every_route_equals_the_pipelines() {
    let server = Server::start(&common::smollm2(), &[]);
    let models = client(&server, "models", json!({}));
    let model = models["response"]["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(model.contains("smollm2"), "{models}");
    let messages = json!([{"role": "user", "content": QUESTION}]);
    let want_chat = pipeline_text(&server, messages.clone(), 24);
    assert!(!want_chat.is_empty());

    let params = json!({"model": model, "messages": messages, "max_tokens": 24, "temperature": 0});
    let answer = chat(&server, params.clone());
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(answer["choices"][0]["message"]["content"], want_chat);
    let usage = &answer["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&completion), "{usage}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion
    );
    let finish = answer["choices"][0]["finish_reason"].as_str().unwrap();
    assert_eq!(finish, if completion < 24 { "stop" } else { "length" });

    // The same body on /invocations (TGI's and vLLM's SageMaker route) answers the same.
    let invoked = server.invoke_json(&params.to_string()).json();
    assert_eq!(invoked["object"], "chat.completion");
    assert_eq!(invoked["choices"][0]["message"]["content"], want_chat);

    // Streamed with the usage: the deltas add up to the same text.
    let mut streamed = params.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = client(&server, "chat", streamed)["chunks"].clone();
    let chunks = chunks.as_array().unwrap();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want_chat);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], answer["usage"]);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0].get("finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, vec![&json!(finish)]);

    // Completions, and TGI's routes, on a plain prompt.
    let prompt = "The three primary colors are";
    let want = pipeline_text(&server, json!(prompt), 16);
    let params = json!({"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0});
    let answer = client(&server, "completion", params.clone())["response"].clone();
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["choices"][0]["text"], want);
    let invoked = server.invoke_json(&params.to_string()).json();
    assert_eq!(invoked["choices"][0]["text"], want);
    let mut streamed = params;
    streamed["stream"] = json!(true);
    let chunks = client(&server, "completion", streamed)["chunks"].clone();
    let text: String = chunks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, want);

    let tgi = json!({"inputs": prompt, "parameters": {"max_new_tokens": 16, "details": true}});
    let (status, body) = post(&server, "/generate", tgi.clone());
    assert_eq!(status, 200, "{body}");
    let generated: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(generated["generated_text"], want);
    let details = &generated["details"];
    let tokens = details["tokens"].as_array().unwrap();
    assert_eq!(details["generated_tokens"], tokens.len());
    assert_eq!(details["seed"], Value::Null);
    assert!(["length", "eos_token"].contains(&details["finish_reason"].as_str().unwrap()));
    let joined: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(joined, want);
    for t in tokens {
        assert!(t["id"].is_u64() && t["special"] == false, "{t}");
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }
    let (status, body) = post(&server, "/generate_stream", tgi);
    assert_eq!(status, 200, "{body}");
    let stream: Vec<Value> = events(&body)
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(stream.len(), tokens.len());
    for (event, token) in stream.iter().zip(tokens) {
        assert_eq!(event["token"]["id"], token["id"]);
    }
    let last = stream.last().unwrap();
    assert_eq!(last["generated_text"], want);
    assert_eq!(last["details"]["generated_tokens"], tokens.len());
}

#[test]
fn n_seeds_stop_strings_logprobs_and_errors() {
    let server = Server::start(&common::smollm2(), &[]);
    let prompt = "Once upon a time, in a small village,";
    // n sampled sequences with a seed: three answers, the same again for the same seed.
    let sampled = json!({"model": "m", "prompt": prompt, "max_tokens": 12, "n": 3, "seed": 7, "temperature": 1.0});
    let first = client(&server, "completion", sampled.clone())["response"].clone();
    let again = client(&server, "completion", sampled)["response"].clone();
    let texts = |r: &Value| -> Vec<String> {
        let choices = r["choices"].as_array().unwrap();
        let indices: Vec<u64> = choices
            .iter()
            .map(|c| c["index"].as_u64().unwrap())
            .collect();
        assert_eq!(indices, [0, 1, 2]);
        choices
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&first), texts(&again));
    let distinct: std::collections::BTreeSet<String> = texts(&first).into_iter().collect();
    assert!(distinct.len() > 1, "{first}");
    assert_eq!(first["usage"]["completion_tokens"], 36);

    // A stop string ends the text just before it, streamed or not.
    let greedy = json!({"model": "m", "prompt": prompt, "max_tokens": 24, "temperature": 0});
    let full = client(&server, "completion", greedy.clone())["response"]["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() > 4, "{full}");
    let stop = format!(" {}", words[3]);
    let cut = &full[..full.find(&stop).unwrap()];
    let mut stopped = greedy.clone();
    stopped["stop"] = json!([stop, "never appears"]);
    let answer = client(&server, "completion", stopped.clone())["response"].clone();
    assert_eq!(answer["choices"][0]["text"], cut);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    let chunks = client(&server, "completion", stopped)["chunks"].clone();
    let text: String = chunks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, cut);

    // Log-probabilities: greedy picks the most likely token, the alternatives best first.
    let messages = json!([{"role": "user", "content": QUESTION}]);
    let params = json!({"model": "m", "messages": messages, "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let answer = chat(&server, params);
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(
        content.len(),
        answer["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{entry}");
        assert_eq!(entry["logprob"], top[0]["logprob"]);
        assert_eq!(entry["token"], top[0]["token"]);
        assert!(values[0] <= 0.0);
    }
    let with =
        json!({"model": "m", "prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 2});
    let logprobs =
        client(&server, "completion", with)["response"]["choices"][0]["logprobs"].clone();
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(logprobs["text_offset"][0], 0);

    // A frequency penalty changes a greedy answer that repeats itself.
    let repeat =
        json!({"model": "m", "prompt": "1, 1, 1, 1, 1, 1,", "max_tokens": 8, "temperature": 0});
    let plain =
        client(&server, "completion", repeat.clone())["response"]["choices"][0]["text"].clone();
    let mut penalised = repeat;
    penalised["frequency_penalty"] = json!(2.0);
    let changed =
        client(&server, "completion", penalised)["response"]["choices"][0]["text"].clone();
    assert_ne!(plain, changed);

    // Errors in OpenAI's shape, raised by the client as its own exceptions.
    let error = |params: Value| client(&server, "chat", params)["error"].clone();
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let functions = error(with("functions", json!([{"name": "f", "parameters": {}}])));
    assert_eq!(functions["class"], "BadRequestError");
    assert_eq!(functions["status"], 400);
    assert_eq!(functions["body"]["type"], "invalid_request_error");
    assert!(functions["body"]["message"]
        .as_str()
        .unwrap()
        .contains("`functions`"));
    let hot = error(with("temperature", json!(5)));
    assert_eq!(hot["status"], 400);
    assert!(hot["body"]["message"]
        .as_str()
        .unwrap()
        .contains("temperature"));
    let (status, body) = post(&server, "/v1/embeddings", json!({}));
    assert_eq!(status, 404);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    // TGI's errors are TGI's shape.
    let (status, body) = post(&server, "/generate", json!({"inputs": 3}));
    assert_eq!(status, 422);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error_type"], "validation");
}

#[test]
fn tgi_sampling_reports_its_seed_and_repeats_with_it() {
    let server = Server::start(&common::smollm2(), &[]);
    let body = json!({"inputs": "My favourite animal is", "parameters": {"max_new_tokens": 8, "do_sample": true, "details": true}});
    let (_, first) = post(&server, "/generate", body);
    let first: Value = serde_json::from_str(&first).unwrap();
    let seed = first["details"]["seed"].as_u64().expect("a drawn seed");
    let again = json!({"inputs": "My favourite animal is", "parameters": {"max_new_tokens": 8, "do_sample": true, "details": true, "seed": seed}});
    let (_, second) = post(&server, "/generate", again);
    let second: Value = serde_json::from_str(&second).unwrap();
    assert_eq!(first["generated_text"], second["generated_text"]);
    assert_eq!(second["details"]["seed"], seed);
}
