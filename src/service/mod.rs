//! The loaded model behind the HTTP layer: request body → task pre-processing → batcher →
//! task post-processing, under the per-request deadline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::batching::{Batcher, BatcherConfig};
use crate::config::ServeArgs;
use crate::device::Placement;
use crate::error::ServerError;
use crate::generation::sse::StreamEvent;
use crate::generation::{GeneratorConfig, TextGeneration};
use crate::models::config::ModelConfig;
use crate::models::quantized::Quantize;
use crate::offload::{self, cpu_work};
use crate::openai;
use crate::source::ModelFiles;
use crate::task::Task;
use crate::tasks::automatic_speech_recognition::SpeechRecognition;
use crate::tasks::image_to_text::ImageToText;
use crate::tasks::text_to_image::{Picture, TextToImage};

pub mod records;
use crate::tasks::{self, params::json_type, Pipeline, TaskOptions};

pub struct InferenceService {
    engine: Engine,
    timeout: Duration,
    /// Generation jobs that JSON Lines records may hold in the generator's queue together:
    /// half of it, so records never fill it for other requests (or for each other).
    record_jobs: Semaphore,
    /// Its permits.
    record_jobs_max: usize,
    /// The native pipeline's task; none when the model's user script loads the model itself
    /// (`model_fn`) and HF_TASK names no task we serve.
    pub task: Option<Task>,
    /// The model's folder (`config.json`'s, or the user script's model folder).
    pub model_dir: PathBuf,
    /// Where the model came from, for logs and `GET /models`.
    pub origin: String,
    /// `cpu` or `cuda:N`, for the start-up log and `/ping`'s `X-Device` header.
    pub device: String,
    /// `f32`, `f16` or `bf16`: the encoder's precision, for `/ping`'s `X-Dtype` header.
    pub dtype: &'static str,
    /// The model's name in OpenAI's answers and `/v1/models`: `HF_MODEL_ID`, else the model's
    /// directory.
    pub served_name: String,
    /// The model's user script (`code/inference.py`), which answers its invocations: a
    /// `crate::python::Handlers`, set by `crate::python::serve` (held here type-erased so
    /// that this module does not depend on the Python layer above it).
    #[cfg(feature = "python")]
    pub script: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl InferenceService {
    /// Loads the native pipeline of a model whose files are found already (a multi-model
    /// endpoint's `POST /models` finds them first, to size the load against its memory
    /// budget); blocking. A model with a user script is loaded by `crate::python::serve`, which
    /// calls this only when the script has no `model_fn`.
    pub fn load_files(args: &ServeArgs, files: ModelFiles) -> Result<Self> {
        tracing::info!("model files: {}", files.origin);
        let config = ModelConfig::from_json(files.config_json()?)?;
        let task = task_of(args, &files, &config)?;
        let device = crate::device::select(args.device, args.sm_num_gpus.as_deref())?;
        let dtype = crate::models::supported_dtype(
            &config,
            crate::device::select_dtype(args.dtype, &device, &config),
        );
        let device_name = crate::device::describe(&device);
        tracing::info!("device: {device_name}, dtype: {}", dtype.as_str());
        let max_batch_tokens =
            args.max_batch_tokens
                .unwrap_or(if device.is_cpu() { 8192 } else { 32768 });
        log_quantize(args.quantize, task);
        let placement = Placement {
            device,
            dtype,
            quantize: args.quantize,
            block_activations: args.quantized_activations,
        };
        let loading = || format!("loading the {task} model from {}", files.origin);
        let generator = GeneratorConfig {
            max_batch_tokens,
            max_queue: args.max_queue,
        };
        let engine = if task == Task::TextToImage {
            if !placement.device.is_cpu() || dtype != candle_core::DType::F32 {
                tracing::warn!("text-to-image runs in float32 on the CPU here (device {device_name}, dtype {} asked)", dtype.as_str());
            }
            Engine::Diffusion(Arc::new(
                TextToImage::load(
                    &files,
                    &candle_core::Device::Cpu,
                    args.max_queue,
                    args.workers,
                )
                .with_context(loading)?,
            ))
        } else if task == Task::AutomaticSpeechRecognition {
            Engine::Speech(Arc::new(
                SpeechRecognition::load(&files, &config, &placement, generator, args.workers)
                    .with_context(loading)?,
            ))
        } else if task == Task::ImageToText {
            Engine::Caption(Arc::new(
                ImageToText::load(&files, &config, &placement, generator).with_context(loading)?,
            ))
        } else if task.generates() {
            Engine::Generation(Arc::new(
                TextGeneration::load(
                    &files,
                    &config,
                    &placement,
                    generator,
                    task,
                    args.task.as_deref(),
                    args.max_input_tokens,
                )
                .with_context(loading)?,
            ))
        } else {
            let (pipeline, model) = tasks::build(
                task,
                &files,
                &config,
                &placement,
                TaskOptions {
                    auto_truncate: args.auto_truncate,
                    max_input_tokens: args.max_input_tokens,
                },
            )
            .with_context(loading)?;
            let pass_tokens = match (args.max_batch_tokens, pipeline.cpu_pass_tokens()) {
                (None, Some(tokens)) if placement.device.is_cpu() => tokens,
                _ => max_batch_tokens,
            };
            let batcher = Batcher::start(
                model,
                BatcherConfig {
                    max_batch_tokens: pass_tokens,
                    max_queue: args.max_queue,
                    workers: args.workers,
                },
            )?;
            Engine::Encoder { pipeline, batcher }
        };
        Ok(InferenceService {
            engine,
            timeout: args.request_timeout(),
            record_jobs: Semaphore::new((args.max_queue / 2).max(1)),
            record_jobs_max: (args.max_queue / 2).max(1),
            task: Some(task),
            device: device_name,
            dtype: dtype.as_str(),
            served_name: args
                .model_id
                .clone()
                .unwrap_or_else(|| files.dir.display().to_string()),
            model_dir: files.dir,
            origin: files.origin,
            #[cfg(feature = "python")]
            script: std::sync::OnceLock::new(),
        })
    }

    /// A service without a native pipeline, for a model whose user script's `model_fn` loads
    /// the model itself: the DLC then builds no pipeline, reads no `config.json` and needs no
    /// HF_TASK, so neither do we (the folder may hold anything the script can read).
    pub fn without_pipeline(args: &ServeArgs, model_dir: &Path) -> Result<Self> {
        let device = crate::device::select(args.device, args.sm_num_gpus.as_deref())?;
        let dtype = crate::device::select_dtype(args.dtype, &device, &ModelConfig::default());
        Ok(InferenceService {
            engine: Engine::UserModel,
            timeout: args.request_timeout(),
            record_jobs: Semaphore::new(1),
            record_jobs_max: 1,
            task: args
                .task
                .as_deref()
                .and_then(|name| Task::from_hf_task(name).ok()),
            device: crate::device::describe(&device),
            dtype: dtype.as_str(),
            served_name: args
                .model_id
                .clone()
                .unwrap_or_else(|| model_dir.display().to_string()),
            model_dir: model_dir.to_path_buf(),
            origin: format!(
                "local directory {} (loaded by its model_fn)",
                model_dir.display()
            ),
            #[cfg(feature = "python")]
            script: std::sync::OnceLock::new(),
        })
    }

    /// The task's name, or `custom` when the user script's model serves it.
    pub fn task_name(&self) -> &'static str {
        self.task.map_or("custom", |task| task.name())
    }

