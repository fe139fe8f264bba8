//! Start-up through the real binary: readiness (503 while loading), fail-fast load errors with a
//! one-line cause, and the Hub path up to the network boundary — the standard cache offline, and a
//! stand-in Hub on loopback that the real `hf-hub` download code talks to (info, ranged
//! downloads, tokens, 401/403/404).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{repo_path, Server};

const LOVE: &str = r#"{"inputs": "I love this!"}"#;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shs-startup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_failures_exit_non_zero_with_a_one_line_cause() {
    let (code, stderr) =
        Server::spawn("/nonexistent/model-dir", &[]).wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1));
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .expect("an `error:` line");
    assert!(
        line.contains("/nonexistent/model-dir") && line.contains("does not exist"),
        "{line}"
    );

    let tiny = repo_path("models/tiny/bert-cls");
    let (code, stderr) = Server::spawn(
        tiny.to_str().unwrap(),
        &[("HF_TASK", "image-classification")],
    )
    .wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("image-classification") && stderr.contains("does not serve yet"),
        "{stderr}"
    );

    // A served task on a model it cannot run on: the cause names what is supported.
    let (code, stderr) = Server::spawn(tiny.to_str().unwrap(), &[("HF_TASK", "summarization")])
        .wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("model_type `bert` is not supported for summarization")
            && stderr.contains("supported: t5 (T5, Flan-T5), bart, marian"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let s = Server::start(&repo_path("models/tiny/bert-cls"), &[]);
    assert_eq!(s.invoke_json(LOVE).status, 200);
    s.terminate();
    let (code, _) = s.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0));
}

#[test]
fn sentiment_analysis_alias_and_explicit_task() {
    let s = Server::start(
        &repo_path("models/tiny/distilbert-cls"),
        &[("HF_TASK", "sentiment-analysis")],
    );
    assert_eq!(s.invoke_json(LOVE).status, 200);
}

/// Copies a model directory into the standard Hub cache layout, as Python's huggingface_hub leaves it.
fn fill_cache(cache: &Path, repo: &str, model: &Path) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(
        root.join("refs/main"),
        "0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn offline_mode_serves_from_the_standard_hub_cache() {
    let cache = tmp("cache");
    let model = repo_path("models/tiny/bert-cls");
    fill_cache(&cache, "org/tiny-bert", &model);
    let direct = Server::start(&model, &[]).invoke_json(LOVE).json();
    // A Hub that never answers: contacting it at all would keep the server from becoming ready.
    let hub = FakeHub::start(HubMode::Hang);
    let s = Server::spawn(
        "org/tiny-bert",
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_TOKEN", "hf_secret_value"),
        ],
    );
    s.wait_ready(Duration::from_secs(10));
    assert_eq!(s.invoke_json(LOVE).json(), direct);

    // Offline and not cached: a clear start-up error naming the model.
    let (code, stderr) = Server::spawn(
        "org/absent",
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_TOKEN", "hf_secret_value"),
            ("RUST_LOG", "info"),
        ],
    )
    .wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("org/absent is not in the Hub cache")
            && stderr.contains("HF_HUB_OFFLINE is set"),
        "{stderr}"
    );
    assert!(stderr.contains("HF_TOKEN=<redacted>"), "{stderr}");
    assert!(!stderr.contains("hf_secret_value"), "the token was logged");
}

/// A stand-in for the Hub's HTTP API on loopback: `GET /api/models/{id}/revision/{rev}` and
/// `GET /{id}/resolve/{rev}/{file}` with Range support, as `hf-hub` uses them.
struct FakeHub {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
enum HubMode {
    /// Serve these files of `repo`, only to requests with `Authorization: Bearer <token>`.
    Serve {
        repo: String,
        files: HashMap<String, Vec<u8>>,
        token: String,
    },
    /// Answer every request with this status and `x-error-code`.
    Refuse(u16, &'static str),
    /// Accept connections and never answer (a Hub that hangs); closed when the hub is dropped.
    Hang,
}

impl FakeHub {
    fn start(mode: HubMode) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                if matches!(mode, HubMode::Hang) {
                    held.push(stream);
                    continue;
                }
                let head = read_head(&mut stream);
                log.lock().unwrap().push(head.clone());
                let _ = stream.write_all(&answer(&mode, &head));
            }
        });
        FakeHub { port, requests }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn read_head(stream: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_string()
}

