//! `x @ w` for weights packed once: [`PackedF32`] (`compute: f32`) and [`PackedBf16`]
//! (`compute: bf16`). Each names the kernel it packed for ([`F32Kernel`], [`Bf16Kernel`]):
//! kernels differ in their summation order, so in the last bits of their results.

mod bf16;
mod f32;
mod panels;

pub use bf16::{Bf16Cpu, Bf16Kernel, PackedBf16, Switches, bf16_round};
pub use f32::{F32Kernel, PackedF32};
