//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x / 2.x configure it, on the CPU over
//! channels-last maps (`parts`): the timestep's sinusoidal embedding, down blocks (ResNets,
//! spatial transformers, a strided convolution), the mid block, up blocks fed the down path's
//! states (their upsampling read through the next convolution), and the output convolution.

use anyhow::{Context, Result};

use super::config::UnetConfig;
use super::parts::{conv, group_norm, linear, Resnet, SpatialTransformer};
use crate::kernels::{self, Activation, FeatureMaps, GroupNorm, PackedConv2d, PackedLinear};
use crate::models::weights::WeightStore;

/// The down path's newest state (conv_in's output is always there).
fn latest(skips: &[FeatureMaps]) -> &FeatureMaps {
    skips.last().expect("the input convolution's state")
}

/// A down or up block: ResNets, each followed by a spatial transformer in the cross-attention
/// blocks, then the resampling convolution (none in the last block).
struct Block {
    resnets: Vec<Resnet>,
    attentions: Vec<SpatialTransformer>,
    resample: Option<PackedConv2d>,
}

impl Block {
    fn load(
        store: &WeightStore,
        config: &UnetConfig,
        layers: usize,
        heads: Option<(usize, usize)>,
        resample: Option<(&str, usize)>,
    ) -> Result<Self> {
        let groups = config.norm_num_groups;
        Ok(Block {
            resnets: (0..layers)
                .map(|j| {
                    Resnet::load(
                        &store.sub(&format!("resnets.{j}.")),
                        groups,
                        config.norm_eps,
                        true,
                        1.0,
                    )
                })
                .collect::<Result<_>>()?,
            attentions: match heads {
                Some((heads, depth)) => (0..layers)
                    .map(|j| {
                        SpatialTransformer::load(
                            &store.sub(&format!("attentions.{j}.")),
                            heads,
                            depth,
                            groups,
                        )
                    })
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            },
            // diffusers pads the downsampler by `downsample_padding` and the upsampler's
            // convolution always by 1.
            resample: resample
                .map(|(name, stride)| {
                    let padding = if stride == 2 {
                        config.downsample_padding
                    } else {
                        1
                    };
                    conv(store, name, stride, padding)
                })
                .transpose()?,
        })
    }

    /// ResNet `j` and its transformer, if any.
    fn layer(
        &self,
        j: usize,
        x: &FeatureMaps,
        time: &[f32],
        text: &[f32],
        tokens: usize,
    ) -> FeatureMaps {
        let h = self.resnets[j].forward(x, Some(time));
        match self.attentions.get(j) {
            Some(attention) => attention.forward(&h, text, tokens),
            None => h,
        }
    }
}

pub struct Unet {
    conv_in: PackedConv2d,
    time_linear_1: PackedLinear,
    time_linear_2: PackedLinear,
    /// Width of the sinusoidal timestep embedding (the first block's channels).
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    center_input_sample: bool,
    down: Vec<Block>,
    mid_resnets: [Resnet; 2],
    mid_attention: SpatialTransformer,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: PackedConv2d,
}

impl Unet {
    /// `config`: checked by `UnetConfig::candle` (the same blocks are supported).
    pub fn load(store: &WeightStore, config: &UnetConfig) -> Result<Self> {
        let n = config.block_out_channels.len();
        let heads = config
            .num_attention_heads
            .as_ref()
            .unwrap_or(&config.attention_head_dim);
        let cross = |i: usize| -> Result<Option<(usize, usize)>> {
            Ok(match config.down_block_types[i].as_str() {
                "CrossAttnDownBlock2D" => {
                    Some((heads.at(i)?, config.transformer_layers_per_block.at(i)?))
                }
                _ => None,
            })
        };
        let block = |path: String, layers: usize, cross_block: usize, resample| {
            let cross = cross(cross_block)?;
            Block::load(&store.sub(&path), config, layers, cross, resample).context(path)
        };
        let down = (0..n)
            .map(|i| {
                let resample = (i + 1 < n).then_some(("downsamplers.0.conv", 2));
                block(
                    format!("down_blocks.{i}."),
                    config.layers_per_block,
                    i,
                    resample,
                )
            })
            .collect::<Result<_>>()?;
        let up = (0..n)
            .map(|i| {
                let resample = (i + 1 < n).then_some(("upsamplers.0.conv", 1));
                block(
                    format!("up_blocks.{i}."),
                    config.layers_per_block + 1,
                    n - 1 - i,
                    resample,
                )
            })
            .collect::<Result<_>>()?;
        let mid = store.sub("mid_block.");
        let mid_resnet = |j: usize| {
            Resnet::load(
                &mid.sub(&format!("resnets.{j}.")),
                config.norm_num_groups,
                config.norm_eps,
                true,
                config.mid_block_scale_factor,
            )
        };
        let mid_heads = heads.at(n - 1)?;
        Ok(Unet {
            conv_in: conv(store, "conv_in", 1, 1)?,
            time_linear_1: linear(store, "time_embedding.linear_1", true)?,
            time_linear_2: linear(store, "time_embedding.linear_2", true)?,
            time_channels: config.block_out_channels[0],
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            center_input_sample: config.center_input_sample,
            down,
            mid_resnets: [mid_resnet(0)?, mid_resnet(1)?],
            mid_attention: SpatialTransformer::load(
                &mid.sub("attentions.0."),
                mid_heads,
                config.transformer_layers_per_block.at(n - 1)?,
                config.norm_num_groups,
            )
            .context("the mid block")?,
            up,
            norm_out: group_norm(
                store,
                "conv_norm_out",
                config.norm_num_groups,
                config.norm_eps,
            )?,
            conv_out: conv(store, "conv_out", 1, 1)?,
        })
    }

