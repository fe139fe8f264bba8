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
use super::bf16_round::{bf16_pair, round_row};
use super::bf16_tiles::{round_tiles, tiles_product, TiledPanels};
use super::tile_tasks::COLUMNS;
use crate::kernels::{activate, bias_rows, Activation, SharedPtr};

/// Output columns per panel: two registers of 16 f32 lanes.
/// Rows per microkernel call: 12 rows x 2 registers = 24 accumulators (of 32 registers).
pub(super) const ROWS: usize = 12;
/// Fewest rows for which the AMX tiles run the product rather than `vdpbf16ps`: the tiles
/// compute 16 rows at a time. A 384 -> 1152 layer on 2 Xeon cores, tiles against `vdpbf16ps`:
/// 32 / 45 us at 8 rows, 60 / 162 at 32, 884 / 2587 at 560 (`SAGEMAKER_HF_BF16_KERNELS=1
/// [SAGEMAKER_HF_NO_AMX=1] cargo bench --bench forward -- dense`).
const TILES_MIN_ROWS: usize = 8;

/// Whether this CPU has the instructions (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    })
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
        let mut rows = ROUNDED.take();
        // SAFETY: the CPU has AVX512-F and AVX512-BF16 (asserted); `x` holds n rows of `inp`
        // (asserted), and pairs >= ceil(inp / 2) (a multiple of 16 when packed for the tiles)
        // as round_rows and round_tiles require.
        unsafe {
            if tiles {
                round_tiles(&mut rows, x, n, self.inp, self.pairs)
            } else {
                round_rows(&mut rows, x, n, self.inp, self.pairs)
            }
        };
        let y = if tiles {
            let weights = TiledPanels {
                panels: &self.panels,
                pairs: self.pairs,
                out: self.out,
            };
            tiles_product(weights, &rows, n, bias, activation, parallel)
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
                    let operands = RowOperands {
                        a,
                        a_stride: self.pairs,
                        pairs: self.pairs,
                        w: weights.as_ptr(),
                    };
                    microkernel(count, &operands, y, self.out, columns);
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

/// Most bytes of rounded activations a thread keeps for its next product (a batch of 8
/// images' 3072-wide MLP activations is 10 MB).
const ROUNDED_KEPT: usize = 16 << 20;

thread_local! {
    /// The rounded activations of this thread's last product, reused: a fresh buffer of
    /// megabytes per layer cost its page faults on every call.
    static ROUNDED: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `out` := each row of `x` rounded to bf16 and laid out as `pairs` (>= ceil(inp / 2)) input
/// pairs (padded with 0).
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16. (Bounds are checked: `x` is sliced per row.)
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_rows(out: &mut Vec<u32>, x: &[f32], n: usize, inp: usize, pairs: usize) {
    out.clear();
    out.resize(n * pairs, 0);
    for r in 0..n {
        // SAFETY: the CPU has the instructions (the caller's guarantee); pairs >= ceil(inp / 2).
        unsafe {
            round_row(
                &x[r * inp..(r + 1) * inp],
                &mut out[r * pairs..(r + 1) * pairs],
            )
        };
    }
}

/// The operands of one microkernel call: rows of rounded activations and a panel of weights.
pub(super) struct RowOperands {
    /// The first row's input pairs; row r at `a + r * a_stride`.
    pub a: *const u32,
    pub a_stride: usize,
    /// Input pairs summed over.
    pub pairs: usize,
    /// The panel: `pairs` x 32 u32.
    pub w: *const u32,
}

/// `y` (`count` (1..=[`ROWS`]) rows, `y_stride` apart, of `columns` f32) += the product of `count`
/// rows of `operands.a` and the panel `operands.w`.
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16; `a` must be readable for `count` rows of
/// `pairs` u32 (`a_stride` apart), `w` for `pairs` x 32 u32, and `y` readable and writable for
/// `count` rows of `columns` (<= 32) f32, which nothing else accesses during the call.
pub(super) unsafe fn microkernel(
    count: usize,
    operands: &RowOperands,
    y: *mut f32,
    y_stride: usize,
    columns: usize,
) {
    let o = operands;
    // SAFETY: the caller's guarantees are the kernel's, for R = count (the `_` arm: count 1).
    unsafe {
        match count {
            12 => kernel::<12>(o, y, y_stride, columns),
            11 => kernel::<11>(o, y, y_stride, columns),
            10 => kernel::<10>(o, y, y_stride, columns),
            9 => kernel::<9>(o, y, y_stride, columns),
            8 => kernel::<8>(o, y, y_stride, columns),
            7 => kernel::<7>(o, y, y_stride, columns),
            6 => kernel::<6>(o, y, y_stride, columns),
            5 => kernel::<5>(o, y, y_stride, columns),
            4 => kernel::<4>(o, y, y_stride, columns),
            3 => kernel::<3>(o, y, y_stride, columns),
            2 => kernel::<2>(o, y, y_stride, columns),
            _ => kernel::<1>(o, y, y_stride, columns),
        }
    }
}

/// R rows x 32 columns: for each input pair, broadcast each row's pair and multiply-add it with
/// the panel's 32 column pairs; then add into y (masked past `columns`).
///
/// # Safety
/// As for [`microkernel`], with `count` = R.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const R: usize>(
    &RowOperands {
        a,
        a_stride,
        pairs,
        w,
    }: &RowOperands,
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
                unsafe { std::mem::transmute(_mm512_set1_epi32(*a.add(r * a_stride + p) as i32)) };
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
    use crate::kernels::x86::bf16_round::bf16_bits;

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