    /// Whether a CSV body can carry this task's inputs (the DLC refuses it for zero-shot).
    pub fn pipeline_accepts_csv(&self) -> bool {
        match &self.engine {
            Engine::Encoder { pipeline, .. } => pipeline.accepts_csv(),
            Engine::Generation(_) | Engine::UserModel => true,
            Engine::Speech(_) | Engine::Caption(_) | Engine::Diffusion(_) => false,
        }
    }

    /// Runs one request body (already decoded to JSON; `size`: its bytes) through the task;
    /// generation may answer with a stream of events. Pre- and post-processing run as
    /// [`cpu_work`], off the async threads when large.
    pub async fn reply(&self, body: Value, size: usize) -> Result<Reply, ServerError> {
        let (pipeline, batcher) = match &self.engine {
            Engine::Encoder { pipeline, batcher } => (pipeline.clone(), batcher),
            Engine::UserModel => return Err(no_pipeline()),
            Engine::Speech(speech) => {
                let (inputs, parameters) = split_body(body)?;
                return Ok(Reply::Json(
                    speech.run_json(inputs, parameters, self.timeout).await?,
                ));
            }
            Engine::Diffusion(diffusion) => {
                let (inputs, parameters) = split_body(body)?;
                let picture = diffusion.run(inputs, parameters, self.timeout).await?;
                return Ok(Reply::Image(picture));
            }
            Engine::Caption(captioner) => {
                let request = cpu_work(offload::ALWAYS, {
                    let captioner = captioner.clone();
                    move || {
                        let (inputs, parameters) = split_body(body)?;
                        captioner.prepare(inputs, parameters)
                    }
                })
                .await?;
                return Ok(Reply::Json(captioner.run(request, self.timeout).await?));
            }
            Engine::Generation(generation) => {
                let generation = generation.clone();
                if let Some(endpoint) =
                    openai::endpoint_of(&body).filter(|_| generation.is_text_generation())
                {
                    // TGI's and vLLM's SageMaker routes: OpenAI's APIs on /invocations.
                    let request = openai::parse(endpoint, body)?;
                    let name = self.served_name.clone();
                    return self.openai(request, name).await;
                }
                // A chat template can take long on a short body: always off the async threads.
                let request = cpu_work(offload::ALWAYS, {
                    let generation = generation.clone();
                    move || {
                        // TGI also takes `stream` at the top level of the body.
                        let mut body = body;
                        let stream = body.as_object_mut().and_then(|o| o.shift_remove("stream"));
                        let (inputs, parameters) = split_body(body)?;
                        generation.prepare(inputs, parameters, stream)
                    }
                })
                .await?;
                return Ok(if request.stream() {
                    Reply::Events(generation.stream(request, self.timeout)?)
                } else {
                    Reply::Json(generation.run(request, self.timeout).await?)
                });
            }
        };
        let prepared = cpu_work(size, move || {
            let (inputs, parameters) = split_body(body)?;
            pipeline.prepare(inputs, parameters)
        })
        .await?;
        self.compute(batcher, prepared, size).await
    }

