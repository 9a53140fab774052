//! One split of every source, rows of inputs 2.. matched to the rows of input 1 by id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmembed_core::{EmbeddingTable, Error, Input, Matrix, Result, read_embedding_table};

use crate::select::Resolved;

/// One split of every source, aligned to the row order of the first input.
pub(crate) struct Aligned {
    pub ids: Vec<String>,
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    /// `sources[s][v]`: selected vector `v` of source `s`.
    pub sources: Vec<Vec<Matrix>>,
}

impl Aligned {
    /// The rows at `idx`, in that order.
    pub fn select_rows(&self, idx: &[usize]) -> Aligned {
        Aligned {
            ids: idx.iter().map(|&i| self.ids[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            label_names: self.label_names.clone(),
            sources: self
                .sources
                .iter()
                .map(|s| s.iter().map(|m| m.select_rows(idx)).collect())
                .collect(),
        }
    }
}

/// The first input's name, ids, labels and label names: what the other inputs are matched to.
type Base = (PathBuf, Vec<String>, Vec<i64>, Vec<String>);

/// Reads one split of every input and reorders inputs 2.. to the ids of input 1.
pub(crate) fn load_aligned(
    split: &str,
    inputs: &[Input],
    resolved: &[Resolved],
) -> Result<Aligned> {
    let paths = (inputs.iter())
        .map(|input| input.split(split))
        .collect::<Result<Vec<_>>>()?;
    load_aligned_paths(&paths, resolved)
}

/// [`load_aligned`] of one file of each input (a fold's training vectors, say).
pub(crate) fn load_aligned_paths(paths: &[PathBuf], resolved: &[Resolved]) -> Result<Aligned> {
    let mut tables = Vec::with_capacity(paths.len());
    for (path, r) in paths.iter().zip(resolved) {
        let path = path.clone();
        let names: Vec<&str> = r.columns.iter().map(|(n, _)| n.as_str()).collect();
        let table = read_embedding_table(&path, Some(&names))?;
        for ((name, dim), col) in r.columns.iter().zip(&table.columns) {
            if col.dim != *dim {
                return Err(Error::schema(
                    &path,
                    name,
                    format!("width {} here but {dim} in the train split", col.dim),
                ));
            }
        }
        tables.push((path, table));
    }
    align(tables)
}

/// Rows in memory (`predict`, `serve`): each table's selected columns, in selection order, then
/// the same matching as [`load_aligned`]. `names[i]` names input `i` in errors.
pub(crate) fn align_rows(
    tables: &[&EmbeddingTable],
    names: &[String],
    resolved: &[Resolved],
) -> Result<Aligned> {
    let mut selected = Vec::with_capacity(tables.len());
    for ((table, name), r) in tables.iter().zip(names).zip(resolved) {
        let path = PathBuf::from(name);
        let mut columns = Vec::with_capacity(r.columns.len());
        for (column, dim) in &r.columns {
            let c = table.column(column).ok_or_else(|| {
                Error::schema(
                    &path,
                    column,
                    format!("missing (it has: {})", table.column_names().join(", ")),
                )
            })?;
            if c.dim != *dim {
                return Err(Error::schema(
                    &path,
                    column,
                    format!("width {} here but {dim} when fitted", c.dim),
                ));
            }
            columns.push(c.clone());
        }
        let table = EmbeddingTable {
            ids: table.ids.clone(),
            labels: table.labels.clone(),
            label_names: table.label_names.clone(),
            columns,
        };
        selected.push((path, table));
    }
    align(selected)
}

/// Matches the rows of tables 2.. to table 1's by id (see [`Aligned`]); each table comes with
/// the path (or name) its errors give.
fn align(tables: Vec<(PathBuf, EmbeddingTable)>) -> Result<Aligned> {
    let mut base: Option<Base> = None;
    let mut base_index: HashMap<String, usize> = HashMap::new();
    let mut sources: Vec<Vec<Matrix>> = Vec::with_capacity(tables.len());
    for (path, table) in tables {
        let index = index_ids(&path, &table.ids)?;
        if base.is_none() {
            base_index = index;
            base = Some((path, table.ids, table.labels, table.label_names));
            sources.push(table.columns.into_iter().map(Matrix::from).collect());
            continue;
        }
        let (base_path, ids, labels, label_names) = base.as_ref().expect("set by the first input");
        if &table.label_names != label_names {
            return Err(Error::mismatch(
                "fuse: match inputs",
                format!(
                    "label names differ: {} has {:?}, {} has {:?}",
                    base_path.display(),
                    label_names,
                    path.display(),
                    table.label_names
                ),
            ));
        }
        // Every base id must be present, and nothing else.
        let mut order = Vec::with_capacity(ids.len());
        for (row, id) in ids.iter().enumerate() {
            let Some(&j) = index.get(id) else {
                return Err(Error::mismatch(
                    "fuse: match inputs by id",
                    format!(
                        "id `{id}` (row {row} of {}) is missing from {}",
                        base_path.display(),
                        path.display()
                    ),
                ));
            };
            if table.labels[j] != labels[row] {
                return Err(Error::mismatch(
                    "fuse: match inputs by id",
                    format!(
                        "id `{id}` has label {} in {} but {} in {}",
                        labels[row],
                        base_path.display(),
                        table.labels[j],
                        path.display()
                    ),
                ));
            }
            order.push(j);
        }
        if let Some((row, id)) = table
            .ids
            .iter()
            .enumerate()
            .find(|(_, id)| !base_index.contains_key(*id))
        {
            return Err(Error::mismatch(
                "fuse: match inputs by id",
                format!(
                    "id `{id}` (row {row} of {}) is missing from {}",
                    path.display(),
                    base_path.display()
                ),
            ));
        }
        let mats = table
            .columns
            .into_iter()
            .map(|c| {
                let mut data = Vec::with_capacity(c.values.len());
                for &j in &order {
                    data.extend_from_slice(c.row(j));
                }
                Matrix::new(order.len(), c.dim, data)
            })
            .collect();
        sources.push(mats);
    }
    let (_, ids, labels, label_names) = base.expect("at least one input");
    Ok(Aligned {
        ids,
        labels,
        label_names,
        sources,
    })
}

fn index_ids(path: &Path, ids: &[String]) -> Result<HashMap<String, usize>> {
    let mut index = HashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        if let Some(first) = index.insert(id.clone(), row) {
            return Err(Error::row(
                path,
                row,
                "id",
                format!("duplicate id `{id}` (also row {first})"),
            ));
        }
    }
    Ok(index)
}
