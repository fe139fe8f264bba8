//! GGUF blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) times f32 activation rows, with AVX-512F (16
//! lanes) or AVX2 and FMA (8 lanes): a block's 32 integers are widened to f32 once and multiplied against every
//! activation row of the pass (see `kernels::quant`). Reached only after [`available`].

use std::arch::x86_64::*;

use crate::kernels::blocks::{Activations, BlockType, BLOCK, ROWS};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Avx512,
    Avx2,
}

fn level() -> Option<Level> {
    static LEVEL: std::sync::OnceLock<Option<Level>> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        if !avx512_declined() && is_x86_feature_detected!("avx512f") {
            Some(Level::Avx512)
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Some(Level::Avx2)
        } else {
            None
        }
    })
}

/// `SAGEMAKER_HF_NO_AVX512=1`: the GGUF block kernels (here and `quant_int8`) and the int8
/// dense layers (`int8`: VNNI) take their AVX2 paths, and the element-wise frames (`wide`) the
/// build's, even where the CPU has AVX-512, so that those can be measured on any x86 machine.
pub fn avx512_declined() -> bool {
    static DECLINED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DECLINED.get_or_init(|| {
        std::env::var("SAGEMAKER_HF_NO_AVX512").is_ok_and(|v| v == "1" || v == "true")
    })
}

/// Whether this CPU has AVX-512F, or AVX2 and FMA (checked once).
pub fn available() -> bool {
    level().is_some()
}

/// Dot products of one weight row with activation rows r0..r0 + count (count <= ROWS).
///
/// # Safety
/// [`available`] must be true. (Lengths are checked here.)
pub unsafe fn dot_rows(
    kind: BlockType,
    row: &[u8],
    acts: &Activations,
    r0: usize,
    count: usize,
    dots: &mut [f32; ROWS],
) {
    macro_rules! by_count {
        ($f:ident) => {
            // SAFETY: the caller checked the CPU's level (`available`), which picked `$f`.
            unsafe {
                match count {
                    1 => $f::<1>(kind, row, acts, r0, dots),
                    2 => $f::<2>(kind, row, acts, r0, dots),
                    3 => $f::<3>(kind, row, acts, r0, dots),
                    4 => $f::<4>(kind, row, acts, r0, dots),
                    5 => $f::<5>(kind, row, acts, r0, dots),
                    6 => $f::<6>(kind, row, acts, r0, dots),
                    7 => $f::<7>(kind, row, acts, r0, dots),
                    _ => $f::<8>(kind, row, acts, r0, dots),
                }
            }
        };
    }
    match level() {
        Some(Level::Avx512) => by_count!(dot_avx512),
        _ => by_count!(dot_avx2),
    }
}

/// The activation rows r0..r0 + R and their block sums, checked against the weight row.
fn rows_of<'a, const R: usize>(
    kind: BlockType,
    row: &[u8],
    acts: &'a Activations,
    r0: usize,
) -> ([&'a [f32]; R], [&'a [f32]; R]) {
    let nb = acts.cols / BLOCK;
    assert_eq!(row.len(), nb * kind.bytes(), "weight row");
    let xs = std::array::from_fn(|r| &acts.x[(r0 + r) * acts.cols..(r0 + r + 1) * acts.cols]);
    let sums = std::array::from_fn(|r| &acts.sums[(r0 + r) * nb..(r0 + r + 1) * nb]);
    (xs, sums)
}

#[target_feature(enable = "avx512f")]
fn dot_avx512<const R: usize>(
    kind: BlockType,
    row: &[u8],
    acts: &Activations,
    r0: usize,
    dots: &mut [f32; ROWS],
) {
    let (xs, sums) = rows_of::<R>(kind, row, acts, r0);
    let nibble = _mm_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut offset = [0f32; R];
    for (b, block) in row.chunks_exact(kind.bytes()).enumerate() {
        let (d, m) = kind.scale_min(block);
        let quants = &block[2..];
        // SAFETY: every load reads 16 bytes inside the block: Q8_0 bytes 2..18 and 18..34 of 34;
        // Q4_0 2..18 of 18; Q4_1 4..20 of 20; Q5_0 6..22 of 22; Q5_1 8..24 of 24 (`quants_at`).
        let (lo, hi) = unsafe {
            match kind {
                BlockType::Q8_0 => (
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(quants.as_ptr() as *const __m128i)),
                    _mm512_cvtepi8_epi32(
                        _mm_loadu_si128(quants.as_ptr().add(16) as *const __m128i),
                    ),
                ),
                _ => {
                    let at = kind.quants_at();
                    let packed = _mm_loadu_si128(block.as_ptr().add(at) as *const __m128i);
                    let lo = _mm512_cvtepu8_epi32(_mm_and_si128(packed, nibble));
                    let hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(packed, 4), nibble));
                    // Q5: + 16 where the weight's fifth bit is set (0 for the 4-bit types).
                    let bits = kind.high_bits(block);
                    let sixteen = _mm512_set1_epi32(16);
                    (
                        _mm512_mask_add_epi32(lo, bits as u16, lo, sixteen),
                        _mm512_mask_add_epi32(hi, (bits >> 16) as u16, hi, sixteen),
                    )
                }
            }
        };
        let (lo, hi) = (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi));
        let scale = _mm512_set1_ps(d);
        for r in 0..R {
            let x = &xs[r][b * BLOCK..(b + 1) * BLOCK];
            // SAFETY: `x` is exactly 32 f32 (sliced just above): two loads of 16.
            let (x0, x1) = unsafe {
                (
                    _mm512_loadu_ps(x.as_ptr()),
                    _mm512_loadu_ps(x.as_ptr().add(16)),
                )
            };
            let p = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
            acc[r] = _mm512_fmadd_ps(p, scale, acc[r]);
            offset[r] += m * sums[r][b];
        }
    }
    for r in 0..R {
        dots[r] = _mm512_reduce_add_ps(acc[r]) + offset[r];
    }
}

