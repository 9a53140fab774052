//! [`SparseTable`]: rows of a wide, mostly zero vector (TF-IDF features), kept as their non-zero
//! entries in memory (CSR) and on disk.
//!
//! Parquet layout: `id` (utf8), `label` (int64), and one column (`embedding`) of type
//! `List<Struct<index: uint32, value: float32>>`: each row's non-zero entries as index/value pairs,
//! indices strictly increasing. The vector width is the schema metadata [`SPARSE_DIM_KEY`]
//! (a decimal string), since trailing zero columns leave no trace in the rows. pyarrow reads the
//! column as `list<struct<index: uint32, value: float>>`, polars as `List(Struct(...))`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, Int64Array, ListArray, RecordBatch, StructArray, UInt32Array,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Fields};

use super::read::{column, int64s, label_names_of, load, required_strings};
use super::write::{schema_with_labels, string_array, write_batches};
use crate::error::{Error, Result};

/// Schema metadata key of a sparse table's vector width.
pub const SPARSE_DIM_KEY: &str = "llmembed.sparse_dim";

/// Rows per record batch when writing: bounds the size of one Arrow batch, not the table's.
const WRITE_BATCH_ROWS: usize = 8192;

/// A split of sparse vectors: row `i`'s non-zero entries are
/// `indices[indptr[i]..indptr[i + 1]]` (strictly increasing, `< dim`) with the same range of
/// `values` (scipy's CSR layout).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseTable {
    pub ids: Vec<String>,
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    /// The vector column's name (`embedding` for the stages that write one).
    pub name: String,
    pub dim: usize,
    /// `len() + 1` offsets into `indices` / `values`, starting at 0.
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseTable {
    /// An empty table (no rows) with these names and width; add rows with [`Self::push_row`].
    pub fn new(name: impl Into<String>, dim: usize, label_names: Vec<String>) -> Self {
        SparseTable {
            name: name.into(),
            dim,
            label_names,
            indptr: vec![0],
            ..SparseTable::default()
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Non-zero entries in all rows.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Row `i`'s indices and values.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let r = self.indptr[i]..self.indptr[i + 1];
        (&self.indices[r.clone()], &self.values[r])
    }

    /// Appends a row whose entries are `(index, value)` with strictly increasing indices.
    pub fn push_row(&mut self, id: String, label: i64, entries: &[(u32, f32)]) {
        self.ids.push(id);
        self.labels.push(label);
        for &(j, v) in entries {
            self.indices.push(j);
            self.values.push(v);
        }
        self.indptr.push(self.indices.len());
    }

    /// The row as a dense vector of `dim` values (for tests and small tables).
    pub fn dense_row(&self, i: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.dim];
        let (idx, val) = self.row(i);
        for (&j, &v) in idx.iter().zip(val) {
            out[j as usize] = v;
        }
        out
    }

    /// Checks the layout invariants; `path` names the file in errors.
    fn validate(&self, path: &Path) -> Result<()> {
        let n = self.len();
        if self.labels.len() != n || self.indptr.len() != n + 1 || self.indptr[0] != 0 {
            return Err(Error::mismatch(
                "sparse table",
                format!(
                    "{}: {n} ids, {} labels, {} offsets",
                    path.display(),
                    self.labels.len(),
                    self.indptr.len()
                ),
            ));
        }
        if self.indices.len() != self.values.len() || self.indptr[n] != self.indices.len() {
            return Err(Error::mismatch(
                "sparse table",
                format!(
                    "{}: {} indices, {} values, last offset {}",
                    path.display(),
                    self.indices.len(),
                    self.values.len(),
                    self.indptr[n]
                ),
            ));
        }
        for i in 0..n {
            if self.indptr[i] > self.indptr[i + 1] {
                return Err(Error::row(path, i, &self.name, "offsets decrease"));
            }
            let (idx, val) = self.row(i);
            for (k, (&j, &v)) in idx.iter().zip(val).enumerate() {
                if j as usize >= self.dim {
                    return Err(Error::row(
                        path,
                        i,
                        &self.name,
                        format!("index {j} outside the width {}", self.dim),
                    ));
                }
                if k > 0 && idx[k - 1] >= j {
                    return Err(Error::row(
                        path,
                        i,
                        &self.name,
                        format!("indices not strictly increasing ({} then {j})", idx[k - 1]),
                    ));
                }
                if !v.is_finite() {
                    return Err(Error::row(
                        path,
                        i,
                        &self.name,
                        format!("non-finite value {v} at index {j}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn entry_fields() -> Fields {
    Fields::from(vec![
        Field::new("index", DataType::UInt32, false),
        Field::new("value", DataType::Float32, false),
    ])
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(entry_fields()),
        false,
    )))
}

/// Writes a sparse table atomically (Snappy, the same writer settings as every table).
pub fn write_sparse_table(path: &Path, table: &SparseTable) -> Result<()> {
    table.validate(path)?;
    let fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("label", DataType::Int64, false),
        Field::new(&table.name, list_type(), false),
    ];
    let schema = schema_with_labels(
        fields,
        &table.label_names,
        &[(SPARSE_DIM_KEY, table.dim.to_string())],
    );
    let item = Arc::new(Field::new("item", DataType::Struct(entry_fields()), false));
    let mut batches = Vec::new();
    let n = table.len();
    for start in (0..n).step_by(WRITE_BATCH_ROWS) {
        let end = (start + WRITE_BATCH_ROWS).min(n);
        let (lo, hi) = (table.indptr[start], table.indptr[end]);
        let offsets: Vec<i32> = table.indptr[start..=end]
            .iter()
            .map(|&o| i32::try_from(o - lo))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                Error::mismatch(
                    "write sparse table",
                    format!(
                        "{}: more than 2^31 entries in rows {start}..{end}",
                        path.display()
                    ),
                )
            })?;
        let entries = StructArray::new(
            entry_fields(),
            vec![
                Arc::new(UInt32Array::from(table.indices[lo..hi].to_vec())) as ArrayRef,
                Arc::new(Float32Array::from(table.values[lo..hi].to_vec())) as ArrayRef,
            ],
            None,
        );
        let list = ListArray::new(
            item.clone(),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(entries),
            None,
        );
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                string_array(&table.ids[start..end]),
                Arc::new(Int64Array::from(table.labels[start..end].to_vec())),
                Arc::new(list),
            ],
        )
        .map_err(|e| Error::parquet("build batch for", path, e))?;
        batches.push(batch);
    }
    write_batches(path, schema, &batches)
}

