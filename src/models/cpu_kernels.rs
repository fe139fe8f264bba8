//! Fused CPU kernels for the encoder, on plain f32 slices: attention straight from the fused QKV
//! rows (no permutes or copies; padded keys are skipped rather than masked), and in-place
//! LayerNorm, activations and residual adds. Dense layers are in `linear`.

use rayon::prelude::*;

use super::config::Activation;

/// Work (multiply-adds) above which attention is spread over threads.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// Row-wise LayerNorm over `width` features, in place (two-pass mean/variance in f32, like torch).
pub fn layer_norm(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(width) {
        let mean = row.iter().sum::<f32>() / width as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

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
    }
}

/// e^x in f32 with a relative error near 1 ulp: 2^k · p(r), |r| <= ln2/2, degree-6 Taylor.
/// Branch-free pure arithmetic, so loops over it vectorize (libm's expf does not).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + 0.5).floor();
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) << 23) as u32)
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

/// Multi-head self-attention over a right-padded batch.
///
/// `qkv`: [batch * seq_len, 3 * hidden] with queries pre-scaled by 1/sqrt(head_dim);
/// returns the context, [batch * seq_len, hidden]. Row `i` of sequence `b` attends to the first
/// `lengths[b]` keys of its sequence only.
pub fn attention(
    qkv: &[f32],
    lengths: &[usize],
    seq_len: usize,
    hidden: usize,
    heads: usize,
) -> Vec<f32> {
    let head_dim = hidden / heads;
    let stride = 3 * hidden;
    let mut context = vec![0f32; lengths.len() * seq_len * hidden];
    let work: usize = lengths
        .iter()
        .map(|&l| seq_len * l * head_dim * 2 * heads)
        .sum();

    // One task per (sequence, head): it writes its own columns of its own rows.
    let task = |(b, h): (usize, usize), out: &mut [f32]| {
        let len = lengths[b].max(1);
        let base = b * seq_len;
        let mut scores = vec![0f32; len];
        for i in 0..seq_len {
            let q = &qkv[(base + i) * stride + h * head_dim..][..head_dim];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let k = &qkv[(base + j) * stride + hidden + h * head_dim..][..head_dim];
                *s = dot(q, k);
                max = max.max(*s);
            }
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = exp(*s - max);
                sum += *s;
            }
            let inv = 1.0 / sum;
            let row = &mut out[i * hidden + h * head_dim..][..head_dim];
            row.fill(0.0);
            for (j, s) in scores.iter().enumerate() {
                let v = &qkv[(base + j) * stride + 2 * hidden + h * head_dim..][..head_dim];
                let p = s * inv;
                for (o, vv) in row.iter_mut().zip(v) {
                    *o += p * vv;
                }
            }
        }
    };

    let rows_per_seq = seq_len * hidden;
    if work >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        // Sequences in parallel; heads of one sequence in turn (they share its output rows).
        context
            .par_chunks_mut(rows_per_seq)
            .enumerate()
            .for_each(|(b, out)| {
                for h in 0..heads {
                    task((b, h), out);
                }
            });
    } else {
        for (b, out) in context.chunks_mut(rows_per_seq).enumerate() {
            for h in 0..heads {
                task((b, h), out);
            }
        }
    }
    context
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators so the compiler vectorizes without reassociation.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn attention_ignores_padded_keys_and_matches_a_direct_softmax() {
        // One head, head_dim 2, two sequences of padded length 3 (lengths 3 and 2).
        let (hidden, heads, seq_len) = (2, 1, 3);
        let rows: Vec<[f32; 6]> = vec![
            [0.1, 0.2, 1.0, 0.0, 1.0, 2.0],
            [0.3, -0.1, 0.0, 1.0, 3.0, 4.0],
            [0.0, 0.5, 1.0, 1.0, 5.0, 6.0],
            [0.2, 0.2, 1.0, 0.0, 1.0, 1.0],
            [0.1, 0.0, 0.0, 1.0, 2.0, 2.0],
            [9.0, 9.0, 9.0, 9.0, 100.0, 100.0], // padding: must not be attended to
        ];
        let qkv: Vec<f32> = rows.iter().flatten().copied().collect();
        let ctx = attention(&qkv, &[3, 2], seq_len, hidden, heads);
        for (b, len) in [(0usize, 3usize), (1, 2)] {
            for i in 0..len {
                let q = &rows[b * 3 + i][0..2];
                let s: Vec<f32> = (0..len)
                    .map(|j| q[0] * rows[b * 3 + j][2] + q[1] * rows[b * 3 + j][3])
                    .collect();
                let m = s.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..2 {
                    let want: f32 = (0..len).map(|j| e[j] / z * rows[b * 3 + j][4 + d]).sum();
                    let got = ctx[(b * 3 + i) * 2 + d];
                    assert!((got - want).abs() < 1e-5, "b{b} i{i} d{d}: {got} vs {want}");
                }
            }
        }
    }
}
