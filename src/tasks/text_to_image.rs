//! `text-to-image`, as the DLC serves a diffusers folder (`model_index.json`): its
//! `SMDiffusionPipelineForText2Image` calls `pipeline(prompt, num_images_per_prompt=1,
//! **parameters).images[0]` — `StableDiffusionPipeline.__call__` on CPU in float32: the prompt
//! (and the negative prompt, "" by default, when `guidance_scale` > 1) tokenized to the text
//! encoder's 77 positions (padded, truncated), encoded; the starting latents; per timestep of
//! the scheduler the UNet's noise prediction (unconditional and conditional in one batch,
//! combined with `guidance_scale`), the scheduler's step; the VAE's image of the latents. One
//! image per request (a list of prompts: the first one's, which is what the DLC returns).
//!
//! Parameters: `num_inference_steps` (50), `guidance_scale` (7.5), `negative_prompt`, `height` /
//! `width` (multiples of 8; the UNet's sample size x the VAE's scale by default), `eta` (not
//! used by PNDM, as in diffusers), `num_images_per_prompt` (dropped, as the DLC drops it); ours:
//! `seed` (the starting noise, our generator), `latents` (the starting latents themselves, a
//! nested list `[1][channels][height / 8][width / 8]`: what makes our image and diffusers' the
//! same). `SAGEMAKER_MODEL_SERVER_WORKERS` generations run at once, each on the blocking pool,
//! and stop at the deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::Tensor;
use rand::SeedableRng;
use serde_json::Value;

use super::params::{json_type, Params};
use crate::error::ServerError;
use crate::models::stable_diffusion::StableDiffusion;
use crate::source::ModelFiles;

const TASK: &str = "text-to-image";
const ACCEPTED: &[&str] = &[
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "height",
    "width",
    "eta",
    "num_images_per_prompt",
    "seed",
    "latents",
];
/// Steps one request may ask for (diffusers takes up to the 1000 training steps).
const MAX_STEPS: usize = 1000;
/// Pixels an image may have (1024 x 1024: the VAE's last activations alone are then half a GB
/// for Stable Diffusion's 128 channels).
const MAX_PIXELS: usize = 1024 * 1024;

/// A generated image: RGB bytes, row after row.
pub struct Picture {
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

impl Picture {
    /// The image file in `format`, as Pillow saves it for the DLC's `encode_image` (JPEG at
    /// its default quality, 75).
    pub fn encode(&self, format: image::ImageFormat) -> Result<Vec<u8>, ServerError> {
        let image =
            image::RgbImage::from_raw(self.width as u32, self.height as u32, self.rgb.clone())
                .ok_or_else(|| ServerError::Internal("an image of the wrong size".into()))?;
        let mut out = std::io::Cursor::new(Vec::new());
        let written = if format == image::ImageFormat::Jpeg {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75).encode_image(&image)
        } else {
            image.write_to(&mut out, format)
        };
        written.map_err(|e| ServerError::bad_request(format!("encoding the image: {e}")))?;
        Ok(out.into_inner())
    }

    /// The image as the DLC's JSON encoder writes one: a string of its base64 PNG.
    pub fn base64_png(&self) -> Result<Value, ServerError> {
        use base64::Engine;
        let png = self.encode(image::ImageFormat::Png)?;
        Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(png),
        ))
    }
}

pub struct TextToImage {
    model: Arc<StableDiffusion>,
    tokenizer: tokenizers::Tokenizer,
    /// What the prompts are padded with (the tokenizer's pad token, CLIP's end token by default).
    pad_id: u32,
    /// Generations running at once (`SAGEMAKER_MODEL_SERVER_WORKERS`: two fill the cores that
    /// one leaves idle between its layers, 1.2x the images/s on 2 cores); waiting requests are
    /// bounded by the queue.
    running: tokio::sync::Semaphore,
    waiting: tokio::sync::Semaphore,
    max_queue: usize,
}

/// A request's validated settings.
struct Settings {
    prompt: String,
    negative_prompt: String,
    steps: usize,
    guidance_scale: f64,
    height: usize,
    width: usize,
    seed: Option<u64>,
    latents: Option<Vec<f32>>,
    /// DDIM's noise weight (0: deterministic; PNDM ignores it).
    eta: f64,
}

