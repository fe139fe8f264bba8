//! Continuous (iteration-level) batching for text generation. One scheduler thread owns the
//! running sequences; every step it admits waiting requests (their prompts are prefilled in the
//! same forward pass as the others' next tokens), advances every running sequence by one token,
//! and retires the finished ones, so a long generation never holds up a short one.
//!
//! Memory is bounded by a token budget: a request joins only while the running sequences'
//! prompts plus their `max_new_tokens` fit in it (a request alone always runs). A sequence whose
//! client went away (disconnect, deadline, a stop sequence seen by the task) leaves the batch at
//! the next step: the task signals it by dropping its event receiver.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;

use super::beam::BeamSearch;
use super::constrained::SequenceConstraint;
use super::job::{Event, FinishReason, Job};
use super::sampling::{choose, model_logprobs, Sampling};
use crate::error::{ModelError, ServerError};
use crate::models::{StepInput, StepModel};
use crate::telemetry;

#[derive(Debug, Clone, Copy)]
pub struct GeneratorConfig {
    /// Tokens (prompt + max_new_tokens) the running sequences may hold together.
    pub max_batch_tokens: usize,
    /// Requests that may wait to join; more get 503.
    pub max_queue: usize,
}

struct Running<C> {
    job: Job,
    cache: C,
    /// Tokens to feed at the next step: the prompt first, then the last generated token.
    feed: Vec<u32>,
    history: Vec<u32>,
    generated: usize,
    finished: bool,
    rng: StdRng,
    /// When it joined (for `max_time`).
    started: Instant,
    /// Its place in the grammar its text must follow, if any.
    constraint: Option<SequenceConstraint>,
}

#[derive(Clone)]
pub struct Generator {
    queue: mpsc::Sender<Job>,
    max_queue: usize,
}

impl Generator {
    pub fn start<M: StepModel>(
        model: Arc<M>,
        config: GeneratorConfig,
    ) -> std::io::Result<Generator> {
        let (queue, receiver) = mpsc::channel(config.max_queue.max(1));
        std::thread::Builder::new()
            .name("generation-scheduler".into())
            .spawn(move || schedule(model.as_ref(), receiver, config.max_batch_tokens.max(1)))?;
        Ok(Generator {
            queue,
            max_queue: config.max_queue,
        })
    }

    /// Sequences that may wait at once (`MAX_QUEUE`).
    pub fn capacity(&self) -> usize {
        self.max_queue
    }

    /// Queues one sequence (its length already checked against the model by the task); its
    /// tokens arrive on the receiver as they are made. Dropping the receiver ends the sequence.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        sampling: Sampling,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ServerError> {
        self.submit_with_source(prompt, None, sampling)
    }

    /// [`Generator::submit`] for a model whose encoder reads `source` (speech features); the
    /// prompt holds the decoder's first tokens.
    pub fn submit_with_source(
        &self,
        prompt: Vec<u32>,
        source: Option<candle_core::Tensor>,
        sampling: Sampling,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ServerError> {
        if prompt.is_empty() {
            return Err(ServerError::bad_request(
                "the prompt is empty: there is no token to continue from",
            ));
        }
        let (events, receiver) = mpsc::unbounded_channel();
        crate::batching::enqueue(
            &self.queue,
            Job {
                prompt,
                source,
                sampling,
                events,
                submitted: std::time::Instant::now(),
            },
            self.max_queue,
            "the generation scheduler has stopped",
        )?;
        Ok(receiver)
    }
}

fn schedule<M: StepModel>(model: &M, mut receiver: mpsc::Receiver<Job>, budget: usize) {
    let mut state = Scheduler {
        model,
        budget,
        waiting: VecDeque::new(),
        running: Vec::new(),
        searches: Vec::new(),
    };
    loop {
        if state.is_idle() && state.waiting.is_empty() {
            match receiver.blocking_recv() {
                Some(job) => state.waiting.push_back(job),
                None => return,
            }
        }
        while let Ok(job) = receiver.try_recv() {
            state.waiting.push_back(job);
        }
        state.admit();
        state.drop_abandoned();
        if !state.is_idle() {
            state.step();
        }
    }
}

/// The scheduler thread's sequences: waiting to join, running alone, or in beam searches.
struct Scheduler<'m, M: StepModel> {
    model: &'m M,
    /// Tokens the running sequences may hold together.
    budget: usize,
    waiting: VecDeque<Job>,
    running: Vec<Running<M::Cache>>,
    searches: Vec<BeamSearch<M::Cache>>,
}

