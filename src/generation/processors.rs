//! The logits processors and warpers of `generate` beyond the core ones in `sampling`, each as
//! `transformers` 4.51 computes it (`generation/logits_process.py`): sequence bias, the
//! exponential length penalty, suppressed tokens, and the min-p / typical / epsilon / eta
//! sampling warpers; and OpenAI's frequency and presence penalties. They read [`Processors`],
//! the part of a sequence's settings they need.

use crate::kernels::{log_softmax, softmax};

/// Settings of the optional processors (all off by default).
#[derive(Debug, Clone, Default)]
pub struct Processors {
    /// `sequence_bias`: a bias added to the last token of each sequence whose other tokens end
    /// the history (every step for one-token sequences).
    pub sequence_bias: Vec<(Vec<u32>, f32)>,
    /// `exponential_decay_length_penalty`: (start, factor) — after `start` new tokens, the
    /// end-of-sequence scores grow by |score| x (factor^(n - start) - 1).
    pub exponential_decay: Option<(usize, f32)>,
    /// `suppress_tokens`: never generated.
    pub suppress_tokens: Vec<u32>,
    /// `begin_suppress_tokens`: not generated first.
    pub begin_suppress_tokens: Vec<u32>,
    /// Whisper's timestamp rules (`return_timestamps`), after the suppressions.
    pub whisper_timestamps: Option<WhisperTimestamps>,
    /// Sampling warpers (0 / 1: off).
    pub min_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub epsilon_cutoff: Option<f32>,
    pub eta_cutoff: Option<f32>,
    /// `renormalize_logits`: log-softmax after every processor.
    pub renormalize: bool,
    /// OpenAI's `frequency_penalty` and `presence_penalty` (0: off).
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
}

fn ban(scores: &mut [f32], token: u32) {
    if let Some(l) = scores.get_mut(token as usize) {
        *l = f32::NEG_INFINITY;
    }
}

/// `SequenceBiasLogitsProcessor`.
pub fn sequence_bias(scores: &mut [f32], bias: &[(Vec<u32>, f32)], history: &[u32]) {
    for (sequence, value) in bias {
        if let Some((&last, before)) = sequence.split_last() {
            if history.ends_with(before) {
                if let Some(l) = scores.get_mut(last as usize) {
                    *l += value;
                }
            }
        }
    }
}

