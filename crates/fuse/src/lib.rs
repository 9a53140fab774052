//! Fusion stages of LLMEmbed.
//!
//! * [`Fuse`] (`kind: fuse`): one or more embedding artifacts (per-layer vectors from `extract`)
//!   to one vector per row: mean / max / concat over layers, a learned softmax-weighted sum of
//!   layers, or the paper's co-occurrence pooling. See the [`fuse`](Fuse) docs for exactly what
//!   each method does with several sources.
//! * [`Tfidf`] (`kind: tfidf`): the no-LLM baseline, scikit-learn-compatible TF-IDF features of a
//!   text artifact.
//!
//! Both write `EmbeddingTable`s with one column `embedding` per split.

mod align;
mod fuse;
mod model;
mod ops;
mod params;
mod select;
mod tfidf;
mod weighted;

pub use fuse::Fuse;
pub use llmembed_core::Layers;
pub use params::{
    CooccurrenceParams, FuseParams, Gram, Method, Normalize, SourceSpec, WeightedParams,
};
pub use tfidf::{Tfidf, TfidfParams};
