//! One (sequence, head) of self-attention with both products in bf16, for encoders whose dense
//! layers run in bf16 (`SERVER_DTYPE=bfloat16`): Q, K, the probabilities and V rounded to bf16,
//! every sum and the softmax in f32 — what torch's bf16 attention rounds, and no more. The
//! products run on the AMX tiles where the CPU has them, else on `vdpbf16ps` (`x86::bf16`'s
//! microkernel: AMD Zen 4, Intel without AMX), the same numbers summed in another order.
//!
//! Keys and values are packed once per call as weight panels (`x86::bf16`'s layout: per pair of
//! inputs, 32 output columns; padded to the tiles' 16 pairs either way). Queries go 32 at a time: their scores against every
//! key (32 x keys f32, in L2 for Whisper's 1500 positions), the softmax of each row, its
//! probabilities rounded to bf16 pairs, and their product with the values, written into the
//! head's columns of the context. Nothing of size keys x keys exists at once.

use super::amx::{self, Bf16Operands, Start, Tiles};
use super::bf16::{microkernel, RowOperands, ROWS};
use super::bf16_round::{bf16_pair, round_row};
use crate::kernels::softmax_in_place;

/// Rows (queries) and columns (keys, or head dims) of one block of results.
const BLOCK: usize = 2 * amx::TILE_ROWS;

/// Where one (sequence, head) reads its operands: rows `first_row`.. of `qkv` (`stride` floats
/// apart), the head's queries, keys and values at columns `q`, `k` and `v`, `head_dim` wide.
pub struct HeadOperands<'a> {
    pub qkv: &'a [f32],
    pub first_row: usize,
    pub stride: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub head_dim: usize,
}

impl HeadOperands<'_> {
    fn row(&self, r: usize, column: usize) -> &[f32] {
        let start = (self.first_row + r) * self.stride + column;
        &self.qkv[start..start + self.head_dim]
    }
}

/// The context of the first `queries` rows against the first `keys` keys, written to `out`:
/// row i at `out[i * out_stride..][..head_dim]`.
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16 (the AMX tiles are used where
/// [`amx::available`]); `head_dim` must be even; `out` must be writable for `queries` rows of `head_dim` f32, `out_stride` apart,
/// which nothing else accesses during the call. (The operands are read through slices.)
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn attend(
    head: &HeadOperands,
    keys: usize,
    queries: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let d = head.head_dim;
    let q_pairs = (d / 2).next_multiple_of(amx::BF16_PAIRS_PER_TILE);
    let key_pairs = keys.div_ceil(2).next_multiple_of(amx::BF16_PAIRS_PER_TILE);
    let key_panels = keys.div_ceil(BLOCK);
    // Keys: per panel of 32 keys, q_pairs pairs of head dims x 32 keys.
    let mut k_panels = vec![0u32; key_panels * q_pairs * BLOCK];
    for j in 0..keys {
        let key = head.row(j, head.k);
        let panel = &mut k_panels[(j / BLOCK) * q_pairs * BLOCK..];
        for p in 0..d / 2 {
            panel[p * BLOCK + j % BLOCK] = bf16_pair(Some(key[2 * p]), Some(key[2 * p + 1]));
        }
    }
    // Values: per panel of 32 head dims, key_pairs pairs of keys x 32 dims.
    let dim_panels = d.div_ceil(BLOCK);
    let mut v_panels = vec![0u32; dim_panels * key_pairs * BLOCK];
    for jp in 0..keys.div_ceil(2) {
        let first = head.row(2 * jp, head.v);
        let second = (2 * jp + 1 < keys).then(|| head.row(2 * jp + 1, head.v));
        for c in 0..d {
            v_panels[((c / BLOCK) * key_pairs + jp) * BLOCK + c % BLOCK] =
                bf16_pair(Some(first[c]), second.map(|s| s[c]));
        }
    }
    let (q_stride, p_stride) = (tile_stride(q_pairs), tile_stride(key_pairs));
    let scores_stride = key_panels * BLOCK;
    let mut q_rows = vec![0u32; BLOCK * q_stride];
    let mut scores = vec![0f32; BLOCK * scores_stride];
    let mut p_rows = vec![0u32; BLOCK * p_stride];
    let mut context = [0f32; BLOCK * BLOCK];
    let products = if amx::available() {
        Products::Tiles(Tiles::bf16())
    } else {
        Products::Vdpbf16
    };
    for q0 in (0..queries).step_by(BLOCK) {
        let count = BLOCK.min(queries - q0);
        // Rows past `count` (the last block's) stay as the previous block left them: their
        // results are computed and dropped, never read.
        for r in 0..count {
            let query = head.row(q0 + r, head.q);
            for (p, pair) in q_rows[r * q_stride..][..d / 2].iter_mut().enumerate() {
                *pair = bf16_pair(Some(query[2 * p]), Some(query[2 * p + 1]));
            }
        }
        for panel in 0..key_panels {
            let keys_panel = &k_panels[panel * q_pairs * BLOCK..];
            let block = &mut scores[panel * BLOCK..];
            // SAFETY: the CPU has AVX512-F and AVX512-BF16 (the caller's guarantee).
            unsafe {
                products.block(
                    (&q_rows, q_stride),
                    count,
                    keys_panel,
                    q_pairs,
                    (block, scores_stride),
                )
            };
        }
        for r in 0..count {
            let row = &mut scores[r * scores_stride..][..keys];
            softmax_in_place(row);
            // SAFETY: the CPU has the instructions (the caller's guarantee); the row of
            // `p_rows` has key_pairs >= ceil(keys / 2) pairs.
            unsafe { round_row(row, &mut p_rows[r * p_stride..][..key_pairs]) };
        }
        for panel in 0..dim_panels {
            let values_panel = &v_panels[panel * key_pairs * BLOCK..];
            // SAFETY: as above.
            unsafe {
                products.block(
                    (&p_rows, p_stride),
                    count,
                    values_panel,
                    key_pairs,
                    (&mut context, BLOCK),
                )
            };
            let columns = BLOCK.min(d - panel * BLOCK);
            for r in 0..count {
                // SAFETY: row q0 + r < queries and columns panel*32..+columns <= head_dim of
                // `out`: what the caller lets us write.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        context[r * BLOCK..].as_ptr(),
                        out.add((q0 + r) * out_stride + panel * BLOCK),
                        columns,
                    );
                }
            }
        }
    }
}