impl<M: StepModel> Scheduler<'_, M> {
    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.searches.is_empty()
    }

    /// Admits waiting jobs in arrival order while the budget holds (one alone always fits).
    fn admit(&mut self) {
        let mut held = self
            .running
            .iter()
            .map(|r| &r.job)
            .chain(self.searches.iter().map(|s| &s.job))
            .fold(0usize, |held, job| held.saturating_add(job.need()));
        while let Some(job) = self.waiting.front() {
            let need = job.need();
            if !self.is_idle() && held.saturating_add(need) > self.budget {
                break;
            }
            let job = self.waiting.pop_front().expect("front exists");
            if job.events.is_closed() {
                continue;
            }
            held = held.saturating_add(need);
            let rng = match job.sampling.seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_rng(&mut rand::rng()),
            };
            if job.sampling.prompt_logprobs {
                let scored =
                    catch_unwind(AssertUnwindSafe(|| self.model.prompt_logprobs(&job.prompt)));
                let event = match scored {
                    Ok(Ok(logprobs)) => Event::Prompt(logprobs),
                    Ok(Err(e)) => Event::Failed(ModelError::StepFailed(format!("{e:#}"))),
                    Err(_) => Event::Failed(ModelError::StepPanicked),
                };
                let failed = matches!(event, Event::Failed(_));
                let _ = job.events.send(event);
                if failed {
                    continue;
                }
            }
            let context = self.model.context(&job.prompt);
            let cache = match &job.source {
                Some(source) => self.model.cache_with_source(source),
                None => self.model.new_cache(),
            };
            if job.sampling.num_beams > 1 {
                self.searches
                    .push(BeamSearch::new(job, cache, context, rng));
                continue;
            }
            self.running.push(Running {
                constraint: job.sampling.grammar.as_ref().map(|g| g.start()),
                cache,
                feed: job.prompt.clone(),
                history: context,
                generated: 0,
                finished: false,
                rng,
                started: Instant::now(),
                job,
            });
        }
    }

    /// Sequences whose client went away leave before they cost another step.
    fn drop_abandoned(&mut self) {
        let still_wanted = |job: &Job, generated: usize| {
            let gone = job.events.is_closed();
            if gone {
                tracing::info!(
                    "a sequence left the batch after {generated} of {} tokens: its client went away",
                    job.sampling.max_new_tokens
                );
            }
            !gone
        };
        self.running.retain(|r| still_wanted(&r.job, r.generated));
        self.searches
            .retain(|s| still_wanted(&s.job, s.generated()));
    }

    /// One forward pass (the single sequences, then every search's beams), then each sequence's
    /// next token; finished sequences and searches leave.
    fn step(&mut self) {
        let result = {
            let mut inputs: Vec<StepInput<M::Cache>> = self
                .running
                .iter_mut()
                .map(|r| StepInput {
                    tokens: &r.feed,
                    cache: &mut r.cache,
                })
                .collect();
            for search in self.searches.iter_mut() {
                inputs.extend(search.inputs());
            }
            telemetry::forward_pass(inputs.len());
            catch_unwind(AssertUnwindSafe(|| self.model.step(&mut inputs)))
        };
        let logits = match result {
            Ok(Ok(logits)) => logits,
            Ok(Err(e)) => return self.fail_all(ModelError::StepFailed(format!("{e:#}"))),
            Err(_) => return self.fail_all(ModelError::StepPanicked),
        };
        telemetry::tokens_generated(self.running.len() + self.searches.len());
        let mut rows = logits.into_iter();
        for (r, row) in self.running.iter_mut().zip(rows.by_ref()) {
            r.advance(row);
        }
        self.running.retain(|r| !r.finished);
        // Each search takes as many rows as it fed beams; a finished one sends its answer.
        self.searches.retain_mut(|search| {
            let beam_rows: Vec<Vec<f32>> = rows.by_ref().take(search.width()).collect();
            if search.generated() == 0 {
                telemetry::queue_wait(search.job.submitted.elapsed());
            }
            match search.advance(beam_rows) {
                Some(sequences) => {
                    let _ = search.job.events.send(Event::Sequences(sequences));
                    false
                }
                None => true,
            }
        });
    }

    fn fail_all(&mut self, error: ModelError) {
        tracing::error!("{error}");
        let jobs = self
            .running
            .drain(..)
            .map(|r| r.job)
            .chain(self.searches.drain(..).map(|s| s.job));
        for job in jobs {
            let _ = job.events.send(Event::Failed(error.clone()));
        }
    }
}

impl<C> Running<C> {
    /// Chooses the next token from this sequence's logits and sends it.
    fn advance(&mut self, mut logits: Vec<f32>) {
        let sampling = &self.job.sampling;
        // (the model's own distribution: before `choose` processes the logits in place)
        let raw = sampling.logprobs.map(|_| logits.clone());
        if let Some(constraint) = &mut self.constraint {
            if let Err(e) = constraint.mask(&mut logits, &sampling.eos_token_ids) {
                return self.fail_grammar(e);
            }
        }
        let (id, logprob) = choose(
            &mut logits,
            sampling,
            &self.history,
            self.generated,
            &mut self.rng,
        );
        self.generated += 1;
        if self.generated == 1 {
            telemetry::queue_wait(self.job.submitted.elapsed());
        }
        self.history.push(id);
        self.feed.clear();
        self.feed.push(id);
        // A grammar that can take nothing more ends the sequence, as its end token would.
        let complete = match self
            .constraint
            .as_mut()
            .map(|c| c.commit(id, &sampling.eos_token_ids))
        {
            Some(Err(e)) => return self.fail_grammar(e),
            Some(Ok(complete)) => complete,
            None => false,
        };
        let finish = if sampling.eos_token_ids.contains(&id) || complete {
            Some(FinishReason::EosToken)
        } else if self.generated >= sampling.max_new_tokens
            || sampling
                .max_time
                .is_some_and(|t| self.started.elapsed().as_secs_f32() > t)
        {
            Some(FinishReason::Length)
        } else {
            None
        };
        self.finished = finish.is_some();
        let model_logprobs = raw
            .zip(sampling.logprobs)
            .map(|(raw, top)| Box::new(model_logprobs(&raw, id, top)));
        let _ = self.job.events.send(Event::Token {
            id,
            logprob,
            finish,
            model_logprobs,
        });
    }

    /// The grammar failed (a step past its work limits): the sequence ends with the error.
    fn fail_grammar(&mut self, error: String) {
        tracing::warn!("constrained decoding failed: {error}");
        self.finished = true;
        let _ = self
            .job
            .events
            .send(Event::Failed(ModelError::Grammar(error)));
    }
}
