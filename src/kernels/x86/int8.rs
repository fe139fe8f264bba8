//! int8 dense layers on CPUs with AVX-512 VNNI (`vpdpbusd`: 64 products of an unsigned and a
//! signed byte, summed in fours into 16 i32 lanes per instruction); see `kernels::int8`.
//!
//! Weights are packed once in panels of 32 output channels: for each group of 4 inputs, 32
//! dwords holding the channels' 4 weights (`q_w[c][4g..4g+4]`); 8 groups make a block of 32
//! inputs, the span of one activation scale. Activation rows come quantized per block and are
//! offset by 128 into unsigned bytes (`vpdpbusd` takes its first operand unsigned); a block's
//! i32 sums lose the offset's share, `128 Σ_{k∈b} q_w[c][k]` (packed per block and channel),
//! then are scaled by the block's activation scale and summed in f32; at the end each channel's
//! sum times its weight scale is added onto the output (which holds the bias).
//!
//! Where the CPU has AMX tiles (`x86::amx`), the same panels are multiplied by the tiles
//! (`x86::int8_tiles`, activations in two halves rather than blocks), 64 inputs at a time:
//! each panel's inputs are padded to a multiple of 64.
//!
//! Only reached when [`available`] (run-time detection): `Int8Linear::quantize` packs these
//! panels only then, and [`VnniPanels::accumulate`] asserts it before any `target_feature` call.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::int8_tiles::{TiledInt8, STEP_INPUTS};
use crate::kernels::INT8_BLOCK as BLOCK;
use crate::kernels::{QuantizedRows, SharedPtr};

/// Output channels per panel: two registers of 16 i32 lanes.
const COLUMNS: usize = 32;
/// Groups of 4 inputs per block.
const GROUPS: usize = BLOCK / 4;
/// Rows per microkernel call: 6 rows x 2 registers, in i32 (a block's) and f32 (the sum over
/// blocks): 24 accumulators of the 32 registers.
const ROWS: usize = 6;

/// Whether this CPU has AVX-512F and AVX-512 VNNI (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vnni")
            && !super::quant::avx512_declined()
    })
}

pub struct VnniPanels {
    out: usize,
    blocks: usize,
    /// Inputs per panel: blocks * 32 padded to a multiple of 64 (`int8_tiles::STEP_INPUTS`).
    width: usize,
    /// [panel][group of 4 inputs][32 channels][4 bytes].
    panels: Vec<i8>,
    /// [panel][block][32 channels]: 128 Σ_{k∈b} q_w[c][k].
    offsets: Vec<i32>,
}

