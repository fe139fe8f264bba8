//! The HTTP surface SageMaker and MMS clients use: `/ping`, `/invocations` (any method, as MMS),
//! MMS's alias routes and its read-only model listing (on a multi-model endpoint, MMS's model
//! API: `models_api`), batch transform's `/execution-parameters`, Prometheus `/metrics`, and the
//! SageMaker runtime API's two invoke routes for boto3 pointed at this server (`runtime_api`),
//! OpenAI's `/v1/...` routes (`openai`) and TGI's `/generate` routes (`tgi`).
//! Routing is by path, because MMS accepts any method on its inference routes.

pub mod batch;
pub mod codec;
pub mod error;
pub mod event_stream;
pub mod metrics;
pub mod models_api;
pub mod openai;
pub mod pyjson;
pub mod runtime_api;
pub mod serve;
pub mod tgi;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use self::batch::{decode_body, Body as Decoded};
use self::codec::{encode, encode_picture, request_format, response_format, RequestFormat};
use self::metrics::RouteLabel;
use self::pyjson::gson_string;
use crate::config::ExecutionParameters;
use crate::error::ServerError;
use crate::generation::sse::StreamEvent;
use crate::model_store::ModelStore;
use crate::offload::{self, cpu_work};
use crate::openai::Endpoint;
use crate::service::{InferenceService, Reply};

/// The name MMS registers the single model under in the DLC's default mode.
pub const MODEL_NAME: &str = "model";

pub struct AppState {
    service: OnceLock<Arc<InferenceService>>,
    max_payload_bytes: usize,
    /// Longest pause allowed inside a request body (`SERVER_BODY_TIMEOUT_SECONDS`).
    body_timeout: Duration,
    execution: ExecutionParameters,
    /// Renders `/metrics` (none: the route is a 404).
    metrics: Option<PrometheusHandle>,
    /// A multi-model endpoint's models (none: the single model of `service`).
    models: Option<Arc<ModelStore>>,
}

impl AppState {
    pub fn new(
        max_payload_bytes: usize,
        body_timeout: Duration,
        execution: ExecutionParameters,
        metrics: Option<PrometheusHandle>,
        models: Option<Arc<ModelStore>>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            service: OnceLock::new(),
            max_payload_bytes,
            body_timeout,
            execution,
            metrics,
            models,
        })
    }

    /// Marks the server ready: `/ping` answers 200 from now on.
    pub fn set_ready(&self, service: Arc<InferenceService>) {
        let _ = self.service.set(service);
    }

    fn ready(&self) -> Result<&Arc<InferenceService>, ServerError> {
        self.service.get().ok_or(ServerError::Loading)
    }

    /// The model an invocation is for (`model`: named in the path or `?model_name=`).
    fn service(
        &self,
        model: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Arc<InferenceService>, ServerError> {
        match (&self.models, model) {
            (Some(store), _) => models_api::resolve(store, model, headers),
            (None, Some(name)) if name != MODEL_NAME => {
                Err(ServerError::ModelNotFound(name.to_string()))
            }
            (None, _) => self.ready().cloned(),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |panic: Box<dyn std::any::Any + Send>| {
                let message = crate::error::panic_message(panic.as_ref());
                ServerError::Internal(format!("internal error: {message}")).into_response()
            },
        ))
        .layer(axum::middleware::from_fn(metrics::observe))
        .with_state(state)
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = request.method() == Method::GET;
    let post = request.method() == Method::POST;
    let (route, response) = match segments.as_slice() {
        ["ping"] => ("/ping", ping(&state)),
        ["invocations"] => {
            let model = query_param(request.uri().query(), "model_name");
            (
                "/invocations",
                invoke(&state, model.as_deref(), request).await,
            )
        }
        ["models"] | ["models", _] if state.models.is_some() => {
            models_api::manage(&state, request).await
        }
        ["endpoints", endpoint, "invocations"] if post => (
            "/endpoints/{endpoint}/invocations",
            Ok(runtime_api::invoke_endpoint(&state, endpoint, request).await),
        ),
        ["endpoints", endpoint, "invocations-response-stream"] if post => (
            "/endpoints/{endpoint}/invocations-response-stream",
            Ok(runtime_api::invoke_endpoint_with_response_stream(&state, endpoint, request).await),
        ),
        ["models", name, "invoke"] | ["predictions", name] | [name, "predict"] => {
            let route = match segments[0] {
                "models" => "/models/{model}/invoke",
                "predictions" => "/predictions/{model}",
                _ => "/{model}/predict",
            };
            (route, invoke(&state, Some(name), request).await)
        }
        ["models"] if get => ("/models", list_models(&state)),
        ["models", name] if get && *name == MODEL_NAME => ("/models/{model}", list_models(&state)),
        ["models", name] if get => (
            "/models/{model}",
            Err(ServerError::ModelNotFound(name.to_string())),
        ),
        ["v1", "chat", "completions"] if post => (
            "/v1/chat/completions",
            Ok(openai::complete(&state, Endpoint::Chat, request).await),
        ),
        ["v1", "completions"] if post => (
            "/v1/completions",
            Ok(openai::complete(&state, Endpoint::Completion, request).await),
        ),
        ["v1", "models"] if get => ("/v1/models", Ok(openai::models(&state))),
        ["v1", ..] => ("unmatched", Ok(openai::unmatched())),
        ["generate"] if post => ("/generate", Ok(tgi::generate(&state, request, false).await)),
        ["generate_stream"] if post => (
            "/generate_stream",
            Ok(tgi::generate(&state, request, true).await),
        ),
        ["execution-parameters"] if get => (
            "/execution-parameters",
            Ok(batch::execution_parameters(&state.execution)),
        ),
        ["metrics"] if get => ("/metrics", metrics::render(state.metrics.as_ref())),
        ["execution-parameters" | "metrics"]
        | ["endpoints", _, "invocations" | "invocations-response-stream"] => {
            ("unmatched", Err(ServerError::MethodNotAllowed))
        }
        [] => ("/", Err(ServerError::MethodNotAllowed)),
        _ => ("unmatched", Err(ServerError::RouteNotFound)),
    };
    let mut response = response.unwrap_or_else(IntoResponse::into_response);
    add_mms_headers(response.headers_mut());
    response.extensions_mut().insert(RouteLabel(route));
    response
}

