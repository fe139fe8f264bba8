//! Dense layers in bfloat16 on CPUs with AVX512-BF16 (`vdpbf16ps`: 32 bf16 products summed
//! pairwise into 16 f32 lanes per instruction, twice the multiply-adds of an f32 FMA).
//!
//! Weights are rounded to bf16 once and packed in panels of 32 output columns: for each pair of
//! inputs (k, k+1), 32 dwords holding (W[c][k], W[c][k+1]) for the panel's columns c. Inputs are
//! rounded to bf16 per call (the same pairs, row by row); products accumulate in f32 and land
//! on the f32 output (which starts as the bias). Everything around the dense layers stays f32.
//!
//! Where the CPU has AMX tiles (`x86::amx`) the same panels, their pairs padded to tiles of 16,
//! are multiplied by the tiles instead: 16 rows x 32 columns x 32 inputs per pair of
//! instructions.
//!
//! Only reached when [`available`] (run-time detection): `PackedLinear::to_bf16` asks first, and
//! [`Bf16Panels::product`] asserts it before entering any `target_feature` function.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::amx;
use crate::kernels::{activate, bias_rows, Activation, SharedPtr};

/// Output columns per panel: two registers of 16 f32 lanes.
const COLUMNS: usize = 32;
/// Rows per microkernel call: 12 rows x 2 registers = 24 accumulators (of 32 registers).
const ROWS: usize = 12;
/// Fewest rows for which the AMX tiles run the product rather than `vdpbf16ps`: the tiles
/// compute 16 rows at a time. A 384 -> 1152 layer on 2 Xeon cores, tiles against `vdpbf16ps`:
/// 32 / 45 us at 8 rows, 60 / 162 at 32, 884 / 2587 at 560 (`SAGEMAKER_HF_BF16_KERNELS=1
/// [SAGEMAKER_HF_NO_AMX=1] cargo bench --bench forward -- dense`).
const TILES_MIN_ROWS: usize = 8;
/// Rows per task of the AMX product (see `tiles_product`).
const GROUP_ROWS: usize = 128;
/// Input pairs per chunk of the AMX product: 16 KiB of a panel's weights.
const CHUNK_PAIRS: usize = 512;
/// Most panels per task of the AMX product: its sums (32 KiB a panel for 128 rows) stay in L2.
const TASK_PANELS: usize = 8;
/// A 32 x 32 block of f32 sums.
const BLOCK: usize = 2 * amx::TILE_ROWS * COLUMNS;

/// Whether this CPU has the instructions (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    })
}

/// f32 → bf16 bits, rounding to nearest even (as `vcvtne2ps2bf16` and torch do).
fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
}

pub struct Bf16Panels {
    out: usize,
    inp: usize,
    /// Input pairs: inp / 2 rounded up (to a multiple of 16 for the tiles).
    pairs: usize,
    panels: Vec<u32>,
    /// Multiplied by the AMX tiles (else by `vdpbf16ps`).
    tiles: bool,
}

impl Bf16Panels {
    /// `weight`: [out][inp], row-major f32.
    pub fn pack(weight: &[f32], out: usize, inp: usize) -> Self {
        Self::pack_for(weight, out, inp, amx::available())
    }

    /// `pack` for the AMX tiles (`tiles`, only where available) or for `vdpbf16ps`.
    fn pack_for(weight: &[f32], out: usize, inp: usize, tiles: bool) -> Self {
        assert_eq!(weight.len(), out * inp);
        let pairs = if tiles {
            inp.div_ceil(2).next_multiple_of(amx::BF16_PAIRS_PER_TILE)
        } else {
            inp.div_ceil(2)
        };
        let mut panels = vec![0u32; out.div_ceil(COLUMNS) * pairs * COLUMNS];
        for c in 0..out {
            let row = &weight[c * inp..(c + 1) * inp];
            let (panel, lane) = (c / COLUMNS, c % COLUMNS);
            for p in 0..pairs {
                panels[(panel * pairs + p) * COLUMNS + lane] =
                    bf16_pair(row.get(2 * p).copied(), row.get(2 * p + 1).copied());
            }
        }
        Bf16Panels {
            out,
            inp,
            pairs,
            panels,
            tiles,
        }
    }

