//! Convolutions and group normalisation on channels-last feature maps (a diffusion UNet's and
//! VAE's layers). Channels last, every pixel is a row of features: a convolution is one dense
//! product of the pixels' unfolded neighbourhoods (im2col) with the packed kernel, which runs on
//! [`PackedLinear`]'s panels in strips of output pixels shared out across threads, so that the
//! unfolded strip stays in cache and is never materialised for the whole map.

use rayon::prelude::*;

use super::{activate, for_row_blocks, Activation, PackedLinear};

/// Images of `height` x `width` pixels of `channels` features each, stored pixel after pixel
/// (NHWC).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMaps {
    pub images: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl FeatureMaps {
    pub fn new(
        images: usize,
        height: usize,
        width: usize,
        channels: usize,
        data: Vec<f32>,
    ) -> Self {
        assert_eq!(
            data.len(),
            images * height * width * channels,
            "feature map size"
        );
        FeatureMaps {
            images,
            height,
            width,
            channels,
            data,
        }
    }

    /// Pixels in all images (the rows of `data`).
    pub fn pixels(&self) -> usize {
        self.images * self.height * self.width
    }

    /// The same pixels with other features (`data`: a row of `channels` per pixel).
    pub fn with_data(&self, channels: usize, data: Vec<f32>) -> FeatureMaps {
        FeatureMaps::new(self.images, self.height, self.width, channels, data)
    }

    /// From NCHW (PyTorch's layout).
    pub fn from_nchw(
        images: usize,
        channels: usize,
        height: usize,
        width: usize,
        x: &[f32],
    ) -> Self {
        let plane = height * width;
        let mut data = vec![0f32; x.len()];
        for (n, image) in x.chunks_exact(channels * plane).enumerate() {
            let out = &mut data[n * channels * plane..][..channels * plane];
            for (c, channel) in image.chunks_exact(plane).enumerate() {
                for (p, &v) in channel.iter().enumerate() {
                    out[p * channels + c] = v;
                }
            }
        }
        FeatureMaps::new(images, height, width, channels, data)
    }

    /// To NCHW.
    pub fn to_nchw(&self) -> Vec<f32> {
        let plane = self.height * self.width;
        let channels = self.channels;
        let mut out = vec![0f32; self.data.len()];
        for (n, image) in self.data.chunks_exact(channels * plane).enumerate() {
            let dst = &mut out[n * channels * plane..][..channels * plane];
            for (p, pixel) in image.chunks_exact(channels).enumerate() {
                for (c, &v) in pixel.iter().enumerate() {
                    dst[c * plane + p] = v;
                }
            }
        }
        out
    }

    /// The channels of `self` then those of `other` at each pixel (`torch.cat(dim=1)`).
    pub fn concat_channels(&self, other: &FeatureMaps) -> FeatureMaps {
        assert_eq!(self.pixels(), other.pixels(), "concatenated maps' pixels");
        let channels = self.channels + other.channels;
        let mut data = Vec::with_capacity(self.pixels() * channels);
        for (a, b) in self
            .data
            .chunks_exact(self.channels)
            .zip(other.data.chunks_exact(other.channels))
        {
            data.extend_from_slice(a);
            data.extend_from_slice(b);
        }
        self.with_data(channels, data)
    }
}

/// `f` on blocks of whole rows (`width` values each) of `x`, the blocks shared out across
/// threads when `x` is large: the element-wise steps around a feature map's products
/// (normalisations, activations, residual adds) would otherwise leave all but one core idle.
pub fn in_row_blocks(x: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    const BLOCK_VALUES: usize = 1 << 14;
    let parallel = x.len() >= 4 * BLOCK_VALUES;
    for_row_blocks(x, width, BLOCK_VALUES / width.max(1), parallel, f);
}

/// Unfolded values per task of a convolution (its strip of pixels x kernel taps x channels):
/// 512 KiB (128 KiB strips measured no faster on Zen 3's 512 KiB L2).
const STRIP_VALUES: usize = 128 * 1024;

