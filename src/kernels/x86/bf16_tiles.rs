//! The AMX product of the bf16 panels (`x86::bf16`): the work cut into tasks and chunks that
//! stay in the caches, the activations packed tile after tile, the sums started from the bias
//! and stored into the output by the tiles where nothing is left to apply.

use super::amx;
use super::bf16_round::round_row;
use super::tile_tasks::{finish_block, for_each_task, padded_to_panels, COLUMNS};
use crate::kernels::{Activation, SharedPtr};

/// Input pairs per chunk of the AMX product: 16 KiB of a panel's weights.
const CHUNK_PAIRS: usize = 512;
/// A 32 x 32 block of f32 sums.
const BLOCK: usize = 2 * amx::TILE_ROWS * COLUMNS;

/// The weights of `Bf16Panels` as the tiles read them: panels of 32 columns x `pairs` (a
/// multiple of 16) input pairs, `out` columns in all.
#[derive(Clone, Copy)]
pub(super) struct TiledPanels<'a> {
    pub panels: &'a [u32],
    pub pairs: usize,
    pub out: usize,
}

/// `Bf16Panels::product` on the AMX tiles, blocked for the caches: the work is cut into tasks
/// (`tile_tasks::for_each_task`), and each task's product into chunks of
/// [`CHUNK_PAIRS`] input pairs, whose sums accumulate in a per-thread buffer of 32 x 32
/// blocks; the last chunk's sums get the bias and the activation on their way to `y`, while
/// they are in cache. On a batch of 8 images (1576 rows, 768 -> 3072, 2 cores) a throwaway
/// probe of `PackedLinear::forward` timed 10.4 ms with one pass per panel over all the rows
/// and 7.45 ms blocked, before the GELU it saves a pass for; `cargo bench --bench forward
/// -- dense_768x3072` measures it now (4.9 ms, 1.5 TFLOP/s, 2026-12-03).
/// `rows`: the rounded activations packed tile after tile (`round_tiles`). The output is
/// written once, never zeroed first.
pub(super) fn tiles_product(
    weights: TiledPanels,
    rows: &[u32],
    n: usize,
    bias: &[f32],
    activation: Option<Activation>,
    parallel: bool,
) -> Vec<f32> {
    let TiledPanels {
        panels: weights,
        pairs,
        out,
    } = weights;
    assert_eq!(rows.len(), n.next_multiple_of(amx::TILE_ROWS) * pairs);
    let mut y: Vec<f32> = Vec::with_capacity(n * out);
    let panels = out.div_ceil(COLUMNS);
    // The first chunk's sums start from the bias, read 32 columns at a time.
    let padded_bias = padded_to_panels(bias, panels);
    let y_ptr = SharedPtr(y.as_mut_ptr());
    for_each_task(n, panels, parallel, |group_rows, group_panels| {
        let tiles = amx::Tiles::bf16();
        // A block of 32 rows x 32 columns whose sums the tiles store into y itself: whole
        // tiles inside y, with nothing left to apply (else the epilogue below copies them).
        let direct = |rows: usize, columns: usize| {
            activation.is_none() && columns == COLUMNS && rows.is_multiple_of(amx::TILE_ROWS)
        };
        // The group's sums: a 32-row x 32-column block after another (128-byte rows: the
        // tiles' loads and stores of y's own rows, `out` floats apart, hit the same cache
        // sets when out * 4 is a multiple of 4 KiB, and cost more than the products).
        let blocks_down = group_rows.len().div_ceil(2 * amx::TILE_ROWS);
        SUMS.with_borrow_mut(|sums| {
            let needed = group_panels.len() * blocks_down * BLOCK;
            if sums.len() < needed {
                sums.resize(needed, 0.0);
            }
            for k0 in (0..pairs).step_by(CHUNK_PAIRS) {
                let k_tiles = CHUNK_PAIRS.min(pairs - k0) / amx::BF16_PAIRS_PER_TILE;
                let last = k0 + CHUNK_PAIRS >= pairs;
                for (i, p) in group_panels.clone().enumerate() {
                    let columns = COLUMNS.min(out - p * COLUMNS);
                    for (j, r0) in group_rows.clone().step_by(2 * amx::TILE_ROWS).enumerate() {
                        let count = (n - r0).min(2 * amx::TILE_ROWS);
                        let block = sums[(i * blocks_down + j) * BLOCK..][..BLOCK].as_mut_ptr();
                        // SAFETY: `tiles` is configured for bf16. `rows` holds the tiles of
                        // n.div_ceil(16) row tiles x pairs / 16 input tiles (asserted), so
                        // the count.div_ceil(16) row tiles from r0 / 16 (r0 < n), input tiles
                        // k0 / 16..k0 / 16 + k_tiles (<= pairs / 16) are inside it; the weights read are
                        // pairs k0.. of panel p (p < panels); `padded_bias` holds 32 f32 at
                        // p * 32; `block` is 32 x 32 f32 of our own. A direct store writes
                        // `count` (16 or 32) rows from r0 (<= n) of 32 columns from p * 32
                        // (<= out) of y: inside its capacity (n x out), and this task's
                        // alone (tasks own disjoint rows x panels; `y` outlives them).
                        unsafe {
                            let operands = amx::Bf16Operands {
                                a: rows.as_ptr().add(r0 * pairs + k0 * amx::TILE_ROWS),
                                a_stride: amx::BF16_PAIRS_PER_TILE,
                                k_step: amx::TILE_ROWS * amx::BF16_PAIRS_PER_TILE,
                                tile_step: amx::TILE_ROWS * pairs,
                                row_tiles: count.div_ceil(amx::TILE_ROWS),
                                k_tiles,
                                w: weights.as_ptr().add((p * pairs + k0) * COLUMNS),
                            };
                            let start = if k0 == 0 {
                                amx::Start::Row(padded_bias.as_ptr().add(p * COLUMNS))
                            } else {
                                amx::Start::Sums(block, COLUMNS * 4)
                            };
                            let (c, c_stride) = if last && direct(count, columns) {
                                (y_ptr.get().add(r0 * out + p * COLUMNS), out * 4)
                            } else {
                                (block, COLUMNS * 4)
                            };
                            tiles.bf16_accumulate(&operands, start, c, c_stride);
                        }
                    }
                }
            }
            for (i, p) in group_panels.enumerate() {
                let columns = COLUMNS.min(out - p * COLUMNS);
                for (j, r0) in group_rows.clone().step_by(2 * amx::TILE_ROWS).enumerate() {
                    let count = (n - r0).min(2 * amx::TILE_ROWS);
                    if !direct(count, columns) {
                        let block = &mut sums[(i * blocks_down + j) * BLOCK..][..count * COLUMNS];
                        // SAFETY: rows r0..r0 + count (<= n) and columns p * 32.. p * 32 +
                        // columns (<= out) of y are this task's alone (tasks own disjoint
                        // rows x panels; `y` outlives them).
                        unsafe {
                            finish_block(
                                block,
                                activation,
                                y_ptr.get().add(r0 * out + p * COLUMNS),
                                out,
                                columns,
                            )
                        };
                    }
                }
            }
        });
    });
    // SAFETY: the tasks wrote every float of the n x out output: the row groups cover rows
    // 0..n, the panel shares panels 0..panels, each panel its `columns` up to `out`.
    unsafe { y.set_len(n * out) };
    y
}

