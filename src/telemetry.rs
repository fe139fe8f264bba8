//! The server's Prometheus metrics: their names and the calls that record them, through the
//! `metrics` facade (a no-op until `http::metrics` installs the exporter). A leaf module, so
//! that the batcher and the generation scheduler record without depending on the HTTP layer.

use std::time::Duration;

/// Requests answered, by `route` (the route's pattern, bounded) and `status`.
pub const REQUESTS: &str = "sagemaker_hf_requests_total";
/// Time from the request's arrival to its response head, by `route`.
pub const REQUEST_DURATION: &str = "sagemaker_hf_request_duration_seconds";
/// Encoder tasks: time from a job's submission to the start of its first forward pass.
/// Generation: time from a sequence's submission to its first token.
pub const QUEUE_WAIT: &str = "sagemaker_hf_queue_wait_seconds";
/// Sequences in one forward pass (an encoder batch, or one generation step's rows).
pub const BATCH_SIZE: &str = "sagemaker_hf_batch_size";
/// Tokens generated (one per running sequence per step; one per step for a beam search).
pub const GENERATED_TOKENS: &str = "sagemaker_hf_generated_tokens_total";
/// Seconds from start-up to the model ready to serve (files, weights, tokenizer), once.
pub const MODEL_LOAD: &str = "sagemaker_hf_model_load_seconds";

/// One answered request.
pub fn request(route: &'static str, status: u16, duration: Duration) {
    metrics::counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route).record(duration.as_secs_f64());
}

/// A forward pass (or generation step) over `sequences` rows.
pub fn forward_pass(sequences: usize) {
    metrics::histogram!(BATCH_SIZE).record(sequences as f64);
}

/// A job or sequence that waited `wait` before its computation started (see [`QUEUE_WAIT`]).
pub fn queue_wait(wait: Duration) {
    metrics::histogram!(QUEUE_WAIT).record(wait.as_secs_f64());
}

pub fn tokens_generated(tokens: usize) {
    metrics::counter!(GENERATED_TOKENS).increment(tokens as u64);
}

pub fn model_loaded(elapsed: Duration) {
    metrics::gauge!(MODEL_LOAD).set(elapsed.as_secs_f64());
}
