//! Dense layers in int8 (`SERVER_QUANTIZE=int8`): weights quantized once at load, symmetric per
//! output channel (`w ≈ s_w[j] · q_w[j][k]`, q in -127..=127). On the AMX tiles, from 16 rows,
//! activations are quantized per row to 16 bits held as two int8 halves (`x86::int8_tiles`,
//! which says why); on AVX2 without VNNI, per row to the same 16-bit numbers, multiplied as
//! i16 (`x86::int8_avx2`). Elsewhere they are quantized per call, symmetric per row and block
//! of 32 inputs (`x ≈ s_x[r][b] · q_x[r][k]`, as llama.cpp's Q8_0
//! blocks); each block's products summed exactly in i32, then scaled and summed in f32 onto the
//! output, which starts as the bias: `y[r][j] = b[j] + s_w[j] Σ_b s_x[r][b] Σ_{k∈b} q_x q_w`.
//! Blocks or 16 bits, not 8 bits a row, because an encoder's activations have a few large
//! channels: on MiniLM the largest value of a feed-forward input is 8-17x its RMS, a block's
//! largest is on average a fifth to a third of the row's, and with one 8-bit scale per row the
//! classifier's scores moved by more than 1e-2. Everything around the dense layers (attention,
//! LayerNorm, heads) stays f32.
//!
//! Besides the tiles, three kernels, the best the CPU runs chosen once at pack time:
//! - AVX-512 VNNI (`x86::int8`, run-time detected): `vpdpbusd`, 64 byte products per
//!   instruction, four times an f32 FMA's multiply-adds. It multiplies unsigned by signed bytes,
//!   so activations go in offset by 128 and each block's sum loses `128 Σ_{k∈b} q_w[j][k]`.
//! - AVX2 (`x86::int8_avx2`): 16-bit rows times the weights widened to i16 with `vpmaddwd`,
//!   exact in i32; 1.6x an f32 FMA's multiply-adds per cycle on Zen 3.
//! - Arm with FEAT_DotProd (`aarch64::int8_dot`, run-time detected: Graviton 2 and later):
//!   `sdot`, 16 byte products per instruction, on the portable kernel's blocks.
//! - Portable: i8 · i8 dot products in plain loops the compiler vectorizes for the target
//!   (`vpmaddwd` with AVX2, which `.cargo/config.toml` makes the x86-64 baseline; `smlal` /
//!   `sadalp` with NEON on aarch64). Every CPU runs it, and it is the reference the VNNI and
//!   `sdot` kernels are tested against.
//!
//! With VNNI a request's answer thus depends a little on how many rows its batch holds (blocks
//! below 16, halves from 16: both within the bounds of tests/parity_int8.rs, which checks both).
//! None matches ONNX Runtime's quantization bit for bit (it quantizes activations per tensor,
//! asymmetric); the accuracy against f32 is measured on the golden files (tests/parity_int8.rs).

use rayon::prelude::*;

use super::{
    activate, bias_rows, largest_magnitude, round_to_integer, Activation, QuantizedRows, SharedPtr,
    PARALLEL_QUANTIZE_MIN_VALUES,
};

/// Output channels per parallel task of the block kernels (portable, `sdot`).
const CHANNELS_PER_TASK: usize = 32;
/// Inputs per activation scale.
const BLOCK: usize = super::INT8_BLOCK;
/// Fewest rows for which the AMX tiles (`x86::int8_tiles`) run the product rather than VNNI:
/// a 384 -> 1152 layer on 2 Xeon cores, tiles against VNNI, 17 / 15 us at 8 rows, 21 / 29 at
/// 16, 45 / 79 at 32, 113 / 175 at 96, 528 / 890 at 560; 768 -> 3072 at 1576 rows 6.9 / 9.1 ms
/// (`[SAGEMAKER_HF_INT8_TILES=1 | SAGEMAKER_HF_NO_AMX=1] cargo bench --bench forward --
/// dense`, 2026-12-04).
#[cfg(target_arch = "x86_64")]
const TILES_MIN_ROWS: usize = 16;

