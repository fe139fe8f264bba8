//! A request's CPU work (parsing its body, tokenizing, rendering a chat template, shaping and
//! encoding the answer) kept off the async runtime's threads, which must stay free to accept
//! connections and answer `/ping`: a few large requests tokenizing on every runtime thread
//! would otherwise hold health checks until SageMaker gives up on the container.

use std::sync::OnceLock;

use tokio::sync::Semaphore;

use crate::error::{panic_message, ServerError};

/// Below this request size the work takes microseconds, less than handing it to another thread
/// costs: it runs in place.
pub const INLINE_BYTES: usize = 4 * 1024;

/// Size to give work that can be long whatever the request's size (chat templates).
pub const ALWAYS: usize = usize::MAX;

/// One job per core at a time: more would only share the cores with the model.
fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new(cores)
    })
}

/// Runs `work` for a request of `size` bytes: in place when small, else on tokio's blocking
/// threads once a permit is free. A panic in `work` is the request's internal error.
pub async fn cpu_work<T, F>(size: usize, work: F) -> Result<T, ServerError>
where
    F: FnOnce() -> Result<T, ServerError> + Send + 'static,
    T: Send + 'static,
{
    if size < INLINE_BYTES {
        return work();
    }
    let _permit = permits()
        .acquire()
        .await
        .map_err(|_| ServerError::Internal("the CPU work pool is closed".into()))?;
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => {
            let message = panic_message(error.into_panic().as_ref());
            Err(ServerError::Internal(format!("internal error: {message}")))
        }
        Err(_) => Err(ServerError::Internal(
            "the request's work was cancelled".into(),
        )),
    }
}
