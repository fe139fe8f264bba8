//! One head's attention over a block of queries as two strided GEMMs around a softmax, on
//! fused QKV rows or any strided operands, through a score buffer per thread: the long-sequence
//! path of [`super::attention`], [`super::attention_rows`] and
//! [`super::attention_with_bias`].

use super::softmax_in_place;

/// Queries per score block: the block (queries x keys) stays a few hundred KiB, however long
/// the sequence.
pub(super) const QUERY_BLOCK: usize = 128;

thread_local! {
    /// Each thread's score block, kept between tasks (the GEMM overwrites it: no zeroing).
    pub(super) static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One head of one sequence in fused QKV rows ([rows, 3 * hidden], the queries pre-scaled).
pub(super) struct FusedHead<'a> {
    pub qkv: &'a [f32],
    /// The sequence's first row in `qkv`.
    pub first_row: usize,
    pub hidden: usize,
    pub head_dim: usize,
    pub head: usize,
}

impl FusedHead<'_> {
    /// [`attend_block`] for queries `first..first + block` of this head against its first
    /// `keys` rows, through the thread's score buffer; the context rows go to `out` (the
    /// block's first row at this head's column), `hidden` apart.
    ///
    /// # Safety
    /// The sequence's rows up to `max(first + block, keys)` must lie inside `qkv` (each head
    /// column inside a row: head * head_dim + head_dim <= hidden); `out` must be writable for
    /// `block` rows of `head_dim` values `hidden` apart, which nothing else reads or writes
    /// during the call.
    pub(super) unsafe fn attend(
        &self,
        first: usize,
        block: usize,
        keys: usize,
        out: *mut f32,
        bias: Option<AddToScores>,
    ) {
        let stride = 3 * self.hidden;
        let at = |row: usize, column: usize| {
            self.qkv[(self.first_row + row) * stride + column..].as_ptr()
        };
        let column = self.head * self.head_dim;
        SCORES.with_borrow_mut(|buffer| {
            if buffer.len() < block * keys {
                buffer.resize(block * keys, 0.0);
            }
            // SAFETY: q reads rows first..first+block and k, v rows 0..keys of the sequence,
            // head_dim values each from this head's column (+ hidden, + 2 * hidden), and `out`
            // takes the block's context rows: the caller's contract.
            unsafe {
                attend_block(
                    [
                        (at(first, column), stride),
                        (at(0, self.hidden + column), stride),
                        (at(0, 2 * self.hidden + column), stride),
                    ],
                    self.head_dim,
                    keys,
                    &mut buffer[..block * keys],
                    (out, self.hidden),
                    bias,
                );
            }
        });
    }
}

/// What a block's scores get before the softmax (see `biased_attention`).
pub(super) type AddToScores<'a> = &'a dyn Fn(&mut [f32]);

/// One head's attention for a block of queries, as two strided GEMMs around a softmax:
/// `scores` (queries x `keys`, overwritten) = Q Kᵀ (plus what `bias` adds to them), each row
/// softmaxed, then the context P V written to `out`. `qkv`: each operand's first row and row
/// stride; `out`: likewise.
///
/// # Safety
/// Q must be readable for `scores.len() / keys` rows of `head_dim` values at its stride, K and V
/// for `keys` rows; `out` writable for the queries' rows of `head_dim` values, which nothing
/// else reads or writes during the call.
pub(super) unsafe fn attend_block(
    qkv: [(*const f32, usize); 3],
    head_dim: usize,
    keys: usize,
    scores: &mut [f32],
    out: (*mut f32, usize),
    bias: Option<AddToScores>,
) {
    let [(q, q_stride), (k, k_stride), (v, v_stride)] = qkv;
    let queries = scores.len() / keys;
    // SAFETY: the operands' extents are the caller's contract; `scores` is queries x keys.
    unsafe {
        gemm::gemm(
            queries,
            keys,
            head_dim,
            scores.as_mut_ptr(),
            1,
            keys as isize,
            false,
            q,
            1,
            q_stride as isize,
            k,
            k_stride as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    if let Some(bias) = bias {
        bias(scores);
    }
    scores.chunks_exact_mut(keys).for_each(softmax_in_place);
    // SAFETY: as above; `out` takes queries rows of head_dim values, `out.1` apart.
    unsafe {
        gemm::gemm(
            queries,
            head_dim,
            keys,
            out.0,
            1,
            out.1 as isize,
            false,
            scores.as_ptr(),
            1,
            keys as isize,
            v,
            1,
            v_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
