//! The one place where errors become HTTP statuses and the DLC's envelope
//! `{"code", "type", "message"}` (Gson-pretty, as MMS writes it), or, on the SageMaker runtime
//! API's routes, what SageMaker makes of that answer (`ServerError::into_runtime_response`).

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::pyjson::gson_error_body;
use crate::error::{cut, ServerError};

impl ServerError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::BadRequest(_) | ServerError::UnsupportedContentType(_) => {
                StatusCode::BAD_REQUEST
            }
            ServerError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::BadModelRequest(_) => StatusCode::BAD_REQUEST,
            ServerError::RouteNotFound
            | ServerError::ModelNotFound(_)
            | ServerError::ModelUrlNotFound(_) => StatusCode::NOT_FOUND,
            ServerError::ModelAlreadyRegistered(_) | ServerError::ModelStillLoading(_) => {
                StatusCode::CONFLICT
            }
            ServerError::InsufficientMemory { .. } => StatusCode::INSUFFICIENT_STORAGE,
            ServerError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ServerError::Loading | ServerError::Overloaded(_) | ServerError::HandlersStuck(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServerError::Handler { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ServerError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ServerError::BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
            ServerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Java exception name MMS puts in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerError::BadRequest(_)
            | ServerError::UnsupportedContentType(_)
            | ServerError::Internal(_)
            | ServerError::Handler { .. } => "InternalServerException",
            ServerError::PayloadTooLarge { .. } => "RequestEntityTooLargeException",
            ServerError::RouteNotFound => "ResourceNotFoundException",
            ServerError::ModelNotFound(_) | ServerError::ModelUrlNotFound(_) => {
                "ModelNotFoundException"
            }
            ServerError::BadModelRequest(_) => "BadRequestException",
            ServerError::ModelAlreadyRegistered(_) | ServerError::ModelStillLoading(_) => {
                "ConflictStatusException"
            }
            ServerError::InsufficientMemory { .. } => "InsufficientMemoryException",
            ServerError::MethodNotAllowed => "MethodNotAllowedException",
            ServerError::Loading | ServerError::Overloaded(_) | ServerError::HandlersStuck(_) => {
                "ServiceUnavailableException"
            }
            ServerError::Timeout(_) | ServerError::BodyStalled(_) => "RequestTimeoutException",
        }
    }

    /// What the client is told: every message that quotes the request quotes a bounded part of
    /// it; this cap is the backstop for any that would not.
    fn message(&self) -> String {
        const MAX_MESSAGE_BYTES: usize = 4096;
        cut(&self.to_string(), MAX_MESSAGE_BYTES)
    }

    fn log(&self, status: StatusCode) {
        // (a 503 while loading is expected: SageMaker pings until the model is up)
        if status.is_server_error() && !matches!(self, ServerError::Loading) {
            tracing::warn!(status = status.as_u16(), "{}", self.message());
        } else {
            tracing::debug!(status = status.as_u16(), "{}", self.message());
        }
    }

    /// The body `/invocations` answers this error with.
    fn envelope(&self) -> String {
        gson_error_body(self.status().as_u16(), self.kind(), &self.message())
    }

    /// This error as the SageMaker runtime API reports a container's error to boto3
    /// (`InvokeEndpoint`, and `InvokeEndpointWithResponseStream` before its stream starts): 424
    /// with `x-amzn-ErrorType: ModelError` and the container's status and body in
    /// `OriginalStatusCode` / `OriginalMessage` (botocore's service model for
    /// `sagemaker-runtime`; boto3 raises `client.exceptions.ModelError`). The message is
    /// SageMaker's wording. Ours, for a local server: `LogStreamArn` names the log group
    /// SageMaker would use, in region `local` of account 000000000000 (the log is this
    /// server's standard error). A model still loading is SageMaker's
    /// `ModelNotReadyException` (429), which a client waits out.
    pub fn into_runtime_response(self, endpoint: &str) -> Response {
        let status = self.status();
        self.log(status);
        let (status, kind, body) = if matches!(self, ServerError::Loading) {
            let body = json!({"message": self.message()});
            (
                StatusCode::TOO_MANY_REQUESTS,
                "ModelNotReadyException",
                body,
            )
        } else {
            let side = if status.is_client_error() {
                "client"
            } else {
                "server"
            };
            let original = self.envelope();
            let message = format!(
                "Received {side} error ({}) from primary with message \"{original}\". See this server's standard error for more information.",
                status.as_u16()
            );
            let log_stream = format!(
                "arn:aws:logs:local:000000000000:log-group:/aws/sagemaker/Endpoints/{}",
                cut(endpoint, 63)
            );
            let body = json!({
                "Message": message,
                "OriginalStatusCode": status.as_u16(),
                "OriginalMessage": original,
                "LogStreamArn": log_stream,
            });
            (StatusCode::FAILED_DEPENDENCY, "ModelError", body)
        };
        (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (HeaderName::from_static("x-amzn-errortype"), kind),
            ],
            body.to_string(),
        )
            .into_response()
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        self.log(status);
        let body = self.envelope();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Loading and a full queue both pass: a client may try again shortly.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