    /// Runs a raw image body through an image task (any other task refuses it).
    pub async fn reply_image(&self, body: axum::body::Bytes) -> Result<Reply, ServerError> {
        if let Engine::Caption(captioner) = &self.engine {
            let request = cpu_work(offload::ALWAYS, {
                let captioner = captioner.clone();
                move || captioner.prepare_image(&body)
            })
            .await?;
            return Ok(Reply::Json(captioner.run(request, self.timeout).await?));
        }
        let Engine::Encoder { pipeline, batcher } = &self.engine else {
            return Err(ServerError::bad_request(format!(
                "{} takes a JSON body; an image body is for the image tasks",
                self.task_name()
            )));
        };
        let pipeline = pipeline.clone();
        let size = body.len();
        // Decoding and resizing take long on small bodies: always off the async threads.
        let prepared = cpu_work(offload::ALWAYS, move || pipeline.prepare_image(&body)).await?;
        self.compute(batcher, prepared, size).await
    }

    /// Runs a raw audio body through speech recognition (any other task refuses it).
    pub async fn reply_audio(&self, body: axum::body::Bytes) -> Result<Reply, ServerError> {
        let Engine::Speech(speech) = &self.engine else {
            return Err(ServerError::bad_request(format!(
                "{} takes a JSON body; an audio body is for automatic-speech-recognition",
                self.task_name()
            )));
        };
        Ok(Reply::Json(speech.run_audio(&body, self.timeout).await?))
    }

    /// The batcher's forward passes for a prepared request, then its `finish` step.
    async fn compute(
        &self,
        batcher: &Batcher,
        prepared: tasks::Prepared,
        size: usize,
    ) -> Result<Reply, ServerError> {
        let rows = batcher.submit(prepared.sequences)?;
        let rows = match tokio::time::timeout(self.timeout, rows).await {
            Err(_) => return Err(ServerError::Timeout(self.timeout.as_secs())),
            Ok(Err(_)) => {
                return Err(ServerError::Internal(
                    "the model worker dropped the request".into(),
                ))
            }
            Ok(Ok(Err(error))) => return Err(error.into()),
            Ok(Ok(Ok(rows))) => rows,
        };
        let finish = prepared.finish;
        Ok(Reply::Json(cpu_work(size, move || finish(rows)).await?))
    }
}

