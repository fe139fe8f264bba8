//! GGUF blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) multiplied on int8 activations with Arm's `sdot`
//! (FEAT_DotProd: Graviton 2 and later), as llama.cpp's NEON dot products do: each block's 32
//! integers unpacked once into bytes (nibbles with NEON masks and shifts, Q5's fifth bits added),
//! then one pair of `sdot`s per activation row, the exact i32 sum scaled by both blocks' scales,
//! the weights' minimum (or offset) term taken from the activation block's sum.

use std::arch::aarch64::{
    int8x16_t, vaddq_u8, vaddvq_s32, vandq_u8, vdupq_n_s32, vdupq_n_u8, vld1q_s8, vld1q_u8,
    vreinterpretq_s8_u8, vshrq_n_u8,
};

use super::int8_dot::sdot;
use crate::kernels::blocks::{BlockType, Int8Activations, BLOCK, ROWS};

/// A block's 32 integers as stored (nibbles, 5-bit values or signed bytes), in two registers.
///
/// # Safety
/// `block` holds one whole block of `kind` (checked by the caller's chunking).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn unpack(kind: BlockType, block: &[u8]) -> (int8x16_t, int8x16_t) {
    let qs = &block[kind.quants_at()..];
    if kind == BlockType::Q8_0 {
        assert!(qs.len() >= BLOCK);
        // SAFETY: 32 bytes are there (asserted); unaligned loads are allowed.
        return unsafe {
            (
                vld1q_s8(qs.as_ptr().cast()),
                vld1q_s8(qs.as_ptr().add(16).cast()),
            )
        };
    }
    assert!(qs.len() >= BLOCK / 2);
    // SAFETY: 16 bytes of nibbles are there (asserted).
    let packed = unsafe { vld1q_u8(qs.as_ptr()) };
    let mask = vdupq_n_u8(15);
    let (mut low, mut high) = (vandq_u8(packed, mask), vshrq_n_u8::<4>(packed));
    if matches!(kind, BlockType::Q5_0 | BlockType::Q5_1) {
        // The fifth bit of weight j is bit j of the block's high word: 16 added where set.
        let bits = kind.high_bits(block);
        let fifth: [u8; BLOCK] = std::array::from_fn(|j| (((bits >> j) & 1) << 4) as u8);
        // SAFETY: `fifth` is 32 bytes.
        unsafe {
            low = vaddq_u8(low, vld1q_u8(fifth.as_ptr()));
            high = vaddq_u8(high, vld1q_u8(fifth.as_ptr().add(16)));
        }
    }
    (vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(high))
}

/// Dot products of one weight row (`row`: its blocks as stored) with activation rows
/// r0..r0 + count (count <= ROWS).
///
/// # Safety
/// The CPU has FEAT_DotProd (`int8_dot::available`).
#[target_feature(enable = "dotprod")]
pub unsafe fn dot_rows(
    kind: BlockType,
    row: &[u8],
    acts: &Int8Activations,
    r0: usize,
    count: usize,
    dots: &mut [f32; ROWS],
) {
    let blocks = acts.cols / BLOCK;
    assert!(count <= ROWS && row.len() == blocks * kind.bytes());
    assert!((r0 + count) * acts.cols <= acts.values.len());
    assert!((r0 + count) * blocks <= acts.scales.len().min(acts.sums.len()));
    dots[..count].fill(0.0);
    for (b, block) in row.chunks_exact(kind.bytes()).enumerate() {
        let (d, m) = kind.scale_min(block);
        // SAFETY: `block` is one whole block (chunks_exact of its size).
        let (w0, w1) = unsafe { unpack(kind, block) };
        for (r, dot) in dots[..count].iter_mut().enumerate() {
            let at = (r0 + r) * acts.cols + b * BLOCK;
            // SAFETY: at + 32 <= (r0 + count) * cols <= values.len() (asserted above).
            let (x0, x1) = unsafe {
                let x = acts.values.as_ptr().add(at);
                (vld1q_s8(x), vld1q_s8(x.add(16)))
            };
            let s = vaddvq_s32(sdot(sdot(vdupq_n_s32(0), x0, w0), x1, w1));
            let block_at = (r0 + r) * blocks + b;
            *dot += d * acts.scales[block_at] * s as f32 + m * acts.sums[block_at];
        }
    }
}
