//! GGUF quantized weights multiplied in their own blocks, never dequantized into a matrix: Q4_0,
//! Q4_1, Q5_0, Q5_1 and Q8_0 (llama.cpp's 32-weight block types: SmolLM2's GGUF is Q4_1 with a
//! Q8_0 embedding table, and llama.cpp's k-quant files fall back to Q5_0 / Q5_1 / Q8_0 for rows
//! that are not a multiple of 256 wide). The k-quants go through candle's kernels
//! (`crate::models::quantized`).
//!
//! Every block holds 32 weights as a scale `d` (f16), for Q4_1 and Q5_1 a minimum `m` (f16), and
//! 32 small integers q: weight = d * q + m (Q4_0: q = nibble - 8, taken as d * nibble - 8d; Q5_0:
//! 5-bit q - 16 likewise, the fifth bits in a 32-bit word before the nibbles; Q8_0: q signed
//! bytes, m = 0).
//!
//! Two ways to multiply them, chosen at load (`QuantMatrix::new`):
//! - int8 activations (the default on x86 with AVX-512 VNNI or AVX2, and on Arm with the
//!   dot-product instructions): each activation block rounded to int8 with its own scale, as
//!   llama.cpp does, and multiplied in integers: by `x86::quant_int8` on the blocks repacked into
//!   panels of 16 rows (3.2-3.8x the tokens/s of f32 activations for one SmolLM2 Q4_1 stream, 4x
//!   for 16: benches/results/gguf*.md), or by `aarch64::quant_dot`'s `sdot` on the blocks as
//!   stored (checked under qemu; not yet timed on Graviton);
//! - f32 activations (`SERVER_QUANTIZED_ACTIVATIONS=f32`, or other CPUs): a product is the
//!   dequantized weights' product up to summation order: `Σ x·w = d · Σ x·q + m · Σ x`, with
//!   `Σ x` per block computed once per call, the integers widened to f32 in registers.
//!
//! Either way all activation rows (the decode steps of every running sequence) go through each
//! weight row while it is in L1, so a step reads the weights once.

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use super::blocks::Int8Activations;
use super::blocks::{Activations, ROWS};
pub use super::blocks::{BlockType, BLOCK};
use super::SharedPtr;

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 8;
/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// A [rows, cols] matrix of blocks: as GGUF stores it (row-major, `cols / 32` blocks a row),
/// multiplied on f32 activations; or, on x86 with AVX-512 VNNI or AVX2, repacked into
/// `x86::quant_int8`'s panels and multiplied on int8 activations.
pub struct QuantMatrix {
    kind: BlockType,
    rows: usize,
    cols: usize,
    layout: Layout,
}

enum Layout {
    Gguf(Vec<u8>),
    #[cfg(target_arch = "x86_64")]
    Int8(super::x86::quant_int8::Int8Blocks),
    /// The blocks as stored, multiplied on int8 activations with `sdot` (aarch64::quant_dot).
    #[cfg(target_arch = "aarch64")]
    GgufSdot(Vec<u8>),
}

