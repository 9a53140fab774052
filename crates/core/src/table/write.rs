//! Parquet encoding of the tables: Snappy, a fixed `created_by`, written atomically.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float16Array, Float32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::types::*;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

pub(super) fn writer_props() -> WriterProperties {
    props_builder().build()
}

fn props_builder() -> parquet::file::properties::WriterPropertiesBuilder {
    // Snappy: cheap to decode, and embeddings do not compress much anyway. A fixed
    // `created_by` keeps the bytes identical across parquet crate patch releases.
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by("llmembed".to_string())
}

pub(super) fn schema_with_labels(
    fields: Vec<Field>,
    label_names: &[String],
    extra: &[(&str, String)],
) -> SchemaRef {
    let mut meta = HashMap::new();
    meta.insert(
        LABEL_NAMES_KEY.to_string(),
        serde_json::to_string(label_names).expect("label names serialize"),
    );
    for (k, v) in extra {
        meta.insert(k.to_string(), v.clone());
    }
    Arc::new(Schema::new_with_metadata(fields, meta))
}

pub(super) fn write_batches(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    write_atomic(path, |out| {
        let mut writer = ArrowWriter::try_new(out, schema.clone(), Some(writer_props()))
            .map_err(|e| Error::parquet("create writer for", path, e))?;
        for batch in batches {
            writer
                .write(batch)
                .map_err(|e| Error::parquet("write", path, e))?;
        }
        writer
            .close()
            .map_err(|e| Error::parquet("close", path, e))?;
        Ok(())
    })
}

fn vector_field(name: &str, dim: usize, precision: Precision) -> Field {
    let item = match precision {
        Precision::F32 => DataType::Float32,
        Precision::F16 => DataType::Float16,
    };
    Field::new(
        name,
        DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), dim as i32),
        false,
    )
}

fn vector_array(col: &VectorColumn, precision: Precision) -> ArrayRef {
    let field = match precision {
        Precision::F32 => Arc::new(Field::new("item", DataType::Float32, false)),
        Precision::F16 => Arc::new(Field::new("item", DataType::Float16, false)),
    };
    let values: ArrayRef = match precision {
        Precision::F32 => Arc::new(Float32Array::from(col.values.clone())),
        Precision::F16 => Arc::new(Float16Array::from(
            col.values
                .iter()
                .map(|&v| half::f16::from_f32(v))
                .collect::<Vec<_>>(),
        )),
    };
    Arc::new(FixedSizeListArray::new(field, col.dim as i32, values, None))
}

pub(super) fn string_array(values: &[String]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values.iter()))
}

fn opt_string_array(values: &[Option<String>]) -> ArrayRef {
    Arc::new(StringArray::from_iter(values.iter().map(|v| v.as_deref())))
}

pub fn write_text_table(path: &Path, table: &TextTable) -> Result<()> {
    let fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("label", DataType::Int64, false),
        Field::new("source_id", DataType::Utf8, true),
        Field::new("augment_ops", DataType::Utf8, true),
    ];
    let schema = schema_with_labels(fields, &table.label_names, &[]);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            string_array(&table.ids),
            string_array(&table.texts),
            Arc::new(Int64Array::from(table.labels.clone())),
            opt_string_array(&table.source_ids),
            opt_string_array(&table.augment_ops),
        ],
    )
    .map_err(|e| Error::parquet("build batch for", path, e))?;
    write_batches(path, schema, &[batch])
}

/// Writes an embedding table in one go. Large tables can use [`EmbeddingWriter`] instead.
pub fn write_embedding_table(
    path: &Path,
    table: &EmbeddingTable,
    precision: Precision,
) -> Result<()> {
    let mut writer = EmbeddingWriter::create(
        path,
        &table.label_names,
        &table
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.dim))
            .collect::<Vec<_>>(),
        precision,
    )?;
    writer.write(table)?;
    writer.finish()
}