/// Horizontal sum of 8 f32 lanes.
#[target_feature(enable = "avx2,fma")]
fn hsum256(x: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[target_feature(enable = "avx2,fma")]
fn dot_avx2<const R: usize>(
    kind: BlockType,
    row: &[u8],
    acts: &Activations,
    r0: usize,
    dots: &mut [f32; ROWS],
) {
    let (xs, sums) = rows_of::<R>(kind, row, acts, r0);
    let nibble = _mm_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offset = [0f32; R];
    for (b, block) in row.chunks_exact(kind.bytes()).enumerate() {
        let (d, m) = kind.scale_min(block);
        // q[8i..8i + 8] widened to i32, i = 0..4.
        // SAFETY: loads as in `dot_avx512`: 16 bytes inside the block each.
        let q: [__m256i; 4] = unsafe {
            match kind {
                BlockType::Q8_0 => {
                    let a = _mm_loadu_si128(block.as_ptr().add(2) as *const __m128i);
                    let b = _mm_loadu_si128(block.as_ptr().add(18) as *const __m128i);
                    [
                        _mm256_cvtepi8_epi32(a),
                        _mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)),
                        _mm256_cvtepi8_epi32(b),
                        _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)),
                    ]
                }
                _ => {
                    let at = kind.quants_at();
                    let packed = _mm_loadu_si128(block.as_ptr().add(at) as *const __m128i);
                    let lo = _mm_and_si128(packed, nibble);
                    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
                    let q = [
                        _mm256_cvtepu8_epi32(lo),
                        _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                        _mm256_cvtepu8_epi32(hi),
                        _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)),
                    ];
                    // Q5: bit j of the high word, times 16, added to weight j (0 for 4-bit types).
                    let bits = _mm256_set1_epi32(kind.high_bits(block) as i32);
                    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let one = _mm256_set1_epi32(1);
                    let high = |i: i32| {
                        let shift = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * i));
                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(bits, shift), one), 4)
                    };
                    [
                        _mm256_add_epi32(q[0], high(0)),
                        _mm256_add_epi32(q[1], high(1)),
                        _mm256_add_epi32(q[2], high(2)),
                        _mm256_add_epi32(q[3], high(3)),
                    ]
                }
            }
        };
        let q = [
            _mm256_cvtepi32_ps(q[0]),
            _mm256_cvtepi32_ps(q[1]),
            _mm256_cvtepi32_ps(q[2]),
            _mm256_cvtepi32_ps(q[3]),
        ];
        let scale = _mm256_set1_ps(d);
        for r in 0..R {
            let x = &xs[r][b * BLOCK..(b + 1) * BLOCK];
            // SAFETY: `x` is exactly 32 f32 (sliced just above): four loads of 8.
            let xv: [__m256; 4] = unsafe {
                [
                    _mm256_loadu_ps(x.as_ptr()),
                    _mm256_loadu_ps(x.as_ptr().add(8)),
                    _mm256_loadu_ps(x.as_ptr().add(16)),
                    _mm256_loadu_ps(x.as_ptr().add(24)),
                ]
            };
            let mut p = _mm256_mul_ps(q[0], xv[0]);
            p = _mm256_fmadd_ps(q[1], xv[1], p);
            p = _mm256_fmadd_ps(q[2], xv[2], p);
            p = _mm256_fmadd_ps(q[3], xv[3], p);
            acc[r] = _mm256_fmadd_ps(p, scale, acc[r]);
            offset[r] += m * sums[r][b];
        }
    }
    for r in 0..R {
        dots[r] = hsum256(acc[r]) + offset[r];
    }
}
