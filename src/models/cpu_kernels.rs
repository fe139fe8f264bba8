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
        Activation::Silu => x.iter_mut().for_each(|v| *v /= 1.0 + exp(-*v)),
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

/// Multi-head self-attention over a right-padded batch.
///
/// `qkv`: [batch * seq_len, 3 * hidden] with queries pre-scaled by 1/sqrt(head_dim);
/// returns the context of the first `queries` rows of each sequence, [batch * queries, hidden]
/// (`queries` = `seq_len` for every row; 1 when only the first token is read). Row `i` of
/// sequence `b` attends to the first `lengths[b]` keys of its sequence only. Per (sequence, head): scores = Q K^T and context = P V
/// as two GEMMs reading Q, K and V in place through strides; (sequence, head) pairs run in
/// parallel when there is enough work.
pub fn attention(
    qkv: &[f32],
    lengths: &[usize],
    seq_len: usize,
    queries: usize,
    hidden: usize,
    heads: usize,
) -> Vec<f32> {
    let head_dim = hidden / heads;
    let stride = 3 * hidden;
    let mut context = vec![0f32; lengths.len() * queries * hidden];
    let out = SharedPtr(context.as_mut_ptr());
    let work: usize = lengths
        .iter()
        .map(|&l| seq_len * l * head_dim * 2 * heads)
        .sum();

    let task = |pair: usize| {
        let (b, h) = (pair / heads, pair % heads);
        let len = lengths[b].clamp(1, seq_len);
        if seq_len <= SHORT_SEQUENCE {
            let rows_out = unsafe { out.get().add(b * queries * hidden) };
            return attend_directly(
                qkv,
                b * seq_len,
                len,
                queries,
                hidden,
                h * head_dim,
                head_dim,
                rows_out,
            );
        }
        let rows = b * seq_len;
        let q = qkv[rows * stride + h * head_dim..].as_ptr();
        let k = qkv[rows * stride + hidden + h * head_dim..].as_ptr();
        let v = qkv[rows * stride + 2 * hidden + h * head_dim..].as_ptr();
        let mut scores = vec![0f32; queries * len];
        unsafe {
            // scores[i, j] = q_i . k_j for the `len` real keys.
            gemm::gemm(
                queries,
                len,
                head_dim,
                scores.as_mut_ptr(),
                1,
                len as isize,
                false,
                q,
                1,
                stride as isize,
                k,
                stride as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for row in scores.chunks_exact_mut(len) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in row.iter_mut() {
                *s = exp(*s - max);
                sum += *s;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|s| *s *= inv);
        }
        unsafe {
            // context[i, h*d..] = sum_j p[i, j] v_j, written into this head's columns.
            gemm::gemm(
                queries,
                head_dim,
                len,
                out.get().add(b * queries * hidden + h * head_dim),
                1,
                hidden as isize,
                false,
                scores.as_ptr(),
                1,
                len as isize,
                v,
                1,
                stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };

    let pairs = lengths.len() * heads;
    if work >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        (0..pairs).into_par_iter().for_each(task);
    } else {
        (0..pairs).for_each(task);
    }
    context
}

/// Up to this length a (sequence, head) is computed with vectorized loops: two GEMM calls per
/// pair cost more in set-up than the multiply-adds they would do (measured: QA with ~35 tokens,
/// 217 -> 251 req/s at c=16 moving this from 32 to 64; at 128 a 90-token QA was slower at c=16).
const SHORT_SEQUENCE: usize = 64;

/// One (sequence, head) of attention with direct loops, for short sequences. `out` points at the
/// sequence's first context row; this head writes only its `head_dim` columns of each row (through
/// the pointer: other heads write the other columns of the same rows concurrently).
#[allow(clippy::too_many_arguments)]
fn attend_directly(
    qkv: &[f32],
    first_row: usize,
    len: usize,
    queries: usize,
    hidden: usize,
    column: usize,
    head_dim: usize,
    out: *mut f32,
) {
    let stride = 3 * hidden;
    // Keys transposed, [head_dim][SHORT_SEQUENCE] (zero past `len`): the scores of one query
    // are then one vectorized multiply-add over all keys per feature.
    let mut keys_t = vec![[0f32; SHORT_SEQUENCE]; head_dim];
    for j in 0..len {
        let k = &qkv[(first_row + j) * stride + hidden + column..][..head_dim];
        for (column_of_d, &value) in keys_t.iter_mut().zip(k) {
            column_of_d[j] = value;
        }
    }
    let mut row = vec![0f32; head_dim];
    for i in 0..queries {
        let q = &qkv[(first_row + i) * stride + column..][..head_dim];
        let mut all_scores = [0f32; SHORT_SEQUENCE];
        // Blocks of 8 keys with an 8-wide accumulator: the shape the vectorizer turns into one
        // AVX multiply and add per feature.
        for (block, scores8) in all_scores.chunks_exact_mut(8).enumerate() {
            if block * 8 >= len {
                break;
            }
            let mut acc = [0f32; 8];
            for (keys_d, &qd) in keys_t.iter().zip(q) {
                let k8 = &keys_d[block * 8..block * 8 + 8];
                for l in 0..8 {
                    acc[l] += qd * k8[l];
                }
            }
            scores8.copy_from_slice(&acc);
        }
        // Softmax over the real keys, written over all SHORT_SEQUENCE lanes (fixed trip counts
        // vectorize; the padded lanes end up exactly 0).
        let lanes = len.div_ceil(8) * 8;
        for s in &mut all_scores[len..lanes] {
            *s = f32::NEG_INFINITY;
        }
        let mut max8 = [f32::NEG_INFINITY; 8];
        for chunk in all_scores[..lanes].chunks_exact(8) {
            for l in 0..8 {
                max8[l] = if chunk[l] > max8[l] {
                    chunk[l]
                } else {
                    max8[l]
                };
            }
        }
        let max = max8.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum8 = [0f32; 8];
        for (j, chunk) in all_scores[..lanes].chunks_exact_mut(8).enumerate() {
            for l in 0..8 {
                let e = exp(chunk[l] - max);
                chunk[l] = if j * 8 + l < len { e } else { 0.0 };
                sum8[l] += chunk[l];
            }
        }
        let sum: f32 = sum8.iter().sum();
        let inv = 1.0 / sum;
        let scores = &all_scores[..len];
        row.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            let v = &qkv[(first_row + j) * stride + 2 * hidden + column..][..head_dim];
            let p = s * inv;
            row.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
        }
        // SAFETY: row i of this sequence, columns [column, column + head_dim): written by this
        // (sequence, head) task only.
        unsafe {
            std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(i * hidden + column), head_dim)
        };
    }
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr(pub(crate) *mut f32);
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
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
        let ctx = attention(&qkv, &[3, 2], seq_len, seq_len, hidden, heads);
        let first = attention(&qkv, &[3, 2], seq_len, 1, hidden, heads);
        assert_eq!(first[0..2], ctx[0..2]);
        assert_eq!(first[2..4], ctx[6..8]);
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

    /// Naive attention for checking both the direct (short) and the GEMM (long) paths.
    fn reference(
        qkv: &[f32],
        lengths: &[usize],
        seq_len: usize,
        hidden: usize,
        heads: usize,
    ) -> Vec<f32> {
        let d = hidden / heads;
        let mut out = vec![0f32; lengths.len() * seq_len * hidden];
        for (b, &len) in lengths.iter().enumerate() {
            for h in 0..heads {
                for i in 0..seq_len {
                    let row = |t: usize, part: usize| {
                        &qkv[(b * seq_len + t) * 3 * hidden + part * hidden + h * d..][..d]
                    };
                    let s: Vec<f64> = (0..len)
                        .map(|j| {
                            row(i, 0)
                                .iter()
                                .zip(row(j, 1))
                                .map(|(a, b)| (*a as f64) * (*b as f64))
                                .sum()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for k in 0..d {
                        let v: f64 = (0..len)
                            .map(|j| (s[j] - m).exp() / z * row(j, 2)[k] as f64)
                            .sum();
                        out[(b * seq_len + i) * hidden + h * d + k] = v as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn short_and_long_paths_match_a_naive_reference() {
        let (hidden, heads) = (16, 4);
        for (seq_len, lengths) in [(5usize, vec![5usize, 3]), (40, vec![40, 33, 1])] {
            let n = lengths.len() * seq_len * 3 * hidden;
            let qkv: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 60.0)
                .collect();
            let got = attention(&qkv, &lengths, seq_len, seq_len, hidden, heads);
            let want = reference(&qkv, &lengths, seq_len, hidden, heads);
            for (b, &len) in lengths.iter().enumerate() {
                for i in 0..len {
                    for c in 0..hidden {
                        let at = (b * seq_len + i) * hidden + c;
                        assert!(
                            (got[at] - want[at]).abs() < 1e-4,
                            "seq_len {seq_len} b{b} i{i} c{c}: {} vs {}",
                            got[at],
                            want[at]
                        );
                    }
                }
            }
        }
    }
}
