//! Multi-head self-attention on the fused QKV rows of a right-padded batch: no permutes or
//! copies, and padded keys are skipped rather than masked. Long sequences run as two strided
//! GEMMs per (sequence, head) through the `gemm` crate (which picks its microkernels for the
//! CPU at run time); short ones as direct loops that the compiler vectorizes.

use rayon::prelude::*;

use super::attention_block::{attend_block, FusedHead, QUERY_BLOCK, SCORES};
use super::portable::exp;
use super::SharedPtr;

/// Work (multiply-adds) above which attention is spread over threads.
pub(super) const PARALLEL_MIN_MACS: usize = 1 << 20;

/// Multi-head self-attention over a right-padded batch.
///
/// `qkv`: [batch * seq_len, 3 * hidden] with queries pre-scaled by 1/sqrt(head_dim);
/// returns the context of the first `queries` rows of each sequence, [batch * queries, hidden]
/// (`queries` = `seq_len` for every row; 1 when only the first token is read). Row `i` of
/// sequence `b` attends to the first `lengths[b]` keys of its sequence only. Per (sequence,
/// head): scores = Q K^T and context = P V as two GEMMs reading Q, K and V in place through
/// strides; (sequence, head) pairs run in parallel when there is enough work.
///
/// With `bf16` (an encoder whose dense layers run in bf16) sequences of [`BF16_MIN_SEQUENCE`]
/// or more run both products in bf16 where the CPU has AVX512-BF16 (`x86::bf16_attention`: on
/// the AMX tiles where it has them).
///
/// Panics unless `qkv` holds exactly `lengths.len() * seq_len` rows of `3 * hidden` and
/// `queries <= seq_len` (what keeps the strided reads and writes below in bounds).
pub fn attention(
    qkv: &[f32],
    lengths: &[usize],
    seq_len: usize,
    queries: usize,
    hidden: usize,
    heads: usize,
    bf16: bool,
) -> Vec<f32> {
    assert_eq!(qkv.len(), lengths.len() * seq_len * 3 * hidden, "qkv rows");
    assert!(queries <= seq_len, "{queries} queries of {seq_len} rows");
    let head_dim = hidden / heads;
    let mut context = vec![0f32; lengths.len() * queries * hidden];
    let out = SharedPtr(context.as_mut_ptr());
    let work: usize = lengths
        .iter()
        .map(|&l| seq_len * l * head_dim * 2 * heads)
        .sum();

    #[cfg(target_arch = "x86_64")]
    let bf16_products = bf16
        && seq_len >= BF16_MIN_SEQUENCE
        && head_dim.is_multiple_of(2)
        && super::x86::bf16::available();
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bf16;

    let task = |pair: usize| {
        let (b, h) = (pair / heads, pair % heads);
        let len = lengths[b].clamp(1, seq_len);
        #[cfg(target_arch = "x86_64")]
        if bf16_products {
            let head = super::x86::bf16_attention::HeadOperands {
                qkv,
                first_row: b * seq_len,
                stride: 3 * hidden,
                q: h * head_dim,
                k: hidden + h * head_dim,
                v: 2 * hidden + h * head_dim,
                head_dim,
            };
            // SAFETY: the CPU has AVX512-F and AVX512-BF16 and head_dim is even (checked
            // above); sequence b's context rows start at b * queries * hidden, inside
            // `context`, `hidden` apart, and this task writes only head h's columns of them,
            // which no other task writes; `context` outlives the tasks. The operands are
            // read through the `qkv` slice (bounds-checked).
            unsafe {
                let rows_out = out.get().add(b * queries * hidden + h * head_dim);
                super::x86::bf16_attention::attend(&head, len, queries, rows_out, hidden);
            }
            return;
        }
        if seq_len <= SHORT_SEQUENCE {
            // SAFETY: sequence b's context rows start at b * queries * hidden, inside `context`
            // (b < lengths.len()); the callee writes only head h's columns of those rows, which
            // no other task writes, and `context` outlives the tasks.
            unsafe {
                let rows_out = out.get().add(b * queries * hidden);
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
        }
        // Blocks of queries through one score buffer per thread: a long sequence (a speech
        // model's minutes of frames) never holds its whole queries x keys scores.
        let head = FusedHead {
            qkv,
            first_row: b * seq_len,
            hidden,
            head_dim,
            head: h,
        };
        for first in (0..queries).step_by(QUERY_BLOCK) {
            let block = QUERY_BLOCK.min(queries - first);
            // SAFETY: the context rows b*queries+first..+block, columns h*head_dim..+head_dim,
            // are inside `context` and written by this (sequence, head) task only; `context`
            // outlives the tasks. Rows first..first+block <= queries and 0..len <= seq_len of
            // sequence b are inside `qkv` (asserted size).
            unsafe {
                let rows_out = out.get().add((b * queries + first) * hidden + h * head_dim);
                head.attend(first, block, len, rows_out, None);
            }
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

/// From this length a bf16 encoder's attention runs in bf16: on the AMX tiles Whisper's 1500
/// positions gained 6% requests/s at 16 clients (`benches/load_asr.py`, bf16); a ViT's 197
/// gained nothing over the f32 GEMMs (perf: 14.8% of the time against 15.1%), so it keeps
/// their precision.
#[cfg(target_arch = "x86_64")]
const BF16_MIN_SEQUENCE: usize = 256;

/// Up to this length a (sequence, head) is computed with vectorized loops: two GEMM calls per
/// pair cost more in set-up than the multiply-adds they would do (measured: QA with ~35 tokens,
/// 217 -> 251 req/s at c=16 moving this from 32 to 64; at 128 a 90-token QA was slower at c=16).
const SHORT_SEQUENCE: usize = 64;

/// One (sequence, head) of attention with direct loops, for short sequences. `out` points at the
/// sequence's first context row; this head writes only its `head_dim` columns of each row (through
/// the pointer: other heads write the other columns of the same rows concurrently).
///
/// # Safety
/// `out` must be valid for writes of `queries` rows of `hidden` values, and columns
/// `column..column + head_dim` of those rows must not be accessed by anyone else during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_directly(
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
    // Keys transposed, [head_dim][lanes] (zero past `len`): the scores of one query are then
    // one vectorized multiply-add over all keys per feature. Only as wide as the keys need (a
    // 64-wide buffer per (sequence, head) cost more to zero than 6 tokens' products).
    let lanes = len.div_ceil(8) * 8;
    let mut keys_t = vec![0f32; head_dim * lanes];
    for j in 0..len {
        let k = &qkv[(first_row + j) * stride + hidden + column..][..head_dim];
        for (d, &value) in k.iter().enumerate() {
            keys_t[d * lanes + j] = value;
        }
    }
    let mut row = vec![0f32; head_dim];
    for i in 0..queries {
        let q = &qkv[(first_row + i) * stride + column..][..head_dim];
        let mut all_scores = [0f32; SHORT_SEQUENCE];
        // Blocks of 8 keys with an 8-wide accumulator: the shape the vectorizer turns into one
        // AVX multiply and add per feature.
        for (block, scores8) in all_scores[..lanes].chunks_exact_mut(8).enumerate() {
            let mut acc = [0f32; 8];
            for (keys_d, &qd) in keys_t.chunks_exact(lanes).zip(q) {
                let k8 = &keys_d[block * 8..block * 8 + 8];
                for l in 0..8 {
                    acc[l] += qd * k8[l];
                }
            }
            scores8.copy_from_slice(&acc);
        }
        // Softmax over the real keys, written over all SHORT_SEQUENCE lanes (fixed trip counts
        // vectorize; the padded lanes end up exactly 0).
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

/// Rows of a matrix holding attention heads side by side: head h of row r is
/// `data[r * stride + offset + h * head_dim..][..head_dim]` (Q, K or V in a fused projection's
/// output, read in place).
#[derive(Clone, Copy)]
pub struct HeadRows<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub stride: usize,
    pub offset: usize,
}

impl HeadRows<'_> {
    /// Panics unless every head of every row lies inside `data` (what keeps the strided GEMM
    /// reads in bounds).
    fn check(&self, width: usize) {
        assert!(self.offset + width <= self.stride, "heads inside a row");
        assert!(self.rows > 0, "no rows");
        assert!(
            (self.rows - 1) * self.stride + self.offset + width <= self.data.len(),
            "rows inside the data"
        );
    }

    fn at(&self, row: usize, column: usize) -> *const f32 {
        self.data[row * self.stride + self.offset + column..].as_ptr()
    }
}

/// Every query row attending to every key row, head by head, no mask (a UNet's self- and
/// cross-attention over pixels): queries pre-scaled by 1/sqrt(head_dim); returns the context,
/// [q.rows, heads * head_dim]. Tasks of (head, block of queries) run in parallel, each two
/// strided GEMMs around a softmax.
pub fn attention_rows(
    q: HeadRows,
    k: HeadRows,
    v: HeadRows,
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let hidden = heads * head_dim;
    for rows in [&q, &k, &v] {
        rows.check(hidden);
    }
    assert_eq!(k.rows, v.rows, "keys and values");
    let keys = k.rows;
    let blocks = q.rows.div_ceil(QUERY_BLOCK);
    let mut context = vec![0f32; q.rows * hidden];
    let out = SharedPtr(context.as_mut_ptr());
    let task = |t: usize| {
        let (h, block) = (t / blocks, t % blocks);
        let first = block * QUERY_BLOCK;
        let queries = QUERY_BLOCK.min(q.rows - first);
        SCORES.with_borrow_mut(|buffer| {
            if buffer.len() < queries * keys {
                buffer.resize(queries * keys, 0.0);
            }
            let scores = &mut buffer[..queries * keys];
            // SAFETY: q reads rows first..first+queries, k and v rows 0..keys, head h's
            // head_dim columns each: inside their data (checked above). The context rows
            // first..first+queries, columns h*head_dim..(h+1)*head_dim, are inside `context`
            // (q.rows x hidden) and written by this (head, block) task only; `context` outlives
            // the tasks.
            unsafe {
                attend_block(
                    [
                        (q.at(first, h * head_dim), q.stride),
                        (k.at(0, h * head_dim), k.stride),
                        (v.at(0, h * head_dim), v.stride),
                    ],
                    head_dim,
                    keys,
                    scores,
                    (out.get().add(first * hidden + h * head_dim), hidden),
                    None,
                );
            }
        });
    };
    let tasks = heads * blocks;
    if q.rows * keys * hidden >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let ctx = attention(&qkv, &[3, 2], seq_len, seq_len, hidden, heads, false);
        let first = attention(&qkv, &[3, 2], seq_len, 1, hidden, heads, false);
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
        // 5 and 40: the direct loops (<= SHORT_SEQUENCE); 80: the two GEMMs; 300: the two
        // GEMMs on three blocks of queries (QUERY_BLOCK).
        for (seq_len, lengths) in [
            (5usize, vec![5usize, 3]),
            (40, vec![40, 33, 1]),
            (80, vec![80, 71, 1]),
            (300, vec![300, 171, 1]),
        ] {
            let n = lengths.len() * seq_len * 3 * hidden;
            let qkv: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 60.0)
                .collect();
            let got = attention(&qkv, &lengths, seq_len, seq_len, hidden, heads, false);
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

    /// The bf16 path (bf16 operands, f32 sums; on the AMX tiles or `vdpbf16ps`, whichever the
    /// CPU has): within bf16's rounding of the naive reference,
    /// for head dims that fill the tiles (64) and that do not (40), odd lengths, and only the
    /// first query kept.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn bf16_path_matches_the_reference_within_bf16_rounding() {
        if !super::super::x86::bf16::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (hidden, heads, seq_len, lengths) in [
            (128usize, 2usize, 256usize, vec![256usize, 71, 1]),
            (80, 2, 303, vec![303, 150, 33]),
        ] {
            let n = lengths.len() * seq_len * 3 * hidden;
            let qkv: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 200.0)
                .collect();
            let got = attention(&qkv, &lengths, seq_len, seq_len, hidden, heads, true);
            let first = attention(&qkv, &lengths, seq_len, 1, hidden, heads, true);
            let want = reference(&qkv, &lengths, seq_len, hidden, heads);
            let mut worst = 0f32;
            for (b, &len) in lengths.iter().enumerate() {
                assert_eq!(
                    first[b * hidden..(b + 1) * hidden],
                    got[b * seq_len * hidden..(b * seq_len + 1) * hidden]
                );
                for i in 0..len {
                    for c in 0..hidden {
                        let at = (b * seq_len + i) * hidden + c;
                        worst = worst.max((got[at] - want[at]).abs());
                    }
                }
            }
            eprintln!("hidden {hidden} seq_len {seq_len}: largest difference {worst}");
            assert!(worst < 4e-3, "hidden {hidden} seq_len {seq_len}: {worst}");
            // The bf16 products ran (the f32 path agrees within 1e-5): bf16's rounding shows.
            assert!(worst > 1e-4, "hidden {hidden} seq_len {seq_len}: {worst}");
        }
    }

    #[test]
    fn attention_rows_match_the_fused_self_attention() {
        // Self-attention through fused QKV rows both ways: 300 rows (three query blocks),
        // 3 heads of 4.
        let (rows, heads, head_dim) = (300, 3, 4);
        let hidden = heads * head_dim;
        let qkv: Vec<f32> = (0..rows * 3 * hidden)
            .map(|i| ((i * 29 % 53) as f32 - 26.0) / 20.0)
            .collect();
        let want = attention(&qkv, &[rows], rows, rows, hidden, heads, false);
        let view = |offset| HeadRows {
            data: &qkv,
            rows,
            stride: 3 * hidden,
            offset,
        };
        let got = attention_rows(view(0), view(hidden), view(2 * hidden), heads, head_dim);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
