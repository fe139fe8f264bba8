//! Rounding f32 to bfloat16 pairs, as the bf16 kernels (`x86::bf16`, `bf16_tiles`,
//! `bf16_attention`) read their operands.

use std::arch::x86_64::*;

/// f32 → bf16 bits, rounding to nearest even (as `vcvtne2ps2bf16` and torch do).
pub(super) fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
}

/// `dst` := the pairs of `src` rounded to bf16, (src[2p], src[2p + 1]) in pair p, the pairs
/// past `src` zeros.
///
/// # Safety
/// The CPU must have AVX512-F and AVX512-BF16, and `dst.len() >= src.len().div_ceil(2)`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn round_row(src: &[f32], dst: &mut [u32]) {
    let full = src.len() / 32;
    for c in 0..full {
        // SAFETY: c < len / 32, so the 32 floats at c * 32 are inside `src`, and the 16 u32 at
        // c * 16 inside `dst` (at least len / 2 >= c * 16 + 16 long, the caller's guarantee);
        // the unaligned load/store forms need no alignment; the transmute is between two
        // 512-bit vector types.
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(c * 32));
            let hi = _mm512_loadu_ps(src.as_ptr().add(c * 32 + 16));
            // 32 bf16 in memory order = 16 pairs.
            let packed = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(
                dst.as_mut_ptr().add(c * 16).cast(),
                std::mem::transmute::<__m512bh, __m512i>(packed),
            );
        }
    }
    for (p, pair) in dst.iter_mut().enumerate().skip(full * 16) {
        *pair = bf16_pair(src.get(2 * p).copied(), src.get(2 * p + 1).copied());
    }
}

/// Two values (None: 0) rounded to bf16 and packed as one pair, the first in the low half.
pub(super) fn bf16_pair(lo: Option<f32>, hi: Option<f32>) -> u32 {
    lo.map_or(0, bf16_bits) | (hi.map_or(0, bf16_bits) << 16)
}