pub struct Int8Linear {
    out: usize,
    inp: usize,
    /// Blocks of 32 inputs (the last one zero-padded).
    blocks: usize,
    /// Per output channel: w ≈ scales[j] · q.
    scales: Vec<f32>,
    weights: Int8Weights,
}

enum Int8Weights {
    /// q_w row-major, [out][blocks * 32] (zero-padded).
    Portable(Vec<i8>),
    #[cfg(target_arch = "x86_64")]
    Vnni(super::x86::int8::VnniPanels),
    #[cfg(target_arch = "x86_64")]
    Avx2(super::x86::int8_avx2::Avx2Panels),
    /// The portable layout, multiplied with `sdot`.
    #[cfg(target_arch = "aarch64")]
    DotProd(Vec<i8>),
}

/// Symmetric int8 quantization of `values`: (scale, q) with `values[k] ≈ scale · q[k]`,
/// |q| <= 127, the largest magnitude mapped to 127, ties rounded to even (an all-zero input has
/// scale 0; one with a NaN or infinity, scale NaN, so the outputs are NaN as in f32).
fn quantize_into(values: &[f32], q: &mut [i8]) -> f32 {
    let largest = largest_magnitude(values);
    if largest == 0.0 || largest.is_nan() {
        // All zeros, or NaN (a NaN or infinity in `values`).
        q.iter_mut().for_each(|q| *q = 0);
        return largest;
    }
    let inverse = 127.0 / largest;
    for (q, &v) in q.iter_mut().zip(values) {
        *q = round_to_integer(v * inverse) as i8;
    }
    largest / 127.0
}

/// Each of the n rows of `x` (`inp` wide) quantized per block of 32, into rows of
/// `inp.div_ceil(32) * 32` values; the rows shared out across rayon's threads (`parallel`).
pub(super) fn quantize_rows(x: &[f32], n: usize, inp: usize, parallel: bool) -> QuantizedRows {
    QuantizedRows::of_rows(x, n, inp, parallel, |x, values, scales| {
        for ((chunk, scale), at) in x.chunks(BLOCK).zip(scales).zip((0..).step_by(BLOCK)) {
            *scale = quantize_into(chunk, &mut values[at..at + chunk.len()]);
        }
    })
}

/// Each output channel of `weight` ([out][inp], row-major f32) quantized with its own scale, into
/// rows zero-padded to whole blocks of 32: (q, scales).
fn quantize_weights(weight: &[f32], out: usize, inp: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(weight.len(), out * inp);
    let width = inp.div_ceil(BLOCK) * BLOCK;
    let mut q = vec![0i8; out * width];
    let scales = (0..out)
        .map(|j| {
            quantize_into(
                &weight[j * inp..(j + 1) * inp],
                &mut q[j * width..j * width + inp],
            )
        })
        .collect();
    (q, scales)
}