    /// Which kernel the layer runs (for logs and benchmarks).
    pub fn kernel_name(&self) -> &'static str {
        if self.tiles {
            "AMX tiles (AVX512-BF16 below 8 rows)"
        } else {
            "AVX512-BF16"
        }
    }

    /// `activation`(`x` (n rows of `inp`) · Wᵀ + `bias`): n rows of `out`. On the tiles the
    /// bias and the activation are applied to each block of results while it is in cache (on a
    /// batch of images, the separate passes over the 3072-wide MLP activations cost as much as
    /// the tiles' products).
    pub fn product(
        &self,
        x: &[f32],
        n: usize,
        bias: &[f32],
        activation: Option<Activation>,
        parallel: bool,
    ) -> Vec<f32> {
        assert!(available(), "bf16 panels need AVX512-BF16");
        assert_eq!(x.len(), n * self.inp);
        assert_eq!(bias.len(), self.out);
        let tiles = self.tiles && n >= TILES_MIN_ROWS;
        // The tiles read whole tiles of 16 rows: the rows past n are allocated as zeros (and
        // their results dropped).
        let allocated = if tiles {
            n.next_multiple_of(amx::TILE_ROWS)
        } else {
            n
        };
        let stride = if tiles {
            tile_stride(self.pairs)
        } else {
            self.pairs
        };
        let mut rows = ROUNDED.take();
        // SAFETY: the CPU has AVX512-F and AVX512-BF16 (asserted); `x` holds n rows of `inp`
        // (asserted), and pairs >= ceil(inp / 2) as round_rows requires.
        unsafe { round_rows(&mut rows, x, n, self.inp, self.pairs, stride, allocated) };
        let y = if tiles {
            self.tiles_product(&rows, n, bias, activation, parallel)
        } else {
            let mut y = self.panels_product(&rows, n, bias, parallel);
            if let Some(activation) = activation {
                activate(&mut y, activation);
            }
            y
        };
        if rows.capacity() <= ROUNDED_KEPT {
            ROUNDED.set(rows);
        }
        y
    }

    /// `product` with `vdpbf16ps` (before the activation): per panel of 32 columns, blocks of
    /// up to 12 rows. `rows`: the rounded activations, `pairs` apart.
    fn panels_product(&self, rows: &[u32], n: usize, bias: &[f32], parallel: bool) -> Vec<f32> {
        assert_eq!(rows.len(), n * self.pairs);
        let mut y = bias_rows(bias, n);
        let y_ptr = SharedPtr(y.as_mut_ptr());
        let panel = |p: usize| {
            let columns = COLUMNS.min(self.out - p * COLUMNS);
            let weights = &self.panels[p * self.pairs * COLUMNS..(p + 1) * self.pairs * COLUMNS];
            for r0 in (0..n).step_by(ROWS) {
                let count = ROWS.min(n - r0);
                // SAFETY: the CPU has the instructions (`product` asserts it). `a` points at
                // rows r0..r0+count of `rows` (count rows of `pairs` u32, asserted), `weights` at this panel's
                // pairs x 32 u32; the kernel writes rows r0..r0+count (r0 + count <= n) and
                // columns p*32..p*32+columns (<= out) of y, which is n x out (asserted): in
                // bounds, and this call's alone (panels write disjoint columns; `y` outlives
                // the tasks).
                unsafe {
                    let y = y_ptr.get().add(r0 * self.out + p * COLUMNS);
                    let a = rows.as_ptr().add(r0 * self.pairs);
                    microkernel(count, a, self.pairs, weights.as_ptr(), y, self.out, columns);
                }
            }
        };
        let panels = self.out.div_ceil(COLUMNS);
        if parallel {
            (0..panels).into_par_iter().for_each(panel);
        } else {
            (0..panels).for_each(panel);
        }
        y
    }
}

