//! The UNet's and the VAE's `config.json` (diffusers' defaults where a key is absent), and what
//! of them the networks support.

use anyhow::{bail, Context, Result};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use serde::Deserialize;
use serde_json::Value;

/// `unet/config.json`: what a Stable Diffusion UNet sets (diffusers' defaults otherwise).
#[derive(Debug, Clone, Deserialize)]
pub struct UnetConfig {
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    #[serde(default = "eps")]
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    /// Heads per block (diffusers' legacy name: `num_attention_heads` wins when set).
    #[serde(default = "heads")]
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    pub sample_size: Option<usize>,
    pub addition_embed_type: Option<String>,
    pub class_embed_type: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub only_cross_attention: Value,
    pub mid_block_type: Option<String>,
}

/// A value for every block, or one for all.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn at(&self, i: usize) -> Result<usize> {
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
pub struct VaeConfig {
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
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
    pub fn candle(&self) -> Result<UNet2DConditionModelConfig> {
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