fn answer(mode: &HubMode, head: &str) -> Vec<u8> {
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let reply = |status: u16, headers: Vec<(String, String)>, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    };
    match mode {
        HubMode::Hang => unreachable!(),
        HubMode::Refuse(status, code) => reply(
            *status,
            vec![("x-error-code".into(), code.to_string())],
            b"{}",
        ),
        HubMode::Serve { repo, files, token } => {
            if header("authorization").as_deref() != Some(&format!("Bearer {token}")) {
                return reply(
                    401,
                    vec![("x-error-code".into(), "RepoNotFound".into())],
                    b"{}",
                );
            }
            let commit = "a".repeat(40);
            if path == format!("/api/models/{repo}/revision/main") {
                let siblings: Vec<_> = files
                    .keys()
                    .map(|f| serde_json::json!({"rfilename": f}))
                    .collect();
                let body = serde_json::json!({"sha": commit, "siblings": siblings}).to_string();
                return reply(200, vec![], body.as_bytes());
            }
            let Some(file) = path.strip_prefix(&format!("/{repo}/resolve/main/")) else {
                return reply(
                    404,
                    vec![("x-error-code".into(), "EntryNotFound".into())],
                    b"{}",
                );
            };
            let Some(bytes) = files.get(file) else {
                return reply(
                    404,
                    vec![("x-error-code".into(), "EntryNotFound".into())],
                    b"{}",
                );
            };
            let range = header("range").unwrap_or_else(|| "bytes=0-".into());
            let (start, end) = range.trim_start_matches("bytes=").split_once('-').unwrap();
            let start: usize = start.parse().unwrap();
            let end: usize = if end.is_empty() {
                bytes.len().saturating_sub(1)
            } else {
                end.parse().unwrap()
            };
            let slice = &bytes[start.min(bytes.len())..(end + 1).min(bytes.len())];
            let etag = format!("\"etag-{}-{}\"", file.replace('/', "_"), bytes.len());
            reply(
                206,
                vec![
                    ("etag".into(), etag),
                    ("x-repo-commit".into(), commit),
                    (
                        "content-range".into(),
                        format!("bytes {start}-{end}/{}", bytes.len()),
                    ),
                ],
                slice,
            )
        }
    }
}

/// A model folder's files by name, as a stand-in Hub repository serves them.
fn folder_files(dir: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

#[test]
fn downloads_from_the_hub_with_the_token_into_the_standard_cache() {
    let model = repo_path("models/tiny/roberta-cls");
    let mut files = folder_files(&model);
    files.insert("README.md".into(), b"not needed".to_vec());
    let hub = FakeHub::start(HubMode::Serve {
        repo: "org/tiny-roberta".into(),
        files,
        token: "hf_test_token".into(),
    });
    let cache = tmp("download");
    let direct = Server::start(&model, &[]).invoke_json(LOVE).json();

    // The DLC's token variable works; the token is never logged.
    let s = Server::spawn(
        "org/tiny-roberta",
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_API_TOKEN", "hf_test_token"),
            ("RUST_LOG", "info"),
        ],
    );
    s.wait_ready(Duration::from_secs(60));
    assert_eq!(s.invoke_json(LOVE).json(), direct);
    let requested = hub.requests.lock().unwrap().join("\n");
    assert!(
        requested.contains("GET /org/tiny-roberta/resolve/main/model.safetensors"),
        "{requested}"
    );
    assert!(
        !requested.contains("README.md"),
        "fetched a file the server does not need"
    );
    let snapshot = cache.join(format!(
        "models--org--tiny-roberta/snapshots/{}",
        "a".repeat(40)
    ));
    assert!(
        snapshot.join("model.safetensors").is_file() && snapshot.join("tokenizer.json").is_file()
    );
    let log = s.stop();
    assert!(log.contains("HF_API_TOKEN=<redacted>"), "{log}");
    assert!(!log.contains("hf_test_token"), "the token was logged");

    // Without the token the Hub says 401: a start-up error that says what to do.
    let (code, stderr) = Server::spawn(
        "org/tiny-roberta",
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_HUB_CACHE", tmp("no-token").to_str().unwrap()),
        ],
    )
    .wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("org/tiny-roberta")
            && stderr.contains("401")
            && stderr.contains("HF_TOKEN"),
        "{stderr}"
    );
}

/// An opus-mt-style repository (SentencePiece files, no tokenizer.json) downloads its
/// SentencePiece files and serves translations as the local folder does.
#[test]
fn a_marian_repository_without_tokenizer_json_downloads_and_serves() {
    let model = repo_path("models/tiny/marian-spm");
    let files = folder_files(&model);
    assert!(!files.contains_key("tokenizer.json"));
    let hub = FakeHub::start(HubMode::Serve {
        repo: "org/tiny-opus-mt".into(),
        files,
        token: "hf_test_token".into(),
    });
    let body = r#"{"inputs": "the food was great"}"#;
    let env = [("HF_TASK", "translation")];
    let direct = Server::start(&model, &env).invoke_json(body).json();
    let s = Server::spawn(
        "org/tiny-opus-mt",
        &[
            ("HF_TASK", "translation"),
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_HUB_CACHE", tmp("marian").to_str().unwrap()),
            ("HF_TOKEN", "hf_test_token"),
        ],
    );
    s.wait_ready(Duration::from_secs(60));
    assert_eq!(s.invoke_json(body).json(), direct);
    let requested = hub.requests.lock().unwrap().join("\n");
    for file in ["source.spm", "vocab.json"] {
        assert!(
            requested.contains(&format!("GET /org/tiny-opus-mt/resolve/main/{file}")),
            "{requested}"
        );
    }
}

