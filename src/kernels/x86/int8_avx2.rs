//! int8 dense layers on CPUs with AVX2 and no AVX-512 VNNI; see `kernels::int8`.
//!
//! AVX2 multiplies bytes with `vpmaddubsw` (unsigned x signed, pairs summed into saturating i16)
//! and widens with `vpmaddwd`. Both operands are signed here, so as llama.cpp does it, the
//! activation goes in as |x| and the weight takes x's sign (`vpsignb`): |x| · sign(w, x) = x · w,
//! and a pair's sum is at most 2 · 127 · 127 < 2^15, so nothing saturates and the sums are the
//! exact products of the portable kernel. Four instructions per 32 products, two of them on the
//! multiply ports: about twice the multiply-adds per cycle of f32 FMAs on the same registers.
//!
//! Weights are packed once in panels of 16 output channels: for each group of 4 inputs, 16
//! dwords holding the channels' 4 weights; 8 groups make a block of 32 inputs, the span of one
//! activation scale. A block's i32 sums are scaled by the row's block scale into f32 sums; at
//! the end each channel's sum times its weight scale is added onto the output.
//!
//! Only reached when [`available`] (run-time detection): `Int8Linear::quantize` packs these
//! panels only then, and [`Avx2Panels::accumulate`] asserts it before any `target_feature` call.

use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::kernels::SharedPtr;
use crate::kernels::INT8_BLOCK as BLOCK;

/// Output channels per panel: two registers of 8 i32 lanes.
const COLUMNS: usize = 16;
/// Groups of 4 inputs per block.
const GROUPS: usize = BLOCK / 4;
/// Rows per microkernel call: 4 rows x 2 registers = 8 i32 accumulators of the 16 registers
/// (the f32 sums live in memory between blocks: one load and store per 8 groups).
const ROWS: usize = 4;

/// Whether this CPU has AVX2 and FMA (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

pub struct Avx2Panels {
    out: usize,
    blocks: usize,
    /// [panel][block][group of 4 inputs][16 channels][4 bytes].
    panels: Vec<i8>,
}

impl Avx2Panels {
    /// `q`: the quantized weights, [out][blocks * 32] row-major (zero-padded).
    pub fn pack(q: &[i8], out: usize, blocks: usize) -> Self {
        let width = blocks * BLOCK;
        assert_eq!(q.len(), out * width);
        let mut panels = vec![0i8; out.div_ceil(COLUMNS) * width * COLUMNS];
        for c in 0..out {
            let (panel, lane) = (c / COLUMNS, c % COLUMNS);
            for (k, &w) in q[c * width..(c + 1) * width].iter().enumerate() {
                panels[((panel * width / 4 + k / 4) * COLUMNS + lane) * 4 + k % 4] = w;
            }
        }
        Avx2Panels {
            out,
            blocks,
            panels,
        }
    }

