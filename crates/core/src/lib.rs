//! Shared pieces of every stage: the stage contract ([`Stage`]), the table formats that stages
//! pass to each other as Parquet ([`table`]), file helpers for atomic publication ([`fsutil`]) and
//! the error type ([`Error`]). Stages depend on this crate; it depends on no stage.

pub mod error;
pub mod fsutil;
pub mod layers;
pub mod progress;
pub mod stage;
pub mod table;

pub use error::{Error, Result};
pub use layers::Layers;
pub use progress::Progress;
pub use stage::{Arity, Context, Env, External, Input, Stage, Summary, resolve_path};
pub use table::{
    EmbeddingTable, EmbeddingWriter, Precision, Predictions, TextTable, VectorColumn,
    read_embedding_table, read_predictions, read_text_table, write_embedding_table,
    write_predictions, write_text_table,
};

/// A random generator for one purpose within a stage, seeded from the pipeline's seed. Deriving
/// a separate stream per purpose keeps, say, the sampling of one split independent of another.
pub fn seeded_rng(seed: u64, purpose: &str) -> rand_chacha::ChaCha8Rng {
    use rand_chacha::rand_core::SeedableRng;
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(purpose.as_bytes());
    rand_chacha::ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}
