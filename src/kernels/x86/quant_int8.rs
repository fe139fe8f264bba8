//! GGUF blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) times int8 activation rows on AVX-512 VNNI (or
//! AVX2), as llama.cpp multiplies them: each 32-value activation block rounded to int8 with its own scale
//! `d_x` (and `s_x = d_x Σ q_x`), each weight block's integers kept as stored, unsigned
//! (`vpdpbusd` multiplies unsigned bytes by signed ones), and
//! `Σ_block x·w ≈ d_w d_x Σ q_w q_x + m_w s_x`, with m_w the block's minimum (Q4_1, Q5_1) or its
//! offset -8 d_w (Q4_0), -16 d_w (Q5_0), -128 d_w (Q8_0, whose signed bytes are stored + 128).
//!
//! The blocks are repacked once at load into panels of 16 weight rows, one row per i32 lane, so
//! that a `vpdpbusd` with 4 broadcast activation bytes advances 16 rows by 4 inputs (64
//! products), and a panel's block scales convert to f32 in one instruction (`vcvtph2ps`).
//! Per (panel, block) a record: the 16 rows' f16 scales, their f16 minimums (Q4_1, Q5_1 only),
//! then the integers: for the 4-bit types 4 x 64 bytes, byte 4i + c of part t holding row i's
//! stored byte 4t + c (low nibble: input 4t + c; high: input 16 + 4t + c: GGUF's own order);
//! for the others 8 x 64 bytes, byte 4i + c of part t holding row i's input 4t + c as an
//! unsigned byte. The 4-bit records are the GGUF blocks' size; Q8_0's too; Q5's grow to a byte
//! per weight (they are the k-quant files' fallback for narrow rows). Scales stay f16: nothing
//! is dequantized.
//!
//! Without VNNI, AVX2 takes the same panels in two halves of 8 rows: `vpmaddubsw` (unsigned x
//! signed bytes, pairs summed in i16: at most 2 x 31 x 127 for the 4- and 5-bit integers, no
//! saturation) then `vpmaddwd` by ones; Q8_0's bytes would saturate it, so there they are
//! flipped back to signed and multiplied as |w| by x with w's sign (`vpsignb`), with no offset
//! term.
//!
//! Reached only after [`available`] (run-time detection): `QuantMatrix::new` packs these panels
//! only then, and [`Int8Blocks::forward`] asserts it before any `target_feature` call.

use std::arch::x86_64::*;

use crate::kernels::blocks::{BlockType, Int8Activations, BLOCK};
use crate::kernels::SharedPtr;

/// Weight rows per panel: the 16 i32 lanes of a register.
const PANEL: usize = 16;
/// Activation rows per microkernel call: each takes an i32 and an f32 register beside the 8
/// weight registers.
const PASS: usize = 6;
/// Panels per parallel task (64 weight rows).
const PANELS_PER_TASK: usize = 4;

/// The instruction sets the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 F, BW and VNNI.
    Vnni,
    /// AVX2, FMA and F16C.
    Avx2,
}

/// The best kernel this CPU runs (checked once), None without AVX2.
pub fn level() -> Option<Level> {
    static LEVEL: std::sync::OnceLock<Option<Level>> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        if !super::quant::avx512_declined()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
        {
            Some(Level::Vnni)
        } else if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            Some(Level::Avx2)
        } else {
            None
        }
    })
}

/// Whether this CPU runs one of the kernels.
pub fn available() -> bool {
    level().is_some()
}

/// How a block type's integers and minimum are stored in the panels.
#[derive(Clone, Copy, Debug)]
struct Format {
    /// 4-bit integers (two per byte), else one byte each.
    nibbles: bool,
    /// A stored f16 minimum per block, else the minimum is -offset x the scale.
    min: bool,
    offset: f32,
    /// Signed bytes stored + 128 (Q8_0): AVX2 multiplies them signed (see the module's notes).
    signed: bool,
}