impl Bf16Panels {
    /// `product` on the AMX tiles, blocked for the caches: the work is cut into tasks of up to
    /// [`GROUP_ROWS`] rows and [`TASK_PANELS`] panels, and each task's product into chunks of
    /// [`CHUNK_PAIRS`] input pairs, whose sums accumulate in a per-thread buffer of 32 x 32
    /// blocks; the last chunk's sums get the bias and the activation on their way to `y`, while
    /// they are in cache. On a batch of 8 images (1576 rows, 768 -> 3072, 2 cores) a throwaway
    /// probe of `PackedLinear::forward` timed 10.4 ms with one pass per panel over all the rows
    /// and 7.45 ms blocked, before the GELU it saves a pass for; `cargo bench --bench forward
    /// -- dense_768x3072` measures it now (4.9 ms, 1.5 TFLOP/s, 2026-12-03).
    /// `rows`: the rounded activations, whole tiles of 16 rows, `tile_stride(pairs)` apart.
    /// The output is written once, never zeroed first.
    fn tiles_product(
        &self,
        rows: &[u32],
        n: usize,
        bias: &[f32],
        activation: Option<Activation>,
        parallel: bool,
    ) -> Vec<f32> {
        let (out, pairs) = (self.out, self.pairs);
        let stride = tile_stride(pairs);
        assert_eq!(rows.len(), n.next_multiple_of(amx::TILE_ROWS) * stride);
        let mut y: Vec<f32> = Vec::with_capacity(n * out);
        let panels = out.div_ceil(COLUMNS);
        let row_groups = n.div_ceil(GROUP_ROWS);
        // Few rows: enough tasks for every thread come from splitting the panels.
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        let panel_groups = (2 * threads)
            .div_ceil(row_groups)
            .max(panels.div_ceil(TASK_PANELS))
            .clamp(1, panels);
        let panels_per_group = panels.div_ceil(panel_groups);
        let y_ptr = SharedPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let (group, share) = (t / panel_groups, t % panel_groups);
            let group_rows = group * GROUP_ROWS..n.min((group + 1) * GROUP_ROWS);
            let group_panels = share * panels_per_group..panels.min((share + 1) * panels_per_group);
            let tiles = amx::Tiles::bf16();
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
                    for (i, p) in group_panels.clone().enumerate() {
                        for (j, r0) in group_rows.clone().step_by(2 * amx::TILE_ROWS).enumerate() {
                            let row_tiles =
                                (n - r0).min(2 * amx::TILE_ROWS).div_ceil(amx::TILE_ROWS);
                            let block = &mut sums[(i * blocks_down + j) * BLOCK..][..BLOCK];
                            // SAFETY: `tiles` is configured for bf16. `rows` holds whole tiles of
                            // 16 rows of `stride` u32 (asserted), so row_tiles * 16 rows from r0,
                            // pairs k0..k0 + 16 * k_tiles (<= pairs, a multiple of 16 as `pack`
                            // pads it for the tiles) are inside it; the weights read are pairs
                            // k0.. of panel p (p < panels); `block` is 32 x 32 f32 of our own.
                            unsafe {
                                let operands = amx::Bf16Operands {
                                    a: rows.as_ptr().add(r0 * stride + k0),
                                    a_stride: stride,
                                    row_tiles,
                                    k_tiles,
                                    w: self.panels.as_ptr().add((p * pairs + k0) * COLUMNS),
                                };
                                tiles.bf16_accumulate(
                                    &operands,
                                    block.as_mut_ptr(),
                                    COLUMNS * 4,
                                    k0 == 0,
                                );
                            }
                        }
                    }
                }
                for (i, p) in group_panels.enumerate() {
                    let columns = COLUMNS.min(out - p * COLUMNS);
                    let biases = &bias[p * COLUMNS..][..columns];
                    for (j, r0) in group_rows.clone().step_by(2 * amx::TILE_ROWS).enumerate() {
                        let count = (n - r0).min(2 * amx::TILE_ROWS);
                        let block = &mut sums[(i * blocks_down + j) * BLOCK..][..count * COLUMNS];
                        for row in block.chunks_exact_mut(COLUMNS) {
                            row.iter_mut().zip(biases).for_each(|(v, b)| *v += b);
                        }
                        // The whole block at once: activation loops over 32 values at a time
                        // ran their scalar remainder on AVX-512 (16 lanes, unrolled past 32).
                        if let Some(activation) = activation {
                            activate(block, activation);
                        }
                        for (r, row) in block.chunks_exact(COLUMNS).enumerate() {
                            // SAFETY: row r0 + r < n, columns p*32..p*32+columns <= out: inside
                            // y's capacity (n x out), and this task's alone (tasks own disjoint
                            // rows x panels; `y` outlives them).
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    row.as_ptr(),
                                    y_ptr.get().add((r0 + r) * out + p * COLUMNS),
                                    columns,
                                );
                            }
                        }
                    }
                }
            });
        };
        let tasks = row_groups * panel_groups;
        if parallel {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
        // SAFETY: the tasks wrote every float of the n x out output: the row groups cover rows
        // 0..n, the panel shares panels 0..panels, each panel its `columns` up to `out`.
        unsafe { y.set_len(n * out) };
        y
    }
}