/// Buffered bytes at which [`EmbeddingWriter`] closes a row group. The writer keeps a row group's
/// encoded pages in memory until it closes it, so this bounds its memory; a table smaller than
/// this (every table of the small pipelines: 8,794 rows x 19 layers x 640 f32 is 428 MB) stays
/// one row group.
pub const ROW_GROUP_BYTES: usize = 1 << 30;

/// Streams an embedding table to Parquet chunk by chunk, in row groups of about
/// [`ROW_GROUP_BYTES`], publishing it atomically on `finish`.
pub struct EmbeddingWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    schema: SchemaRef,
    columns: Vec<(String, usize)>,
    precision: Precision,
    writer: Option<ArrowWriter<File>>,
}

impl EmbeddingWriter {
    pub fn create(
        path: &Path,
        label_names: &[String],
        columns: &[(String, usize)],
        precision: Precision,
    ) -> Result<Self> {
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("label", DataType::Int64, false),
        ];
        fields.extend(
            columns
                .iter()
                .map(|(name, dim)| vector_field(name, *dim, precision)),
        );
        let schema = schema_with_labels(fields, label_names, &[]);
        let tmp = crate::fsutil::temp_path_for(path);
        let file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        // No dictionary encoding: vector values (and ids) hardly repeat, and trying to build
        // one hashed every value of every vector (a shard of SmolLM2's 31 taps for 500 texts
        // took 0.55 s to write with it, 0.24 s without; the values read back the same).
        let props = props_builder().set_dictionary_enabled(false).build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::parquet("create writer for", path, e))?;
        Ok(EmbeddingWriter {
            path: path.to_path_buf(),
            tmp,
            schema,
            columns: columns.to_vec(),
            precision,
            writer: Some(writer),
        })
    }

    /// Appends the rows of `chunk`, whose columns must match the ones given to `create`.
    pub fn write(&mut self, chunk: &EmbeddingTable) -> Result<()> {
        let names: Vec<(String, usize)> = chunk
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.dim))
            .collect();
        if names != self.columns {
            return Err(Error::mismatch(
                "write embedding chunk",
                format!(
                    "columns {names:?} differ from the table's {:?}",
                    self.columns
                ),
            ));
        }
        let mut arrays: Vec<ArrayRef> = vec![
            string_array(&chunk.ids),
            Arc::new(Int64Array::from(chunk.labels.clone())),
        ];
        arrays.extend(
            chunk
                .columns
                .iter()
                .map(|c| vector_array(c, self.precision)),
        );
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::parquet("build batch for", &self.path, e))?;
        let writer = self.writer.as_mut().expect("writer open until finish");
        writer
            .write(&batch)
            .map_err(|e| Error::parquet("write", &self.path, e))?;
        if writer.in_progress_size() >= ROW_GROUP_BYTES {
            writer
                .flush()
                .map_err(|e| Error::parquet("write a row group of", &self.path, e))?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        let writer = self.writer.take().expect("finish called once");
        let file = writer
            .into_inner()
            .map_err(|e| Error::parquet("close", &self.path, e))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync", &self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::io("rename into place", &self.path, e))
    }
}

impl Drop for EmbeddingWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub fn write_predictions(path: &Path, preds: &Predictions) -> Result<()> {
    let c = preds.num_classes();
    if preds.probs.len() != preds.len() * c {
        return Err(Error::mismatch(
            "write predictions",
            format!(
                "{} probabilities for {} rows x {} classes",
                preds.probs.len(),
                preds.len(),
                c
            ),
        ));
    }
    let fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("label", DataType::Int64, false),
        Field::new("pred", DataType::Int64, false),
        vector_field("probs", c, Precision::F32),
    ];
    let schema = schema_with_labels(
        fields,
        &preds.label_names,
        &[(PRODUCER_KEY, preds.producer.clone())],
    );
    let probs = VectorColumn::new("probs", c, preds.probs.clone());
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            string_array(&preds.ids),
            Arc::new(Int64Array::from(preds.labels.clone())),
            Arc::new(Int64Array::from(preds.preds.clone())),
            vector_array(&probs, Precision::F32),
        ],
    )
    .map_err(|e| Error::parquet("build batch for", path, e))?;
    write_batches(path, schema, &[batch])
}
