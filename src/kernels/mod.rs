//! The CPU hot loops of the fused path, on plain f32 slices: packed dense layers, attention,
//! LayerNorm, activations, residual adds and softmax. Models (`crate::models`) call only this
//! module's public functions; which code runs for the processor is decided here, at run time.
//!
//! - `dense`: [`PackedLinear`], weights packed once into GEMM panels. In f32 the panels go through
//!   the `gemm` crate, which picks its own microkernels at run time (AVX-512 or AVX2 + FMA on
//!   x86-64, NEON on aarch64). In bfloat16 on x86-64 CPUs with AVX512-BF16 (`x86::bf16`, found
//!   with `is_x86_feature_detected!`; on the AMX tiles, `x86::amx`, where the CPU has them);
//!   elsewhere [`PackedLinear::to_bf16`] declines and layers
//!   stay in f32.
//! - `int8`: dense layers with int8 weights (`SERVER_QUANTIZE=int8`): AMX tiles (`x86::amx`)
//!   for products of 16 rows or more and AVX-512 VNNI (`x86::int8`) where the CPU has them,
//!   AVX2 (`x86::int8_avx2`, activations in 16 bits), else portable loops the compiler
//!   vectorizes.
//! - `attention`: strided GEMMs (long sequences) or direct loops (short ones).
//! - `conv`: convolutions (im2col strips on the packed panels) and group normalisation over
//!   channels-last feature maps, for the diffusion networks; `conv1d`: 1-D convolutions over
//!   channels-last sequences (Wav2Vec2's feature encoder and positional convolution);
//!   `max_pool` (ResNet's stem).
//! - `interpolate`: torch's bicubic resize of position tables (DINOv2, YOLOS).
//! - `portable`: element-wise loops written for the compiler's vectorizer, the same on every
//!   target; on x86-64 CPUs with AVX-512 the activations and softmax compiled for it too
//!   (`x86::wide`).
//! - `paged`: decode attention over a paged key/value cache, read in place through block tables.
//! - `quant`: GGUF Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights multiplied in their blocks: on int8
//!   activations with AVX-512 VNNI or AVX2 (`x86::quant_int8`, panels repacked at load), else on f32
//!   ones (AVX-512 or AVX2 in `x86::quant`, portable loops elsewhere); candle's `QMatMul` runs
//!   the k-quants.
//! - `x86`: intrinsics, compiled on x86-64 only, each behind a run-time feature check.
//!
//! Every `unsafe` block in here says why it is sound (`// SAFETY:`); the lints below keep it so.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod attention;
mod attention_block;
mod biased_attention;
mod blocks;
mod conv;
mod conv1d;
mod dense;
mod depthwise;
mod int8;
mod interpolate;
pub mod paged;
mod portable;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use attention::{attention, attention_rows, HeadRows};
pub use biased_attention::{attention_with_bias, ScoreBias};
pub use conv::{in_row_blocks, max_pool, FeatureMaps, GroupNorm, PackedConv2d};
pub use conv1d::PackedConv1d;
pub use dense::PackedLinear;
pub use depthwise::DepthwiseConv2d;
pub use interpolate::bicubic;
pub use portable::{add, dot, erf, exp, layer_norm, log_softmax, softmax, Activation};

/// [`portable::activate`], in 16 lanes where the CPU has AVX-512 (`x86::wide`).
pub fn activate(x: &mut [f32], activation: Activation) {
    #[cfg(target_arch = "x86_64")]
    if x86::wide::available() {
        // SAFETY: the CPU has the AVX-512 subset the frame enables (checked).
        return unsafe { x86::wide::activate(x, activation) };
    }
    portable::activate(x, activation)
}

/// [`portable::softmax_in_place`], in 16 lanes where the CPU has AVX-512 (`x86::wide`).
pub fn softmax_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::wide::available() {
        // SAFETY: the CPU has the AVX-512 subset the frame enables (checked).
        return unsafe { x86::wide::softmax_in_place(row) };
    }
    portable::softmax_in_place(row)
}