/// The name and width of the sparse vector column of a table file, or `None` when it has none
/// (a dense embedding table), read from the schema alone.
pub fn sparse_column(path: &Path) -> Result<Option<(String, usize)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parquet("read", path, e))?;
    let schema = builder.schema();
    let Some(field) = schema
        .fields()
        .iter()
        .find(|f| *f.data_type() == list_type())
    else {
        return Ok(None);
    };
    let raw = schema.metadata().get(SPARSE_DIM_KEY).ok_or_else(|| {
        Error::schema(
            path,
            field.name(),
            format!("a sparse column without `{SPARSE_DIM_KEY}` metadata"),
        )
    })?;
    let dim = raw.parse::<usize>().map_err(|e| {
        Error::schema(
            path,
            field.name(),
            format!("bad `{SPARSE_DIM_KEY}` {raw:?}: {e}"),
        )
    })?;
    Ok(Some((field.name().clone(), dim)))
}

/// Reads a sparse table written by [`write_sparse_table`], checking every row's entries.
pub fn read_sparse_table(path: &Path) -> Result<SparseTable> {
    let (name, dim) = sparse_column(path)?.ok_or_else(|| {
        Error::schema(
            path,
            "*",
            "no sparse vector column (list<struct<index: uint32, value: float>>)",
        )
    })?;
    let loaded = load(path, Some(&["id", "label", &name]))?;
    let mut t = SparseTable::new(name.clone(), dim, label_names_of(path, &loaded.schema)?);
    t.ids = required_strings(path, &loaded.batches, "id")?;
    t.labels = int64s(path, &loaded.batches, "label")?;
    for batch in &loaded.batches {
        let list = column(path, batch, &name)?
            .as_any()
            .downcast_ref::<ListArray>()
            .ok_or_else(|| Error::schema(path, &name, "expected a list of index/value pairs"))?;
        if list.null_count() > 0 {
            let row = t.indptr.len() - 1 + (0..list.len()).find(|&i| list.is_null(i)).unwrap_or(0);
            return Err(Error::row(path, row, &name, "null"));
        }
        let entries = list
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| Error::schema(path, &name, "expected struct entries"))?;
        let idx = entries
            .column(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .ok_or_else(|| Error::schema(path, &name, "expected uint32 `index`"))?;
        let val = entries
            .column(1)
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| Error::schema(path, &name, "expected float32 `value`"))?;
        let offsets = list.value_offsets();
        let (lo, hi) = (offsets[0] as usize, offsets[list.len()] as usize);
        let base = t.indices.len();
        t.indices.extend_from_slice(&idx.values()[lo..hi]);
        t.values.extend_from_slice(&val.values()[lo..hi]);
        t.indptr
            .extend(offsets[1..].iter().map(|&o| base + o as usize - lo));
    }
    t.validate(path)?;
    Ok(t)
}
