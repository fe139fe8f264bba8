//! MMS's model API on a multi-model endpoint (`SAGEMAKER_MULTI_MODEL=true`), as SageMaker calls
//! it: `POST /models` loads, `GET /models` lists (MMS's pagination), `GET /models/{name}`
//! describes, `DELETE /models/{name}` unloads. Invocations name their model in the path
//! (`/models/{name}/invoke` and MMS's aliases), in `?model_name=`, or in SageMaker's
//! `X-Amzn-SageMaker-Target-Model` header.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::pyjson::gson_pretty;
use super::{read_body, AppState};
use crate::error::ServerError;
use crate::model_store::{LoadRequest, LoadedModel, ModelStore};
use crate::service::InferenceService;

/// The header SageMaker puts the invocation's `TargetModel` in.
const TARGET_MODEL: &str = "x-amzn-sagemaker-target-model";

/// `/models` and `/models/{name}`: the route label and the answer.
pub async fn manage(
    state: &AppState,
    request: Request,
) -> (&'static str, Result<Response, ServerError>) {
    let Some(store) = &state.models else {
        return ("unmatched", Err(ServerError::RouteNotFound));
    };
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().clone();
    match (segments.as_slice(), method) {
        (["models"], Method::GET) => ("/models", Ok(list(store, request.uri()))),
        (["models"], Method::POST) => (
            "/models",
            register(store, request, state.max_payload_bytes, state.body_timeout).await,
        ),
        (["models", name], Method::GET) => ("/models/{model}", describe(store, name)),
        (["models", name], Method::DELETE) => ("/models/{model}", unregister(store, name)),
        _ => ("/models", Err(ServerError::MethodNotAllowed)),
    }
}

/// The model an invocation is for: the one named (path or `model_name`), else the one
/// SageMaker's target-model header names, else the only one loaded.
pub fn resolve(
    store: &ModelStore,
    model: Option<&str>,
    headers: &HeaderMap,
) -> Result<Arc<InferenceService>, ServerError> {
    if let Some(name) = model {
        return store
            .get(name)
            .map(|m| m.service.clone())
            .ok_or_else(|| ServerError::ModelNotFound(name.to_string()));
    }
    if let Some(target) = headers.get(TARGET_MODEL).and_then(|v| v.to_str().ok()) {
        return store
            .loaded()
            .into_iter()
            .find(|m| names_target(&m.name, target))
            .map(|m| m.service.clone())
            .ok_or_else(|| ServerError::ModelNotFound(target.to_string()));
    }
    match store.loaded().as_slice() {
        [only] => Ok(only.service.clone()),
        _ => Err(ServerError::BadModelRequest(
            "Parameter model_name is required (or an X-Amzn-SageMaker-Target-Model header naming a loaded model): this multi-model endpoint does not have exactly one model loaded.".into(),
        )),
    }
}

/// Whether a model registered as `name` is the `TargetModel` SageMaker names (`name`,
/// `name.tar.gz`, or a path ending so).
fn names_target(name: &str, target: &str) -> bool {
    let file = target.rsplit('/').next().unwrap_or(target);
    [target, file]
        .iter()
        .any(|t| *t == name || t.strip_suffix(".tar.gz") == Some(name))
}

async fn register(
    store: &Arc<ModelStore>,
    request: Request,
    max_payload_bytes: usize,
    body_timeout: Duration,
) -> Result<Response, ServerError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, max_payload_bytes, body_timeout).await?;
    let (load, synchronous) = parse_load_request(&parts.headers, &parts.uri, &body)?;
    let name = load.name.clone();
    let pending = store.register(load)?;
    if synchronous {
        pending.run().await?;
        return Ok(mms_json(
            StatusCode::OK,
            &json!({"status": "Workers scaled"}),
        ));
    }
    tokio::spawn(async move {
        if let Err(e) = pending.run().await {
            tracing::error!("loading model {name} (POST /models, synchronous=false): {e}");
        }
    });
    Ok(mms_json(
        StatusCode::ACCEPTED,
        &json!({"status": "Processing worker updates..."}),
    ))
}

