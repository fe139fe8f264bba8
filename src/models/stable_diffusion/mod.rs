//! Stable Diffusion 1.x / 2.x from a diffusers folder (`model_index.json`): the text encoder
//! (`text_encoder/`, a `CLIPTextModel`: ours, `models::vision::clip`), the denoising UNet
//! (`unet/`, `UNet2DConditionModel`) and the VAE's decoder (`vae/`, `AutoencoderKL`) in
//! diffusers' weight names, configured from each folder's `config.json`, and the scheduler
//! (`scheduler/`: PNDM or DDIM, ours). f32 throughout. On the CPU the UNet and the VAE are ours
//! (`unet`, `vae`: channels-last maps on the packed kernels); on other devices, and with
//! `SAGEMAKER_HF_GENERIC_KERNELS=1`, candle-transformers' networks.

mod config;
mod ddim;
mod parts;
pub mod pndm;
mod schedule;
mod unet;
mod vae;

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::unet_2d::{
    UNet2DConditionModel, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde_json::Value;

use self::config::{UnetConfig, VaeConfig};
use self::ddim::Ddim;
use self::pndm::{Pndm, PndmRun};
use self::schedule::SchedulerConfig;
use self::unet::Unet;
use self::vae::VaeDecoder;
use super::vision::clip::ClipTextModel;
use super::weights::WeightStore;
use crate::kernels::{self, FeatureMaps};
use crate::source::{component_weights, ModelFiles, Weights};

/// The file that marks a diffusers pipeline folder.
pub use crate::source::MODEL_INDEX;

/// The UNet and the VAE: ours on the CPU, candle-transformers' elsewhere.
enum Networks {
    Host {
        unet: Box<Unet>,
        vae: Box<VaeDecoder>,
    },
    Candle {
        unet: Box<UNet2DConditionModel>,
        vae: Box<AutoEncoderKL>,
    },
}

pub struct StableDiffusion {
    pub text_encoder: ClipTextModel,
    networks: Networks,
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
        // What candle's UNet could not run is refused for ours too (the same blocks are supported).
        let candle_config = unet_config.candle()?;
        let networks = if matches!(device, Device::Cpu) && !kernels::generic_kernels_forced() {
            let store = |name: &str| -> Result<WeightStore> {
                WeightStore::load(&Weights::Safetensors(component_weights(dir, name)?), device)
            };
            Networks::Host {
                unet: Box::new(
                    Unet::load(&store("unet")?, &unet_config).context("the UNet (unet/)")?,
                ),
                vae: Box::new(
                    VaeDecoder::load(&store("vae")?, &vae_config).context("the VAE (vae/)")?,
                ),
            }
        } else {
            Self::candle_networks(dir, device, &unet_config, candle_config, &vae_config)?
        };
        let vae_scale = 1 << vae_config.block_out_channels.len().saturating_sub(1);
        tracing::info!(
            "text-to-image network: Stable Diffusion, UNet blocks {:?}, VAE x{vae_scale}, {scheduler_class}",
            unet_config.block_out_channels
        );
        Ok(StableDiffusion {
            text_encoder,
            networks,
            scheduler,
            vae_scale,
            sample_size: unet_config.sample_size.unwrap_or(64),
            latent_channels: vae_config.latent_channels,
            scaling_factor: vae_config.scaling_factor,
            device: device.clone(),
        })
    }

    /// candle-transformers' UNet and VAE (devices other than the CPU).
    fn candle_networks(
        dir: &Path,
        device: &Device,
        unet_config: &UnetConfig,
        candle_config: UNet2DConditionModelConfig,
        vae_config: &VaeConfig,
    ) -> Result<Networks> {
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
            candle_config,
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
        Ok(Networks::Candle {
            unet: Box::new(unet),
            vae: Box::new(vae),
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
        match &self.networks {
            Networks::Candle { unet, .. } => Ok(unet.forward(latents, timestep as f64, text)?),
            Networks::Host { unet, .. } => {
                let maps = host_maps(latents)?;
                let (_, tokens, _) = text.dims3()?;
                let text = text.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let noise = unet.forward(&maps, timestep as f64, &text, tokens);
                Ok(Tensor::from_vec(
                    noise.to_nchw(),
                    latents.shape(),
                    latents.device(),
                )?)
            }
        }
    }

    /// The VAE's image of `latents`, as the pipelines post-process it: RGB bytes, row after
    /// row, `(image / 2 + 0.5).clamp(0, 1) * 255` rounded; with its width and height.
    pub fn decode(&self, latents: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
        let latents = (latents / self.scaling_factor)?;
        // The image channels last, [-1, 1].
        let (values, channels, height, width) = match &self.networks {
            Networks::Candle { vae, .. } => {
                let image = vae.decode(&latents)?;
                let (_, channels, height, width) = image.dims4()?;
                let values: Vec<f32> = image
                    .squeeze(0)?
                    .permute((1, 2, 0))?
                    .flatten_all()?
                    .to_vec1()?;
                (values, channels, height, width)
            }
            Networks::Host { vae, .. } => {
                let image = vae.forward(&host_maps(&latents)?);
                (image.data, image.channels, image.height, image.width)
            }
        };
        if channels != 3 {
            bail!("the VAE made {channels} channels, not RGB");
        }
        // numpy's round (half to even) of the float32 values times 255, as `numpy_to_pil`.
        let bytes = values
            .into_iter()
            .map(|v| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
            .collect();
        Ok((bytes, width, height))
    }
}

/// An NCHW tensor's values as channels-last maps.
fn host_maps(x: &Tensor) -> Result<FeatureMaps> {
    let (images, channels, height, width) = x.dims4()?;
    let values = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    Ok(FeatureMaps::from_nchw(
        images, channels, height, width, &values,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Our UNet and VAE against candle-transformers' (the networks other devices run) on the
    /// tiny seeded folder the goldens use: square and odd latent sizes (the up path's
    /// `upsample_size`), with and without guidance's second image.
    #[test]
    fn host_networks_match_candles() -> Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/sd-pndm");
        let device = Device::Cpu;
        let ours = StableDiffusion::load(&dir, &device)?;
        assert!(matches!(ours.networks, Networks::Host { .. }));
        let unet_config: UnetConfig = read_json(&dir.join("unet/config.json"))?;
        let vae_config: VaeConfig = read_json(&dir.join("vae/config.json"))?;
        let theirs = StableDiffusion {
            networks: StableDiffusion::candle_networks(
                &dir,
                &device,
                &unet_config,
                unet_config.candle()?,
                &vae_config,
            )?,
            ..StableDiffusion::load(&dir, &device)?
        };
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 1.5)
                .collect()
        };
        for (images, height, width) in [(1, 4, 4), (2, 4, 4), (1, 5, 6), (2, 7, 3)] {
            let latents = Tensor::from_vec(
                values(images * 4 * height * width, height),
                (images, 4, height, width),
                &device,
            )?;
            let text = Tensor::from_vec(values(images * 77 * 32, 9), (images, 77, 32), &device)?;
            for timestep in [1, 501, 981] {
                let a = ours.predict_noise(&latents, timestep, &text)?;
                let b = theirs.predict_noise(&latents, timestep, &text)?;
                let worst = (a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(
                    worst <= 1e-4 * scale.max(1.0),
                    "{images} x {height} x {width} at {timestep}: {worst} (of {scale})"
                );
            }
            let one = latents.narrow(0, 0, 1)?;
            let (a, b) = (ours.decode(&one)?, theirs.decode(&one)?);
            assert_eq!((a.1, a.2), (b.1, b.2));
            let worst = a.0.iter().zip(&b.0).map(|(x, y)| x.abs_diff(*y)).max();
            assert!(worst <= Some(1), "VAE {height} x {width}: {worst:?}");
        }
        Ok(())
    }
}