impl TextToImage {
    pub fn load(
        files: &ModelFiles,
        device: &candle_core::Device,
        max_queue: usize,
        workers: usize,
    ) -> Result<Self> {
        let model = StableDiffusion::load(&files.dir, device)?;
        let tokenizer = tokenizers::Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", files.tokenizer.display()))?;
        // The tokenizer's pad token (`tokenizer/tokenizer_config.json`), else CLIP's end token.
        let info =
            super::tokenizer_info::TokenizerInfo::load(&tokenizer, &files.dir.join("tokenizer"));
        let pad_id = info
            .pad_id
            .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
            .ok_or_else(|| anyhow::anyhow!("the tokenizer has no pad token"))?;
        Ok(TextToImage {
            model: Arc::new(model),
            tokenizer,
            pad_id,
            running: tokio::sync::Semaphore::new(workers.max(1)),
            waiting: tokio::sync::Semaphore::new(max_queue.max(1)),
            max_queue: max_queue.max(1),
        })
    }

    /// Generates the image of `inputs` (a prompt, or a list of them: the first) under the
    /// request's deadline.
    pub async fn run(
        self: &Arc<Self>,
        inputs: Value,
        parameters: Option<Value>,
        deadline: Duration,
    ) -> Result<Picture, ServerError> {
        let started = Instant::now();
        let settings = self.settings(inputs, parameters)?;
        let _waiting = self
            .waiting
            .try_acquire()
            .map_err(|_| ServerError::Overloaded(self.max_queue))?;
        let remaining = deadline.saturating_sub(started.elapsed());
        let _running = tokio::time::timeout(remaining, self.running.acquire())
            .await
            .map_err(|_| ServerError::Timeout(deadline.as_secs()))?
            .map_err(|_| ServerError::Internal("the generation queue closed".into()))?;
        let this = self.clone();
        let until = started + deadline;
        let seconds = deadline.as_secs();
        // A client that goes away drops this future: its generation stops at the next step.
        let gone = GoneOnDrop(Arc::new(AtomicBool::new(false)));
        let client_gone = gone.0.clone();
        tokio::task::spawn_blocking(move || this.generate(&settings, until, seconds, &client_gone))
            .await
            .map_err(|e| ServerError::Internal(format!("the generation stopped: {e}")))?
            .map_err(|e| match e.downcast::<ServerError>() {
                Ok(error) => error,
                Err(e) => ServerError::Internal(format!("{e:#}")),
            })
    }