/// 200 with MMS's body once the model can serve; 503 (envelope) while it loads.
fn ping(state: &AppState) -> Result<Response, ServerError> {
    if state.models.is_some() {
        // A multi-model endpoint is healthy with no model: SageMaker loads them when invoked.
        return Ok(([(header::CONTENT_TYPE, "application/json")], PING_BODY).into_response());
    }
    let service = state.ready()?;
    // MMS's body, byte for byte; where the model runs goes in headers.
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (HeaderName::from_static("x-device"), service.device.clone()),
            (
                HeaderName::from_static("x-dtype"),
                service.dtype.to_string(),
            ),
        ],
        PING_BODY,
    )
        .into_response())
}

/// MMS's `/ping` body, byte for byte.
const PING_BODY: &str = "{\n  \"status\": \"Healthy\"\n}\n";

fn list_models(state: &AppState) -> Result<Response, ServerError> {
    let service = state.ready()?;
    let url = service.model_dir.display().to_string();
    let body = format!(
        "{{\n  \"models\": [\n    {{\n      \"modelName\": {},\n      \"modelUrl\": {}\n    }}\n  ]\n}}\n",
        gson_string(MODEL_NAME),
        gson_string(&url)
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn invoke(
    state: &AppState,
    model: Option<&str>,
    request: Request,
) -> Result<Response, ServerError> {
    Ok(match answer(state, model, request).await? {
        Answer::Whole(response) => response,
        Answer::Events(events) => event_stream(events),
    })
}

/// What an inference request is answered with, before a route puts it in its response.
enum Answer {
    /// A response with its whole body (JSON, CSV, JSON Lines).
    Whole(Response),
    /// `"stream": true` generation: the events as they are made.
    Events(tokio::sync::mpsc::Receiver<StreamEvent>),
}

/// Answers an inference request for the model `model` (none: the one served, or on a
/// multi-model endpoint the one the target-model header names).
async fn answer(
    state: &AppState,
    model: Option<&str>,
    request: Request,
) -> Result<Answer, ServerError> {
    let (parts, body) = request.into_parts();
    let service = state.service(model, &parts.headers)?;
    let body = read_body(
        &parts.headers,
        body,
        state.max_payload_bytes,
        state.body_timeout,
    )
    .await?;
    #[cfg(feature = "python")]
    if let Some(handlers) = crate::python::handlers_of(&service) {
        // The user script decodes, predicts and encodes (its missing hooks are native).
        let response = handlers
            .invoke(body, &parts.headers, service.timeout())
            .await?;
        return Ok(Answer::Whole(response));
    }
    let input_format = request_format(&parts.headers)?;
    // Checked before inference (the DLC only finds out after computing).
    let output_format = response_format(&parts.headers)?;
    if input_format == RequestFormat::Csv && !service.pipeline_accepts_csv() {
        return Err(ServerError::bad_request(format!(
            "content type text/csv not support with {}, use different content_type",
            service.task_name()
        )));
    }
    let size = body.len();
    let reply = if input_format == RequestFormat::Image {
        // Image tasks decode the body themselves (a JSON `inputs` cannot hold an image).
        service.reply_image(body).await?
    } else if input_format == RequestFormat::Audio {
        service.reply_audio(body).await?
    } else {
        let value = match cpu_work(size, move || decode_body(input_format, &body)).await? {
            Decoded::One(value) => value,
            Decoded::Records(records) => {
                let response = batch::answer(&service, records, size, output_format).await?;
                return Ok(Answer::Whole(response));
            }
        };
        service.reply(value, size).await?
    };
    let bytes = match reply {
        Reply::Json(result) => cpu_work(size, move || encode(output_format, &result)).await?,
        Reply::Events(events) => return Ok(Answer::Events(events)),
        // (a PNG of a large image takes long whatever the request's size)
        Reply::Image(picture) => {
            cpu_work(offload::ALWAYS, move || {
                encode_picture(output_format, &picture)
            })
            .await?
        }
    };
    Ok(Answer::Whole(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, output_format.content_type())],
            bytes,
        )
            .into_response(),
    ))
}

