//! Depthwise convolution (`nn.Conv2d(C, C, k, padding=k / 2, groups=C)`, stride 1: ConvNeXt's
//! 7 x 7) on channels-last maps. Each output pixel's channels are a weighted sum of its
//! neighbourhood's pixels, channel by channel: with channels last every tap is one
//! multiply-add over a contiguous run of channels, which the compiler vectorizes. Rows of
//! output pixels are shared out across threads.

use super::conv::FeatureMaps;
use super::for_row_blocks;

pub struct DepthwiseConv2d {
    kernel: usize,
    channels: usize,
    /// [kernel row][kernel column][channel].
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl DepthwiseConv2d {
    /// `weight`: [channels][1][kernel][kernel] as PyTorch stores it; `bias`: [channels].
    pub fn pack(weight: &[f32], bias: &[f32], kernel: usize) -> Self {
        let channels = bias.len();
        let taps = kernel * kernel;
        assert_eq!(weight.len(), channels * taps, "depthwise weight");
        let mut packed = vec![0f32; weight.len()];
        for c in 0..channels {
            for t in 0..taps {
                packed[t * channels + c] = weight[c * taps + t];
            }
        }
        DepthwiseConv2d {
            kernel,
            channels,
            weight: packed,
            bias: bias.to_vec(),
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn forward(&self, x: &FeatureMaps) -> FeatureMaps {
        let (c, k) = (self.channels, self.kernel);
        assert_eq!(x.channels, c, "depthwise input channels");
        let (height, width) = (x.height, x.width);
        let pad = k / 2;
        let row_values = width * c;
        let mut out = vec![0f32; x.data.len()];
        let parallel = x.data.len() * k * k >= 1 << 16;
        // one task per output row (of one image): `first` counts rows over all images
        for_row_blocks(&mut out, row_values, 1, parallel, |first, row| {
            let (image, y) = (first / height, first % height);
            let plane = &x.data[image * height * row_values..][..height * row_values];
            for pixel in row.chunks_exact_mut(c) {
                pixel.copy_from_slice(&self.bias);
            }
            for ky in 0..k {
                let Some(iy) = (y + ky).checked_sub(pad).filter(|&iy| iy < height) else {
                    continue;
                };
                let input = &plane[iy * row_values..][..row_values];
                for kx in 0..k {
                    let taps = &self.weight[(ky * k + kx) * c..][..c];
                    // output columns whose input column x + kx - pad is inside the map
                    let from = pad.saturating_sub(kx);
                    let to = (width + pad).saturating_sub(kx).min(width);
                    for ox in from..to {
                        let ix = ox + kx - pad;
                        let src = &input[ix * c..][..c];
                        let dst = &mut row[ox * c..][..c];
                        for ((d, s), w) in dst.iter_mut().zip(src).zip(taps) {
                            *d += s * w;
                        }
                    }
                }
            }
        });
        x.with_data(c, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct NCHW depthwise convolution, as PyTorch defines it.
    fn reference(
        x: &[f32],
        c: usize,
        h: usize,
        w: usize,
        weight: &[f32],
        bias: &[f32],
        k: usize,
    ) -> Vec<f32> {
        let pad = (k / 2) as isize;
        let mut out = vec![0f32; c * h * w];
        for ch in 0..c {
            for y in 0..h {
                for xo in 0..w {
                    let mut sum = bias[ch];
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                y as isize + ky as isize - pad,
                                xo as isize + kx as isize - pad,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                sum += x[(ch * h + iy as usize) * w + ix as usize]
                                    * weight[(ch * k + ky) * k + kx];
                            }
                        }
                    }
                    out[(ch * h + y) * w + xo] = sum;
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_direct_convolution() {
        let (c, h, w, k) = (5, 6, 9, 7);
        let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        let x: Vec<f32> = (0..c * h * w).map(value).collect();
        let weight: Vec<f32> = (0..c * k * k).map(|i| value(i + 3) / 7.0).collect();
        let bias: Vec<f32> = (0..c).map(|i| i as f32 / 10.0).collect();
        let want = reference(&x, c, h, w, &weight, &bias, k);
        let conv = DepthwiseConv2d::pack(&weight, &bias, k);
        let maps = FeatureMaps::from_nchw(1, c, h, w, &x);
        let got = conv.forward(&maps).to_nchw();
        for (g, r) in got.iter().zip(&want) {
            assert!((g - r).abs() < 1e-5, "{g} vs {r}");
        }
    }
}
