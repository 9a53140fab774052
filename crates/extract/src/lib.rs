//! The `extract` stage: a frozen model turns each text into the mean-pooled (or first/last
//! token) hidden states of the requested layers, one `layer_<i>` column each.
//!
//! * [`Extract`] / [`ExtractParams`]: the stage (see `stage.rs`).
//! * Models: decoders from GGUF (`model/`), the BERT encoder from safetensors (`bert.rs`), behind
//!   [`Embedder`]; [`load`] picks the architecture from the file.
//! * Sources (`source.rs`): presets pinned to PyPI packages + sha256, PyPI, hub cache, local.
//! * The store (`store.rs`): per model fingerprint, shards of text-hash -> vectors, so that texts
//!   are embedded once and interrupted runs resume byte-identically.

mod bert;
pub mod model;
mod source;
mod stage;
mod store;

pub use llmembed_core::Layers;
pub use model::{ComputeDtype, Embedder, LoadSpec, Pooling, Tap, load};
pub use source::{HubSpec, LocalSpec, ModelParam, ModelSpec, PypiSpec, fetch_preset};
pub use stage::{Extract, ExtractParams};

/// The kernels extraction picks on this CPU, as `--version` prints them: the f32 and bf16
/// matrix products and the row kernels (norms, softmax, activations).
pub fn kernels_in_use() -> String {
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    format!(
        "f32 matmul {}, bf16 matmul {}, row kernels {}",
        if avx512 { "avx512" } else { "candle" },
        model::bf16mm::Bf16Kernel::detect().name(),
        if avx512 { "avx512" } else { "baseline" },
    )
}
