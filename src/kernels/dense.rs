//! Dense layers `y = x W^T + b` on host slices, the bulk of an encoder's work.
//!
//! A plain GEMM call on these shapes (a few tokens x hundreds of features) spends its time on
//! strided weight reads: each step of the inner product touches a new page of the weight matrix.
//! So the weights are packed once at load time into column-major panels of `PANEL` output rows;
//! each panel is one small GEMM whose operands stream sequentially, the bias is fused (the output
//! starts as the bias, then accumulates), and panels are shared out across threads when the
//! product is large enough to pay for it. The GEMMs are the `gemm` crate's, which selects its
//! microkernels for the CPU at run time (AVX-512 / AVX2 + FMA on x86-64, NEON on aarch64).
//! On x86-64 with AVX512-BF16 a layer can also run with its weights in bfloat16 (`x86::bf16`).

use gemm::Parallelism;
use rayon::prelude::*;

use super::int8::Int8Linear;
#[cfg(target_arch = "x86_64")]
use super::x86::bf16::Bf16Panels;
use super::{activate, bias_rows, for_row_blocks, Activation, SharedPtr};

/// Output rows per packed panel: 4 microkernel strips of 16; a panel of a 384-wide input is
/// 96 KiB, comfortably inside L2.
const PANEL: usize = 64;
/// Below this many multiply-adds a product runs on one thread (thread hand-off costs more).
const PARALLEL_MIN_MACS: usize = 1 << 21;
/// Rows per task of [`PackedLinear::forward_rows`]: enough for the microkernels' full strips.
const ROW_BLOCK: usize = 128;

pub struct PackedLinear {
    out: usize,
    inp: usize,
    weights: PackedWeights,
    bias: Vec<f32>,
}

enum PackedWeights {
    /// Panel p holds output rows [p*PANEL, p*PANEL + width) as [in][width], column-major.
    F32(Vec<f32>),
    /// The weights rounded to bfloat16 (x86/bf16.rs; only where the CPU has AVX512-BF16).
    #[cfg(target_arch = "x86_64")]
    Bf16(Bf16Panels),
    /// int8 weights and activations (`kernels::int8`, `SERVER_QUANTIZE=int8`).
    Int8(Int8Linear),
}

impl PackedLinear {
    pub fn pack(weight: &[f32], bias: &[f32], out: usize, inp: usize) -> Self {
        assert_eq!(weight.len(), out * inp);
        assert_eq!(bias.len(), out);
        let mut panels = Vec::with_capacity(out * inp);
        for start in (0..out).step_by(PANEL) {
            let width = PANEL.min(out - start);
            for k in 0..inp {
                for r in start..start + width {
                    panels.push(weight[r * inp + k]);
                }
            }
        }
        PackedLinear {
            out,
            inp,
            weights: PackedWeights::F32(panels),
            bias: bias.to_vec(),
        }
    }

    /// Input features per row.
    pub fn inputs(&self) -> usize {
        self.inp
    }

    /// Output features per row.
    pub fn outputs(&self) -> usize {
        self.out
    }

    /// The same layer with its weights rounded to bfloat16 (None: already, or this CPU has no
    /// AVX512-BF16, which includes every non-x86 CPU, or its bf16 kernels are slower than the f32
    /// ones: `kernels::bf16_pays`).
    pub fn to_bf16(&self) -> Option<PackedLinear> {
        if !super::bf16_pays() {
            return None;
        }
        self.bf16_copy()
    }

