//! Multi-model endpoints (`SAGEMAKER_MULTI_MODEL=true`) through the real binary: MMS's model API
//! as SageMaker calls it (load, list with pagination, describe, unload, invoke), several models
//! of different tasks loaded at once and answering exactly as each does alone, the memory
//! budget's 507, and `/ping` healthy throughout.

mod common;

use std::path::{Path, PathBuf};

use common::{minilm_cls, repo_path, Response, Server};
use serde_json::json;

const JSON: (&str, &str) = ("Content-Type", "application/json");
const PING_BODY: &str = "{\n  \"status\": \"Healthy\"\n}\n";

fn fill_mask_model() -> PathBuf {
    repo_path("models/tiny/bert-mlm")
}

fn generation_model() -> PathBuf {
    repo_path("models/tiny/llama-lm")
}

/// Requests for each model, by the name the tests load it under.
fn requests(name: &str) -> Vec<&'static str> {
    match name {
        "cls" => vec![
            r#"{"inputs": "I love this movie, it is wonderful"}"#,
            r#"{"inputs": ["terrible service", "great food"], "parameters": {"top_k": 2}}"#,
        ],
        "mlm" => vec![
            r#"{"inputs": "Paris is the [MASK] of France."}"#,
            r#"{"inputs": "the [MASK] sat on the mat", "parameters": {"top_k": 2}}"#,
        ],
        "lm" => vec![
            r#"{"inputs": "Once upon a time", "parameters": {"max_new_tokens": 6, "do_sample": false}}"#,
        ],
        other => panic!("no requests for {other}"),
    }
}

/// The answers a single-model server gives for `name`'s requests (exact bodies).
fn single_model_answers(name: &str, dir: &Path) -> Vec<String> {
    let server = Server::start(dir, &[]);
    requests(name)
        .into_iter()
        .map(|body| {
            let r = server.invoke_json(body);
            assert_eq!(r.status, 200, "{name} {body}: {}", r.text());
            r.text()
        })
        .collect()
}

fn load_on(port: u16, name: &str, dir: &Path) -> Response {
    let body = json!({"model_name": name, "url": dir.to_str().unwrap()}).to_string();
    common::request(port, "POST", "/models", &[JSON], body.as_bytes())
}

fn assert_loaded(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{\n  \"status\": \"Workers scaled\"\n}\n");
}

fn invoke(server: &Server, name: &str, body: &str) -> Response {
    server.request(
        "POST",
        &format!("/models/{name}/invoke"),
        &[JSON],
        body.as_bytes(),
    )
}

fn assert_healthy(server: &Server) {
    let r = server.request("GET", "/ping", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, PING_BODY));
}

