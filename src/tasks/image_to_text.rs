//! `image-to-text`, as `transformers` 4.51's `ImageToTextPipeline` answers behind the DLC: the
//! image processed as `preprocessor_config.json` says, then `generate` with the model's
//! generation config (`generation_config.json`, else `config.json` with its decoder's values
//! where the top level has none), and the output decoded without special tokens:
//! `[{"generated_text"}]` per image (one entry per `num_return_sequences`), a list of such lists
//! for a list of images. Parameters: `max_new_tokens`, `generate_kwargs` (generate's arguments:
//! lengths, beams, sampling, n-gram and repetition penalties, bad words, ...; `seed` is ours),
//! `timeout` (accepted; nothing is fetched), and `prompt` (BLIP: the caption's start, kept in the
//! text; a VisionEncoderDecoder refuses it, as the pipeline does). Requests run on the generation
//! scheduler: concurrent captions (and the images of one request) share the decoder's steps and
//! their images are encoded together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::image_classification::load_processor;
use super::image_input::parse_images;
use super::params::Params;
use super::tokenize::TextEncoder;
use crate::error::ServerError;
use crate::generation::job::sequences;
use crate::generation::params::{Defaults, GenerationParameters, PipelineKind, ValidParameters};
use crate::generation::pipeline::sequence_sampling;
use crate::generation::{Generator, GeneratorConfig};
use crate::image::decode::decode_rgb;
use crate::image::processor::ImageProcessor;
use crate::image::resample::Rgb8;
use crate::models::captioner::Captioner;
use crate::models::config::ModelConfig;
use crate::models::StepModel;
use crate::source::ModelFiles;

const TASK: &str = "image-to-text";
/// `ImageToTextPipeline._sanitize_parameters`' arguments.
const ACCEPTED: &[&str] = &["max_new_tokens", "generate_kwargs", "prompt", "timeout"];
/// Parameters of the text pipelines that are not `generate`'s: in `generate_kwargs` they would
/// reach `generate`, which refuses them.
const NOT_GENERATE_ARGUMENTS: &[&str] = &[
    "return_full_text",
    "return_tensors",
    "return_text",
    "clean_up_tokenization_spaces",
    "prefix",
    "add_special_tokens",
    "truncation",
    "stream",
    "stop",
    "stop_sequences",
    "stop_sequence",
];

pub struct ImageToText {
    processor: ImageProcessor,
    model: Arc<Captioner>,
    generator: Generator,
    tokens: TextEncoder,
    defaults: Defaults,
}

/// A request's processed images and its generation settings, ready to run.
pub struct CaptionRequest {
    /// Each image's pixels, as the encoder's input.
    images: Vec<candle_core::Tensor>,
    /// The decoder's first tokens (its start token, and a prompt's).
    start: Vec<u32>,
    as_list: bool,
    params: ValidParameters,
}

impl ImageToText {
    pub fn load(
        files: &ModelFiles,
        config: &ModelConfig,
        placement: &crate::device::Placement,
        generator: GeneratorConfig,
    ) -> Result<Self> {
        let processor = load_processor(files)?;
        tracing::info!("image processor: {}", processor.class);
        // The network by model_type: BLIP's two towers, else a VisionEncoderDecoder's.
        let model = Arc::new(match config.model_type.as_str() {
            "blip" => crate::models::blip::load(files, config, placement)?,
            _ => crate::models::vision_encoder_decoder::load(files, config, placement)?,
        });
        let tokens = TextEncoder::load(&files.tokenizer, usize::MAX, false, false)?;
        let mut defaults = Defaults::read(&files.dir, &with_decoder_defaults(config.raw()), None);
        if let Some(end) = model.end_token() {
            defaults = defaults.with_end_token(end);
        }
        let captioner = ImageToText {
            processor,
            generator: Generator::start(model.clone(), generator)?,
            model,
            tokens,
            defaults,
        };
        captioner.probe()?;
        Ok(captioner)
    }

    /// The load-time check: one grey image through the encoder and a decoder step.
    fn probe(&self) -> Result<()> {
        let image = Rgb8 {
            width: 23,
            height: 17,
            data: vec![128; 23 * 17 * 3],
        };
        let pixels = self.pixels(&image).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cache = self.model.cache_with_source(&pixels);
        let start = self.model.start_tokens(None).unwrap_or_default();
        let logits = self.model.step(&mut [crate::models::StepInput {
            tokens: &start,
            cache: &mut cache,
        }])?;
        let width = logits.first().map_or(0, Vec::len);
        if width != self.model.vocab_size() || logits[0].iter().any(|v| !v.is_finite()) {
            anyhow::bail!("the model's first step gave {width} logits (or non-finite ones) for a vocabulary of {}", self.model.vocab_size());
        }
        Ok(())
    }

