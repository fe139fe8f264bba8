//! Stable Diffusion 1.x / 2.x from a diffusers folder (`model_index.json`): the text encoder
//! (`text_encoder/`, a `CLIPTextModel`: ours, `models::vision::clip`), the denoising UNet
//! (`unet/`, `UNet2DConditionModel`) and the VAE's decoder (`vae/`, `AutoencoderKL`) —
//! candle-transformers' networks in diffusers' weight names, configured from each folder's
//! `config.json` — and the scheduler (`scheduler/`: PNDM or DDIM, ours). f32 throughout.

mod ddim;
pub mod pndm;
mod schedule;

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde::Deserialize;
use serde_json::Value;

use self::ddim::Ddim;
use self::pndm::{Pndm, PndmRun};
use self::schedule::SchedulerConfig;
use super::vision::clip::ClipTextModel;
use super::weights::WeightStore;
use crate::source::{component_weights, ModelFiles, Weights};

/// The file that marks a diffusers pipeline folder.
pub use crate::source::MODEL_INDEX;

/// `unet/config.json`: what a Stable Diffusion UNet sets (diffusers' defaults otherwise).
#[derive(Debug, Clone, Deserialize)]
struct UnetConfig {
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default = "yes")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    #[serde(default = "two")]
    layers_per_block: usize,
    #[serde(default = "one")]
    downsample_padding: usize,
    #[serde(default = "one_f")]
    mid_block_scale_factor: f64,
    #[serde(default = "groups")]
    norm_num_groups: usize,
    #[serde(default = "eps")]
    norm_eps: f64,
    cross_attention_dim: usize,
    /// Heads per block (diffusers' legacy name: `num_attention_heads` wins when set).
    #[serde(default = "heads")]
    attention_head_dim: PerBlock,
    num_attention_heads: Option<PerBlock>,
    #[serde(default = "one_per_block")]
    transformer_layers_per_block: PerBlock,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default = "four")]
    in_channels: usize,
    #[serde(default = "four")]
    out_channels: usize,
    sample_size: Option<usize>,
    addition_embed_type: Option<String>,
    class_embed_type: Option<String>,
    time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    only_cross_attention: Value,
    mid_block_type: Option<String>,
}

