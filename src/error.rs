//! The errors a request can end with. `http::error` maps each to its status and the DLC's
//! `{"code","type","message"}` envelope; nothing else decides a status code.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServerError {
    /// The client sent something the task cannot use (the DLC answers every such case with 400).
    #[error("{0}")]
    BadRequest(String),
    /// `Content-Type` or `Accept` we cannot decode / encode. Keeps the DLC's wording.
    #[error("Content type {} is not supported by this framework.\n\n            Please implement input_fn to to deserialize the request data or an output_fn to\n            serialize the response. For more information, see the SageMaker Python SDK README.", cut(.0, 100))]
    UnsupportedContentType(String),
    #[error(
        "Request body is larger than the limit of {limit} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)"
    )]
    PayloadTooLarge { limit: usize },
    #[error("Requested resource is not found, please refer to API document.")]
    RouteNotFound,
    #[error("Model not found: {}", cut(.0, 200))]
    ModelNotFound(String),
    /// `POST /models` with a `url` that is not a model directory (MMS's wording).
    #[error("Model not found in model store: {}", cut(.0, 400))]
    ModelUrlNotFound(String),
    /// A management request MMS refuses as a `BadRequestException` (`POST /models` without `url`).
    #[error("{0}")]
    BadModelRequest(String),
    #[error("Model {} is already registered.", cut(.0, 200))]
    ModelAlreadyRegistered(String),
    #[error("Model {} is still loading; unregister it once its POST /models has answered.", cut(.0, 100))]
    ModelStillLoading(String),
    /// A multi-model endpoint's load that would go over the memory budget: SageMaker unloads
    /// models (`DELETE /models/{name}`) and retries.
    #[error("Not enough memory to load model {model}: it needs about {needed_mib} MiB and {free_mib} MiB of the {budget_mib} MiB budget (MME_MEMORY_BUDGET_MB) are free; unload a model with DELETE /models/{{name}} and retry.")]
    InsufficientMemory {
        model: String,
        needed_mib: u64,
        free_mib: u64,
        budget_mib: u64,
    },
    #[error("Requested method is not allowed, please refer to API document.")]
    MethodNotAllowed,
    #[error("The model is still loading; retry when GET /ping answers 200.")]
    Loading,
    #[error("No worker is available to serve request for model: model. The queue of {0} requests is full; retry later or raise MAX_QUEUE.")]
    Overloaded(usize),
    #[error("The request did not finish within {0} s (SAGEMAKER_MODEL_SERVER_TIMEOUT).")]
    Timeout(u64),
    /// The client stopped sending its request body (a 408; the connection is closed).
    #[error(
        "The request body stopped arriving: nothing came for {0} s (SERVER_BODY_TIMEOUT_SECONDS)."
    )]
    BodyStalled(u64),
    /// Every Python handler thread is held by a hook that ran past its request's deadline.
    #[error("All {0} Python handler threads are busy with requests that passed their deadline (their hooks cannot be stopped); retry later, or raise SERVER_PYTHON_THREADS.")]
    HandlersStuck(usize),
    /// What a user's Python handler failed with, and the status the DLC answers it with (400
    /// for an exception in a hook, 503 for a return value MMS cannot send).
    #[error("{message}")]
    Handler { status: u16, message: String },
    /// A fault of ours (a failed forward pass, a panic): 500.
    #[error("{0}")]
    Internal(String),
}

/// How a model worker or the generation scheduler failed a request: what crosses their
/// channels back to the request (a 500 for the client).
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ModelError {
    #[error("forward pass failed: {0}")]
    ForwardFailed(String),
    #[error("forward pass panicked: {0}")]
    ForwardPanicked(String),
    #[error("the model returned {got} rows for {expected} sequences")]
    OutputCount { got: usize, expected: usize },
    #[error("generation step failed: {0}")]
    StepFailed(String),
    #[error("generation step panicked")]
    StepPanicked,
    /// Constrained decoding failed for one sequence (its grammar needed more work than allowed).
    #[error("constrained decoding failed: {0}")]
    Grammar(String),
    /// The worker or scheduler went away (the server is stopping).
    #[error("{0}")]
    Stopped(&'static str),
}

impl From<ModelError> for ServerError {
    fn from(error: ModelError) -> Self {
        match error {
            ModelError::Grammar(_) => ServerError::bad_request(error.to_string()),
            _ => ServerError::Internal(error.to_string()),
        }
    }
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl ServerError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ServerError::BadRequest(message.into())
    }
}

/// What a caught panic says (its `&str` or `String` payload).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// `text`, or its first characters and `...` when it is longer than `max` bytes: what error
/// messages echo of a request (never a whole input).
pub fn cut(text: &str, max: usize) -> String {
    if text.len() > max {
        let end = text
            .char_indices()
            .nth(max.saturating_sub(3))
            .map_or(text.len(), |(i, _)| i);
        format!("{}...", &text[..end])
    } else {
        text.to_string()
    }
}
