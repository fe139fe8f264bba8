//! `automatic-speech-recognition` with Whisper, as the DLC's pipeline runs it: the audio decoded
//! and resampled as `ffmpeg_read` does; cut into overlapping chunks with `chunk_length_s`;
//! log-mel features (of one 30 s window, or of all the audio when it is longer: long-form);
//! then `generate` per chunk — the first decoder tokens (start of transcript, language, task, no
//! timestamps) built as `WhisperGenerationMixin._retrieve_init_tokens` builds them, the
//! language detected from the start token's logits when none is given to a multilingual model,
//! greedy decoding with `suppress_tokens`, `begin_suppress_tokens` and, with timestamps, the
//! timestamp rules, window after window as `windows` says — and the text (and chunks) as
//! `_decode_asr` makes them. Requests run on the generation scheduler, so concurrent
//! transcriptions (and the chunks of one) share the decoder's steps. Word timestamps take one
//! more decoder pass per window, over its tokens at once, for the cross-attention (`words`).
//!
//! Wav2Vec2 models with a CTC head run as the pipeline's "ctc" type does instead (`ctc`).
//!
//! Inputs: the raw audio body (`audio/*`), or (ours) JSON with `inputs` holding the audio
//! base64-encoded (or as a `data:audio/...;base64,` URL) and `parameters` beside it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use self::ctc::CtcRecognition;
use self::params::{audio_of_string, bad_inputs, decode_options, DecodeOptions};
use self::prompt::{language_name, Prompts, WhisperGenerationConfig};
use self::text::{decode_asr, CallTokens, Show, TokenKinds};
use self::until::Until;
use self::windows::{retrieve_segment, Features, History, INPUT_STRIDE};
use crate::audio::features::{FeatureConfig, FeatureExtractor};
use crate::error::ServerError;
use crate::generation::sampling::Sampling;
use crate::generation::{Generator, GeneratorConfig};
use crate::models::config::ModelConfig;
use crate::models::whisper::{KeptEncoding, Whisper};
use crate::registry::Network;
use crate::source::ModelFiles;
use crate::task::Task;
use crate::tasks::params::json_type;
use crate::tasks::tokenize::TextEncoder;

mod ctc;
mod fallback;
mod params;
mod prompt;
mod settings;
mod text;
mod until;
mod windows;
mod words;

/// Chunks of one request decoded at once (each holds a window's features until it is done).
const CHUNKS_IN_FLIGHT: usize = 8;

/// `ffmpeg_read`'s message for a body ffmpeg cannot decode (ours adds the reason).
const MALFORMED: &str = "Soundfile is either not in the correct format or is malformed. Ensure that the soundfile has a valid audio file extension (e.g. wav, flac or mp3) and is not corrupted. If reading from a remote URL, ensure that the URL is the full address to **download** the audio file.";

/// The speech recognition pipeline of a model: Whisper's generation, or CTC.
pub enum SpeechRecognition {
    Whisper(Box<WhisperRecognition>),
    Ctc(CtcRecognition),
}

impl SpeechRecognition {
    /// `workers`: CTC forward passes run at once (`SAGEMAKER_MODEL_SERVER_WORKERS`).
    pub fn load(
        files: &ModelFiles,
        config: &ModelConfig,
        placement: &crate::device::Placement,
        generator: GeneratorConfig,
        workers: usize,
    ) -> Result<Self> {
        Ok(
            match crate::registry::network(&config.model_type, Task::AutomaticSpeechRecognition)? {
                Network::Wav2Vec2 => {
                    SpeechRecognition::Ctc(CtcRecognition::load(files, config, placement, workers)?)
                }
                _ => SpeechRecognition::Whisper(Box::new(WhisperRecognition::load(
                    files, config, placement, generator,
                )?)),
            },
        )
    }