/// MMS's `RegisterModelRequest`: from a JSON body when the content type is JSON, else from the
/// query string. `handler`, `runtime` and `preload_model` are accepted and ignored (no Python
/// handlers run here). Returns the load and `synchronous` (default true).
fn parse_load_request(
    headers: &HeaderMap,
    uri: &Uri,
    body: &[u8],
) -> Result<(LoadRequest, bool), ServerError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    let fields: serde_json::Map<String, Value> = if is_json {
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(bad("The body of POST /models must be a JSON object")),
            Err(e) => return Err(bad(format!("Invalid JSON in POST /models: {e}"))),
        }
    } else {
        query(uri)
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    };
    let text = |key: &str| match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(format!(
            "Parameter {key} must be a string, got {other}"
        ))),
    };
    let number = |key: &str| -> Result<Option<u64>, ServerError> {
        match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_i64().is_some() => {
                Ok(n.as_i64().map(|n| n.max(0) as u64))
            }
            Some(Value::String(s)) => match s.trim().parse::<i64>() {
                Ok(n) => Ok(Some(n.max(0) as u64)),
                Err(_) => Err(bad(format!(
                    "Parameter {key} must be an integer, got \"{s}\""
                ))),
            },
            Some(other) => Err(bad(format!(
                "Parameter {key} must be an integer, got {other}"
            ))),
        }
    };
    let url = text("url")?
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("Parameter url is required."))?;
    let name = match text("model_name")?.filter(|n| !n.is_empty()) {
        Some(name) => name,
        // MMS names an unnamed model after its archive: here, the directory.
        None => url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(format!("Model name `{name}` is not valid: the allowed characters are a-z, A-Z, 0-9, -, _ and .")));
    }
    let synchronous = match fields.get("synchronous") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        // Java's Boolean.parseBoolean, as MMS reads it.
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(other) => {
            return Err(bad(format!(
                "Parameter synchronous must be a boolean, got {other}"
            )))
        }
    };
    // MMS reads `response_timeout` as seconds from a JSON body but as minutes from the query.
    let timeout_unit = if is_json { 1 } else { 60 };
    let load = LoadRequest {
        name,
        url,
        workers: number("initial_workers")?.map(|w| w as usize),
        response_timeout_s: number("response_timeout")?.map(|t| t * timeout_unit),
        batch_size: number("batch_size")?,
        max_batch_delay_ms: number("max_batch_delay")?,
    };
    Ok((load, synchronous))
}

fn bad(message: impl Into<String>) -> ServerError {
    ServerError::BadModelRequest(message.into())
}

/// `GET /models?limit=&next_page_token=`: sorted by name, `limit` (default and most 100) from
/// the token on; `nextPageToken` whenever the page ends within the list, as MMS does.
fn list(store: &ModelStore, uri: &Uri) -> Response {
    let params = query(uri);
    let int = |key: &str| params.get(key).and_then(|v| v.trim().parse::<i64>().ok());
    let limit = int("limit")
        .filter(|l| (0..=100).contains(l))
        .unwrap_or(100) as usize;
    let start = int("next_page_token")
        .or_else(|| int("nextPageToken"))
        .unwrap_or(0)
        .max(0) as usize;
    let models = store.loaded();
    let end = start.saturating_add(limit);
    let (end, next) = if end > models.len() {
        (models.len(), None)
    } else {
        (end, Some(end.to_string()))
    };
    let page: Vec<Value> = models
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|m| json!({"modelName": m.name, "modelUrl": m.url}))
        .collect();
    mms_json(
        StatusCode::OK,
        &json!({"nextPageToken": next, "models": page}),
    )
}

