//! Reading the tables back, with errors that name the file, column and row.

use std::fs::File;
use std::path::Path;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, Int64Array, RecordBatch,
    StringArray,
};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::types::*;
use crate::error::{Error, Result};

pub(super) struct Loaded {
    pub(super) schema: SchemaRef,
    pub(super) batches: Vec<RecordBatch>,
}

pub(super) fn load(path: &Path, columns: Option<&[&str]>) -> Result<Loaded> {
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

pub(super) fn label_names_of(path: &Path, schema: &Schema) -> Result<Vec<String>> {
    let raw = schema
        .metadata()
        .get(LABEL_NAMES_KEY)
        .ok_or_else(|| Error::schema(path, "label", format!("no `{LABEL_NAMES_KEY}` metadata")))?;
    serde_json::from_str(raw)
        .map_err(|e| Error::schema(path, "label", format!("bad `{LABEL_NAMES_KEY}`: {e}")))
}

pub(super) fn column<'a>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
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

pub(super) fn required_strings(
    path: &Path,
    batches: &[RecordBatch],
    name: &str,
) -> Result<Vec<String>> {
    strings(path, batches, name)?
        .into_iter()
        .enumerate()
        .map(|(row, v)| v.ok_or_else(|| Error::row(path, row, name, "null")))
        .collect()
}

pub(super) fn int64s(path: &Path, batches: &[RecordBatch], name: &str) -> Result<Vec<i64>> {
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

/// Reads an embedding file `rows` rows at a time (the chosen vector columns, `id` and `label`),
/// calling `each` on every chunk in order: what a stage that works row by row uses to keep one
/// chunk of a large table in memory rather than all of it.
pub fn for_each_embedding_chunk(
    path: &Path,
    columns: &[&str],
    rows: usize,
    mut each: impl FnMut(EmbeddingTable) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parquet("read", path, e))?;
    let schema = builder.schema().clone();
    let label_names = label_names_of(path, &schema)?;
    let mut wanted = vec!["id", "label"];
    wanted.extend_from_slice(columns);
    let mut indices = Vec::new();
    for name in &wanted {
        indices.push(
            schema
                .index_of(name)
                .map_err(|_| Error::schema(path, name, "missing"))?,
        );
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(rows.max(1))
        .build()
        .map_err(|e| Error::parquet("read", path, e))?;
    let mut first_row = 0usize;
    for batch in reader {
        let batch = [batch.map_err(|e| Error::parquet("read", path, e))?];
        let n = batch[0].num_rows();
        // Row numbers in errors count from the start of the file.
        let at = |e: Error| match e {
            Error::Row {
                path,
                row,
                field,
                message,
            } => Error::Row {
                path,
                row: row + first_row,
                field,
                message,
            },
            other => other,
        };
        let mut cols = Vec::with_capacity(columns.len());
        for name in columns {
            cols.push(vectors(path, &batch, name)?);
        }
        each(EmbeddingTable {
            ids: required_strings(path, &batch, "id").map_err(at)?,
            labels: int64s(path, &batch, "label").map_err(at)?,
            label_names: label_names.clone(),
            columns: cols,
        })?;
        first_row += n;
    }
    Ok(())
}

/// Rows of a table file, from its footer (no data read).
pub fn table_rows(path: &Path) -> Result<usize> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parquet("read", path, e))?;
    Ok(builder.metadata().file_metadata().num_rows() as usize)
}
