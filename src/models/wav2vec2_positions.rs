//! The relative positions of the Wav2Vec2 family's encoders: grouped convolutions over the
//! projected frames whose activated output is added to them. Wav2Vec2 and HuBERT have one
//! wide convolution, weight-normalised (or, with HuBERT's `conv_pos_batch_norm`, a plain one
//! after a batch norm); Data2VecAudio has a chain of narrow ones, each followed by a layer norm
//! without parameters and the activation.

use anyhow::{bail, Result};

use super::config::Activation;
use super::weights::WeightStore;
use crate::kernels::{self, PackedConv1d};

/// PyTorch's `nn.BatchNorm1d` / `nn.GroupNorm` / `nn.LayerNorm` default eps, which the family's
/// convolution norms keep.
pub(super) const TORCH_NORM_EPS: f64 = 1e-5;

/// What the positional convolutions look like, from the family's config.
pub struct PositionsShape {
    pub hidden: usize,
    pub kernel: usize,
    pub groups: usize,
    /// HuBERT's `conv_pos_batch_norm`.
    pub batch_norm: bool,
    /// Data2VecAudio: this many convolutions in a chain (`num_conv_pos_embeddings`).
    pub chain: Option<usize>,
}

pub enum Positions {
    /// `encoder.pos_conv_embed.conv` (with `encoder.pos_conv_embed.batch_norm` before it).
    Conv {
        norm: Option<BatchNorm>,
        conv: PackedConv1d,
    },
    /// `encoder.pos_conv_embed.layers.N.conv`, each normalised (`unit`: the parameterless
    /// norm's weight of ones and bias of zeros) and activated.
    Chain {
        convs: Vec<PackedConv1d>,
        unit: (Vec<f32>, Vec<f32>),
    },
}

impl Positions {
    pub fn load(store: &WeightStore, shape: &PositionsShape) -> Result<Self> {
        let (hidden, kernel, groups) = (shape.hidden, shape.kernel, shape.groups);
        if groups == 0 || !hidden.is_multiple_of(groups) || kernel == 0 {
            bail!("positional convolutions of {kernel} taps cannot hold hidden_size {hidden} in {groups} groups");
        }
        let pack = |prefix: &str, weight: Vec<f32>| -> Result<PackedConv1d> {
            if weight.len() != hidden * hidden / groups * kernel {
                bail!("{prefix}: the weight does not fit hidden_size {hidden} in {groups} groups with a kernel of {kernel}");
            }
            Ok(PackedConv1d::pack(
                &weight,
                &store.base_host(&format!("{prefix}.bias"))?,
                hidden,
                kernel,
                1,
                kernel / 2,
                groups,
            ))
        };
        if let Some(layers) = shape.chain {
            let convs = (0..layers)
                .map(|i| {
                    let prefix = format!("encoder.pos_conv_embed.layers.{i}.conv");
                    pack(&prefix, store.base_host(&format!("{prefix}.weight"))?)
                })
                .collect::<Result<_>>()?;
            let unit = (vec![1.0; hidden], vec![0.0; hidden]);
            return Ok(Positions::Chain { convs, unit });
        }
        let prefix = "encoder.pos_conv_embed.conv";
        let norm = if shape.batch_norm {
            let norm = BatchNorm::load(store, "encoder.pos_conv_embed.batch_norm")?;
            if norm.scale.len() != hidden {
                bail!(
                    "the positional batch norm has {} channels for hidden_size {hidden}",
                    norm.scale.len()
                );
            }
            Some(norm)
        } else {
            None
        };
        let conv = pack(prefix, conv_weight(store, prefix, kernel)?)?;
        Ok(Positions::Conv { norm, conv })
    }

    /// The positions of `frames` rows of `x` ([frames][hidden]), activated, to be added to `x`.
    pub fn forward(&self, x: &[f32], frames: usize, activation: Activation) -> Vec<f32> {
        // SamePad: an even kernel's padding gives one frame too many; the last is dropped.
        let same = |conv: &PackedConv1d, x: &[f32]| {
            let mut y = conv.forward(x, frames);
            y.truncate(frames * conv.outputs());
            y
        };
        match self {
            Positions::Conv { norm, conv } => {
                let mut y = match norm {
                    Some(norm) => same(conv, &norm.apply(x)),
                    None => same(conv, x),
                };
                kernels::activate(&mut y, activation);
                y
            }
            Positions::Chain {
                convs,
                unit: (ones, zeros),
            } => {
                let mut y = x.to_vec();
                for conv in convs {
                    y = same(conv, &y);
                    let width = conv.outputs();
                    kernels::layer_norm(&mut y, width, ones, zeros, TORCH_NORM_EPS as f32);
                    kernels::activate(&mut y, activation);
                }
                y
            }
        }
    }
}

/// `nn.BatchNorm1d` in eval mode over channels-last frames: each channel scaled and shifted by
/// its running statistics, folded into one multiply-add.
pub struct BatchNorm {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl BatchNorm {
    fn load(store: &WeightStore, prefix: &str) -> Result<Self> {
        let get = |name: &str| store.base_host(&format!("{prefix}.{name}"));
        let (weight, bias) = (get("weight")?, get("bias")?);
        let (mean, var) = (get("running_mean")?, get("running_var")?);
        let channels = weight.len();
        if [bias.len(), mean.len(), var.len()] != [channels; 3] {
            bail!("{prefix}: the batch norm's weight, bias and running statistics differ in size");
        }
        let scale: Vec<f32> = (0..channels)
            .map(|c| (weight[c] as f64 / (var[c] as f64 + TORCH_NORM_EPS).sqrt()) as f32)
            .collect();
        let shift = (0..channels)
            .map(|c| bias[c] - mean[c] * scale[c])
            .collect();
        Ok(BatchNorm { scale, shift })
    }

    /// A normalised copy of `x` ([frames][channels]).
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.chunks_exact(self.scale.len())
            .flat_map(|frame| {
                frame
                    .iter()
                    .zip(&self.scale)
                    .zip(&self.shift)
                    .map(|((v, s), b)| v * s + b)
            })
            .collect()
    }
}

/// The wide positional convolution's weight: a plain `weight`, or rebuilt from the weight norm's
/// two parts (`weight_g` [1, 1, kernel] and `weight_v` [out, in / groups, kernel]: weight =
/// g · v / ‖v‖, the norm over everything but the kernel axis, `dim=2`), named either the legacy
/// way or as PyTorch's parametrizations save them.
fn conv_weight(store: &WeightStore, p: &str, kernel: usize) -> Result<Vec<f32>> {
    if store.contains_base(&format!("{p}.weight")) {
        return store.base_host(&format!("{p}.weight"));
    }
    let (g, v) = if store.contains_base(&format!("{p}.weight_g")) {
        (
            store.base_host(&format!("{p}.weight_g"))?,
            store.base_host(&format!("{p}.weight_v"))?,
        )
    } else {
        (
            store.base_host(&format!("{p}.parametrizations.weight.original0"))?,
            store.base_host(&format!("{p}.parametrizations.weight.original1"))?,
        )
    };
    if g.len() != kernel || v.len() % kernel != 0 {
        bail!(
            "the positional convolution's weight norm has {} gains for a kernel of {kernel}",
            g.len()
        );
    }
    let mut norms = vec![0f64; kernel];
    for (i, &value) in v.iter().enumerate() {
        norms[i % kernel] += value as f64 * value as f64;
    }
    Ok(v.iter()
        .enumerate()
        .map(|(i, &value)| {
            let t = i % kernel;
            (g[t] as f64 * value as f64 / norms[t].sqrt()) as f32
        })
        .collect())
}
