//! The int8 product on the AMX tiles (`SERVER_QUANTIZE=int8`, from 32 rows): activations
//! quantized per row to 16 bits, `x ≈ s_x[r] · q`, |q| <= 127 · 128, and each q held as two
//! signed bytes, `q = 128 hi + lo` (hi in -127..=127, lo in -64..=63). `tdpbssd` multiplies
//! both halves by the int8 weights over the whole row, exactly in i32, and each output is
//! scaled once: `y[r][j] = b[j] + s_x[r] s_w[j] (128 Σ hi·q_w + Σ lo·q_w)`.
//!
//! Why halves and not blocks of 32 inputs as the other int8 kernels (`kernels::int8`): a
//! block's sums must leave the tiles to be scaled, and that scaling (AVX-512) cost as much as
//! the tiles' products, so the tiles drew level with VNNI and no more. Two int8 halves cost
//! the tiles twice the products (which they have to spare) and leave one scaling per output;
//! and on MiniLM they are more accurate than blocks of 32 (largest score change 6.2e-3
//! against 7.2e-3, the weights' own rounding alone 6.35e-3: `benches/int8_activation_schemes.py`).
//! One int8 scale per row was the cheap alternative, and moved scores by 2e-2.

use rayon::prelude::*;

use super::amx;
use super::tile_tasks::{finish_block, for_each_task, padded_to_panels, COLUMNS};
use crate::kernels::{
    round_to_integer, row_q_scale, Activation, SharedPtr, PARALLEL_QUANTIZE_MIN_VALUES,
};

/// Inputs per step of the tiles: an activation tile's row of 64 bytes.
pub const STEP_INPUTS: usize = 64;
/// Bytes of one step's activations of a row tile: the hi tile, then the lo tile.
const STEP_BYTES: usize = 2 * amx::TILE_ROWS * STEP_INPUTS;
/// Bytes of one step's weights of a panel: 16 groups of 4 inputs x 32 columns.
const PANEL_STEP_BYTES: usize = STEP_INPUTS * COLUMNS;
/// Steps per chunk of the product: 16 KiB of a panel's weights and 16 KiB of a row tile's
/// activations, in L1 together while a chunk's blocks run (with 16 steps, 32 + 32 KiB, a
/// 768 -> 3072 layer took 7.0 against 6.1 ms at 1576 rows in one run on 2 Xeon cores, and the
/// same in a quieter one: `cargo bench --bench forward -- dense_768x3072`, 2026-12-04).
const CHUNK_STEPS: usize = 8;
/// A block of sums: 16 rows x 32 columns of Σ hi·w, then of Σ lo·w.
const BLOCK: usize = 2 * amx::TILE_ROWS * COLUMNS;

/// The int8 weights as the tiles read them (`VnniPanels`' layout): panels of 32 columns x
/// `steps` x 64 inputs, per group of 4 inputs the 32 columns' 4 bytes; `scales` one per column,
/// `out` columns in all.
#[derive(Clone, Copy)]
pub struct TiledInt8<'a> {
    pub panels: &'a [i8],
    pub steps: usize,
    pub out: usize,
    pub scales: &'a [f32],
}