/// A convolution's weight, [out][in][taps] as PyTorch stores it, packed as a dense layer over
/// windows laid out tap-major ([taps][in], the order channels-last windows are read in).
pub(super) fn pack_taps(weight: &[f32], bias: &[f32], inputs: usize, taps: usize) -> PackedLinear {
    let outputs = bias.len();
    assert_eq!(weight.len(), outputs * inputs * taps, "convolution weight");
    let mut unfolded = vec![0f32; weight.len()];
    for o in 0..outputs {
        for c in 0..inputs {
            for t in 0..taps {
                unfolded[(o * taps + t) * inputs + c] = weight[(o * inputs + c) * taps + t];
            }
        }
    }
    PackedLinear::pack(&unfolded, bias, outputs, taps * inputs)
}

thread_local! {
    /// Each thread's unfolding buffer, kept between strips and layers (a fresh one per strip
    /// was zeroed and faulted in every time).
    static UNFOLDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `nn.Conv2d` (square kernel, no groups) packed for channels-last maps.
pub struct PackedConv2d {
    kernel: usize,
    stride: usize,
    padding: usize,
    /// Taps this far apart (ResNet's DC5 stage).
    dilation: usize,
    /// Applied to each strip of outputs while it is in cache (ResNet's ReLU).
    activation: Option<Activation>,
    inputs: usize,
    /// [out] x [kernel rows][kernel columns][in channels], the order im2col lays taps out in.
    layer: PackedLinear,
}

impl PackedConv2d {
    /// `weight`: [out][in][kernel][kernel] as PyTorch stores it; `bias`: [out].
    pub fn pack(
        weight: &[f32],
        bias: &[f32],
        inputs: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        let taps = kernel * kernel;
        let outputs = bias.len();
        assert_eq!(weight.len(), outputs * inputs * taps, "convolution weight");
        assert!(stride >= 1 && kernel >= 1);
        PackedConv2d {
            kernel,
            stride,
            padding,
            dilation: 1,
            activation: None,
            inputs,
            layer: pack_taps(weight, bias, inputs, taps),
        }
    }

    /// The same convolution with its taps `dilation` apart, padded by `padding`.
    pub fn dilated(self, dilation: usize, padding: usize) -> Self {
        assert!(dilation >= 1);
        PackedConv2d {
            dilation,
            padding,
            ..self
        }
    }

    /// The same convolution followed by `activation`.
    pub fn activated(self, activation: Activation) -> Self {
        PackedConv2d {
            activation: Some(activation),
            ..self
        }
    }

    /// The same convolution with its packed product in another form (`convert`: bfloat16 or
    /// int8 panels of the same weights).
    pub fn map_layer(self, convert: impl FnOnce(PackedLinear) -> PackedLinear) -> Self {
        PackedConv2d {
            layer: convert(self.layer),
            ..self
        }
    }

    pub fn outputs(&self) -> usize {
        self.layer.outputs()
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn forward(&self, x: &FeatureMaps) -> FeatureMaps {
        self.forward_upsampled(x, None)
    }

    /// The convolution of `x` nearest-upsampled to `size` (height, width) first, as
    /// `F.interpolate(mode="nearest")` then the convolution: the upsampled map is read through
    /// its index map, never built.
    pub fn forward_upsampled(&self, x: &FeatureMaps, size: Option<(usize, usize)>) -> FeatureMaps {
        assert_eq!(x.channels, self.inputs, "convolution input channels");
        let (in_h, in_w) = size.unwrap_or((x.height, x.width));
        let reach = self.dilation * (self.kernel - 1) + 1;
        let out_h = (in_h + 2 * self.padding - reach) / self.stride + 1;
        let out_w = (in_w + 2 * self.padding - reach) / self.stride + 1;
        let outputs = self.outputs();
        let pixels = x.images * out_h * out_w;
        if self.kernel == 1 && self.stride == 1 && self.padding == 0 && size.is_none() {
            let data = self
                .layer
                .forward_rows_activated(&x.data, pixels, self.activation);
            return FeatureMaps::new(x.images, out_h, out_w, outputs, data);
        }
        // torch's nearest source index: floor(dst * (in / out)) in f32, at most in - 1.
        let nearest = |dst: usize, from: usize, to: usize| -> usize {
            if from == to {
                dst
            } else {
                ((dst as f32 * (from as f32 / to as f32)).floor() as usize).min(from - 1)
            }
        };
        let rows_y: Vec<usize> = (0..in_h).map(|y| nearest(y, x.height, in_h)).collect();
        let rows_x: Vec<usize> = (0..in_w).map(|v| nearest(v, x.width, in_w)).collect();
        let taps = self.kernel * self.kernel * self.inputs;
        let strip = (STRIP_VALUES / taps).clamp(32, 256);
        let mut data = vec![0f32; pixels * outputs];
        let parallel = pixels * outputs * taps >= 1 << 21;
        for_row_blocks(&mut data, outputs, strip, parallel, |first, y| {
            let count = y.len() / outputs;
            UNFOLDED.with_borrow_mut(|buffer| {
                if buffer.len() < count * taps {
                    buffer.resize(count * taps, 0.0);
                }
                let unfolded = &mut buffer[..count * taps];
                for (i, row) in unfolded.chunks_exact_mut(taps).enumerate() {
                    let pixel = first + i;
                    let (image, rest) = (pixel / (out_h * out_w), pixel % (out_h * out_w));
                    let (oy, ox) = (rest / out_w, rest % out_w);
                    for ky in 0..self.kernel {
                        let iy = (oy * self.stride + ky * self.dilation) as isize
                            - self.padding as isize;
                        for kx in 0..self.kernel {
                            let ix = (ox * self.stride + kx * self.dilation) as isize
                                - self.padding as isize;
                            let tap =
                                &mut row[(ky * self.kernel + kx) * self.inputs..][..self.inputs];
                            if iy < 0 || ix < 0 || iy as usize >= in_h || ix as usize >= in_w {
                                tap.fill(0.0); // zero padding
                                continue;
                            }
                            let (sy, sx) = (rows_y[iy as usize], rows_x[ix as usize]);
                            let source = ((image * x.height + sy) * x.width + sx) * self.inputs;
                            tap.copy_from_slice(&x.data[source..source + self.inputs]);
                        }
                    }
                }
                self.layer.forward_into(unfolded, count, y);
                if let Some(activation) = self.activation {
                    activate(y, activation);
                }
            });
        });
        FeatureMaps::new(x.images, out_h, out_w, outputs, data)
    }
}

/// `nn.MaxPool2d(kernel, stride, padding)` over channels-last maps (padding never wins: torch
/// pads with -inf).
pub fn max_pool(x: &FeatureMaps, kernel: usize, stride: usize, padding: usize) -> FeatureMaps {
    let out_h = (x.height + 2 * padding - kernel) / stride + 1;
    let out_w = (x.width + 2 * padding - kernel) / stride + 1;
    let c = x.channels;
    let mut data = vec![f32::NEG_INFINITY; x.images * out_h * out_w * c];
    in_row_blocks(&mut data, c, |first, rows| {
        for (i, out) in rows.chunks_exact_mut(c).enumerate() {
            let pixel = first + i;
            let (image, rest) = (pixel / (out_h * out_w), pixel % (out_h * out_w));
            let (oy, ox) = (rest / out_w, rest % out_w);
            for ky in 0..kernel {
                let Some(iy) = (oy * stride + ky).checked_sub(padding) else {
                    continue;
                };
                for kx in 0..kernel {
                    let Some(ix) = (ox * stride + kx).checked_sub(padding) else {
                        continue;
                    };
                    if iy >= x.height || ix >= x.width {
                        continue;
                    }
                    let at = ((image * x.height + iy) * x.width + ix) * c;
                    for (o, &v) in out.iter_mut().zip(&x.data[at..at + c]) {
                        *o = o.max(v);
                    }
                }
            }
        }
    });
    FeatureMaps::new(x.images, out_h, out_w, c, data)
}

/// `nn.GroupNorm` over channels-last maps: each image's groups of consecutive channels
/// normalised over all their pixels.
pub struct GroupNorm {
    groups: usize,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f64,
}

impl GroupNorm {
    pub fn new(groups: usize, gamma: Vec<f32>, beta: Vec<f32>, eps: f64) -> Self {
        assert_eq!(gamma.len(), beta.len());
        assert!(
            groups > 0 && gamma.len().is_multiple_of(groups),
            "channels in groups"
        );
        GroupNorm {
            groups,
            gamma,
            beta,
            eps,
        }
    }

    /// The normalised maps, then SiLU when `silu` (the UNet's `norm` + `nonlinearity` pairs).
    pub fn forward(&self, x: &FeatureMaps, silu: bool) -> FeatureMaps {
        let channels = self.gamma.len();
        assert_eq!(x.channels, channels, "group norm channels");
        let per_group = channels / self.groups;
        let plane = x.height * x.width;
        let mut out = vec![0f32; x.data.len()];
        for (src, dst) in x
            .data
            .chunks_exact(plane * channels)
            .zip(out.chunks_exact_mut(plane * channels))
        {
            // Sums and sums of squares per group in f64 (one pass, without f32's cancellation),
            // over blocks of pixels in parallel.
            let block_sums = |pixels: &[f32]| {
                let mut sums = vec![(0f64, 0f64); self.groups];
                for pixel in pixels.chunks_exact(channels) {
                    for (sum, group) in sums.iter_mut().zip(pixel.chunks_exact(per_group)) {
                        for &v in group {
                            sum.0 += v as f64;
                            sum.1 += v as f64 * v as f64;
                        }
                    }
                }
                sums
            };
            let add_sums = |mut a: Vec<(f64, f64)>, b: Vec<(f64, f64)>| {
                a.iter_mut().zip(b).for_each(|(a, b)| {
                    a.0 += b.0;
                    a.1 += b.1;
                });
                a
            };
            let rows = 256 * channels;
            let parallel = plane * channels >= 1 << 16 && rayon::current_num_threads() > 1;
            let sums = if parallel {
                src.par_chunks(rows)
                    .map(block_sums)
                    .reduce(|| vec![(0f64, 0f64); self.groups], add_sums)
            } else {
                block_sums(src)
            };
            let count = (plane * per_group) as f64;
            // Per channel: y = x * scale + shift.
            let mut scale = vec![0f32; channels];
            let mut shift = vec![0f32; channels];
            for (g, &(sum, squares)) in sums.iter().enumerate() {
                let mean = sum / count;
                let var = (squares / count - mean * mean).max(0.0);
                let inv = 1.0 / (var + self.eps).sqrt();
                for c in g * per_group..(g + 1) * per_group {
                    let a = inv * self.gamma[c] as f64;
                    scale[c] = a as f32;
                    shift[c] = (self.beta[c] as f64 - mean * a) as f32;
                }
            }
            for_row_blocks(dst, channels, 256, parallel, |first, dst| {
                let src = &src[first * channels..][..dst.len()];
                for (s, d) in src
                    .chunks_exact(channels)
                    .zip(dst.chunks_exact_mut(channels))
                {
                    for c in 0..channels {
                        d[c] = s[c] * scale[c] + shift[c];
                    }
                }
                if silu {
                    activate(dst, Activation::Silu);
                }
            });
        }
        x.with_data(channels, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 40.0)
            .collect()
    }

    /// A direct NCHW convolution of `x` (upsampled by nearest to `size` first), as torch.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        weight: &[f32],
        bias: &[f32],
        k: usize,
        stride: usize,
        pad: usize,
        (uh, uw): (usize, usize),
    ) -> (Vec<f32>, usize, usize) {
        let oh = (uh + 2 * pad - k) / stride + 1;
        let ow = (uw + 2 * pad - k) / stride + 1;
        let mut y = vec![0f32; bias.len() * oh * ow];
        for (o, &b) in bias.iter().enumerate() {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b;
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy as usize >= uh || ix as usize >= uw {
                                    continue;
                                }
                                let sy = iy as usize * h / uh;
                                let sx = ix as usize * w / uw;
                                acc += x[(ci * h + sy) * w + sx]
                                    * weight[((o * c + ci) * k + ky) * k + kx];
                            }
                        }
                    }
                    y[(o * oh + oy) * ow + ox] = acc;
                }
            }
        }
        (y, oh, ow)
    }

    #[test]
    fn convolutions_match_a_direct_one() {
        // (in, out, h, w, kernel, stride, padding, upsampled size)
        for &(c, o, h, w, k, s, p, up) in &[
            (3, 5, 7, 6, 3, 1, 1, None),
            (4, 8, 9, 9, 3, 2, 1, None),
            (6, 4, 5, 4, 1, 1, 0, None),
            (5, 7, 4, 3, 3, 1, 1, Some((8, 6))),
            (2, 3, 3, 5, 3, 1, 1, Some((7, 9))),
            (40, 70, 20, 20, 3, 1, 1, None),
        ] {
            let x = values(c * h * w, 1);
            let weight = values(o * c * k * k, 2);
            let bias = values(o, 3);
            let size = up.unwrap_or((h, w));
            let (want, oh, ow) = naive_conv(&x, (c, h, w), &weight, &bias, k, s, p, size);
            let maps = FeatureMaps::from_nchw(1, c, h, w, &x);
            let got = PackedConv2d::pack(&weight, &bias, c, k, s, p).forward_upsampled(&maps, up);
            assert_eq!((got.height, got.width, got.channels), (oh, ow, o));
            for (a, b) in got.to_nchw().iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    /// Dilated taps against the direct convolution of the dilated kernel (zeros between taps),
    /// and the ReLU applied to every output, on the strip path (3x3) and the 1x1 path.
    #[test]
    fn dilated_and_activated_convolutions_match_a_direct_one() {
        let (c, o, h, w) = (5, 6, 9, 8);
        let x = values(c * h * w, 4);
        let bias = values(o, 6);
        for (k, dilation, stride) in [(3, 2, 1), (3, 2, 2), (1, 1, 1)] {
            let weight = values(o * c * k * k, 5);
            let reach = dilation * (k - 1) + 1;
            let mut spread = vec![0f32; o * c * reach * reach];
            for oc in 0..o * c {
                for ky in 0..k {
                    for kx in 0..k {
                        spread[(oc * reach + ky * dilation) * reach + kx * dilation] =
                            weight[(oc * k + ky) * k + kx];
                    }
                }
            }
            let pad = dilation * (k / 2);
            let (want, oh, ow) =
                naive_conv(&x, (c, h, w), &spread, &bias, reach, stride, pad, (h, w));
            let maps = FeatureMaps::from_nchw(1, c, h, w, &x);
            let got = PackedConv2d::pack(&weight, &bias, c, k, stride, k / 2)
                .dilated(dilation, pad)
                .activated(Activation::Relu)
                .forward(&maps);
            assert_eq!((got.height, got.width, got.channels), (oh, ow, o));
            for (a, b) in got.to_nchw().iter().zip(&want) {
                let b = b.max(0.0);
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    /// `nn.MaxPool2d(3, 2, 1)`: padding never wins, even over negative values.
    #[test]
    fn max_pool_ignores_padding() {
        let (c, h, w) = (2, 5, 4);
        let x: Vec<f32> = values(c * h * w, 7).iter().map(|v| v - 3.0).collect();
        let got = max_pool(&FeatureMaps::from_nchw(1, c, h, w, &x), 3, 2, 1);
        assert_eq!((got.height, got.width), (3, 2));
        let nchw = got.to_nchw();
        for ch in 0..c {
            for oy in 0..3usize {
                for ox in 0..2usize {
                    let mut want = f32::NEG_INFINITY;
                    for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                        for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                            want = want.max(x[(ch * h + iy) * w + ix]);
                        }
                    }
                    assert!(want < 0.0);
                    assert_eq!(nchw[(ch * 3 + oy) * 2 + ox], want);
                }
            }
        }
    }

    #[test]
    fn group_norm_matches_its_definition() {
        let (c, h, w, groups) = (8, 3, 5, 4);
        let x = values(2 * c * h * w, 4);
        let gamma = values(c, 5);
        let beta = values(c, 6);
        let maps = FeatureMaps::from_nchw(2, c, h, w, &x);
        let norm = GroupNorm::new(groups, gamma.clone(), beta.clone(), 1e-5);
        for silu in [false, true] {
            let got = norm.forward(&maps, silu).to_nchw();
            let per = c / groups * h * w;
            for (g, (group, out)) in x.chunks(per).zip(got.chunks(per)).enumerate() {
                let mean = group.iter().sum::<f32>() / per as f32;
                let var = group.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / per as f32;
                for (i, (&v, &y)) in group.iter().zip(out).enumerate() {
                    let channel = (g % groups) * (c / groups) + i / (h * w);
                    let mut want =
                        (v - mean) / (var + 1e-5).sqrt() * gamma[channel] + beta[channel];
                    if silu {
                        want /= 1.0 + (-want).exp();
                    }
                    assert!((y - want).abs() < 1e-5, "{y} vs {want}");
                }
            }
        }
    }
}
