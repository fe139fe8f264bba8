//! `automatic-speech-recognition` with Whisper, as the DLC's pipeline runs it: the audio decoded
//! and resampled as `ffmpeg_read` does, log-mel features of one 30 s window, then `generate`'s
//! short-form decoding — the first decoder tokens (start of transcript, language, task, no
//! timestamps) built as `WhisperGenerationMixin._retrieve_init_tokens` builds them, the
//! language detected from the start token's logits when none is given to a multilingual model,
//! greedy decoding with `suppress_tokens` and `begin_suppress_tokens` — and the text decoded
//! without special tokens. Requests run on the generation scheduler, so concurrent
//! transcriptions share the decoder's steps.
//!
//! Inputs: the raw audio body (`audio/*`), or (ours) JSON with `inputs` holding the audio
//! base64-encoded (or as a `data:audio/...;base64,` URL) and `parameters` beside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use self::params::{audio_of_string, bad_inputs, decode_options, DecodeOptions};
use self::prompt::{is_language_code, Prompts, WhisperGenerationConfig};
use self::text::{decode_asr, TokenKinds};
use crate::audio::features::{FeatureConfig, FeatureExtractor};
use crate::error::ServerError;
use crate::generation::job::Event;
use crate::generation::processors::WhisperTimestamps;
use crate::generation::sampling::Sampling;
use crate::generation::{Generator, GeneratorConfig};
use crate::models::config::ModelConfig;
use crate::models::whisper::Whisper;
use crate::source::ModelFiles;
use crate::tasks::params::json_type;
use crate::tasks::tokenize::TextEncoder;

mod params;
mod prompt;
mod text;

/// `ffmpeg_read`'s message for a body ffmpeg cannot decode (ours adds the reason).
const MALFORMED: &str = "Soundfile is either not in the correct format or is malformed. Ensure that the soundfile has a valid audio file extension (e.g. wav, flac or mp3) and is not corrupted. If reading from a remote URL, ensure that the URL is the full address to **download** the audio file.";

pub struct SpeechRecognition {
    extractor: FeatureExtractor,
    model: Arc<Whisper>,
    generator: Generator,
    tokens: TextEncoder,
    prompts: Prompts,
    kinds: TokenKinds,
    eos: Vec<u32>,
    /// Every token but the language tokens (language detection suppresses them).
    not_languages: Vec<u32>,
}

