//! The threads Python hooks run on: a small fixed pool of OS threads, never the async runtime's.
//! A request waits for a free thread and its hook under the request deadline; past it the request
//! answers 504 and the hook, which cannot be stopped, finishes in the background on its thread.
//! When every thread is held by such a hook, new requests answer 503 at once.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::ServerError;

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    jobs: Mutex<mpsc::Sender<Job>>,
    threads: usize,
    /// Hooks (running or still queued) whose request already answered 504.
    abandoned: Arc<AtomicUsize>,
}

/// A job's state: queued or running, finished, or given up by its request.
const PENDING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

impl Pool {
    /// Starts `threads` threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("python-{index}"))
                .spawn(move || loop {
                    // The lock is held only to take the next job.
                    let job = match receiver.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the pool is gone
                    }
                })?;
        }
        Ok(Pool {
            jobs: Mutex::new(sender),
            threads,
            abandoned: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `work` on a pool thread; its result, or 504 once `deadline` passes (queue wait
    /// included), or 503 when every thread is held by hooks past their deadline.
    pub async fn run<T: Send + 'static>(
        &self,
        deadline: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServerError> {
        if self.abandoned.load(Ordering::Acquire) >= self.threads {
            return Err(ServerError::HandlersStuck(self.threads));
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let state = Arc::new(AtomicU8::new(PENDING));
        let job_state = state.clone();
        let abandoned = self.abandoned.clone();
        let job: Job = Box::new(move || {
            // A job whose request gave up before it started is skipped.
            if job_state.load(Ordering::Acquire) != ABANDONED {
                let output = work();
                let _ = sender.send(output);
            }
            if job_state.swap(DONE, Ordering::AcqRel) == ABANDONED {
                abandoned.fetch_sub(1, Ordering::AcqRel);
            }
        });
        self.jobs
            .lock()
            .map_err(|_| ServerError::Internal("the Python thread pool is gone".into()))?
            .send(job)
            .map_err(|_| ServerError::Internal("the Python thread pool is gone".into()))?;
        match tokio::time::timeout(deadline, receiver).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(_)) => Err(ServerError::Internal(
                "a Python handler thread stopped without an answer".into(),
            )),
            Err(_) => {
                // Counted before it is marked, so the job's own decrement never comes first.
                self.abandoned.fetch_add(1, Ordering::AcqRel);
                if state
                    .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // It finished just now: nothing left in the background.
                    self.abandoned.fetch_sub(1, Ordering::AcqRel);
                }
                Err(ServerError::Timeout(deadline.as_secs()))
            }
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_hooks_answer_504_then_a_full_pool_503() {
        let pool = Pool::start(2).unwrap();
        assert_eq!(pool.run(Duration::from_secs(5), || 7).await.unwrap(), 7);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        for _ in 0..2 {
            let wait = wait.clone();
            let late = pool
                .run(Duration::from_millis(50), move || {
                    let _ = wait.lock().unwrap().recv();
                })
                .await;
            assert!(matches!(late, Err(ServerError::Timeout(_))));
        }
        let full = pool.run(Duration::from_secs(5), || 1).await;
        assert!(
            matches!(full, Err(ServerError::HandlersStuck(2))),
            "{full:?}"
        );
        // The stuck hooks finish: the pool serves again.
        release.send(()).unwrap();
        release.send(()).unwrap();
        let mut answered = false;
        for _ in 0..100 {
            if let Ok(v) = pool.run(Duration::from_secs(5), || 3).await {
                assert_eq!(v, 3);
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered);
    }
}
