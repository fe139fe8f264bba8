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

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::beam::{BeamSearch, EarlyStopping};
use crate::error::ServerError;
use crate::kernels::softmax;
use crate::models::{StepInput, StepModel};

/// How the next token is chosen, as `transformers`' generate does with these parameters.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// End-of-sequence tokens are not chosen before this many new tokens.
    pub min_new_tokens: usize,
    /// No n-gram of this size occurs twice (0: off).
    pub no_repeat_ngram_size: usize,
    pub do_sample: bool,
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
    pub eos_token_ids: Vec<u32>,
    /// Token sequences never generated (`bad_words_ids`; Marian bans its pad token).
    pub bad_words: Vec<Vec<u32>>,
    /// The first generated token (`forced_bos_token_id`; BART's `<s>`).
    pub forced_bos: Option<u32>,
    /// The last token `max_new_tokens` allows (`forced_eos_token_id`).
    pub forced_eos: Vec<u32>,
    /// Beam search when above 1: the sequence's answer is [`Event::Sequences`].
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// An end-of-sequence token was generated.
    EosToken,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A new token; `finish` is set on the sequence's last one.
    Token {
        id: u32,
        logprob: f32,
        finish: Option<FinishReason>,
    },
    /// Beam search's answer: the finished hypotheses' generated tokens, best first.
    Sequences(Vec<Vec<u32>>),
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
pub struct GeneratorConfig {
    /// Tokens (prompt + max_new_tokens) the running sequences may hold together.
    pub max_batch_tokens: usize,
    /// Requests that may wait to join; more get 503.
    pub max_queue: usize,
}

pub(super) struct Job {
    pub(super) prompt: Vec<u32>,
    pub(super) sampling: Sampling,
    pub(super) events: mpsc::UnboundedSender<Event>,
}

impl Job {
    /// Tokens the job may hold at once: its prompt and new tokens, for every beam.
    fn need(&self) -> usize {
        self.prompt
            .len()
            .saturating_add(self.sampling.max_new_tokens)
            .saturating_mul(self.sampling.num_beams.max(1))
    }
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

    /// Queues one sequence (its length already checked against the model by the task); its
    /// tokens arrive on the receiver as they are made. Dropping the receiver ends the sequence.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        sampling: Sampling,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ServerError> {
        if prompt.is_empty() {
            return Err(ServerError::bad_request(
                "the prompt is empty: there is no token to continue from",
            ));
        }
        let (events, receiver) = mpsc::unbounded_channel();
        super::enqueue(
            &self.queue,
            Job {
                prompt,
                sampling,
                events,
            },
            self.max_queue,
            "the generation scheduler has stopped",
        )?;
        Ok(receiver)
    }
}