#[test]
fn hub_refusals_are_explained() {
    for (status, code, expect) in [
        (403, "GatedRepo", "gated"),
        (404, "RepoNotFound", "not found"),
    ] {
        let hub = FakeHub::start(HubMode::Refuse(status, code));
        let (exit, stderr) = Server::spawn(
            "org/private-model",
            &[
                ("HF_ENDPOINT", &hub.endpoint()),
                ("HF_HUB_CACHE", tmp("refused").to_str().unwrap()),
            ],
        )
        .wait_exit(Duration::from_secs(30));
        assert_eq!(exit, Some(1));
        assert!(
            stderr.contains("org/private-model") && stderr.contains(expect),
            "{status}: {stderr}"
        );
    }
}

#[test]
fn ping_is_503_while_the_model_loads() {
    let hub = FakeHub::start(HubMode::Hang);
    let s = Server::spawn(
        "org/slow-model",
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_HUB_CACHE", tmp("hang").to_str().unwrap()),
        ],
    );
    // Listening at once, but not ready: the download hangs.
    let started = std::time::Instant::now();
    let ping = loop {
        if let Ok(r) = common::try_request(s.port, "GET", "/ping", &[], b"") {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "server never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(ping.envelope(503).contains("loading"));
    assert_eq!(ping.json()["type"], "ServiceUnavailableException");
    let m = s.invoke_json(LOVE).envelope(503);
    assert!(m.contains("loading"), "{m}");
    // boto3's route: SageMaker's ModelNotReadyException, which a client waits out.
    let headers = [("Content-Type", "application/json")];
    let r = s.request(
        "POST",
        "/endpoints/e/invocations",
        &headers,
        LOVE.as_bytes(),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-amzn-errortype"), Some("ModelNotReadyException"));
    assert!(r.json()["message"].as_str().unwrap().contains("loading"));
    // SIGTERM while the download still hangs: the server stops anyway.
    s.terminate();
    let (code, _) = s.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

/// `/ping` names the device in a header (its body stays MMS's); asking for a GPU that this
/// build cannot use is a start-up error, while `auto` falls back to the CPU.
#[test]
fn device_selection() {
    let tiny = repo_path("models/tiny/bert-cls");
    let s = Server::start(&tiny, &[("SM_NUM_GPUS", "0")]);
    let ping = s.request("GET", "/ping", &[], b"");
    assert_eq!(ping.status, 200);
    assert_eq!(ping.header("x-device"), Some("cpu"));
    assert_eq!(ping.header("x-dtype"), Some("f32"));
    assert_eq!(ping.text(), "{\n  \"status\": \"Healthy\"\n}\n");
    drop(s);

    let s = Server::start(&tiny, &[("SERVER_DEVICE", "cpu")]);
    assert_eq!(
        s.request("GET", "/ping", &[], b"").header("x-device"),
        Some("cpu")
    );
    drop(s);

    if !cfg!(feature = "cuda") {
        let (code, stderr) = Server::spawn(tiny.to_str().unwrap(), &[("SERVER_DEVICE", "cuda:1")])
            .wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("without CUDA support"), "{stderr}");
    }
    let (code, stderr) = Server::spawn(tiny.to_str().unwrap(), &[("SERVER_DEVICE", "tpu")])
        .wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cuda:N"), "{stderr}");
}

/// A copy of a tiny model with a `code/` folder holding `files`.
fn model_with_code(name: &str, files: &[&str]) -> PathBuf {
    let dir = tmp(name);
    let source = repo_path("models/tiny/bert-cls");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::create_dir_all(dir.join("code")).unwrap();
    for file in files {
        std::fs::write(
            dir.join("code").join(file),
            "def output_fn(prediction, accept):\n    return 'custom'\n",
        )
        .unwrap();
    }
    dir
}

/// Custom Python handlers cannot run in this build: a model that ships them is refused at
/// start-up (never served with different answers), unless SERVER_IGNORE_CUSTOM_CODE says so.
#[test]
fn custom_inference_code_is_refused_unless_explicitly_ignored() {
    let dir = model_with_code("custom-code", &["inference.py"]);
    let script = dir.join("code/inference.py");
    let (code, stderr) =
        Server::spawn(dir.to_str().unwrap(), &[]).wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .expect("an `error:` line");
    assert!(
        line.contains(script.to_str().unwrap())
            && line.contains("custom Python handlers")
            && line.contains("SERVER_IGNORE_CUSTOM_CODE=true"),
        "{line}"
    );

    // The opt-out serves the native pipeline, and says so.
    let s = Server::start(&dir, &[("SERVER_IGNORE_CUSTOM_CODE", "true")]);
    assert_eq!(s.invoke_json(LOVE).status, 200);
    let log = s.stop();
    assert!(log.contains("SERVER_IGNORE_CUSTOM_CODE is set"), "{log}");

    // SAGEMAKER_PROGRAM names the module (".py" optional); an empty value means inference.py.
    let dir = model_with_code("custom-program", &["handler.py"]);
    let (code, stderr) = Server::spawn(dir.to_str().unwrap(), &[("SAGEMAKER_PROGRAM", "handler")])
        .wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("code/handler.py"), "{stderr}");
    // Another module's file is not the user script; an S3 submit directory is not local.
    let s = Server::start(
        &dir,
        &[
            ("SAGEMAKER_PROGRAM", ""),
            (
                "SAGEMAKER_SUBMIT_DIRECTORY",
                "s3://bucket/prefix/sourcedir.tar.gz",
            ),
        ],
    );
    assert_eq!(s.invoke_json(LOVE).status, 200);

    // The SDK's submit directory, when local, is looked in too.
    let submit = tmp("custom-submit");
    std::fs::write(
        submit.join("inference.py"),
        "def model_fn(d):\n    return d\n",
    )
    .unwrap();
    let plain = repo_path("models/tiny/bert-cls");
    let (code, stderr) = Server::spawn(
        plain.to_str().unwrap(),
        &[("SAGEMAKER_SUBMIT_DIRECTORY", submit.to_str().unwrap())],
    )
    .wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("custom-submit/inference.py"), "{stderr}");
}

