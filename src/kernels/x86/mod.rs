//! x86-64 only: kernels written with `std::arch::x86_64` intrinsics. Each is compiled for its
//! instruction set with `#[target_feature]` and reached only after a run-time check
//! (`is_x86_feature_detected!`), so the binary still runs on CPUs without them (the callers
//! then take the portable path).

pub mod amx;
pub mod bf16;
pub mod bf16_attention;
pub mod bf16_round;
pub mod bf16_tiles;
pub mod int8;
pub mod int8_avx2;
pub mod int8_tiles;
pub mod quant;
pub mod quant_int8;
pub mod tile_tasks;
pub mod wide;