/// A value for every block, or one for all.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn at(&self, i: usize) -> Result<usize> {
        match self {
            PerBlock::One(v) => Ok(*v),
            PerBlock::Each(v) => v.get(i).copied().context("a per-block list is too short"),
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn four() -> usize {
    4
}
fn one_f() -> f64 {
    1.0
}
fn groups() -> usize {
    32
}
fn eps() -> f64 {
    1e-5
}
fn heads() -> PerBlock {
    PerBlock::One(8)
}
fn one_per_block() -> PerBlock {
    PerBlock::One(1)
}

/// `vae/config.json`.
#[derive(Debug, Clone, Deserialize)]
struct VaeConfig {
    block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    layers_per_block: usize,
    #[serde(default = "four")]
    latent_channels: usize,
    #[serde(default = "groups")]
    norm_num_groups: usize,
    #[serde(default = "scaling")]
    scaling_factor: f64,
    #[serde(default = "yes")]
    use_quant_conv: bool,
    #[serde(default = "yes")]
    use_post_quant_conv: bool,
    #[serde(default = "three")]
    in_channels: usize,
    #[serde(default = "three")]
    out_channels: usize,
}

fn scaling() -> f64 {
    0.18215
}
fn three() -> usize {
    3
}

impl UnetConfig {
    /// candle's configuration, or what this UNet has that it cannot run (SDXL's added
    /// embeddings, inpainting's extra input channels, asymmetric blocks).
    fn candle(&self) -> Result<UNet2DConditionModelConfig> {
        if let Some(kind) = &self.addition_embed_type {
            bail!("a UNet with added embeddings (`addition_embed_type` {kind}: SDXL) is not supported yet; Stable Diffusion 1.x and 2.x are");
        }
        if self.class_embed_type.is_some() || self.time_cond_proj_dim.is_some() {
            bail!("a UNet with class or time-condition embeddings is not supported yet");
        }
        if self.in_channels != 4 || self.out_channels != 4 {
            bail!(
                "a UNet of {} input channels is not a text-to-image one (inpainting and image variations are not supported)",
                self.in_channels
            );
        }
        if self.only_cross_attention.as_bool() == Some(true) || self.only_cross_attention.is_array()
        {
            bail!("a UNet with only_cross_attention is not supported yet");
        }
        if self
            .mid_block_type
            .as_deref()
            .is_some_and(|t| t != "UNetMidBlock2DCrossAttn")
        {
            bail!(
                "mid_block_type {:?} is not supported yet",
                self.mid_block_type
            );
        }
        // candle-transformers' down and up blocks build their ResNets with 32 groups whatever
        // the config says (every Stable Diffusion has 32).
        if self.norm_num_groups != 32 {
            bail!(
                "a UNet with norm_num_groups {} is not supported (Stable Diffusion's 32 is)",
                self.norm_num_groups
            );
        }
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!("the UNet's block types do not match its {n} blocks");
        }
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        let blocks = (0..n)
            .map(|i| {
                let cross = match self.down_block_types[i].as_str() {
                    "CrossAttnDownBlock2D" => true,
                    "DownBlock2D" => false,
                    other => bail!("down block type {other} is not supported"),
                };
                let up_cross = match self.up_block_types[n - 1 - i].as_str() {
                    "CrossAttnUpBlock2D" => true,
                    "UpBlock2D" => false,
                    other => bail!("up block type {other} is not supported"),
                };
                if cross != up_cross {
                    bail!("the UNet's up blocks do not mirror its down blocks");
                }
                Ok(BlockConfig {
                    out_channels: self.block_out_channels[i],
                    use_cross_attn: cross
                        .then(|| self.transformer_layers_per_block.at(i))
                        .transpose()?,
                    attention_head_dim: heads.at(i)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UNet2DConditionModelConfig {
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks,
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: self.use_linear_projection,
        })
    }
}

pub struct StableDiffusion {
    pub text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoEncoderKL,
    pub scheduler: Scheduler,
    /// Pixels per latent along each side (2 to the VAE's number of down blocks less one).
    pub vae_scale: usize,
    /// The UNet's `sample_size`: the default image is `sample_size * vae_scale` square.
    pub sample_size: usize,
    latent_channels: usize,
    scaling_factor: f64,
    device: Device,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

impl StableDiffusion {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let index: Value = read_json(&dir.join(MODEL_INDEX))?;
        let scheduler_class = index
            .get("scheduler")
            .and_then(|s| s.get(1))
            .and_then(Value::as_str)
            .unwrap_or("");
        let scheduler_config: SchedulerConfig =
            read_json(&dir.join("scheduler/scheduler_config.json"))?;
        let scheduler = match scheduler_class {
            "PNDMScheduler" => Scheduler::Pndm(Pndm::new(scheduler_config)?),
            "DDIMScheduler" => Scheduler::Ddim(Ddim::new(scheduler_config)?),
            other => {
                bail!("scheduler {other} is not supported yet: PNDMScheduler and DDIMScheduler are")
            }
        };
        let text_config: Value = read_json(&dir.join("text_encoder/config.json"))?;
        let text_store = WeightStore::load(
            &Weights::Safetensors(component_weights(dir, "text_encoder")?),
            device,
        )?;
        let text_encoder = ClipTextModel::load(&text_config, &text_store)
            .context("the text encoder (text_encoder/)")?;
        let unet_config: UnetConfig = read_json(&dir.join("unet/config.json"))?;
        let vae_config: VaeConfig = read_json(&dir.join("vae/config.json"))?;
        if vae_config.norm_num_groups != 32 {
            bail!(
                "a VAE with norm_num_groups {} is not supported (Stable Diffusion's 32 is)",
                vae_config.norm_num_groups
            );
        }
        let var_builder = |name: &str| -> Result<candle_nn::VarBuilder<'static>> {
            let files = component_weights(dir, name)?;
            // SAFETY: the weight files are memory-mapped read-only; the model folder is not
            // written while the server runs (as for every checkpoint it serves).
            Ok(unsafe {
                candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)?
            })
        };
        let unet = UNet2DConditionModel::new(
            var_builder("unet")?,
            unet_config.in_channels,
            unet_config.out_channels,
            false,
            unet_config.candle()?,
        )
        .context("the UNet (unet/)")?;
        let vae = AutoEncoderKL::new(
            var_builder("vae")?,
            vae_config.in_channels,
            vae_config.out_channels,
            AutoEncoderKLConfig {
                block_out_channels: vae_config.block_out_channels.clone(),
                layers_per_block: vae_config.layers_per_block,
                latent_channels: vae_config.latent_channels,
                norm_num_groups: vae_config.norm_num_groups,
                use_quant_conv: vae_config.use_quant_conv,
                use_post_quant_conv: vae_config.use_post_quant_conv,
            },
        )
        .context("the VAE (vae/)")?;
        let vae_scale = 1 << vae_config.block_out_channels.len().saturating_sub(1);
        tracing::info!(
            "text-to-image network: Stable Diffusion, UNet blocks {:?}, VAE x{vae_scale}, {scheduler_class}",
            unet_config.block_out_channels
        );
        Ok(StableDiffusion {
            text_encoder,
            unet,
            vae,
            scheduler,
            vae_scale,
            sample_size: unet_config.sample_size.unwrap_or(64),
            latent_channels: vae_config.latent_channels,
            scaling_factor: vae_config.scaling_factor,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The latents' channels (the starting noise is [1, channels, height / scale, width / scale]).
    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// The UNet's noise prediction for `latents` [b, c, h, w] at `timestep`, conditioned on
    /// `text` [b, tokens, hidden].
    pub fn predict_noise(
        &self,
        latents: &Tensor,
        timestep: usize,
        text: &Tensor,
    ) -> Result<Tensor> {
        Ok(self.unet.forward(latents, timestep as f64, text)?)
    }

    /// The VAE's image of `latents`, as the pipelines post-process it: RGB bytes, row after
    /// row, `(image / 2 + 0.5).clamp(0, 1) * 255` rounded; with its width and height.
    pub fn decode(&self, latents: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
        let image = self.vae.decode(&(latents / self.scaling_factor)?)?;
        let image = ((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        let (_, channels, height, width) = image.dims4()?;
        if channels != 3 {
            bail!("the VAE made {channels} channels, not RGB");
        }
        let values: Vec<f32> = image
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_vec1()?;
        // numpy's round (half to even) of the float32 values times 255, as `numpy_to_pil`.
        let bytes = values
            .into_iter()
            .map(|v| (v * 255.0).round_ties_even() as u8)
            .collect();
        Ok((bytes, width, height))
    }
}

/// The pipeline's scheduler.
pub enum Scheduler {
    Pndm(Pndm),
    Ddim(Ddim),
}

/// One denoising run of a scheduler.
pub enum SchedulerRun<'a> {
    Pndm(PndmRun<'a>),
    Ddim {
        ddim: &'a Ddim,
        timesteps: Vec<usize>,
        steps: usize,
        eta: f64,
    },
}

impl Scheduler {
    /// `set_timesteps(steps)`; `eta`: DDIM's (PNDM takes none, as in diffusers).
    pub fn run(&self, steps: usize, eta: f64) -> Result<SchedulerRun<'_>> {
        Ok(match self {
            Scheduler::Pndm(pndm) => SchedulerRun::Pndm(pndm.run(steps)?),
            Scheduler::Ddim(ddim) => SchedulerRun::Ddim {
                ddim,
                timesteps: ddim.timesteps(steps)?,
                steps,
                eta,
            },
        })
    }
}

impl SchedulerRun<'_> {
    /// The timesteps the UNet runs at, in order.
    pub fn timesteps(&self) -> Vec<usize> {
        match self {
            SchedulerRun::Pndm(run) => run.timesteps.clone(),
            SchedulerRun::Ddim { timesteps, .. } => timesteps.clone(),
        }
    }

    /// `scheduler.step(noise_pred, t, latents)`: the previous latents (`noise`: standard
    /// normal draws of a tensor's shape, for DDIM's `eta` > 0).
    pub fn step(
        &mut self,
        model_output: &Tensor,
        timestep: usize,
        sample: &Tensor,
        noise: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match self {
            SchedulerRun::Pndm(run) => run.step(model_output, timestep, sample),
            SchedulerRun::Ddim {
                ddim, steps, eta, ..
            } => ddim.step(model_output, timestep, sample, *steps, *eta, noise),
        }
    }
}

/// Whether `files` are a diffusers pipeline folder.
pub fn is_diffusers(files: &ModelFiles) -> bool {
    files.dir.join(MODEL_INDEX).is_file()
}
