//! Self-attention with an additive bias on the scores before the softmax (WavLM's gated
//! relative positions), on the fused QKV rows of one sequence: the same blocks of queries and
//! strided GEMMs as [`super::attention`]'s long sequences.

use rayon::prelude::*;

use super::attention::PARALLEL_MIN_MACS;
use super::attention_block::{FusedHead, QUERY_BLOCK};
use super::SharedPtr;

/// What one head's scores get before the softmax.
pub trait ScoreBias: Sync {
    /// Adds to `scores`: the rows of queries `first_query..`, each as wide as the sequence.
    fn add(&self, head: usize, first_query: usize, scores: &mut [f32]);
}

/// Every row of one sequence attending to every row, `bias` added to each head's scores:
/// `qkv` [seq_len, 3 * hidden] with queries pre-scaled by 1/sqrt(head_dim); returns the
/// context, [seq_len, hidden]. Tasks of (head, block of queries) run in parallel when there is
/// enough work.
///
/// Panics unless `qkv` holds exactly `seq_len` rows of `3 * hidden` (what keeps the strided
/// reads in bounds).
pub fn attention_with_bias(
    qkv: &[f32],
    seq_len: usize,
    hidden: usize,
    heads: usize,
    bias: &dyn ScoreBias,
) -> Vec<f32> {
    assert_eq!(qkv.len(), seq_len * 3 * hidden, "qkv rows");
    let head_dim = hidden / heads;
    let mut context = vec![0f32; seq_len * hidden];
    let out = SharedPtr(context.as_mut_ptr());
    let blocks = seq_len.div_ceil(QUERY_BLOCK);
    let task = |job: usize| {
        let (h, first) = (job / blocks, (job % blocks) * QUERY_BLOCK);
        let block = QUERY_BLOCK.min(seq_len - first);
        let head = FusedHead {
            qkv,
            first_row: 0,
            hidden,
            head_dim,
            head: h,
        };
        let add = |scores: &mut [f32]| bias.add(h, first, scores);
        // SAFETY: rows first..first+block and 0..seq_len are inside `qkv` (asserted size;
        // h * head_dim + head_dim <= hidden). The context rows first..first+block, columns
        // h*head_dim..+head_dim, are inside `context` and written by this task only; `context`
        // outlives the tasks.
        unsafe {
            let rows_out = out.get().add(first * hidden + h * head_dim);
            head.attend(first, block, seq_len, rows_out, Some(&add));
        }
    };
    let jobs = heads * blocks;
    if seq_len * seq_len * hidden * 2 >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        (0..jobs).into_par_iter().for_each(task);
    } else {
        (0..jobs).for_each(task);
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bias[h][i][j] = (h + 1) * (j - i) / 10
    struct Ramp {
        seq_len: usize,
    }

    impl ScoreBias for Ramp {
        fn add(&self, head: usize, first_query: usize, scores: &mut [f32]) {
            for (r, row) in scores.chunks_exact_mut(self.seq_len).enumerate() {
                for (j, s) in row.iter_mut().enumerate() {
                    *s += (head + 1) as f32 * (j as f32 - (first_query + r) as f32) / 10.0;
                }
            }
        }
    }

    #[test]
    fn biased_attention_matches_a_naive_softmax() {
        let (hidden, heads) = (8, 2);
        let d = hidden / heads;
        // 7: one block of queries; 300: three (QUERY_BLOCK)
        for seq_len in [7usize, 300] {
            let qkv: Vec<f32> = (0..seq_len * 3 * hidden)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 60.0)
                .collect();
            let got = attention_with_bias(&qkv, seq_len, hidden, heads, &Ramp { seq_len });
            let row = |t: usize, part: usize, h: usize| {
                &qkv[t * 3 * hidden + part * hidden + h * d..][..d]
            };
            for h in 0..heads {
                for i in (0..seq_len).step_by(13) {
                    let s: Vec<f64> = (0..seq_len)
                        .map(|j| {
                            let dot: f64 = row(i, 0, h)
                                .iter()
                                .zip(row(j, 1, h))
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum();
                            dot + (h + 1) as f64 * (j as f64 - i as f64) / 10.0
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for k in 0..d {
                        let want: f64 = (0..seq_len)
                            .map(|j| (s[j] - m).exp() / z * row(j, 2, h)[k] as f64)
                            .sum();
                        let got = got[i * hidden + h * d + k] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{seq_len} h{h} i{i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
