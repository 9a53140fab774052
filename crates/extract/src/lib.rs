//! The `extract` stage: a frozen model turns each text into the mean-pooled (or first/last
//! token) hidden states of the requested layers, one `layer_<i>` column each.
//!
//! * [`Extract`] / [`ExtractParams`]: the stage (see `stage.rs`).
//! * Models (`model/`): decoders from GGUF or safetensors, the BERT encoder from safetensors,
//!   behind [`Embedder`] (`embedder.rs`); [`load`] picks the architecture from the file. The
//!   arithmetic is the `llmembed-kernels` crate's.
//! * Sources (`source/`): presets pinned to PyPI packages + sha256, PyPI, hub cache, local.
//! * The store (`store.rs`): per model fingerprint, shards of text-hash -> vectors, so that texts
//!   are embedded once and interrupted runs resume byte-identically; claims on its shards
//!   (`claims.rs`) let several processes share one plan, and `progress.rs` shows them.

mod apply;
mod batch;
mod claims;
mod embedder;
pub mod model;
mod params;
mod progress;
mod prompt;
mod source;
mod stage;
mod store;

pub use embedder::{ComputeDtype, Embedder, IdsOffsets, LoadSpec, MeanOver, Pooling, Tap};
pub use llmembed_core::Layers;
pub use model::load;
pub use params::ExtractParams;
pub use prompt::Tokens;
pub use source::{HubSpec, LocalSpec, ModelParam, ModelSpec, PypiSpec, fetch_preset};
pub use stage::Extract;
