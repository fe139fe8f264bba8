//! Element-wise and row-wise kernels on plain f32 slices: in-place LayerNorm, activations and
//! residual adds, and softmax. Plain loops, the same on every target: written so that the
//! compiler vectorizes them for the CPU the crate is built for (AVX2 + FMA with our x86-64-v3
//! build, NEON on aarch64). No intrinsics, no `unsafe`.

use anyhow::{bail, Result};

/// An element-wise activation, as `transformers` names them in `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU: `gelu` in transformers.
    Gelu,
    /// Tanh approximation: `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`.
    GeluTanh,
    Relu,
    /// `silu` / `swish` (Marian).
    Silu,
    /// `quick_gelu` (CLIP): x · sigmoid(1.702 x).
    QuickGelu,
}

impl Activation {
    /// A `transformers` activation name (`ACT2FN` key).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "quick_gelu" => Activation::QuickGelu,
            other => bail!("activation `{other}` is not supported"),
        })
    }
}

/// Row-wise LayerNorm over `width` features, in place (two-pass mean/variance in f32, like torch).
pub fn layer_norm(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(width) {
        let mean = lane_sum(row, |v| v) / width as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// Σ f(v) over a row, summed per lane (one running sum is a dependency chain the compiler may
/// not reorder: LayerNorm's two sums ran scalar, 3.5% of a ViT's time).
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[inline(always)]
pub fn activate(x: &mut [f32], activation: Activation) {
    match activation {
        Activation::Gelu => x
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
        Activation::GeluTanh => x.iter_mut().for_each(|v| {
            let u = 0.797_884_6 * (*v + 0.044715 * *v * *v * *v);
            *v = 0.5 * *v * (1.0 + tanh(u));
        }),
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Silu => x.iter_mut().for_each(|v| *v /= 1.0 + exp(-*v)),
        Activation::QuickGelu => x.iter_mut().for_each(|v| *v /= 1.0 + exp(-1.702 * *v)),
    }
}

/// e^x in f32 with a relative error near 1 ulp: 2^k · p(r), |r| <= ln2/2, degree-6 Taylor.
/// Branch-free, and k is read from the bits of `x·log2(e) + 1.5·2^23` (round to nearest) instead of
/// a float-to-int conversion, which Rust's saturating `as` would do lane by lane: loops over this
/// vectorize fully (libm's expf does not vectorize at all).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k_bits + 127) << 23) as u32)
}

/// erf, Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), vectorizable.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-z * z)).copysign(x)
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    let e = exp(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// The dot product of two equal-length rows, summed per lane (so it vectorizes).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Softmax of a row in place (max subtracted first), the max and the sum kept per lane so the
/// loops vectorize: one running sum is a dependency chain the compiler may not reorder, and it
/// made the softmax of Whisper's 1500 x 1500 attention cost as much as its two products.
#[inline(always)]
pub fn softmax_in_place(row: &mut [f32]) {
    const LANES: usize = 16;
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lane_max.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lane_max)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut lane_sum = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (sum, v) in lane_sum.iter_mut().zip(chunk) {
            *v = exp(*v - max);
            *sum += *v;
        }
    }
    let mut total: f32 = lane_sum.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        total += *v;
    }
    let inv = 1.0 / total;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Softmax of a row of logits, in f32 as numpy computes it (max subtracted first).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Log-softmax of a row of logits (beam search scores in log-probabilities).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|&x| x - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_in_place_matches_the_plain_one() {
        for n in [1, 7, 16, 33, 1500] {
            let logits: Vec<f32> = (0..n).map(|i| ((i * 37) % 23) as f32 * 0.7 - 5.0).collect();
            let mut row = logits.clone();
            softmax_in_place(&mut row);
            for (a, b) in row.iter().zip(softmax(&logits)) {
                assert!((a - b).abs() <= 1e-6 * b.max(1e-3), "{n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn log_softmax_normalises() {
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn erf_exp_tanh_are_accurate() {
        for &(x, want) in &[
            (0.0f32, 0.0f64),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (-2.0, -0.995_322_265_0),
            (3.5, 0.999_999_256_9),
        ] {
            assert!((erf(x) as f64 - want).abs() < 4e-7, "erf({x}) = {}", erf(x));
        }
        for i in -800..800 {
            let x = i as f32 * 0.1;
            let want = (x as f64).exp();
            assert!(
                ((exp(x) as f64 - want) / want).abs() < 3e-7,
                "exp({x}) = {} vs {want}",
                exp(x)
            );
            let want = (x as f64).tanh();
            assert!((tanh(x) as f64 - want).abs() < 3e-7, "tanh({x})");
        }
    }
}