    fn settings(&self, inputs: Value, parameters: Option<Value>) -> Result<Settings, ServerError> {
        let prompt = match inputs {
            Value::String(prompt) => prompt,
            Value::Array(items) => match items.into_iter().next() {
                Some(Value::String(prompt)) => prompt,
                _ => return Err(bad_inputs("a list that does not start with a string")),
            },
            other => return Err(bad_inputs(json_type(&other))),
        };
        let mut p = Params::new(parameters, TASK)?;
        let default_side = self.model.sample_size * self.model.vae_scale;
        let steps = p.take_usize("num_inference_steps")?.unwrap_or(50);
        if steps == 0 || steps > MAX_STEPS {
            return Err(ServerError::bad_request(format!(
                "num_inference_steps must be from 1 to {MAX_STEPS}, got {steps}"
            )));
        }
        let guidance_scale = match p.take("guidance_scale") {
            None | Some(Value::Null) => 7.5,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(7.5),
            Some(other) => return Err(p.invalid("guidance_scale", "a number", &other)),
        };
        let negative_prompt = match p.take("negative_prompt") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(other) => return Err(p.invalid("negative_prompt", "a string", &other)),
        };
        let height = p.take_usize("height")?.unwrap_or(default_side);
        let width = p.take_usize("width")?.unwrap_or(default_side);
        if height % 8 != 0 || width % 8 != 0 || height == 0 || width == 0 {
            return Err(ServerError::bad_request(format!(
                "`height` and `width` have to be divisible by 8 but are {height} and {width}."
            )));
        }
        if height * width > MAX_PIXELS {
            return Err(ServerError::bad_request(format!(
                "a {width} x {height} image has more than {MAX_PIXELS} pixels"
            )));
        }
        let eta = match p.take("eta") {
            None | Some(Value::Null) => 0.0,
            Some(Value::Number(n)) if n.as_f64().is_some_and(|e| e >= 0.0) => {
                n.as_f64().unwrap_or(0.0)
            }
            Some(other) => return Err(p.invalid("eta", "a non-negative number", &other)),
        };
        p.take("num_images_per_prompt");
        let seed = p.take_usize("seed")?.map(|s| s as u64);
        let latents = match p.take("latents") {
            None | Some(Value::Null) => None,
            Some(value) => Some(self.latents(&value, height, width)?),
        };
        p.finish(ACCEPTED)?;
        Ok(Settings {
            prompt,
            negative_prompt,
            steps,
            guidance_scale,
            height,
            width,
            seed,
            latents,
            eta,
        })
    }

    /// `latents` as sent: a nested list of numbers shaped [1, channels, h, w].
    fn latents(&self, value: &Value, height: usize, width: usize) -> Result<Vec<f32>, ServerError> {
        let s = self.model.vae_scale;
        let shape = [1, self.model.latent_channels(), height / s, width / s];
        let mut values = Vec::with_capacity(shape.iter().product());
        fn flatten(v: &Value, depth: usize, shape: &[usize], out: &mut Vec<f32>) -> bool {
            match v {
                Value::Array(items) if depth < shape.len() && items.len() == shape[depth] => {
                    items.iter().all(|i| flatten(i, depth + 1, shape, out))
                }
                Value::Number(n) if depth == shape.len() => {
                    out.push(n.as_f64().unwrap_or(0.0) as f32);
                    true
                }
                _ => false,
            }
        }
        if !flatten(value, 0, &shape, &mut values) {
            return Err(ServerError::bad_request(format!(
                "`latents` must be a nested list of numbers of shape {shape:?} (for a {width} x {height} image)"
            )));
        }
        Ok(values)
    }

    /// The prompt's token ids, padded and truncated to the text encoder's positions.
    fn tokens(&self, text: &str) -> Result<Vec<u32>> {
        let len = self.model.text_encoder.positions();
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > len {
            // `truncation=True` keeps the end token last.
            let last = *ids.last().unwrap_or(&self.pad_id);
            ids.truncate(len - 1);
            ids.push(last);
        }
        ids.resize(len, self.pad_id);
        Ok(ids)
    }

    /// The denoising loop and the VAE (blocking).
    fn generate(
        &self,
        s: &Settings,
        until: Instant,
        deadline_secs: u64,
        client_gone: &AtomicBool,
    ) -> Result<Picture> {
        let model = &self.model;
        let device = model.device().clone();
        let guided = s.guidance_scale > 1.0;
        let mut texts = Vec::with_capacity(2);
        if guided {
            texts.push(self.tokens(&s.negative_prompt)?);
        }
        texts.push(self.tokens(&s.prompt)?);
        let text = model.text_encoder.last_hidden_state(&texts)?;
        let scale = model.vae_scale;
        let shape = (
            1,
            model.latent_channels(),
            s.height / scale,
            s.width / scale,
        );
        let mut rng = match s.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        // Standard normal draws shaped like `like`.
        let mut noise = |like: &Tensor| -> Result<Tensor> {
            let values: Vec<f32> = (0..like.elem_count())
                .map(|_| standard_normal(&mut rng))
                .collect();
            Ok(Tensor::from_vec(values, like.shape(), like.device())?)
        };
        let mut latents = match &s.latents {
            Some(values) => Tensor::from_vec(values.clone(), shape, &device)?,
            None => noise(&Tensor::zeros(shape, candle_core::DType::F32, &device)?)?,
        };
        let mut run = model.scheduler.run(s.steps, s.eta)?;
        for timestep in run.timesteps() {
            if Instant::now() > until {
                return Err(ServerError::Timeout(deadline_secs).into());
            }
            if client_gone.load(Ordering::Relaxed) {
                anyhow::bail!("the client went away");
            }
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let prediction = model.predict_noise(&input, timestep, &text)?;
            let prediction = if guided {
                let (uncond, cond) = (prediction.narrow(0, 0, 1)?, prediction.narrow(0, 1, 1)?);
                (&uncond + ((cond - &uncond)? * s.guidance_scale)?)?
            } else {
                prediction
            };
            latents = run.step(&prediction, timestep, &latents, &mut noise)?;
        }
        let (rgb, width, height) = model.decode(&latents)?;
        Ok(Picture { rgb, width, height })
    }
}

/// Set when the request's future is dropped (its client went away).
struct GoneOnDrop(Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut impl rand::Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn bad_inputs(got: &str) -> ServerError {
    ServerError::bad_request(format!(
        "{TASK} takes `inputs` as the prompt (a string), got {got}"
    ))
}