thread_local! {
    /// A task's sums of the AMX product, kept between calls (no zeroing, no page faults):
    /// at most a task's panels x rows (`tile_tasks`), 128 KiB, per thread.
    static SUMS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out` := the rows of `x` rounded to bf16 as `Bf16Panels::product` rounds them for `vdpbf16ps` does, packed for the AMX tiles:
/// tile after tile of 16 rows x 16 pairs (1 KiB in one piece, which the tiles load faster
/// than 16 rows of a matrix: on 2 Xeon cores a 384 -> 1152 layer of 560 rows took 523 us
/// against 628, a 768 -> 3072 one of 1576 rows 5.9 ms against 7.2; `cargo bench --bench forward
/// -- bf16`), the tiles of a row tile's inputs one after another; the rows past n, up
/// to a whole tile, zeros.
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16. (Bounds are checked: `x` is sliced per row.)
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn round_tiles(
    out: &mut Vec<u32>,
    x: &[f32],
    n: usize,
    inp: usize,
    pairs: usize,
) {
    const PAIRS: usize = amx::BF16_PAIRS_PER_TILE;
    assert!(pairs.is_multiple_of(PAIRS) && pairs >= inp.div_ceil(2));
    out.clear();
    out.resize(n.next_multiple_of(amx::TILE_ROWS) * pairs, 0);
    let k_tiles = pairs / PAIRS;
    for r in 0..n {
        let row = &x[r * inp..(r + 1) * inp];
        let (tile, lane) = (r / amx::TILE_ROWS, r % amx::TILE_ROWS);
        for k in 0..k_tiles.min(inp.div_ceil(2 * PAIRS)) {
            let at = ((tile * k_tiles + k) * amx::TILE_ROWS + lane) * PAIRS;
            // SAFETY: the CPU has the instructions (the caller's guarantee); 16 pairs for at
            // most 32 inputs.
            unsafe {
                round_row(
                    &row[2 * PAIRS * k..inp.min(2 * PAIRS * (k + 1))],
                    &mut out[at..at + PAIRS],
                )
            };
        }
    }
}