impl Int8Linear {
    /// `weight`: [out][inp], row-major f32.
    pub fn quantize(weight: &[f32], out: usize, inp: usize) -> Self {
        let blocks = inp.div_ceil(BLOCK);
        let (q, scales) = quantize_weights(weight, out, inp);
        let weights = Self::pack(q, out, blocks);
        Int8Linear {
            out,
            inp,
            blocks,
            scales,
            weights,
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
                return Int8Weights::Avx2(int8_avx2::Avx2Panels::pack(&q, out, blocks * BLOCK));
            }
        }
        #[cfg(target_arch = "aarch64")]
        if super::aarch64::int8_dot::available() {
            return Int8Weights::DotProd(q);
        }
        // Only the x86 panels need the shape; the block kernels read `q` as it is.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (out, blocks);
        Int8Weights::Portable(q)
    }

    /// About how many of this layer's multiply-adds cost one f32 FMA's (for the threshold of
    /// sharing a product out across threads): 2 with AVX2 (`vpmaddwd` does twice an f32 FMA's
    /// multiply-adds at the same rate plus a `vpaddd`: 1.6x measured on Zen 3); 4 otherwise
    /// (VNNI and the tiles; the portable loops keep the threshold they had).
    pub fn times_cheaper_than_f32(&self) -> usize {
        match &self.weights {
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Avx2(_) => 2,
            _ => 4,
        }
    }

    /// Which kernel the layer runs (for the start-up log).
    pub fn kernel_name(&self) -> &'static str {
        match &self.weights {
            Int8Weights::Portable(_) => "portable int8 loops",
            #[cfg(target_arch = "aarch64")]
            Int8Weights::DotProd(_) => "Arm sdot",
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Vnni(_) if self.tiles(TILES_MIN_ROWS) => {
                "AMX tiles, activations in halves (AVX-512 VNNI below 16 rows)"
            }
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Vnni(_) => "AVX-512 VNNI",
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Avx2(_) => "AVX2, activations in 16-bit rows",
        }
    }

    /// `x` (n rows of `inp`) · Wᵀ + `bias`, then `activation`, on the calling thread or shared
    /// out across rayon's (`parallel`).
    pub fn product(
        &self,
        x: &[f32],
        n: usize,
        bias: &[f32],
        activation: Option<Activation>,
        parallel: bool,
    ) -> Vec<f32> {
        assert_eq!(x.len(), n * self.inp);
        #[cfg(target_arch = "x86_64")]
        if let Int8Weights::Vnni(panels) = &self.weights {
            if self.tiles(n) {
                let weights = panels.tiled(&self.scales);
                return super::x86::int8_tiles::product(
                    weights, x, n, self.inp, bias, activation, parallel,
                );
            }
        }
        let mut y = bias_rows(bias, n);
        self.accumulate(x, n, &mut y, parallel);
        if let Some(activation) = activation {
            activate(&mut y, activation);
        }
        y
    }

    /// `y` (n rows of `out`, holding the bias) += `x` (n rows of `inp`) · Wᵀ, with activations
    /// quantized as the kernel takes them: per block (portable, VNNI) or per row in 16 bits
    /// (AVX2).
    fn accumulate(&self, x: &[f32], n: usize, y: &mut [f32], parallel: bool) {
        assert_eq!(y.len(), n * self.out);
        // Quantizing is ~0.5 ns a value: worth a thread hand-off only for many rows.
        let parallel_rows = parallel && n * self.inp >= PARALLEL_QUANTIZE_MIN_VALUES;
        let block_rows = || quantize_rows(x, n, self.inp, parallel_rows);
        match &self.weights {
            Int8Weights::Portable(q) => {
                self.accumulate_blocks(q, &block_rows(), n, y, parallel, portable_dot4)
            }
            #[cfg(target_arch = "aarch64")]
            Int8Weights::DotProd(q) => {
                // SAFETY: DotProd weights are packed only where the CPU has FEAT_DotProd.
                let dot4 = |x: &[i8], s: &[f32], w: [&[i8]; 4]| unsafe {
                    super::aarch64::int8_dot::dot4(x, s, w)
                };
                self.accumulate_blocks(q, &block_rows(), n, y, parallel, dot4)
            }
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Vnni(panels) => {
                // The block rows' numbers as the unsigned bytes VNNI takes (q + 128).
                let rows = super::x86::int8::quantize_rows_offset(x, n, self.inp, parallel_rows);
                panels.accumulate(&self.scales, &rows.values, &rows.scales, n, y, parallel)
            }
            #[cfg(target_arch = "x86_64")]
            Int8Weights::Avx2(panels) => {
                panels.accumulate(&self.scales, x, n, self.inp, y, parallel)
            }
        }
    }

    /// Whether a product of `n` rows runs on the AMX tiles (where the CPU has them).
    #[cfg(target_arch = "x86_64")]
    fn tiles(&self, n: usize) -> bool {
        (n >= TILES_MIN_ROWS || super::int8_tiles_forced()) && super::x86::amx::available()
    }

    /// `y` += the block product of `rows` and the weights `q` (the portable layout), four
    /// channels of a row at a time through `dot4` (`dot4(row values, row scales, four weight
    /// rows)`: each channel's Σ_b scale_b Σ_{k∈b} x w).
    fn accumulate_blocks(
        &self,
        q: &[i8],
        rows: &QuantizedRows,
        n: usize,
        y: &mut [f32],
        parallel: bool,
        dot4: impl Fn(&[i8], &[f32], [&[i8]; 4]) -> [f32; 4] + Sync,
    ) {
        let (out, blocks) = (self.out, self.blocks);
        let width = blocks * BLOCK;
        let y_ptr = SharedPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let channels = t * CHANNELS_PER_TASK..out.min((t + 1) * CHANNELS_PER_TASK);
            for first in channels.clone().step_by(4) {
                // A last group of fewer than four repeats its last channel (computed, not kept).
                let j = |c: usize| (first + c).min(channels.end - 1);
                let weights = [0, 1, 2, 3].map(|c| &q[j(c) * width..(j(c) + 1) * width]);
                for r in 0..n {
                    let values = &rows.values[r * width..(r + 1) * width];
                    let scales = &rows.scales[r * blocks..(r + 1) * blocks];
                    let sums = dot4(values, scales, weights);
                    for (c, sum) in sums.iter().enumerate().take(channels.end - first) {
                        let j = first + c;
                        // SAFETY: r < n and j < out: inside y (n * out, asserted by the
                        // caller); each task writes its own channels [t*32, t*32+32) of every
                        // row, so no two tasks touch one element, and `y` outlives them
                        // (for_each returns after).
                        unsafe {
                            *y_ptr.get().add(r * out + j) += self.scales[j] * sum;
                        }
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

/// The portable `dot4`: per channel, each block's exact i32 sum times its scale, summed in f32.
fn portable_dot4(values: &[i8], scales: &[f32], weights: [&[i8]; 4]) -> [f32; 4] {
    weights.map(|w| {
        values
            .chunks_exact(BLOCK)
            .zip(w.chunks_exact(BLOCK))
            .zip(scales)
            .map(|((x, w), &scale)| dot_i8(x, w) as f32 * scale)
            .sum()
    })
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
        let rows = quantize_rows(x, n, inp, false);
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

    /// VNNI's quantization gives the portable one's numbers offset by 128, scales bit for bit,
    /// for partial blocks, all-zero blocks, NaN and infinity, ties and the extremes.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vnni_rows_are_the_portable_rows_offset() {
        if !super::super::x86::int8::available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        for (n, inp) in [(1, 1), (3, 17), (2, 32), (5, 45), (4, 96), (7, 385)] {
            let mut x: Vec<f32> = (0..n * inp)
                .map(|i| ((i * 7919 % 509) as f32 - 254.0) / 37.0)
                .collect();
            if n * inp > 100 {
                x[40] = f32::NAN;
                x[70] = f32::NEG_INFINITY;
                x[97..128].fill(0.0);
                // Exact halves after scaling: 127 * 0.5 / 127 and its negative.
                x[130] = 127.0;
                x[131] = 0.5;
                x[132] = -0.5;
            }
            for parallel in [false, true] {
                let want = quantize_rows(&x, n, inp, parallel);
                let got = super::super::x86::int8::quantize_rows_offset(&x, n, inp, parallel);
                let offset: Vec<i8> = want.values.iter().map(|v| v ^ i8::MIN).collect();
                assert_eq!(got.values, offset, "{n} x {inp}");
                // Bit for bit, NaN too (both write `f32::NAN`).
                let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.scales), bits(&want.scales), "{n} x {inp}");
            }
        }
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
            #[cfg(target_arch = "aarch64")]
            assert_eq!(
                matches!(chosen.weights, Int8Weights::DotProd(_)),
                super::super::aarch64::int8_dot::available()
            );
            let blocks = chosen.blocks;
            #[cfg(target_arch = "x86_64")]
            let whole_rows = matches!(&chosen.weights, Int8Weights::Avx2(_));
            #[cfg(not(target_arch = "x86_64"))]
            let whole_rows = false;
            // The AVX2 kernel quantizes whole rows: its own test (x86::int8_avx2).
            let mut layers = if whole_rows { vec![] } else { vec![chosen] };
            if layers
                .first()
                .is_none_or(|l| !matches!(l.weights, Int8Weights::Portable(_)))
            {
                // The portable kernel too, from the same quantized weights.
                let (q, scales) = quantize_weights(&w, out, inp);
                layers.push(Int8Linear {
                    out,
                    inp,
                    blocks,
                    scales,
                    weights: Int8Weights::Portable(q),
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

    /// The AMX tiles (from 16 rows, where the CPU has them) give the exact product of the rows
    /// in halves and the int8 weights, with the bias, the activation, a zero row (the bias) and
    /// a row holding a NaN (NaN, as in f32), over several tasks and chunks of steps.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tiles_compute_the_halves_product() {
        use super::super::x86::{amx, int8_tiles};
        if !amx::available() {
            eprintln!("no AMX tiles on this CPU: nothing to compare");
            return;
        }
        let step = int8_tiles::STEP_INPUTS;
        for &(n, inp, out) in &[
            (16, 64, 32),
            (33, 96, 31),
            (64, 1536, 384),
            (130, 1100, 70),
            (300, 2500, 40),
        ] {
            let (w, mut x, b) = layer_inputs(n, inp, out);
            x[7 * inp..8 * inp].fill(0.0);
            x[9 * inp + inp / 2] = f32::NAN;
            let layer = Int8Linear::quantize(&w, out, inp);
            assert!(layer.tiles(n));
            let mut q = vec![0i8; out * inp];
            let weight_scales: Vec<f32> = (0..out)
                .map(|j| quantize_into(&w[j * inp..][..inp], &mut q[j * inp..][..inp]))
                .collect();
            let steps = inp.div_ceil(step);
            let rows = int8_tiles::quantize_halves(&x, n, inp, steps, false);
            let half = |r: usize, k: usize, lo: usize| {
                let at = (r / 16 * steps + k / step) * 2 * 16 * step;
                rows.values[at + lo * 16 * step + r % 16 * step + k % step] as i64
            };
            let plain = layer.product(&x, n, &b, None, true);
            let activated = layer.product(&x, n, &b, Some(Activation::Gelu), true);
            for r in 0..n {
                for j in 0..out {
                    let dot: i64 = (0..inp)
                        .map(|k| (128 * half(r, k, 0) + half(r, k, 1)) * q[j * inp + k] as i64)
                        .sum();
                    let scales = rows.scales[r] as f64 * weight_scales[j] as f64;
                    let want = b[j] as f64 + scales * dot as f64;
                    let got = plain[r * out + j];
                    let mut want_activated = [want as f32];
                    activate(&mut want_activated, Activation::Gelu);
                    let (got_activated, want_activated) =
                        (activated[r * out + j], want_activated[0]);
                    if r == 9 {
                        assert!(got.is_nan() && got_activated.is_nan(), "n{n} [{r}, {j}]");
                        continue;
                    }
                    assert!(
                        (got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0)
                            && (got_activated - want_activated).abs()
                                <= 1e-4 * want_activated.abs().max(1.0),
                        "n{n} in{inp} out{out} [{r}, {j}]: {got} vs {want}, activated \
                         {got_activated} vs {want_activated}"
                    );
                }
            }
            // The halves hold each value within half a step of its row's scale.
            for r in (0..n).filter(|&r| r != 9) {
                for k in 0..inp {
                    let q = (128 * half(r, k, 0) + half(r, k, 1)) as f32;
                    let error = (x[r * inp + k] - rows.scales[r] * q).abs();
                    assert!(error <= 0.5001 * rows.scales[r], "[{r}, {k}]");
                }
            }
        }
    }

    /// Against the f32 product: within int8 rounding (about 1% of the output's scale here), on
    /// the block kernels (8 rows) and on the tiles where the CPU has them (64 rows).
    #[test]
    fn close_to_the_f32_product() {
        let (inp, out) = (384, 96);
        for n in [8, 64] {
            let (w, x, b) = layer_inputs(n, inp, out);
            let y = Int8Linear::quantize(&w, out, inp).product(&x, n, &b, None, false);
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
                "n{n}: {worst} against outputs up to {largest}"
            );
        }
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