    /// One audio file's samples at the feature extractor's rate.
    fn samples(&self, bytes: &[u8]) -> Result<Vec<f32>, ServerError> {
        let rate = match self {
            SpeechRecognition::Whisper(whisper) => whisper.extractor.config().sampling_rate,
            SpeechRecognition::Ctc(ctc) => ctc.sampling_rate(),
        };
        crate::audio::read(bytes, rate)
            .map(|wave| wave.samples)
            .map_err(|e| ServerError::bad_request(format!("{MALFORMED} ({e})")))
    }

    /// The parameters this kind of model refuses, as the pipeline's `_sanitize_parameters`
    /// checks them (before the audio is read).
    fn check(&self, options: &DecodeOptions) -> Result<(), ServerError> {
        match self {
            SpeechRecognition::Whisper(_) => options.check_whisper(),
            SpeechRecognition::Ctc(_) => options.check_ctc(),
        }
    }

    /// Transcribes a raw audio body (no parameters: the DLC passes none with one).
    pub async fn run_audio(&self, body: &[u8], deadline: Duration) -> Result<Value, ServerError> {
        let samples = self.samples(body)?;
        let until = Until::new(deadline);
        self.transcribe(&samples, &DecodeOptions::default(), until)
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
        self.check(&options)?;
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
        let samples = audio
            .iter()
            .map(|bytes| self.samples(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let until = Until::new(deadline);
        // All of them at once: they share decoder steps.
        let options = &options;
        let mut answers = futures_util::future::try_join_all(
            samples
                .iter()
                .map(|samples| self.transcribe(samples, options, until)),
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
        samples: &[f32],
        options: &DecodeOptions,
        until: Until,
    ) -> Result<Value, ServerError> {
        match self {
            SpeechRecognition::Whisper(whisper) => {
                whisper.transcribe(samples, options, until).await
            }
            SpeechRecognition::Ctc(ctc) => ctc.transcribe(samples, options, until).await,
        }
    }
}

/// Whisper's pipeline ("seq2seq_whisper").
pub struct WhisperRecognition {
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

impl WhisperRecognition {
    fn load(
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
                    language_name(code).map(|name| (id, name))
                })
                .collect(),
            timestamp_begin: no_timestamps + 1,
            time_precision: feature_config.chunk_length as f64
                / model.config().max_source_positions as f64,
            eos: eos.first().copied().unwrap_or(u32::MAX),
        };
        let generator = Generator::start(model.clone(), generator)?;
        Ok(WhisperRecognition {
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

    /// The pipeline on one audio's samples: chunked or not, `generate` per chunk, `_decode_asr`.
    async fn transcribe(
        &self,
        samples: &[f32],
        options: &DecodeOptions,
        until: Until,
    ) -> Result<Value, ServerError> {
        let rate = self.extractor.config().sampling_rate;
        let calls = match &options.chunking {
            None => {
                let frames = samples.len() / self.extractor.config().hop_length;
                let (tokens, times) = self
                    .generate(self.features(samples, false), frames, options, until)
                    .await?;
                vec![CallTokens {
                    tokens,
                    times,
                    stride: None,
                }]
            }
            Some(chunking) => {
                let plan = chunking.plan(samples.len(), rate, 1)?;
                let seconds = |n: usize| n as f64 / rate as f64;
                // Features are made as each chunk's turn comes, so at most CHUNKS_IN_FLIGHT
                // windows are held at once.
                let calls = futures_util::stream::iter(plan.into_iter().map(
                    |(start, length, left, right)| async move {
                        let features = self.features(&samples[start..start + length], true);
                        let frames = length / self.extractor.config().hop_length;
                        let (tokens, times) =
                            self.generate(features, frames, options, until).await?;
                        Ok::<_, ServerError>(CallTokens {
                            tokens,
                            times,
                            stride: Some((seconds(length), seconds(left), seconds(right))),
                        })
                    },
                ));
                futures_util::TryStreamExt::try_collect(futures_util::StreamExt::buffered(
                    calls,
                    CHUNKS_IN_FLIGHT,
                ))
                .await?
            }
        };
        let show = Show {
            timestamps: options.return_timestamps == Some(true) || options.word_timestamps(),
            words: options.word_timestamps(),
            language: options.return_language,
        };
        decode_asr(&calls, &self.kinds, show, |tokens| {
            self.tokens.decode(tokens, false)
        })
    }

    /// The features `generate` gets: a chunk's (`cut`: padded or cut to one window, as
    /// `chunk_iter` has the extractor make them), or the whole audio's (padded to a window,
    /// longer audio whole: long-form).
    fn features(&self, samples: &[f32], cut: bool) -> Features {
        let (values, frames) = if cut {
            (
                self.extractor.extract(samples),
                self.extractor.config().frames(),
            )
        } else {
            let frames = self.extractor.long_frames(samples.len());
            (self.extractor.extract_long(samples), frames)
        };
        Features {
            values,
            mels: self.extractor.config().feature_size,
            frames,
        }
    }

    /// Whisper's `generate` on one chunk's features: the tokens of its segments, window after
    /// window (without the decoder prompts and end tokens), as the pipeline receives them; with
    /// word timestamps each one's time too. `audio_frames`: the feature frames of the chunk's
    /// audio (`num_frames`; a window's alignment reads the encoder positions they fill).
    async fn generate(
        &self,
        features: Features,
        audio_frames: usize,
        options: &DecodeOptions,
        until: Until,
    ) -> Result<(Vec<u32>, Vec<f32>), ServerError> {
        let window = INPUT_STRIDE * self.model.config().max_source_positions;
        let long_form = features.frames > window;
        let words = options.word_timestamps();
        let alignment_heads = self.alignment_heads(words)?;
        // (long-form audio is aligned over whole windows: the pipeline passes no `num_frames`)
        let aligned_positions = (!long_form).then_some(audio_frames / INPUT_STRIDE);
        let timestamps = self.timestamps(options, long_form)?;
        let first_window = self.tensor(features.window(0, window), window)?;
        let mut prompt = self.prompts.init_tokens(options)?;
        // No language at position 1: a multilingual model detects it (on the first window).
        let undefined = prompt.get(1).is_none_or(|token| token.is_none());
        let detect =
            undefined && self.prompts.generation.lang_to_id.is_some() && options.language.is_none();
        // The window's encoding serves the detection, the transcription and the alignment.
        let mut first_kept = (detect || words || options.thresholds.no_speech.is_some())
            .then(|| self.model.keep_encoding(&first_window));
        if detect {
            let language = self.detect_language(first_window.clone(), until).await?;
            match prompt.get_mut(1) {
                Some(slot) => *slot = Some(language),
                None => prompt.push(Some(language)),
            }
        }
        let prompt = self
            .prompts
            .finish_init_tokens(prompt, options, timestamps)?;
        // `generate` applies the timestamp rules only when `return_timestamps` is True itself:
        // "word" leaves `<|notimestamps|>` out of the prompt but sets no rules (long-form
        // audio makes it True).
        let timestamp_rules = timestamps && (long_form || !words);
        let first_temperature = options.temperatures.first().copied().unwrap_or(0.0);
        let sampling = self.sampling(prompt.len(), options, timestamp_rules, first_temperature)?;
        if sampling.max_new_tokens == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        if sampling.num_beams > 1 && options.thresholds.logprob.is_some() {
            return Err(ServerError::bad_request("generate_kwargs `logprob_threshold` with `num_beams` above 1 is not supported by this server (transformers compares the beam's length-normalised score)"));
        }
        // The window's encoding serves the no-speech check too.
        let keep = words || options.thresholds.no_speech.is_some();
        let mut history = History::default();
        // `condition_on_prev_tokens`: the request's, or the generation config's from the
        // second window on (`generate` starts from the request's alone).
        let condition = options
            .condition_on_prev_tokens
            .or(self.prompts.generation.condition_on_prev_tokens)
            .unwrap_or(false);
        let mut conditioned = options.condition_on_prev_tokens.unwrap_or(false);
        let mut seek = 0;
        let mut window_features = Some(first_window);
        while seek < features.frames {
            let window_frames = (features.frames - seek).min(window);
            let input = match window_features.take() {
                Some(first) => first,
                None => self.tensor(features.window(seek, window), window)?,
            };
            let encoding = match first_kept.take() {
                Some(kept) => Some(kept),
                None => keep.then(|| self.model.keep_encoding(&input)),
            };
            let window_prompt = match conditioned && !history.is_empty() {
                true => self.conditioned_prompt(&mut history, &prompt),
                false => prompt.clone(),
            };
            let pass = self
                .window_pass(
                    &window_prompt,
                    window_prompt.len() - prompt.len(),
                    input,
                    encoding.as_ref(),
                    options,
                    timestamp_rules,
                    until,
                )
                .await?;
            // (the answer of a temperature of 0.5 or more does not lead the next window)
            conditioned = condition && pass.temperature < 0.5;
            if pass.skip {
                seek += window_frames;
                continue;
            }
            let mut generated = pass.generated;
            let window_times = match (&alignment_heads, encoding) {
                (Some(heads), Some(encoding)) => {
                    let sequence = [&window_prompt[..], &generated[..]].concat();
                    self.align(encoding, sequence, heads.clone(), aligned_positions)
                        .await?
                }
                _ => Vec::new(),
            };
            if generated.last().is_some_and(|id| self.eos.contains(id)) {
                generated.pop();
            }
            // (without the timestamp rules too: a model that writes a timestamp pair as
            // text moves the seek as well)
            let (kept, offset) =
                retrieve_segment(&generated, window_frames, self.kinds.timestamp_begin);
            // the window's start, in f32 as `_retrieve_segment` adds it
            let window_start = (seek as f64 * words::SECONDS_PER_POSITION / 2.0) as f32;
            let times: Vec<f32> = window_times
                .iter()
                .skip(window_prompt.len())
                .take(kept)
                .map(|t| t + window_start)
                .collect();
            history.push_window(&generated[..kept], &times, self.kinds.timestamp_begin);
            seek += offset;
        }
        let (tokens, times) = history.into_tokens();
        tracing::debug!(?tokens, "speech recognition: one generate call's tokens");
        Ok((tokens, times))
    }

    /// The times of a window's tokens (`sequence`: its decoder prompt, then what it generated)
    /// from the cross-attention of `heads` over the first `positions` audio positions (all when
    /// `None`), off the runtime's threads.
    async fn align(
        &self,
        encoding: KeptEncoding,
        sequence: Vec<u32>,
        heads: Vec<(usize, usize)>,
        positions: Option<usize>,
    ) -> Result<Vec<f32>, ServerError> {
        let model = self.model.clone();
        crate::offload::cpu_work(crate::offload::ALWAYS, move || {
            // every token but the last is fed to the decoder
            let fed = &sequence[..sequence.len().saturating_sub(1)];
            let weights = model
                .cross_attention_weights(&encoding, fed, &heads)
                .map_err(|e| ServerError::Internal(format!("word timestamps: {e:#}")))?;
            let median_width = model.config().median_filter_width;
            words::token_timestamps(&weights, fed.len(), positions, median_width)
        })
        .await
    }

    /// A window of features as the model's input tensor.
    fn tensor(&self, values: Vec<f32>, frames: usize) -> Result<candle_core::Tensor, ServerError> {
        self.model
            .features_tensor(values, frames)
            .map_err(|e| ServerError::Internal(format!("{e:#}")))
    }

    /// `detect_language`: the most likely language token after the start token.
    async fn detect_language(
        &self,
        features: candle_core::Tensor,
        until: Until,
    ) -> Result<u32, ServerError> {
        let mut sampling = Sampling::greedy(1, Vec::new());
        sampling.processors.suppress_tokens = self.not_languages.clone();
        let receiver = self.generator.submit_with_source(
            vec![self.prompts.decoder_start],
            Some(features),
            sampling,
        )?;
        let (ids, _) = fallback::collect_scored(receiver, until).await?;
        ids.first()
            .copied()
            .ok_or_else(|| ServerError::Internal("language detection chose no token".into()))
    }
}
