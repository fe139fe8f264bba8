//! The blocks diffusers' UNet and VAE are built of, on channels-last host maps
//! (`kernels::FeatureMaps`) in diffusers' weight names: ResNet blocks, the UNet's spatial
//! transformers (self-attention, cross-attention to the prompt, GEGLU feed-forward) and the
//! VAE's single-head attention. CPU only: the layers are `kernels`' packed ones.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::kernels::{
    self, attention_rows, in_row_blocks, Activation, FeatureMaps, GroupNorm, HeadRows,
    PackedConv2d, PackedLinear,
};
use crate::models::layers::LayerNorm;
use crate::models::weights::WeightStore;

/// A tensor's values (any shape), in f32.
fn host(store: &WeightStore, name: &str) -> Result<Vec<f32>> {
    Ok(store.get(name)?.flatten_all()?.to_vec1::<f32>()?)
}

fn weight(store: &WeightStore, name: &str) -> Result<Tensor> {
    store.get(&format!("{name}.weight"))
}

/// `{name}` as a dense layer: an `nn.Linear`, or a 1x1 `nn.Conv2d` (the same product on
/// channels-last pixels); `bias` false for diffusers' bias-free projections.
pub fn linear(store: &WeightStore, name: &str, bias: bool) -> Result<PackedLinear> {
    stacked(store, &[(name, bias, 1.0)])
}

/// Dense layers (`linear`'s) whose outputs are stacked into one product (Q, K and V; or K and
/// V), each `(name, bias, scale)`: its weights and bias times `scale` (the attention's
/// 1/sqrt(d) folded into its queries).
fn stacked(store: &WeightStore, layers: &[(&str, bool, f32)]) -> Result<PackedLinear> {
    let (mut values, mut bias, mut out, mut inp) = (Vec::new(), Vec::new(), 0, None);
    for &(name, has_bias, scale) in layers {
        let w = weight(store, name)?;
        if w.rank() == 4 && w.dims()[2..] != [1, 1] {
            bail!("`{name}` is not a 1x1 convolution");
        }
        let rows = w.dim(0)?;
        let width = w.elem_count() / rows.max(1);
        if *inp.get_or_insert(width) != width {
            bail!("`{name}` does not take the same inputs as the layers stacked with it");
        }
        values.extend(w.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v * scale));
        if has_bias {
            bias.extend(
                host(store, &format!("{name}.bias"))?
                    .iter()
                    .map(|v| v * scale),
            );
        } else {
            bias.extend(std::iter::repeat_n(0.0, rows));
        }
        out += rows;
    }
    Ok(PackedLinear::pack(&values, &bias, out, inp.unwrap_or(0)))
}

/// `{name}` as an `nn.Conv2d` with its `stride` and `padding` (square kernels).
pub fn conv(
    store: &WeightStore,
    name: &str,
    stride: usize,
    padding: usize,
) -> Result<PackedConv2d> {
    let w = weight(store, name)?;
    let (_, inputs, kernel, kernel_w) = w.dims4().with_context(|| format!("`{name}.weight`"))?;
    if kernel != kernel_w {
        bail!("`{name}` has a {kernel}x{kernel_w} kernel (square ones are supported)");
    }
    let values = w.flatten_all()?.to_vec1::<f32>()?;
    let bias = host(store, &format!("{name}.bias"))?;
    Ok(PackedConv2d::pack(
        &values, &bias, inputs, kernel, stride, padding,
    ))
}

pub fn group_norm(store: &WeightStore, name: &str, groups: usize, eps: f64) -> Result<GroupNorm> {
    let gamma = host(store, &format!("{name}.weight"))?;
    let beta = host(store, &format!("{name}.bias"))?;
    if gamma.len() % groups != 0 {
        bail!(
            "`{name}`: {} channels do not fall in {groups} groups",
            gamma.len()
        );
    }
    Ok(GroupNorm::new(groups, gamma, beta, eps))
}

/// `x = (x + y) / divisor` (a residual connection and its output scale), in parallel blocks.
fn add_rows(x: &mut [f32], y: &[f32], divisor: f32) {
    assert_eq!(x.len(), y.len(), "residual sizes");
    in_row_blocks(x, 1, |first, block| {
        kernels::add(block, &y[first..first + block.len()]);
        if divisor != 1.0 {
            block.iter_mut().for_each(|v| *v /= divisor);
        }
    });
}

/// Each image's pixels attending to each other: `qkv` holds every pixel's fused Q (scaled), K
/// and V rows, `pixels` per image; returns the context rows.
fn self_attention(qkv: &[f32], pixels: usize, heads: usize, head_dim: usize) -> Vec<f32> {
    let hidden = heads * head_dim;
    let mut context = Vec::with_capacity(qkv.len() / 3);
    for image in qkv.chunks_exact(pixels * 3 * hidden) {
        let view = |offset| HeadRows {
            data: image,
            rows: pixels,
            stride: 3 * hidden,
            offset,
        };
        context.extend(attention_rows(
            view(0),
            view(hidden),
            view(2 * hidden),
            heads,
            head_dim,
        ));
    }
    context
}

