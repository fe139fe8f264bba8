//! int8 dot products with Arm's `sdot` (FEAT_DotProd: Graviton 2 and later, run-time detected):
//! 16 byte products summed into four i32 lanes per instruction, where the portable loops widen
//! and multiply-accumulate in 16 bits (`smlal` / `sadalp`). The same block arithmetic as
//! `kernels::int8`'s portable kernel: activations in blocks of 32 with a scale each, weights in
//! rows padded to whole blocks; each block's products exact in i32, then scaled into f32 lanes
//! (llama.cpp's Q8_0 dot product on NEON), summed across the lanes at the end.
//!
//! Stable Rust has no `vdotq_s32` yet (`stdarch_neon_dotprod`), so the instruction is written
//! with `asm!`.

use std::arch::aarch64::{
    int32x4_t, int8x16_t, vaddvq_f32, vcvtq_f32_s32, vdupq_n_f32, vdupq_n_s32, vfmaq_n_f32,
    vld1q_s8,
};
use std::arch::asm;

/// Inputs per activation scale (`kernels::INT8_BLOCK`).
const BLOCK: usize = super::super::INT8_BLOCK;

/// Whether this CPU has the dot-product instructions.
pub fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// `acc` plus, in each i32 lane, the four products of that lane's bytes of `a` and `b`.
#[target_feature(enable = "dotprod")]
#[inline]
pub(super) fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only arithmetic (no memory, no stack, no flags), and the function's
    // `dotprod` target feature means it only runs where the CPU has the instruction. The
    // directive lets the assembler accept it whatever the crate's baseline.
    unsafe {
        asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// For one activation row (`values`: whole blocks of 32; `scales`: one per block) and four
/// channels' weight rows (each as long as `values`): Σ_b scales[b] Σ_{k∈b} values[k] w[k], per
/// channel.
///
/// # Safety
/// The CPU has FEAT_DotProd ([`available`]).
#[target_feature(enable = "dotprod")]
pub unsafe fn dot4(values: &[i8], scales: &[f32], weights: [&[i8]; 4]) -> [f32; 4] {
    assert_eq!(values.len(), scales.len() * BLOCK);
    assert!(weights.iter().all(|w| w.len() == values.len()));
    let mut sums = [vdupq_n_f32(0.0); 4];
    for (b, &scale) in scales.iter().enumerate() {
        let at = b * BLOCK;
        // SAFETY: at + 32 <= values.len() == every weight row's length (asserted above), and
        // vld1q_s8 reads 16 bytes with no alignment requirement.
        unsafe {
            let x0 = vld1q_s8(values.as_ptr().add(at));
            let x1 = vld1q_s8(values.as_ptr().add(at + 16));
            for (sum, w) in sums.iter_mut().zip(&weights) {
                let w = w.as_ptr().add(at);
                let acc = sdot(vdupq_n_s32(0), x0, vld1q_s8(w));
                let acc = sdot(acc, x1, vld1q_s8(w.add(16)));
                *sum = vfmaq_n_f32(*sum, vcvtq_f32_s32(acc), scale);
            }
        }
    }
    sums.map(|s| vaddvq_f32(s))
}