/// Activation rows in halves, tile after tile: for each tile of 16 rows and step of 64 inputs,
/// the 16 rows' hi bytes (1 KiB) then their lo bytes; the rows past n, up to a whole tile, and
/// the inputs past `inp`, zeros. `scales`: one per row (0 for a zero row, NaN for one holding a
/// NaN or an infinity).
pub struct HalvesRows {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// The n rows of `x` (`inp` wide) quantized to halves for `steps` steps (`steps * 64 >= inp`),
/// the rows shared out across rayon's threads where there are many values (`parallel`).
///
/// # Panics
/// Without AMX tiles (`amx::available`, which implies AVX-512), or if `x` is not n rows of `inp`.
pub fn quantize_halves(
    x: &[f32],
    n: usize,
    inp: usize,
    steps: usize,
    parallel: bool,
) -> HalvesRows {
    assert!(amx::available(), "the int8 tiles need AMX");
    assert!(steps * STEP_INPUTS >= inp && x.len() == n * inp);
    let tile_bytes = steps * STEP_BYTES;
    let mut values = vec![0i8; n.div_ceil(amx::TILE_ROWS) * tile_bytes];
    let mut scales = vec![0f32; n];
    // One tile of rows: each row's scale, then its halves, step by step.
    let tile = |(t, (values, scales)): (usize, (&mut [i8], &mut [f32]))| {
        for (lane, scale) in scales.iter_mut().enumerate() {
            let r = t * amx::TILE_ROWS + lane;
            // SAFETY: the CPU has AVX-512F and BW (`amx::available` checks them; asserted).
            *scale = unsafe {
                quantize_row(
                    &x[r * inp..(r + 1) * inp],
                    &mut values[lane * STEP_INPUTS..],
                )
            };
        }
    };
    let width = tile_bytes.max(1);
    if parallel && n * inp >= PARALLEL_QUANTIZE_MIN_VALUES {
        values
            .par_chunks_mut(width)
            .zip(scales.par_chunks_mut(amx::TILE_ROWS))
            .enumerate()
            .for_each(tile);
    } else {
        values
            .chunks_mut(width)
            .zip(scales.chunks_mut(amx::TILE_ROWS))
            .enumerate()
            .for_each(tile);
    }
    HalvesRows { values, scales }
}

/// One row in halves into `values` (its lane of a tile: step k at k * 2 KiB, hi bytes then lo
/// bytes 1 KiB on), returning its scale. Compiled for AVX-512, whose 16 lanes the loops fill.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row(row: &[f32], values: &mut [i8]) -> f32 {
    // |q| <= 127 · 128: hi = round(q / 128) stays within a signed byte's ±127.
    let (scale, inverse) = row_q_scale(row);
    let Some(inverse) = inverse else {
        // All zeros (the halves stay 0), or NaN: the row's outputs are NaN.
        return scale;
    };
    for (k, chunk) in row.chunks(STEP_INPUTS).enumerate() {
        let (hi, lo) = values[k * STEP_BYTES..].split_at_mut(STEP_BYTES / 2);
        for ((hi, lo), &v) in hi.iter_mut().zip(&mut lo[..chunk.len()]).zip(chunk) {
            let q = round_to_integer(v * inverse);
            // round(q / 128), ties up: an arithmetic shift floors.
            let high = (q + 64) >> 7;
            *hi = high as i8;
            *lo = (q - (high << 7)) as i8;
        }
    }
    scale
}

