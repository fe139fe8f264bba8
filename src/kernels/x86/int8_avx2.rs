//! int8 dense layers on CPUs with AVX2 and no AVX-512 VNNI (AMD Zen 2 / Zen 3: ml.c5a, ml.c6a,
//! ml.m6a); see `kernels::int8`.
//!
//! Each activation row is quantized to 16 bits with one scale (|q| <= 127 · 128: the numbers
//! the AMX tiles hold as two int8 halves, `x86::int8_tiles`), the int8 weights are widened to
//! i16 as they are loaded (`vpmovsxbw`: kept in int8, a layer's weights are half the bytes to
//! read, which one request at a time is bound by), and `vpmaddwd` multiplies 2 inputs of a row
//! by 8 channels' 2 weights,
//! summing each pair exactly into i32, which `vpaddd` accumulates. AVX2 has no signed byte
//! product: the kernel before this one ran `vpmaddubsw` on |x| and the weights given x's sign,
//! then `vpmaddwd` to widen, with activations in blocks of 32 scaled apart. Same multiplies
//! per product, but the `vpabsb` / `vpsignb` issue on the two ports the multiplies use
//! (measured on Zen 3: 2.8 cycles per 64 products a row there, 2.5 here), and the blocks'
//! scaling is gone; the rows' 16 bits are as accurate as the int8 weights allow (the tiles'
//! figures in `kernels::int8`).
//!
//! Weights are packed once in panels of 16 output channels: for each pair of inputs, the 16
//! channels' 2 weights (32 bytes). Sums stay exact in i32 for [`CHUNK_PAIRS`] pairs
//! (`2 · 16256 · 127 · 256 < 2^31`), then are added into f32; at the end each sum times its
//! row's and its channel's scales is added onto the output.
//!
//! Only reached when [`available`] (run-time detection): `Int8Linear::quantize` packs these
//! panels only then, and [`Avx2Panels::accumulate`] asserts it before any `target_feature` call.

use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::kernels::{round_to_integer, row_q_scale, SharedPtr, PARALLEL_QUANTIZE_MIN_VALUES};

/// Output channels per panel: two registers of 8 i32 lanes.
const COLUMNS: usize = 16;
/// Rows per microkernel call: 4 rows x 2 registers = 8 i32 and 8 f32 sums of the 16 registers
/// (the f32 ones touched once per chunk).
const ROWS: usize = 4;
/// Pairs of inputs summed in i32 before the sums move to f32 (no overflow: see the top).
const CHUNK_PAIRS: usize = 256;

/// Whether this CPU has AVX2 and FMA (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

pub struct Avx2Panels {
    out: usize,
    /// Pairs of inputs per row (the last one zero-padded where the layer's inputs are odd).
    pairs: usize,
    /// [panel][pair][16 channels][2 weights].
    panels: Vec<i8>,
}

/// Activation rows in 16 bits: n rows of `pairs * 2` values (zero-padded), a scale per row.
struct WideRows {
    values: Vec<i16>,
    scales: Vec<f32>,
}

impl Avx2Panels {
    /// `q`: the quantized weights, [out][width] row-major, `width >= inp` (zero-padded).
    pub fn pack(q: &[i8], out: usize, width: usize) -> Self {
        assert_eq!(q.len(), out * width);
        let pairs = width.div_ceil(2);
        let mut panels = vec![0i8; out.div_ceil(COLUMNS) * pairs * COLUMNS * 2];
        for c in 0..out {
            let (panel, lane) = (c / COLUMNS, c % COLUMNS);
            for (k, &w) in q[c * width..(c + 1) * width].iter().enumerate() {
                panels[((panel * pairs + k / 2) * COLUMNS + lane) * 2 + k % 2] = w;
            }
        }
        Avx2Panels { out, pairs, panels }
    }

    /// `y` (n rows of `out`, holding the bias) += `x` (n rows of `inp`) · Wᵀ, each row of `x`
    /// quantized to 16 bits first; `scales` the weights' per-channel scales. On the calling
    /// thread, or shared out across rayon's (`parallel`).
    pub fn accumulate(
        &self,
        scales: &[f32],
        x: &[f32],
        n: usize,
        inp: usize,
        y: &mut [f32],
        parallel: bool,
    ) {
        assert!(available(), "AVX2 int8 panels need AVX2 and FMA");
        assert!(inp <= 2 * self.pairs && x.len() == n * inp);
        assert_eq!(scales.len(), self.out);
        let rows = self.quantize_rows(x, n, inp, parallel);
        self.accumulate_rows(scales, &rows, n, y, parallel);
    }