/// `GET /models` with a query: the names listed and the next page's token.
fn list(server: &Server, query: &str) -> (Vec<String>, Option<String>) {
    let r = server.request("GET", &format!("/models{query}"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let names = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["modelName"].as_str().unwrap().to_string())
        .collect();
    (names, v["nextPageToken"].as_str().map(str::to_string))
}

#[test]
fn models_of_three_tasks_load_answer_as_alone_list_describe_and_unload() {
    let dirs = [
        ("cls", minilm_cls()),
        ("mlm", fill_mask_model()),
        ("lm", generation_model()),
    ];
    let alone: Vec<Vec<String>> = dirs
        .iter()
        .map(|(name, dir)| single_model_answers(name, dir))
        .collect();

    let server = Server::start_multi_model(&[]);
    assert_healthy(&server);
    let r = server.request("GET", "/models", &[], b"");
    assert_eq!(r.text(), "{\n  \"models\": []\n}\n");

    // All at once, "cls" twice: one of its loads wins, the other is a 409. /ping answers
    // while they load.
    let port = server.port;
    let loads: Vec<_> = [
        dirs[0].clone(),
        dirs[0].clone(),
        dirs[1].clone(),
        dirs[2].clone(),
    ]
    .into_iter()
    .map(|(name, dir)| std::thread::spawn(move || (name, load_on(port, name, &dir))))
    .collect();
    while !loads.iter().all(|l| l.is_finished()) {
        assert_healthy(&server);
    }
    let mut cls_statuses = Vec::new();
    for handle in loads {
        let (name, r) = handle.join().unwrap();
        if name == "cls" {
            cls_statuses.push(r.status);
            if r.status == 409 {
                assert_eq!(r.envelope(409), "Model cls is already registered.");
                assert_eq!(r.json()["type"], "ConflictStatusException");
            }
        } else {
            assert_loaded(&r);
        }
    }
    cls_statuses.sort();
    assert_eq!(cls_statuses, [200, 409]);

    // Each answers exactly as it does alone, through every route that names it.
    for ((name, _), want) in dirs.iter().zip(&alone) {
        for (body, want) in requests(name).into_iter().zip(want) {
            assert_eq!(&invoke(&server, name, body).text(), want, "{name} {body}");
        }
    }
    let body = requests("mlm")[0];
    let target = [("X-Amzn-SageMaker-Target-Model", "mlm.tar.gz"), JSON];
    for (path, headers) in [
        ("/predictions/mlm", &[JSON][..]),
        ("/mlm/predict", &[JSON][..]),
        ("/invocations?model_name=mlm", &[JSON][..]),
        ("/invocations", &target[..]),
    ] {
        let r = server.request("POST", path, headers, body.as_bytes());
        assert_eq!(r.text(), alone[1][0], "{path}");
    }
    // Several models and none named: MMS's 400.
    let r = server.invoke_json(body);
    assert!(r.envelope(400).contains("Parameter model_name is required"));

    // Sorted by name, paginated as MMS: a token whenever the page ends within the list.
    assert_eq!(
        list(&server, ""),
        (vec!["cls".into(), "lm".into(), "mlm".into()], None)
    );
    assert_eq!(
        list(&server, "?limit=2"),
        (vec!["cls".into(), "lm".into()], Some("2".into()))
    );
    assert_eq!(
        list(&server, "?limit=2&next_page_token=2"),
        (vec!["mlm".into()], None)
    );
    assert_eq!(
        list(&server, "?limit=1&nextPageToken=2"),
        (vec!["mlm".into()], Some("3".into()))
    );
    assert_eq!(list(&server, "?next_page_token=3"), (vec![], None));

    let r = server.request("GET", "/models/mlm", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let described = r.json();
    assert_eq!(described["modelName"], "mlm");
    assert_eq!(described["modelUrl"], fill_mask_model().to_str().unwrap());
    assert_eq!(described["task"], "fill-mask");
    assert_eq!(described["workers"][0]["status"], "READY");
    assert_eq!(
        server.request("GET", "/models/lm", &[], b"").json()["task"],
        "text-generation"
    );
    let r = server.request("GET", "/models/nope", &[], b"");
    assert_eq!(r.envelope(404), "Model not found: nope");

    // Refusals: loaded already, no url, no such directory, a directory that is not a model
    // (whose name is then free again).
    assert_eq!(
        server.load_model("mlm", &fill_mask_model()).envelope(409),
        "Model mlm is already registered."
    );
    let r = server.request("POST", "/models", &[JSON], br#"{"model_name": "x"}"#);
    assert_eq!(r.envelope(400), "Parameter url is required.");
    assert_eq!(r.json()["type"], "BadRequestException");
    let missing = repo_path("models/no-such-model");
    let r = server.load_model("x", &missing);
    assert_eq!(
        r.envelope(404),
        format!("Model not found in model store: {}", missing.display())
    );
    let r = server.load_model("x", &repo_path("models/golden"));
    let message = r.envelope(500);
    assert!(
        message.starts_with("Failed to load model x from "),
        "{message}"
    );
    assert_loaded(&server.load_model("x", &fill_mask_model()));

    // Unload: MMS's body; then the name is unknown everywhere; the others still answer.
    let r = server.request("DELETE", "/models/cls", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            200,
            "{\n  \"status\": \"Model \\\"cls\\\" unregistered\"\n}\n"
        )
    );
    assert_eq!(
        server.request("GET", "/models/cls", &[], b"").envelope(404),
        "Model not found: cls"
    );
    assert_eq!(
        invoke(&server, "cls", requests("cls")[0]).envelope(404),
        "Model not found: cls"
    );
    assert_eq!(
        server
            .request("DELETE", "/models/cls", &[], b"")
            .envelope(404),
        "Model not found: cls"
    );
    assert_eq!(list(&server, "").0, ["lm", "mlm", "x"]);
    assert_eq!(invoke(&server, "mlm", body).text(), alone[1][0]);
    assert_healthy(&server);

    // Loaded again under its name, it answers as before.
    assert_loaded(&server.load_model("cls", &minilm_cls()));
    assert_eq!(
        invoke(&server, "cls", requests("cls")[0]).text(),
        alone[0][0]
    );
}

#[test]
fn memory_budget_answers_507_until_a_model_is_unloaded() {
    // MiniLM's 87 MiB of weights count 2x: 173 MiB; a second copy does not fit in 250.
    let server = Server::start_multi_model(&[
        ("MME_MEMORY_BUDGET_MB", "250"),
        ("HF_MODEL_ID", "sentence-transformers/all-MiniLM-L6-v2"),
        ("RUST_LOG", "warn"),
    ]);
    // HF_MODEL_ID is ignored: nothing loads.
    assert_eq!(list(&server, "").0, Vec::<String>::new());
    assert_loaded(&server.load_model("a", &minilm_cls()));
    assert_loaded(&server.load_model("small", &fill_mask_model()));
    let r = server.load_model("b", &minilm_cls());
    let message = r.envelope(507);
    assert!(
        message.starts_with("Not enough memory to load model b: it needs about 174 MiB"),
        "{message}"
    );
    assert_eq!(r.json()["type"], "InsufficientMemoryException");
    assert_eq!(list(&server, "").0, ["a", "small"]);
    assert_healthy(&server);

    // SageMaker unloads a model and retries.
    assert_eq!(server.request("DELETE", "/models/a", &[], b"").status, 200);
    assert_loaded(&server.load_model("b", &minilm_cls()));
    let r = invoke(&server, "b", requests("cls")[0]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(list(&server, "").0, ["b", "small"]);

    let log = server.stop();
    assert!(
        log.contains("HF_MODEL_ID=sentence-transformers/all-MiniLM-L6-v2 is not supported on a multi-model endpoint"),
        "{log}"
    );
}

#[test]
fn a_request_in_flight_finishes_when_its_model_is_unloaded() {
    use std::io::{Read, Write};

    let server = Server::start_multi_model(&[]);
    assert_loaded(&server.load_model("cls", &minilm_cls()));
    let body = requests("cls")[0];
    let want = invoke(&server, "cls", body).text();

    // The request's head and half its body: the server has taken the model for it and waits
    // for the rest while the model is unloaded.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let head = format!(
        "POST /models/cls/invoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(first).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let r = server.request("DELETE", "/models/cls", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        invoke(&server, "cls", body).envelope(404),
        "Model not found: cls"
    );

    stream.write_all(rest).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&want), "{answer}\nwant {want}");
    assert_healthy(&server);
}
