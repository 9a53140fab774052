//! The three table shapes that flow between stages, and their Parquet encoding.
//!
//! * [`TextTable`]: `id`, `text`, `label`, `source_id`, `augment_ops` (ingest and augment).
//! * [`EmbeddingTable`]: `id`, `label`, then one `FixedSizeList<Float32|Float16>` column per
//!   vector (extract, fuse, contrastive). polars reads these as `Array(Float32, dim)`, pyarrow as
//!   `fixed_size_list<float>`.
//! * [`Predictions`]: `id`, `label`, `pred`, `probs` (classify).
//!
//! Every file carries the class names in the Parquet/Arrow schema metadata under
//! [`LABEL_NAMES_KEY`] (a JSON array), so label names travel with the data.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, Int64Array, RecordBatch,
    StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

pub const LABEL_NAMES_KEY: &str = "llmembed.label_names";
/// Free-form name of what produced a predictions table (a classifier or an ensemble).
pub const PRODUCER_KEY: &str = "llmembed.producer";

/// A split of a text dataset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextTable {
    /// Stable row ids, unique within the table.
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    /// Class index into `label_names`.
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    /// For augmented rows, the id of the row they were made from.
    pub source_ids: Vec<Option<String>>,
    /// For augmented rows, the operations applied (e.g. `"synonym,swap"`).
    pub augment_ops: Vec<Option<String>>,
}

impl TextTable {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// A table of original rows (no augmentation provenance).
    pub fn new(
        ids: Vec<String>,
        texts: Vec<String>,
        labels: Vec<i64>,
        label_names: Vec<String>,
    ) -> Self {
        let n = ids.len();
        TextTable {
            ids,
            texts,
            labels,
            label_names,
            source_ids: vec![None; n],
            augment_ops: vec![None; n],
        }
    }
}

/// A matrix of `rows x dim` f32 values, row-major: one vector per table row.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorColumn {
    pub name: String,
    pub dim: usize,
    pub values: Vec<f32>,
}

impl VectorColumn {
    pub fn new(name: impl Into<String>, dim: usize, values: Vec<f32>) -> Self {
        assert!(
            dim > 0 && values.len().is_multiple_of(dim),
            "vector column shape"
        );
        VectorColumn {
            name: name.into(),
            dim,
            values,
        }
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// How vectors are stored on disk. In memory they are always f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

/// Vectors for a split, keyed by row id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbeddingTable {
    pub ids: Vec<String>,
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    pub columns: Vec<VectorColumn>,
}

impl EmbeddingTable {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn column(&self, name: &str) -> Option<&VectorColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }
}

/// Class predictions for a split.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predictions {
    pub ids: Vec<String>,
    /// True labels.
    pub labels: Vec<i64>,
    pub preds: Vec<i64>,
    /// `rows x label_names.len()` class probabilities, row-major.
    pub probs: Vec<f32>,
    pub label_names: Vec<String>,
    /// What produced these predictions (shown in reports).
    pub producer: String,
}

impl Predictions {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.label_names.len()
    }

    pub fn row_probs(&self, i: usize) -> &[f32] {
        let c = self.num_classes();
        &self.probs[i * c..(i + 1) * c]
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

fn writer_props() -> WriterProperties {
    // Snappy: cheap to decode, and embeddings do not compress much anyway. A fixed
    // `created_by` keeps the bytes identical across parquet crate patch releases.
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by("llmembed".to_string())
        .build()
}

fn schema_with_labels(
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

fn write_batches(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
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

fn string_array(values: &[String]) -> ArrayRef {
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

/// Streams an embedding table to Parquet chunk by chunk, publishing it atomically on `finish`.
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
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_props()))
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
            .map_err(|e| Error::parquet("write", &self.path, e))
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

// ---------------------------------------------------------------------------------------------
// Reading

struct Loaded {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

fn load(path: &Path, columns: Option<&[&str]>) -> Result<Loaded> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parquet("read", path, e))?;
    let schema = builder.schema().clone();
    let builder = match columns {
        None => builder,
        Some(wanted) => {
            let mut indices = Vec::new();
            for name in wanted {
                let idx = schema
                    .index_of(name)
                    .map_err(|_| Error::schema(path, name, "missing"))?;
                indices.push(idx);
            }
            let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
            builder.with_projection(mask)
        }
    };
    let reader = builder
        .with_batch_size(8192)
        .build()
        .map_err(|e| Error::parquet("read", path, e))?;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch.map_err(|e| Error::parquet("read", path, e))?);
    }
    Ok(Loaded { schema, batches })
}