/// Whether dense layers can run in bfloat16 on this CPU: x86-64 with AVX512-F and AVX512-BF16
/// (checked once). Always false on other architectures.
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::bf16::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the bfloat16 dense kernels are worth running here: available, and measured faster
/// than the f32 ones on this CPU (once, at first use: ~10 ms). `vdpbf16ps` does twice the
/// multiply-adds of an f32 FMA per instruction, but not per cycle on every CPU: on AMD Zen 4 our
/// bf16 layers ran at ~1.8x the f32 ones, on the Intel Xeon (AVX512-BF16, no AMX) of our CI
/// machines at 0.5-0.7x, on a Xeon with AMX tiles (`x86::amx`) at 4.3x.
/// `SAGEMAKER_HF_BF16_KERNELS=1` skips the measurement and uses them
/// wherever available (the tests of the bf16 path).
pub fn bf16_pays() -> bool {
    static PAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PAYS.get_or_init(|| {
        if !bf16_available() {
            return false;
        }
        if std::env::var("SAGEMAKER_HF_BF16_KERNELS").is_ok_and(|v| v == "1" || v == "true") {
            return true;
        }
        let Some((f32_seconds, bf16_seconds)) = dense::time_f32_against_bf16() else {
            return false;
        };
        let pays = bf16_seconds < 0.9 * f32_seconds;
        tracing::info!(
            "bf16 dense kernels: {:.0} us against {:.0} us in f32 for one layer: {}",
            bf16_seconds * 1e6,
            f32_seconds * 1e6,
            if pays {
                "used"
            } else {
                "not used (slower on this CPU)"
            }
        );
        pays
    })
}

/// `SAGEMAKER_HF_GENERIC_KERNELS=1` keeps every layer on the device-generic candle path even on
/// CPU: the path GPUs take, so that its results can be checked against the goldens on any machine.
pub fn generic_kernels_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        std::env::var("SAGEMAKER_HF_GENERIC_KERNELS").is_ok_and(|v| v == "1" || v == "true")
    })
}

/// `SAGEMAKER_HF_INT8_TILES=1` runs int8 products of any number of rows on the AMX tiles (where
/// the CPU has them), not only those of 32 rows or more: so that one request at a time, as the
/// parity tests send them, exercises the tiles' quantization.
pub fn int8_tiles_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        std::env::var("SAGEMAKER_HF_INT8_TILES").is_ok_and(|v| v == "1" || v == "true")
    })
}