impl Format {
    fn of(kind: BlockType) -> Format {
        let (nibbles, min, offset) = match kind {
            BlockType::Q4_0 => (true, false, 8.0),
            BlockType::Q4_1 => (true, true, 0.0),
            BlockType::Q5_0 => (false, false, 16.0),
            BlockType::Q5_1 => (false, true, 0.0),
            BlockType::Q8_0 => (false, false, 128.0),
        };
        Format {
            nibbles,
            min,
            offset,
            signed: kind == BlockType::Q8_0,
        }
    }

    /// Bytes of a (panel, block) record.
    fn record(self) -> usize {
        let scales = PANEL * 2 * (1 + self.min as usize);
        scales + PANEL * if self.nibbles { BLOCK / 2 } else { BLOCK }
    }
}

/// A [rows, cols] GGUF matrix repacked into panels (see the module's notes).
pub struct Int8Blocks {
    format: Format,
    rows: usize,
    blocks: usize,
    data: Vec<u8>,
    /// The kernel: this CPU's best unless a test asks for another it also runs.
    level: Level,
}

impl Int8Blocks {
    /// `gguf`: the tensor's blocks, `rows` rows of `blocks` blocks of `kind`.
    pub fn pack(kind: BlockType, gguf: &[u8], rows: usize, blocks: usize) -> Self {
        let format = Format::of(kind);
        let record = format.record();
        let row_bytes = blocks * kind.bytes();
        assert_eq!(gguf.len(), rows * row_bytes, "GGUF blocks");
        let mut data = vec![0u8; rows.div_ceil(PANEL) * blocks * record];
        for j in 0..rows {
            let (panel, i) = (j / PANEL, j % PANEL);
            for b in 0..blocks {
                let block = &gguf[j * row_bytes + b * kind.bytes()..][..kind.bytes()];
                let out = &mut data[(panel * blocks + b) * record..][..record];
                out[2 * i..2 * i + 2].copy_from_slice(&block[..2]);
                let mut at = 2 * PANEL;
                if format.min {
                    out[at + 2 * i..at + 2 * i + 2].copy_from_slice(&block[2..4]);
                    at += 2 * PANEL;
                }
                let ints = &mut out[at..];
                if format.nibbles {
                    let stored = &block[kind.quants_at()..];
                    for t in 0..4 {
                        ints[t * 64 + 4 * i..][..4].copy_from_slice(&stored[4 * t..4 * t + 4]);
                    }
                } else {
                    for k in 0..BLOCK {
                        // Q8_0's signed bytes + 128; Q5's 5-bit integers as they are.
                        let q = kind.quant(block, k) + if format.signed { 128.0 } else { 0.0 };
                        ints[(k / 4) * 64 + 4 * i + k % 4] = q as u8;
                    }
                }
            }
        }
        Int8Blocks {
            format,
            rows,
            blocks,
            data,
            level: level().expect("packed only where a kernel runs"),
        }
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Runs the AVX2 kernel (tests of it on VNNI CPUs, which have AVX2 too).
    #[cfg(test)]
    pub fn use_avx2(&mut self) {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"));
        self.level = Level::Avx2;
    }

    /// `y` (m rows of `rows`) = the m activation rows times the weights (transposed).
    pub fn forward(&self, acts: &Int8Activations, m: usize, y: &mut [f32], parallel: bool) {
        assert!(available(), "int8 block kernels on a CPU without AVX2");
        let (cols, blocks) = (self.blocks * BLOCK, self.blocks);
        assert_eq!(acts.cols, cols, "activation width");
        assert!(acts.values.len() >= m * cols && acts.scales.len() >= m * blocks);
        assert!(acts.sums.len() >= m * blocks && y.len() >= m * self.rows);
        let record = self.format.record();
        let panels = self.rows.div_ceil(PANEL);
        let out = SharedPtr(y.as_mut_ptr());
        let task = |t: usize| {
            for panel in t * PANELS_PER_TASK..panels.min((t + 1) * PANELS_PER_TASK) {
                let lanes = PANEL.min(self.rows - panel * PANEL);
                for r0 in (0..m).step_by(PASS) {
                    let args = Args {
                        panel: self.data[panel * blocks * record..].as_ptr(),
                        blocks,
                        record,
                        offset: self.format.offset,
                        values: acts.values[r0 * cols..].as_ptr(),
                        scales: acts.scales[r0 * blocks..].as_ptr(),
                        sums: acts.sums[r0 * blocks..].as_ptr(),
                        // SAFETY: row r0, column panel * 16 of y (r0 < m, panel * 16 < rows).
                        y: unsafe { out.get().add(r0 * self.rows + panel * PANEL) },
                        y_stride: self.rows,
                        lanes,
                    };
                    // SAFETY: the level's instructions are there (`level()` found them, or the
                    // test that chose AVX2 checked); the record pointer starts `blocks`
                    // records of this panel, the activation pointers rows r0..r0 + count of
                    // `acts` (lengths asserted above); y's rows r0..r0 + count, columns
                    // panel * 16 .. + lanes are written only by this task (it owns the panel).
                    unsafe { microkernel(PASS.min(m - r0), self.format, self.level, &args) };
                }
            }
        };
        let tasks = panels.div_ceil(PANELS_PER_TASK);
        if parallel && tasks > 1 {
            crate::kernels::decode_parallel_for(tasks, task);
        } else {
            (0..tasks).for_each(task);
        }
    }
}

/// One microkernel call's operands (see [`kernel`] for what each must point at).
struct Args {
    panel: *const u8,
    blocks: usize,
    /// Bytes per (panel, block) record.
    record: usize,
    offset: f32,
    values: *const i8,
    scales: *const f32,
    sums: *const f32,
    y: *mut f32,
    y_stride: usize,
    lanes: usize,
}

/// Dispatches to the kernel of the level for `count` (1..=6) rows and the format.
///
/// # Safety
/// As for [`kernel`] (VNNI) or [`kernel_avx2`], with R = `count`.
unsafe fn microkernel(count: usize, format: Format, level: Level, args: &Args) {
    macro_rules! by_count {
        ($f:ident, $($c:literal),*) => {
            // SAFETY: the caller's guarantees are the kernel's (the `_` arm: count 1).
            unsafe {
                match count {
                    6 => $f::<6, $($c),*>(args),
                    5 => $f::<5, $($c),*>(args),
                    4 => $f::<4, $($c),*>(args),
                    3 => $f::<3, $($c),*>(args),
                    2 => $f::<2, $($c),*>(args),
                    _ => $f::<1, $($c),*>(args),
                }
            }
        };
    }
    match (level, format.nibbles, format.min, format.signed) {
        (Level::Vnni, true, true, _) => by_count!(kernel, true, true),
        (Level::Vnni, true, false, _) => by_count!(kernel, true, false),
        (Level::Vnni, false, true, _) => by_count!(kernel, false, true),
        (Level::Vnni, false, false, _) => by_count!(kernel, false, false),
        (Level::Avx2, true, true, _) => by_count!(kernel_avx2, true, true, false),
        (Level::Avx2, true, false, _) => by_count!(kernel_avx2, true, false, false),
        (Level::Avx2, false, true, _) => by_count!(kernel_avx2, false, true, false),
        (Level::Avx2, false, false, false) => by_count!(kernel_avx2, false, false, false),
        (Level::Avx2, false, false, true) => by_count!(kernel_avx2, false, false, true),
    }
}

/// R activation rows x one panel of 16 weight rows: per block, the panel's integers into 8
/// registers (inputs 4t..4t + 4 of every row in register t), then per activation row 8
/// `vpdpbusd` with its 4 bytes broadcast, scaled by d_w d_x, plus m_w s_x; at the end the 16
/// sums of each row stored into y (the first `lanes`).
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; `panel` must be readable for `blocks` records of
/// the format (`NIBBLES`, `MIN`), `record` bytes each; `values` for R rows of `blocks * 32`
/// bytes, `scales` and `sums` for R rows of `blocks` f32; `y` writable for R rows (`y_stride` apart) of `lanes`
/// (<= 16) f32 that nothing else accesses during the call.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel<const R: usize, const NIBBLES: bool, const MIN: bool>(args: &Args) {
    let &Args {
        panel,
        blocks,
        record,
        offset,
        values,
        scales,
        sums,
        y,
        y_stride,
        lanes,
    } = args;
    let cols = blocks * BLOCK;
    let low = _mm512_set1_epi8(0x0f);
    let minus_offset = _mm512_set1_ps(-offset);
    let mut out = [_mm512_setzero_ps(); R];
    for b in 0..blocks {
        // SAFETY: b < blocks: the record is inside the panel (unaligned loads of 32 or 64
        // bytes at offsets the record's layout has: scales, minimums, integers).
        let (d, min, w) = unsafe {
            let at = panel.add(b * record);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(at.cast()));
            let min = if MIN {
                _mm512_cvtph_ps(_mm256_loadu_si256(at.add(2 * PANEL).cast()))
            } else {
                _mm512_mul_ps(d, minus_offset)
            };
            let ints = at.add(2 * PANEL * (1 + MIN as usize));
            let w: [__m512i; 8] = if NIBBLES {
                let part: [__m512i; 4] =
                    std::array::from_fn(|t| _mm512_loadu_si512(ints.add(64 * t).cast()));
                std::array::from_fn(|t| {
                    if t < 4 {
                        _mm512_and_si512(part[t], low)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16(part[t - 4], 4), low)
                    }
                })
            } else {
                std::array::from_fn(|t| _mm512_loadu_si512(ints.add(64 * t).cast()))
            };
            (d, min, w)
        };
        for (r, out) in out.iter_mut().enumerate() {
            let mut acc = _mm512_setzero_si512();
            for (t, &w) in w.iter().enumerate() {
                // SAFETY: r < R, b < blocks, t < 8: the 4 bytes at row r, input 32b + 4t are
                // inside `values` (read unaligned).
                let four = unsafe {
                    values
                        .add(r * cols + b * BLOCK + 4 * t)
                        .cast::<i32>()
                        .read_unaligned()
                };
                acc = _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(four));
            }
            // SAFETY: r < R, b < blocks: inside `scales` and `sums`.
            let (dx, sx) = unsafe { (*scales.add(r * blocks + b), *sums.add(r * blocks + b)) };
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(dx));
            *out = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, *out);
            *out = _mm512_fmadd_ps(min, _mm512_set1_ps(sx), *out);
        }
    }
    let mask = ((1u32 << lanes.min(PANEL)) - 1) as __mmask16;
    for (r, out) in out.iter().enumerate() {
        // SAFETY: row r < R of y; the mask writes only the first `lanes` values.
        unsafe { _mm512_mask_storeu_ps(y.add(r * y_stride), mask, *out) };
    }
}

