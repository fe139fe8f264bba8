//! The GGUF block types `quant` multiplies (32 weights a block: a scale, an optional minimum,
//! the integers), and the activation rows a product reads: shared by the portable loops and the
//! x86 kernels.

/// Weights per block.
pub const BLOCK: usize = 32;
/// Activation rows per pass over a weight row.
pub(super) const ROWS: usize = 8;

/// The block types multiplied here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockType {
    /// `d: f16, qs: [u8; 16]` (nibbles, offset 8).
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]` (nibbles).
    Q4_1,
    /// `d: f16, qh: u32, qs: [u8; 16]` (5-bit, offset 16).
    Q5_0,
    /// `d: f16, m: f16, qh: u32, qs: [u8; 16]` (5-bit).
    Q5_1,
    /// `d: f16, qs: [i8; 32]`.
    Q8_0,
}

impl BlockType {
    /// Bytes per block of 32 weights.
    pub const fn bytes(self) -> usize {
        match self {
            BlockType::Q4_0 => 18,
            BlockType::Q4_1 => 20,
            BlockType::Q5_0 => 22,
            BlockType::Q5_1 => 24,
            BlockType::Q8_0 => 34,
        }
    }

    /// The fifth bits of a Q5 block's 32 weights (bit j: weight j).
    pub(super) fn high_bits(self, block: &[u8]) -> u32 {
        let at = match self {
            BlockType::Q5_0 => 2,
            BlockType::Q5_1 => 4,
            _ => return 0,
        };
        u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
    }

    /// Where the integers start in a block.
    pub(super) const fn quants_at(self) -> usize {
        match self {
            BlockType::Q4_0 | BlockType::Q8_0 => 2,
            BlockType::Q4_1 => 4,
            BlockType::Q5_0 => 6,
            BlockType::Q5_1 => 8,
        }
    }

    /// (d, m) of a block: weight = d * q + m with q the block's nibbles or bytes as stored.
    pub(super) fn scale_min(self, block: &[u8]) -> (f32, f32) {
        let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
        match self {
            BlockType::Q4_0 => (d, -8.0 * d),
            BlockType::Q5_0 => (d, -16.0 * d),
            BlockType::Q4_1 | BlockType::Q5_1 => {
                (d, f16_to_f32(u16::from_le_bytes([block[2], block[3]])))
            }
            BlockType::Q8_0 => (d, 0.0),
        }
    }

    /// The integer q of weight j (0..32) of a block.
    pub(super) fn quant(self, block: &[u8], j: usize) -> f32 {
        let qs = &block[self.quants_at()..];
        let high = ((self.high_bits(block) >> j) & 1) << 4;
        match self {
            BlockType::Q8_0 => qs[j] as i8 as f32,
            _ if j < 16 => ((qs[j] & 15) as u32 | high) as f32,
            _ => ((qs[j - 16] >> 4) as u32 | high) as f32,
        }
    }

    /// Weight j (0..32) of a block.
    #[cfg(test)]
    pub(super) fn weight(self, block: &[u8], j: usize) -> f32 {
        let (d, m) = self.scale_min(block);
        d * self.quant(block, j) + m
    }
}

/// Activation rows and the sum of each 32-value block (the minimum's term).
pub(super) struct Activations<'a> {
    pub(super) x: &'a [f32],
    pub(super) cols: usize,
    pub(super) sums: Vec<f32>,
}

/// Activation rows rounded to int8 per block of 32, as llama.cpp rounds them for its block dot
/// products: `values` (m rows of `cols`), a scale per block and, per block, the scale times the
/// sum of its integers (the weights' minimum or offset term). What the x86 and Arm block
/// kernels multiply.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub struct Int8Activations {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<f32>,
    pub cols: usize,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Int8Activations {
    /// `x`: m rows of `cols` (a multiple of 32); rows quantized in parallel when `parallel` and
    /// there are enough of them.
    pub fn quantize(x: &[f32], m: usize, cols: usize, parallel: bool) -> Self {
        let parallel = parallel && x.len() >= super::PARALLEL_QUANTIZE_MIN_VALUES;
        let rows = super::int8::quantize_rows(x, m, cols, parallel);
        let sums = rows
            .values
            .chunks_exact(BLOCK)
            .zip(&rows.scales)
            .map(|(q, &d)| d * q.iter().map(|&v| v as i32).sum::<i32>() as f32)
            .collect();
        Int8Activations {
            values: rows.values,
            scales: rows.scales,
            sums,
            cols,
        }
    }
}

/// IEEE half → f32 (normal, subnormal, zero, inf and NaN).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: frac * 2^-24.
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        31 => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}