    /// diffusers' `get_timestep_embedding` (in f32, as torch computes it), one row per image.
    fn timestep_embedding(&self, timestep: f64, images: usize) -> Vec<f32> {
        let half = self.time_channels / 2;
        let log_period = -(10000f64.ln() as f32);
        let denominator = (half as f64 - self.freq_shift) as f32;
        let t = timestep as f32;
        let args: Vec<f32> = (0..half)
            .map(|i| t * (log_period * i as f32 / denominator).exp())
            .collect();
        let (sin, cos) = (args.iter().map(|a| a.sin()), args.iter().map(|a| a.cos()));
        let mut row: Vec<f32> = if self.flip_sin_to_cos {
            cos.chain(sin).collect()
        } else {
            sin.chain(cos).collect()
        };
        row.resize(self.time_channels, 0.0); // an odd width is zero-padded
        row.repeat(images)
    }

    /// The noise prediction for `latents` at `timestep`, conditioned on `text`
    /// ([images][tokens][cross-attention width]).
    pub fn forward(
        &self,
        latents: &FeatureMaps,
        timestep: f64,
        text: &[f32],
        tokens: usize,
    ) -> FeatureMaps {
        let images = latents.images;
        let mut time = self
            .time_linear_1
            .forward(&self.timestep_embedding(timestep, images), images);
        kernels::activate(&mut time, Activation::Silu);
        let mut time = self.time_linear_2.forward(&time, images);
        // Every ResNet takes the embedding through its own SiLU first.
        kernels::activate(&mut time, Activation::Silu);

        let centered;
        let input = if self.center_input_sample {
            let mut x = latents.clone();
            x.data.iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
            centered = x;
            &centered
        } else {
            latents
        };
        // The down path's states, each the input of the next layer and kept for the up path.
        let mut skips = vec![self.conv_in.forward(input)];
        for block in &self.down {
            for j in 0..block.resnets.len() {
                let h = block.layer(j, latest(&skips), &time, text, tokens);
                skips.push(h);
            }
            if let Some(downsample) = &block.resample {
                let h = downsample.forward(latest(&skips));
                skips.push(h);
            }
        }
        let mut x = self.mid_resnets[0].forward(latest(&skips), Some(&time));
        x = self.mid_attention.forward(&x, text, tokens);
        x = self.mid_resnets[1].forward(&x, Some(&time));
        for block in &self.up {
            for j in 0..block.resnets.len() {
                let skip = skips.pop().expect("a skip state per up-block ResNet");
                x = block.layer(j, &x.concat_channels(&skip), &time, text, tokens);
            }
            if let Some(upsample) = &block.resample {
                // To the next skip state's size: twice this one, or the odd size the down path
                // rounded up from (diffusers' `upsample_size`).
                let size = skips
                    .last()
                    .map_or((2 * x.height, 2 * x.width), |s| (s.height, s.width));
                x = upsample.forward_upsampled(&x, Some(size));
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&x, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{component_weights, Weights};
    use candle_core::Device;
    use serde_json::Value;
    use std::path::Path;

    fn floats(v: &Value) -> Vec<f32> {
        match v {
            Value::Array(items) => items.iter().flat_map(floats).collect(),
            other => vec![other.as_f64().expect("a number") as f32],
        }
    }

    /// An SD 2.x-style UNet (linear projections, heads per block, two transformer layers in a
    /// block) against diffusers' own noise predictions
    /// (models/make_text_to_image_fixtures.py unet): odd latent sizes, one and two images.
    #[test]
    fn linear_projection_unet_matches_diffusers() -> Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("models/tiny/sd-unet-linear");
        let config: UnetConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.join("unet/config.json"))?)?;
        assert!(config.use_linear_projection);
        config.candle()?; // the same checks as a served folder
        let store = WeightStore::load(
            &Weights::Safetensors(component_weights(&dir, "unet")?),
            &Device::Cpu,
        )?;
        let unet = Unet::load(&store, &config)?;
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(
            root.join("models/golden/text-to-image/sd-unet-linear.json"),
        )?)?;
        for record in golden["records"].as_array().unwrap() {
            let latents = &record["latents"];
            let images = latents.as_array().unwrap().len();
            let height = latents[0][0].as_array().unwrap().len();
            let width = latents[0][0][0].as_array().unwrap().len();
            let maps = FeatureMaps::from_nchw(images, 4, height, width, &floats(latents));
            let text = floats(&record["text"]);
            let timestep = record["timestep"].as_f64().unwrap();
            let ours = unet.forward(&maps, timestep, &text, 77).to_nchw();
            let theirs = floats(&record["noise"]);
            assert_eq!(ours.len(), theirs.len());
            let scale = theirs.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = ours
                .iter()
                .zip(&theirs)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{images} x {height} x {width} at {timestep}: {worst} (of {scale})"
            );
        }
        Ok(())
    }
}