impl VnniPanels {
    /// `q`: the quantized weights, [out][blocks * 32] row-major (zero-padded).
    pub fn pack(q: &[i8], out: usize, blocks: usize) -> Self {
        let row_width = blocks * BLOCK;
        assert_eq!(q.len(), out * row_width);
        let width = row_width.next_multiple_of(STEP_INPUTS);
        let panels_count = out.div_ceil(COLUMNS);
        let mut panels = vec![0i8; panels_count * width * COLUMNS];
        let mut offsets = vec![0i32; panels_count * blocks * COLUMNS];
        for c in 0..out {
            let row = &q[c * row_width..(c + 1) * row_width];
            let (panel, lane) = (c / COLUMNS, c % COLUMNS);
            for (k, &w) in row.iter().enumerate() {
                // Group g = k / 4 of the panel: 32 channels x 4 bytes.
                panels[((panel * width / 4 + k / 4) * COLUMNS + lane) * 4 + k % 4] = w;
            }
            for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                offsets[(panel * blocks + b) * COLUMNS + lane] =
                    128 * block.iter().map(|&w| w as i32).sum::<i32>();
            }
        }
        VnniPanels {
            out,
            blocks,
            width,
            panels,
            offsets,
        }
    }

    /// The panels as the AMX tiles read them, with the channels' weight scales.
    pub fn tiled<'a>(&'a self, scales: &'a [f32]) -> TiledInt8<'a> {
        TiledInt8 {
            panels: &self.panels,
            steps: self.width / STEP_INPUTS,
            out: self.out,
            scales,
        }
    }

    /// `y` (n rows of `out`, holding the bias) += the product of the quantized activations
    /// (`values`: n rows of `blocks` blocks of 32, their sign bits flipped, i.e. q + 128 as
    /// unsigned bytes; `row_scales`: n rows of a scale per block) and the weights, `scales` the
    /// weights' per-channel scales.
    pub fn accumulate(
        &self,
        scales: &[f32],
        values: &[i8],
        row_scales: &[f32],
        n: usize,
        y: &mut [f32],
        parallel: bool,
    ) {
        assert!(available(), "VNNI panels need AVX-512 VNNI");
        let (blocks, width) = (self.blocks, self.blocks * BLOCK);
        assert_eq!(values.len(), n * width);
        assert_eq!(row_scales.len(), n * blocks);
        assert_eq!(y.len(), n * self.out);
        assert_eq!(scales.len(), self.out);
        let y_ptr = SharedPtr(y.as_mut_ptr());
        let panel = |p: usize| {
            let columns = COLUMNS.min(self.out - p * COLUMNS);
            let panel_bytes = self.width * COLUMNS;
            let weights = &self.panels[p * panel_bytes..(p + 1) * panel_bytes];
            let offsets = &self.offsets[p * blocks * COLUMNS..(p + 1) * blocks * COLUMNS];
            let channel_scales = &scales[p * COLUMNS..p * COLUMNS + columns];
            for r0 in (0..n).step_by(ROWS) {
                let count = ROWS.min(n - r0);
                // SAFETY: the CPU has the instructions (asserted above). `a` points at rows
                // r0..r0+count of `values` (count rows of `width` bytes, read as u8) and `row_scales` at their
                // count x blocks scales; `weights` is this panel's self.width / 4 >= width / 4 groups x 32 dwords,
                // `offsets` its blocks x 32 i32, `channel_scales` its `columns` f32; the kernel
                // writes rows r0..r0+count (<= n) and columns p*32..p*32+columns (<= out) of y,
                // which is n x out (asserted): in bounds, and this call's alone (panels write
                // disjoint columns; `y` outlives the tasks: for_each returns after them).
                unsafe {
                    let kernel_args = Args {
                        a: values.as_ptr().add(r0 * width).cast::<u8>(),
                        row_scales: row_scales.as_ptr().add(r0 * blocks),
                        blocks,
                        w: weights.as_ptr(),
                        offsets: offsets.as_ptr(),
                        channel_scales: channel_scales.as_ptr(),
                        y: y_ptr.get().add(r0 * self.out + p * COLUMNS),
                        y_stride: self.out,
                        columns,
                    };
                    microkernel(count, &kernel_args);
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

/// Each of the n rows of `x` (`inp` wide) quantized per block of 32 to exactly the numbers of
/// `kernels::int8::quantize_rows`, stored offset by 128 (the sign bit flipped: the unsigned
/// bytes `vpdpbusd` takes), in one vectorized pass per block; the rows shared out across
/// rayon's threads (`parallel`). The portable pass and a second one flipping the bits took 6%
/// of the MiniLM classifier's time at 64 clients (perf, Zen 4).
pub(in crate::kernels) fn quantize_rows_offset(
    x: &[f32],
    n: usize,
    inp: usize,
    parallel: bool,
) -> QuantizedRows {
    assert!(available(), "VNNI rows need AVX-512");
    // SAFETY: the CPU has AVX-512F (asserted); each call gets one row's slices: at most `inp`
    // inputs, `width` values and `blocks` scales.
    QuantizedRows::of_rows(x, n, inp, parallel, |x, values, scales| unsafe {
        quantize_row_offset(x, values, scales)
    })
}

/// One row: per block, the largest magnitude (a NaN or an infinity makes the scale NaN and the
/// values 0; an all-zero block, scale 0), the values times 127 / largest rounded to even (the
/// default MXCSR rounding, as `round_to_integer`), narrowed and offset by 128.
///
/// # Safety
/// The CPU must have AVX-512F; `values` must hold `scales.len() * 32` bytes and `x` at most that
/// many inputs, more than `(scales.len() - 1) * 32`.
#[target_feature(enable = "avx512f")]
unsafe fn quantize_row_offset(x: &[f32], values: &mut [i8], scales: &mut [f32]) {
    assert!(values.len() == scales.len() * BLOCK && x.len() <= values.len());
    let infinity = _mm512_set1_ps(f32::INFINITY);
    let offset = _mm_set1_epi8(i8::MIN);
    let mask = |lanes: usize| -> __mmask16 { ((1u32 << lanes.min(16)) - 1) as __mmask16 };
    for (b, scale) in scales.iter_mut().enumerate() {
        let start = b * BLOCK;
        let inputs = &x[start..x.len().min(start + BLOCK)];
        let (m0, m1) = (mask(inputs.len()), mask(inputs.len().saturating_sub(16)));
        // SAFETY: the masks cover only the block's `inputs` (masked-off lanes are not read);
        // the second half's address is formed only where it has inputs.
        let (v0, v1) = unsafe {
            (
                _mm512_maskz_loadu_ps(m0, inputs.as_ptr()),
                if m1 != 0 {
                    _mm512_maskz_loadu_ps(m1, inputs.as_ptr().add(16))
                } else {
                    _mm512_setzero_ps()
                },
            )
        };
        let (a0, a1) = (_mm512_abs_ps(v0), _mm512_abs_ps(v1));
        // Not below infinity, or unordered: an infinity or a NaN.
        let unusable = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(a0, infinity)
            | _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(a1, infinity);
        let largest = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        let out = &mut values[start..start + BLOCK];
        if unusable != 0 || largest == 0.0 {
            *scale = if unusable != 0 { f32::NAN } else { 0.0 };
            out.fill(i8::MIN);
            continue;
        }
        let inverse = _mm512_set1_ps(127.0 / largest);
        let q0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inverse)));
        let q1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inverse)));
        // SAFETY: `out` is 32 bytes: two unaligned 16-byte stores.
        unsafe {
            _mm_storeu_si128(out.as_mut_ptr().cast(), _mm_xor_si128(q0, offset));
            _mm_storeu_si128(out.as_mut_ptr().add(16).cast(), _mm_xor_si128(q1, offset));
        }
        *scale = largest / 127.0;
    }
}

