//! How the AMX products (`bf16_tiles`, `int8_tiles`) cut their work into tasks that stay in the
//! caches, and what they share on the way out: tasks of up to [`GROUP_ROWS`] rows and
//! [`TASK_PANELS`] panels of [`COLUMNS`] outputs, each task's sums in a per-thread buffer, and
//! the blocks of sums finished (activation, copy) into the output.

use std::ops::Range;

use rayon::prelude::*;

use crate::kernels::{activate, Activation};

/// Output columns per panel of the tiled weights: two tiles of 16.
pub(super) const COLUMNS: usize = 32;
/// Rows per task of an AMX product.
const GROUP_ROWS: usize = 128;
/// Most panels per task of an AMX product: its sums (for 128 rows,
/// 16 KiB of f32 a panel in bf16, 32 KiB of i32 in int8) stay in L2.
const TASK_PANELS: usize = 8;

/// Runs `task(rows, panels)` over tasks that cover rows 0..n and panels 0..panels: groups of
/// up to [`GROUP_ROWS`] rows, each split over the panels into shares of up to [`TASK_PANELS`]
/// (more shares where few rows leave a thread idle), on the calling thread or across rayon's
/// (`parallel`). Tasks own disjoint rows x panels.
pub(super) fn for_each_task(
    n: usize,
    panels: usize,
    parallel: bool,
    task: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let row_groups = n.div_ceil(GROUP_ROWS);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let panel_groups = (2 * threads)
        .div_ceil(row_groups.max(1))
        .max(panels.div_ceil(TASK_PANELS))
        .clamp(1, panels.max(1));
    let per_group = panels.div_ceil(panel_groups);
    let run = |t: usize| {
        let (group, share) = (t / panel_groups, t % panel_groups);
        task(
            group * GROUP_ROWS..n.min((group + 1) * GROUP_ROWS),
            share * per_group..panels.min((share + 1) * per_group),
        )
    };
    let tasks = row_groups * panel_groups;
    if parallel {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// `values` padded with zeros to whole panels of 32 (a copy only where the last panel is
/// partial).
pub(super) fn padded_to_panels(values: &[f32], panels: usize) -> std::borrow::Cow<'_, [f32]> {
    if values.len() == panels * COLUMNS {
        return values.into();
    }
    let mut padded = values.to_vec();
    padded.resize(panels * COLUMNS, 0.0);
    padded.into()
}

/// A block of finished sums (rows of 32) on its way to `y`: the activation over the whole
/// block at once (over 32 values at a time its loops ran their scalar remainder on AVX-512:
/// 16 lanes, unrolled past 32), then its rows copied to `y` (`y_stride` floats apart).
///
/// # Safety
/// `y` must be writable for `block.len() / 32` rows of `columns` (<= 32) floats, `y_stride`
/// apart, that nothing else accesses during the call.
pub(super) unsafe fn finish_block(
    block: &mut [f32],
    activation: Option<Activation>,
    y: *mut f32,
    y_stride: usize,
    columns: usize,
) {
    if let Some(activation) = activation {
        activate(block, activation);
    }
    for (r, row) in block.chunks_exact(COLUMNS).enumerate() {
        // SAFETY: row r of the block's rows in y (the caller's guarantee).
        unsafe {
            let to = y.add(r * y_stride);
            if columns == COLUMNS {
                // A fixed-size copy: inline vector moves, not a call.
                to.cast::<[f32; COLUMNS]>()
                    .write_unaligned(row.as_ptr().cast::<[f32; COLUMNS]>().read());
            } else {
                std::ptr::copy_nonoverlapping(row.as_ptr(), to, columns);
            }
        }
    }
}
