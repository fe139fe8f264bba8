//! `nn.Conv1d` over channels-last sequences ([frames][channels]), on [`PackedLinear`]'s panels:
//! Wav2Vec2's feature encoder (strided, unpadded: each output frame's window is a contiguous run
//! of the input, multiplied in place) and its positional convolution (grouped and padded: the
//! windows unfolded per group).

use super::conv::pack_taps;
use super::{for_row_blocks, PackedLinear};

/// Output frames per task: enough rows for the microkernels' full strips.
const FRAME_BLOCK: usize = 128;

pub struct PackedConv1d {
    kernel: usize,
    stride: usize,
    padding: usize,
    inputs: usize,
    outputs: usize,
    /// One layer per group: [out / groups] x [kernel][in / groups] (tap-major, as the windows
    /// are laid out channels-last).
    groups: Vec<PackedLinear>,
}

impl PackedConv1d {
    /// `weight`: [out][in / groups][kernel] as PyTorch stores it; `bias`: [out] (zeros for a
    /// convolution without one).
    pub fn pack(
        weight: &[f32],
        bias: &[f32],
        inputs: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Self {
        let outputs = bias.len();
        assert!(groups >= 1 && inputs.is_multiple_of(groups) && outputs.is_multiple_of(groups));
        assert!(kernel >= 1 && stride >= 1);
        let (group_in, group_out) = (inputs / groups, outputs / groups);
        assert_eq!(
            weight.len(),
            outputs * group_in * kernel,
            "convolution weight"
        );
        // Group g's outputs are rows [g * group_out, (g + 1) * group_out) of the weight.
        let per_group = group_out * group_in * kernel;
        let layers = (0..groups)
            .map(|g| {
                pack_taps(
                    &weight[g * per_group..(g + 1) * per_group],
                    &bias[g * group_out..(g + 1) * group_out],
                    group_in,
                    kernel,
                )
            })
            .collect();
        PackedConv1d {
            kernel,
            stride,
            padding,
            inputs,
            outputs,
            groups: layers,
        }
    }

    /// This convolution with each group's layer converted (to the dense form of the network's
    /// other layers: bf16 or int8 panels).
    pub fn map_layers(self, convert: impl Fn(PackedLinear) -> PackedLinear) -> Self {
        PackedConv1d {
            groups: self.groups.into_iter().map(convert).collect(),
            ..self
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Output frames for `frames` input frames (PyTorch's formula; 0 when the input is shorter
    /// than the kernel).
    pub fn output_frames(&self, frames: usize) -> usize {
        (frames + 2 * self.padding)
            .checked_sub(self.kernel)
            .map_or(0, |n| n / self.stride + 1)
    }

    /// `x`: `frames` rows of `inputs` channels → the output rows of `outputs` channels.
    pub fn forward(&self, x: &[f32], frames: usize) -> Vec<f32> {
        assert_eq!(x.len(), frames * self.inputs, "convolution input");
        let out_frames = self.output_frames(frames);
        let mut y = vec![0f32; out_frames * self.outputs];
        let macs = out_frames * self.outputs * self.kernel * self.inputs / self.groups.len();
        let parallel = macs >= 1 << 21;
        if self.groups.len() == 1 && self.padding == 0 {
            // Output frame t reads input frames [t * stride, t * stride + kernel): a contiguous
            // run of kernel * inputs values, stride * inputs after the last one.
            let layer = &self.groups[0];
            let step = self.stride * self.inputs;
            for_row_blocks(&mut y, self.outputs, FRAME_BLOCK, parallel, |first, y| {
                let rows = y.len() / self.outputs;
                layer.forward_strided_into(&x[first * step..], rows, step, y);
            });
            return y;
        }
        let group_in = self.inputs / self.groups.len();
        let group_out = self.outputs / self.groups.len();
        let taps = self.kernel * group_in;
        for_row_blocks(&mut y, self.outputs, FRAME_BLOCK, parallel, |first, y| {
            let rows = y.len() / self.outputs;
            let mut windows = vec![0f32; rows * taps];
            let mut part = vec![0f32; rows * group_out];
            for (g, layer) in self.groups.iter().enumerate() {
                for (i, window) in windows.chunks_exact_mut(taps).enumerate() {
                    let start = ((first + i) * self.stride) as isize - self.padding as isize;
                    for (t, tap) in window.chunks_exact_mut(group_in).enumerate() {
                        let frame = start + t as isize;
                        if frame < 0 || frame as usize >= frames {
                            tap.fill(0.0); // zero padding
                        } else {
                            let from = frame as usize * self.inputs + g * group_in;
                            tap.copy_from_slice(&x[from..from + group_in]);
                        }
                    }
                }
                layer.forward_into(&windows, rows, &mut part);
                for (row, values) in y
                    .chunks_exact_mut(self.outputs)
                    .zip(part.chunks_exact(group_out))
                {
                    row[g * group_out..(g + 1) * group_out].copy_from_slice(values);
                }
            }
        });
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's conv1d, written out: y[t][o] = b[o] + Σ_c Σ_k w[o][c][k] x[t*s + k - p][g*cin + c].
    fn naive(
        x: &[f32],
        frames: usize,
        w: &[f32],
        b: &[f32],
        (inputs, kernel, stride, padding, groups): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let outputs = b.len();
        let (gin, gout) = (inputs / groups, outputs / groups);
        let out_frames = (frames + 2 * padding - kernel) / stride + 1;
        let mut y = vec![0f32; out_frames * outputs];
        for t in 0..out_frames {
            for o in 0..outputs {
                let g = o / gout;
                let mut sum = b[o] as f64;
                for c in 0..gin {
                    for k in 0..kernel {
                        let frame = (t * stride + k) as isize - padding as isize;
                        if frame >= 0 && (frame as usize) < frames {
                            sum += w[(o * gin + c) * kernel + k] as f64
                                * x[frame as usize * inputs + g * gin + c] as f64;
                        }
                    }
                }
                y[t * outputs + o] = sum as f32;
            }
        }
        y
    }

    #[test]
    fn packed_conv1d_matches_pytorchs_formula() {
        // (inputs, kernel, stride, padding, groups, outputs, frames): Wav2Vec2's first layer
        // (1 channel, 10 taps, stride 5), a later one, and the positional convolution (grouped,
        // padded, an even kernel); long enough for several frame blocks.
        for &(inputs, kernel, stride, padding, groups, outputs, frames) in &[
            (1, 10, 5, 0, 1, 24, 1403),
            (24, 3, 2, 0, 1, 24, 280),
            (16, 8, 1, 4, 4, 16, 300),
            (6, 2, 2, 0, 1, 70, 9),
        ] {
            let shape = (inputs, kernel, stride, padding, groups);
            let w: Vec<f32> = (0..outputs * inputs / groups * kernel)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 200.0)
                .collect();
            let b: Vec<f32> = (0..outputs).map(|o| o as f32 / 10.0 - 1.0).collect();
            let x: Vec<f32> = (0..frames * inputs)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let conv = PackedConv1d::pack(&w, &b, inputs, kernel, stride, padding, groups);
            let got = conv.forward(&x, frames);
            let want = naive(&x, frames, &w, &b, shape);
            assert_eq!(got.len(), want.len(), "{shape:?}");
            assert_eq!(got.len(), conv.output_frames(frames) * outputs);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{shape:?} at {i}: {g} vs {w}"
                );
            }
        }
    }
}
