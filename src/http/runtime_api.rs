//! The SageMaker runtime API's invoke operations, so that boto3's `sagemaker-runtime` client
//! created with `endpoint_url="http://127.0.0.1:8080"` runs unchanged against this server:
//! `InvokeEndpoint` (`POST /endpoints/{name}/invocations`) and
//! `InvokeEndpointWithResponseStream` (`POST /endpoints/{name}/invocations-response-stream`).
//! Each runs its request as `/invocations` does and answers the way SageMaker answers (botocore's
//! service model for `sagemaker-runtime`, 2017-05-13).
//!
//! Meant for a local server: the SigV4 signature is not checked (any credentials do), and any
//! endpoint name reaches the one model served. The routes give no access that `/invocations`
//! does not already give on the same port.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::event_stream::{model_stream_error, payload_part};
use super::{answer, invoke, Answer, AppState, SSE_CONTENT_TYPE};
use crate::generation::sse::StreamEvent;

/// The variant SageMaker names in its answers; `AllTraffic` is the name SageMaker's SDK gives the
/// one variant of an endpoint it deploys.
const PRODUCTION_VARIANT: &str = "AllTraffic";
const INVOKED_VARIANT: HeaderName = HeaderName::from_static("x-amzn-invoked-production-variant");
const CUSTOM_ATTRIBUTES: HeaderName = HeaderName::from_static("x-amzn-sagemaker-custom-attributes");
const TARGET_MODEL: &str = "x-amzn-sagemaker-target-model";
/// The response stream's request carries the container's `Accept` under this name…
const STREAM_ACCEPT: &str = "x-amzn-sagemaker-accept";
/// …and its response the container's `Content-Type` under this one.
const STREAM_CONTENT_TYPE: HeaderName = HeaderName::from_static("x-amzn-sagemaker-content-type");
/// A whole (unstreamed) body larger than this goes out in several `PayloadPart`s (botocore
/// refuses event payloads over 24 MiB).
const MAX_PART_BYTES: usize = 1 << 20;

/// `InvokeEndpoint`: `/invocations`'s answer with `X-Amzn-Invoked-Production-Variant`, or its
/// error as SageMaker's `ModelError`. The container's custom attributes would pass through
/// untouched; the native pipelines set none, so none are echoed (as on SageMaker).
/// `TargetModel` picks the model as `/invocations?model_name=` does.
pub async fn invoke_endpoint(state: &AppState, endpoint: &str, request: Request) -> Response {
    match invoke(state, target_model(state, &request).as_deref(), request).await {
        Ok(mut response) => {
            let variant = HeaderValue::from_static(PRODUCTION_VARIANT);
            response.headers_mut().insert(INVOKED_VARIANT, variant);
            response
        }
        Err(error) => error.into_runtime_response(endpoint),
    }
}

/// `InvokeEndpointWithResponseStream`: `/invocations`'s answer as an AWS event stream. Each
/// server-sent event of a `"stream": true` generation is one `PayloadPart` carrying exactly the
/// bytes `/invocations` sends for it; any other answer is sent whole, as one `PayloadPart` (up
/// to 1 MiB a part), as SageMaker forwards a container that does not stream. An error before the
/// stream starts is SageMaker's `ModelError` (424), as for `InvokeEndpoint`; a generation that
/// fails once streaming sends its error event's bytes, as `/invocations` does, then a
/// `ModelStreamError` event (`ModelInvocationTimeExceeded` when the request's deadline passed,
/// else `StreamBroken`), which boto3 raises as `EventStreamError`.
pub async fn invoke_endpoint_with_response_stream(
    state: &AppState,
    endpoint: &str,
    mut request: Request,
) -> Response {
    let headers = request.headers_mut();
    let accept = headers.remove(STREAM_ACCEPT);
    headers.remove(header::ACCEPT);
    if let Some(accept) = accept {
        headers.insert(header::ACCEPT, accept);
    }
    let target = target_model(state, &request);
    let (content_type, attributes, body) = match answer(state, target.as_deref(), request).await {
        Err(error) => return error.into_runtime_response(endpoint),
        Ok(Answer::Events(events)) => (
            Some(HeaderValue::from_static(SSE_CONTENT_TYPE)),
            None,
            Body::from_stream(event_parts(events)),
        ),
        Ok(Answer::Whole(response)) => {
            let headers = response.headers();
            let content_type = headers.get(header::CONTENT_TYPE).cloned();
            let attributes = headers.get(&CUSTOM_ATTRIBUTES).cloned();
            let parts = response.into_body().into_data_stream().map(whole_parts);
            (content_type, attributes, Body::from_stream(parts))
        }
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    let event_stream = HeaderValue::from_static("application/vnd.amazon.eventstream");
    headers.insert(header::CONTENT_TYPE, event_stream);
    let variant = HeaderValue::from_static(PRODUCTION_VARIANT);
    headers.insert(INVOKED_VARIANT, variant);
    if let Some(content_type) = content_type {
        headers.insert(STREAM_CONTENT_TYPE, content_type);
    }
    if let Some(attributes) = attributes {
        headers.insert(CUSTOM_ATTRIBUTES, attributes);
    }
    response
}

/// One `PayloadPart` per event; a failure's event is followed by its `ModelStreamError`.
fn event_parts(
    events: tokio::sync::mpsc::Receiver<StreamEvent>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        let mut frames = payload_part(event.text.as_bytes());
        if let Some(failure) = &event.failure {
            let code = if failure.timed_out {
                "ModelInvocationTimeExceeded"
            } else {
                "StreamBroken"
            };
            frames.extend(model_stream_error(code, &failure.message));
        }
        Some((Ok(Bytes::from(frames)), events))
    })
}

/// A chunk of a whole body as `PayloadPart`s; a body that fails to read ends the stream with a
/// `ModelStreamError`.
fn whole_parts(chunk: Result<Bytes, axum::Error>) -> Result<Bytes, Infallible> {
    let frames = match chunk {
        Ok(bytes) => bytes
            .chunks(MAX_PART_BYTES)
            .flat_map(payload_part)
            .collect(),
        Err(error) => model_stream_error("StreamBroken", &error.to_string()),
    };
    Ok(Bytes::from(frames))
}

/// The model `TargetModel` names on a single-model endpoint (anything but `model` is a 404);
/// a multi-model endpoint reads the header itself, as it does on `/invocations`.
fn target_model(state: &AppState, request: &Request) -> Option<String> {
    if state.models.is_some() {
        return None;
    }
    header_text(request.headers(), TARGET_MODEL)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?;
    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
}
