//! Choosing the next token as `transformers`' `generate` does: the logits processors in its
//! order (repetition penalty, n-gram blocking, bad words, minimum length, forced tokens, then
//! temperature, top-k and top-p when sampling), greedy or seeded sampling. [`Sampling`] is one
//! sequence's validated settings (see `params`); the scheduler and beam search apply them.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;

use super::constrained::CompiledGrammar;

use super::processors::{self, Processors};
use crate::kernels::{log_softmax, softmax};

/// When beam search stops (`generate`'s `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// `false`: when no running beam can beat the worst finished one at its current length.
    Heuristic,
    /// `true`: as soon as `num_beams` hypotheses are finished.
    Always,
    /// `"never"`: when no running beam could beat them even at the longest length allowed.
    Never,
}

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
    /// Beam search when above 1: the sequence's answer is `Event::Sequences`.
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    /// The optional processors (sequence bias, suppressed tokens, more warpers).
    pub processors: Processors,
    /// `max_time`: seconds after which the sequence ends (not beam searches).
    pub max_time: Option<f32>,
    /// The model's log-probabilities to send with each token (not beam searches): the chosen
    /// token's and this many most likely alternatives'. None: none.
    pub logprobs: Option<usize>,
    /// The grammar the text must follow (constrained decoding; single sequences only).
    pub grammar: Option<Arc<CompiledGrammar>>,
    /// Score the prompt's tokens first (`Event::Prompt`; TGI's `decoder_input_details`).
    pub prompt_logprobs: bool,
    /// A sampled token's `Event::Token` log-probability with the temperature undone: under the
    /// processed logits (top-k and top-p cuts kept) at temperature 1, as Whisper's fallback
    /// averages them (`_retrieve_avg_logprobs` rescales the scores by the temperature).
    pub untempered_logprob: bool,
}

