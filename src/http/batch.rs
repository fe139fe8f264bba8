//! SageMaker batch transform: `GET /execution-parameters`, and bodies of one JSON request per
//! line (JSON Lines), as MultiRecord batches arrive: `Content-Type: application/jsonlines`
//! (or `application/jsonl`, `application/x-jsonlines`), or an `application/json` body that is
//! not one JSON value but one per line. Each line is a request body as the DLC takes it; the
//! answer holds one JSON line per record, in order, as `application/jsonlines`. Empty lines are
//! skipped; a bad record fails the request with a 400 that names its line.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::codec::{decode, RequestFormat, ResponseFormat, JSON_LINES};
use super::pyjson::to_python_json;
use crate::config::ExecutionParameters;
use crate::error::ServerError;
use crate::offload::cpu_work;
use crate::service::records::Record;
use crate::service::InferenceService;

/// A decoded request body: one request, or JSON Lines records.
pub enum Body {
    One(Value),
    Records(Vec<Record>),
}

/// Decodes a body by its format; an `application/json` body that fails to parse as one value
/// but holds several lines, the first a JSON value of its own, is read as JSON Lines.
pub fn decode_body(format: RequestFormat, body: &[u8]) -> Result<Body, ServerError> {
    match format {
        RequestFormat::JsonLines => records(body).map(Body::Records),
        RequestFormat::Json => match decode(format, body) {
            Ok(value) => Ok(Body::One(value)),
            Err(_) if is_multi_line(body) => records(body).map(Body::Records),
            Err(error) => Err(error),
        },
        RequestFormat::Csv | RequestFormat::Image | RequestFormat::Audio => {
            decode(format, body).map(Body::One)
        }
    }
}

/// The lines of a body with their 1-based numbers, blank ones left out.
fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
}

fn is_multi_line(body: &[u8]) -> bool {
    let mut lines = lines(body);
    match (lines.next(), lines.next()) {
        (Some((_, first)), Some(_)) => serde_json::from_slice::<Value>(first).is_ok(),
        _ => false,
    }
}

fn records(body: &[u8]) -> Result<Vec<Record>, ServerError> {
    let records = lines(body)
        .map(|(line, text)| {
            serde_json::from_slice(text)
                .map(|body| Record { line, body })
                .map_err(|e| {
                    ServerError::bad_request(format!(
                        "JSON Lines record on line {line} is not valid JSON: {e}"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if records.is_empty() {
        return Err(ServerError::bad_request(
            "The request body holds no JSON Lines record: send one JSON request such as {\"inputs\": \"...\"} per line",
        ));
    }
    Ok(records)
}

/// Answers JSON Lines records: one compact JSON line per record, in order.
pub async fn answer(
    service: &InferenceService,
    records: Vec<Record>,
    size: usize,
    output: ResponseFormat,
) -> Result<Response, ServerError> {
    if output == ResponseFormat::Csv {
        return Err(ServerError::bad_request(
            "JSON Lines requests are answered in JSON Lines: send Accept: application/jsonlines (or application/json), not text/csv",
        ));
    }
    let results = service.reply_records(records, size).await?;
    let body = cpu_work(size, move || {
        let mut body = String::new();
        for result in &results {
            body.push_str(&to_python_json(result));
            body.push('\n');
        }
        Ok(body)
    })
    .await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, JSON_LINES)], body).into_response())
}

/// `GET /execution-parameters`: what a batch transform job should send this container.
pub fn execution_parameters(parameters: &ExecutionParameters) -> Response {
    let body = json!({
        "MaxConcurrentTransforms": parameters.max_concurrent_transforms,
        "BatchStrategy": parameters.batch_strategy.as_str(),
        "MaxPayloadInMB": parameters.max_payload_in_mb,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(body: Body) -> Vec<(usize, Value)> {
        match body {
            Body::Records(records) => records.into_iter().map(|r| (r.line, r.body)).collect(),
            Body::One(value) => panic!("one value: {value}"),
        }
    }

    #[test]
    fn json_lines_bodies_become_records_with_their_lines() {
        let body = b"{\"inputs\": \"a\"}\r\n\n  \n{\"inputs\": \"b\"}\n";
        let records = lines_of(decode_body(RequestFormat::JsonLines, body).unwrap());
        assert_eq!(
            records,
            vec![(1, json!({"inputs": "a"})), (4, json!({"inputs": "b"}))]
        );
        // One record alone is still JSON Lines when the client says so.
        let one = lines_of(decode_body(RequestFormat::JsonLines, b"{\"inputs\": 1}").unwrap());
        assert_eq!(one.len(), 1);
        let e = decode_body(RequestFormat::JsonLines, b"{\"inputs\": 1}\n{oops\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 2 is not valid JSON"), "{e}");
        let e = decode_body(RequestFormat::JsonLines, b"\n \n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no JSON Lines record"), "{e}");
    }

    #[test]
    fn application_json_is_one_value_unless_it_is_several_lines() {
        assert!(matches!(
            decode_body(RequestFormat::Json, b"{\n  \"inputs\": \"a\"\n}\n").unwrap(),
            Body::One(_)
        ));
        let records = lines_of(
            decode_body(
                RequestFormat::Json,
                b"{\"inputs\": \"a\"}\n{\"inputs\": \"b\"}",
            )
            .unwrap(),
        );
        assert_eq!(records.len(), 2);
        // A broken pretty-printed object keeps the JSON error.
        let e = decode_body(RequestFormat::Json, b"{\n  \"inputs\": \"a\",\n}\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        // Two values on one line are not JSON Lines.
        let e = decode_body(RequestFormat::Json, b"{\"inputs\": 1} {\"inputs\": 2}")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("The request body is not valid JSON"), "{e}");
    }
}