    /// One image's pixels as the encoder's input.
    fn pixels(&self, image: &Rgb8) -> Result<candle_core::Tensor, ServerError> {
        let p = self.processor.process(image)?;
        self.model
            .pixels_tensor(p.data, (p.channels, p.height, p.width))
            .map_err(|e| ServerError::Internal(format!("{e:#}")))
    }

    /// A raw image body (no parameters: the DLC passes none with one).
    pub fn prepare_image(&self, body: &[u8]) -> Result<CaptionRequest, ServerError> {
        let image = decode_rgb(body)?;
        self.request(vec![image], false, Params::new(None, TASK)?)
    }

    /// JSON `inputs` (a base64 image or a list of them) with `parameters`.
    pub fn prepare(
        &self,
        inputs: Value,
        parameters: Option<Value>,
    ) -> Result<CaptionRequest, ServerError> {
        let params = Params::new(parameters, TASK)?;
        let (as_list, images) = parse_images(inputs, TASK)?;
        self.request(images, as_list, params)
    }

    fn request(
        &self,
        images: Vec<Rgb8>,
        as_list: bool,
        mut params: Params,
    ) -> Result<CaptionRequest, ServerError> {
        let max_new_tokens = params.take("max_new_tokens").filter(|v| !v.is_null());
        let mut generate = match params.take("generate_kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(params.invalid("generate_kwargs", "an object", &other));
            }
        };
        let prompt = params.take("prompt").filter(|v| !v.is_null());
        params.take("timeout");
        params.finish(ACCEPTED)?;
        if let Some(n) = max_new_tokens {
            if generate.contains_key("max_new_tokens") {
                return Err(ServerError::bad_request(
                    "`max_new_tokens` is defined both as an argument and inside `generate_kwargs` argument, please use only 1 version",
                ));
            }
            generate.insert("max_new_tokens".into(), n);
        }
        let start = self.start_tokens(prompt)?;
        // BLIP's generate passes these to its decoder's generate itself.
        if self.model.end_token().is_some() {
            for key in ["eos_token_id", "pad_token_id"] {
                if generate.contains_key(key) {
                    return Err(ServerError::bad_request(format!(
                        "transformers.generation.utils.GenerationMixin.generate() got multiple values for keyword argument '{key}'"
                    )));
                }
            }
        }
        let refused: Vec<&String> = generate
            .keys()
            .filter(|k| NOT_GENERATE_ARGUMENTS.contains(&k.as_str()))
            .collect();
        if !refused.is_empty() {
            return Err(ServerError::bad_request(format!(
                "The following `model_kwargs` are not used by the model: {refused:?} (note: typos in the generate arguments will also show up in this list)"
            )));
        }
        let generate = Params::new(Some(Value::Object(generate)), TASK)?;
        let params = GenerationParameters::take(generate, PipelineKind::Text2Text, None)?
            .validate(&self.defaults, as_list)?;
        let images = images
            .iter()
            .map(|image| self.pixels(image))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CaptionRequest {
            images,
            start,
            as_list,
            params,
        })
    }

    /// The decoder's first tokens for the request's `prompt`, checked as the pipeline's
    /// `preprocess` checks it.
    fn start_tokens(&self, prompt: Option<Value>) -> Result<Vec<u32>, ServerError> {
        let ids = match &prompt {
            None => None,
            Some(Value::String(text)) => Some(
                self.tokens
                    .encode(text, None, &super::tokenize::Truncation::none())?
                    .ids,
            ),
            Some(other) => {
                return Err(ServerError::bad_request(format!(
                    "Received an invalid text input, got - <class '{}'> - but expected a single string. Note also that one single text can be provided for conditional image to text generation.",
                    python_type(other)
                )));
            }
        };
        self.model.start_tokens(ids.as_deref()).ok_or_else(|| {
            ServerError::bad_request(format!(
                "Model type {} does not support conditional text generation",
                self.model.model_type()
            ))
        })
    }

    /// Captions every image of the request (all submitted first, so they share steps).
    pub async fn run(
        &self,
        request: CaptionRequest,
        deadline: Duration,
    ) -> Result<Value, ServerError> {
        let started = Instant::now();
        let params = &request.params;
        let beams = params.sampling.num_beams > 1;
        let jobs_per_image = if beams {
            1
        } else {
            params.num_return_sequences
        };
        let jobs = request.images.len().saturating_mul(jobs_per_image);
        if jobs > self.generator.capacity() {
            return Err(ServerError::bad_request(format!(
                "the request holds {jobs} sequences (images x num_return_sequences); at most {} can wait to be generated at once (MAX_QUEUE): send fewer per request",
                self.generator.capacity()
            )));
        }
        let start = &request.start;
        let mut receivers = Vec::with_capacity(jobs);
        for pixels in &request.images {
            for n in 0..jobs_per_image {
                let sampling =
                    sequence_sampling(params, start.len(), self.model.max_positions(), n)?;
                receivers.push(self.generator.submit_with_source(
                    start.clone(),
                    Some(pixels.clone()),
                    sampling,
                )?);
            }
        }
        let mut results = Vec::with_capacity(request.images.len());
        let mut receivers = receivers.into_iter();
        for _ in &request.images {
            let mut texts = Vec::new();
            for receiver in receivers.by_ref().take(jobs_per_image) {
                let remaining = deadline.saturating_sub(started.elapsed());
                let generated = tokio::time::timeout(remaining, sequences(receiver))
                    .await
                    .map_err(|_| ServerError::Timeout(deadline.as_secs()))??;
                for ids in generated {
                    // `generate` answers the prompt's tokens too (after the start token).
                    let ids = [&start[1..], &ids[..]].concat();
                    texts.push(json!({"generated_text": self.tokens.decode(&ids, true)?}));
                }
            }
            texts.truncate(params.num_return_sequences);
            results.push(Value::Array(texts));
        }
        Ok(super::pipeline::list_or_single(results, request.as_list))
    }
}

