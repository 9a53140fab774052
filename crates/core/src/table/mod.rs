//! The three table shapes that flow between stages, and their Parquet encoding.
//!
//! * [`TextTable`]: `id`, `text`, `label`, `source_id`, `augment_ops` (ingest and augment).
//! * [`EmbeddingTable`]: `id`, `label`, then one `FixedSizeList<Float32|Float16>` column per
//!   vector (extract, fuse, contrastive). polars reads these as `Array(Float32, dim)`, pyarrow as
//!   `fixed_size_list<float>`.
//! * [`Predictions`]: `id`, `label`, `pred`, `probs` (classify).
//! * [`SparseTable`]: `id`, `label`, one `List<Struct<index, value>>` column (tfidf): the
//!   non-zero entries of wide vectors, width in the schema metadata.
//!
//! Every file carries the class names in the Parquet/Arrow schema metadata under
//! [`LABEL_NAMES_KEY`] (a JSON array), so label names travel with the data.

mod names;
mod read;
mod sparse;
mod types;
mod write;

pub use names::{
    augmented_id, augmented_source, layer_column, parse_layer_column, parse_predictions_file,
    predictions_file,
};
pub use read::{
    embedding_columns, for_each_embedding_chunk, read_embedding_table, read_predictions,
    read_text_table, table_rows,
};
pub use sparse::{
    SPARSE_DIM_KEY, SparseTable, read_sparse_table, sparse_column, write_sparse_table,
};
pub use types::{
    EmbeddingTable, LABEL_NAMES_KEY, PRODUCER_KEY, Precision, Predictions, TextTable, UNLABELLED,
    VectorColumn,
};
pub use write::{EmbeddingWriter, write_embedding_table, write_predictions, write_text_table};

#[cfg(test)]
mod tests;
