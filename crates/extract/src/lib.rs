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