/// `y` = bias + `x` (n rows of `inp`) · Wᵀ, then `activation`, on the tiles: the rows
/// quantized to halves, the work cut into tasks (`tile_tasks::for_each_task`) and each task's
/// product into chunks of [`CHUNK_STEPS`] steps, whose i32 sums wait in a per-thread buffer;
/// after the last chunk each block of sums is scaled, biased and activated on its way to `y`.
/// The output is written once, never zeroed first.
///
/// # Panics
/// Without AMX tiles (`amx::available`), or if `x` is not n rows of `inp`.
pub fn product(
    weights: TiledInt8,
    x: &[f32],
    n: usize,
    inp: usize,
    bias: &[f32],
    activation: Option<Activation>,
    parallel: bool,
) -> Vec<f32> {
    let TiledInt8 {
        panels: w,
        steps,
        out,
        scales,
    } = weights;
    let panels = out.div_ceil(COLUMNS);
    assert!(amx::available(), "the int8 tiles need AMX");
    assert_eq!(w.len(), panels * steps * PANEL_STEP_BYTES);
    assert!(scales.len() == out && bias.len() == out);
    let rows = quantize_halves(x, n, inp, steps, parallel);
    let (padded_bias, padded_scales) = (
        padded_to_panels(bias, panels),
        padded_to_panels(scales, panels),
    );
    let mut y: Vec<f32> = Vec::with_capacity(n * out);
    let y_ptr = SharedPtr(y.as_mut_ptr());
    for_each_task(n, panels, parallel, |group_rows, group_panels| {
        let tiles = amx::Tiles::int8_halves();
        let tiles_down = group_rows.len().div_ceil(amx::TILE_ROWS);
        SUMS.with_borrow_mut(|sums| {
            let needed = group_panels.len() * tiles_down * BLOCK;
            if sums.len() < needed {
                sums.resize(needed, 0);
            }
            for k0 in (0..steps).step_by(CHUNK_STEPS) {
                let chunk = CHUNK_STEPS.min(steps - k0);
                for (i, p) in group_panels.clone().enumerate() {
                    for (j, r0) in group_rows.clone().step_by(amx::TILE_ROWS).enumerate() {
                        let block = sums[(i * tiles_down + j) * BLOCK..][..BLOCK].as_mut_ptr();
                        // SAFETY: `tiles` is configured for int8 halves. `rows.values` holds
                        // n.div_ceil(16) row tiles of `steps` x 2 KiB, so the `chunk` steps
                        // from k0 (k0 + chunk <= steps) of row tile r0 / 16 (r0 < n) are inside
                        // it; `w` holds `panels` x `steps` x 2 KiB (asserted): steps k0.. of
                        // panel p < panels are inside it; `block` is 2 x 16 x 32 i32 of ours.
                        unsafe {
                            tiles.int8_halves_accumulate(
                                rows.values
                                    .as_ptr()
                                    .add((r0 / amx::TILE_ROWS * steps + k0) * STEP_BYTES),
                                w.as_ptr().add((p * steps + k0) * PANEL_STEP_BYTES),
                                chunk,
                                k0 > 0,
                                block,
                            )
                        };
                    }
                }
            }
            let mut finished = [0f32; amx::TILE_ROWS * COLUMNS];
            for (i, p) in group_panels.enumerate() {
                let columns = COLUMNS.min(out - p * COLUMNS);
                for (j, r0) in group_rows.clone().step_by(amx::TILE_ROWS).enumerate() {
                    let count = (n - r0).min(amx::TILE_ROWS);
                    let finished = &mut finished[..count * COLUMNS];
                    let sums = &sums[(i * tiles_down + j) * BLOCK..][..BLOCK];
                    let at = p * COLUMNS..(p + 1) * COLUMNS;
                    // SAFETY: the CPU has AVX-512F (`amx::available`, asserted). Rows r0..r0 +
                    // count (<= n) and columns p * 32..p * 32 + columns (<= out) of y are
                    // this task's alone (tasks own disjoint rows x panels; `y` outlives them).
                    unsafe {
                        scale_block(
                            sums,
                            &rows.scales[r0..r0 + count],
                            &padded_scales[at.clone()],
                            &padded_bias[at],
                            finished,
                        );
                        finish_block(
                            finished,
                            activation,
                            y_ptr.get().add(r0 * out + p * COLUMNS),
                            out,
                            columns,
                        );
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

/// `finished[r][c] = bias[c] + row_scales[r] weight_scales[c] (128 hi[r][c] + lo[r][c])`, for
/// the rows of `finished` (32 columns each), from a block of sums (`hi` then `lo`, 16 x 32
/// i32 each). The halves' sums are converted apart: 128 hi overflows i32 for long rows.
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn scale_block(
    sums: &[i32],
    row_scales: &[f32],
    weight_scales: &[f32],
    bias: &[f32],
    finished: &mut [f32],
) {
    let (hi, lo) = sums.split_at(amx::TILE_ROWS * COLUMNS);
    let (weight_scales, bias) = (&weight_scales[..COLUMNS], &bias[..COLUMNS]);
    for (((row, &s), hi), lo) in finished
        .chunks_exact_mut(COLUMNS)
        .zip(row_scales)
        .zip(hi.chunks_exact(COLUMNS))
        .zip(lo.chunks_exact(COLUMNS))
    {
        for c in 0..COLUMNS {
            let q = 128.0 * hi[c] as f32 + lo[c] as f32;
            row[c] = bias[c] + s * weight_scales[c] * q;
        }
    }
}

thread_local! {
    /// A task's i32 sums, kept between calls (no zeroing, no page faults): at most a task's
    /// panels x rows (`tile_tasks`), 256 KiB, per thread.
    static SUMS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}
