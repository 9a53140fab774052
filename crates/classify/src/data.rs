//! Reading the feature matrices a classifier is trained on, and their standardisation (fitted on
//! train only).

use std::path::Path;

use llmembed_core::table::embedding_columns;
use llmembed_core::{
    ConstantColumn, EmbeddingTable, Error, Matrix, Result, Standardizer, UNLABELLED, VectorColumn,
    read_embedding_table,
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
        check_labels(path, &table.labels, &table.label_names)?;
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

    /// The rows `columns` (concatenated in that order) of rows in memory (what an applier is
    /// given), with `classes` as their label names. `what` names the rows in errors.
    pub fn from_columns(
        what: &str,
        table: &EmbeddingTable,
        columns: &[String],
        classes: &[String],
    ) -> Result<Split> {
        let mut picked: Vec<VectorColumn> = Vec::with_capacity(columns.len());
        for name in columns {
            let column = table.column(name).ok_or_else(|| {
                Error::mismatch(
                    "apply classifier",
                    format!(
                        "{what}: no vector column `{name}` (it has: {})",
                        table.column_names().join(", ")
                    ),
                )
            })?;
            picked.push(column.clone());
        }
        // Labels index the table's own label names: they must be the classifier's, unless no
        // row has a label (new texts).
        let labelled = table.labels.iter().any(|&l| l != UNLABELLED);
        if labelled && table.label_names != classes {
            return Err(Error::mismatch(
                "apply classifier",
                format!(
                    "{what}: label names {:?}, but the classifier was fitted on {classes:?}",
                    table.label_names
                ),
            ));
        }
        let table = EmbeddingTable {
            ids: table.ids.clone(),
            labels: table.labels.clone(),
            label_names: classes.to_vec(),
            columns: picked,
        };
        Split::from_table(std::path::Path::new(what), table)
    }

    /// The rows that have a label, and how many did not.
    pub fn labelled(self) -> (Split, usize) {
        let keep: Vec<usize> = (0..self.rows())
            .filter(|&i| self.labels[i] != UNLABELLED)
            .collect();
        let dropped = self.rows() - keep.len();
        if dropped == 0 {
            (self, 0)
        } else {
            (self.subset(&keep), dropped)
        }
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

/// A classifier's train and test rows, and the names of the columns they were read from.
pub(crate) struct TrainTest {
    /// The labelled training rows only: a row without a label (`UNLABELLED`) is never fitted on.
    pub train: Split,
    /// Every test row, with a label or not: all get predictions; only labelled ones are scored.
    pub test: Split,
    pub columns: Vec<String>,
    /// Training rows without a label, dropped.
    pub unlabelled_train: usize,
}

impl TrainTest {
    /// A note saying how many training rows had no label (none when all had one).
    pub fn unlabelled_note(&self) -> Option<String> {
        (self.unlabelled_train > 0).then(|| {
            format!(
                "{} training rows without a label dropped (not fitted on)",
                self.unlabelled_train
            )
        })
    }
}

/// Reads train and test with the same columns and checks that they agree.
pub(crate) fn load_train_test(
    train_path: &Path,
    test_path: &Path,
    column: Option<&str>,
    columns: Option<&[String]>,
) -> Result<TrainTest> {
    let names = resolve_columns(train_path, column, columns)?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let train = Split::from_table(train_path, read_embedding_table(train_path, Some(&refs))?)?;
    let (train, unlabelled_train) = train.labelled();
    let test = read_like(test_path, &names, &train, train_path)?;
    if train.rows() == 0 {
        let why = if unlabelled_train > 0 {
            "no labelled training rows (every row is unlabelled)"
        } else {
            "no training rows"
        };
        return Err(Error::schema(train_path, "id", why));
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
    Ok(TrainTest {
        train,
        test,
        columns: names,
        unlabelled_train,
    })
}

/// Reads the split at `path` with the columns `names` and checks that it agrees with `train`
/// (read from `train_path`): the same width and label names.
pub(crate) fn read_like(
    path: &Path,
    names: &[String],
    train: &Split,
    train_path: &Path,
) -> Result<Split> {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let split = Split::from_table(path, read_embedding_table(path, Some(&refs))?)?;
    if train.dim() != split.dim() {
        return Err(Error::mismatch(
            "load features",
            format!(
                "columns {names:?} have width {} in {} but {} in {}",
                train.dim(),
                train_path.display(),
                split.dim(),
                path.display()
            ),
        ));
    }
    if train.label_names != split.label_names {
        return Err(Error::mismatch(
            "load features",
            format!(
                "label names differ: {:?} in {} vs {:?} in {}",
                train.label_names,
                train_path.display(),
                split.label_names,
                path.display()
            ),
        ));
    }
    Ok(split)
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
    Ok((train_matrix(train, &st)?, matrix(other, &st)?))
}

/// The training rows standardised with `st`, as an f64 matrix in column-major order (what
/// `fit_logreg` reads fastest).
pub(crate) fn train_matrix(train: &Split, st: &Standardizer) -> Result<Array2<f64>> {
    Array2::from_shape_vec(
        (train.rows(), train.dim()).f(),
        st.apply_f64_columns(&train.x),
    )
    .map_err(|e| Error::compute("build feature matrix", e))
}

/// Rows standardised with `st`, as a row-major f64 matrix.
pub(crate) fn matrix(split: &Split, st: &Standardizer) -> Result<Array2<f64>> {
    Array2::from_shape_vec((split.rows(), split.dim()), st.apply_f64(&split.x))
        .map_err(|e| Error::compute("build feature matrix", e))
}

/// Checks each label is a class index of `label_names` or `UNLABELLED`; an error names the row.
pub(crate) fn check_labels(path: &Path, labels: &[i64], label_names: &[String]) -> Result<()> {
    let k = label_names.len();
    for (row, &l) in labels.iter().enumerate() {
        if l != UNLABELLED && (l < 0 || l as usize >= k) {
            return Err(Error::row(
                path,
                row,
                "label",
                format!("label {l} outside 0..{k} (label names: {label_names:?})"),
            ));
        }
    }
    Ok(())
}

/// Writes the test split's predictions, then those of every split besides train and test (read
/// with the train split's columns, predicted by `predict`); returns the rows written.
pub(crate) fn write_every_split(
    ctx: &llmembed_core::Context,
    input: &llmembed_core::Input,
    columns: &[String],
    train: &Split,
    test: &llmembed_core::Predictions,
    predict: impl Fn(&Split) -> Result<llmembed_core::Predictions>,
) -> Result<usize> {
    crate::prologue::write_split_predictions(ctx, "test", test)?;
    let mut rows_out = test.len();
    let train_path = input.split("train")?;
    for (split, path) in crate::prologue::other_splits(input) {
        let rows = read_like(&path, columns, train, &train_path)?;
        crate::prologue::write_split_predictions(ctx, &split, &predict(&rows)?)?;
        rows_out += rows.rows();
    }
    Ok(rows_out)
}
