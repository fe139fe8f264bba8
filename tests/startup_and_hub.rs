//! Start-up through the real binary: readiness (503 while loading), fail-fast load errors with a
//! one-line cause, and the Hub path up to the network boundary — the standard cache offline, and a
//! stand-in Hub on loopback that the real `hf-hub` download code talks to (info, ranged
//! downloads, tokens, 401/403/404).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_hub::{folder_files, FakeHub, Faults, HubMode, TestCa};
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
        &[("HF_TASK", "audio-classification")],
    )
    .wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("audio-classification") && stderr.contains("does not serve yet"),
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

/// A diffusers repository (`model_index.json`, a folder per component): the components'
/// configs and safetensors, the scheduler's config and the tokenizer's files are fetched (not
/// the other files such repositories hold), the image is the local folder's, and the cache
/// alone serves it again offline.
#[test]
fn downloads_a_diffusers_pipeline_from_the_hub() {
    let model = repo_path("models/tiny/sd-pndm");
    let mut files = folder_files(&model);
    files.insert("v1-5-pruned.ckpt".into(), b"not needed".to_vec());
    files.insert(
        "unet/diffusion_pytorch_model.fp16.safetensors".into(),
        b"not needed".to_vec(),
    );
    let hub = FakeHub::start(HubMode::Serve {
        repo: "org/tiny-sd".into(),
        files,
        token: "hf_test_token".into(),
    });
    let cache = tmp("diffusers");
    let body =
        serde_json::json!({"inputs": "a cat", "parameters": {"num_inference_steps": 2, "seed": 3}})
            .to_string();
    let accept = [
        ("Content-Type", "application/json"),
        ("Accept", "image/png"),
    ];
    let local = Server::start(&model, &[])
        .request("POST", "/invocations", &accept, body.as_bytes())
        .body;
    let env = [
        ("HF_ENDPOINT", hub.endpoint()),
        ("HF_HUB_CACHE", cache.to_str().unwrap().to_string()),
        ("HF_TOKEN", "hf_test_token".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::spawn("org/tiny-sd", &env);
    s.wait_ready(Duration::from_secs(60));
    let image = s.request("POST", "/invocations", &accept, body.as_bytes());
    assert_eq!(image.status, 200, "{}", image.text());
    assert_eq!(image.body, local);
    let requested = hub.requests.lock().unwrap().join("\n");
    for fetched in [
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ] {
        assert!(
            requested.contains(fetched),
            "{fetched} not fetched: {requested}"
        );
    }
    assert!(
        !requested.contains("ckpt") && !requested.contains("fp16"),
        "{requested}"
    );
    drop(s);
    let mut offline = env.clone();
    offline.push(("HF_HUB_OFFLINE", "1"));
    let s = Server::spawn("org/tiny-sd", &offline);
    s.wait_ready(Duration::from_secs(60));
    let again = s.request("POST", "/invocations", &accept, body.as_bytes());
    assert_eq!(again.body, local);
}

/// A Hub that answers 503 to the first try of every request and breaks off the weights'
/// download halfway: each request is tried again after a backoff (logged with its cause), the
/// broken download resumes where it stopped, each file is logged with its size, and the model
/// serves as the local folder does.
#[test]
fn transient_hub_failures_are_retried_with_backoff_and_resumed() {
    let model = repo_path("models/tiny/roberta-cls");
    let files = folder_files(&model);
    let weights = files["model.safetensors"].len();
    let hub = FakeHub::start_with(
        HubMode::Serve {
            repo: "org/flaky".into(),
            files,
            token: "hf_test_token".into(),
        },
        Faults {
            first_try_503: true,
            cut_first_body_of: Some("model.safetensors".into()),
        },
        None,
    );
    let cache = tmp("flaky");
    let direct = Server::start(&model, &[]).invoke_json(LOVE).json();
    let s = Server::spawn(
        "org/flaky",
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_TOKEN", "hf_test_token"),
            ("RUST_LOG", "info"),
        ],
    );
    s.wait_ready(Duration::from_secs(120));
    assert_eq!(s.invoke_json(LOVE).json(), direct);
    let snapshot = cache.join(format!("models--org--flaky/snapshots/{}", "a".repeat(40)));
    for file in ["model.safetensors", "tokenizer.json", "config.json"] {
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            std::fs::read(model.join(file)).unwrap(),
            "{file}"
        );
    }
    let requested = hub.requests.lock().unwrap().join("\n").to_ascii_lowercase();
    assert!(
        requested.contains(&format!("range: bytes={}-\r\n", weights / 2)),
        "the broken download did not resume where it stopped: {requested}"
    );
    let log = s.stop();
    assert!(
        log.contains("listing org/flaky") && log.contains("503") && log.contains("retry 1 of 4"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "downloaded model.safetensors of org/flaky: 137.6 kB ({weights} bytes)"
        )),
        "{log}"
    );
}