/// MMS's `DescribeModelResponse`, with where and what the model runs.
fn describe(store: &ModelStore, name: &str) -> Result<Response, ServerError> {
    let model = store
        .get(name)
        .ok_or_else(|| ServerError::ModelNotFound(name.to_string()))?;
    Ok(mms_json(StatusCode::OK, &description(&model)))
}

fn description(model: &LoadedModel) -> Value {
    let service = &model.service;
    let gpu = service.device != "cpu";
    let workers: Vec<Value> = (1..=model.workers)
        .map(|id| json!({"id": id.to_string(), "status": "READY", "gpu": gpu}))
        .collect();
    json!({
        "modelName": model.name,
        "modelUrl": model.url,
        "minWorkers": model.workers,
        "maxWorkers": model.workers,
        "batchSize": model.batch_size,
        "maxBatchDelay": model.max_batch_delay_ms,
        "loadedAtStartup": false,
        "workers": workers,
        "task": service.task.map(|task| task.name()),
        "device": service.device,
        "dtype": service.dtype,
        "memoryReservedBytes": model.reserved_bytes,
    })
}

fn unregister(store: &ModelStore, name: &str) -> Result<Response, ServerError> {
    let model = store.unload(name)?;
    // Freeing a large model's weights takes a while: not on the runtime's threads. (Requests
    // still running on it hold it; the last of them frees it.)
    tokio::task::spawn_blocking(move || drop(model));
    Ok(mms_json(
        StatusCode::OK,
        &json!({"status": format!("Model \"{name}\" unregistered")}),
    ))
}

/// The query string's parameters, percent-decoded (an undecodable one is left out).
fn query(uri: &Uri) -> HashMap<String, String> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|Query(params)| params)
        .unwrap_or_default()
}

fn mms_json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        gson_pretty(value),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        content_type: &str,
        uri: &str,
        body: &str,
    ) -> Result<(LoadRequest, bool), ServerError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        parse_load_request(&headers, &uri.parse().unwrap(), body.as_bytes())
    }

    #[test]
    fn load_requests_as_mms_reads_them() {
        let (load, sync) = parse(
            "application/json",
            "/models",
            r#"{"model_name": "m1", "url": "/opt/ml/models/m1/model", "initial_workers": 3, "response_timeout": 30, "handler": "x"}"#,
        )
        .unwrap();
        assert_eq!(
            (load.name.as_str(), load.url.as_str(), sync),
            ("m1", "/opt/ml/models/m1/model", true)
        );
        assert_eq!((load.workers, load.response_timeout_s), (Some(3), Some(30)));
        let (load, sync) = parse(
            "text/plain",
            "/models?url=%2Fopt%2Fml%2Fmodels%2Fm2%2Fmodel%2F&response_timeout=2&synchronous=false",
            "",
        )
        .unwrap();
        assert_eq!(
            (load.name.as_str(), load.url.as_str()),
            ("model", "/opt/ml/models/m2/model/")
        );
        assert_eq!((load.response_timeout_s, sync), (Some(120), false));
        let refused =
            |ct: &str, uri: &str, body: &str| parse(ct, uri, body).unwrap_err().to_string();
        assert_eq!(
            refused("application/json", "/models", r#"{"model_name": "m"}"#),
            "Parameter url is required."
        );
        assert!(refused("application/json", "/models", "{").contains("Invalid JSON"));
        assert!(refused(
            "application/json",
            "/models",
            r#"{"model_name": "a/b", "url": "/x"}"#
        )
        .contains("allowed characters"));
        assert!(refused(
            "application/json",
            "/models",
            r#"{"url": "/x", "initial_workers": "two"}"#
        )
        .contains("integer"));
    }

    #[test]
    fn target_model_header_names() {
        assert!(names_target("m1", "m1"));
        assert!(names_target("m1", "m1.tar.gz"));
        assert!(names_target("m1", "prefix/m1.tar.gz"));
        assert!(!names_target("m1", "m10.tar.gz"));
    }
}