impl QuantMatrix {
    /// `blocks`: the tensor's bytes; `cols` must be a multiple of 32. `int8_activations`: round
    /// the activations to int8 per block where the CPU has a kernel for that (AVX-512 VNNI, AVX2).
    pub fn new(
        kind: BlockType,
        blocks: Vec<u8>,
        rows: usize,
        cols: usize,
        int8_activations: bool,
    ) -> anyhow::Result<Self> {
        let matrix = Self::gguf(kind, blocks, rows, cols)?;
        #[cfg(target_arch = "x86_64")]
        if int8_activations && super::x86::quant_int8::available() {
            let Layout::Gguf(blocks) = &matrix.layout else {
                unreachable!("just made")
            };
            let panels = super::x86::quant_int8::Int8Blocks::pack(kind, blocks, rows, cols / BLOCK);
            return Ok(QuantMatrix {
                layout: Layout::Int8(panels),
                ..matrix
            });
        }
        #[cfg(target_arch = "aarch64")]
        if int8_activations && super::aarch64::int8_dot::available() {
            let Layout::Gguf(blocks) = matrix.layout else {
                unreachable!("just made")
            };
            return Ok(QuantMatrix {
                layout: Layout::GgufSdot(blocks),
                ..matrix
            });
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = int8_activations;
        Ok(matrix)
    }

    /// The blocks as stored, multiplied on f32 activations whatever the CPU.
    fn gguf(kind: BlockType, blocks: Vec<u8>, rows: usize, cols: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cols.is_multiple_of(BLOCK) && blocks.len() == rows * cols / BLOCK * kind.bytes(),
            "{kind:?} tensor [{rows}, {cols}] has {} bytes",
            blocks.len()
        );
        Ok(QuantMatrix {
            kind,
            rows,
            cols,
            layout: Layout::Gguf(blocks),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The kernel this matrix runs: for the start-up log and the benches.
    pub fn kernel_name(&self) -> &'static str {
        match &self.layout {
            Layout::Gguf(_) => "f32 activations",
            #[cfg(target_arch = "x86_64")]
            Layout::Int8(panels) => match panels.level() {
                super::x86::quant_int8::Level::Vnni => "int8 activations, AVX-512 VNNI",
                super::x86::quant_int8::Level::Avx2 => "int8 activations, AVX2",
            },
            #[cfg(target_arch = "aarch64")]
            Layout::GgufSdot(_) => "int8 activations, sdot",
        }
    }

    /// `x`: m rows of `cols` → m rows of `rows` (x Wᵀ).
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "quantized product input");
        let parallel =
            m * self.rows * self.cols >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1;
        match &self.layout {
            Layout::Gguf(blocks) => self.forward_f32(blocks, x, m, parallel),
            #[cfg(target_arch = "x86_64")]
            Layout::Int8(panels) => {
                let acts = Int8Activations::quantize(x, m, self.cols, parallel);
                let mut y = vec![0f32; m * self.rows];
                panels.forward(&acts, m, &mut y, parallel);
                y
            }
            #[cfg(target_arch = "aarch64")]
            Layout::GgufSdot(blocks) => {
                let acts = Int8Activations::quantize(x, m, self.cols, parallel);
                self.forward_rows(blocks, m, parallel, |row, r0, count, dots| {
                    // SAFETY: this layout is only made where the CPU has FEAT_DotProd
                    // (checked in `new`).
                    unsafe {
                        super::aarch64::quant_dot::dot_rows(self.kind, row, &acts, r0, count, dots)
                    }
                })
            }
        }
    }

    fn forward_f32(&self, blocks: &[u8], x: &[f32], m: usize, parallel: bool) -> Vec<f32> {
        let acts = Activations {
            x,
            cols: self.cols,
            sums: x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect(),
        };
        self.forward_rows(blocks, m, parallel, |row, r0, count, dots| {
            dot_rows(self.kind, row, &acts, r0, count, dots)
        })
    }

    /// The product of the blocks as stored with m activation rows, `dot(weight row, r0, count,
    /// dots)` giving a weight row's dot products with rows r0..r0 + count: weight rows shared
    /// out across threads, each read once for every activation row while it is in L1.
    fn forward_rows(
        &self,
        blocks: &[u8],
        m: usize,
        parallel: bool,
        dot: impl Fn(&[u8], usize, usize, &mut [f32; ROWS]) + Sync,
    ) -> Vec<f32> {
        let n = self.rows;
        let row_bytes = self.cols / BLOCK * self.kind.bytes();
        let mut y = vec![0f32; m * n];
        let out = SharedPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let mut dots = [0f32; ROWS];
            for j in t * ROWS_PER_TASK..n.min((t + 1) * ROWS_PER_TASK) {
                let row = &blocks[j * row_bytes..(j + 1) * row_bytes];
                for r0 in (0..m).step_by(ROWS) {
                    let count = ROWS.min(m - r0);
                    dot(row, r0, count, &mut dots);
                    for (r, &v) in dots[..count].iter().enumerate() {
                        // SAFETY: element (r0 + r, j) is inside y (r0 + r < m, j < n), and only
                        // the task that owns weight row j writes column j; y outlives the tasks
                        // (for_each returns after them).
                        unsafe { *out.get().add((r0 + r) * n + j) = v };
                    }
                }
            }
        };
        let tasks = n.div_ceil(ROWS_PER_TASK);
        if parallel {
            super::decode_parallel_for(tasks, task);
        } else {
            (0..tasks).for_each(task);
        }
        y
    }
}