/// A copy of `models/tiny/<model>` whose config.json has `changes` applied (top-level keys).
fn model_with_config(name: &str, model: &str, changes: serde_json::Value) -> PathBuf {
    let dir = tmp(name);
    let source = repo_path(&format!("models/tiny/{model}"));
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    for (key, value) in changes.as_object().unwrap() {
        config[key] = value.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// A config.json that does not describe its weights is refused at start-up, as transformers'
/// `from_pretrained` refuses it ("size mismatch"), instead of a healthy server failing every
/// request with a caught panic.
#[test]
fn config_json_that_does_not_match_its_weights_is_refused_at_start_up() {
    let cases = [
        ("hidden", "bert-cls", serde_json::json!({"hidden_size": 48}), "`embeddings.word_embeddings.weight` is 32 wide, but the embedding size is 48"),
        ("kv-heads", "llama-lm", serde_json::json!({"num_key_value_heads": 4}), "does not match the model's weights: a test forward pass failed"),
        ("heads", "bert-cls", serde_json::json!({"num_attention_heads": 3}), "the hidden size (32) is not a multiple of the number of attention heads (3)"),
        ("positions", "bert-cls", serde_json::json!({"max_position_embeddings": 128}), "`embeddings.position_embeddings.weight` has 64 rows, but max_position_embeddings is 128"),
        ("vocab", "bert-cls", serde_json::json!({"vocab_size": 300}), "has 229 rows, but vocab_size is 300"),
        (
            "labels",
            "bert-cls",
            serde_json::json!({"id2label": {"0": "a", "1": "b", "2": "c", "3": "d"}, "label2id": {"a": 0, "b": 1, "c": 2, "d": 3}}),
            "config.json gives 4 labels (id2label / num_labels), but the classifier head gives 3 scores",
        ),
        ("ner-labels", "bert-ner", serde_json::json!({"id2label": {"0": "O"}, "label2id": {"O": 0}}), "config.json gives 1 labels"),
        ("gpt2-positions", "gpt2-lm", serde_json::json!({"n_positions": 128}), "`wpe.weight` has 64 rows, but n_positions is 128"),
        ("llama-hidden", "llama-lm", serde_json::json!({"hidden_size": 48}), "`embed_tokens.weight` is 32 wide, but hidden_size is 48"),
    ];
    for (name, model, changes, expected) in cases {
        let dir = model_with_config(&format!("mismatch-{name}"), model, changes);
        let (code, stderr) =
            Server::spawn(dir.to_str().unwrap(), &[]).wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(1), "{name}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{name}: an `error:` line in {stderr}"));
        assert!(
            line.contains("config.json") && line.contains(expected),
            "{name}: {line}"
        );
    }
}
