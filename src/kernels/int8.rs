//! Dense layers in int8 (`SERVER_QUANTIZE=int8`): weights quantized once at load, symmetric per
//! output channel (`w ≈ s_w[j] · q_w[j][k]`, q in -127..=127); activations quantized per call,
//! symmetric per row and block of 32 inputs (`x ≈ s_x[r][b] · q_x[r][k]`, as llama.cpp's Q8_0
//! blocks); each block's products summed exactly in i32, then scaled and summed in f32 onto the
//! output, which starts as the bias: `y[r][j] = b[j] + s_w[j] Σ_b s_x[r][b] Σ_{k∈b} q_x q_w`.
//! Blocks, not whole rows, because an encoder's activations have a few large channels: on MiniLM
//! the largest value of a feed-forward input is 8-17x its RMS, a block's largest is on average a
//! fifth to a third of the row's, and with one scale per row the classifier's scores moved by
//! more than 1e-2. Everything around the dense layers (attention, LayerNorm, heads) stays f32.
//!
//! Three kernels, the best the CPU runs chosen once at pack time:
//! - AVX-512 VNNI (`x86::int8`, run-time detected): `vpdpbusd`, 64 byte products per
//!   instruction, four times an f32 FMA's multiply-adds. It multiplies unsigned by signed bytes,
//!   so activations go in offset by 128 and each block's sum loses `128 Σ_{k∈b} q_w[j][k]`.
//! - AVX2 (`x86::int8_avx2`): `vpmaddubsw` on |x| and the weights given x's sign, then
//!   `vpmaddwd`; exact (no saturation), about twice an f32 FMA's multiply-adds per cycle.
//! - Portable: i8 · i8 dot products in plain loops the compiler vectorizes for the target
//!   (`vpmaddwd` with AVX2, which `.cargo/config.toml` makes the x86-64 baseline; `smlal` /
//!   `sadalp` with NEON on aarch64). Every CPU runs it, and it is the reference the x86 kernels
//!   are tested against.
//!
//! None matches ONNX Runtime's quantization bit for bit (it quantizes activations per tensor,
//! asymmetric); the accuracy against f32 is measured on the golden files (tests/parity_int8.rs).

use rayon::prelude::*;

use super::SharedPtr;

/// Output channels per parallel task of the portable kernel.
const CHANNELS_PER_TASK: usize = 32;
/// Inputs per activation scale.
const BLOCK: usize = super::INT8_BLOCK;
/// Fewest activation values quantized across threads rather than on the calling one.
pub(super) const PARALLEL_QUANTIZE_MIN_VALUES: usize = 1 << 16;
/// Fewest rows for which the AMX tiles run the product rather than VNNI. The tiles compute 16
/// rows at a time, and each block's sums leave them to be scaled, so they only draw level with
/// VNNI, from about 32 rows: a 384 -> 1152 layer on 2 Xeon cores, tiles against VNNI, 90 / 87 us
/// at 32 rows, 191 / 189 at 96, 970 / 944 at 560 (`SAGEMAKER_HF_BF16_KERNELS=1
/// [SAGEMAKER_HF_NO_AMX=1] cargo bench --bench forward -- dense`). Kept as the base of a faster
/// tile kernel (issue 16).
#[cfg(target_arch = "x86_64")]
const TILES_MIN_ROWS: usize = 32;

pub struct Int8Linear {
    out: usize,
    inp: usize,
    /// Blocks of 32 inputs (the last one zero-padded).
    blocks: usize,
    /// Per output channel: w ≈ scales[j] · q.
    scales: Vec<f32>,
    weights: Int8Weights,
    /// Products of at least `TILES_MIN_ROWS` rows run on the AMX tiles where the CPU has them
    /// (false: only the other kernels, for the tests that compare them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    use_tiles: bool,
}

enum Int8Weights {
    /// q_w row-major, [out][blocks * 32] (zero-padded).
    Portable(Vec<i8>),
    #[cfg(target_arch = "x86_64")]
    Vnni(super::x86::int8::VnniPanels),
    #[cfg(target_arch = "x86_64")]
    Avx2(super::x86::int8_avx2::Avx2Panels),
}

/// Activation rows quantized for one product: `values` holds n rows of `blocks * 32` values
/// (zero-padded), `scales` n rows of one scale per block.
pub(super) struct QuantizedRows {
    pub(super) values: Vec<i8>,
    pub(super) scales: Vec<f32>,
}

