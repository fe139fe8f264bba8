//! Dynamic batching: requests' sequences wait in a bounded queue; model workers (OS threads,
//! sharing one copy of the weights) take as many waiting sequences as fit in a token budget and
//! run them in one forward pass. No timer: while a pass runs, new requests accumulate and form the
//! next batch, so a lone request is never delayed and a busy server batches by itself.
//!
//! A full queue refuses at once (503); a request whose client went away is dropped before it is
//! computed; a failing or panicking pass fails only the requests in it.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::error::{panic_message, ModelError, ServerError};
use crate::models::{Batch, BatchModel, Output, Sequence};
use crate::telemetry;

mod pass_threads;
use pass_threads::PassThreads;

/// A request's outputs, one per sequence in order, or why the model could not make them.
pub type Outputs = Result<Vec<Output>, ModelError>;
type Reply = oneshot::Sender<Outputs>;

#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Padded tokens (sequences x longest length) one forward pass may take.
    pub max_batch_tokens: usize,
    /// Requests that may wait; more get 503.
    pub max_queue: usize,
    pub workers: usize,
}

struct Job {
    sequences: Vec<Sequence>,
    reply: Reply,
    submitted: Instant,
}

/// A job some of whose sequences may already be computed (large requests span passes).
struct InFlight {
    job: Job,
    next: usize,
    outputs: Vec<Output>,
}

impl InFlight {
    fn new(job: Job) -> Self {
        InFlight {
            job,
            next: 0,
            outputs: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
    max_queue: usize,
    max_batch_tokens: usize,
}

impl Batcher {
    pub fn start(model: Arc<dyn BatchModel>, config: BatcherConfig) -> std::io::Result<Batcher> {
        let (queue, receiver) = mpsc::channel(config.max_queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..config.workers.max(1) {
            let model = model.clone();
            let receiver = receiver.clone();
            let budget = config.max_batch_tokens.max(1);
            std::thread::Builder::new()
                .name(format!("model-worker-{i}"))
                .spawn(move || worker_loop(model.as_ref(), &receiver, budget))?;
        }
        Ok(Batcher {
            queue,
            max_queue: config.max_queue,
            max_batch_tokens: config.max_batch_tokens.max(1),
        })
    }

    /// Queues the sequences of one request; the receiver yields one row per sequence, in order.
    pub fn submit(
        &self,
        sequences: Vec<Sequence>,
    ) -> Result<oneshot::Receiver<Outputs>, ServerError> {
        let (reply, receiver) = oneshot::channel();
        if sequences.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return Ok(receiver);
        }
        enqueue(
            &self.queue,
            Job {
                sequences,
                reply,
                submitted: Instant::now(),
            },
            self.max_queue,
            "the model workers have stopped",
        )?;
        Ok(receiver)
    }

    /// Queues many sequences at once (a JSON Lines batch): sorted by length, so that each pass
    /// pads little, and cut into jobs of about one pass's tokens, so that every model worker
    /// takes a share (a job stays with the worker that took it). At most a quarter of the
    /// queue's places are taken; the outputs come back in the order given.
    pub fn submit_many(&self, sequences: Vec<Sequence>) -> Result<ManyOutputs, ServerError> {
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&i| sequences[i].cost());
        let mut slots: Vec<Option<Sequence>> = sequences.into_iter().map(Some).collect();
        let sorted: Vec<Sequence> = order.iter().filter_map(|&i| slots[i].take()).collect();
        let total: usize = sorted.iter().map(|s| s.cost()).sum();
        let jobs = total
            .div_ceil(self.max_batch_tokens)
            .clamp(1, (self.max_queue / 4).max(1));
        let per_job = total.div_ceil(jobs);
        let mut receivers = Vec::with_capacity(jobs);
        let mut chunk = Vec::new();
        let mut tokens = 0;
        for sequence in sorted {
            tokens += sequence.cost();
            chunk.push(sequence);
            if tokens >= per_job {
                receivers.push(self.submit(std::mem::take(&mut chunk))?);
                tokens = 0;
            }
        }
        if !chunk.is_empty() {
            receivers.push(self.submit(chunk)?);
        }
        Ok(ManyOutputs { order, receivers })
    }
}

/// The outputs of [`Batcher::submit_many`], to await.
pub struct ManyOutputs {
    /// `order[k]`: the position, as given, of the k-th sequence submitted.
    order: Vec<usize>,
    receivers: Vec<oneshot::Receiver<Outputs>>,
}

impl ManyOutputs {
    /// Every output in the order the sequences were given; `Err` when a worker dropped a job.
    pub async fn outputs(self) -> Result<Outputs, oneshot::error::RecvError> {
        let mut sorted = Vec::with_capacity(self.order.len());
        for receiver in self.receivers {
            match receiver.await? {
                Ok(outputs) => sorted.extend(outputs),
                Err(error) => return Ok(Err(error)),
            }
        }
        let mut slots: Vec<Option<Output>> = (0..self.order.len()).map(|_| None).collect();
        for (output, &i) in sorted.into_iter().zip(&self.order) {
            slots[i] = Some(output);
        }
        Ok(slots
            .into_iter()
            .map(|o| o.ok_or(ModelError::Stopped("a job came back short")))
            .collect())
    }
}

/// Puts a job in a bounded queue without waiting: a full queue is a 503 at once.
pub(crate) fn enqueue<T>(
    queue: &mpsc::Sender<T>,
    job: T,
    max_queue: usize,
    stopped: &str,
) -> Result<(), ServerError> {
    queue.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ServerError::Overloaded(max_queue),
        mpsc::error::TrySendError::Closed(_) => ServerError::Internal(stopped.into()),
    })
}