/// Most bytes of rounded activations a thread keeps for its next product (a batch of 8
/// images' 3072-wide MLP activations is 10 MB).
const ROUNDED_KEPT: usize = 16 << 20;

thread_local! {
    /// The rounded activations of this thread's last product, reused: a fresh buffer of
    /// megabytes per layer cost its page faults on every call.
    static ROUNDED: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    /// A task's sums of the AMX product, kept between calls (no zeroing, no page faults):
    /// at most `TASK_PANELS` panels of `GROUP_ROWS` rows, 256 KiB, per thread.
    static SUMS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The row stride (in pairs) of the activations the tiles read: an odd multiple of 64 bytes, so
/// that the 16 rows of a tile fall in different cache sets (a row of 768 inputs is 1.5 pages).
pub(super) fn tile_stride(pairs: usize) -> usize {
    if (pairs / amx::BF16_PAIRS_PER_TILE).is_multiple_of(2) {
        pairs + amx::BF16_PAIRS_PER_TILE
    } else {
        pairs
    }
}

/// `out` := each row of `x` rounded to bf16 and laid out as `pairs` (>= ceil(inp / 2)) input
/// pairs (padded with 0) at the start of rows of `stride` (>= pairs) u32, in `rows` (>= n)
/// rows, those past n zeros.
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16. (Bounds are checked: `x` is sliced per row.)
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_rows(
    out: &mut Vec<u32>,
    x: &[f32],
    n: usize,
    inp: usize,
    pairs: usize,
    stride: usize,
    rows: usize,
) {
    out.clear();
    out.resize(rows.max(n) * stride, 0);
    for r in 0..n {
        // SAFETY: the CPU has the instructions (the caller's guarantee); pairs >= ceil(inp / 2).
        unsafe {
            round_row(
                &x[r * inp..(r + 1) * inp],
                &mut out[r * stride..r * stride + pairs],
            )
        };
    }
}

/// `dst` := the pairs of `src` rounded to bf16, (src[2p], src[2p + 1]) in pair p, the pairs
/// past `src` zeros.
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16, and `dst.len() >= src.len().div_ceil(2)`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn round_row(src: &[f32], dst: &mut [u32]) {
    let full = src.len() / 32;
    for c in 0..full {
        // SAFETY: c < len / 32, so the 32 floats at c * 32 are inside `src`, and the 16 u32 at
        // c * 16 inside `dst` (at least len / 2 >= c * 16 + 16 long, the caller's guarantee);
        // the unaligned load/store forms need no alignment; the transmute is between two
        // 512-bit vector types.
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(c * 32));
            let hi = _mm512_loadu_ps(src.as_ptr().add(c * 32 + 16));
            // 32 bf16 in memory order = 16 pairs.
            let packed = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(
                dst.as_mut_ptr().add(c * 16).cast(),
                std::mem::transmute::<__m512bh, __m512i>(packed),
            );
        }
    }
    for (p, pair) in dst.iter_mut().enumerate().skip(full * 16) {
        *pair = bf16_pair(src.get(2 * p).copied(), src.get(2 * p + 1).copied());
    }
}

/// Two values (None: 0) rounded to bf16 and packed as one pair, the first in the low half.
pub(super) fn bf16_pair(lo: Option<f32>, hi: Option<f32>) -> u32 {
    lo.map_or(0, bf16_bits) | (hi.map_or(0, bf16_bits) << 16)
}

/// Dispatches to the kernel for `count` (1..=12) rows.
///
/// # Safety
/// As for [`kernel`], with R = `count`.
unsafe fn microkernel(
    count: usize,
    a: *const u32,
    pairs: usize,
    w: *const u32,
    y: *mut f32,
    y_stride: usize,
    columns: usize,
) {
    // SAFETY: the caller's guarantees are the kernel's, for R = count (the `_` arm: count 1).
    unsafe {
        match count {
            14 => kernel::<14>(a, pairs, w, y, y_stride, columns),
            13 => kernel::<13>(a, pairs, w, y, y_stride, columns),
            12 => kernel::<12>(a, pairs, w, y, y_stride, columns),
            11 => kernel::<11>(a, pairs, w, y, y_stride, columns),
            10 => kernel::<10>(a, pairs, w, y, y_stride, columns),
            9 => kernel::<9>(a, pairs, w, y, y_stride, columns),
            8 => kernel::<8>(a, pairs, w, y, y_stride, columns),
            7 => kernel::<7>(a, pairs, w, y, y_stride, columns),
            6 => kernel::<6>(a, pairs, w, y, y_stride, columns),
            5 => kernel::<5>(a, pairs, w, y, y_stride, columns),
            4 => kernel::<4>(a, pairs, w, y, y_stride, columns),
            3 => kernel::<3>(a, pairs, w, y, y_stride, columns),
            2 => kernel::<2>(a, pairs, w, y, y_stride, columns),
            _ => kernel::<1>(a, pairs, w, y, y_stride, columns),
        }
    }
}

