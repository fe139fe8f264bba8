//! SageMaker operations through the real binary: batch transform (`/execution-parameters`,
//! JSON Lines bodies answered line by line exactly as the records' single requests), and
//! observability (Prometheus `/metrics`, request ids, the access log, log format and level).

mod common;

use std::time::Duration;

use common::{repo_path, Server};
use serde_json::{json, Value};

const JSON: (&str, &str) = ("Content-Type", "application/json");
const JSON_LINES: (&str, &str) = ("Content-Type", "application/jsonlines");

fn bert_cls() -> std::path::PathBuf {
    repo_path("models/tiny/bert-cls")
}

fn llama_lm() -> std::path::PathBuf {
    repo_path("models/tiny/llama-lm")
}

/// Request bodies the golden file's pipeline answered (refused ones left out).
fn golden_requests(golden: &str) -> Vec<Value> {
    common::golden_records(golden)
        .into_iter()
        .filter(|r| r.get("response").is_some() && r.get("deviation").is_none())
        .map(|r| r["request"].clone())
        .collect()
}

/// `count` text-classification records: the golden requests, and generated ones mixing single
/// strings, lists, pairs, parameters and lengths (so that sorting and padding matter).
fn classification_records(count: usize) -> Vec<Value> {
    let golden = golden_requests("models/golden/text-classification/bert-cls.json");
    let words = |n: usize| vec!["word"; n].join(" ");
    (0..count)
        .map(|i| {
            let text = format!("record {i} says {}", words(i % 23));
            match i % 10 {
                0 | 5 => golden[(i / 5) % golden.len()].clone(),
                1 => json!({"inputs": text}),
                2 => json!({"inputs": [text, format!("short {i}"), words(i % 40 + 1)]}),
                3 => json!({"inputs": text, "parameters": {"top_k": 2}}),
                4 => json!({"inputs": [text, "so so"], "parameters": {"top_k": null}}),
                6 => json!({"inputs": text, "parameters": {"function_to_apply": "sigmoid"}}),
                7 => json!({"text": text, "text_pair": format!("pair {i}")}),
                8 => json!({"inputs": {"text": text, "text_pair": words(i % 7 + 1)}, "parameters": {"top_k": 1}}),
                _ => json!({"inputs": words(300 + i % 200), "parameters": {"truncation": true}}),
            }
        })
        .collect()
}

/// Each record sent alone: the exact bodies of the answers.
fn single_answers(server: &Server, records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|record| {
            let r = server.invoke_json(&record.to_string());
            assert_eq!(r.status, 200, "{record}: {}", r.text());
            r.text()
        })
        .collect()
}

/// A JSON Lines answer: its content type and lines.
fn answer_lines(r: &common::Response) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/jsonlines"));
    let text = r.text();
    assert!(text.ends_with('\n'), "{text}");
    text.lines().map(str::to_string).collect()
}

/// The records as JSON Lines, with blank lines and `\r\n` endings between some.
fn json_lines(records: &[Value]) -> String {
    let mut body = String::new();
    for (i, record) in records.iter().enumerate() {
        body.push_str(&record.to_string());
        body.push_str(if i % 7 == 3 { "\r\n" } else { "\n" });
        if i % 50 == 10 {
            body.push_str("\n  \n");
        }
    }
    body
}

fn assert_same_lines(got: &[String], want: &[String], records: &[Value]) {
    assert_eq!(got.len(), want.len(), "one line per record");
    for (i, (got, want)) in got.iter().zip(want).enumerate() {
        assert_eq!(got, want, "record {i}: {}", records[i]);
    }
}

#[test]
fn execution_parameters_defaults_and_environment() {
    let s = Server::start(&bert_cls(), &[]);
    let r = s.request("GET", "/execution-parameters", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"MaxConcurrentTransforms":2,"BatchStrategy":"MULTI_RECORD","MaxPayloadInMB":6}"#
    );
    s.request("POST", "/execution-parameters", &[], b"")
        .envelope(405);
    drop(s);

    let s = Server::start(
        &bert_cls(),
        &[
            ("SAGEMAKER_BATCH", "true"),
            ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "5"),
            ("SAGEMAKER_BATCH_STRATEGY", "SINGLE_RECORD"),
            ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "20"),
        ],
    );
    let r = s.request("GET", "/execution-parameters", &[], b"");
    assert_eq!(
        r.json(),
        json!({"MaxConcurrentTransforms": 5, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 20})
    );
    let stderr = s.stop();
    assert!(!stderr.contains("not used"), "{stderr}");

    let s = Server::spawn(
        bert_cls().to_str().unwrap(),
        &[("SAGEMAKER_BATCH_STRATEGY", "BOTH")],
    );
    let (code, stderr) = s.wait_exit(Duration::from_secs(10));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("MULTI_RECORD"), "{stderr}");
}