/// One microkernel call's operands (see [`kernel`] for what each must point at).
struct Args {
    a: *const u8,
    row_scales: *const f32,
    blocks: usize,
    w: *const i8,
    offsets: *const i32,
    channel_scales: *const f32,
    y: *mut f32,
    y_stride: usize,
    columns: usize,
}

/// Dispatches to the kernel for `count` (1..=6) rows.
///
/// # Safety
/// As for [`kernel`], with R = `count`.
unsafe fn microkernel(count: usize, args: &Args) {
    // SAFETY: the caller's guarantees are the kernel's, for R = count (the `_` arm: count 1).
    unsafe {
        match count {
            6 => kernel::<6>(args),
            5 => kernel::<5>(args),
            4 => kernel::<4>(args),
            3 => kernel::<3>(args),
            2 => kernel::<2>(args),
            _ => kernel::<1>(args),
        }
    }
}

/// R rows x 32 channels: per block, for each group of 4 inputs, broadcast each row's 4 bytes
/// and multiply-add them with the panel's 32 channels' 4 weights (i32); then take the offsets
/// off, scale by the row's block scale and add into the f32 sums; at the end, scale by the
/// channels' weight scales and add into y (masked past `columns`).
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 VNNI; `a` must be readable for R rows of
/// `blocks * 32` bytes and `row_scales` for R rows of `blocks` f32, `w` for `blocks * 8` x 32
/// dwords, `offsets` for `blocks` x 32 i32, `channel_scales` for `columns` (<= 32) f32, and `y`
/// readable and writable for R rows (`y_stride` apart) of `columns` f32, which nothing else
/// accesses during the call.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel<const R: usize>(args: &Args) {
    let &Args {
        a,
        row_scales,
        blocks,
        w,
        offsets,
        channel_scales,
        y,
        y_stride,
        columns,
    } = args;
    let width = blocks * BLOCK;
    let mut sums = [[_mm512_setzero_ps(); 2]; R];
    for b in 0..blocks {
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        for g in b * GROUPS..(b + 1) * GROUPS {
            // SAFETY: g < blocks * 8: the 32 dwords (128 bytes) at w + g * 128 are inside the
            // panel (unaligned loads).
            let (w0, w1) = unsafe {
                (
                    _mm512_loadu_si512(w.add(g * COLUMNS * 4).cast()),
                    _mm512_loadu_si512(w.add(g * COLUMNS * 4 + 64).cast()),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < R and 4g + 4 <= width: the 4 bytes at row r, offset 4g are
                // inside `a` (read unaligned).
                let four = unsafe { a.add(r * width + g * 4).cast::<i32>().read_unaligned() };
                let four = _mm512_set1_epi32(four);
                acc[0] = _mm512_dpbusd_epi32(acc[0], four, w0);
                acc[1] = _mm512_dpbusd_epi32(acc[1], four, w1);
            }
        }
        // SAFETY: b < blocks: the block's 32 offsets are inside `offsets` (unaligned loads).
        let (o0, o1) = unsafe {
            (
                _mm512_loadu_si512(offsets.add(b * COLUMNS).cast()),
                _mm512_loadu_si512(offsets.add(b * COLUMNS + 16).cast()),
            )
        };
        for (r, (acc, sums)) in acc.iter().zip(sums.iter_mut()).enumerate() {
            // SAFETY: r < R and b < blocks: inside `row_scales`.
            let scale = _mm512_set1_ps(unsafe { *row_scales.add(r * blocks + b) });
            sums[0] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[0], o0)),
                scale,
                sums[0],
            );
            sums[1] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[1], o1)),
                scale,
                sums[1],
            );
        }
    }
    let mask = |lanes: usize| -> __mmask16 { ((1u32 << lanes.min(16)) - 1) as __mmask16 };
    let (m0, m1) = (mask(columns), mask(columns.saturating_sub(16)));
    // SAFETY: the masked loads read only the first `columns` scales, which the caller provides.
    let (s0, s1) = unsafe {
        (
            _mm512_maskz_loadu_ps(m0, channel_scales),
            _mm512_maskz_loadu_ps(m1, channel_scales.add(16)),
        )
    };
    for (r, sums) in sums.iter().enumerate() {
        // SAFETY: row r < R of y, of which the masks cover only the first `columns` lanes
        // (masked-off lanes are neither read nor written), which the caller lets us read and
        // write.
        unsafe {
            let row = y.add(r * y_stride);
            let v0 = _mm512_maskz_loadu_ps(m0, row);
            _mm512_mask_storeu_ps(row, m0, _mm512_fmadd_ps(sums[0], s0, v0));
            if m1 != 0 {
                let v1 = _mm512_maskz_loadu_ps(m1, row.add(16));
                _mm512_mask_storeu_ps(row.add(16), m1, _mm512_fmadd_ps(sums[1], s1, v1));
            }
        }
    }
}