/// Dot products of one weight row with activation rows r0..r0 + count (count <= ROWS).
fn dot_rows(
    kind: BlockType,
    row: &[u8],
    acts: &Activations,
    r0: usize,
    count: usize,
    dots: &mut [f32; ROWS],
) {
    #[cfg(target_arch = "x86_64")]
    if super::x86::quant::available() {
        // SAFETY: the CPU has the instructions (checked just above).
        unsafe { super::x86::quant::dot_rows(kind, row, acts, r0, count, dots) };
        return;
    }
    dot_rows_portable(kind, row, acts, r0, count, dots);
}

pub(super) fn dot_rows_portable(
    kind: BlockType,
    row: &[u8],
    acts: &Activations,
    r0: usize,
    count: usize,
    dots: &mut [f32; ROWS],
) {
    let nb = acts.cols / BLOCK;
    let mut q = [0f32; BLOCK];
    for dot in dots[..count].iter_mut() {
        *dot = 0.0;
    }
    for (b, block) in row.chunks_exact(kind.bytes()).enumerate() {
        let (d, m) = kind.scale_min(block);
        for (j, v) in q.iter_mut().enumerate() {
            *v = kind.quant(block, j);
        }
        for (r, dot) in dots[..count].iter_mut().enumerate() {
            let row = r0 + r;
            let x = &acts.x[row * acts.cols + b * BLOCK..row * acts.cols + (b + 1) * BLOCK];
            let s: f32 = q.iter().zip(x).map(|(q, x)| q * x).sum();
            *dot += d * s + m * acts.sums[row * nb + b];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocks::f16_to_f32;
    use super::*;

    fn f32_to_f16(x: f32) -> u16 {
        // Normal range only (the test values are).
        let bits = x.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        if x == 0.0 {
            return sign;
        }
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        sign | ((exp as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
    }

    /// Blocks of arbitrary (valid) contents of each type.
    fn blocks(kind: BlockType, rows: usize, cols: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..rows * cols / BLOCK {
            out.extend_from_slice(&f32_to_f16(0.01 + (b % 7) as f32 * 0.003).to_le_bytes());
            if matches!(kind, BlockType::Q4_1 | BlockType::Q5_1) {
                out.extend_from_slice(&f32_to_f16(-0.05 + (b % 5) as f32 * 0.02).to_le_bytes());
            }
            let n = kind.bytes() - out.len() % kind.bytes();
            out.extend((0..n).map(|i| ((b * 31 + i * 17) % 256) as u8));
        }
        out
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    const KINDS: [BlockType; 5] = [
        BlockType::Q4_0,
        BlockType::Q4_1,
        BlockType::Q5_0,
        BlockType::Q5_1,
        BlockType::Q8_0,
    ];
    /// (activation rows, weight rows, columns): partial panels and passes, several blocks.
    const SHAPES: [(usize, usize, usize); 5] = [
        (1, 5, 64),
        (3, 40, 576),
        (9, 17, 96),
        (16, 33, 128),
        (7, 64, 1536),
    ];

    /// The blocks' weights, dequantized (row-major).
    fn dequantized(kind: BlockType, bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(kind.bytes())
            .flat_map(|b| (0..BLOCK).map(move |j| kind.weight(b, j)))
            .collect()
    }

    fn inputs(m: usize, cols: usize) -> Vec<f32> {
        (0..m * cols)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect()
    }

    #[test]
    fn f32_activation_products_match_the_dequantized_weights() {
        for kind in KINDS {
            for &(m, rows, cols) in &SHAPES {
                let bytes = blocks(kind, rows, cols);
                let w = dequantized(kind, &bytes);
                let x = inputs(m, cols);
                let matrix = QuantMatrix::gguf(kind, bytes.clone(), rows, cols).unwrap();
                let y = matrix.forward(&x, m);
                let acts = Activations {
                    x: &x,
                    cols,
                    sums: x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect(),
                };
                let row_bytes = cols / BLOCK * kind.bytes();
                for r in 0..m {
                    for j in 0..rows {
                        let want: f32 = (0..cols).map(|k| x[r * cols + k] * w[j * cols + k]).sum();
                        let got = y[r * rows + j];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{kind:?} m{m} rows{rows} cols{cols} [{r},{j}]: {got} vs {want}"
                        );
                        let row = &bytes[j * row_bytes..(j + 1) * row_bytes];
                        let mut dots = [0f32; ROWS];
                        dot_rows_portable(kind, row, &acts, r, 1, &mut dots);
                        assert!((dots[0] - want).abs() <= 1e-4 * want.abs().max(1.0));
                    }
                }
            }
        }
    }

    /// The int8 panels compute the product of the weights with the activations rounded to int8
    /// per block of 32 (checked against that product in f64), which differs from the exact
    /// product by at most Σ |w| x half a rounding step: the VNNI kernel where the CPU has it,
    /// and the AVX2 one on every x86 CPU with AVX2.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn int8_activation_products_match_the_rounded_product() {
        use super::super::x86::quant_int8::{level, Level};
        let Some(best) = level() else {
            eprintln!("skipped: no AVX2 on this CPU");
            return;
        };
        let mut kernels = vec![false];
        if best == Level::Vnni {
            kernels.push(true);
        }
        for avx2 in kernels {
            check_int8_products(|mut matrix| {
                if let (true, Layout::Int8(panels)) = (avx2, &mut matrix.layout) {
                    panels.use_avx2();
                }
                matrix
            });
        }
    }

    /// The same for Arm's `sdot` kernel where the CPU has it (CI runs this under qemu).
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn sdot_products_match_the_rounded_product() {
        if !super::super::aarch64::int8_dot::available() {
            eprintln!("skipped: no FEAT_DotProd on this CPU");
            return;
        }
        check_int8_products(|matrix| matrix);
    }

    /// `adjust` picks the kernel of each matrix made with int8 activations.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn check_int8_products(adjust: impl Fn(QuantMatrix) -> QuantMatrix) {
        use super::super::int8::quantize_rows;
        for kind in KINDS {
            for &(m, rows, cols) in &SHAPES {
                let bytes = blocks(kind, rows, cols);
                let w = dequantized(kind, &bytes);
                let x = inputs(m, cols);
                let matrix = adjust(QuantMatrix::new(kind, bytes, rows, cols, true).unwrap());
                assert!(matrix.kernel_name().starts_with("int8 activations"));
                let y = matrix.forward(&x, m);
                let acts = quantize_rows(&x, m, cols, false);
                for r in 0..m {
                    let scale: f64 = (0..cols)
                        .map(|k| (x[r * cols + k] as f64).abs())
                        .sum::<f64>()
                        * 0.02;
                    for j in 0..rows {
                        let rounded: f64 = (0..cols)
                            .map(|k| {
                                let d = acts.scales[r * cols / BLOCK + k / BLOCK] as f64;
                                d * acts.values[r * cols + k] as f64 * w[j * cols + k] as f64
                            })
                            .sum();
                        let exact: f64 = (0..cols)
                            .map(|k| x[r * cols + k] as f64 * w[j * cols + k] as f64)
                            .sum();
                        let bound: f64 = (0..cols)
                            .map(|k| {
                                let d = acts.scales[r * cols / BLOCK + k / BLOCK] as f64;
                                0.5 * d * (w[j * cols + k] as f64).abs()
                            })
                            .sum();
                        let got = y[r * rows + j] as f64;
                        assert!(
                            (got - rounded).abs() <= 1e-5 * rounded.abs().max(scale),
                            "{} {kind:?} m{m} rows{rows} cols{cols} [{r},{j}]: {got} vs {rounded}",
                            matrix.kernel_name()
                        );
                        assert!((got - exact).abs() <= 1.001 * bound + 1e-5 * scale);
                    }
                }
            }
        }
    }
}
