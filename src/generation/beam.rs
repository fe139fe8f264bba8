//! Beam search, step for step as `transformers` 4.51's `_beam_search` (and beam sampling with
//! `do_sample`): each step takes the `num_beams` running hypotheses' log-probabilities (after the
//! logits processors), keeps the best `max(2, 1 + eos ids) * num_beams` continuations, files
//! those among the top `num_beams` that end (an end-of-sequence token or the length limit) as
//! finished hypotheses scored `sum of log-probs / generated length ^ length_penalty`, and runs
//! on with the best `num_beams` that do not end. `early_stopping` decides when the search stops.
//!
//! The beams of a search are ordinary sequences of the generation scheduler's step, so several
//! searches (and greedy or sampled sequences) share forward passes. A beam's cache is its
//! parent's, cloned: the cached tensors are shared until the next step appends to them.

use rand::rngs::StdRng;
use rand::Rng;

use super::job::Job;
use super::sampling::{process, EarlyStopping};
use crate::kernels::{log_softmax, softmax};
use crate::models::StepInput;

/// A running hypothesis.
struct Beam<C> {
    cache: C,
    /// Tokens to feed at the next step (the prompt first, then the last chosen token).
    feed: Vec<u32>,
    /// The context and the generated tokens, as the logits processors see them.
    history: Vec<u32>,
    generated: Vec<u32>,
    /// Sum of the chosen tokens' processed log-probabilities.
    score: f32,
}

/// One continuation considered at a step.
struct Candidate {
    /// Index of the running beam it extends.
    parent: usize,
    token: u32,
    score: f32,
    /// It ends here: an end-of-sequence token, or the length limit.
    ends: bool,
}

pub(super) struct BeamSearch<C> {
    pub(super) job: Job,
    /// Before the first step, one beam stands for all `num_beams` (they are the same prompt).
    running: Vec<Beam<C>>,
    /// (length-penalised score, generated tokens), best first, at most `num_beams`.
    finished: Vec<(f32, Vec<u32>)>,
    rng: StdRng,
}

/// Scores of hypotheses that may not be picked, as `transformers` masks them.
const MASKED: f32 = -1.0e9;

impl<C: Clone> BeamSearch<C> {
    pub(super) fn new(job: Job, cache: C, context: Vec<u32>, rng: StdRng) -> Self {
        let feed = job.prompt.clone();
        BeamSearch {
            job,
            running: vec![Beam {
                cache,
                feed,
                history: context,
                generated: Vec::new(),
                score: 0.0,
            }],
            finished: Vec::new(),
            rng,
        }
    }

    /// Tokens computed so far, for the log when a client leaves.
    pub(super) fn generated(&self) -> usize {
        self.running.first().map_or(0, |b| b.generated.len())
    }

