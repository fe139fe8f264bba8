//! boto3's `sagemaker-runtime` client (the real one, from the test venv that
//! `models/fetch_models.sh` makes) against the real binary: `invoke_endpoint` and
//! `invoke_endpoint_with_response_stream` get `/invocations`'s bytes in SageMaker's response
//! shape, container errors become `ModelError` with the container's status and body, and a
//! stream that fails ends with a `ModelStreamError` event. tests/boto3_client.py makes each call.

mod common;

use common::{minilm_cls, Server};
use serde_json::{json, Value};

/// One boto3 call (`operation` with keyword arguments `params`) through tests/boto3_client.py.
fn boto3(server: &Server, operation: &str, params: Value) -> Value {
    common::python_client(
        "boto3_client.py",
        server.port,
        &json!({"operation": operation, "params": params}),
    )
}

fn invoke_endpoint(server: &Server, params: Value) -> Value {
    boto3(server, "invoke_endpoint", params)
}

fn invoke_stream(server: &Server, params: Value) -> Value {
    boto3(server, "invoke_endpoint_with_response_stream", params)
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The `PayloadPart`s' bytes, one entry per event.
fn parts(answer: &Value) -> Vec<Vec<u8>> {
    let parts = answer["parts_hex"].as_array().expect("parts_hex");
    parts.iter().map(|p| unhex(p.as_str().unwrap())).collect()
}

/// `/invocations`'s answer (body de-chunked) to `body` with these headers.
fn invocations(server: &Server, headers: &[(&str, &str)], body: &str) -> common::Response {
    let mut response = server.request("POST", "/invocations", headers, body.as_bytes());
    if response.header("transfer-encoding") == Some("chunked") {
        response.body = dechunk(&response.body);
    }
    response
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        let start = line_end + 2;
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

/// The `ModelError` boto3 raised, checked against `/invocations`'s error answer to the same
/// request: SageMaker's 424 carrying the container's status and body.
fn assert_model_error(answer: &Value, container: &common::Response) {
    let error = &answer["error"];
    assert_eq!(error["is_model_error"], true, "{answer}");
    assert_eq!(error["code"], "ModelError");
    assert_eq!(error["status"], 424);
    assert_eq!(error["OriginalStatusCode"], container.status);
    assert_eq!(error["OriginalMessage"], container.text());
    let message = error["message"].as_str().unwrap();
    let side = if container.status < 500 {
        "client"
    } else {
        "server"
    };
    let wording = format!("Received {side} error ({}) from primary", container.status);
    assert!(message.starts_with(&wording), "{message}");
    let log_stream = error["LogStreamArn"].as_str().unwrap();
    assert!(
        log_stream.starts_with("arn:aws:logs:") && log_stream.ends_with("/Endpoints/my-endpoint"),
        "{log_stream}"
    );
}

#[test]
fn invoke_endpoint_answers_with_the_invocations_bytes_and_model_errors() {
    let server = Server::start(&minilm_cls(), &[]);
    let body = r#"{"inputs": ["I love this", "I hate this"]}"#;
    let json_headers = [("Content-Type", "application/json")];
    let want = invocations(&server, &json_headers, body);
    assert_eq!(want.status, 200);
    let answer = invoke_endpoint(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": body, "ContentType": "application/json",
               "CustomAttributes": "trace-id=7", "InferenceId": "request-7"}),
    );
    assert_eq!(unhex(answer["body_hex"].as_str().unwrap()), want.body);
    assert_eq!(answer["ContentType"], "application/json");
    assert_eq!(answer["InvokedProductionVariant"], "AllTraffic");
    // boto3's ResponseMetadata.RequestId is the request id: InferenceId here (sent as
    // X-Amzn-SageMaker-Inference-Id), as in the access log and X-Request-Id.
    assert_eq!(answer["request_id"], "request-7", "{answer}");
    // SageMaker echoes custom attributes only when the model sets them; ours never do.
    assert!(answer.get("CustomAttributes").is_none(), "{answer}");

    // Accept reaches the container: CSV out, same bytes as /invocations.
    let csv_headers = [("Content-Type", "application/json"), ("Accept", "text/csv")];
    let want_csv = invocations(&server, &csv_headers, body);
    let answer = invoke_endpoint(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": body, "ContentType": "application/json",
               "Accept": "text/csv"}),
    );
    assert_eq!(unhex(answer["body_hex"].as_str().unwrap()), want_csv.body);
    assert_eq!(answer["ContentType"], "text/csv");

    // A 400 of ours (bad JSON), and a missing Content-Type, become ModelError.
    let bad = invocations(&server, &json_headers, "{");
    assert_eq!(bad.status, 400);
    let answer = invoke_endpoint(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": "{", "ContentType": "application/json"}),
    );
    assert_model_error(&answer, &bad);
    // Without an InferenceId the server's own id (a UUID) reaches boto3, errors included.
    let generated = answer["error"]["request_id"].as_str().unwrap_or_default();
    assert_eq!(
        (generated.len(), generated.matches('-').count()),
        (36, 4),
        "{answer}"
    );
    let untyped = invocations(&server, &[], body);
    assert_eq!(untyped.status, 400);
    let answer = invoke_endpoint(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": body}),
    );
    assert_model_error(&answer, &untyped);

    // TargetModel picks the model as /invocations?model_name= does.
    let answer = invoke_endpoint(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": body, "ContentType": "application/json",
               "TargetModel": "model"}),
    );
    assert_eq!(unhex(answer["body_hex"].as_str().unwrap()), want.body);
    let missing = server.request(
        "POST",
        "/invocations?model_name=other",
        &json_headers,
        body.as_bytes(),
    );
    let answer = invoke_endpoint(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": body, "ContentType": "application/json",
               "TargetModel": "other"}),
    );
    assert_model_error(&answer, &missing);

    // Routes that are not the runtime API's stay ours.
    let unknown = server.request("POST", "/endpoints/my-endpoint/other", &json_headers, b"{}");
    assert_eq!(
        unknown.envelope(404).as_str(),
        "Requested resource is not found, please refer to API document."
    );
    let get = server.request("GET", "/endpoints/my-endpoint/invocations", &[], b"");
    get.envelope(405);
}