/// R rows x 32 columns: for each input pair, broadcast each row's pair and multiply-add it with
/// the panel's 32 column pairs; then add into y (masked past `columns`).
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16; `a` must be readable for R rows of `pairs` u32,
/// `w` for `pairs` x 32 u32, and `y` readable and writable for R rows (`y_stride` apart) of
/// `columns` (<= 32) f32, which nothing else accesses during the call.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const R: usize>(
    a: *const u32,
    pairs: usize,
    w: *const u32,
    y: *mut f32,
    y_stride: usize,
    columns: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..pairs {
        // SAFETY: p < pairs: the 32 u32 at w + p * 32 are inside the panel (unaligned loads);
        // the transmutes are between 512-bit vector types.
        let (b0, b1) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    w.add(p * COLUMNS).cast(),
                )),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    w.add(p * COLUMNS + 16).cast(),
                )),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < R and p < pairs: inside `a`; a 512-bit vector transmute.
            let pair: __m512bh =
                unsafe { std::mem::transmute(_mm512_set1_epi32(*a.add(r * pairs + p) as i32)) };
            acc[0] = _mm512_dpbf16_ps(acc[0], pair, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], pair, b1);
        }
    }
    let mask = |lanes: usize| -> __mmask16 { ((1u32 << lanes.min(16)) - 1) as __mmask16 };
    let (m0, m1) = (mask(columns), mask(columns.saturating_sub(16)));
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row r < R of y; the masks cover only its first `columns` lanes (masked-off
        // lanes are neither read nor written), which the caller lets us read and write.
        unsafe {
            let row = y.add(r * y_stride);
            let v0 = _mm512_maskz_loadu_ps(m0, row);
            _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(v0, acc[0]));
            if m1 != 0 {
                let v1 = _mm512_maskz_loadu_ps(m1, row.add(16));
                _mm512_mask_storeu_ps(row.add(16), m1, _mm512_add_ps(v1, acc[1]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(x: f32) -> f32 {
        f32::from_bits(bf16_bits(x) << 16)
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(round(1.0), 1.0);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round(-2.5), -2.5);
    }

    /// Exactly the f32 sum of bf16-rounded products, for shapes with partial panels, odd
    /// widths and row counts that are not multiples of 8.
    #[test]
    fn panels_compute_the_rounded_product() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let kernels: &[bool] = if amx::available() {
            &[false, true]
        } else {
            &[false]
        };
        for (&(n, inp, out), &tiles) in [
            (1, 3, 5),
            (9, 64, 40),
            (17, 385, 70),
            (3, 32, 32),
            (40, 96, 33),
            (70, 384, 64),
            // Several row groups, input chunks and panel shares, a partial last row tile.
            (300, 1100, 300),
        ]
        .iter()
        .flat_map(|shape| kernels.iter().map(move |tiles| (shape, tiles)))
        {
            let w: Vec<f32> = (0..out * inp)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let x: Vec<f32> = (0..n * inp)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let bias: Vec<f32> = (0..out).map(|i| i as f32 / 10.0).collect();
            let layer = Bf16Panels::pack_for(&w, out, inp, tiles);
            let y = layer.product(&x, n, &bias, None, n > 4);
            // The activation fused into the product is the activation of the product.
            let mut activated = y.clone();
            activate(&mut activated, Activation::Gelu);
            assert_eq!(
                layer.product(&x, n, &bias, Some(Activation::Gelu), n > 4),
                activated
            );
            for t in 0..n {
                for o in 0..out {
                    let want: f64 = bias[o] as f64
                        + (0..inp)
                            .map(|k| round(x[t * inp + k]) as f64 * round(w[o * inp + k]) as f64)
                            .sum::<f64>();
                    let got = y[t * out + o] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{} n{n} in{inp} out{out} [{t},{o}]: {got} vs {want}",
                        layer.kernel_name()
                    );
                }
            }
        }
    }
}