/// `GenerationConfig.from_model_config` for a composite config: where the top level of
/// `config.json` has no value, or `GenerationConfig`'s default for a generation setting (old
/// configs list every default), the decoder's (`decoder`; BLIP's `text_config`) is the model's
/// (its end and padding tokens, its lengths, say).
fn with_decoder_defaults(config: &Value) -> Value {
    let mut merged = config.clone();
    let decoder = config.get("decoder").or(config.get("text_config"));
    if let (Some(Value::Object(decoder)), Value::Object(top)) = (decoder, &mut merged) {
        for (key, value) in decoder {
            let unset = match top.get(key) {
                None | Some(Value::Null) => true,
                Some(set) => GENERATION_DEFAULTS
                    .iter()
                    .any(|(k, default)| k == key && same_value(set, default)),
            };
            if !value.is_object() && unset {
                top.insert(key.clone(), value.clone());
            }
        }
    }
    merged
}

/// `GenerationConfig()`'s values of the settings read here (the others default to None).
const GENERATION_DEFAULTS: &[(&str, f64)] = &[
    ("max_length", 20.0),
    ("min_length", 0.0),
    ("no_repeat_ngram_size", 0.0),
    ("do_sample", 0.0),
    ("temperature", 1.0),
    ("top_k", 50.0),
    ("top_p", 1.0),
    ("repetition_penalty", 1.0),
    ("num_beams", 1.0),
    ("length_penalty", 1.0),
    ("early_stopping", 0.0),
];

/// Python's `==` of a JSON number or bool with a default (`False == 0`, `1 == 1.0`).
fn same_value(value: &Value, default: &f64) -> bool {
    match value {
        Value::Bool(b) => f64::from(u8::from(*b)) == *default,
        Value::Number(n) => n.as_f64() == Some(*default),
        _ => false,
    }
}

/// The name Python gives a JSON value's type.
fn python_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoders_generation_values_fill_the_top_levels_gaps() {
        let config = json!({"eos_token_id": 5, "decoder": {"eos_token_id": 7, "bos_token_id": 1,
            "task_specific_params": {"text-generation": {"max_length": 50}}}});
        let merged = with_decoder_defaults(&config);
        assert_eq!(merged["eos_token_id"], 5);
        assert_eq!(merged["bos_token_id"], 1);
        assert!(merged.get("task_specific_params").is_none());
        // A top-level value equal to GenerationConfig's default counts as unset.
        let config = json!({"max_length": 20, "num_beams": 2, "early_stopping": false,
            "text_config": {"max_length": 32, "num_beams": 4, "early_stopping": true}});
        let merged = with_decoder_defaults(&config);
        assert_eq!(merged["max_length"], 32);
        assert_eq!(merged["num_beams"], 2);
        assert_eq!(merged["early_stopping"], true);
    }
}