/// The records as one `application/jsonlines` body.
fn post_json_lines(s: &Server, records: &[Value]) -> common::Response {
    s.request(
        "POST",
        "/invocations",
        &[JSON_LINES],
        json_lines(records).as_bytes(),
    )
}

#[test]
fn json_lines_batch_answers_each_record_as_its_single_request() {
    let s = Server::start(&bert_cls(), &[]);
    let records = classification_records(200);
    let singles = single_answers(&s, &records);

    let r = post_json_lines(&s, &records);
    assert_same_lines(&answer_lines(&r), &singles, &records);

    // The other names of JSON Lines, and Accept: application/jsonlines.
    for content_type in ["application/jsonl", "application/x-jsonlines"] {
        let r = s.request(
            "POST",
            "/invocations",
            &[
                ("Content-Type", content_type),
                ("Accept", "application/jsonlines"),
            ],
            json_lines(&records[..20]).as_bytes(),
        );
        assert_same_lines(&answer_lines(&r), &singles[..20], &records);
    }
    // A single JSON request with Accept: application/jsonlines is one line.
    let r = s.request(
        "POST",
        "/invocations",
        &[JSON, ("Accept", "application/jsonlines")],
        records[1].to_string().as_bytes(),
    );
    assert_eq!(answer_lines(&r), vec![singles[1].clone()]);
}

/// A batch transform's worth: 10 000 records in one body, each line equal to its record's
/// single request.
#[test]
fn ten_thousand_records_equal_their_single_requests() {
    let s = Server::start(&bert_cls(), &[]);
    let records = classification_records(10_000);
    let singles = single_answers(&s, &records);
    let r = post_json_lines(&s, &records);
    assert_same_lines(&answer_lines(&r), &singles, &records);
}

