//! CPU kernels for frozen-model inference, behind a small safe API. This crate knows nothing of
//! models, files or stages: it multiplies matrices, runs row-wise steps and attends over packed
//! sequences of f32 rows, and it is the one crate of the workspace where `unsafe` is allowed.
//!
//! * [`matmul`]: `x @ w` with weights packed once. f32 ([`PackedF32`]): the AVX-512 FMA panel
//!   kernel, or candle's matmul on CPUs without AVX-512. bf16 inputs with f32 sums
//!   ([`PackedBf16`]): AMX tiles, AVX512-BF16 pair dot products, or the f32 products of the
//!   rounded values, the first this CPU has ([`Bf16Kernel::detect`]; `LLMEMBED_NO_AMX=1` and
//!   `LLMEMBED_NO_AVX512BF16=1` turn the first two off). int8 ([`PackedI8`]): weights
//!   quantised per output column at pack time, activations per row at each product, exact int32
//!   sums by AVX512-VNNI `vpdpbusd` or a portable loop (the same bits), outlier channels of a
//!   row in f32 ([`Outliers`]). Each has `matmul_gated`: a gated MLP's gate and up products
//!   and its activation in one pass ([`interleave_gate_up`], [`Gated`]); bf16 and int8 also
//!   `matmul_mlp`, the whole MLP (on AMX the activation runs in the down product's layout of
//!   its input).
//! * [`Rows`]: RMSNorm, LayerNorm, residual add (fused with the next RMSNorm or LayerNorm),
//!   bias, SiLU, GELU (tanh and erf forms) and the gated MLP activation, on (rows, width) f32
//!   slices, split across rayon's threads.
//! * [`attention`]: causal or bidirectional self-attention over sequences packed row after row
//!   (q/k RMSNorm, RoPE, sliding windows, grouped kv heads, a relative position bias), one task
//!   per sequence.
//! * [`LineAligned`]: mimalloc with large blocks on cache lines, which binaries
//!   register so that AMX tiles store products straight into their outputs;
//!   [`return_freed_pages`], called before a model loads, returns what is free and what the
//!   load frees as it goes; [`keep_freed_pages`], called once it has loaded, keeps the pages
//!   batches free, and called again when the model is dropped, returns them.
//! * [`Isa`]: the instruction-set level the row and attention kernels run at. Every level gives
//!   the same bits (the AVX-512 copies are the same source compiled wider).
//!
//! Numerics, the contract the extract store relies on: every output value is one f32 chain in a
//! fixed order that depends neither on the batch, nor on a row's position in it, nor on the
//! thread split, so a text's vectors do not depend on its neighbours. The matrix kernels'
//! orders are stated in `matmul` and asserted bit for bit in `tests/matmul.rs`.
//!
//! Layout: one file per instruction set behind the portable code, as candle's `cpu/` does:
//! `matmul/panels/avx512.rs` (f32 FMA, `vdpbf16ps` and `vpdpbusd` micro-kernels),
//! `matmul/panels/avx2.rs` (f32 FMA and `vpmaddwd`), `matmul/amx.rs` (`tdpbf16ps` and `tdpbusd`
//! tiles, inline assembly), `attention/avx512.rs`; the row kernels are one portable source
//! compiled for three levels (`isa.rs`: baseline, AVX2 + FMA, AVX-512).

mod alloc;
pub mod attention;
mod isa;
pub mod matmul;
mod rows;

pub use alloc::{LineAligned, keep_freed_pages, return_freed_pages};
pub use isa::Isa;
pub use matmul::{
    Bf16Kernel, F32Kernel, Gated, I8Kernel, Outliers, PackedBf16, PackedF32, PackedI8,
    gate_up_column, gated_width, interleave_gate_up,
};
pub use rows::Rows;

/// The kernels this CPU gets, as `llmembed --version` and `run.json` name them: the f32 and
/// bf16 matrix products and the level of the row and attention kernels.
pub fn in_use() -> String {
    format!(
        "f32 matmul {}, bf16 matmul {}, int8 matmul {}, row kernels {}",
        F32Kernel::detect().name(),
        Bf16Kernel::detect().name(),
        I8Kernel::detect().name(),
        Isa::best().name()
    )
}

/// A kernel that could not run: what it was doing (`op`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct Error {
    /// What the kernel was doing (`pack f32 weights`, `bf16 matmul`, ...).
    pub op: &'static str,
    pub message: String,
}

impl Error {
    pub(crate) fn new(op: &'static str, message: impl std::fmt::Display) -> Error {
        Error {
            op,
            message: message.to_string(),
        }
    }

    /// A candle error on one line (candle appends a backtrace on further lines when
    /// `RUST_BACKTRACE` is set).
    pub(crate) fn candle(op: &'static str, e: &candle_core::Error) -> Error {
        let text = e.to_string();
        Error::new(op, text.lines().next().unwrap_or_default())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
