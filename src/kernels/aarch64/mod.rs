//! Kernels for 64-bit Arm beyond what the compiler vectorizes from the portable loops: each
//! behind a run-time check of the instructions it needs.

pub mod int8_dot;
pub mod quant_dot;