fn worker_loop(model: &dyn BatchModel, receiver: &Mutex<mpsc::Receiver<Job>>, budget: usize) {
    let threads = PassThreads::new();
    let mut pending: VecDeque<InFlight> = VecDeque::new();
    loop {
        if !take_jobs(receiver, &mut pending, budget) {
            return;
        }
        // Clients that went away (disconnect, deadline) are not computed.
        pending.retain(|f| {
            let gone = f.job.reply.is_closed();
            if gone {
                tracing::debug!("dropping a request whose client went away");
            }
            !gone
        });
        if pending.is_empty() {
            continue;
        }

        // FIFO: take sequences in arrival order while the padded size fits the budget.
        let mut picks: Vec<(usize, usize)> = Vec::new();
        let mut longest = 0;
        'fill: for (j, flight) in pending.iter().enumerate() {
            for s in flight.next..flight.job.sequences.len() {
                let len = flight.job.sequences[s].cost();
                let padded = longest.max(len) * (picks.len() + 1);
                if !picks.is_empty() && padded > budget {
                    break 'fill;
                }
                longest = longest.max(len);
                picks.push((j, s));
            }
        }
        let batch = Batch::from_sequences(picks.iter().map(|&(j, s)| &pending[j].job.sequences[s]));
        let started = Instant::now();
        for &(j, s) in &picks {
            if s == 0 {
                telemetry::queue_wait(started - pending[j].job.submitted);
            }
        }
        telemetry::forward_pass(batch.len());
        let outcome = threads.run(|| catch_unwind(AssertUnwindSafe(|| model.forward(&batch))));
        tracing::debug!(
            sequences = batch.len(),
            seq_len = batch.seq_len,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "forward pass"
        );
        let failure = match outcome {
            Ok(Ok(outputs)) if outputs.len() == picks.len() => {
                for (&(j, _), output) in picks.iter().zip(outputs) {
                    pending[j].outputs.push(output);
                    pending[j].next += 1;
                }
                None
            }
            Ok(Ok(outputs)) => Some(ModelError::OutputCount {
                got: outputs.len(),
                expected: picks.len(),
            }),
            Ok(Err(e)) => Some(ModelError::ForwardFailed(format!("{e:#}"))),
            Err(panic) => Some(ModelError::ForwardPanicked(panic_message(panic.as_ref()))),
        };
        let involved: Vec<usize> = {
            let mut v: Vec<usize> = picks.iter().map(|&(j, _)| j).collect();
            v.dedup();
            v
        };
        // Remove finished (or failed) jobs from the back so indices stay valid.
        for &j in involved.iter().rev() {
            let done = failure.is_some() || pending[j].next == pending[j].job.sequences.len();
            if done {
                let flight = pending.remove(j).expect("index of a picked job");
                let result = match &failure {
                    Some(error) => {
                        tracing::error!("{error}");
                        Err(error.clone())
                    }
                    None => Ok(flight.outputs),
                };
                let _ = flight.job.reply.send(result);
            }
        }
    }
}