fn schedule<M: StepModel>(model: &M, mut receiver: mpsc::Receiver<Job>, budget: usize) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut running: Vec<Running<M::Cache>> = Vec::new();
    let mut searches: Vec<BeamSearch<M::Cache>> = Vec::new();
    loop {
        if running.is_empty() && searches.is_empty() && waiting.is_empty() {
            match receiver.blocking_recv() {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        while let Ok(job) = receiver.try_recv() {
            waiting.push_back(job);
        }
        // Admit in arrival order while the budget holds (one alone always fits).
        let mut held = running
            .iter()
            .map(|r| &r.job)
            .chain(searches.iter().map(|s| &s.job))
            .fold(0usize, |held, job| held.saturating_add(job.need()));
        while let Some(job) = waiting.front() {
            let need = job.need();
            let idle = running.is_empty() && searches.is_empty();
            if !idle && held.saturating_add(need) > budget {
                break;
            }
            let job = waiting.pop_front().expect("front exists");
            if job.events.is_closed() {
                continue;
            }
            held = held.saturating_add(need);
            let rng = match job.sampling.seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_rng(&mut rand::rng()),
            };
            let context = model.context(&job.prompt);
            if job.sampling.num_beams > 1 {
                searches.push(BeamSearch::new(job, model.new_cache(), context, rng));
                continue;
            }
            running.push(Running {
                cache: model.new_cache(),
                feed: job.prompt.clone(),
                history: context,
                generated: 0,
                finished: false,
                rng,
                job,
            });
        }
        // Sequences whose client went away leave before they cost another step.
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
        running.retain(|r| still_wanted(&r.job, r.generated));
        searches.retain(|s| still_wanted(&s.job, s.generated()));
        if running.is_empty() && searches.is_empty() {
            continue;
        }

        // One forward pass: the single sequences, then every search's beams.
        let result = {
            let mut inputs: Vec<StepInput<M::Cache>> = running
                .iter_mut()
                .map(|r| StepInput {
                    tokens: &r.feed,
                    cache: &mut r.cache,
                })
                .collect();
            for search in searches.iter_mut() {
                inputs.extend(search.inputs());
            }
            catch_unwind(AssertUnwindSafe(|| model.step(&mut inputs)))
        };
        let logits = match result {
            Ok(Ok(logits)) => logits,
            Ok(Err(e)) => {
                fail_all(
                    &mut running,
                    &mut searches,
                    format!("generation step failed: {e:#}"),
                );
                continue;
            }
            Err(_) => {
                fail_all(
                    &mut running,
                    &mut searches,
                    "generation step panicked".into(),
                );
                continue;
            }
        };
        let mut rows = logits.into_iter();
        for (r, mut row) in running.iter_mut().zip(rows.by_ref()) {
            let (id, logprob) = choose(
                &mut row,
                &r.job.sampling,
                &r.history,
                r.generated,
                &mut r.rng,
            );
            r.generated += 1;
            r.history.push(id);
            r.feed.clear();
            r.feed.push(id);
            let finish = if r.job.sampling.eos_token_ids.contains(&id) {
                Some(FinishReason::EosToken)
            } else if r.generated >= r.job.sampling.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            r.finished = finish.is_some();
            let _ = r.job.events.send(Event::Token {
                id,
                logprob,
                finish,
            });
        }
        running.retain(|r| !r.finished);
        // Each search takes as many rows as it fed beams; a finished one sends its answer.
        searches.retain_mut(|search| {
            let beam_rows: Vec<Vec<f32>> = rows.by_ref().take(search.width()).collect();
            match search.advance(beam_rows) {
                Some(sequences) => {
                    let _ = search.job.events.send(Event::Sequences(sequences));
                    false
                }
                None => true,
            }
        });
    }
}

fn fail_all<C>(running: &mut Vec<Running<C>>, searches: &mut Vec<BeamSearch<C>>, message: String) {
    tracing::error!("{message}");
    let jobs = running
        .drain(..)
        .map(|r| r.job)
        .chain(searches.drain(..).map(|s| s.job));
    for job in jobs {
        let _ = job.events.send(Event::Failed(message.clone()));
    }
}