#[test]
fn a_task_that_does_not_stream_answers_the_response_stream_in_one_part() {
    let server = Server::start(&minilm_cls(), &[]);
    let body = r#"{"inputs": "I love this"}"#;
    for accept in ["application/json", "text/csv"] {
        let want = invocations(
            &server,
            &[("Content-Type", "application/json"), ("Accept", accept)],
            body,
        );
        // (the operation sends Accept as X-Amzn-SageMaker-Accept)
        let answer = invoke_stream(
            &server,
            json!({"EndpointName": "my-endpoint", "Body": body,
                   "ContentType": "application/json", "Accept": accept}),
        );
        assert_eq!(parts(&answer), vec![want.body], "{accept}");
        assert_eq!(answer["ContentType"], accept);
        assert_eq!(answer["InvokedProductionVariant"], "AllTraffic");
        assert_eq!(
            answer["headers"]["content-type"],
            "application/vnd.amazon.eventstream"
        );
        assert!(answer.get("stream_error").is_none(), "{answer}");
    }
    // An error before the stream starts is a ModelError, as for invoke_endpoint.
    let bad = invocations(&server, &[("Content-Type", "application/json")], "{");
    let answer = invoke_stream(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": "{", "ContentType": "application/json"}),
    );
    assert_model_error(&answer, &bad);
}

#[test]
fn the_response_stream_carries_the_invocations_event_stream() {
    let server = Server::start(&common::smollm2(), &[]);
    let request = json!({"inputs": "Once upon a time",
                         "parameters": {"max_new_tokens": 12, "do_sample": false},
                         "stream": true})
    .to_string();
    let want = invocations(&server, &[("Content-Type", "application/json")], &request);
    assert_eq!(want.status, 200);
    assert_eq!(want.header("content-type"), Some("text/event-stream"));
    let answer = invoke_stream(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": request, "ContentType": "application/json"}),
    );
    let parts = parts(&answer);
    assert_eq!(parts.len(), 12, "one PayloadPart per token's event");
    for part in &parts {
        assert!(part.starts_with(b"data:{") && part.ends_with(b"}\n\n"));
    }
    assert_eq!(parts.concat(), want.body);
    assert_eq!(answer["ContentType"], "text/event-stream");
    assert!(answer.get("stream_error").is_none(), "{answer}");

    // A bad generation request fails before streaming: ModelError with our 400.
    let bad_request =
        json!({"inputs": "hi", "parameters": {"max_new_tokens": "many"}, "stream": true})
            .to_string();
    let bad = invocations(
        &server,
        &[("Content-Type", "application/json")],
        &bad_request,
    );
    assert_eq!(bad.status, 400);
    let answer = invoke_stream(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": bad_request, "ContentType": "application/json"}),
    );
    assert_model_error(&answer, &bad);
}

#[test]
fn a_stream_that_times_out_ends_with_model_stream_error() {
    // 3000 tokens cannot be generated in a second.
    let server = Server::start(
        &common::smollm2(),
        &[("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", "1")],
    );
    let request = json!({"inputs": "Write a long story.",
                         "parameters": {"max_new_tokens": 3000, "min_new_tokens": 3000},
                         "stream": true})
    .to_string();
    let answer = invoke_stream(
        &server,
        json!({"EndpointName": "my-endpoint", "Body": request, "ContentType": "application/json"}),
    );
    assert_eq!(
        answer["stream_error"],
        json!({"code": "ModelStreamError", "message": "the request did not finish within 1 s"}),
        "{answer}"
    );
    // Before it, /invocations's bytes: the tokens' events, then its error event.
    let parts = parts(&answer);
    assert_eq!(
        parts.last().unwrap(),
        b"data:{\"error\":\"the request did not finish within 1 s\"}\n\n"
    );
    assert!(parts.len() < 3000);
}
