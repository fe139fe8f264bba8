//! The decoding half of diffusers' `AutoencoderKL` on the CPU over channels-last maps (`parts`):
//! the post-quantisation convolution, the decoder's mid block (ResNet, single-head attention,
//! ResNet), its up blocks (ResNets, then a 2x nearest upsampling read through a convolution) and
//! the output convolution.

use anyhow::{Context, Result};

use super::config::VaeConfig;
use super::parts::{conv, group_norm, Resnet, VaeAttention};
use crate::kernels::{FeatureMaps, GroupNorm, PackedConv2d};
use crate::models::weights::WeightStore;

/// diffusers' VAE blocks normalise with this epsilon.
const EPS: f64 = 1e-6;

struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<PackedConv2d>,
}

pub struct VaeDecoder {
    post_quant_conv: Option<PackedConv2d>,
    conv_in: PackedConv2d,
    mid_resnets: [Resnet; 2],
    mid_attention: Option<VaeAttention>,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: PackedConv2d,
}

impl VaeDecoder {
    pub fn load(store: &WeightStore, config: &VaeConfig) -> Result<Self> {
        let groups = config.norm_num_groups;
        let decoder = store.sub("decoder.");
        let resnet = |store: &WeightStore| Resnet::load(store, groups, EPS, false, 1.0);
        let mid = decoder.sub("mid_block.");
        let n = config.block_out_channels.len();
        let up = (0..n)
            .map(|i| {
                let block = decoder.sub(&format!("up_blocks.{i}."));
                Ok(UpBlock {
                    resnets: (0..config.layers_per_block + 1)
                        .map(|j| resnet(&block.sub(&format!("resnets.{j}."))))
                        .collect::<Result<_>>()?,
                    upsample: (i + 1 < n)
                        .then(|| conv(&block, "upsamplers.0.conv", 1, 1))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .context("the VAE decoder's up blocks")?;
        Ok(VaeDecoder {
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| conv(store, "post_quant_conv", 1, 0))
                .transpose()?,
            conv_in: conv(&decoder, "conv_in", 1, 1)?,
            mid_resnets: [
                resnet(&mid.sub("resnets.0."))?,
                resnet(&mid.sub("resnets.1."))?,
            ],
            mid_attention: config
                .mid_block_add_attention
                .then(|| VaeAttention::load(&mid.sub("attentions.0."), groups, EPS))
                .transpose()?,
            up,
            norm_out: group_norm(&decoder, "conv_norm_out", groups, EPS)?,
            conv_out: conv(&decoder, "conv_out", 1, 1)?,
        })
    }

    /// The image of `latents` (already divided by the scaling factor): [-1, 1] values, channels
    /// last.
    pub fn forward(&self, latents: &FeatureMaps) -> FeatureMaps {
        let mut x = match &self.post_quant_conv {
            Some(post) => post.forward(latents),
            None => latents.clone(),
        };
        x = self.conv_in.forward(&x);
        x = self.mid_resnets[0].forward(&x, None);
        if let Some(attention) = &self.mid_attention {
            x = attention.forward(&x);
        }
        x = self.mid_resnets[1].forward(&x, None);
        for block in &self.up {
            for resnet in &block.resnets {
                x = resnet.forward(&x, None);
            }
            if let Some(upsample) = &block.upsample {
                x = upsample.forward_upsampled(&x, Some((2 * x.height, 2 * x.width)));
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&x, true))
    }
}
