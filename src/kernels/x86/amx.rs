//! AMX tiles (Intel Sapphire Rapids and later: SageMaker's ml.*7i): eight tile registers of up
//! to 16 rows x 64 bytes, and one instruction that multiplies two of them into a third —
//! `tdpbf16ps` (16 x 16 f32 += 16 x 32 bf16 · 32 x 16 bf16, 8192 multiply-adds) and `tdpbssd`
//! (16 x 16 i32 += 16 x 32 i8 · 32 x 16 i8 as we configure it). That is 16x the multiply-adds of
//! an AVX-512 `vdpbf16ps` and 8x a `vpdpbusd` per instruction.
//!
//! Stable Rust has neither AMX intrinsics nor `is_x86_feature_detected!("amx-tile")` (both are
//! behind the unstable `x86_amx_intrinsics`), so the CPU is asked with CPUID, the OS with XGETBV,
//! the instructions are written with `asm!`, and the tile state is requested from Linux with
//! `arch_prctl(ARCH_REQ_XCOMP_PERM)` (without it the first tile instruction faults).
//!
//! The weights keep the layouts of the AVX-512 kernels (`x86::bf16`, `x86::int8`), whose
//! panels of 32 output columns are, per 4 bytes of input, 32 dwords: exactly two B tiles side by
//! side (16 columns each, a row stride of 128 bytes). Activations are tiles of 16 rows read with
//! the row stride of the activation buffer. A call computes 16 or 32 rows x 32 columns: 4 result
//! tiles, 2 activation tiles and 2 weight tiles, all eight registers.
//!
//! What bounds the speed is the loads, not the products: on a 2-core Xeon VM (2026-12-03, a
//! standalone loop of these instructions, not kept) four `tdpbf16ps` back to back took 17 ns
//! (3.8 TFLOP/s a core), four `tileloadd` from L1 60 ns,
//! and the 2 x 2 block's four loads and four products together 55 ns (1.2 TFLOP/s a core). So
//! every load feeds two products, and the callers keep the operands in the caches
//! (`x86::bf16`'s blocking: 1.5 TFLOP/s on 2 cores for a ViT MLP layer on 8 images).
//!
//! The tile registers are per-thread state that the compiler knows nothing of: a [`Tiles`]
//! value configures them on its thread, its methods are the only code here that touches them,
//! and dropping it releases them (`tilerelease`, so that the kernel stops saving 8 KiB of tile
//! data at each context switch).

use std::arch::asm;
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// Rows of a tile (and of each activation tile's share of a call).
pub const TILE_ROWS: usize = 16;
/// Input pairs (bf16) per tile: 64 bytes.
pub const BF16_PAIRS_PER_TILE: usize = 16;

/// Whether this CPU has AMX tiles with bf16 and int8 products (and AVX-512F and BW), the OS
/// saves their state, and Linux granted this process the tile data (checked, and requested,
/// once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("SAGEMAKER_HF_NO_AMX").is_ok_and(|v| v == "1" || v == "true") {
            return false;
        }
        // The kernels around the tiles (packing, scaling) use AVX-512F and BW, which every CPU
        // with AMX has: checked all the same, as their safety rests on it.
        let available = cpu_has_amx()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && os_saves_tiles()
            && request_tile_data();
        if available {
            tracing::debug!("AMX tiles (bf16, int8): available");
        }
        available
    })
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22), AMX-TILE (24), AMX-INT8 (25).
fn cpu_has_amx() -> bool {
    let leaf7 = __cpuid_count(7, 0);
    let bit = |b: u32| leaf7.edx >> b & 1 == 1;
    bit(22) && bit(24) && bit(25)
}

/// XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves and restores the tile state.
fn os_saves_tiles() -> bool {
    // CPUID leaf 1, ECX bit 27: OSXSAVE (XGETBV is enabled).
    if __cpuid_count(1, 0).ecx >> 27 & 1 == 0 || !is_x86_feature_detected!("xsave") {
        return false;
    }
    // SAFETY: XGETBV is enabled (OSXSAVE, checked above) and the CPU has XSAVE (checked).
    let xcr0 = unsafe { xcr0() };
    xcr0 & (3 << 17) == 3 << 17
}