    /// The running beams' parts in the next step, in the order [`Self::advance`] takes rows.
    pub(super) fn inputs(&mut self) -> impl Iterator<Item = StepInput<'_, C>> {
        self.running.iter_mut().map(|b| StepInput {
            tokens: &b.feed,
            cache: &mut b.cache,
        })
    }

    pub(super) fn width(&self) -> usize {
        self.running.len()
    }

    /// Takes one logits row per running beam; returns the finished hypotheses' generated
    /// tokens, best first, when the search is over.
    pub(super) fn advance(&mut self, rows: Vec<Vec<f32>>) -> Option<Vec<Vec<u32>>> {
        let sampling = &self.job.sampling;
        let num_beams = sampling.num_beams;
        let vocab = rows.first().map_or(0, Vec::len);
        let generated = self.generated();
        // Every beam's processed log-probabilities plus its score, one flat row as generate's.
        let mut scores = Vec::with_capacity(num_beams * vocab);
        for (beam, logits) in self.running.iter().zip(&rows) {
            let mut log_probs = log_softmax(logits);
            process(&mut log_probs, sampling, &beam.history, generated);
            scores.extend(log_probs.iter().map(|&l| l + beam.score));
        }
        if self.running.len() == 1 && num_beams > 1 && generated == 0 {
            // The first step: the other beams are copies of the first scored -1e9, so only the
            // first beam's continuations win (unless the vocabulary is tiny).
            let first = scores.clone();
            for _ in 1..num_beams {
                scores.extend(first.iter().map(|&s| s + MASKED));
            }
        }
        let keep = (2.max(1 + sampling.eos_token_ids.len()) * num_beams).min(scores.len());
        let picked = if sampling.do_sample {
            sample_without_replacement(&scores, keep, &mut self.rng)
        } else {
            top_k(&scores, keep)
        };
        let ends_at_length = generated + 1 >= sampling.max_new_tokens;
        let candidates: Vec<Candidate> = picked
            .into_iter()
            .map(|index| {
                let token = (index % vocab) as u32;
                Candidate {
                    // (the first step's virtual beams all extend the one real beam)
                    parent: (index / vocab).min(self.running.len() - 1),
                    token,
                    score: scores[index],
                    ends: ends_at_length || sampling.eos_token_ids.contains(&token),
                }
            })
            .collect();

        // Only the top `num_beams` continuations may become finished hypotheses; none may once
        // `num_beams` are finished and early_stopping is true.
        let full = self.finished.len() == num_beams;
        if !(full && sampling.early_stopping == EarlyStopping::Always) {
            let length = (generated + 1) as f32;
            for c in candidates.iter().take(num_beams).filter(|c| c.ends) {
                let score = c.score / length.powf(sampling.length_penalty);
                let at = self.finished.partition_point(|(s, _)| *s >= score);
                if at < num_beams {
                    let mut tokens = self.running[c.parent].generated.clone();
                    tokens.push(c.token);
                    self.finished.insert(at, (score, tokens));
                    self.finished.truncate(num_beams);
                }
            }
        }

        // The best continuations that do not end run on (best first).
        let mut ranked: Vec<&Candidate> = candidates.iter().filter(|c| !c.ends).collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        let next: Vec<Beam<C>> = ranked
            .into_iter()
            .take(num_beams)
            .map(|c| {
                let parent = &self.running[c.parent];
                let mut history = parent.history.clone();
                history.push(c.token);
                let mut generated = parent.generated.clone();
                generated.push(c.token);
                Beam {
                    cache: parent.cache.clone(),
                    feed: vec![c.token],
                    history,
                    generated,
                    score: c.score,
                }
            })
            .collect();

        // generate's stopping rule: every continuation ended, or no running beam can improve on
        // the finished ones, or (early_stopping true) `num_beams` are finished.
        let full = self.finished.len() == num_beams;
        let best_length = match sampling.early_stopping {
            EarlyStopping::Never if sampling.length_penalty > 0.0 => sampling.max_new_tokens,
            _ => generated + 1,
        } as f32;
        let improvable = match (next.first(), self.finished.last()) {
            (Some(best), Some((worst, _))) if full => {
                best.score / best_length.powf(sampling.length_penalty) > *worst
            }
            (Some(_), _) => true,
            (None, _) => false,
        };
        let open = !(full && sampling.early_stopping == EarlyStopping::Always);
        if candidates.iter().all(|c| c.ends) || !improvable || !open {
            return Some(
                std::mem::take(&mut self.finished)
                    .into_iter()
                    .map(|(_, tokens)| tokens)
                    .collect(),
            );
        }
        self.running = next;
        None
    }
}

/// Indices of the `k` largest scores, largest first (the lower index first among equals).
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let by_score = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, by_score);
        order.truncate(k);
    }
    order.sort_by(by_score);
    order
}

/// `k` indices drawn in turn from softmax(scores) without replacement, as torch.multinomial
/// draws them; once no probability is left, the best remaining scores.
fn sample_without_replacement(scores: &[f32], k: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut probs = softmax(scores);
    let mut picked = Vec::with_capacity(k);
    while picked.len() < k {
        let total: f32 = probs.iter().sum();
        let index = if total > 0.0 {
            let mut target = rng.random::<f32>() * total;
            let mut pick = None;
            for (i, &p) in probs.iter().enumerate() {
                if p > 0.0 {
                    pick = Some(i);
                    if target < p {
                        break;
                    }
                    target -= p;
                }
            }
            pick.expect("some probability is left")
        } else {
            // The best score not drawn yet (the first among equals).
            (0..scores.len())
                .filter(|i| !picked.contains(i))
                .fold(None, |best: Option<usize>, i| match best {
                    Some(b) if scores[b] >= scores[i] => Some(b),
                    _ => Some(i),
                })
                .expect("k is at most the number of scores")
        };
        probs[index] = 0.0;
        picked.push(index);
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_score_then_index() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9, -1.0], 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[0.1, 0.2], 5), vec![1, 0]);
    }

    #[test]
    fn sampling_without_replacement_draws_distinct_indices() {
        use rand::SeedableRng;
        let mut rng = StdRng::seed_from_u64(5);
        let picked = sample_without_replacement(&[0.0, 1.0, f32::NEG_INFINITY, 2.0], 4, &mut rng);
        let mut sorted = picked.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        // The impossible index comes last.
        assert_eq!(picked[3], 2);
    }
}
