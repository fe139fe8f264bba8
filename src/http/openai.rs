//! OpenAI's routes on a text-generation model: `POST /v1/chat/completions`,
//! `POST /v1/completions` and `GET /v1/models`, their errors in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`, the status as everywhere else). A single
//! model answers to any `model` name, as TGI does; on a multi-model endpoint `model` names the
//! loaded model to use.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::AppState;
use crate::error::ServerError;
use crate::openai::{self, response::error_json, Endpoint};
use crate::service::Reply;

/// `POST /v1/chat/completions` (`Endpoint::Chat`) or `POST /v1/completions`.
pub async fn complete(state: &AppState, endpoint: Endpoint, request: Request) -> Response {
    answer(state, endpoint, request)
        .await
        .unwrap_or_else(error_response)
}

async fn answer(
    state: &AppState,
    endpoint: Endpoint,
    request: Request,
) -> Result<Response, ServerError> {
    let (parts, body) = request.into_parts();
    let body = super::read_json(state, &parts.headers, body).await?;
    let requested = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (service, name) = match (&state.models, requested) {
        (Some(_), Some(name)) => (state.service(Some(&name), &parts.headers)?, name),
        (Some(_), None) => {
            return Err(ServerError::bad_request(
                "`model` must name a loaded model on a multi-model endpoint",
            ))
        }
        (None, _) => {
            let service = state.service(None, &parts.headers)?;
            let name = service.served_name.clone();
            (service, name)
        }
    };
    let request = openai::parse(endpoint, body)?;
    Ok(match service.openai(request, name).await? {
        Reply::Json(value) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response(),
        Reply::Events(events) => super::event_stream(events),
        Reply::Image(_) => {
            return Err(ServerError::Internal(
                "an image answer on an OpenAI route".into(),
            ))
        }
    })
}

/// `GET /v1/models`: the model served (on a multi-model endpoint, every loaded one).
pub fn models(state: &AppState) -> Response {
    let entry = |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "sagemaker-hf-server"});
    let data: Vec<Value> = match &state.models {
        Some(store) => store.loaded().iter().map(|m| entry(&m.name)).collect(),
        None => match state.ready() {
            Ok(service) => vec![entry(&service.served_name)],
            Err(error) => return error_response(error),
        },
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"object": "list", "data": data}).to_string(),
    )
        .into_response()
}

/// Any other `/v1/...` path: OpenAI's 404.
pub fn unmatched() -> Response {
    error_response(ServerError::RouteNotFound)
}

/// `error` in OpenAI's shape, with its usual status.
fn error_response(error: ServerError) -> Response {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), "{error}");
    } else {
        tracing::debug!(status = status.as_u16(), "{error}");
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        error_json(&error).to_string(),
    )
        .into_response()
}