    /// `y` (n rows of `out`, holding the bias) += the product of the quantized activations
    /// (`values`: n rows of `blocks` blocks of 32; `row_scales`: n rows of a scale per block)
    /// and the weights, `scales` the weights' per-channel scales.
    pub fn accumulate(
        &self,
        scales: &[f32],
        values: &[i8],
        row_scales: &[f32],
        n: usize,
        y: &mut [f32],
        parallel: bool,
    ) {
        assert!(available(), "AVX2 int8 panels need AVX2 and FMA");
        let (blocks, width) = (self.blocks, self.blocks * BLOCK);
        assert_eq!(values.len(), n * width);
        assert_eq!(row_scales.len(), n * blocks);
        assert_eq!(y.len(), n * self.out);
        assert_eq!(scales.len(), self.out);
        let y_ptr = SharedPtr(y.as_mut_ptr());
        let panel = |p: usize| {
            let columns = COLUMNS.min(self.out - p * COLUMNS);
            let weights = &self.panels[p * width * COLUMNS..(p + 1) * width * COLUMNS];
            let channel_scales = &scales[p * COLUMNS..p * COLUMNS + columns];
            for r0 in (0..n).step_by(ROWS) {
                let count = ROWS.min(n - r0);
                let mut sums = [[0f32; COLUMNS]; ROWS];
                // SAFETY: the CPU has AVX2 and FMA (asserted above). `a` points at rows
                // r0..r0+count of `values` (count rows of `width` bytes), `s` at their
                // count x blocks scales, `weights` is this panel's width / 4 groups x 16 dwords;
                // the kernel writes only `sums`.
                unsafe {
                    let a = values.as_ptr().add(r0 * width);
                    let s = row_scales.as_ptr().add(r0 * blocks);
                    match count {
                        4 => kernel::<4>(a, s, blocks, weights.as_ptr(), &mut sums),
                        3 => kernel::<3>(a, s, blocks, weights.as_ptr(), &mut sums),
                        2 => kernel::<2>(a, s, blocks, weights.as_ptr(), &mut sums),
                        _ => kernel::<1>(a, s, blocks, weights.as_ptr(), &mut sums),
                    }
                }
                for (r, sums) in sums[..count].iter().enumerate() {
                    for (c, (&sum, &scale)) in sums.iter().zip(channel_scales).enumerate() {
                        // SAFETY: row r0 + r < n and column p * 16 + c < out: inside y
                        // (n x out, asserted); panels write disjoint columns, and `y` outlives
                        // the tasks (for_each returns after them).
                        unsafe {
                            *y_ptr.get().add((r0 + r) * self.out + p * COLUMNS + c) += sum * scale
                        };
                    }
                }
            }
        };
        let panels = self.out.div_ceil(COLUMNS);
        if parallel {
            (0..panels).into_par_iter().for_each(panel);
        } else {
            (0..panels).for_each(panel);
        }
    }
}

/// R rows x 16 channels: per block, for each group of 4 inputs, broadcast each row's 4 bytes,
/// and multiply-add |x| with the panel's 16 channels' weights given x's signs (i32); then add
/// each block's sums, times the row's block scale, into `sums`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` must be readable for R rows of `blocks * 32` bytes, `s`
/// for R rows of `blocks` f32, and `w` for `blocks * 8` x 16 dwords.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize>(
    a: *const i8,
    s: *const f32,
    blocks: usize,
    w: *const i8,
    sums: &mut [[f32; COLUMNS]; ROWS],
) {
    let width = blocks * BLOCK;
    let ones = _mm256_set1_epi16(1);
    let mut total = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..blocks {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in b * GROUPS..(b + 1) * GROUPS {
            // SAFETY: g < blocks * 8: the 16 dwords (64 bytes) at w + g * 64 are inside the
            // panel (unaligned loads).
            let (w0, w1) = unsafe {
                (
                    _mm256_loadu_si256(w.add(g * COLUMNS * 4).cast()),
                    _mm256_loadu_si256(w.add(g * COLUMNS * 4 + 32).cast()),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < R and 4g + 4 <= width: the 4 bytes at row r, offset 4g are
                // inside `a` (read unaligned).
                let four = unsafe { a.add(r * width + g * 4).cast::<i32>().read_unaligned() };
                let x = _mm256_set1_epi32(four);
                let magnitude = _mm256_abs_epi8(x);
                let p0 = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w0, x));
                let p1 = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(w1, x));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(p0, ones));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(p1, ones));
            }
        }
        for (r, (acc, total)) in acc.iter().zip(total.iter_mut()).enumerate() {
            // SAFETY: r < R and b < blocks: inside `s`.
            let scale = _mm256_set1_ps(unsafe { *s.add(r * blocks + b) });
            total[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[0]), scale, total[0]);
            total[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[1]), scale, total[1]);
        }
    }
    for (total, sums) in total.iter().zip(sums.iter_mut()) {
        // SAFETY: each row of `sums` holds 16 f32: two unaligned 8-lane stores.
        unsafe {
            _mm256_storeu_ps(sums.as_mut_ptr(), total[0]);
            _mm256_storeu_ps(sums.as_mut_ptr().add(8), total[1]);
        }
    }
}