impl Sampling {
    /// Greedy decoding of up to `max_new_tokens`, every processor off.
    pub fn greedy(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> Sampling {
        Sampling {
            max_new_tokens,
            min_new_tokens: 0,
            no_repeat_ngram_size: 0,
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: None,
            eos_token_ids,
            bad_words: vec![],
            forced_bos: None,
            forced_eos: vec![],
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            processors: Processors::default(),
            max_time: None,
            logprobs: None,
            grammar: None,
            prompt_logprobs: false,
            untempered_logprob: false,
        }
    }
}

/// `generate`'s logits processors, in `transformers`' order: sequence bias, repetition penalty,
/// n-gram blocking, bad words, the minimum length, forced first and last tokens, the length
/// penalty, suppressed tokens, then (sampling) temperature, top-k, top-p and the other warpers,
/// and renormalization. `scores` are logits, or beam search's log-probabilities; `history`: the
/// context and the `generated` tokens so far.
pub fn process(scores: &mut [f32], sampling: &Sampling, history: &[u32], generated: usize) {
    let p = &sampling.processors;
    processors::sequence_bias(scores, &p.sequence_bias, history);
    penalize(scores, sampling, history, generated);
    processors::occurrence_penalties(
        scores,
        p,
        &history[history.len().saturating_sub(generated)..],
    );
    processors::exponential_decay(scores, p, &sampling.eos_token_ids, generated);
    // The first new token is where `begin_suppress_tokens` apply (one later when a forced
    // first token follows an encoder–decoder's start token, as transformers counts).
    let context = history.len().saturating_sub(generated);
    let begin = usize::from(context == 1 && sampling.forced_bos.is_some());
    processors::suppress(scores, p, generated == begin);
    if let Some(timestamps) = &p.whisper_timestamps {
        processors::whisper_timestamps(scores, timestamps, &history[context..]);
    }
    if sampling.do_sample {
        warp(scores, sampling);
        processors::warp(scores, p);
    }
    if p.renormalize {
        processors::renormalize(scores);
    }
}

/// Repetition penalty, n-gram blocking, bad words, the minimum length, forced tokens.
fn penalize(scores: &mut [f32], sampling: &Sampling, history: &[u32], generated: usize) {
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
}

/// Temperature, top-k and top-p (sampling only).
fn warp(scores: &mut [f32], sampling: &Sampling) {
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

/// The next token and its log-probability under the processed distribution (see [`process`]).
pub fn choose(
    logits: &mut [f32],
    sampling: &Sampling,
    history: &[u32],
    generated: usize,
    rng: &mut StdRng,
) -> (u32, f32) {
    process(logits, sampling, history, generated);
    if !sampling.do_sample {
        return greedy_choice(logits);
    }
    let probs = softmax(logits);
    let mut target: f32 = rng.random::<f32>();
    let mut id = probs.len() - 1;
    for (i, &p) in probs.iter().enumerate() {
        if target < p {
            id = i;
            break;
        }
        target -= p;
    }
    if sampling.untempered_logprob {
        let untempered: Vec<f32> = logits.iter().map(|l| l * sampling.temperature).collect();
        return (id as u32, log_softmax(&untempered)[id]);
    }
    (id as u32, probs[id].max(f32::MIN_POSITIVE).ln())
}

/// The first maximum, as torch.argmax, and its log-probability: the maximum's own term of the
/// softmax is e^0, so it is -ln Σ e^(l - max), summed per lane (no probability vector: this
/// runs for every sequence at every step, over the whole vocabulary).
fn greedy_choice(logits: &[f32]) -> (u32, f32) {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    let max = logits[best];
    if max == f32::NEG_INFINITY {
        // Everything banned: no distribution; the floor `choose` gives any zero probability.
        return (best as u32, f32::MIN_POSITIVE.ln());
    }
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (sum, &l) in lanes.iter_mut().zip(chunk) {
            *sum += crate::kernels::exp(l - max);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&l| crate::kernels::exp(l - max))
        .sum();
    let sum = lanes.iter().sum::<f32>() + tail;
    (best as u32, -sum.ln().max(0.0))
}

/// The model's own log-probabilities at one step (see [`Sampling::logprobs`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's.
    pub logprob: f32,
    /// The most likely tokens and theirs, best first.
    pub top: Vec<(u32, f32)>,
}

/// The model's log-probabilities for one step (log-softmax of its raw logits, before any
/// processor): the `chosen` token's and the `top` most likely tokens', best first.
pub fn model_logprobs(logits: &[f32], chosen: u32, top: usize) -> TokenLogprobs {
    let logprobs = log_softmax(logits);
    let mut order: Vec<u32> = (0..logprobs.len() as u32).collect();
    let by_logprob = |a: &u32, b: &u32| logprobs[*b as usize].total_cmp(&logprobs[*a as usize]);
    let top = top.min(order.len());
    if top > 0 && top < order.len() {
        order.select_nth_unstable_by(top - 1, by_logprob);
    }
    order.truncate(top);
    order.sort_by(by_logprob);
    TokenLogprobs {
        logprob: logprobs
            .get(chosen as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY),
        top: order
            .into_iter()
            .map(|id| (id, logprobs[id as usize]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn greedy() -> Sampling {
        Sampling::greedy(1, vec![])
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_its_log_softmax() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32) / 7.0 - 5.0)
            .collect();
        let (id, logprob) = greedy_choice(&logits);
        let first_max = logits
            .iter()
            .position(|&l| l == logits.iter().copied().fold(f32::MIN, f32::max))
            .unwrap();
        assert_eq!(id as usize, first_max);
        let want = log_softmax(&logits)[first_max];
        assert!((logprob - want).abs() < 1e-5, "{logprob} vs {want}");
        let banned = [f32::NEG_INFINITY; 4];
        assert_eq!(greedy_choice(&banned).0, 0);
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
    fn model_logprobs_are_the_raw_log_softmax_best_first() {
        let logits = [0.0, 2.0, 1.0, 2.0f32];
        let got = model_logprobs(&logits, 2, 3);
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((got.logprob - (1.0 - total.ln())).abs() < 1e-5);
        let ids: Vec<u32> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[2], 2);
        assert!(got.top[0].1 >= got.top[1].1 && got.top[1].1 >= got.top[2].1);
        assert!(model_logprobs(&logits, 0, 0).top.is_empty());
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