/// Symmetric int8 quantization of `values`: (scale, q) with `values[k] ≈ scale · q[k]`,
/// |q| <= 127, the largest magnitude mapped to 127, ties rounded to even (an all-zero input has
/// scale 0; one with a NaN or infinity, scale NaN, so the outputs are NaN as in f32). Written
/// lane by lane so that the compiler vectorizes both loops.
fn quantize_into(values: &[f32], q: &mut [i8]) -> f32 {
    const LANES: usize = 8;
    // Per lane: the largest magnitude, and a sum that a NaN or infinity poisons (the comparison
    // below skips NaN). Plain compares, not f32::max, so that the loop is one vmaxps per lane group.
    let (mut largest, mut sums) = ([0f32; LANES], [0f32; LANES]);
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for ((m, s), v) in largest.iter_mut().zip(&mut sums).zip(chunk) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
            *s += v;
        }
    }
    let poisoned = !(sums.iter().sum::<f32>() + tail.iter().sum::<f32>()).is_finite();
    let largest = largest
        .iter()
        .chain(tail)
        .fold(0f32, |m, &v| m.max(v.abs()));
    if largest == 0.0 || poisoned {
        q.iter_mut().for_each(|q| *q = 0);
        return if poisoned { f32::NAN } else { 0.0 };
    }
    let inverse = 127.0 / largest;
    for (q, &v) in q.iter_mut().zip(values) {
        // Rounded to the nearest integer, ties to even, by adding 1.5 * 2^23: the sum's
        // mantissa then holds the integer (the FPU rounds the addition to even), for any
        // |v * inverse| < 2^22 (here <= 127). Integer arithmetic on the bits, unlike a
        // float-to-int `as` (saturating, NaN-checked, scalar), vectorizes.
        const MAGIC: f32 = 12_582_912.0;
        let rounded = (v * inverse + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
        *q = rounded as i8;
    }
    largest / 127.0
}

/// Each of the n rows of `x` (`inp` wide) quantized per block of 32, into rows of
/// `inp.div_ceil(32) * 32` values; the rows shared out across rayon's threads (`parallel`).
/// `rows` (>= n) rows are allocated, those past n zeros (the AMX tiles read whole tiles).
pub(super) fn quantize_rows(
    x: &[f32],
    n: usize,
    inp: usize,
    rows: usize,
    parallel: bool,
) -> QuantizedRows {
    let blocks = inp.div_ceil(BLOCK);
    let width = blocks * BLOCK;
    let mut values = vec![0i8; rows.max(n) * width];
    let mut scales = vec![0f32; rows.max(n) * blocks];
    let row = |((x, values), scales): ((&[f32], &mut [i8]), &mut [f32])| {
        for ((chunk, scale), at) in x.chunks(BLOCK).zip(scales).zip((0..).step_by(BLOCK)) {
            *scale = quantize_into(chunk, &mut values[at..at + chunk.len()]);
        }
    };
    if inp == 0 {
        return QuantizedRows { values, scales };
    }
    if parallel {
        x.par_chunks(inp)
            .zip(values.par_chunks_mut(width))
            .zip(scales.par_chunks_mut(blocks))
            .for_each(row);
    } else {
        x.chunks(inp)
            .zip(values.chunks_mut(width))
            .zip(scales.chunks_mut(blocks))
            .for_each(row);
    }
    QuantizedRows { values, scales }
}

impl Int8Linear {
    /// `weight`: [out][inp], row-major f32.
    pub fn quantize(weight: &[f32], out: usize, inp: usize) -> Self {
        assert_eq!(weight.len(), out * inp);
        let blocks = inp.div_ceil(BLOCK);
        let width = blocks * BLOCK;
        let mut q = vec![0i8; out * width];
        let scales = (0..out)
            .map(|j| {
                quantize_into(
                    &weight[j * inp..(j + 1) * inp],
                    &mut q[j * width..j * width + inp],
                )
            })
            .collect();
        let weights = Self::pack(q, out, blocks);
        Int8Linear {
            out,
            inp,
            blocks,
            scales,
            weights,
            use_tiles: true,
        }
    }

    /// The quantized weights in the layout of the best kernel this CPU runs.
    fn pack(q: Vec<i8>, out: usize, blocks: usize) -> Int8Weights {
        #[cfg(target_arch = "x86_64")]
        {
            use super::x86::{int8, int8_avx2};
            if int8::available() {
                return Int8Weights::Vnni(int8::VnniPanels::pack(&q, out, blocks));
            }
            if int8_avx2::available() {
                return Int8Weights::Avx2(int8_avx2::Avx2Panels::pack(&q, out, blocks));
            }
        }
        // Only the x86 panels need the shape; the portable kernel reads `q` as it is.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (out, blocks);
        Int8Weights::Portable(q)
    }

