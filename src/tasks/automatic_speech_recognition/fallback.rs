//! Whisper's temperature fallback (`generate_with_fallback` in transformers 4.51.3, after
//! openai/whisper): a window is decoded at the first of `generate_kwargs`' temperatures; an
//! answer whose tokens compress too well (`compression_ratio_threshold`: zlib over the token
//! ids, a sign of a repetition loop) or whose average log-probability is too low
//! (`logprob_threshold`, over the generated tokens and the end token) is decoded again at the
//! next temperature, and the last one's answer stands. A window whose answer is that unlikely
//! and whose no-speech probability (`<|nospeech|>` after the start token) passes
//! `no_speech_threshold` is skipped as silence: no text, the seek moves past it.
//!
//! Where transformers 4.51.3 fails, ours answers: `no_speech_threshold` without
//! `logprob_threshold` (an unbound local there) skips on the no-speech probability alone, as
//! openai/whisper does; the no-speech check of a multilingual model or of a prompt ending in
//! `<|notimestamps|>` (a TypeError inside `generate` there) is decided as above.

use std::io::Write;

use candle_core::Tensor;
use tokio::sync::mpsc;

use super::params::{DecodeOptions, Thresholds};
use super::until::Until;
use super::WhisperRecognition;
use crate::error::ServerError;
use crate::generation::job::Event;
use crate::models::whisper::KeptEncoding;

/// A window's decoding after the fallback: its generated tokens (the end token included),
/// whether the window is skipped as silence, and the temperature of the answer.
pub(super) struct Pass {
    pub generated: Vec<u32>,
    pub skip: bool,
    pub temperature: f64,
}

impl WhisperRecognition {
    /// Decodes one window (`input`, after `prompt`, whose start token is at `start_at`: after
    /// the previous tokens it is conditioned on) along the temperatures as
    /// `generate_with_fallback` does; `encoding` keeps the window's encoding for the no-speech
    /// probability.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn window_pass(
        &self,
        prompt: &[u32],
        start_at: usize,
        input: Tensor,
        encoding: Option<&KeptEncoding>,
        options: &DecodeOptions,
        timestamp_rules: bool,
        until: Until,
    ) -> Result<Pass, ServerError> {
        let thresholds = options.thresholds;
        let temperatures: &[f64] = match options.temperatures.as_slice() {
            [] => &[0.0],
            // without thresholds nothing falls back: the first temperature decodes
            listed if !thresholds.any() => &listed[..1],
            listed => listed,
        };
        let mut no_speech_prob = None;
        for (i, &temperature) in temperatures.iter().enumerate() {
            let sampling = self.sampling(prompt.len(), options, timestamp_rules, temperature)?;
            if sampling.max_new_tokens == 0 {
                return Ok(Pass {
                    generated: Vec::new(),
                    skip: false,
                    temperature,
                });
            }
            let receiver = self.generator.submit_with_source(
                prompt.to_vec(),
                Some(input.clone()),
                sampling,
            )?;
            let (generated, logprob_sum) = collect_scored(receiver, until).await?;
            if !thresholds.any() {
                return Ok(Pass {
                    generated,
                    skip: false,
                    temperature,
                });
            }
            let avg_logprob = logprob_sum.map(|sum| sum / generated.len().max(1) as f32);
            if thresholds.no_speech.is_some() && no_speech_prob.is_none() {
                no_speech_prob = Some(self.no_speech_prob(encoding, &prompt[..=start_at]).await?);
            }
            let ratio = compression_ratio(&generated, self.model.config().vocab_size);
            let (needs_fallback, skip) = verdict(&thresholds, ratio, avg_logprob, no_speech_prob);
            tracing::debug!(
                temperature,
                ratio,
                ?avg_logprob,
                ?no_speech_prob,
                needs_fallback,
                skip,
                "speech recognition: a window's fallback check"
            );
            if !needs_fallback || i + 1 == temperatures.len() {
                return Ok(Pass {
                    generated,
                    skip,
                    temperature,
                });
            }
        }
        Err(ServerError::Internal(
            "a window decoded at no temperature".into(),
        ))
    }

    /// The probability of `<|nospeech|>` after the start token (the model's own logits;
    /// `context`: the prompt up to that token).
    async fn no_speech_prob(
        &self,
        encoding: Option<&KeptEncoding>,
        context: &[u32],
    ) -> Result<f32, ServerError> {
        let encoding = encoding.ok_or_else(|| {
            ServerError::Internal("the no-speech check without the window's encoding".into())
        })?;
        let no_speech = self.kinds.timestamp_begin as usize - 2;
        let logits = self
            .model
            .logits_after(encoding, context)
            .map_err(|e| ServerError::Internal(format!("no-speech probability: {e:#}")))?;
        let probs = crate::kernels::softmax(&logits);
        probs.get(no_speech).copied().ok_or_else(|| {
            ServerError::Internal(format!("no <|nospeech|> token ({no_speech}) in the logits"))
        })
    }
}

