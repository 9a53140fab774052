//! `x @ w` for weights packed once: [`PackedF32`] (`compute: f32`), [`PackedBf16`]
//! (`compute: bf16`) and [`PackedI8`] (`compute: int8`). Each names the kernel it packed for
//! ([`F32Kernel`], [`Bf16Kernel`], [`I8Kernel`]):
//! kernels differ in their summation order, so in the last bits of their results.

mod amx;
mod bf16;
mod f32;
mod gated;
mod int8;
mod panels;

pub use bf16::{Bf16Cpu, Bf16Kernel, PackedBf16, bf16_round};
pub use f32::{F32Kernel, PackedF32};
pub use gated::{Gated, gate_up_column, gated_width, interleave_gate_up};
pub use int8::{I8Kernel, Outliers, PackedI8};

/// The environment switches that turn kernels off, to compare them on one machine: set (to
/// anything) means off. Read here only, once per kernel choice ([`Bf16Kernel::detect`],
/// [`I8Kernel::detect`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switches {
    /// `LLMEMBED_NO_AMX`: AMX off, for bf16 and int8 alike.
    pub no_amx: bool,
    /// `LLMEMBED_NO_AVX512BF16`
    pub no_avx512bf16: bool,
    /// `LLMEMBED_NO_AVX512VNNI`
    pub no_avx512vnni: bool,
}

impl Switches {
    /// The switches as `is_set(variable name)` reports them.
    pub fn from_env(is_set: impl Fn(&str) -> bool) -> Switches {
        Switches {
            no_amx: is_set("LLMEMBED_NO_AMX"),
            no_avx512bf16: is_set("LLMEMBED_NO_AVX512BF16"),
            no_avx512vnni: is_set("LLMEMBED_NO_AVX512VNNI"),
        }
    }

    /// The switches of this process's environment.
    pub fn from_process_env() -> Switches {
        Switches::from_env(|var| std::env::var_os(var).is_some())
    }
}

/// `w` (rows of `n`) as rows of 32-bit steps, `per_step` rows to a step: slot `j` of step `s`,
/// column `c`, is `bits(w[per_step * s + j][c])` shifted by `32 / per_step * j` (a missing
/// last row gives zeros), the layout the bf16 (pairs) and int8 (quads, or int16 pairs) kernels
/// read. One step per task on all threads: a model's load is mostly passes like this one over
/// every weight, and one thread made them most of its time.
fn pack_steps<T: Copy + Sync>(
    w: &[T],
    n: usize,
    per_step: usize,
    bits: impl Fn(T) -> u32 + Sync,
) -> Vec<u32> {
    use rayon::prelude::*;
    let steps = (w.len() / n.max(1)).div_ceil(per_step);
    let mut packed = vec![0u32; steps * n];
    packed
        .par_chunks_mut(n.max(1))
        .zip(w.par_chunks(per_step * n.max(1)))
        .for_each(|(dst, rows)| {
            for (slot, values) in rows.chunks_exact(n.max(1)).enumerate() {
                let shift = 32 / per_step * slot;
                for (d, &v) in dst.iter_mut().zip(values) {
                    *d |= bits(v) << shift;
                }
            }
        });
    packed
}

/// The checks every packer makes before it packs: the kernel runs on this CPU, and `w` holds
/// (K, N) values.
fn check_pack(
    op: &'static str,
    kernel: &str,
    runs_here: bool,
    w: &[f32],
    k: usize,
    n: usize,
) -> crate::Result<()> {
    if !runs_here {
        return Err(crate::Error::new(
            op,
            format!("the {kernel} kernel does not run on this CPU"),
        ));
    }
    if w.len() != k * n {
        return Err(crate::Error::new(
            op,
            format!("{} values are not ({k}, {n})", w.len()),
        ));
    }
    Ok(())
}
