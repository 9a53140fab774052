//! Reading the feature matrices a classifier is trained on, and their standardisation (fitted on
//! train only).

use std::path::Path;

use llmembed_core::table::embedding_columns;
use llmembed_core::{
    ConstantColumn, EmbeddingTable, Error, Matrix, Result, Standardizer, read_embedding_table,
};
use ndarray::{Array2, ShapeBuilder};

/// Which vector columns to use, resolved against the file.
pub(crate) fn resolve_columns(
    path: &Path,
    column: Option<&str>,
    columns: Option<&[String]>,
) -> Result<Vec<String>> {
    let available = embedding_columns(path)?;
    let names: Vec<String> = available.iter().map(|(n, _)| n.clone()).collect();
    let wanted: Vec<String> = match (column, columns) {
        (Some(_), Some(_)) => {
            return Err(Error::param(
                "column",
                "give either `column` or `columns`, not both",
            ));
        }
        (Some(c), None) => vec![c.to_string()],
        (None, Some(cs)) => cs.to_vec(),
        (None, None) => {
            if names.len() == 1 {
                names.clone()
            } else if names.is_empty() {
                return Err(Error::schema(path, "*", "no vector columns"));
            } else {
                return Err(Error::param(
                    "column",
                    format!(
                        "{} has {} vector columns ({}); pick one with `column` or several with \
                         `columns`",
                        path.display(),
                        names.len(),
                        names.join(", ")
                    ),
                ));
            }
        }
    };
    for w in &wanted {
        if !names.contains(w) {
            return Err(Error::schema(
                path,
                w,
                format!("no such vector column (it has: {})", names.join(", ")),
            ));
        }
    }
    Ok(wanted)
}

/// One split as a dense row-major matrix of the chosen (concatenated) columns.
#[derive(Clone, Debug)]
pub(crate) struct Split {
    pub ids: Vec<String>,
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    /// One row per id.
    pub x: Matrix,
}

impl Split {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    pub fn dim(&self) -> usize {
        self.x.dim
    }

    pub fn from_table(path: &Path, table: EmbeddingTable) -> Result<Split> {
        let n = table.len();
        let parts: Vec<Matrix> = table.columns.into_iter().map(Matrix::from).collect();
        let x = Matrix::concat_cols(&parts.iter().collect::<Vec<_>>());
        let x = Matrix::new(n, x.dim, x.data);
        let k = table.label_names.len();
        for (row, &l) in table.labels.iter().enumerate() {
            if l < 0 || l as usize >= k {
                return Err(Error::row(
                    path,
                    row,
                    "label",
                    format!(
                        "label {l} outside 0..{k} (label names: {:?})",
                        table.label_names
                    ),
                ));
            }
        }
        for (i, v) in x.data.iter().enumerate() {
            if !v.is_finite() {
                let row = i / x.dim;
                return Err(Error::row(
                    path,
                    row,
                    "features",
                    format!("non-finite value {v}"),
                ));
            }
        }
        Ok(Split {
            ids: table.ids,
            labels: table.labels,
            label_names: table.label_names,
            x,
        })
    }

    /// The rows at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Split {
        Split {
            ids: idx.iter().map(|&i| self.ids[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            label_names: self.label_names.clone(),
            x: self.x.select_rows(idx),
        }
    }
}

/// Reads train and test with the same columns and checks that they agree.
pub(crate) fn load_train_test(
    train_path: &Path,
    test_path: &Path,
    column: Option<&str>,
    columns: Option<&[String]>,
) -> Result<(Split, Split, Vec<String>)> {
    let names = resolve_columns(train_path, column, columns)?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let train = Split::from_table(train_path, read_embedding_table(train_path, Some(&refs))?)?;
    let test = Split::from_table(test_path, read_embedding_table(test_path, Some(&refs))?)?;
    if train.dim() != test.dim() {
        return Err(Error::mismatch(
            "load features",
            format!(
                "columns {names:?} have width {} in {} but {} in {}",
                train.dim(),
                train_path.display(),
                test.dim(),
                test_path.display()
            ),
        ));
    }
    if train.label_names != test.label_names {
        return Err(Error::mismatch(
            "load features",
            format!(
                "label names differ: {:?} in {} vs {:?} in {}",
                train.label_names,
                train_path.display(),
                test.label_names,
                test_path.display()
            ),
        ));
    }
    if train.rows() == 0 {
        return Err(Error::schema(train_path, "id", "no training rows"));
    }
    let mut seen = vec![false; train.label_names.len()];
    for &l in &train.labels {
        seen[l as usize] = true;
    }
    if seen.iter().filter(|s| **s).count() < 2 {
        return Err(Error::schema(
            train_path,
            "label",
            "training rows cover fewer than 2 classes",
        ));
    }
    Ok((train, test, names))
}

/// The standardiser of a classifier's features, fitted on `train`: a column whose deviation is 0
/// or not finite counts as constant (what classify's artifacts have always been made with).
pub(crate) fn standardizer(train: &Split) -> Standardizer {
    Standardizer::fit(&train.x, ConstantColumn::ZeroOrNotFinite)
}

/// Standardised rows as f32 (what the MLP trains on), with the statistics of `st`.
pub(crate) fn standardized_f32(split: &Split, st: &Standardizer) -> Vec<f32> {
    let mut x = split.x.data.clone();
    st.apply_rows(&mut x);
    x
}

/// Both splits as f64 matrices, standardised with the statistics of `train` only.
/// The training matrix column-major (what `fit_logreg` reads fastest, with no copy), the other
/// row-major.
pub(crate) fn standardized_pair(
    train: &Split,
    other: &Split,
) -> Result<(Array2<f64>, Array2<f64>)> {
    let st = standardizer(train);
    let train_matrix = Array2::from_shape_vec(
        (train.rows(), train.dim()).f(),
        st.apply_f64_columns(&train.x),
    )
    .map_err(|e| Error::compute("build feature matrix", e))?;
    Ok((train_matrix, matrix(other, &st)?))
}

pub(crate) fn matrix(split: &Split, st: &Standardizer) -> Result<Array2<f64>> {
    Array2::from_shape_vec((split.rows(), split.dim()), st.apply_f64(&split.x))
        .map_err(|e| Error::compute("build feature matrix", e))
}