/// `_need_fallback`: (fall back to the next temperature, skip the window). The log-probability
/// and no-speech comparisons in f32, as torch makes them.
fn verdict(
    thresholds: &Thresholds,
    compression_ratio: f64,
    avg_logprob: Option<f32>,
    no_speech_prob: Option<f32>,
) -> (bool, bool) {
    let mut needs_fallback = thresholds
        .compression_ratio
        .is_some_and(|limit| compression_ratio > limit);
    let unlikely = match (thresholds.logprob, avg_logprob) {
        (Some(limit), Some(avg)) => avg < limit as f32,
        _ => false,
    };
    needs_fallback |= unlikely;
    if let (Some(limit), Some(prob)) = (thresholds.no_speech, no_speech_prob) {
        // (without a log-probability threshold, openai/whisper's rule: no speech alone)
        if (unlikely || thresholds.logprob.is_none()) && prob > limit as f32 {
            return (false, true);
        }
    }
    (needs_fallback, false)
}

/// `_retrieve_compression_ratio`: the tokens as little-endian integers of the fewest bytes the
/// vocabulary needs, over their zlib compression (level 6, as Python's `zlib.compress`).
pub(super) fn compression_ratio(tokens: &[u32], vocab_size: usize) -> f64 {
    let width = ((vocab_size as f64).log2() / 8.0) as usize + 1;
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|t| t.to_le_bytes().into_iter().take(width))
        .collect();
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    let compressed = encoder
        .write_all(&bytes)
        .and_then(|()| encoder.finish())
        .map_or(1, |c| c.len());
    bytes.len() as f64 / compressed as f64
}

/// A job's tokens until it finishes (its end token included), and the sum of their
/// log-probabilities (none for a beam search's answer).
pub(super) async fn collect_scored(
    mut receiver: mpsc::UnboundedReceiver<Event>,
    until: Until,
) -> Result<(Vec<u32>, Option<f32>), ServerError> {
    let gather = async {
        let (mut ids, mut sum) = (Vec::new(), 0f32);
        while let Some(event) = receiver.recv().await {
            match event {
                Event::Token {
                    id,
                    logprob,
                    finish,
                    ..
                } => {
                    ids.push(id);
                    sum += logprob;
                    if finish.is_some() {
                        return Ok((ids, Some(sum)));
                    }
                }
                Event::Sequences(mut sequences) => return Ok((sequences.swap_remove(0), None)),
                Event::Failed(error) => return Err(error.into()),
                Event::Prompt(_) => {}
            }
        }
        Err(ServerError::Internal(
            "the generation scheduler dropped the sequence".into(),
        ))
    };
    tokio::time::timeout(until.remaining(), gather)
        .await
        .map_err(|_| until.expired())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_ratios_are_pythons() {
        // Python: len(b) / len(zlib.compress(b)) with b the 2-byte little-endian ids (51865
        // tokens need two bytes): 18 / 16
        let ratio = compression_ratio(&[50364, 400, 400, 400, 400, 400, 400, 400, 50257], 51865);
        let want = 1.125;
        assert!((ratio - want).abs() < 1e-12, "{ratio} vs {want}");
    }

    /// Every answer the fallback goldens checked (models/make_asr_fallback_goldens.py): the
    /// same ratio as Python's zlib gave.
    #[test]
    fn compression_ratios_match_the_goldens() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/golden/automatic-speech-recognition/whisper-fallback.json"
        );
        let records: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut checked = 0;
        for decision in records
            .iter()
            .flat_map(|r| r["decisions"].as_array().unwrap())
        {
            let tokens: Vec<u32> = decision["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            let want = decision["compression_ratio"].as_f64().unwrap();
            assert_eq!(compression_ratio(&tokens, 1909), want, "{tokens:?}");
            checked += 1;
        }
        assert!(checked >= 10, "{checked}");
    }

    #[test]
    fn verdicts_follow_transformers() {
        let t = Thresholds {
            compression_ratio: Some(2.4),
            logprob: Some(-1.0),
            no_speech: Some(0.6),
        };
        assert_eq!(verdict(&t, 1.0, Some(-0.5), Some(0.9)), (false, false));
        assert_eq!(verdict(&t, 3.0, Some(-0.5), Some(0.9)), (true, false));
        assert_eq!(verdict(&t, 1.0, Some(-1.5), Some(0.1)), (true, false));
        // unlikely and probably silence: skipped
        assert_eq!(verdict(&t, 3.0, Some(-1.5), Some(0.9)), (false, true));
        let no_logprob = Thresholds { logprob: None, ..t };
        assert_eq!(
            verdict(&no_logprob, 1.0, Some(-0.1), Some(0.9)),
            (false, true)
        );
    }
}