/// `generate`'s logits processors, in `transformers`' order: repetition penalty, n-gram
/// blocking, bad words, the minimum length, forced first and last tokens, then (sampling)
/// temperature, top-k and top-p. `scores` are logits, or beam search's log-probabilities;
/// `history`: the context and the `generated` tokens so far.
pub fn process(scores: &mut [f32], sampling: &Sampling, history: &[u32], generated: usize) {
    let ban = |scores: &mut [f32], token: u32| {
        if let Some(l) = scores.get_mut(token as usize) {
            *l = f32::NEG_INFINITY;
        }
    };
    if sampling.repetition_penalty != 1.0 {
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(l) = scores.get_mut(t as usize) {
                *l = if *l < 0.0 {
                    *l * sampling.repetition_penalty
                } else {
                    *l / sampling.repetition_penalty
                };
            }
        }
    }
    let n = sampling.no_repeat_ngram_size;
    if n > 0 && history.len() + 1 >= n {
        // Every token that would complete an n-gram already in the history is banned.
        let prefix = &history[history.len() + 1 - n..];
        for window in history.windows(n) {
            if window[..n - 1] == *prefix {
                ban(scores, window[n - 1]);
            }
        }
    }
    for words in &sampling.bad_words {
        // The last token of a banned sequence, where the history ends with the rest of it.
        if let Some((&last, before)) = words.split_last() {
            if history.ends_with(before) {
                ban(scores, last);
            }
        }
    }
    if generated < sampling.min_new_tokens {
        for &eos in &sampling.eos_token_ids {
            ban(scores, eos);
        }
    }
    // Forced tokens: every other score -inf, the forced one(s) 0.
    let force = |scores: &mut [f32], tokens: &[u32]| {
        scores.fill(f32::NEG_INFINITY);
        for &t in tokens {
            if let Some(l) = scores.get_mut(t as usize) {
                *l = 0.0;
            }
        }
    };
    if let Some(bos) = sampling.forced_bos.filter(|_| history.len() == 1) {
        force(scores, &[bos]);
    }
    if !sampling.forced_eos.is_empty() && generated + 1 == sampling.max_new_tokens {
        force(scores, &sampling.forced_eos);
    }
    if sampling.do_sample {
        if sampling.temperature != 1.0 {
            for l in scores.iter_mut() {
                *l /= sampling.temperature;
            }
        }
        if let Some(k) = sampling.top_k.filter(|&k| k > 0 && k < scores.len()) {
            let mut sorted = scores.to_vec();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            for l in scores.iter_mut() {
                if *l < kth {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if sampling.top_p < 1.0 {
            // Drop the least likely tokens whose cumulative probability stays within 1 - top_p.
            let probs = softmax(scores);
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_unstable_by(|&a, &b| probs[a].total_cmp(&probs[b]));
            let mut cumulative = 0.0;
            for &i in &order[..order.len() - 1] {
                cumulative += probs[i];
                if cumulative <= 1.0 - sampling.top_p {
                    scores[i] = f32::NEG_INFINITY;
                } else {
                    break;
                }
            }
        }
    }
}

/// The next token and its log-probability under the processed distribution (see [`process`]).
pub fn choose(
    logits: &mut [f32],
    sampling: &Sampling,
    history: &[u32],
    generated: usize,
    rng: &mut StdRng,
) -> (u32, f32) {
    process(logits, sampling, history, generated);
    let probs = softmax(logits);
    let id = if sampling.do_sample {
        let mut target: f32 = rng.random::<f32>();
        let mut pick = probs.len() - 1;
        for (i, &p) in probs.iter().enumerate() {
            if target < p {
                pick = i;
                break;
            }
            target -= p;
        }
        pick
    } else {
        // The first maximum, as torch.argmax.
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best
    };
    (id as u32, probs[id].max(f32::MIN_POSITIVE).ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> Sampling {
        Sampling {
            max_new_tokens: 1,
            min_new_tokens: 0,
            no_repeat_ngram_size: 0,
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: None,
            eos_token_ids: vec![],
            bad_words: vec![],
            forced_bos: None,
            forced_eos: vec![],
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_penalises_repeats() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            choose(&mut [1.0, 3.0, 3.0], &greedy(), &[], 0, &mut rng).0,
            1
        );
        let penalised = Sampling {
            repetition_penalty: 2.0,
            ..greedy()
        };
        // 3.0 / 2 = 1.5 < 2.0
        assert_eq!(choose(&mut [2.0, 3.0], &penalised, &[1], 1, &mut rng).0, 0);
    }

    #[test]
    fn top_k_one_and_seeds_are_deterministic() {
        let sampled = Sampling {
            do_sample: true,
            top_k: Some(1),
            seed: Some(7),
            ..greedy()
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            assert_eq!(
                choose(&mut [0.1, 0.5, 0.2], &sampled, &[], 0, &mut rng).0,
                1
            );
        }
        let free = Sampling {
            top_k: None,
            ..sampled
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..16)
                .map(|_| choose(&mut [0.0; 50], &free, &[], 0, &mut rng).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn minimum_length_and_ngram_blocking() {
        let mut rng = StdRng::seed_from_u64(0);
        let min = Sampling {
            min_new_tokens: 2,
            eos_token_ids: vec![0],
            ..greedy()
        };
        assert_eq!(choose(&mut [5.0, 1.0], &min, &[], 1, &mut rng).0, 1);
        assert_eq!(choose(&mut [5.0, 1.0], &min, &[], 2, &mut rng).0, 0);
        let ngram = Sampling {
            no_repeat_ngram_size: 2,
            ..greedy()
        };
        // history 1 2 1: "1 2" exists, so 2 cannot follow the last 1.
        assert_eq!(
            choose(&mut [0.0, 0.0, 9.0], &ngram, &[1, 2, 1], 2, &mut rng).0,
            0
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_set_above_p() {
        let nucleus = Sampling {
            do_sample: true,
            top_p: 0.5,
            ..greedy()
        };
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: only token 0 survives top_p = 0.5.
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let mut logits = [3.0, 2.0, 1.0, 0.0];
            assert_eq!(choose(&mut logits, &nucleus, &[], 0, &mut rng).0, 0);
        }
    }
}