/// As [`kernel`], with AVX2: each register holds 8 rows, so a panel is two halves, done one
/// after the other (both at once needs 4R accumulators, and x86's 16 registers spilled them to
/// the stack in every inner step); per 4 inputs `vpmaddubsw` and `vpmaddwd` by ones stand for
/// `vpdpbusd`. `SIGNED` (Q8_0): the stored bytes flipped back to signed w, multiplied as |w| by
/// sign(w) x, and no offset term.
///
/// # Safety
/// As for [`kernel`], but the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_avx2<const R: usize, const NIBBLES: bool, const MIN: bool, const SIGNED: bool>(
    args: &Args,
) {
    let &Args {
        panel,
        blocks,
        record,
        offset,
        values,
        scales,
        sums,
        y,
        y_stride,
        lanes,
    } = args;
    let cols = blocks * BLOCK;
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(i8::MIN);
    let minus_offset = _mm256_set1_ps(if SIGNED { 0.0 } else { -offset });
    for h in 0..2 {
        let mut out = [_mm256_setzero_ps(); R];
        for b in 0..blocks {
            // SAFETY: b < blocks, h < 2: the record is inside the panel (unaligned loads of 16
            // bytes at the offsets of half h's scales and minimums, as in `kernel`).
            let (d, min, ints) = unsafe {
                let at = panel.add(b * record);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(at.add(16 * h).cast()));
                let min = if MIN {
                    _mm256_cvtph_ps(_mm_loadu_si128(at.add(2 * PANEL + 16 * h).cast()))
                } else {
                    _mm256_mul_ps(d, minus_offset)
                };
                (d, min, at.add(2 * PANEL * (1 + MIN as usize)))
            };
            // 4-bit weights: the 8 pair sums of a block add up in 16 bits first, one
            // `vpmaddwd` per block instead of one per 4 inputs (|pair sum| <= 2 * 15 * 127 =
            // 3810, and 8 of them <= 30480 < 2^15: no saturation; activations are in
            // [-127, 127]).
            let mut acc = [_mm256_setzero_si256(); R];
            for t in 0..8 {
                // SAFETY: t < 8, h < 2: 32 bytes inside the record's integers (4-bit: part
                // t % 4 of 4 x 64 bytes; bytes: part t of 8 x 64).
                let w = unsafe {
                    if NIBBLES {
                        let part = _mm256_loadu_si256(ints.add(64 * (t % 4) + 32 * h).cast());
                        if t < 4 {
                            _mm256_and_si256(part, low)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16(part, 4), low)
                        }
                    } else {
                        _mm256_loadu_si256(ints.add(64 * t + 32 * h).cast())
                    }
                };
                // Q8_0: the stored bytes flipped back to signed, multiplied by magnitude.
                let signed_w = _mm256_xor_si256(w, flip);
                let unsigned_w = if SIGNED { _mm256_abs_epi8(signed_w) } else { w };
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: r < R, b < blocks, t < 8: the 4 bytes at row r, input 32b + 4t
                    // are inside `values` (read unaligned).
                    let four = unsafe {
                        values
                            .add(r * cols + b * BLOCK + 4 * t)
                            .cast::<i32>()
                            .read_unaligned()
                    };
                    let mut x = _mm256_set1_epi32(four);
                    if SIGNED {
                        x = _mm256_sign_epi8(x, signed_w);
                    }
                    let pairs = _mm256_maddubs_epi16(unsigned_w, x);
                    *acc = if NIBBLES {
                        _mm256_add_epi16(*acc, pairs)
                    } else {
                        _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones))
                    };
                }
            }
            for (r, (acc, out)) in acc.iter().zip(out.iter_mut()).enumerate() {
                let sum = if NIBBLES {
                    _mm256_madd_epi16(*acc, ones)
                } else {
                    *acc
                };
                // SAFETY: r < R, b < blocks: inside `scales` and `sums`.
                let (dx, sx) = unsafe { (*scales.add(r * blocks + b), *sums.add(r * blocks + b)) };
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(dx));
                *out = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, *out);
                *out = _mm256_fmadd_ps(min, _mm256_set1_ps(sx), *out);
            }
        }
        let half_lanes = lanes.saturating_sub(8 * h).min(8);
        for (r, out) in out.iter().enumerate() {
            let mut row = [0f32; 8];
            // SAFETY: one store of 8 values into an 8-value array.
            unsafe { _mm256_storeu_ps(row.as_mut_ptr(), *out) };
            // SAFETY: row r < R of y, values 8h..8h + half_lanes, inside its first `lanes`
            // (<= 16), which the caller lets us write.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), y.add(r * y_stride + 8 * h), half_lanes)
            };
        }
    }
}