/// A copy of `x`'s rows (`width` each) through `norm`, in parallel blocks.
fn normalized(norm: &LayerNorm, x: &[f32], width: usize) -> Vec<f32> {
    let mut h = x.to_vec();
    in_row_blocks(&mut h, width, |_, rows| norm.apply(rows));
    h
}

/// diffusers' `ResnetBlock2D` (the default `resnet_time_scale_shift`): two normalised, SiLU'd
/// 3x3 convolutions, the time embedding added between them, and a 1x1 shortcut when the
/// channels change.
pub struct Resnet {
    norm1: GroupNorm,
    conv1: PackedConv2d,
    time_emb_proj: Option<PackedLinear>,
    norm2: GroupNorm,
    conv2: PackedConv2d,
    conv_shortcut: Option<PackedConv2d>,
    output_scale_factor: f32,
}

impl Resnet {
    /// `time`: whether the block takes a time embedding (the UNet's do, the VAE's do not).
    pub fn load(
        store: &WeightStore,
        groups: usize,
        eps: f64,
        time: bool,
        output_scale_factor: f64,
    ) -> Result<Self> {
        Ok(Resnet {
            norm1: group_norm(store, "norm1", groups, eps)?,
            conv1: conv(store, "conv1", 1, 1)?,
            time_emb_proj: time
                .then(|| linear(store, "time_emb_proj", true))
                .transpose()?,
            norm2: group_norm(store, "norm2", groups, eps)?,
            conv2: conv(store, "conv2", 1, 1)?,
            conv_shortcut: store
                .contains("conv_shortcut.weight")
                .then(|| conv(store, "conv_shortcut", 1, 0))
                .transpose()?,
            output_scale_factor: output_scale_factor as f32,
        })
    }

    /// `time`: the SiLU'd time embedding, one row per image (the UNet's blocks).
    pub fn forward(&self, x: &FeatureMaps, time: Option<&[f32]>) -> FeatureMaps {
        let mut h = self.conv1.forward(&self.norm1.forward(x, true));
        if let (Some(proj), Some(time)) = (&self.time_emb_proj, time) {
            let added = proj.forward(time, x.images);
            let (channels, plane) = (h.channels, h.height * h.width);
            in_row_blocks(&mut h.data, channels, |first, rows| {
                for (i, pixel) in rows.chunks_exact_mut(channels).enumerate() {
                    let image = (first + i) / plane;
                    kernels::add(pixel, &added[image * channels..][..channels]);
                }
            });
        }
        let mut h = self.conv2.forward(&self.norm2.forward(&h, true));
        let shortcut = self.conv_shortcut.as_ref().map(|conv| conv.forward(x));
        let skip = shortcut.as_ref().unwrap_or(x);
        add_rows(&mut h.data, &skip.data, self.output_scale_factor);
        h
    }
}

/// diffusers' `BasicTransformerBlock` as Stable Diffusion's UNet has it: self-attention,
/// cross-attention to the prompt, a GEGLU feed-forward, each after a LayerNorm and added back.
struct TransformerBlock {
    norm1: LayerNorm,
    /// to_q (scaled), to_k, to_v stacked.
    self_qkv: PackedLinear,
    self_out: PackedLinear,
    norm2: LayerNorm,
    cross_q: PackedLinear,
    /// to_k, to_v stacked (on the prompt's states).
    cross_kv: PackedLinear,
    cross_out: PackedLinear,
    norm3: LayerNorm,
    /// GEGLU's projection: the hidden half, then the gate half.
    ff_in: PackedLinear,
    ff_out: PackedLinear,
    heads: usize,
    head_dim: usize,
}

impl TransformerBlock {
    fn load(store: &WeightStore, heads: usize, channels: usize) -> Result<Self> {
        let head_dim = channels / heads;
        let scale = (head_dim as f32).powf(-0.5);
        Ok(TransformerBlock {
            norm1: LayerNorm::load_named(store, "norm1", 1e-5, false)?,
            self_qkv: stacked(
                store,
                &[
                    ("attn1.to_q", false, scale),
                    ("attn1.to_k", false, 1.0),
                    ("attn1.to_v", false, 1.0),
                ],
            )?,
            self_out: linear(store, "attn1.to_out.0", true)?,
            norm2: LayerNorm::load_named(store, "norm2", 1e-5, false)?,
            cross_q: stacked(store, &[("attn2.to_q", false, scale)])?,
            cross_kv: stacked(
                store,
                &[("attn2.to_k", false, 1.0), ("attn2.to_v", false, 1.0)],
            )?,
            cross_out: linear(store, "attn2.to_out.0", true)?,
            norm3: LayerNorm::load_named(store, "norm3", 1e-5, false)?,
            ff_in: linear(store, "ff.net.0.proj", true)?,
            ff_out: linear(store, "ff.net.2", true)?,
            heads,
            head_dim,
        })
    }