impl InferenceService {
    /// The text-generation engine, for the OpenAI and TGI routes (a 400 for other tasks).
    pub fn text_generation(&self) -> Result<&Arc<TextGeneration>, ServerError> {
        match &self.engine {
            Engine::Generation(generation) if generation.is_text_generation() => Ok(generation),
            _ => Err(ServerError::bad_request(format!(
                "this route serves text-generation models; this endpoint serves {}: send its requests to /invocations",
                self.task_name()
            ))),
        }
    }

    /// Answers an OpenAI request; `model`: the name the answer gives.
    pub async fn openai(
        &self,
        request: openai::OpenAiRequest,
        model: String,
    ) -> Result<Reply, ServerError> {
        let generation = self.text_generation()?;
        Ok(
            match openai::reply(generation, request, model, self.timeout).await? {
                openai::OpenAiReply::Json(value) => Reply::Json(value),
                openai::OpenAiReply::Events(events) => Reply::Events(events),
            },
        )
    }

    /// The per-request deadline (`SAGEMAKER_MODEL_SERVER_TIMEOUT`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// What runs a task: an encoder pipeline on the dynamic batcher, or text generation on the
/// continuous-batching generator.
enum Engine {
    Encoder {
        pipeline: Arc<dyn Pipeline>,
        batcher: Batcher,
    },
    Generation(Arc<TextGeneration>),
    /// Speech recognition on its own generation scheduler.
    Speech(Arc<SpeechRecognition>),
    /// Image-to-text on its own generation scheduler.
    Caption(Arc<ImageToText>),
    /// Text-to-image: one denoising run at a time.
    Diffusion(Arc<TextToImage>),
    /// The user script's `model_fn` loaded the model; its handlers answer every invocation.
    UserModel,
}

/// The task of a model's files: HF_TASK, else text-to-image for a diffusers folder (the DLC's
/// third rule: no config.json but a model_index.json), else inferred from config.json. A
/// diffusers folder serves text-to-image only, and text-to-image needs one.
fn task_of(args: &ServeArgs, files: &ModelFiles, config: &ModelConfig) -> Result<Task> {
    let diffusers = files.config.ends_with(crate::source::MODEL_INDEX);
    let task = match args.task.as_deref().filter(|t| !t.trim().is_empty()) {
        None if diffusers => Task::TextToImage,
        _ => resolve_task(
            args.task.as_deref(),
            config,
            files.optional("modules.json").is_some(),
        )?,
    };
    tracing::info!("task: {task}");
    if diffusers != (task == Task::TextToImage) {
        anyhow::bail!(
            "{task} needs {}",
            if diffusers {
                "a transformers model folder (config.json); this one is a diffusers pipeline (model_index.json), which serves text-to-image"
            } else {
                "a diffusers pipeline folder (model_index.json)"
            }
        );
    }
    let network = if diffusers {
        None
    } else {
        Some(crate::registry::network(&config.model_type, task)?)
    };
    if let (Some(network), Some(_)) = (network, &config.auto_map) {
        tracing::warn!("config.json's auto_map names remote code (trust_remote_code): it is not run; the built-in {network:?} network serves model_type `{}` instead", config.model_type);
    }
    Ok(task)
}

/// What `SERVER_QUANTIZE` does for `task`, in the log.
fn log_quantize(quantize: Option<Quantize>, task: Task) {
    let vision = matches!(
        task,
        Task::ImageClassification
            | Task::ZeroShotImageClassification
            | Task::ImageFeatureExtraction
            | Task::ObjectDetection
            | Task::ImageToText
    );
    match quantize {
        Some(Quantize::Int8) if vision => tracing::info!(
            "SERVER_QUANTIZE=int8: the dense layers of ViT-family image encoders (ViT, DeiT, DINOv2, CLIP, SigLIP, YOLOS), ConvNeXt's pointwise layers and ResNet's convolutions (DETR's backbone too) run in int8 on the CPU; DETR's transformer runs unquantized"
        ),
        Some(Quantize::Int8) if task == Task::AutomaticSpeechRecognition => tracing::info!(
            "SERVER_QUANTIZE=int8: a CTC model's transformer layers run in int8 on the CPU (its convolutions and attention unquantized); Whisper runs unquantized (SERVER_DTYPE=bfloat16 is its reduced precision)"
        ),
        Some(quantize) if task.generates() && task != Task::TextGeneration => {
            tracing::warn!("SERVER_QUANTIZE={} applies to text-generation decoders and encoders; the {task} encoder-decoder runs unquantized", quantize.name())
        }
        Some(Quantize::Int8) if task.generates() => tracing::info!(
            "SERVER_QUANTIZE=int8 on a decoder: its dense weights in Q8_0 blocks (8 bits, a scale per 32 weights)"
        ),
        Some(quantize @ (Quantize::Q8_0 | Quantize::Q4K)) if !task.generates() => {
            tracing::warn!("SERVER_QUANTIZE={} applies to text-generation decoders (int8 to encoders); the {task} model runs unquantized", quantize.name())
        }
        _ => {}
    }
}

/// What a request that only a native pipeline could answer gets from a model that has none.
fn no_pipeline() -> ServerError {
    ServerError::bad_request(
        "this model is loaded by its custom inference code (model_fn) and has no native pipeline: send its requests to /invocations",
    )
}

/// A response: one JSON value, or server-sent events (`"stream": true` generation).
pub enum Reply {
    Json(Value),
    /// A generated image (text-to-image), encoded as the response's `Accept` asks.
    Image(Picture),
    Events(tokio::sync::mpsc::Receiver<StreamEvent>),
}

/// The DLC's `inputs = data.pop("inputs", data)` then `parameters = data.pop("parameters", None)`:
/// without `inputs`, the rest of the object is the input.
pub fn split_body(body: Value) -> Result<(Value, Option<Value>), ServerError> {
    match body {
        Value::Object(mut map) => {
            let inputs = map.shift_remove("inputs");
            let parameters = map.shift_remove("parameters");
            Ok((inputs.unwrap_or(Value::Object(map)), parameters))
        }
        other => Err(ServerError::bad_request(format!(
            "The request body must be a JSON object such as {{\"inputs\": ..., \"parameters\": {{...}}}}, got {}",
            json_type(&other)
        ))),
    }
}

/// `HF_TASK`, else the DLC's inference from `config.json` `architectures[0]`. Where the DLC
/// would give up, a sentence-transformers folder (`modules.json`) is served as
/// `sentence-embeddings`.
pub fn resolve_task(
    hf_task: Option<&str>,
    config: &ModelConfig,
    sentence_transformers: bool,
) -> Result<Task> {
    if let Some(name) = hf_task.filter(|t| !t.trim().is_empty()) {
        return Task::from_hf_task(name);
    }
    let architecture = config
        .architecture()
        .ok_or_else(|| anyhow!("HF_TASK is not set and config.json has no `architectures` to infer the task from; set HF_TASK"))?;
    match Task::infer_from_architecture(architecture) {
        Err(_) if sentence_transformers => {
            tracing::info!("HF_TASK is not set and `{architecture}` names no task; modules.json marks a sentence-transformers model: serving sentence-embeddings");
            Ok(Task::SentenceEmbeddings)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_split_follows_the_dlc() {
        let (i, p) =
            split_body(json!({"inputs": "a", "parameters": {"top_k": 1}, "x": 1})).unwrap();
        assert_eq!((i, p), (json!("a"), Some(json!({"top_k": 1}))));
        let (i, p) =
            split_body(json!({"text": "a", "text_pair": "b", "parameters": null})).unwrap();
        assert_eq!(
            (i, p),
            (json!({"text": "a", "text_pair": "b"}), Some(Value::Null))
        );
        assert!(split_body(json!("a"))
            .unwrap_err()
            .to_string()
            .contains("got a string"));
        assert!(split_body(json!(["a"]))
            .unwrap_err()
            .to_string()
            .contains("got an array"));
    }
}