/// What multiplies the blocks: the AMX tiles, or `vdpbf16ps`.
enum Products {
    Tiles(Tiles),
    Vdpbf16,
}

impl Products {
    /// `c` (32 rows, `c_stride` floats apart, of 32 f32) := the product of the first `rows`
    /// (<= 32) rows of `a` (`a_stride` u32 apart) and a panel of 32 columns `w`, over `pairs` (a
    /// multiple of 16) input pairs. The tiles compute whole tiles of 16 rows, `vdpbf16ps` only
    /// `rows`; the other rows of `c` hold whatever they held. Bounds are asserted: the tiles
    /// read and write whole blocks.
    ///
    /// # Safety
    /// The CPU must have AVX512-F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block(
        &self,
        (a, a_stride): (&[u32], usize),
        rows: usize,
        w: &[u32],
        pairs: usize,
        (c, c_stride): (&mut [f32], usize),
    ) {
        assert!(rows <= BLOCK && pairs.is_multiple_of(amx::BF16_PAIRS_PER_TILE));
        assert!(a_stride >= pairs && a.len() >= BLOCK * a_stride);
        assert!(w.len() >= pairs * BLOCK);
        assert!(c_stride >= BLOCK && c.len() >= (BLOCK - 1) * c_stride + BLOCK);
        match self {
            Products::Tiles(tiles) => {
                let operands = Bf16Operands {
                    a: a.as_ptr(),
                    a_stride,
                    k_step: amx::BF16_PAIRS_PER_TILE,
                    tile_step: amx::TILE_ROWS * a_stride,
                    row_tiles: rows.div_ceil(amx::TILE_ROWS),
                    k_tiles: pairs / amx::BF16_PAIRS_PER_TILE,
                    w: w.as_ptr(),
                };
                // SAFETY: `tiles` comes from `Tiles::bf16` (configured otherwise, no tile would
                // reach further); the operands and the result block are inside the slices
                // (asserted above).
                unsafe {
                    tiles.bf16_accumulate(&operands, Start::Zero, c.as_mut_ptr(), c_stride * 4)
                };
            }
            Products::Vdpbf16 => {
                for r0 in (0..rows).step_by(ROWS) {
                    let count = ROWS.min(rows - r0);
                    for row in c[r0 * c_stride..].chunks_mut(c_stride).take(count) {
                        row[..BLOCK].fill(0.0);
                    }
                    let operands = RowOperands {
                        a: a[r0 * a_stride..].as_ptr(),
                        a_stride,
                        pairs,
                        w: w.as_ptr(),
                    };
                    // SAFETY: the CPU has the instructions (this function's contract); rows
                    // r0..r0+count (<= 32) of `a` hold `pairs` u32 each, `w` pairs x 32 u32 and
                    // `c` those rows' 32 f32 (asserted above), which this call alone holds.
                    unsafe {
                        microkernel(
                            count,
                            &operands,
                            c[r0 * c_stride..].as_mut_ptr(),
                            c_stride,
                            BLOCK,
                        )
                    };
                }
            }
        }
    }
}

/// The row stride (in pairs) of the activations the tiles read: an odd multiple of 64 bytes, so
/// that the 16 rows of a tile fall in different cache sets (a row of 768 inputs is 1.5 pages).
fn tile_stride(pairs: usize) -> usize {
    if (pairs / amx::BF16_PAIRS_PER_TILE).is_multiple_of(2) {
        pairs + amx::BF16_PAIRS_PER_TILE
    } else {
        pairs
    }
}