    /// Which kernel the layer runs (for the start-up log).
    pub fn kernel_name(&self) -> &'static str {
        match &self.weights {
            Int8Weights::Portable(_) => "portable int8 loops",
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Vnni(_) if self.tiles(TILES_MIN_ROWS) => {
                "AMX tiles (AVX-512 VNNI below 32 rows)"
            }
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Vnni(_) => "AVX-512 VNNI",
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Avx2(_) => "AVX2",
        }
    }

    /// `y` (n rows of `out`, holding the bias) += `x` (n rows of `inp`) · Wᵀ, on the calling
    /// thread or shared out across rayon's (`parallel`).
    pub fn accumulate(&self, x: &[f32], n: usize, y: &mut [f32], parallel: bool) {
        assert_eq!(x.len(), n * self.inp);
        assert_eq!(y.len(), n * self.out);
        #[cfg(target_arch = "x86_64")]
        let tiles = matches!(self.weights, Int8Weights::Vnni(_)) && self.tiles(n);
        #[cfg(not(target_arch = "x86_64"))]
        let tiles = false;
        // The tiles read whole tiles of 16 rows: the rows past n are allocated as zeros.
        let allocated = if tiles { n.next_multiple_of(16) } else { n };
        // Quantizing is ~0.5 ns a value: worth a thread hand-off only for many rows.
        let parallel_rows = parallel && n * self.inp >= PARALLEL_QUANTIZE_MIN_VALUES;
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // only VNNI rewrites it
        let mut rows = quantize_rows(x, n, self.inp, allocated, parallel_rows);
        match &self.weights {
            Int8Weights::Portable(q) => self.accumulate_portable(q, &rows, n, y, parallel),
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Vnni(panels) if tiles => {
                panels.accumulate_tiles(&self.scales, &rows.values, &rows.scales, n, y, parallel)
            }
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Vnni(panels) => {
                // In place, the sign bit flipped: q + 128 as the unsigned bytes VNNI takes.
                rows.values.iter_mut().for_each(|v| *v ^= i8::MIN);
                panels.accumulate(&self.scales, &rows.values, &rows.scales, n, y, parallel)
            }
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Avx2(panels) => {
                panels.accumulate(&self.scales, &rows.values, &rows.scales, n, y, parallel)
            }
        }
    }

    /// Whether a product of `n` rows runs on the AMX tiles (where the CPU has them).
    #[cfg(target_arch = "x86_64")]
    fn tiles(&self, n: usize) -> bool {
        self.use_tiles && n >= TILES_MIN_ROWS && super::x86::amx::available()
    }

    fn accumulate_portable(
        &self,
        q: &[i8],
        rows: &QuantizedRows,
        n: usize,
        y: &mut [f32],
        parallel: bool,
    ) {
        let (out, blocks) = (self.out, self.blocks);
        let width = blocks * BLOCK;
        let y_ptr = SharedPtr(y.as_mut_ptr());
        let task = |t: usize| {
            for j in t * CHANNELS_PER_TASK..out.min((t + 1) * CHANNELS_PER_TASK) {
                let weights = &q[j * width..(j + 1) * width];
                for r in 0..n {
                    let values = &rows.values[r * width..(r + 1) * width];
                    let scales = &rows.scales[r * blocks..(r + 1) * blocks];
                    let sum: f32 = values
                        .chunks_exact(BLOCK)
                        .zip(weights.chunks_exact(BLOCK))
                        .zip(scales)
                        .map(|((x, w), &scale)| dot_i8(x, w) as f32 * scale)
                        .sum();
                    // SAFETY: r < n and j < out: inside y (n * out, asserted by the caller);
                    // each task writes its own channels [t*32, t*32+32) of every row, so no two
                    // tasks touch one element, and `y` outlives them (for_each returns after).
                    unsafe {
                        *y_ptr.get().add(r * out + j) += self.scales[j] * sum;
                    }
                }
            }
        };
        let tasks = out.div_ceil(CHANNELS_PER_TASK);
        if parallel {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }
}

