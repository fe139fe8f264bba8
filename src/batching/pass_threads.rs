//! Where a model worker's forward pass runs its parallel loops (see [`PassThreads`]).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Forward passes running now, across the model workers.
static RUNNING_PASSES: AtomicUsize = AtomicUsize::new(0);

/// Where a worker's forward pass runs its parallel loops (the kernels' rayon calls). Alone, on
/// rayon's threads, all cores on one pass. While another worker's pass runs, on the worker's
/// own thread (a one-thread rayon pool, where the kernels see one thread and run their loops
/// inline): two passes then share the cores a pass each, with none of the hand-offs between
/// threads that each layer's split costs. MiniLM classifier at 64 clients, 2 workers on 2
/// Xeon cores (wrk, 6 s, 2026-12-04): 1898 -> 2380 requests/s in f32, 3978 -> 5247 in bf16,
/// 3976 -> 5224 in int8; one client alone keeps both cores.
pub(super) struct PassThreads {
    own: Option<rayon::ThreadPool>,
}

impl PassThreads {
    pub(super) fn new() -> Self {
        let own = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "model-pass".into())
            .build();
        if let Err(error) = &own {
            tracing::warn!(
                "no thread of its own for a model worker ({error}): passes share rayon's"
            );
        }
        PassThreads { own: own.ok() }
    }

    /// Runs `pass` alone on rayon's threads, or on this worker's own thread while another
    /// pass runs.
    pub(super) fn run<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        let others = RUNNING_PASSES.fetch_add(1, Ordering::SeqCst);
        let result = match &self.own {
            Some(own) if others > 0 => own.install(pass),
            _ => pass(),
        };
        RUNNING_PASSES.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// While one pass runs, a second one sees a single thread (its own pool), whatever rayon's
    /// pool holds.
    #[test]
    fn a_pass_that_overlaps_another_keeps_to_its_own_thread() {
        let (first, second) = (PassThreads::new(), PassThreads::new());
        let (started, wait_started) = mpsc::channel();
        let (release, wait_release) = mpsc::channel::<()>();
        let running = std::thread::spawn(move || {
            first.run(move || {
                started.send(()).unwrap();
                wait_release.recv().unwrap();
            })
        });
        wait_started.recv().unwrap();
        let threads = second.run(rayon::current_num_threads);
        release.send(()).unwrap();
        running.join().unwrap();
        assert_eq!(threads, 1);
    }
}