/// The media type of server-sent events.
const SSE_CONTENT_TYPE: &str = "text/event-stream";

/// A `text/event-stream` response that forwards each event as it is made. When the client goes
/// away, the body (and with it the receiver) is dropped, which ends the generation.
fn event_stream(events: tokio::sync::mpsc::Receiver<StreamEvent>) -> Response {
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(event.text), events))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, SSE_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Reads the body up to `limit` bytes. A declared `Content-Length` over the limit is refused
/// before anything is read (with `Expect: 100-continue`, before the client sends the body: no
/// `100 Continue` goes out). A refused body is discarded in the background, so that a client that
/// writes its whole request before reading gets the 413 instead of a reset connection. A body
/// that pauses longer than `pause` is a 408.
async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    pause: Duration,
) -> Result<Bytes, ServerError> {
    // hyper's size hint is the validated Content-Length (0 for a chunked body).
    if body.size_hint().lower() > limit as u64 {
        if !expects_continue(headers) {
            discard_in_background(body, pause);
        }
        return Err(ServerError::PayloadTooLarge { limit });
    }
    let mut collected: Vec<u8> = Vec::new();
    while let Some(frame) = next_frame(&mut body, pause).await? {
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                discard_in_background(body, pause);
                return Err(ServerError::PayloadTooLarge { limit });
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(collected))
}

async fn next_frame(body: &mut Body, pause: Duration) -> Result<Option<Frame<Bytes>>, ServerError> {
    match tokio::time::timeout(pause, body.frame()).await {
        Err(_) => Err(ServerError::BodyStalled(pause.as_secs())),
        Ok(None) => Ok(None),
        Ok(Some(frame)) => frame
            .map(Some)
            .map_err(|e| ServerError::bad_request(format!("could not read the request body: {e}"))),
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and drops the rest of a refused body, up to a bound and while it keeps arriving.
fn discard_in_background(mut body: Body, pause: Duration) {
    const DISCARD_LIMIT: u64 = 64 * 1024 * 1024;
    if body.size_hint().lower() > DISCARD_LIMIT {
        return; // dropped: hyper closes the connection after the answer
    }
    tokio::spawn(async move {
        let mut seen = 0u64;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(pause, body.frame()).await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DISCARD_LIMIT {
                break;
            }
        }
    });
}

/// A JSON request body, as the LLM routes take it (JSON whatever the `Content-Type`).
async fn read_json(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, ServerError> {
    let bytes = read_body(headers, body, state.max_payload_bytes, state.body_timeout).await?;
    cpu_work(bytes.len(), move || {
        serde_json::from_slice(&bytes)
            .map_err(|e| ServerError::bad_request(format!("the request body is not JSON: {e}")))
    })
    .await
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| v.to_string())
    })
}

/// Headers MMS puts on every response; clients and proxies written against the DLC may rely on
/// them (`x-request-id` is set by `metrics::observe`).
fn add_mms_headers(headers: &mut HeaderMap) {
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache; no-store, must-revalidate, private"),
    );
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 UTC"),
    );
}

/// A JSON description of the server for the start-up log.
pub fn describe(service: &InferenceService) -> serde_json::Value {
    json!({"task": service.task_name(), "model": service.origin})
}