/// Σ a·b in i32 (exact: |a·b| <= 127², and rows are far shorter than 2^31 / 127²).
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&a, &b)| a as i32 * b as i32).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_inputs(n: usize, inp: usize, out: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let w = (0..out * inp)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let x = (0..n * inp)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let b = (0..out).map(|i| i as f32 / 10.0).collect();
        (w, x, b)
    }

    /// The exact result of the quantized product (computed in f64 from the same integers).
    fn quantized_reference(w: &[f32], x: &[f32], b: &[f32], n: usize, inp: usize) -> Vec<f64> {
        let out = b.len();
        let mut weights = vec![0i8; out * inp];
        let weight_scales: Vec<f32> = (0..out)
            .map(|j| {
                quantize_into(
                    &w[j * inp..(j + 1) * inp],
                    &mut weights[j * inp..(j + 1) * inp],
                )
            })
            .collect();
        let rows = quantize_rows(x, n, inp, n, false);
        let (blocks, width) = (inp.div_ceil(BLOCK), inp.div_ceil(BLOCK) * BLOCK);
        let mut y = vec![0f64; n * out];
        for r in 0..n {
            for j in 0..out {
                let sum: f64 = (0..blocks)
                    .map(|bl| {
                        let dot: i64 = (bl * BLOCK..inp.min((bl + 1) * BLOCK))
                            .map(|k| {
                                rows.values[r * width + k] as i64 * weights[j * inp + k] as i64
                            })
                            .sum();
                        dot as f64 * rows.scales[r * blocks + bl] as f64
                    })
                    .sum();
                y[r * out + j] = b[j] as f64 + weight_scales[j] as f64 * sum;
            }
        }
        y
    }

    /// Both kernels (VNNI where the CPU has it) give the quantized product, for shapes with
    /// partial panels, partial blocks, and row counts past the microkernel's.
    #[test]
    fn kernels_compute_the_quantized_product() {
        for &(n, inp, out) in &[
            (1, 3, 5),
            (9, 64, 40),
            (17, 385, 70),
            (3, 32, 32),
            (40, 384, 1152),
            (33, 96, 31),
            (64, 1536, 384),
        ] {
            let (w, x, b) = layer_inputs(n, inp, out);
            let want = quantized_reference(&w, &x, &b, n, inp);
            let chosen = Int8Linear::quantize(&w, out, inp);
            let mut layers = vec![chosen];
            #[cfg(target_arch = "x86_64")]
            if layers[0].tiles(TILES_MIN_ROWS) {
                // VNNI too, on the same panels.
                let mut vnni = Int8Linear::quantize(&w, out, inp);
                vnni.use_tiles = false;
                layers.push(vnni);
            }
            if !matches!(&layers[0].weights, Int8Weights::Portable(_)) {
                // The portable kernel too, from the same quantized weights.
                let chosen = &layers[0];
                let width = chosen.blocks * BLOCK;
                let mut q = vec![0i8; out * width];
                for j in 0..out {
                    quantize_into(
                        &w[j * inp..(j + 1) * inp],
                        &mut q[j * width..j * width + inp],
                    );
                }
                layers.push(Int8Linear {
                    out,
                    inp,
                    blocks: chosen.blocks,
                    scales: chosen.scales.clone(),
                    weights: Int8Weights::Portable(q),
                    use_tiles: false,
                });
            }
            for layer in &layers {
                let mut y: Vec<f32> = (0..n).flat_map(|_| b.iter().copied()).collect();
                layer.accumulate(&x, n, &mut y, n > 4);
                for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{} n{n} in{inp} out{out} [{}, {}]: {got} vs {want}",
                        layer.kernel_name(),
                        i / out,
                        i % out
                    );
                }
            }
        }
    }

    /// Against the f32 product: within int8 rounding (about 1% of the output's scale here).
    #[test]
    fn close_to_the_f32_product() {
        let (n, inp, out) = (8, 384, 96);
        let (w, x, b) = layer_inputs(n, inp, out);
        let mut y: Vec<f32> = (0..n).flat_map(|_| b.iter().copied()).collect();
        Int8Linear::quantize(&w, out, inp).accumulate(&x, n, &mut y, false);
        let mut largest = 0f32;
        let mut worst = 0f32;
        for r in 0..n {
            for j in 0..out {
                let want: f32 = b[j]
                    + (0..inp)
                        .map(|k| x[r * inp + k] * w[j * inp + k])
                        .sum::<f32>();
                largest = largest.max(want.abs());
                worst = worst.max((y[r * out + j] - want).abs());
            }
        }
        assert!(
            worst <= 0.01 * largest,
            "{worst} against outputs up to {largest}"
        );
    }

    #[test]
    fn quantization_is_symmetric_and_exact_at_the_extremes() {
        let mut q = [0i8; 4];
        let scale = quantize_into(&[1.0, -2.0, 0.5, 2.0], &mut q);
        assert_eq!(q, [64, -127, 32, 127]);
        assert!((scale - 2.0 / 127.0).abs() < 1e-9);
        assert_eq!(quantize_into(&[0.0; 4], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
        // A NaN anywhere (also past the 8-lane chunks) makes the row's outputs NaN, as in f32.
        let mut row = [1f32; 11];
        for at in [2, 9] {
            row[at] = f32::NAN;
            assert!(quantize_into(&row, &mut [0; 11]).is_nan());
            row[at] = 1.0;
        }
        assert!(quantize_into(&row, &mut [0; 11]) > 0.0);
    }
}
