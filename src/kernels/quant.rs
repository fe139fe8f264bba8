//! GGUF quantized weights multiplied in their own blocks, never dequantized into a matrix: Q4_0,
//! Q4_1, Q5_0, Q5_1 and Q8_0 (llama.cpp's 32-weight block types: SmolLM2's GGUF is Q4_1 with a
//! Q8_0 embedding table, and llama.cpp's k-quant files fall back to Q5_0 / Q5_1 / Q8_0 for rows
//! that are not a multiple of 256 wide). The k-quants go through candle's kernels
//! (`crate::models::quantized`).
//!
//! Every block holds 32 weights as a scale `d` (f16), for Q4_1 and Q5_1 a minimum `m` (f16), and
//! 32 small integers q: weight = d * q + m (Q4_0: q = nibble - 8, taken as d * nibble - 8d; Q5_0:
//! 5-bit q - 16 likewise, the fifth bits in a 32-bit word before the nibbles; Q8_0: q signed
//! bytes, m = 0). The activations stay f32 (unlike llama.cpp, which rounds them to
//! int8), so a product is the dequantized weights' product up to summation order:
//! `Σ x·w = d · Σ x·q + m · Σ x`, with `Σ x` per block computed once per call. The integers are
//! widened to f32 in registers. All activation rows (the decode steps of every running
//! sequence) go through each weight row while it is in L1, so a step reads the weights once.

use rayon::prelude::*;

use super::blocks::{Activations, ROWS};
pub use super::blocks::{BlockType, BLOCK};
use super::SharedPtr;

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 8;
/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// A [rows, cols] matrix of blocks, as GGUF stores it (row-major, `cols / 32` blocks a row).
pub struct QuantMatrix {
    kind: BlockType,
    rows: usize,
    cols: usize,
    blocks: Vec<u8>,
}

impl QuantMatrix {
    /// `blocks`: the tensor's bytes; `cols` must be a multiple of 32.
    pub fn new(kind: BlockType, blocks: Vec<u8>, rows: usize, cols: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cols.is_multiple_of(BLOCK) && blocks.len() == rows * cols / BLOCK * kind.bytes(),
            "{kind:?} tensor [{rows}, {cols}] has {} bytes",
            blocks.len()
        );
        Ok(QuantMatrix {
            kind,
            rows,
            cols,
            blocks,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row(&self, j: usize) -> &[u8] {
        let len = self.cols / BLOCK * self.kind.bytes();
        &self.blocks[j * len..(j + 1) * len]
    }

    /// `x`: m rows of `cols` → m rows of `rows` (x Wᵀ).
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "quantized product input");
        let acts = Activations {
            x,
            cols: self.cols,
            sums: x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect(),
        };
        let n = self.rows;
        let mut y = vec![0f32; m * n];
        let out = SharedPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let mut dots = [0f32; ROWS];
            for j in t * ROWS_PER_TASK..n.min((t + 1) * ROWS_PER_TASK) {
                let row = self.row(j);
                for r0 in (0..m).step_by(ROWS) {
                    let count = ROWS.min(m - r0);
                    dot_rows(self.kind, row, &acts, r0, count, &mut dots);
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
        if m * n * self.cols >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
            (0..tasks).into_par_iter().for_each(task);
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

    #[test]
    fn products_match_the_dequantized_weights() {
        for kind in [
            BlockType::Q4_0,
            BlockType::Q4_1,
            BlockType::Q5_0,
            BlockType::Q5_1,
            BlockType::Q8_0,
        ] {
            for &(m, rows, cols) in &[(1, 5, 64), (3, 40, 576), (9, 17, 96), (16, 33, 128)] {
                let bytes = blocks(kind, rows, cols);
                let w: Vec<f32> = bytes
                    .chunks_exact(kind.bytes())
                    .flat_map(|b| (0..BLOCK).map(move |j| kind.weight(b, j)))
                    .collect();
                let x: Vec<f32> = (0..m * cols)
                    .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                    .collect();
                let matrix = QuantMatrix::new(kind, bytes, rows, cols).unwrap();
                let y = matrix.forward(&x, m);
                let acts = Activations {
                    x: &x,
                    cols,
                    sums: x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect(),
                };
                for r in 0..m {
                    for j in 0..rows {
                        let want: f32 = (0..cols).map(|k| x[r * cols + k] * w[j * cols + k]).sum();
                        let got = y[r * rows + j];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{kind:?} m{m} rows{rows} cols{cols} [{r},{j}]: {got} vs {want}"
                        );
                        let mut dots = [0f32; ROWS];
                        dot_rows_portable(kind, matrix.row(j), &acts, r, 1, &mut dots);
                        assert!((dots[0] - want).abs() <= 1e-4 * want.abs().max(1.0));
                    }
                }
            }
        }
    }
}