    /// Each row of `x` quantized to 16 bits with its own scale (0 for a zero row, NaN for one
    /// holding a NaN or an infinity, so that its outputs are NaN as in f32).
    fn quantize_rows(&self, x: &[f32], n: usize, inp: usize, parallel: bool) -> WideRows {
        let width = 2 * self.pairs;
        let mut values = vec![0i16; n * width];
        let mut scales = vec![0f32; n];
        let row = |((x, values), scale): ((&[f32], &mut [i16]), &mut f32)| {
            let (row_scale, inverse) = row_q_scale(x);
            *scale = row_scale;
            let Some(inverse) = inverse else {
                return;
            };
            for (q, &v) in values.iter_mut().zip(x) {
                *q = round_to_integer(v * inverse) as i16;
            }
        };
        if inp == 0 {
            return WideRows { values, scales };
        }
        if parallel && n * inp >= PARALLEL_QUANTIZE_MIN_VALUES {
            x.par_chunks(inp)
                .zip(values.par_chunks_mut(width))
                .zip(scales.par_iter_mut())
                .for_each(row);
        } else {
            x.chunks(inp)
                .zip(values.chunks_mut(width))
                .zip(scales.iter_mut())
                .for_each(row);
        }
        WideRows { values, scales }
    }

    /// `y` (n rows of `out`, holding the bias) += the product of `rows` and the weights.
    fn accumulate_rows(
        &self,
        scales: &[f32],
        rows: &WideRows,
        n: usize,
        y: &mut [f32],
        parallel: bool,
    ) {
        let (pairs, width) = (self.pairs, 2 * self.pairs);
        assert_eq!(rows.values.len(), n * width);
        assert_eq!(y.len(), n * self.out);
        let y_ptr = SharedPtr(y.as_mut_ptr());
        let panel = |p: usize| {
            let columns = COLUMNS.min(self.out - p * COLUMNS);
            let weights = &self.panels[p * pairs * COLUMNS * 2..(p + 1) * pairs * COLUMNS * 2];
            // The panel's channel scales, zero past the layer's last channel.
            let mut channel_scales = [0f32; COLUMNS];
            channel_scales[..columns].copy_from_slice(&scales[p * COLUMNS..][..columns]);
            for r0 in (0..n).step_by(ROWS) {
                let count = ROWS.min(n - r0);
                let mut sums = [[0f32; COLUMNS]; ROWS];
                // SAFETY: the CPU has AVX2 and FMA (asserted by `accumulate`). `a` points at rows
                // r0..r0+count of `rows.values` (count rows of `width` i16),
                // `weights` is this panel's `pairs` x 32 bytes; the kernel writes only `sums`.
                unsafe {
                    let a = rows.values.as_ptr().add(r0 * width);
                    let w = weights.as_ptr();
                    match count {
                        4 => kernel::<4>(a, pairs, w, &mut sums),
                        3 => kernel::<3>(a, pairs, w, &mut sums),
                        2 => kernel::<2>(a, pairs, w, &mut sums),
                        _ => kernel::<1>(a, pairs, w, &mut sums),
                    }
                }
                for (r, sums) in sums[..count].iter().enumerate() {
                    let row_scale = rows.scales[r0 + r];
                    // SAFETY: row r0 + r < n and columns p * 16 .. p * 16 + columns <= out:
                    // inside y (n x out, asserted); panels write disjoint columns, and
                    // `y` outlives them (for_each returns after them).
                    let y_row = unsafe {
                        std::slice::from_raw_parts_mut(
                            y_ptr.get().add((r0 + r) * self.out + p * COLUMNS),
                            columns,
                        )
                    };
                    for ((y, &sum), &scale) in y_row.iter_mut().zip(sums).zip(&channel_scales) {
                        *y += sum * (row_scale * scale);
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

/// R rows x 16 channels: for each pair of inputs, broadcast each row's 2 values and
/// multiply-add them with the panel's 16 channels' 2 weights (i32), moving the sums to f32
/// every [`CHUNK_PAIRS`] pairs; the f32 sums are stored in `sums`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` must be readable for R rows of `2 * pairs` i16, and `w`
/// for `pairs` x 32 bytes.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize>(
    a: *const i16,
    pairs: usize,
    w: *const i8,
    sums: &mut [[f32; COLUMNS]; ROWS],
) {
    let width = 2 * pairs;
    let mut total = [[_mm256_setzero_ps(); 2]; R];
    for chunk in (0..pairs).step_by(CHUNK_PAIRS) {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for pair in chunk..pairs.min(chunk + CHUNK_PAIRS) {
            // SAFETY: pair < pairs: the 32 bytes at w + pair * 32 are inside the panel
            // (unaligned loads), widened to i16.
            let (w0, w1) = unsafe {
                (
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(pair * COLUMNS * 2).cast())),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(pair * COLUMNS * 2 + 16).cast())),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < R and 2 * pair + 2 <= width: the 2 i16 at row r, input 2 * pair
                // are inside `a` (read unaligned).
                let two = unsafe { a.add(r * width + 2 * pair).cast::<i32>().read_unaligned() };
                let x = _mm256_set1_epi32(two);
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, w1));
            }
        }
        for (acc, total) in acc.iter().zip(total.iter_mut()) {
            total[0] = _mm256_add_ps(total[0], _mm256_cvtepi32_ps(acc[0]));
            total[1] = _mm256_add_ps(total[1], _mm256_cvtepi32_ps(acc[1]));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{activate, bias_rows, largest_magnitude, Activation};

    /// The exact product of the 16-bit rows and the int8 weights, with the bias, the
    /// activation, a zero row (the bias) and a row holding a NaN (NaN, as in f32), for shapes
    /// with partial panels, odd inputs, rows past the microkernel's and several chunks.
    #[test]
    fn computes_the_rows_product() {
        if !available() {
            eprintln!("no AVX2 and FMA on this CPU: nothing to run");
            return;
        }
        for &(n, inp, out) in &[(1, 3, 5), (10, 64, 40), (17, 385, 70), (13, 1537, 32)] {
            let w: Vec<f32> = (0..out * inp)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut x: Vec<f32> = (0..n * inp)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..out).map(|i| i as f32 / 10.0).collect();
            let (zero, nan) = (n.min(8) - 1, n.min(10) - 1);
            if n > 1 {
                x[zero * inp..(zero + 1) * inp].fill(0.0);
                x[nan * inp + inp / 2] = f32::NAN;
            }
            let mut q = vec![0i8; out * inp];
            let mut scales = vec![0f32; out];
            for j in 0..out {
                let row = &w[j * inp..(j + 1) * inp];
                scales[j] = largest_magnitude(row) / 127.0;
                for (q, &v) in q[j * inp..(j + 1) * inp].iter_mut().zip(row) {
                    *q = (v / scales[j]).round_ties_even() as i8;
                }
            }
            let panels = Avx2Panels::pack(&q, out, inp);
            let rows = panels.quantize_rows(&x, n, inp, false);
            let width = 2 * panels.pairs;
            for activation in [None, Some(Activation::Gelu)] {
                let mut y = bias_rows(&b, n);
                panels.accumulate(&scales, &x, n, inp, &mut y, n > 4);
                if let Some(activation) = activation {
                    activate(&mut y, activation);
                }
                for r in 0..n {
                    for j in 0..out {
                        let got = y[r * out + j];
                        if n > 1 && r == nan {
                            assert!(got.is_nan(), "n{n} [{r}, {j}]");
                            continue;
                        }
                        let dot: i64 = (0..inp)
                            .map(|k| rows.values[r * width + k] as i64 * q[j * inp + k] as i64)
                            .sum();
                        let mut want = [(b[j] as f64
                            + rows.scales[r] as f64 * scales[j] as f64 * dot as f64)
                            as f32];
                        if let Some(activation) = activation {
                            activate(&mut want, activation);
                        }
                        assert!(
                            (got - want[0]).abs() <= 1e-4 * want[0].abs().max(1.0),
                            "n{n} in{inp} out{out} [{r}, {j}]: {got} vs {}",
                            want[0]
                        );
                    }
                }
            }
            // Each value within half a step of its row's scale; the zero row all zeros.
            for r in (0..n).filter(|&r| n == 1 || r != nan) {
                for k in 0..inp {
                    let v = rows.values[r * width + k] as f32;
                    let error = (x[r * inp + k] - rows.scales[r] * v).abs();
                    assert!(error <= 0.5001 * rows.scales[r], "[{r}, {k}]");
                }
            }
        }
    }
}