/// OpenAI's frequency and presence penalties: each token's logit goes down by
/// `count x frequency_penalty + (count > 0) x presence_penalty`, `count` being how often the
/// sequence has generated it so far (`generated`: the new tokens, not the prompt, as vLLM counts).
pub fn occurrence_penalties(scores: &mut [f32], p: &Processors, generated: &[u32]) {
    if p.frequency_penalty == 0.0 && p.presence_penalty == 0.0 {
        return;
    }
    let mut counts: Vec<u32> = generated.to_vec();
    counts.sort_unstable();
    for run in counts.chunk_by(|a, b| a == b) {
        if let Some(l) = scores.get_mut(run[0] as usize) {
            *l -= run.len() as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// `ExponentialDecayLengthPenalty`, `generated` new tokens so far.
pub fn exponential_decay(scores: &mut [f32], p: &Processors, eos: &[u32], generated: usize) {
    let Some((start, factor)) = p.exponential_decay else {
        return;
    };
    if generated > start {
        let boost = factor.powi((generated - start) as i32) - 1.0;
        for &id in eos {
            if let Some(l) = scores.get_mut(id as usize) {
                *l += l.abs() * boost;
            }
        }
    }
}

/// `SuppressTokensLogitsProcessor` and, at the first new token, `SuppressTokensAtBegin...`.
pub fn suppress(scores: &mut [f32], p: &Processors, first: bool) {
    for &id in &p.suppress_tokens {
        ban(scores, id);
    }
    if first {
        for &id in &p.begin_suppress_tokens {
            ban(scores, id);
        }
    }
}

/// `WhisperTimeStampLogitsProcessor`'s settings: timestamp tokens follow `<|notimestamps|>`.
#[derive(Debug, Clone, Copy)]
pub struct WhisperTimestamps {
    pub no_timestamps: u32,
    pub eos: u32,
    /// `max_initial_timestamp_index`: the latest timestamp the first token may be.
    pub max_initial_index: Option<u32>,
}

/// `WhisperTimeStampLogitsProcessor` on the tokens generated so far: no `<|notimestamps|>`;
/// timestamps in pairs (after a lone one, no text; after a pair, no timestamp) and never
/// decreasing; the first token a timestamp no later than the initial limit; and only a
/// timestamp when the timestamps' total probability beats every text token's.
pub fn whisper_timestamps(scores: &mut [f32], t: &WhisperTimestamps, generated: &[u32]) {
    let begin = t.no_timestamps as usize + 1;
    let n = scores.len();
    let ban = |scores: &mut [f32], range: std::ops::Range<usize>| {
        for l in &mut scores[range.start.min(n)..range.end.min(n)] {
            *l = f32::NEG_INFINITY;
        }
    };
    ban(
        scores,
        t.no_timestamps as usize..t.no_timestamps as usize + 1,
    );
    let is_timestamp = |id: &u32| *id as usize >= begin;
    let last_was_timestamp = generated.last().is_some_and(is_timestamp);
    let penultimate_was_timestamp =
        generated.len() < 2 || is_timestamp(&generated[generated.len() - 2]);
    if last_was_timestamp {
        if penultimate_was_timestamp {
            ban(scores, begin..n);
        } else {
            ban(scores, 0..t.eos as usize);
        }
    }
    if let Some(&last) = generated.iter().rev().find(|id| is_timestamp(id)) {
        let last = if last_was_timestamp && !penultimate_was_timestamp {
            last as usize
        } else {
            last as usize + 1
        };
        ban(scores, begin..last);
    }
    if generated.is_empty() {
        ban(scores, 0..begin);
        if let Some(index) = t.max_initial_index {
            ban(scores, begin + index as usize + 1..n);
        }
    }
    if begin < n {
        let logprobs = crate::kernels::log_softmax(scores);
        let (text, stamps) = logprobs.split_at(begin);
        let max_text = text.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let stamp_max = stamps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let stamp_total = if stamp_max == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            stamp_max
                + stamps
                    .iter()
                    .map(|l| (l - stamp_max).exp())
                    .sum::<f32>()
                    .ln()
        };
        if stamp_total > max_text {
            ban(scores, 0..begin);
        }
    }
}

/// The warpers that follow top-p when sampling: min-p, typical, epsilon and eta (each keeps at
/// least the best token).
pub fn warp(scores: &mut [f32], p: &Processors) {
    if let Some(min_p) = p.min_p {
        let probs = softmax(scores);
        let top = probs.iter().cloned().fold(0.0f32, f32::max);
        remove(scores, |i| probs[i] < min_p * top);
    }
    if let Some(mass) = p.typical_p.filter(|&m| m < 1.0) {
        typical(scores, mass);
    }
    if let Some(epsilon) = p.epsilon_cutoff.filter(|&e| e > 0.0 && e < 1.0) {
        let probs = softmax(scores);
        remove(scores, |i| probs[i] < epsilon);
    }
    if let Some(epsilon) = p.eta_cutoff.filter(|&e| e > 0.0 && e < 1.0) {
        let probs = softmax(scores);
        let entropy: f32 = probs
            .iter()
            .filter(|&&q| q > 0.0)
            .map(|&q| -q * q.ln())
            .sum();
        let eta = epsilon.min(epsilon.sqrt() * (-entropy).exp());
        remove(scores, |i| probs[i] < eta);
    }
}

/// `LogitNormalization` (`renormalize_logits`).
pub fn renormalize(scores: &mut [f32]) {
    let normalized = log_softmax(scores);
    scores.copy_from_slice(&normalized);
}

/// Sets to -inf the scores `drop` selects, except the best one (min_tokens_to_keep = 1).
fn remove(scores: &mut [f32], drop: impl Fn(usize) -> bool) {
    let best = first_max(scores);
    for (i, score) in scores.iter_mut().enumerate() {
        if i != best && drop(i) {
            *score = f32::NEG_INFINITY;
        }
    }
}

/// The index of the largest score, the first of equal ones (`torch.argmax`, `np.argmax`).
pub fn first_max(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in scores.iter().enumerate() {
        if l > scores[best] {
            best = i;
        }
    }
    best
}

/// `TypicalLogitsWarper`: keeps the tokens whose surprise is closest to the entropy until their
/// probabilities reach `mass`.
fn typical(scores: &mut [f32], mass: f32) {
    let normalized = log_softmax(scores);
    let entropy: f32 = normalized
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| -l * l.exp())
        .sum();
    let shifted: Vec<f32> = normalized.iter().map(|&l| (-l - entropy).abs()).collect();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| shifted[a].total_cmp(&shifted[b]));
    let sorted_probs = softmax(&order.iter().map(|&i| scores[i]).collect::<Vec<_>>());
    let mut cumulative = 0.0;
    let mut last = 0;
    for &p in &sorted_probs {
        cumulative += p;
        if cumulative < mass {
            last += 1;
        }
    }
    let last = last.min(order.len() - 1);
    let limit = shifted[order[last]];
    for (rank, &i) in order.iter().enumerate() {
        if rank > 0 && shifted[i] > limit {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn sequence_bias_applies_where_the_history_ends_with_the_prefix() {
        let mut scores = [0.0, 0.0, 0.0];
        let bias = vec![(vec![1], -5.0), (vec![7, 2], 3.0), (vec![8, 0], 9.0)];
        sequence_bias(&mut scores, &bias, &[4, 7]);
        assert_eq!(scores, [0.0, -5.0, 3.0]);
    }

    #[test]
    fn whisper_timestamps_come_in_pairs_and_never_go_back() {
        // text 0..5, eos 5, <|notimestamps|> 6, timestamps 7..12
        let t = WhisperTimestamps {
            no_timestamps: 6,
            eos: 5,
            max_initial_index: Some(2),
        };
        let banned = |generated: &[u32], logits: [f32; 12]| -> Vec<usize> {
            let mut scores = logits.to_vec();
            whisper_timestamps(&mut scores, &t, generated);
            (0..12)
                .filter(|&i| scores[i] == f32::NEG_INFINITY)
                .collect()
        };
        let flat = [0.0; 12];
        // first token: a timestamp no later than index 2 (ids 7..=9)
        assert_eq!(banned(&[], flat), vec![0, 1, 2, 3, 4, 5, 6, 10, 11]);
        // the first timestamp counts as a pair: text must follow
        assert_eq!(banned(&[9], flat), vec![6, 7, 8, 9, 10, 11]);
        // after text then a lone timestamp: no text below eos, no earlier timestamp; and with
        // the timestamps' total above eos, eos goes too
        assert_eq!(banned(&[1, 9], flat), vec![0, 1, 2, 3, 4, 5, 6, 7, 8]);
        // after a pair: no timestamp
        assert_eq!(banned(&[1, 9, 9], flat), vec![6, 7, 8, 9, 10, 11]);
        // after text: timestamps after the last one only; text stays while it is likelier
        let text_likely = [5.0, 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.];
        assert_eq!(banned(&[9, 1], text_likely), vec![6, 7, 8, 9]);
        // the timestamps' total probability beats every text token: text is banned
        let stamps_likely = [0., 0., 0., 0., 0., 0., 0., 3., 3., 3., 3., 3.];
        assert_eq!(
            banned(&[9, 1], stamps_likely),
            vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        );
    }

    #[test]
    fn suppression_and_the_length_penalty() {
        let p = Processors {
            suppress_tokens: vec![0],
            begin_suppress_tokens: vec![1],
            exponential_decay: Some((2, 1.5)),
            ..Default::default()
        };
        let mut first = [1.0, 1.0, 1.0];
        suppress(&mut first, &p, true);
        assert_eq!(first, [NEG, NEG, 1.0]);
        let mut later = [1.0, 1.0, 1.0];
        suppress(&mut later, &p, false);
        assert_eq!(later, [NEG, 1.0, 1.0]);
        // 4 new tokens, start 2: eos grows by |s| * (1.5² - 1).
        let mut scores = [-2.0, 0.0, 4.0];
        exponential_decay(&mut scores, &p, &[0, 2], 4);
        assert_eq!(scores, [-2.0 + 2.0 * 1.25, 0.0, 4.0 + 4.0 * 1.25]);
        let mut early = [-2.0, 0.0, 4.0];
        exponential_decay(&mut early, &p, &[0, 2], 2);
        assert_eq!(early, [-2.0, 0.0, 4.0]);
    }

    #[test]
    fn warpers_keep_the_likely_tokens() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let logits = [3.0, 2.0, 1.0, 0.0];
        let warped = |p: Processors| {
            let mut s = logits;
            warp(&mut s, &p);
            s.iter().map(|l| l.is_finite()).collect::<Vec<_>>()
        };
        // min_p 0.3: keep p >= 0.3 * 0.64.
        let kept = warped(Processors {
            min_p: Some(0.3),
            ..Default::default()
        });
        assert_eq!(kept, [true, true, false, false]);
        let kept = warped(Processors {
            epsilon_cutoff: Some(0.05),
            ..Default::default()
        });
        assert_eq!(kept, [true, true, true, false]);
        // A cutoff above every probability still keeps the best token.
        let kept = warped(Processors {
            epsilon_cutoff: Some(0.9),
            ..Default::default()
        });
        assert_eq!(kept, [true, false, false, false]);
        let kept = warped(Processors {
            typical_p: Some(0.5),
            ..Default::default()
        });
        assert!(kept.iter().any(|&k| k) && !kept[3], "{kept:?}");
        let kept = warped(Processors {
            eta_cutoff: Some(0.5),
            ..Default::default()
        });
        assert!(kept[0] && !kept[3], "{kept:?}");
    }

    #[test]
    fn occurrence_penalties_count_the_generated_tokens() {
        let p = Processors {
            frequency_penalty: 0.5,
            presence_penalty: 1.0,
            ..Default::default()
        };
        let mut scores = [0.0, 0.0, 0.0, 0.0];
        occurrence_penalties(&mut scores, &p, &[2, 0, 2, 2, 9]);
        assert_eq!(scores, [-1.5, 0.0, -2.5, 0.0]);
        let mut untouched = [1.0, 2.0];
        occurrence_penalties(&mut untouched, &Processors::default(), &[0, 1]);
        assert_eq!(untouched, [1.0, 2.0]);
    }

    #[test]
    fn renormalized_scores_are_log_probabilities() {
        let mut scores = [1.0, 2.0, 3.0];
        renormalize(&mut scores);
        let total: f32 = scores.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