fn label_names_of(path: &Path, schema: &Schema) -> Result<Vec<String>> {
    let raw = schema
        .metadata()
        .get(LABEL_NAMES_KEY)
        .ok_or_else(|| Error::schema(path, "label", format!("no `{LABEL_NAMES_KEY}` metadata")))?;
    serde_json::from_str(raw)
        .map_err(|e| Error::schema(path, "label", format!("bad `{LABEL_NAMES_KEY}`: {e}")))
}

fn column<'a>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::schema(path, name, "missing"))
}

fn strings(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<Option<String>>> {
    let mut out = Vec::new();
    for batch in batches {
        let arr = column(path, batch, name)?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::schema(path, name, "expected utf8"))?;
        out.extend(arr.iter().map(|v| v.map(str::to_string)));
    }
    Ok(out)
}

fn required_strings(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<String>> {
    strings(path, batches, name)?
        .into_iter()
        .enumerate()
        .map(|(row, v)| v.ok_or_else(|| Error::row(path, row, name, "null")))
        .collect()
}

fn int64s(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for batch in batches {
        let arr = column(path, batch, name)?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::schema(path, name, "expected int64"))?;
        if arr.null_count() > 0 {
            let row = out.len() + (0..arr.len()).find(|&i| arr.is_null(i)).unwrap_or(0);
            return Err(Error::row(path, row, name, "null"));
        }
        out.extend(arr.values().iter().copied());
    }
    Ok(out)
}

fn vectors(path: &Path, batches: &[RecordBatch], name: &str) -> Result<VectorColumn> {
    let mut values = Vec::new();
    let mut dim = 0usize;
    for batch in batches {
        let arr = column(path, batch, name)?
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| Error::schema(path, name, "expected a fixed-size list of floats"))?;
        dim = arr.value_length() as usize;
        let inner = arr.values();
        // Slice to the rows of this array (it may be an offset view).
        let start = arr.offset() * dim;
        let len = arr.len() * dim;
        if let Some(f) = inner.as_any().downcast_ref::<Float32Array>() {
            values.extend_from_slice(&f.values()[start..start + len]);
        } else if let Some(h) = inner.as_any().downcast_ref::<Float16Array>() {
            values.extend(h.values()[start..start + len].iter().map(|v| v.to_f32()));
        } else {
            return Err(Error::schema(
                path,
                name,
                "expected float32 or float16 items",
            ));
        }
    }
    if dim == 0 {
        return Err(Error::schema(path, name, "empty vectors"));
    }
    Ok(VectorColumn::new(name, dim, values))
}

pub fn read_text_table(path: &Path) -> Result<TextTable> {
    let loaded = load(path, None)?;
    let b = &loaded.batches;
    let n = b.iter().map(|x| x.num_rows()).sum::<usize>();
    let optional = |name: &str| -> Result<Vec<Option<String>>> {
        if loaded.schema.index_of(name).is_ok() {
            strings(path, b, name)
        } else {
            Ok(vec![None; n])
        }
    };
    Ok(TextTable {
        ids: required_strings(path, b, "id")?,
        texts: required_strings(path, b, "text")?,
        labels: int64s(path, b, "label")?,
        label_names: label_names_of(path, &loaded.schema)?,
        source_ids: optional("source_id")?,
        augment_ops: optional("augment_ops")?,
    })
}

/// Names of the vector columns of an embedding file, without reading its data.
pub fn embedding_columns(path: &Path) -> Result<Vec<(String, usize)>> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parquet("read", path, e))?;
    Ok(builder
        .schema()
        .fields()
        .iter()
        .filter_map(|f| match f.data_type() {
            DataType::FixedSizeList(_, n) => Some((f.name().clone(), *n as usize)),
            _ => None,
        })
        .collect())
}