/// Moves waiting jobs into `pending`: blocks when there is nothing to do, otherwise takes what has
/// arrived until a batch's worth of tokens waits. Returns false when the server shuts down.
///
/// A worker that already has work never waits for the queue lock: another, idle worker may hold
/// it while blocked on an empty queue, and waiting would stall this worker's large request until
/// unrelated traffic arrived.
fn take_jobs(
    receiver: &Mutex<mpsc::Receiver<Job>>,
    pending: &mut VecDeque<InFlight>,
    budget: usize,
) -> bool {
    let mut receiver = if pending.is_empty() {
        let mut receiver = match receiver.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        match receiver.blocking_recv() {
            Some(job) => pending.push_back(InFlight::new(job)),
            None => return false,
        }
        receiver
    } else {
        match receiver.try_lock() {
            Ok(r) => r,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return true,
        }
    };
    let mut waiting: usize = pending
        .iter()
        .flat_map(|f| f.job.sequences[f.next..].iter())
        .map(Sequence::cost)
        .sum();
    while waiting < budget {
        match receiver.try_recv() {
            Ok(job) => {
                waiting += job.sequences.iter().map(Sequence::cost).sum::<usize>();
                pending.push_back(InFlight::new(job));
            }
            Err(_) => break,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Echoes each sequence's first id and length; records batch sizes; sleeps to let a queue build.
    struct Recorder {
        batches: Mutex<Vec<usize>>,
        delay: Duration,
        calls: AtomicUsize,
    }

    impl BatchModel for Recorder {
        fn forward(&self, batch: &Batch) -> anyhow::Result<Vec<Output>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.batches.lock().unwrap().push(batch.len());
            std::thread::sleep(self.delay);
            if batch.input_ids.contains(&666) {
                panic!("poisoned input");
            }
            Ok((0..batch.len())
                .map(|i| {
                    Output::Vector(vec![
                        batch.input_ids[i * batch.seq_len] as f32,
                        batch.lengths[i] as f32,
                    ])
                })
                .collect())
        }
    }

    fn seq(first: u32, len: usize) -> Sequence {
        let mut ids = vec![first];
        ids.resize(len, 7);
        Sequence {
            type_ids: vec![0; len],
            ids,
            pixels: None,
        }
    }

    fn recorder(delay_ms: u64) -> Arc<Recorder> {
        Arc::new(Recorder {
            batches: Mutex::new(vec![]),
            delay: Duration::from_millis(delay_ms),
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_forward_passes_and_get_their_own_rows() {
        let model = recorder(30);
        let batcher = Batcher::start(
            model.clone(),
            BatcherConfig {
                max_batch_tokens: 1000,
                max_queue: 64,
                workers: 1,
            },
        )
        .unwrap();
        let receivers: Vec<_> = (0..10)
            .map(|i| batcher.submit(vec![seq(i, 3 + i as usize)]).unwrap())
            .collect();
        for (i, r) in receivers.into_iter().enumerate() {
            let rows = r.await.unwrap().unwrap();
            assert_eq!(rows, vec![Output::Vector(vec![i as f32, (3 + i) as f32])]);
        }
        let batches = model.batches.lock().unwrap().clone();
        assert!(
            batches.len() < 10,
            "10 requests took {} passes: {batches:?}",
            batches.len()
        );
        assert_eq!(batches.iter().sum::<usize>(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_budget_splits_a_large_request_across_passes() {
        let model = recorder(0);
        let batcher = Batcher::start(
            model.clone(),
            BatcherConfig {
                max_batch_tokens: 20,
                max_queue: 8,
                workers: 1,
            },
        )
        .unwrap();
        let rows = batcher
            .submit((0..9).map(|i| seq(i, 10)).collect())
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rows.into_iter()
                .map(|r| r.into_vector().unwrap()[0] as u32)
                .collect::<Vec<_>>(),
            (0..9).collect::<Vec<_>>()
        );
        assert!(model.batches.lock().unwrap().iter().all(|&b| b <= 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_request_completes_while_another_worker_waits_for_work() {
        // Two workers: while one computes the passes of a large request, the other sits idle on
        // the empty queue. The large request must finish without any further traffic.
        let model = recorder(5);
        let batcher = Batcher::start(
            model,
            BatcherConfig {
                max_batch_tokens: 10,
                max_queue: 8,
                workers: 2,
            },
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // both workers are waiting
        let rows = batcher
            .submit((0..6).map(|i| seq(i, 10)).collect())
            .unwrap();
        let rows = tokio::time::timeout(Duration::from_secs(5), rows)
            .await
            .expect("stalled")
            .unwrap()
            .unwrap();
        assert_eq!(rows.len(), 6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_sequences_spread_over_jobs_come_back_in_their_order() {
        let model = recorder(0);
        let batcher = Batcher::start(
            model.clone(),
            BatcherConfig {
                max_batch_tokens: 20,
                max_queue: 64,
                workers: 2,
            },
        )
        .unwrap();
        let lengths = [9, 1, 5, 3, 8, 2, 7, 4, 6, 1, 9, 2];
        let sequences = lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| seq(i as u32, len))
            .collect();
        let many = batcher.submit_many(sequences).unwrap();
        assert!(many.receivers.len() > 1, "one job for {} tokens", 57);
        let rows = many.outputs().await.unwrap().unwrap();
        let got: Vec<(u32, usize)> = rows
            .into_iter()
            .map(|r| {
                let v = r.into_vector().unwrap();
                (v[0] as u32, v[1] as usize)
            })
            .collect();
        let want: Vec<(u32, usize)> = lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| (i as u32, len))
            .collect();
        assert_eq!(got, want);
        let empty = batcher.submit_many(Vec::new()).unwrap();
        assert!(empty.outputs().await.unwrap().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_refuses_at_once() {
        let model = recorder(200);
        let batcher = Batcher::start(
            model,
            BatcherConfig {
                max_batch_tokens: 4,
                max_queue: 2,
                workers: 1,
            },
        )
        .unwrap();
        let mut refused = 0;
        let mut held = Vec::new();
        for i in 0..10 {
            match batcher.submit(vec![seq(i, 4)]) {
                Ok(r) => held.push(r),
                Err(ServerError::Overloaded(2)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused >= 6, "refused {refused}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_pass_fails_its_requests_and_the_worker_lives_on() {
        let model = recorder(0);
        let batcher = Batcher::start(
            model,
            BatcherConfig {
                max_batch_tokens: 100,
                max_queue: 8,
                workers: 1,
            },
        )
        .unwrap();
        let err = batcher
            .submit(vec![seq(666, 2)])
            .unwrap()
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err, ModelError::ForwardPanicked("poisoned input".into()));
        let ok = batcher
            .submit(vec![seq(5, 2)])
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ok, vec![Output::Vector(vec![5.0, 2.0])]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_requests_are_not_computed() {
        let model = recorder(100);
        let batcher = Batcher::start(
            model.clone(),
            BatcherConfig {
                max_batch_tokens: 4,
                max_queue: 16,
                workers: 1,
            },
        )
        .unwrap();
        let first = batcher.submit(vec![seq(1, 4)]).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await; // the first pass is running
        for i in 0..5 {
            drop(batcher.submit(vec![seq(10 + i, 4)]).unwrap()); // client gone before its turn
        }
        let last = batcher.submit(vec![seq(2, 4)]).unwrap();
        first.await.unwrap().unwrap();
        last.await.unwrap().unwrap();
        assert_eq!(model.calls.load(Ordering::SeqCst), 2);
    }
}
