//! The one place where errors become HTTP statuses and the DLC's envelope
//! `{"code", "type", "message"}` (Gson-pretty, as MMS writes it).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::pyjson::gson_error_body;
use crate::error::ServerError;

impl ServerError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::BadRequest(_) | ServerError::UnsupportedContentType(_) => {
                StatusCode::BAD_REQUEST
            }
            ServerError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::RouteNotFound | ServerError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ServerError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ServerError::Loading | ServerError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            | ServerError::Internal(_) => "InternalServerException",
            ServerError::PayloadTooLarge { .. } => "RequestEntityTooLargeException",
            ServerError::RouteNotFound => "ResourceNotFoundException",
            ServerError::ModelNotFound(_) => "ModelNotFoundException",
            ServerError::MethodNotAllowed => "MethodNotAllowedException",
            ServerError::Loading | ServerError::Overloaded(_) => "ServiceUnavailableException",
            ServerError::Timeout(_) | ServerError::BodyStalled(_) => "RequestTimeoutException",
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        // (a 503 while loading is expected: SageMaker pings until the model is up)
        if status.is_server_error() && !matches!(self, ServerError::Loading) {
            tracing::warn!(status = status.as_u16(), "{self}");
        } else {
            tracing::debug!(status = status.as_u16(), "{self}");
        }
        let body = gson_error_body(status.as_u16(), self.kind(), &self.to_string());
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