#[test]
fn multi_line_application_json_is_answered_as_json_lines() {
    let s = Server::start(&bert_cls(), &[]);
    let records = &classification_records(30);
    let singles = single_answers(&s, records);
    // As a MultiRecord batch arrives: records joined by newlines, `application/json`.
    let body: Vec<String> = records.iter().map(Value::to_string).collect();
    let r = s.request("POST", "/invocations", &[JSON], body.join("\n").as_bytes());
    assert_same_lines(&answer_lines(&r), &singles, records);
    // One JSON value over several lines is still one request.
    let r = s.invoke_json("{\n  \"inputs\": \"I love this!\"\n}\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn generation_json_lines_equal_single_requests() {
    let s = Server::start(&llama_lm(), &[("HF_TASK", "text-generation")]);
    let records: Vec<Value> = golden_requests("models/golden/text-generation/llama-lm.json")
        .into_iter()
        .filter(|r| r["parameters"].get("do_sample").is_none())
        .chain((0..12).map(|i| {
            json!({"inputs": format!("story {i} about"), "parameters": {"max_new_tokens": 4 + i}})
        }))
        .collect();
    assert!(records.len() > 20);
    let singles = single_answers(&s, &records);
    let r = post_json_lines(&s, &records);
    assert_same_lines(&answer_lines(&r), &singles, &records);

    // Streaming has no place in a record.
    for stream in [
        r#"{"inputs": "hello", "stream": true}"#,
        r#"{"inputs": "hello", "parameters": {"stream": true, "max_new_tokens": 3}}"#,
    ] {
        let body = format!("{{\"inputs\": \"a\"}}\n{stream}\n");
        let m = s
            .request("POST", "/invocations", &[JSON_LINES], body.as_bytes())
            .envelope(400);
        assert!(m.contains("line 2") && m.contains("stream"), "{m}");
    }
}

#[test]
fn a_bad_record_is_a_400_naming_its_line() {
    let s = Server::start(&bert_cls(), &[]);
    let cases: &[(&str, &[&str])] = &[
        (
            "{\"inputs\": \"a\"}\n\n{\"inputs\": 5}\n",
            &["line 3", "text input must be of type"],
        ),
        (
            "{\"inputs\": \"a\"}\n{\"inputs\": \"b\"\n",
            &["line 2 is not valid JSON"],
        ),
        ("\"just text\"\n", &["line 1", "must be a JSON object"]),
        (
            "{\"inputs\": \"a\"}\n{\"inputs\": \"b\", \"parameters\": {\"foo\": 1}}\n",
            &["line 2", "unknown parameter `foo`"],
        ),
        (
            "{\"inputs\": \"a\", \"stream\": true}\n",
            &["line 1", "\"stream\": true"],
        ),
        ("\n \n", &["no JSON Lines record"]),
    ];
    for (body, wanted) in cases {
        let m = s
            .request("POST", "/invocations", &[JSON_LINES], body.as_bytes())
            .envelope(400);
        for want in *wanted {
            assert!(m.contains(want), "{body:?}: {m}");
        }
    }
    // The same through application/json (several lines, the first a record of its own).
    let m = s
        .request(
            "POST",
            "/invocations",
            &[JSON],
            b"{\"inputs\": \"a\"}\n{\"inputs\": null}\n",
        )
        .envelope(400);
    assert!(m.contains("line 2"), "{m}");
    // JSON Lines are answered in JSON Lines: CSV is refused before any work.
    let m = s
        .request(
            "POST",
            "/invocations",
            &[JSON_LINES, ("Accept", "text/csv")],
            b"{\"inputs\": \"a\"}\n",
        )
        .envelope(400);
    assert!(m.contains("JSON Lines"), "{m}");
}

/// The value of the sample line `name{labels...} value` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let matches =
            (rest.is_empty() || rest.starts_with('{')) && labels.iter().all(|l| rest.contains(l));
        matches.then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn metrics_count_requests_and_show_histograms() {
    let s = Server::start(&bert_cls(), &[]);
    for i in 0..5 {
        let r = s.invoke_json(&format!(r#"{{"inputs": "request {i}"}}"#));
        assert_eq!(r.status, 200);
    }
    let r = s.request(
        "POST",
        "/invocations",
        &[JSON_LINES],
        b"{\"inputs\": \"a\"}\n{\"inputs\": [\"b\", \"c\"]}\n",
    );
    assert_eq!(r.status, 200);
    s.invoke_json(r#"{"inputs": 5}"#).envelope(400);
    s.invoke_json(r#"{"inputs": null}"#).envelope(400);
    let r = s.request(
        "POST",
        "/models/model/invoke",
        &[JSON],
        br#"{"inputs": "x"}"#,
    );
    assert_eq!(r.status, 200);
    s.request("GET", "/nowhere", &[], b"").envelope(404);

    let r = s.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = r.text();
    let requests = "sagemaker_hf_requests_total";
    let invocations = r#"route="/invocations""#;
    assert_eq!(
        sample(&m, requests, &[invocations, r#"status="200""#]),
        Some(6.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, requests, &[invocations, r#"status="400""#]),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &m,
            requests,
            &[r#"route="/models/{model}/invoke""#, r#"status="200""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, requests, &[r#"route="unmatched""#, r#"status="404""#]),
        Some(1.0)
    );
    for histogram in [
        "sagemaker_hf_request_duration_seconds",
        "sagemaker_hf_queue_wait_seconds",
        "sagemaker_hf_batch_size",
    ] {
        assert!(
            m.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram}: {m}"
        );
        assert!(m.contains(&format!("{histogram}_bucket{{")), "{histogram}");
    }
    assert_eq!(
        sample(
            &m,
            "sagemaker_hf_request_duration_seconds_count",
            &[invocations]
        ),
        Some(8.0)
    );
    let passes = sample(&m, "sagemaker_hf_batch_size_count", &[]).unwrap();
    assert!(passes > 0.0, "{m}");
    // 5 single sequences, 3 in the JSON Lines request, 1 through the alias.
    assert_eq!(sample(&m, "sagemaker_hf_batch_size_sum", &[]), Some(9.0));
    assert!(sample(&m, "sagemaker_hf_queue_wait_seconds_count", &[]).unwrap() >= 7.0);
    let load = sample(&m, "sagemaker_hf_model_load_seconds", &[]).unwrap();
    assert!(load > 0.0 && load < 60.0, "{load}");
}

#[test]
fn generation_metrics_count_tokens_and_first_token_waits() {
    let s = Server::start(&llama_lm(), &[("HF_TASK", "text-generation")]);
    for _ in 0..2 {
        let r = s.invoke_json(
            r#"{"inputs": "hello", "parameters": {"max_new_tokens": 5, "min_new_tokens": 5}}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = s.request("GET", "/metrics", &[], b"").text();
    assert_eq!(
        sample(&m, "sagemaker_hf_generated_tokens_total", &[]),
        Some(10.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "sagemaker_hf_queue_wait_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(sample(&m, "sagemaker_hf_batch_size_count", &[]), Some(10.0));
}

#[test]
fn request_ids_are_echoed_or_generated() {
    let s = Server::start(&bert_cls(), &[]);
    let body = br#"{"inputs": "I love this!"}"#;
    let r = s.request(
        "POST",
        "/invocations",
        &[
            JSON,
            ("X-Amzn-SageMaker-Inference-Id", "sm-inference-42"),
            ("X-Request-Id", "client-7"),
        ],
        body,
    );
    assert_eq!(r.header("x-request-id"), Some("sm-inference-42"));
    // ... and in x-amzn-RequestId, boto3's ResponseMetadata.RequestId.
    assert_eq!(r.header("x-amzn-requestid"), Some("sm-inference-42"));
    let r = s.request(
        "POST",
        "/invocations",
        &[JSON, ("X-Request-Id", "client-7")],
        body,
    );
    assert_eq!(r.header("x-request-id"), Some("client-7"));
    let generated: Vec<String> = (0..2)
        .map(|_| {
            let r = s.request("GET", "/ping", &[], b"");
            r.header("x-request-id").unwrap().to_string()
        })
        .collect();
    assert_ne!(generated[0], generated[1]);
    for id in &generated {
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4, "{id}");
    }
    // Errors carry it too.
    let r = s.request("GET", "/nowhere", &[("X-Request-Id", "lost-1")], b"");
    assert_eq!((r.status, r.header("x-request-id")), (404, Some("lost-1")));
}

/// Starts a server with these logging variables (RUST_LOG unset unless given), sends a ping and
/// an invocation with `id`, and returns what it logged.
fn logged(env: &[(&str, &str)], id: &str) -> String {
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
        env.push(("RUST_LOG", ""));
    }
    let s = Server::start(&bert_cls(), &env);
    s.request("GET", "/ping", &[], b"");
    let r = s.request(
        "POST",
        "/invocations",
        &[JSON, ("X-Amzn-SageMaker-Inference-Id", id)],
        br#"{"inputs": "I love this!"}"#,
    );
    assert_eq!(r.status, 200);
    s.stop()
}

#[test]
fn access_log_lines_at_info_without_colours() {
    let stderr = logged(&[("SAGEMAKER_CONTAINER_LOG_LEVEL", "20")], "text-1");
    let access = stderr
        .lines()
        .find(|l| l.contains("access") && l.contains("request_id=text-1"))
        .unwrap_or_else(|| panic!("no access line:\n{stderr}"));
    for field in [
        "INFO",
        "method=POST",
        "path=/invocations",
        "status=200",
        "duration_ms=",
    ] {
        assert!(access.contains(field), "{field}: {access}");
    }
    assert!(!stderr.contains('\x1b'), "ANSI escape codes:\n{stderr}");
    // /ping is logged at DEBUG only; the level variable is read, not reported as unused.
    assert!(!stderr.contains("path=/ping"), "{stderr}");
    assert!(stderr.contains("environment SAGEMAKER_CONTAINER_LOG_LEVEL=20"));
    assert!(!stderr.contains("not used"), "{stderr}");

    let debug = logged(&[("SAGEMAKER_CONTAINER_LOG_LEVEL", "10")], "text-2");
    assert!(debug.contains("path=/ping"), "{debug}");
}

#[test]
fn json_log_lines_parse() {
    let stderr = logged(&[("LOG_FORMAT", "json"), ("RUST_LOG", "info")], "json-1");
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() > 3, "{stderr}");
    let access = lines
        .iter()
        .find(|l| l["target"] == "access" && l["request_id"] == "json-1")
        .unwrap_or_else(|| panic!("no access line:\n{stderr}"));
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["path"], "/invocations");
    assert_eq!(access["status"], 200);
    assert!(access["duration_ms"].as_f64().is_some(), "{access}");
}

#[test]
fn container_log_level_40_silences_info_and_rust_log_wins() {
    let stderr = logged(&[("SAGEMAKER_CONTAINER_LOG_LEVEL", "40")], "quiet-1");
    assert!(!stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains("quiet-1"), "{stderr}");
    let stderr = logged(
        &[
            ("SAGEMAKER_CONTAINER_LOG_LEVEL", "40"),
            ("RUST_LOG", "info"),
        ],
        "loud-1",
    );
    assert!(stderr.contains("request_id=loud-1"), "{stderr}");
}

#[test]
fn pings_while_loading_log_no_warnings() {
    // A Hub that accepts connections and never answers: the model never loads.
    let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hub.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = hub.incoming().collect();
        drop(held);
    });
    let cache = std::env::temp_dir().join(format!("ops-hang-{}", std::process::id()));
    let s = Server::spawn(
        "org/slow-model",
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ],
    );
    let mut answered = 0;
    let started = std::time::Instant::now();
    while answered < 5 && started.elapsed() < Duration::from_secs(10) {
        if let Ok(r) = common::try_request(s.port, "GET", "/ping", &[], b"") {
            assert_eq!(r.status, 503);
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(answered, 5);
    let stderr = s.stop();
    assert!(!stderr.contains("WARN"), "{stderr}");
}