/// # Safety
/// The CPU must have XSAVE and the OS must have enabled XGETBV (CPUID.1:ECX.OSXSAVE).
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    // SAFETY: the caller's guarantee: XGETBV is enabled; register 0 (XCR0) always exists.
    unsafe { _xgetbv(0) }
}

/// Asks Linux for permission to use the tile data state (once per process, for all threads).
fn request_tile_data() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integers and touches no memory
        // of ours; it fails (non-zero) where the kernel does not support the feature.
        let result = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if result != 0 {
            tracing::debug!(
                "AMX: arch_prctl(ARCH_REQ_XCOMP_PERM) refused: {}",
                std::io::Error::last_os_error()
            );
        }
        result == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of each tile.
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Every tile 16 rows x 64 bytes: registers 0-3 hold results (16 x 16 of 4 bytes), 4-5
/// activations, 6-7 weights.
fn config() -> TileConfig {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for tile in 0..8 {
        config.bytes_per_row[tile] = 64;
        config.rows[tile] = TILE_ROWS as u8;
    }
    config
}

/// Where the sums of a [`Tiles::bf16_accumulate`] start.
#[derive(Clone, Copy)]
pub enum Start {
    Zero,
    /// The same 32 f32 on every row (the bias): readable for 32 f32.
    Row(*const f32),
    /// Sums stored before: readable for the call's rows of 32 f32, the stride in bytes apart.
    Sums(*const f32, usize),
}

/// The operands of one [`Tiles::bf16_accumulate`]: `row_tiles` (1 or 2) tiles of 16 rows of
/// bf16 activation pairs from `a`, and a panel of 32 weight columns `w` (pair-major, 32
/// columns per pair), over `k_tiles` x 16 input pairs. An activation tile's rows are
/// `a_stride` u32 apart; the next tile over the inputs starts `k_step` u32 on, the second row
/// tile `tile_step` u32 on (rows as they are: 16, 16 * a_stride; packed tile after tile, each
/// 1 KiB in one piece: 16, 256, and the tiles of a row's inputs x 256).
#[derive(Clone, Copy)]
pub struct Bf16Operands {
    pub a: *const u32,
    pub a_stride: usize,
    pub k_step: usize,
    pub tile_step: usize,
    pub row_tiles: usize,
    pub k_tiles: usize,
    pub w: *const u32,
}

/// The tile registers of this thread, configured for one kind of product; released on drop.
pub struct Tiles {
    /// Tile state is per thread: not Send.
    _thread: PhantomData<*const ()>,
}

impl Tiles {
    /// bf16 products: activation tiles of 16 rows x 16 input pairs, weight tiles of 16 pairs x
    /// 16 columns (64 bytes each way).
    pub fn bf16() -> Tiles {
        Self::configure(&config())
    }

    /// int8 products of activations in two halves (`int8_halves_accumulate`): activation
    /// tiles of 16 rows x 64 inputs, weight tiles of 16 groups of 4 inputs x 16 columns (the
    /// same shapes as bf16's).
    pub fn int8_halves() -> Tiles {
        Self::configure(&config())
    }

