//! Shared pieces of every stage: the stage contract ([`Stage`]), the table formats that stages
//! pass to each other as Parquet ([`table`]) and the naming conventions of their columns and ids,
//! file helpers for atomic publication ([`fsutil`]), the error type ([`Error`]), and the numerics
//! that several stages share ([`matrix`]: matrix, standardiser, L2 normalisation; [`metrics`]:
//! accuracy, macro-F1, confusion). Stages depend on this crate; it depends on no stage, and on
//! nothing heavy (no candle, no polars).

pub mod error;
pub mod folds;
pub mod fsutil;
pub mod image;
pub mod layers;
pub mod matrix;
pub mod metrics;
pub mod progress;
pub mod saved;
pub mod stage;
pub mod table;

pub use error::{Error, Result};
pub use layers::{LayerIndex, Layers};
pub use matrix::{ConstantColumn, Matrix, Standardizer, argmax, l2_normalize_rows};
pub use progress::Progress;
pub use saved::{
    SavedTensors, TensorValues, load_json, save_json, save_tensors, save_typed_tensors,
};
pub use stage::{
    Apply, ApplyEnv, Arity, Context, Env, External, Input, Rows, Stage, StoreReady, Summary,
    resolve_path, stage_seed,
};
pub use table::{
    EmbeddingTable, EmbeddingWriter, Precision, Predictions, SparseTable, TextTable, UNLABELLED,
    VectorColumn, augmented_id, augmented_source, for_each_embedding_chunk, layer_column,
    parse_layer_column, parse_predictions_file, predictions_file, read_embedding_table,
    read_predictions, read_sparse_table, read_text_table, sparse_column, table_rows,
    write_embedding_table, write_predictions, write_sparse_table, write_text_table,
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