    /// `to_bf16` without asking whether it pays (only whether the CPU can).
    fn bf16_copy(&self) -> Option<PackedLinear> {
        #[cfg(target_arch = "x86_64")]
        {
            if !super::bf16_available() {
                return None;
            }
            let weight = self.f32_weights()?;
            Some(PackedLinear {
                out: self.out,
                inp: self.inp,
                weights: PackedWeights::Bf16(Bf16Panels::pack(&weight, self.out, self.inp)),
                bias: self.bias.clone(),
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// The same layer with int8 weights (None: not an f32 layer). Every CPU can run it.
    pub fn to_int8(&self) -> Option<PackedLinear> {
        let weight = self.f32_weights()?;
        Some(PackedLinear {
            out: self.out,
            inp: self.inp,
            weights: PackedWeights::Int8(Int8Linear::quantize(&weight, self.out, self.inp)),
            bias: self.bias.clone(),
        })
    }

    /// Which int8 kernel the layer runs, if it is an int8 layer (for the start-up log).
    pub fn int8_kernel(&self) -> Option<&'static str> {
        match &self.weights {
            PackedWeights::Int8(layer) => Some(layer.kernel_name()),
            _ => None,
        }
    }

    /// Which bf16 kernel the layer runs, if it is a bf16 layer (for the start-up log).
    pub fn bf16_kernel(&self) -> Option<&'static str> {
        match &self.weights {
            #[cfg(target_arch = "x86_64")]
            PackedWeights::Bf16(layer) => Some(layer.kernel_name()),
            _ => None,
        }
    }

    /// The f32 weights unpacked, [out][in] row-major (None: the layer is not f32).
    fn f32_weights(&self) -> Option<Vec<f32>> {
        let PackedWeights::F32(panels) = &self.weights else {
            return None;
        };
        let (out, inp) = (self.out, self.inp);
        let mut weight = vec![0f32; out * inp];
        for start in (0..out).step_by(PANEL) {
            let width = PANEL.min(out - start);
            let panel = &panels[start * inp..(start + width) * inp];
            for k in 0..inp {
                for (i, &w) in panel[k * width..(k + 1) * width].iter().enumerate() {
                    weight[(start + i) * inp + k] = w;
                }
            }
        }
        Some(weight)
    }

    /// `x`: n rows of `in` features → n rows of `out` features.
    pub fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.forward_activated(x, n, None)
    }

    /// `forward`, then `activation` on every output: fused into the product where the kernel
    /// can (bf16 and int8 on the AMX tiles), else one more pass.
    pub fn forward_activated(
        &self,
        x: &[f32],
        n: usize,
        activation: Option<Activation>,
    ) -> Vec<f32> {
        // int8 multiply-adds are cheaper than f32 ones: the hand-off pays later.
        let min_macs = match &self.weights {
            PackedWeights::Int8(layer) => layer.times_cheaper_than_f32() * PARALLEL_MIN_MACS,
            _ => PARALLEL_MIN_MACS,
        };
        let parallel = n * self.out * self.inp >= min_macs && rayon::current_num_threads() > 1;
        self.forward_on(x, n, activation, parallel)
    }

    /// `forward` into `y` (n rows of `out`, overwritten), on the calling thread.
    pub fn forward_into(&self, x: &[f32], n: usize, y: &mut [f32]) {
        assert_eq!(y.len(), n * self.out, "output rows");
        match &self.weights {
            PackedWeights::F32(panels) => {
                for row in y.chunks_exact_mut(self.out) {
                    row.copy_from_slice(&self.bias);
                }
                accumulate_f32(panels, self.out, self.inp, x, self.inp, n, y, false);
            }
            _ => y.copy_from_slice(&self.forward_on(x, n, None, false)),
        }
    }

    /// `forward_into` on rows `stride` values apart in `x` (they may overlap: a strided 1-D
    /// convolution's windows read in place, `kernels::conv1d`).
    pub fn forward_strided_into(&self, x: &[f32], n: usize, stride: usize, y: &mut [f32]) {
        assert_eq!(y.len(), n * self.out, "output rows");
        if n == 0 {
            return;
        }
        assert!(x.len() >= (n - 1) * stride + self.inp, "strided input rows");
        match &self.weights {
            PackedWeights::F32(panels) => {
                for row in y.chunks_exact_mut(self.out) {
                    row.copy_from_slice(&self.bias);
                }
                accumulate_f32(panels, self.out, self.inp, x, stride, n, y, false);
            }
            _ => {
                // Row by row (a convolution's windows): a copy each, not an iterator per value.
                let mut rows = Vec::with_capacity(n * self.inp);
                for t in 0..n {
                    rows.extend_from_slice(&x[t * stride..t * stride + self.inp]);
                }
                self.forward_into(&rows, n, y);
            }
        }
    }

    /// `forward` for many rows (the pixels of a feature map): blocks of rows shared out across
    /// threads, each through every panel. A layer of a few panels (a UNet's 96 or 320 channels)
    /// would otherwise leave most threads idle.
    pub fn forward_rows(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.forward_rows_activated(x, n, None)
    }

    /// `forward_rows`, then `activation` on each block of rows while it is in cache.
    pub fn forward_rows_activated(
        &self,
        x: &[f32],
        n: usize,
        activation: Option<Activation>,
    ) -> Vec<f32> {
        assert_eq!(x.len(), n * self.inp, "input rows");
        let mut y = vec![0f32; n * self.out];
        let parallel = n * self.out * self.inp >= PARALLEL_MIN_MACS;
        for_row_blocks(&mut y, self.out, ROW_BLOCK, parallel, |first, y| {
            let rows = y.len() / self.out;
            self.forward_into(&x[first * self.inp..][..rows * self.inp], rows, y);
            if let Some(activation) = activation {
                activate(y, activation);
            }
        });
        y
    }

    /// `forward` on the calling thread alone, or shared out across rayon's (`parallel`).
    fn forward_on(
        &self,
        x: &[f32],
        n: usize,
        activation: Option<Activation>,
        parallel: bool,
    ) -> Vec<f32> {
        match &self.weights {
            PackedWeights::F32(panels) => {
                let mut y = bias_rows(&self.bias, n);
                accumulate_f32(panels, self.out, self.inp, x, self.inp, n, &mut y, parallel);
                if let Some(activation) = activation {
                    activate(&mut y, activation);
                }
                y
            }
            #[cfg(target_arch = "x86_64")]
            PackedWeights::Bf16(bf16) => bf16.product(x, n, &self.bias, activation, parallel),
            PackedWeights::Int8(int8) => int8.product(x, n, &self.bias, activation, parallel),
        }
    }
}

/// Seconds for one forward of a 384 -> 1152 layer on 96 rows (a small encoder's QKV on a batch),
/// in f32 and in bf16 (~40 ms in all); None where bf16 cannot run.
pub(super) fn time_f32_against_bf16() -> Option<(f64, f64)> {
    let (inp, out, n) = (384, 1152, 96);
    let weight: Vec<f32> = (0..out * inp)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
        .collect();
    let f32_layer = PackedLinear::pack(&weight, &vec![0.0; out], out, inp);
    let bf16_layer = f32_layer.bf16_copy()?;
    let x: Vec<f32> = (0..n * inp).map(|i| (i % 7) as f32 * 0.1).collect();
    // On this thread only (no hand-offs to time), the two kinds interleaved so that both see the
    // same load (the server is loading its model meanwhile), the best of each after a warm-up.
    let time = |layer: &PackedLinear| {
        let started = std::time::Instant::now();
        std::hint::black_box(layer.forward_on(&x, n, None, false));
        started.elapsed().as_secs_f64()
    };
    let (mut f32_best, mut bf16_best) = (f64::INFINITY, f64::INFINITY);
    for round in 0..12 {
        let (a, b) = (time(&f32_layer), time(&bf16_layer));
        if round >= 2 {
            f32_best = f32_best.min(a);
            bf16_best = bf16_best.min(b);
        }
    }
    Some((f32_best, bf16_best))
}

/// `y` (n rows of `out`, holding the bias) += `x` (n rows of `inp`, each `x_stride` after the
/// one before) · Wᵀ, one GEMM per panel.
#[allow(clippy::too_many_arguments)]
fn accumulate_f32(
    panels: &[f32],
    out: usize,
    inp: usize,
    x: &[f32],
    x_stride: usize,
    n: usize,
    y: &mut [f32],
    parallel: bool,
) {
    assert_eq!(panels.len(), out * inp);
    assert!(n == 0 || x.len() >= (n - 1) * x_stride + inp, "input rows");
    assert_eq!(y.len(), n * out);
    let y_ptr = SharedPtr(y.as_mut_ptr());
    let panel = |p: usize| {
        let start = p * PANEL;
        let width = PANEL.min(out - start);
        let lhs = &panels[start * inp..(start + width) * inp];
        // Computes y^T[start..start+width, 0..n] += panel · x^T, written through y's strides.
        // SAFETY: gemm reads `lhs` as width x inp (column stride width: exactly its
        // width * inp elements) and `x` as inp x n (column stride x_stride: its last element
        // read is (n - 1) * x_stride + inp - 1, inside x as asserted), and writes element (i, t) at y[start + i + t * out] for i < width, t < n:
        // inside y (start + width <= out; y has n * out elements, asserted). Panels write
        // disjoint feature ranges [start, start + width) of each row, so the tasks that run this
        // in parallel never touch the same element, and `y` outlives them (for_each returns after).
        unsafe {
            gemm::gemm(
                width,
                n,
                inp,
                y_ptr.get().add(start),
                out as isize, // dst column (token) stride
                1,            // dst row (feature) stride
                true,
                lhs.as_ptr(),
                width as isize, // lhs column (k) stride
                1,
                x.as_ptr(),
                x_stride as isize, // rhs column (token) stride
                1,                 // rhs row (k) stride
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    let panels = out.div_ceil(PANEL);
    if parallel {
        (0..panels).into_par_iter().for_each(panel);
    } else {
        (0..panels).for_each(panel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_matches_naive_for_odd_shapes() {
        for &(n, inp, out) in &[(1, 3, 5), (6, 384, 1152), (7, 33, 130), (96, 64, 200)] {
            let w: Vec<f32> = (0..out * inp)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..out).map(|i| i as f32 / 10.0).collect();
            let x: Vec<f32> = (0..n * inp)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let y = PackedLinear::pack(&w, &b, out, inp).forward(&x, n);
            for t in 0..n {
                for o in 0..out {
                    let want: f32 = b[o]
                        + (0..inp)
                            .map(|k| x[t * inp + k] * w[o * inp + k])
                            .sum::<f32>();
                    let got = y[t * out + o];
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "n{n} in{inp} out{out} [{t},{o}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