    fn configure(config: &TileConfig) -> Tiles {
        assert!(available(), "AMX tiles are not available");
        // SAFETY: the CPU has AMX-TILE and this process may use the tile data (asserted);
        // `config` is a valid 64-byte palette-1 configuration (every tile within 16 rows x 64
        // bytes), read only.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) config as *const TileConfig, options(nostack, readonly));
        }
        Tiles {
            _thread: PhantomData,
        }
    }

    /// `c` (16 or 32 rows x 32 f32, `c_stride` bytes apart) := `start` + the product of
    /// `row_tiles` (1 or 2) x 16 rows of `a` and a panel of 32 columns `w`, over `k_tiles` x 16
    /// input pairs. A product split over chunks of its inputs (chunks whose operands stay in
    /// the caches) starts each chunk from the sums the last one stored ([`Start::Sums`]); the
    /// first chunk starts from the bias ([`Start::Row`]), and the last may store into the
    /// output itself.
    ///
    /// # Safety
    /// `self` must come from [`Tiles::bf16`]. Of the operands, `a` must be readable for the
    /// `row_tiles` x `k_tiles` tiles of 16 rows of 16 u32 that [`Bf16Operands`] places; `w` for `k_tiles * 16` x 32
    /// u32; `start`'s pointer as [`Start`] says; `c` writable for `16 * row_tiles` rows of 32
    /// f32, `c_stride` bytes apart, which nothing else accesses during the call.
    pub unsafe fn bf16_accumulate(
        &self,
        operands: &Bf16Operands,
        start: Start,
        c: *mut f32,
        c_stride: usize,
    ) {
        let Bf16Operands {
            a,
            a_stride,
            k_step,
            tile_step,
            row_tiles,
            k_tiles,
            w,
        } = *operands;
        let a_bytes = a_stride * 4;
        // SAFETY: the tiles are configured for bf16 (16 x 64 bytes each, the caller's
        // guarantee). The starting loads read 16 rows of 64 bytes at row 16t, column 16h of
        // `start`'s sums (t < row_tiles, h < 2) or the 64 bytes at column 16h of its row (stride
        // 0: every row of the tile the same); the stores write the same places of `c`: inside
        // what the caller lets us read and write. Activation tile (t, k) reads 16 rows of 64 bytes,
        // `a_stride` u32 apart, at t * tile_step + k * k_step u32 of `a`, weight tile (k, h)
        // pair 16k, column 16h of `w` (stride 128 bytes): inside them for k < k_tiles.
        unsafe {
            let c2 = c.cast::<u8>().add(16 * c_stride);
            let (from, from_stride) = match start {
                Start::Zero => (std::ptr::null(), 0),
                Start::Row(row) => (row, 0),
                Start::Sums(sums, stride) => (sums, stride),
            };
            if from.is_null() {
                zero_results();
            } else {
                asm!(
                    "tileloadd tmm0, [{c} + {s}*1]",
                    "tileloadd tmm1, [{c} + {s}*1 + 64]",
                    c = in(reg) from, s = in(reg) from_stride,
                    options(nostack, readonly),
                );
                if row_tiles == 2 {
                    // The second row tile's sums start 16 rows down (a row: the same row).
                    let from2 = from.cast::<u8>().add(16 * from_stride);
                    asm!(
                        "tileloadd tmm2, [{c} + {s}*1]",
                        "tileloadd tmm3, [{c} + {s}*1 + 64]",
                        c = in(reg) from2, s = in(reg) from_stride,
                        options(nostack, readonly),
                    );
                }
            }
            for k in 0..k_tiles {
                let wk = w.add(k * BF16_PAIRS_PER_TILE * 32);
                let ak = a.add(k * k_step);
                asm!(
                    "tileloadd tmm6, [{w} + {ws}*1]",
                    "tileloadd tmm4, [{a} + {as_}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{w} + {ws}*1 + 64]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    w = in(reg) wk,
                    ws = in(reg) 128usize,
                    a = in(reg) ak,
                    as_ = in(reg) a_bytes,
                    options(nostack, readonly),
                );
                if row_tiles == 2 {
                    asm!(
                        "tileloadd tmm5, [{a} + {as_}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a = in(reg) ak.add(tile_step),
                        as_ = in(reg) a_bytes,
                        options(nostack, readonly),
                    );
                }
            }
            asm!(
                "tilestored [{c} + {s}*1], tmm0",
                "tilestored [{c} + {s}*1 + 64], tmm1",
                c = in(reg) c, s = in(reg) c_stride,
                options(nostack),
            );
            if row_tiles == 2 {
                asm!(
                    "tilestored [{c} + {s}*1], tmm2",
                    "tilestored [{c} + {s}*1 + 64], tmm3",
                    c = in(reg) c2, s = in(reg) c_stride,
                    options(nostack),
                );
            }
        }
    }

    /// The int8 product of one tile of 16 activation rows, each held as two signed-byte halves
    /// (`q = 128 hi + lo`, `x86::int8_tiles`), and a panel of 32 weight columns, over `k_steps`
    /// x 64 inputs: `sums` (16 rows x 32 i32 of `Σ hi·w`, then 16 rows x 32 of `Σ lo·w`; rows
    /// 128 bytes apart) := (`from_sums`: `sums` +) the two products, exact in i32. Four result
    /// tiles (hi and lo, two column halves each) take the four products of each step's two
    /// activation tiles and two weight tiles.
    ///
    /// # Safety
    /// `self` must come from [`Tiles::int8_halves`]. `a` must be readable for `k_steps` x 2 KiB:
    /// per step the hi tile then the lo tile, each 16 rows of 64 bytes in one piece; `w` for
    /// `k_steps` x 16 groups of 4 inputs x 32 columns x 4 bytes (128-byte rows); `sums` readable
    /// and writable for 2 x 16 x 32 i32, which nothing else accesses during the call.
    pub unsafe fn int8_halves_accumulate(
        &self,
        a: *const i8,
        w: *const i8,
        k_steps: usize,
        from_sums: bool,
        sums: *mut i32,
    ) {
        // SAFETY: the tiles are configured for 16 rows x 64 bytes each (the caller's
        // guarantee). The sums' loads and stores touch 16 rows of 64 bytes, 128 apart, at byte
        // 0, 64, 2048 and 2112 of `sums` (2 x 16 x 32 i32); step k's activation loads read
        // 2 KiB at byte 2048k of `a`, its weight loads 16 rows of 64 bytes, 128 apart, at
        // byte 2048k (+ 64) of `w`: inside what the caller lets us read and write.
        unsafe {
            let lo = sums.add(TILE_ROWS * 32);
            if from_sums {
                asm!(
                    "tileloadd tmm0, [{hi} + {s}*1]",
                    "tileloadd tmm1, [{hi} + {s}*1 + 64]",
                    "tileloadd tmm2, [{lo} + {s}*1]",
                    "tileloadd tmm3, [{lo} + {s}*1 + 64]",
                    hi = in(reg) sums, lo = in(reg) lo, s = in(reg) 128usize,
                    options(nostack, readonly),
                );
            } else {
                zero_results();
            }
            for k in 0..k_steps {
                asm!(
                    "tileloadd tmm6, [{w} + {ws}*1]",
                    "tileloadd tmm4, [{a} + {as_}*1]",
                    "tdpbssd tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{w} + {ws}*1 + 64]",
                    "tdpbssd tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a} + {as_}*1 + 1024]",
                    "tdpbssd tmm2, tmm5, tmm6",
                    "tdpbssd tmm3, tmm5, tmm7",
                    w = in(reg) w.add(k * 2048),
                    ws = in(reg) 128usize,
                    a = in(reg) a.add(k * 2048),
                    as_ = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{hi} + {s}*1], tmm0",
                "tilestored [{hi} + {s}*1 + 64], tmm1",
                "tilestored [{lo} + {s}*1], tmm2",
                "tilestored [{lo} + {s}*1 + 64], tmm3",
                hi = in(reg) sums, lo = in(reg) lo, s = in(reg) 128usize,
                options(nostack),
            );
        }
    }
}

/// Result tiles 0-3 := 0.
///
/// # Safety
/// The tiles must be configured on this thread ([`Tiles`]).
unsafe fn zero_results() {
    // SAFETY: configured tiles (the caller's guarantee); `tilezero` touches no memory.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: this thread configured the tiles (a `Tiles` exists only after `ldtilecfg`);
        // `tilerelease` returns them to the init state and touches no memory.
        unsafe {
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}
