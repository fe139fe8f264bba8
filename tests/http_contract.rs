//! The DLC's HTTP behaviour (the table in ../shared/peer/README.md §4, recorded from the real
//! Python DLC on the same MiniLM classifier), row by row against the real binary. Where we differ
//! on purpose the row says so; README.md "Differences from the Python DLC" lists them.

mod common;

use common::{assert_close, minilm_cls, time_limit, Server};
use serde_json::{json, Value};

const JSON: (&str, &str) = ("Content-Type", "application/json");
const LOVE: &str = r#"{"inputs": "I love this!"}"#;
const UNSUPPORTED_TAIL: &str = " is not supported by this framework.\n\n            Please implement input_fn to to deserialize the request data or an output_fn to\n            serialize the response. For more information, see the SageMaker Python SDK README.";

fn love() -> Value {
    json!([{"label": "NEGATIVE", "score": 0.6648045778274536}])
}

fn ok_json(r: &common::Response, want: &Value, row: &str) {
    assert_eq!(r.status, 200, "row {row}: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "row {row}"
    );
    assert_close(&r.json(), want, 1e-4, &format!("row {row}"));
}

#[test]
fn behaviour_table_rows() {
    let s = Server::start(&minilm_cls(), &[]);

    // 1-3: ping, any method; MMS's exact body.
    for method in ["GET", "POST"] {
        let r = s.request(method, "/ping", &[], b"");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "{\n  \"status\": \"Healthy\"\n}\n"),
            "{method} /ping"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(s.request("HEAD", "/ping", &[], b"").status, 200);

    // 4-9: the pipeline's shapes.
    let r = s.invoke_json(LOVE);
    ok_json(&r, &love(), "4");
    // Compact, Python-formatted JSON: no spaces, float64 digits of the float32 score.
    assert!(
        r.text()
            .starts_with("[{\"label\":\"NEGATIVE\",\"score\":0.66480"),
        "{}",
        r.text()
    );
    for h in ["x-request-id", "pragma", "cache-control", "expires"] {
        assert!(r.header(h).is_some(), "MMS header {h} missing");
    }
    ok_json(
        &s.invoke_json(r#"{"inputs": ["I love this!", "I hate this."]}"#),
        &json!([{"label":"NEGATIVE","score":0.6648045778274536},{"label":"NEGATIVE","score":0.6845687031745911}]),
        "5",
    );
    let top2 = json!([{"label":"NEGATIVE","score":0.6648045778274536},{"label":"POSITIVE","score":0.3351953625679016}]);
    ok_json(
        &s.invoke_json(r#"{"inputs": "I love this!", "parameters": {"top_k": 2}}"#),
        &top2,
        "6",
    );
    ok_json(
        &s.invoke_json(
            r#"{"inputs": ["I love this!", "I hate this."], "parameters": {"top_k": 2}}"#,
        ),
        &json!([top2, [{"label":"NEGATIVE","score":0.6845687031745911},{"label":"POSITIVE","score":0.3154313266277313}]]),
        "7",
    );
    ok_json(
        &s.invoke_json(r#"{"inputs": "I love this!", "parameters": {"top_k": null}}"#),
        &top2,
        "8",
    );
    ok_json(
        &s.invoke_json(
            r#"{"inputs": "I love this!", "parameters": {"function_to_apply": "none"}}"#,
        ),
        &json!([{"label":"NEGATIVE","score":0.08724750578403473}]),
        "9",
    );

    // 10-11: bad parameters are 400s; our messages name the problem (the DLC's leak Python internals).
    let m = s
        .invoke_json(r#"{"inputs": "I love this!", "parameters": {"foo": 1}}"#)
        .envelope(400);
    assert!(
        m.contains("unknown parameter `foo`") && m.contains("top_k"),
        "row 10: {m}"
    );
    let m = s
        .invoke_json(r#"{"inputs": "I love this!", "parameters": 5}"#)
        .envelope(400);
    assert!(
        m.contains("`parameters` must be a JSON object"),
        "row 11: {m}"
    );

    // 12: a text pair without the `inputs` wrapper is a bare object.
    ok_json(
        &s.invoke_json(r#"{"text": "I love this!", "text_pair": "Me too"}"#),
        &json!({"label":"NEGATIVE","score":0.6429010629653931}),
        "12",
    );
    // 13-16: the pipeline's own messages.
    let m = s.invoke_json(r#"{"foo": "I love this!"}"#).envelope(400);
    assert!(m.contains("`foo`") && m.contains("`text`"), "row 13: {m}");
    for (row, body) in [("14", "{}"), ("15", r#"{"inputs": null}"#)] {
        let m = s.invoke_json(body).envelope(400);
        assert!(m.contains("`text`"), "row {row}: {m}");
    }
    let m = s.invoke_json(r#"{"inputs": 123}"#).envelope(400);
    assert!(
        m.starts_with("text input must be of type `str`"),
        "row 16: {m}"
    );
    // 17-18
    ok_json(
        &s.invoke_json(r#"{"inputs": ""}"#),
        &json!([{"label":"NEGATIVE","score":0.6590920090675354}]),
        "17",
    );
    ok_json(&s.invoke_json(r#"{"inputs": []}"#), &json!([]), "18");
    // 19-20: the body must be an object.
    let m = s.invoke_json(r#""I love this!""#).envelope(400);
    assert!(
        m.contains("must be a JSON object") && m.contains("string"),
        "row 19: {m}"
    );
    let m = s.invoke_json(r#"["I love this!"]"#).envelope(400);
    assert!(
        m.contains("must be a JSON object") && m.contains("array"),
        "row 20: {m}"
    );
    // 21: raw UTF-8 in and out.
    ok_json(
        &s.invoke_json(r#"{"inputs": "J’adore ça 😀"}"#),
        &json!([{"label":"NEGATIVE","score":0.6519750356674194}]),
        "21",
    );
    // 22-23: too long → 400 that says how to fix it; with truncation → 200.
    let long = format!(r#"{{"inputs": "{}"}}"#, vec!["word"; 600].join(" "));
    let m = s.invoke_json(&long).envelope(400);
    assert!(
        m.contains("602 tokens") && m.contains("512") && m.contains("truncation"),
        "row 22: {m}"
    );
    let long_truncated = format!(
        r#"{{"inputs": "{}", "parameters": {{"truncation": true}}}}"#,
        vec!["word"; 600].join(" ")
    );
    ok_json(
        &s.invoke_json(&long_truncated),
        &json!([{"label":"NEGATIVE","score":0.5515678524971008}]),
        "23",
    );
    // 24-26: undecodable bodies.
    let m = s.invoke_json(r#"{"inputs": "I love"#).envelope(400);
    assert!(m.contains("not valid JSON"), "row 24: {m}");
    let m = s
        .request("POST", "/invocations", &[JSON], b"")
        .envelope(400);
    assert!(m.contains("empty"), "row 25: {m}");
    let m = s
        .request(
            "POST",
            "/invocations",
            &[JSON],
            b"{\"inputs\": \"\xff\xfe\"}",
        )
        .envelope(400);
    assert!(m.contains("not valid JSON"), "row 26: {m}");

    // 27-31: Content-Type. Difference: parameters and case are tolerated (the DLC answers 400).
    for (row, header) in [
        ("27", ("Content-Type", "application/json; charset=utf-8")),
        ("28", ("content-type", "application/json")),
        ("29", ("CONTENT-TYPE", "application/json")),
        ("30", ("ContentType", "application/json")),
        ("31", ("Content-Type", "APPLICATION/JSON")),
    ] {
        ok_json(
            &s.request("POST", "/invocations", &[header], LOVE.as_bytes()),
            &love(),
            row,
        );
    }
    // 32-35: CSV in.
    let csv = ("Content-Type", "text/csv");
    ok_json(
        &s.request(
            "POST",
            "/invocations",
            &[csv],
            b"inputs\nI love this!\nI hate this.\n",
        ),
        &json!([{"label":"NEGATIVE","score":0.6648045778274536},{"label":"NEGATIVE","score":0.6845687031745911}]),
        "32",
    );
    ok_json(
        &s.request("POST", "/invocations", &[csv], b"inputs\nI love this!"),
        &love(),
        "33",
    );
    let m = s
        .request("POST", "/invocations", &[csv], b"I love this!\n")
        .envelope(400);
    assert!(
        m.starts_with("You need to provide the correct CSV with Header columns"),
        "row 34: {m}"
    );
    let m = s.request("POST", "/invocations", &[csv], b"").envelope(400);
    assert!(m.contains("CSV body is empty"), "row 35: {m}");
    // 36-39: unsupported types keep the DLC's exact message.
    for (row, ct) in [
        ("36", "text/plain"),
        ("37", "application/octet-stream"),
        ("39", "application/x-www-form-urlencoded"),
    ] {
        let m = s
            .request(
                "POST",
                "/invocations",
                &[("Content-Type", ct)],
                b"inputs=I+love+this",
            )
            .envelope(400);
        assert_eq!(
            m,
            format!("Content type {ct}{UNSUPPORTED_TAIL}"),
            "row {row}"
        );
    }
    let m = s
        .request("POST", "/invocations", &[], LOVE.as_bytes())
        .envelope(400);
    assert_eq!(m, format!("Content type None{UNSUPPORTED_TAIL}"), "row 38");

    // 40-45: Accept.
    ok_json(
        &s.request(
            "POST",
            "/invocations",
            &[JSON, ("Accept", "*/*")],
            LOVE.as_bytes(),
        ),
        &love(),
        "40",
    );
    ok_json(
        &s.request(
            "POST",
            "/invocations",
            &[JSON, ("Accept", "application/json")],
            LOVE.as_bytes(),
        ),
        &love(),
        "41",
    );
    let r = s.request(
        "POST",
        "/invocations",
        &[JSON, ("Accept", "text/csv")],
        br#"{"inputs": ["I love this!", "I hate this."]}"#,
    );
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("text/csv")),
        "row 42"
    );
    let text = r.text();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "label,score", "row 42");
    assert!(
        lines[1].starts_with("NEGATIVE,0.66480")
            && lines[2].starts_with("NEGATIVE,0.68456")
            && lines[3].is_empty(),
        "row 42: {text:?}"
    );
    // Difference: no pickled numpy arrays (x-npy) — a clear 400 instead.
    let m = s
        .request(
            "POST",
            "/invocations",
            &[JSON, ("Accept", "application/x-npy")],
            LOVE.as_bytes(),
        )
        .envelope(400);
    assert_eq!(
        m,
        format!("Content type application/x-npy{UNSUPPORTED_TAIL}"),
        "row 43"
    );
    let m = s
        .request(
            "POST",
            "/invocations",
            &[JSON, ("Accept", "text/plain")],
            LOVE.as_bytes(),
        )
        .envelope(400);
    assert_eq!(
        m,
        format!("Content type text/plain{UNSUPPORTED_TAIL}"),
        "row 44"
    );
    // Difference: an Accept list picks the first type we can write (the DLC answers 400).
    ok_json(
        &s.request(
            "POST",
            "/invocations",
            &[JSON, ("Accept", "application/json, text/csv")],
            LOVE.as_bytes(),
        ),
        &love(),
        "45",
    );

    // 46-52: methods and alias routes.
    let m = s.request("GET", "/invocations", &[], b"").envelope(400);
    assert_eq!(m, format!("Content type None{UNSUPPORTED_TAIL}"), "row 46");
    ok_json(
        &s.request("PUT", "/invocations", &[JSON], LOVE.as_bytes()),
        &love(),
        "47",
    );
    ok_json(
        &s.request(
            "POST",
            "/invocations?model_name=model",
            &[JSON],
            LOVE.as_bytes(),
        ),
        &love(),
        "48",
    );
    let r = s.request(
        "POST",
        "/invocations?model_name=nope",
        &[JSON],
        LOVE.as_bytes(),
    );
    assert_eq!(r.envelope(404), "Model not found: nope", "row 49");
    assert_eq!(r.json()["type"], "ModelNotFoundException");
    for (row, path) in [
        ("50", "/models/model/invoke"),
        ("51", "/predictions/model"),
        ("52", "/invocations/"),
    ] {
        ok_json(
            &s.request("POST", path, &[JSON], LOVE.as_bytes()),
            &love(),
            row,
        );
    }
    // 53-57. Difference (54): no OpenAPI description on `OPTIONS /`.
    assert_eq!(
        s.request("OPTIONS", "/", &[], b"").envelope(405),
        "Requested method is not allowed, please refer to API document.",
        "row 54"
    );
    let r = s.request("GET", "/", &[], b"");
    assert_eq!(
        r.envelope(405),
        "Requested method is not allowed, please refer to API document.",
        "row 53"
    );
    let r = s.request("GET", "/unknown", &[], b"");
    assert_eq!(
        r.envelope(404),
        "Requested resource is not found, please refer to API document.",
        "row 55"
    );
    assert_eq!(r.json()["type"], "ResourceNotFoundException");
    let models = s.request("GET", "/models", &[], b"");
    assert_eq!(models.status, 200, "row 56");
    assert_eq!(models.json()["models"][0]["modelName"], "model", "row 56");
    // Difference: 413 carries the envelope (the DLC's is empty).
    let big = format!(r#"{{"inputs": "{}"}}"#, "a".repeat(6_600_000));
    let m = s
        .request("POST", "/invocations", &[JSON], big.as_bytes())
        .envelope(413);
    assert!(m.contains("6553500"), "row 57: {m}");

    // SageMaker's custom attributes header is accepted and ignored.
    ok_json(
        &s.request(
            "POST",
            "/invocations",
            &[
                JSON,
                ("X-Amzn-SageMaker-Custom-Attributes", "trace=1"),
                ("X-Unknown", "x"),
            ],
            LOVE.as_bytes(),
        ),
        &love(),
        "custom attributes",
    );
    // Gson escaping in the envelope: quotes and HTML characters.
    let r = s.invoke_json(r#"{"inputs": "x", "parameters": {"<b>": 1}}"#);
    assert!(r.text().contains("\\u003cb\\u003e"), "{}", r.text());
}

#[test]
fn payload_limit_follows_sagemaker_max_payload_in_mb() {
    let s = Server::start(&minilm_cls(), &[("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")]);
    let big = format!(r#"{{"inputs": "{}"}}"#, "a ".repeat(600_000));
    let m = s.invoke_json(&big).envelope(413);
    assert!(m.contains("1048576"), "{m}");
    assert_eq!(s.invoke_json(LOVE).status, 200);
}

#[test]
fn overload_answers_503_at_once_and_serves_the_rest() {
    let s = Server::start(
        &minilm_cls(),
        &[("MAX_QUEUE", "2"), ("MAX_BATCH_TOKENS", "256")],
    );
    let body = format!(
        r#"{{"inputs": ["{}"], "parameters": {{"truncation": true}}}}"#,
        vec!["word"; 300].join(" ")
    );
    let port = s.port;
    let handles: Vec<_> = (0..24)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                common::request(port, "POST", "/invocations", &[JSON], body.as_bytes())
            })
        })
        .collect();
    let responses: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + refused.len(), 24, "only 200 and 503 expected");
    assert!(
        ok >= 1 && !refused.is_empty(),
        "ok {ok}, refused {}",
        refused.len()
    );
    for r in refused {
        assert_eq!(r.json()["type"], "ServiceUnavailableException");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(s.invoke_json(LOVE).status, 200, "the server recovers");
}

#[test]
fn deadline_answers_504_and_abandoned_work_is_dropped() {
    // One 250-token sequence per pass (well under a second), 400 of them (far more than a second).
    let s = Server::start(
        &minilm_cls(),
        &[
            ("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", "1"),
            ("MAX_BATCH_TOKENS", "256"),
        ],
    );
    let rows: Vec<String> = (0..400)
        .map(|i| format!("\"{} {i}\"", vec!["word"; 250].join(" ")))
        .collect();
    let body = format!(r#"{{"inputs": [{}]}}"#, rows.join(","));
    let started = std::time::Instant::now();
    let r = s.invoke_json(&body);
    let m = r.envelope(504);
    assert!(m.contains("1 s"), "{m}");
    assert!(
        started.elapsed() < time_limit(10),
        "the deadline was not applied"
    );
    // The rest of that request is dropped, so the next one is answered at once (not after it).
    let started = std::time::Instant::now();
    assert_eq!(s.invoke_json(LOVE).status, 200);
    assert!(
        started.elapsed() < time_limit(5),
        "abandoned work kept the worker busy"
    );
}

#[test]
fn a_request_larger_than_one_batch_spans_passes_and_matches_single_requests() {
    // 40 inputs of different lengths under a 64-token budget: many passes, two workers.
    let s = Server::start(&minilm_cls(), &[("MAX_BATCH_TOKENS", "64")]);
    let texts: Vec<String> = (0..40)
        .map(|i| vec!["great"; 1 + i % 9].join(" "))
        .collect();
    let batched = s.invoke_json(&json!({"inputs": texts}).to_string());
    assert_eq!(batched.status, 200, "{}", batched.text());
    let batched = batched.json();
    for (i, text) in texts.iter().enumerate() {
        let single = s.invoke_json(&json!({"inputs": text}).to_string()).json();
        assert_close(&batched[i], &single[0], 1e-5, &format!("input {i}"));
    }
}
