//! Speech recognition with a CTC head (Wav2Vec2ForCTC), as the pipeline's "ctc" type runs it:
//! the waveform normalised as `Wav2Vec2FeatureExtractor` does (zero mean, unit variance), cut
//! into chunks with `chunk_length_s` (lengths aligned to the model's samples per frame), each
//! chunk's logits' argmax with the strides' frames dropped (`rescale_stride`), the chunks'
//! tokens joined, and `Wav2Vec2CTCTokenizer.decode` (repeats grouped, the blank dropped, the word
//! delimiter a space) with `return_timestamps` "char" or "word" as its offsets in seconds.
//! `generate_kwargs` and `max_new_tokens` are accepted and unused, as the pipeline's CTC
//! forward ignores them.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use super::params::DecodeOptions;
use super::until::Until;
use crate::error::ServerError;
use crate::generation::processors::first_max;
use crate::models::config::ModelConfig;
use crate::models::wav2vec2::Wav2Vec2;
use crate::source::ModelFiles;

pub struct CtcRecognition {
    model: Arc<Wav2Vec2>,
    sampling_rate: u32,
    normalize: bool,
    vocabulary: Arc<CtcVocabulary>,
    /// Forward passes at once (each uses every core for its products).
    passes: Semaphore,
}

impl CtcRecognition {
    pub fn load(
        files: &ModelFiles,
        config: &ModelConfig,
        placement: &crate::device::Placement,
        workers: usize,
    ) -> Result<Self> {
        let model = Wav2Vec2::load(files, config, placement)?;
        let preprocessor: Value = read_json(files, "preprocessor_config.json")?
            .context("a speech model needs its preprocessor_config.json")?;
        let sampling_rate = preprocessor
            .get("sampling_rate")
            .and_then(Value::as_u64)
            .unwrap_or(16_000) as u32;
        let normalize = preprocessor
            .get("do_normalize")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let vocabulary = CtcVocabulary::load(files)?;
        Ok(CtcRecognition {
            model: Arc::new(model),
            sampling_rate,
            normalize,
            vocabulary: Arc::new(vocabulary),
            passes: Semaphore::new(workers.max(1)),
        })
    }

    pub(super) fn sampling_rate(&self) -> u32 {
        self.sampling_rate
    }

    /// The pipeline on one audio's samples.
    pub(super) async fn transcribe(
        &self,
        samples: &[f32],
        options: &DecodeOptions,
        until: Until,
    ) -> Result<Value, ServerError> {
        let ratio = self.model.config().inputs_to_logits_ratio();
        // (start, length, left stride, right stride), in samples.
        let plan = match &options.chunking {
            None => vec![(0, samples.len(), 0, 0)],
            Some(chunking) => chunking.plan(samples.len(), self.sampling_rate, ratio)?,
        };
        let mut tokens = Vec::new();
        for (start, length, left, right) in plan {
            let chunk = &samples[start..start + length];
            let ids = self.argmax(chunk, until).await?;
            let kept = match options.chunking {
                None => 0..ids.len(),
                Some(_) => stride_kept(ids.len(), length, left, right, ratio),
            };
            tokens.extend_from_slice(&ids[kept]);
        }
        let level = options.timestamp_level.as_deref();
        let decoded = self.vocabulary.decode(&tokens);
        let mut answer = Map::new();
        answer.insert("text".into(), Value::String(decoded.text));
        if let Some(level) = level {
            let offsets = match level {
                "word" => self.vocabulary.word_offsets(&decoded.chars),
                _ => decoded.chars,
            };
            let seconds = |frame: usize| (frame * ratio) as f64 / self.sampling_rate as f64;
            let chunks = offsets
                .into_iter()
                .map(|o| json!({"text": o.text, "timestamp": [seconds(o.start), seconds(o.end)]}))
                .collect();
            answer.insert("chunks".into(), Value::Array(chunks));
        }
        Ok(Value::Object(answer))
    }

    /// The argmax token of each logit frame of one chunk: normalised and run off the async
    /// threads.
    async fn argmax(&self, chunk: &[f32], until: Until) -> Result<Vec<u32>, ServerError> {
        let remaining = until.remaining();
        let _pass = tokio::time::timeout(remaining, self.passes.acquire())
            .await
            .map_err(|_| until.expired())?
            .map_err(|_| ServerError::Internal("the speech model was closed".into()))?;
        let mut values = chunk.to_vec();
        let (model, normalize) = (self.model.clone(), self.normalize);
        let work = tokio::task::spawn_blocking(move || {
            if normalize {
                zero_mean_unit_variance(&mut values);
            }
            let (logits, frames) = model.logits(&values)?;
            let vocab = logits.len() / frames.max(1);
            anyhow::ensure!(
                frames > 0,
                "the audio is too short for the model: {} samples give no frame of its feature encoder",
                values.len()
            );
            Ok::<_, anyhow::Error>(
                logits
                    .chunks_exact(vocab)
                    .map(|row| first_max(row) as u32)
                    .collect::<Vec<u32>>(),
            )
        });
        let remaining = until.remaining();
        tokio::time::timeout(remaining, work)
            .await
            .map_err(|_| until.expired())?
            .map_err(|e| ServerError::Internal(format!("the speech model's pass failed: {e}")))?
            .map_err(|e| ServerError::bad_request(format!("{e:#}")))
    }
}