/// Reads an embedding file; `columns` picks vector columns (all when `None`).
pub fn read_embedding_table(path: &Path, columns: Option<&[&str]>) -> Result<EmbeddingTable> {
    let names: Vec<String> = match columns {
        Some(c) => c.iter().map(|s| s.to_string()).collect(),
        None => embedding_columns(path)?
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
    };
    let mut wanted: Vec<&str> = vec!["id", "label"];
    wanted.extend(names.iter().map(String::as_str));
    let loaded = load(path, Some(&wanted))?;
    let b = &loaded.batches;
    let mut cols = Vec::new();
    for name in &names {
        cols.push(vectors(path, b, name)?);
    }
    Ok(EmbeddingTable {
        ids: required_strings(path, b, "id")?,
        labels: int64s(path, b, "label")?,
        label_names: label_names_of(path, &loaded.schema)?,
        columns: cols,
    })
}

pub fn read_predictions(path: &Path) -> Result<Predictions> {
    let loaded = load(path, None)?;
    let b = &loaded.batches;
    let label_names = label_names_of(path, &loaded.schema)?;
    let probs = vectors(path, b, "probs")?;
    if probs.dim != label_names.len() {
        return Err(Error::schema(
            path,
            "probs",
            format!(
                "{} probabilities per row for {} classes",
                probs.dim,
                label_names.len()
            ),
        ));
    }
    Ok(Predictions {
        ids: required_strings(path, b, "id")?,
        labels: int64s(path, b, "label")?,
        preds: int64s(path, b, "pred")?,
        probs: probs.values,
        label_names,
        producer: loaded
            .schema
            .metadata()
            .get(PRODUCER_KEY)
            .cloned()
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn text_table_round_trips_with_label_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let mut t = TextTable::new(
            vec!["r0".into(), "r1".into()],
            vec!["héllo".into(), "world".into()],
            vec![0, 1],
            names(),
        );
        t.source_ids[1] = Some("r0".into());
        t.augment_ops[1] = Some("swap".into());
        write_text_table(&path, &t).unwrap();
        assert_eq!(read_text_table(&path).unwrap(), t);
    }

    #[test]
    fn embeddings_round_trip_in_f32_and_f16_and_select_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.parquet");
        let t = EmbeddingTable {
            ids: vec!["x".into(), "y".into(), "z".into()],
            labels: vec![1, 0, 1],
            label_names: names(),
            columns: vec![
                VectorColumn::new("layer_0", 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                VectorColumn::new("layer_1", 1, vec![0.5, 0.25, -1.0]),
            ],
        };
        write_embedding_table(&path, &t, Precision::F32).unwrap();
        assert_eq!(read_embedding_table(&path, None).unwrap(), t);
        let only = read_embedding_table(&path, Some(&["layer_1"])).unwrap();
        assert_eq!(only.columns.len(), 1);
        assert_eq!(only.columns[0].values, vec![0.5, 0.25, -1.0]);

        write_embedding_table(&path, &t, Precision::F16).unwrap();
        // These values are exact in f16.
        assert_eq!(read_embedding_table(&path, None).unwrap(), t);
    }

    #[test]
    fn predictions_round_trip_and_shape_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.parquet");
        let p = Predictions {
            ids: vec!["x".into()],
            labels: vec![1],
            preds: vec![0],
            probs: vec![0.75, 0.25],
            label_names: names(),
            producer: "lr".into(),
        };
        write_predictions(&path, &p).unwrap();
        assert_eq!(read_predictions(&path).unwrap(), p);
        let bad = Predictions {
            probs: vec![1.0],
            ..p
        };
        let err = write_predictions(&path, &bad).unwrap_err().to_string();
        assert_eq!(
            err,
            "write predictions: 1 probabilities for 1 rows x 2 classes"
        );
    }

    #[test]
    fn missing_column_names_file_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.parquet");
        let t = EmbeddingTable {
            ids: vec!["x".into()],
            labels: vec![0],
            label_names: names(),
            columns: vec![VectorColumn::new("layer_0", 1, vec![1.0])],
        };
        write_embedding_table(&path, &t, Precision::F32).unwrap();
        let err = read_embedding_table(&path, Some(&["layer_9"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("e.parquet") && msg.contains("layer_9"),
            "{msg}"
        );
    }
}
