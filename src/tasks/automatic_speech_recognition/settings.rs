//! What a window's decoding runs with: whether timestamps are predicted, the alignment heads of
//! word timestamps, the decoder prompt conditioned on the previous segments, and the greedy,
//! beam or sampling settings with Whisper's logits processors.

use super::params::DecodeOptions;
use super::windows::History;
use super::WhisperRecognition;
use crate::error::ServerError;
use crate::generation::processors::WhisperTimestamps;
use crate::generation::sampling::Sampling;

impl WhisperRecognition {
    /// Whether `generate` predicts timestamps: the pipeline's own `return_timestamps` overrides
    /// the one in `generate_kwargs`, and is passed to `generate` only when true; otherwise the
    /// generation config decides, and long-form decoding needs timestamps.
    pub(super) fn timestamps(
        &self,
        options: &DecodeOptions,
        long_form: bool,
    ) -> Result<bool, ServerError> {
        let asked = match options.return_timestamps.or(options.generate_timestamps) {
            _ if options.word_timestamps() => Some(true),
            Some(true) => Some(true),
            _ => self.prompts.generation.return_timestamps,
        };
        Ok(match (long_form, asked) {
            (true, Some(false)) => return Err(ServerError::bad_request("You have passed more than 3000 mel input features (> 30 seconds) which automatically enables long-form generation which requires the model to predict timestamp tokens. Please either pass `return_timestamps=True` or make sure to pass no more than 3000 mel input features.")),
            (true, _) => true,
            (false, asked) => asked.unwrap_or(false),
        })
    }

    /// The cross-attention heads that word timestamps read (none without them).
    pub(super) fn alignment_heads(
        &self,
        words: bool,
    ) -> Result<Option<Vec<(usize, usize)>>, ServerError> {
        match (&self.prompts.generation.alignment_heads, words) {
            (_, false) => Ok(None),
            (Some(heads), true) => Ok(Some(heads.clone())),
            (None, true) => Err(ServerError::bad_request("Model generation config has no `alignment_heads`, token-level timestamps not available. See https://gist.github.com/hollance/42e32852f24243b748ae6bc1f985b13a on how to add this property to the generation config.")),
        }
    }

    /// A window's decoder prompt led by the segments before it (`condition_on_prev_tokens`).
    pub(super) fn conditioned_prompt(&self, history: &mut History, prompt: &[u32]) -> Vec<u32> {
        history.conditioned_prompt(
            prompt,
            self.prompts.prev_sot(),
            (self.model.config().max_target_positions / 2).saturating_sub(1),
            self.kinds.timestamp_begin,
        )
    }

    /// Greedy decoding (or beam search), or sampling at `temperature` above 0, after a prompt
    /// of `prompt_len` tokens, with Whisper's processors.
    pub(super) fn sampling(
        &self,
        prompt_len: usize,
        options: &DecodeOptions,
        timestamps: bool,
        temperature: f64,
    ) -> Result<Sampling, ServerError> {
        let positions = self.model.config().max_target_positions;
        let max_new_tokens = match options.max_new_tokens {
            Some(n) => {
                if n + prompt_len > positions {
                    return Err(ServerError::bad_request(format!(
                        "The length of `decoder_input_ids`, including special start tokens, prompt tokens, and previous tokens, is {prompt_len},  and `max_new_tokens` is {n}. Thus, the combined length of `decoder_input_ids` and `max_new_tokens` is: {}. This exceeds the `max_target_positions` of the Whisper model: {positions}. You should either reduce the length of your prompt, or reduce the value of `max_new_tokens`, so that their combined length is less than {positions}.",
                        n + prompt_len
                    )));
                }
                n
            }
            None => self
                .prompts
                .generation
                .max_length
                .unwrap_or(positions)
                .min(positions)
                .saturating_sub(prompt_len),
        };
        let mut sampling = Sampling::greedy(max_new_tokens, self.eos.clone());
        sampling.num_beams = options.num_beams.unwrap_or(1);
        if temperature > 0.0 {
            // (`generate_with_fallback` samples with one beam)
            let g = &self.prompts.generation;
            sampling.do_sample = true;
            sampling.num_beams = 1;
            sampling.temperature = temperature as f32;
            sampling.top_k = Some(options.top_k.or(g.top_k).unwrap_or(50)).filter(|&k| k > 0);
            sampling.top_p = g.top_p.unwrap_or(1.0);
            sampling.untempered_logprob = options.thresholds.logprob.is_some();
        }
        sampling.processors.suppress_tokens = self.prompts.generation.suppress_tokens.clone();
        sampling.processors.begin_suppress_tokens =
            self.prompts.generation.begin_suppress_tokens.clone();
        if timestamps {
            sampling.processors.whisper_timestamps = Some(WhisperTimestamps {
                no_timestamps: self.kinds.timestamp_begin - 1,
                eos: self
                    .eos
                    .first()
                    .copied()
                    .unwrap_or(self.prompts.decoder_start),
                max_initial_index: self.prompts.generation.max_initial_timestamp_index,
            });
        }
        Ok(sampling)
    }
}