/// Runs `task(0..tasks)` across candle's barrier pool: the calling thread and the pool's
/// workers, which spin briefly between calls (llama.cpp's way) where rayon's park and wake. For
/// the many small products and attention calls of a decoding step: candle's own element-wise
/// ops run on the same pool between them, so its workers are awake, and two pools do not fight
/// over the cores (SmolLM2 Q4_1, one stream on 2 cores: rayon's second thread added 7% over
/// one thread; on this pool the stream ran 1.9x as fast as on rayon's two,
/// `benches/gguf_vs_llama_cpp.py`). A call from inside a task runs
/// inline (the pool is not re-entrant); tasks must not run candle tensor ops (their pool calls
/// would wait for the lock this call holds). Encoders stay on rayon: moving their dense layers
/// and attention here lost 14-18% of the MiniLM classifier's requests/s at 64 clients (int8 and
/// f32, 2026-12-03: larger products, and two model workers whose calls the pool serializes).
pub fn decode_parallel_for(tasks: usize, task: impl Fn(usize) + Sync) {
    thread_local! {
        static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if tasks <= 1 || INSIDE.with(|inside| inside.get()) {
        (0..tasks).for_each(task);
        return;
    }
    candle_core::utils::barrier_pool().execute_chunked(tasks, |range| {
        let outer = INSIDE.with(|inside| inside.replace(true));
        range.for_each(&task);
        INSIDE.with(|inside| inside.set(outer));
    });
}

/// Fewest activation values quantized across threads rather than on the calling one (~0.5 ns
/// a value: worth a thread hand-off only for many rows).
const PARALLEL_QUANTIZE_MIN_VALUES: usize = 1 << 16;

/// Inputs per activation scale of the int8 kernels (`int8`, `x86::int8`).
const INT8_BLOCK: usize = 32;

/// Activation rows quantized for one int8 product: `values` holds n rows of `blocks * 32`
/// values (zero-padded), `scales` n rows of one scale per block.
struct QuantizedRows {
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl QuantizedRows {
    /// The n rows of `x` (`inp` wide), each quantized by `row(inputs, values, scales)` into its
    /// `inp.div_ceil(32) * 32` values and one scale per block of 32; the rows shared out across
    /// rayon's threads (`parallel`).
    fn of_rows(
        x: &[f32],
        n: usize,
        inp: usize,
        parallel: bool,
        row: impl Fn(&[f32], &mut [i8], &mut [f32]) + Sync + Send,
    ) -> QuantizedRows {
        use rayon::prelude::*;
        assert_eq!(x.len(), n * inp, "activation rows");
        let blocks = inp.div_ceil(INT8_BLOCK);
        let width = blocks * INT8_BLOCK;
        let mut values = vec![0i8; n * width];
        let mut scales = vec![0f32; n * blocks];
        if inp > 0 {
            let row =
                |((x, values), scales): ((&[f32], &mut [i8]), &mut [f32])| row(x, values, scales);
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
        }
        QuantizedRows { values, scales }
    }
}

/// The largest magnitude of an activation quantized to 16 bits by the int8 kernels that take a
/// scale per row (the AMX tiles' halves, `x86::int8_tiles`, and AVX2, `x86::int8_avx2`):
/// 127 · 128, so that each value splits into two int8 halves.
#[cfg(target_arch = "x86_64")]
const ROW_Q_LARGEST: f32 = 127.0 * 128.0;

/// A row's scale for the 16-bit quantization (`row[k] ≈ scale · q[k]`, |q| <= [`ROW_Q_LARGEST`])
/// and the factor taking its values to q; no factor where the row is all zeros (scale 0: every
/// q stays 0) or holds a NaN or an infinity (scale NaN: the row's outputs are NaN, as in f32).
/// Inlined, for the lanes of its caller's target features.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn row_q_scale(row: &[f32]) -> (f32, Option<f32>) {
    let largest = largest_magnitude(row);
    if largest == 0.0 || largest.is_nan() {
        return (largest, None);
    }
    (largest / ROW_Q_LARGEST, Some(ROW_Q_LARGEST / largest))
}

/// The largest magnitude in `values` (0 for none), or NaN if any is a NaN or an infinity (so that
/// a quantized row's outputs are NaN, as in f32). Written lane by lane so that the compiler
/// vectorizes it (inlined, for the lanes of its caller's target features).
#[inline(always)]
fn largest_magnitude(values: &[f32]) -> f32 {
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
    if !(sums.iter().sum::<f32>() + tail.iter().sum::<f32>()).is_finite() {
        return f32::NAN;
    }
    largest
        .iter()
        .chain(tail)
        .fold(0f32, |m, &v| m.max(v.abs()))
}

/// `v` rounded to the nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves
/// the integer in the sum's mantissa (the FPU rounds the addition to even). Integer arithmetic
/// on the bits, unlike a float-to-int `as` (saturating, NaN-checked, scalar), vectorizes.
#[inline(always)]
fn round_to_integer(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// n rows of `bias`: the output a dense layer's kernels accumulate into.
fn bias_rows(bias: &[f32], n: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(n * bias.len());
    for _ in 0..n {
        y.extend_from_slice(bias);
    }
    y
}

/// `f(first_row, rows)` on consecutive blocks of `rows_per_block` whole rows (`width` values
/// each) of `x`: shared out across rayon's threads when `parallel`, else in order here. The one
/// way the kernels split a tall output by rows (dense products of many rows, convolution
/// strips, element-wise passes over feature maps).
fn for_row_blocks(
    x: &mut [f32],
    width: usize,
    rows_per_block: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    use rayon::prelude::*;
    let rows_per_block = rows_per_block.max(1);
    let block = rows_per_block * width.max(1);
    if parallel && rayon::current_num_threads() > 1 {
        x.par_chunks_mut(block)
            .enumerate()
            .for_each(|(i, rows)| f(i * rows_per_block, rows));
    } else {
        x.chunks_mut(block)
            .enumerate()
            .for_each(|(i, rows)| f(i * rows_per_block, rows));
    }
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);

// SAFETY: the pointer is only an address; every task that writes through it writes a part of
// the buffer no other task reads or writes (each use says which), and the buffer outlives the
// tasks (they run inside the owning function's scope: rayon's `for_each` returns after them).
unsafe impl Send for SharedPtr {}
// SAFETY: as for `Send`: shared references only copy the address out (`get`).
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}