    /// `x`: every image's pixels' rows (`pixels` each), updated in place; `text`: each image's
    /// prompt states (`tokens` rows each).
    fn forward(&self, x: &mut [f32], images: usize, text: &[f32], tokens: usize) {
        let hidden = self.heads * self.head_dim;
        let rows = x.len() / hidden;
        let pixels = rows / images;
        let h = normalized(&self.norm1, x, hidden);
        let qkv = self.self_qkv.forward_rows(&h, rows);
        let mut context = self_attention(&qkv, pixels, self.heads, self.head_dim);
        add_rows(x, &self.self_out.forward_rows(&context, rows), 1.0);

        let h = normalized(&self.norm2, x, hidden);
        let q = self.cross_q.forward_rows(&h, rows);
        let kv = self.cross_kv.forward(text, images * tokens);
        context.clear();
        for (q, kv) in q
            .chunks_exact(pixels * hidden)
            .zip(kv.chunks_exact(tokens * 2 * hidden))
        {
            let keys = |offset| HeadRows {
                data: kv,
                rows: tokens,
                stride: 2 * hidden,
                offset,
            };
            let queries = HeadRows {
                data: q,
                rows: pixels,
                stride: hidden,
                offset: 0,
            };
            context.extend(attention_rows(
                queries,
                keys(0),
                keys(hidden),
                self.heads,
                self.head_dim,
            ));
        }
        add_rows(x, &self.cross_out.forward_rows(&context, rows), 1.0);

        let h = normalized(&self.norm3, x, hidden);
        let projected = self.ff_in.forward_rows(&h, rows);
        let inner = projected.len() / rows / 2;
        let mut gated = vec![0f32; rows * inner];
        in_row_blocks(&mut gated, inner, |first, block| {
            let projected = &projected[first * 2 * inner..];
            for (out, row) in block
                .chunks_exact_mut(inner)
                .zip(projected.chunks_exact(2 * inner))
            {
                out.copy_from_slice(&row[inner..]);
                kernels::activate(out, Activation::Gelu);
                out.iter_mut().zip(&row[..inner]).for_each(|(g, h)| *g *= h);
            }
        });
        add_rows(x, &self.ff_out.forward_rows(&gated, rows), 1.0);
    }
}

/// diffusers' `Transformer2DModel` in a UNet block: group norm, projection in (a 1x1
/// convolution, or a linear layer with `use_linear_projection`), transformer blocks, projection
/// out, and the input added back.
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: PackedLinear,
    blocks: Vec<TransformerBlock>,
    proj_out: PackedLinear,
}

impl SpatialTransformer {
    pub fn load(store: &WeightStore, heads: usize, layers: usize, groups: usize) -> Result<Self> {
        let proj_in = linear(store, "proj_in", true)?;
        let channels = proj_in.outputs();
        if heads == 0 || channels % heads != 0 {
            bail!("{channels} channels do not split into {heads} attention heads");
        }
        Ok(SpatialTransformer {
            norm: group_norm(store, "norm", groups, 1e-6)?,
            blocks: (0..layers)
                .map(|i| {
                    TransformerBlock::load(
                        &store.sub(&format!("transformer_blocks.{i}.")),
                        heads,
                        channels,
                    )
                })
                .collect::<Result<_>>()?,
            proj_out: linear(store, "proj_out", true)?,
            proj_in,
        })
    }

    /// `text`: [images][tokens][cross-attention width].
    pub fn forward(&self, x: &FeatureMaps, text: &[f32], tokens: usize) -> FeatureMaps {
        let rows = x.pixels();
        let normed = self.norm.forward(x, false);
        let mut h = self.proj_in.forward_rows(&normed.data, rows);
        for block in &self.blocks {
            block.forward(&mut h, x.images, text, tokens);
        }
        let mut out = self.proj_out.forward_rows(&h, rows);
        add_rows(&mut out, &x.data, 1.0);
        x.with_data(x.channels, out)
    }
}

/// The VAE's mid-block attention (diffusers' `Attention` with a group norm, one head, biased
/// projections, the input added back); older checkpoints' names (`query`, `key`, `value`,
/// `proj_attn`) too, as diffusers converts them.
pub struct VaeAttention {
    norm: GroupNorm,
    qkv: PackedLinear,
    out: PackedLinear,
}

impl VaeAttention {
    pub fn load(store: &WeightStore, groups: usize, eps: f64) -> Result<Self> {
        let (q, k, v, out) = if store.contains("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        let channels = weight(store, q)?.dim(0)?;
        let scale = (channels as f32).powf(-0.5);
        Ok(VaeAttention {
            norm: group_norm(store, "group_norm", groups, eps)?,
            qkv: stacked(store, &[(q, true, scale), (k, true, 1.0), (v, true, 1.0)])?,
            out: linear(store, out, true)?,
        })
    }

    pub fn forward(&self, x: &FeatureMaps) -> FeatureMaps {
        let (rows, channels) = (x.pixels(), x.channels);
        let pixels = x.height * x.width;
        let normed = self.norm.forward(x, false);
        let qkv = self.qkv.forward_rows(&normed.data, rows);
        let context = self_attention(&qkv, pixels, 1, channels);
        let mut out = self.out.forward_rows(&context, rows);
        add_rows(&mut out, &x.data, 1.0);
        x.with_data(channels, out)
    }
}