/// The frames of a chunk of `length` samples that `rescale_stride` keeps: its length and strides
/// in frames, rounded as Python rounds (half to even), then `items[left:total - right]` of the
/// `frames` the model gave.
fn stride_kept(
    frames: usize,
    length: usize,
    left: usize,
    right: usize,
    ratio: usize,
) -> std::ops::Range<usize> {
    let total = (length as f64 * (1.0 / ratio as f64)).round_ties_even();
    let in_frames = |n: usize| (n as f64 / length as f64 * total).round_ties_even() as i64;
    let end = (total as i64 - in_frames(right)).clamp(0, frames as i64) as usize;
    (in_frames(left) as usize).min(end)..end
}

/// `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm` on one unpadded input, in place:
/// (x - mean) / sqrt(var + 1e-7).
fn zero_mean_unit_variance(x: &mut [f32]) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let scale = 1.0 / (var + 1e-7).sqrt();
    for v in x {
        *v = ((*v as f64 - mean) * scale) as f32;
    }
}

fn read_json(files: &ModelFiles, name: &str) -> Result<Option<Value>> {
    files
        .optional(name)
        .map(|path| {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
        })
        .transpose()
}

/// A character (or word) of the decoded text and its frames [start, end).
#[derive(Debug, Clone, PartialEq)]
struct Offset {
    text: String,
    start: usize,
    end: usize,
}

struct Decoded {
    text: String,
    chars: Vec<Offset>,
}

/// `Wav2Vec2CTCTokenizer`'s decoding (vocab.json, tokenizer_config.json, special_tokens_map.json),
/// as the pipeline calls it: `decode(ids, skip_special_tokens=False)`.
struct CtcVocabulary {
    tokens: HashMap<u32, String>,
    unk: String,
    pad: String,
    word_delimiter: String,
    replace_word_delimiter: String,
    lower_case: bool,
    clean_up_spaces: bool,
}

impl CtcVocabulary {
    fn load(files: &ModelFiles) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_value(
            read_json(files, "vocab.json")?
                .context("a CTC speech model needs its tokenizer's vocab.json")?,
        )
        .context("vocab.json: a map of tokens to ids")?;
        let config = read_json(files, "tokenizer_config.json")?.unwrap_or(Value::Null);
        let special = read_json(files, "special_tokens_map.json")?.unwrap_or(Value::Null);
        // A token setting: tokenizer_config.json's, else special_tokens_map.json's; a string or
        // an AddedToken object ({"content": ...}).
        let setting = |key: &str, default: &str| -> String {
            [&config, &special]
                .iter()
                .find_map(|doc| match doc.get(key)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(token) => token.get("content")?.as_str().map(str::to_string),
                    _ => None,
                })
                .unwrap_or_else(|| default.to_string())
        };
        let flag = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
        let mut tokens: HashMap<u32, String> = vocab.into_iter().map(|(t, id)| (id, t)).collect();
        // Added tokens (`added_tokens_decoder`) are looked up first, as convert_ids_to_tokens does.
        if let Some(Value::Object(added)) = config.get("added_tokens_decoder") {
            for (id, token) in added {
                if let (Ok(id), Some(content)) = (
                    id.parse::<u32>(),
                    token.get("content").and_then(Value::as_str),
                ) {
                    tokens.insert(id, content.to_string());
                }
            }
        }
        Ok(CtcVocabulary {
            tokens,
            unk: setting("unk_token", "<unk>"),
            pad: setting("pad_token", "<pad>"),
            word_delimiter: setting("word_delimiter_token", "|"),
            replace_word_delimiter: config
                .get("replace_word_delimiter_char")
                .and_then(Value::as_str)
                .unwrap_or(" ")
                .to_string(),
            lower_case: flag("do_lower_case"),
            clean_up_spaces: flag("clean_up_tokenization_spaces"),
        })
    }

    /// `convert_tokens_to_string` with `group_tokens`: repeats grouped, the blank (pad) dropped,
    /// the word delimiter replaced; each character with its frames.
    fn decode(&self, ids: &[u32]) -> Decoded {
        let mut chars = Vec::new();
        let mut frame = 0;
        let mut i = 0;
        while i < ids.len() {
            let token = self.tokens.get(&ids[i]).unwrap_or(&self.unk);
            let mut run = 1;
            while i + run < ids.len()
                && self.tokens.get(&ids[i + run]).unwrap_or(&self.unk) == token
            {
                run += 1;
            }
            if *token != self.pad {
                let text = if *token == self.word_delimiter {
                    self.replace_word_delimiter.clone()
                } else {
                    token.clone()
                };
                chars.push(Offset {
                    text,
                    start: frame,
                    end: frame + run,
                });
            }
            frame += run;
            i += run;
        }
        let joined: String = chars.iter().map(|c| c.text.as_str()).collect();
        let mut text = joined.trim().to_string();
        if self.lower_case {
            text = text.to_lowercase();
        }
        if self.clean_up_spaces {
            text = clean_up_tokenization(&text);
        }
        Decoded { text, chars }
    }

    /// `_get_word_offsets`: runs of characters between delimiters, each with its first start
    /// and last end.
    fn word_offsets(&self, chars: &[Offset]) -> Vec<Offset> {
        let mut words = Vec::new();
        let mut current: Option<Offset> = None;
        for c in chars {
            if c.text == self.replace_word_delimiter {
                words.extend(current.take());
            } else {
                match &mut current {
                    Some(word) => {
                        word.text.push_str(&c.text);
                        word.end = c.end;
                    }
                    None => current = Some(c.clone()),
                }
            }
        }
        words.extend(current);
        words
    }
}

/// `PreTrainedTokenizerBase.clean_up_tokenization`.
fn clean_up_tokenization(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}