impl SpeechRecognition {
    pub fn load(
        files: &ModelFiles,
        config: &ModelConfig,
        placement: &crate::device::Placement,
        generator: GeneratorConfig,
    ) -> Result<Self> {
        let model = Arc::new(Whisper::load(files, config, placement)?);
        let preprocessor = files
            .optional("preprocessor_config.json")
            .context("a speech model needs its preprocessor_config.json")?;
        let feature_config: FeatureConfig = serde_json::from_slice(
            &std::fs::read(&preprocessor)
                .with_context(|| format!("reading {}", preprocessor.display()))?,
        )
        .with_context(|| format!("parsing {}", preprocessor.display()))?;
        if feature_config.feature_size != model.config().num_mel_bins {
            anyhow::bail!(
                "preprocessor_config.json has {} mel bins, the model {}",
                feature_config.feature_size,
                model.config().num_mel_bins
            );
        }
        let generation: WhisperGenerationConfig = match files.optional("generation_config.json") {
            Some(path) => serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("parsing {}", path.display()))?,
            None => WhisperGenerationConfig::default(),
        };
        let decoder_start = generation
            .decoder_start_token_id
            .or(model.config().decoder_start_token_id)
            .context(
                "neither generation_config.json nor config.json names the decoder's start token",
            )?;
        let eos = match &generation.eos_token_id {
            Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(Value::Array(ids)) => ids
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|n| n as u32)
                .collect(),
            _ => Vec::new(),
        };
        let vocab = model.config().vocab_size as u32;
        let languages: Vec<u32> = generation
            .lang_to_id
            .as_ref()
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        let not_languages = (0..vocab).filter(|id| !languages.contains(id)).collect();
        let tokens = TextEncoder::load(&files.tokenizer, usize::MAX, false, false)?;
        let no_timestamps = generation.no_timestamps_token_id.unwrap_or(u32::MAX - 1);
        let added = tokens.tokenizer().get_added_tokens_decoder();
        let kinds = TokenKinds {
            special: added
                .iter()
                .filter(|(_, token)| token.special)
                .map(|(&id, _)| id)
                .collect(),
            languages: added
                .iter()
                .filter(|(_, token)| token.special)
                .filter_map(|(&id, token)| {
                    let code = token.content.strip_prefix("<|")?.strip_suffix("|>")?;
                    is_language_code(code).then(|| (id, code.to_string()))
                })
                .collect(),
            timestamp_begin: no_timestamps + 1,
            time_precision: feature_config.chunk_length as f64
                / model.config().max_source_positions as f64,
        };
        let generator = Generator::start(model.clone(), generator)?;
        Ok(SpeechRecognition {
            extractor: FeatureExtractor::new(feature_config)?,
            model,
            generator,
            tokens,
            kinds,
            prompts: Prompts {
                generation,
                decoder_start,
            },
            eos,
            not_languages,
        })
    }

    /// The features of one audio file's bytes: [mels, frames].
    fn features(&self, bytes: &[u8]) -> Result<candle_core::Tensor, ServerError> {
        let rate = self.extractor.config().sampling_rate;
        let wave = crate::audio::read(bytes, rate)
            .map_err(|e| ServerError::bad_request(format!("{MALFORMED} ({e})")))?;
        let window = self.extractor.config().n_samples();
        if wave.samples.len() > window {
            return Err(ServerError::bad_request(format!(
                "the audio is {:.1} s long: audio longer than {} s (long-form transcription, `chunk_length_s`) is not supported by this server yet",
                wave.samples.len() as f64 / rate as f64,
                self.extractor.config().chunk_length
            )));
        }
        let features = self.extractor.extract(&wave.samples);
        self.model
            .features_tensor(features, self.extractor.config().frames())
            .map_err(|e| ServerError::Internal(format!("{e:#}")))
    }

    /// Transcribes a raw audio body (no parameters: the DLC passes none with one).
    pub async fn run_audio(&self, body: &[u8], deadline: Duration) -> Result<Value, ServerError> {
        let features = self.features(body)?;
        self.transcribe(features, &DecodeOptions::default(), deadline)
            .await
    }

    /// Transcribes JSON `inputs` (base64 audio, or a list of them) with `parameters`.
    pub async fn run_json(
        &self,
        inputs: Value,
        parameters: Option<Value>,
        deadline: Duration,
    ) -> Result<Value, ServerError> {
        let options = decode_options(parameters)?;
        let (as_list, audio) = match inputs {
            Value::String(text) => (false, vec![audio_of_string(&text)?]),
            Value::Array(items) if !items.is_empty() => (
                true,
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(text) => audio_of_string(&text),
                        other => Err(bad_inputs(&format!("a list holding {}", json_type(&other)))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Value::Array(_) => return Err(bad_inputs("an empty list")),
            other => return Err(bad_inputs(json_type(&other))),
        };
        let features = audio
            .iter()
            .map(|bytes| self.features(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        // All of them at once: they share decoder steps.
        let options = &options;
        let mut answers = futures_util::future::try_join_all(
            features
                .into_iter()
                .map(|features| self.transcribe(features, options, deadline)),
        )
        .await?;
        Ok(if as_list {
            Value::Array(answers)
        } else {
            answers.pop().unwrap_or(Value::Null)
        })
    }

    async fn transcribe(
        &self,
        features: candle_core::Tensor,
        options: &DecodeOptions,
        deadline: Duration,
    ) -> Result<Value, ServerError> {
        let started = Instant::now();
        let timeout = |elapsed: Duration| deadline.saturating_sub(elapsed);
        let mut prompt = self.prompts.init_tokens(options)?;
        // No language at position 1: a multilingual model detects it.
        let undefined = prompt.get(1).is_none_or(|token| token.is_none());
        if undefined && self.prompts.generation.lang_to_id.is_some() && options.language.is_none() {
            let language = self
                .detect_language(features.clone(), timeout(started.elapsed()))
                .await?;
            match prompt.get_mut(1) {
                Some(slot) => *slot = Some(language),
                None => prompt.push(Some(language)),
            }
        }
        let prompt = self.prompts.finish_init_tokens(prompt, options)?;
        let positions = self.model.config().max_target_positions;
        let max_new_tokens = match options.max_new_tokens {
            Some(n) => {
                if n + prompt.len() > positions {
                    return Err(ServerError::bad_request(format!(
                        "The length of `decoder_input_ids`, including special start tokens, prompt tokens, and previous tokens, is {},  and `max_new_tokens` is {n}. Thus, the combined length of `decoder_input_ids` and `max_new_tokens` is: {}. This exceeds the `max_target_positions` of the Whisper model: {positions}. You should either reduce the length of your prompt, or reduce the value of `max_new_tokens`, so that their combined length is less than {positions}.",
                        prompt.len(),
                        n + prompt.len()
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
                .saturating_sub(prompt.len()),
        };
        if max_new_tokens == 0 {
            return Ok(json!({ "text": "" }));
        }
        let mut sampling = Sampling::greedy(max_new_tokens, self.eos.clone());
        sampling.processors.suppress_tokens = self.prompts.generation.suppress_tokens.clone();
        sampling.processors.begin_suppress_tokens =
            self.prompts.generation.begin_suppress_tokens.clone();
        if options.return_timestamps {
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
        let receiver = self
            .generator
            .submit_with_source(prompt, Some(features), sampling)?;
        let ids = collect(receiver, timeout(started.elapsed()), deadline).await?;
        decode_asr(&ids, &self.kinds, options.return_timestamps, |tokens| {
            self.tokens.decode(tokens, false)
        })
    }

    /// `detect_language`: the most likely language token after the start token.
    async fn detect_language(
        &self,
        features: candle_core::Tensor,
        deadline: Duration,
    ) -> Result<u32, ServerError> {
        let mut sampling = Sampling::greedy(1, Vec::new());
        sampling.processors.suppress_tokens = self.not_languages.clone();
        // (the transcription that follows reads the same encoding)
        self.model.keep_encoding(&features);
        let receiver = self.generator.submit_with_source(
            vec![self.prompts.decoder_start],
            Some(features),
            sampling,
        )?;
        let ids = collect(receiver, deadline, deadline).await?;
        ids.first()
            .copied()
            .ok_or_else(|| ServerError::Internal("language detection chose no token".into()))
    }
}

/// A job's tokens, until it finishes (its end token not included).
async fn collect(
    mut receiver: mpsc::UnboundedReceiver<Event>,
    remaining: Duration,
    deadline: Duration,
) -> Result<Vec<u32>, ServerError> {
    let tokens = async {
        let mut ids = Vec::new();
        while let Some(event) = receiver.recv().await {
            match event {
                Event::Token { id, finish, .. } => {
                    ids.push(id);
                    if finish.is_some() {
                        return Ok(ids);
                    }
                }
                Event::Failed(error) => return Err(error.into()),
                Event::Sequences(mut sequences) => return Ok(sequences.swap_remove(0)),
                Event::Prompt(_) => {}
            }
        }
        Err(ServerError::Internal(
            "the generation scheduler dropped the sequence".into(),
        ))
    };
    tokio::time::timeout(remaining, tokens)
        .await
        .map_err(|_| ServerError::Timeout(deadline.as_secs()))?
}