/// TLS to an `HF_ENDPOINT` mirror whose certificate a company CA signed: trusted once the CA is
/// in the roots the system store gives (here through `SSL_CERT_FILE`, which the system store
/// honours), refused with an explanation otherwise (not retried, no cache fallback).
#[test]
fn a_mirror_signed_by_a_ca_from_the_system_store_is_trusted() {
    let ca = TestCa::create(&tmp("ca"));
    let model = repo_path("models/tiny/bert-cls");
    let hub = FakeHub::start_with(
        HubMode::Serve {
            repo: "org/mirrored".into(),
            files: folder_files(&model),
            token: "hf_test_token".into(),
        },
        Faults::default(),
        Some(&ca),
    );
    assert!(hub.endpoint().starts_with("https://"));
    let direct = Server::start(&model, &[]).invoke_json(LOVE).json();
    let s = Server::spawn(
        "org/mirrored",
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_HUB_CACHE", tmp("mirrored").to_str().unwrap()),
            ("HF_TOKEN", "hf_test_token"),
            ("SSL_CERT_FILE", ca.ca_pem.to_str().unwrap()),
        ],
    );
    s.wait_ready(Duration::from_secs(60));
    assert_eq!(s.invoke_json(LOVE).json(), direct);
    drop(s);

    // Without the CA: the system's roots do not have it.
    let started = std::time::Instant::now();
    let (code, stderr) = Server::spawn(
        "org/mirrored",
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_HUB_CACHE", tmp("untrusted").to_str().unwrap()),
            ("HF_TOKEN", "hf_test_token"),
        ],
    )
    .wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("org/mirrored")
            && stderr.contains("not trusted")
            && stderr.contains("SSL_CERT_FILE"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a certificate error was retried"
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

/// A RoBERTa repository saved with its slow tokenizer (vocab.json and merges.txt, no
/// tokenizer.json: `RobertaTokenizer`) downloads them, builds the fast tokenizer transformers
/// would, and classifies as the same folder with its tokenizer.json does.
#[test]
fn a_slow_bpe_tokenizer_repository_downloads_and_serves() {
    let model = repo_path("models/tiny/roberta-cls");
    let mut files = folder_files(&model);
    assert!(files.remove("tokenizer.json").is_some());
    let hub = FakeHub::start(HubMode::Serve {
        repo: "org/tiny-roberta-slow".into(),
        files,
        token: "hf_test_token".into(),
    });
    let body = r#"{"inputs": ["I love this movie!", "  naïve café, <mask> 😀 and </s>"]}"#;
    let direct = Server::start(&model, &[]).invoke_json(body).json();
    let s = Server::spawn(
        "org/tiny-roberta-slow",
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_HUB_CACHE", tmp("roberta-slow").to_str().unwrap()),
            ("HF_TOKEN", "hf_test_token"),
        ],
    );
    s.wait_ready(Duration::from_secs(60));
    assert_eq!(s.invoke_json(body).json(), direct);
    let requested = hub.requests.lock().unwrap().join("\n");
    for file in ["vocab.json", "merges.txt"] {
        assert!(
            requested.contains(&format!("GET /org/tiny-roberta-slow/resolve/main/{file}")),
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
#[cfg(not(feature = "python"))]
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
#[cfg(not(feature = "python"))]
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
