//! Observability at the HTTP edge: the Prometheus recorder (rendered by our own `GET /metrics`;
//! the exporter starts no listener of its own), and the layer every request passes through:
//! its request id (`X-Amzn-SageMaker-Inference-Id` or `X-Request-Id` when sent, else a new
//! UUID; returned in `X-Request-Id`, and in `x-amzn-RequestId`, where boto3 reads
//! `ResponseMetadata.RequestId` from), its counts and duration, and one access log line (target
//! `access`; INFO, DEBUG for `/ping`, which SageMaker calls every few seconds).

use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::error::ServerError;
use crate::telemetry;

/// The route pattern a response answered, for the metrics' `route` label (set by the router).
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0,
];
const SEQUENCES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the process's metrics recorder and returns the handle `/metrics` renders from.
/// A background thread drains the histograms' samples every few seconds, so memory stays flat
/// when nobody scrapes.
pub fn install() -> Result<PrometheusHandle, String> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(telemetry::REQUEST_DURATION.into()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(telemetry::QUEUE_WAIT.into()), SECONDS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(telemetry::BATCH_SIZE.into()), SEQUENCES)
        })
        .map_err(|e| e.to_string())?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .map_err(|e| e.to_string())?;
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        telemetry::REQUESTS,
        "Requests answered, by route and HTTP status"
    );
    describe_histogram!(
        telemetry::REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its response head, by route"
    );
    describe_histogram!(
        telemetry::QUEUE_WAIT,
        Unit::Seconds,
        "Encoder tasks: submission to the first forward pass of a job; generation: submission to a sequence's first token"
    );
    describe_histogram!(
        telemetry::BATCH_SIZE,
        "Sequences in one forward pass (an encoder batch or a generation step)"
    );
    describe_counter!(telemetry::GENERATED_TOKENS, "Tokens generated");
    describe_gauge!(
        telemetry::MODEL_LOAD,
        Unit::Seconds,
        "Time from start-up to the model ready to serve (files, weights, tokenizer)"
    );
}

/// `GET /metrics`: the Prometheus text format.
pub fn render(handle: Option<&PrometheusHandle>) -> Result<Response, ServerError> {
    let handle = handle.ok_or(ServerError::RouteNotFound)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}

/// The layer around every request: id, span, metrics, access log.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let span = tracing::info_span!("request", id = %id);
    let mut response = next.run(request).instrument(span).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or("unknown", |r| r.0);
    telemetry::request(route, status, elapsed);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert("x-amzn-requestid", value.clone());
        response.headers_mut().insert("x-request-id", value);
    }
    let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    if route == "/ping" {
        tracing::debug!(target: "access", method = %method, path = %path, status, duration_ms, request_id = %id);
    } else {
        tracing::info!(target: "access", method = %method, path = %path, status, duration_ms, request_id = %id);
    }
    response
}

/// The id SageMaker gave the request, or the client's, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    ["x-amzn-sagemaker-inference-id", "x-request-id"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
        .find(|id| !id.is_empty() && id.len() <= 256)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_come_from_sagemaker_then_the_client_then_a_uuid() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_id(&headers).len(), 36);
        headers.insert("x-request-id", HeaderValue::from_static("client-1"));
        assert_eq!(request_id(&headers), "client-1");
        headers.insert(
            "x-amzn-sagemaker-inference-id",
            HeaderValue::from_static("sm-7"),
        );
        assert_eq!(request_id(&headers), "sm-7");
        headers.insert(
            "x-amzn-sagemaker-inference-id",
            HeaderValue::from_static(""),
        );
        assert_eq!(request_id(&headers), "client-1");
    }
}
