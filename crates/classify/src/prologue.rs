//! What the classifier stages (`logreg`, `mlp`, `layer_sweep`) share around their fits: the
//! param checks they have in common, reading train and test (after checking that CV folds fit the
//! classes), choosing the best row of a CV table, and writing `predictions.parquet` and the
//! stage's JSON files.

use std::path::{Path, PathBuf};

use llmembed_core::{
    Context, Error, Input, Predictions, Result, UNLABELLED, argmax, fsutil, predictions_file,
    write_predictions,
};
use serde::Serialize;

pub(crate) use crate::data::TrainTest;
use crate::data::{Split, load_train_test};
use crate::folds::{check_folds, validated_rows};

/// The feature params of a classifier that reads one embedding artifact (`logreg`, `mlp`).
pub(crate) trait FeatureParams {
    fn column(&self) -> Option<&str>;
    fn columns(&self) -> Option<&[String]>;
    /// `select.folds`, when the stage selects a hyper-parameter by CV.
    fn select_folds(&self) -> Option<usize>;
}

/// [`FeatureParams`] for a params struct with the fields `column: Option<String>`,
/// `columns: Option<Vec<String>>` and `select: Option<_>` (whose `folds` is the CV's).
macro_rules! feature_params {
    ($params:ty) => {
        impl $crate::prologue::FeatureParams for $params {
            fn column(&self) -> Option<&str> {
                self.column.as_deref()
            }
            fn columns(&self) -> Option<&[String]> {
                self.columns.as_deref()
            }
            fn select_folds(&self) -> Option<usize> {
                self.select.as_ref().map(|s| s.folds)
            }
        }
    };
}
pub(crate) use feature_params;

/// `select.folds`, when given, is at least 2.
pub(crate) fn check_select_folds(p: &impl FeatureParams) -> Result<()> {
    match p.select_folds() {
        Some(folds) if folds < 2 => Err(Error::param("select.folds", "needs at least 2 folds")),
        _ => Ok(()),
    }
}

/// `column` and `columns` exclude each other, and a `columns` list is not empty.
pub(crate) fn check_columns(column: Option<&str>, columns: Option<&[String]>) -> Result<()> {
    if column.is_some() && columns.is_some() {
        return Err(Error::param(
            "column",
            "give either `column` or `columns`, not both",
        ));
    }
    if columns.is_some_and(<[String]>::is_empty) {
        return Err(Error::param("columns", "empty list"));
    }
    Ok(())
}

/// The stopping rule of the logistic-regression solvers: a positive tolerance, some iterations.
pub(crate) fn check_tol_and_iterations(tol: f64, max_iterations: u64) -> Result<()> {
    if !(tol.is_finite() && tol > 0.0) {
        return Err(Error::param("tol", format!("must be positive, got {tol}")));
    }
    if max_iterations == 0 {
        return Err(Error::param("max_iterations", "must be at least 1"));
    }
    Ok(())
}

/// Reads `input`'s train and test splits with the columns `p` chooses. When `p` selects by CV,
/// first checks (on the labels alone) that every class has rows for that many folds.
pub(crate) fn load(input: &Input, p: &impl FeatureParams) -> Result<TrainTest> {
    let (train_path, test_path) = (input.split("train")?, input.split("test")?);
    if let Some(folds) = p.select_folds() {
        check_folds(&train_path, "select.folds", folds)?;
    }
    load_train_test(&train_path, &test_path, p.column(), p.columns())
}

/// The splits of `input` besides train and test (a dev split, an unlabelled one), `(split,
/// path)` sorted: a classifier writes their predictions too, as [`predictions_file`] names them.
pub(crate) fn other_splits(input: &Input) -> Vec<(String, PathBuf)> {
    input
        .splits()
        .into_iter()
        .filter(|(split, _)| split != "train" && split != "test")
        .collect()
}

/// The labels and predictions of the rows that have a label (what is scored), borrowed when
/// every row has one.
pub(crate) fn scored<'a>(
    labels: &'a [i64],
    preds: &'a [i64],
) -> (std::borrow::Cow<'a, [i64]>, std::borrow::Cow<'a, [i64]>) {
    if !labels.contains(&UNLABELLED) {
        return (labels.into(), preds.into());
    }
    let (l, p): (Vec<i64>, Vec<i64>) = labels
        .iter()
        .zip(preds)
        .filter(|(l, _)| **l != UNLABELLED)
        .map(|(l, p)| (*l, *p))
        .unzip();
    (l.into(), p.into())
}

/// Accuracy over the rows that have a label (0 when none has).
pub(crate) fn scored_accuracy(labels: &[i64], preds: &[i64]) -> f64 {
    let (l, p) = scored(labels, preds);
    if l.is_empty() {
        return 0.0;
    }
    llmembed_core::metrics::accuracy(&l, &p)
}

/// The index of the best row: a row replaces the best so far only when `better(row, best)`, so
/// ties keep the earlier row unless `better` breaks them.
pub(crate) fn best_index<R>(rows: &[R], better: impl Fn(&R, &R) -> bool) -> usize {
    let mut best = 0;
    for (i, r) in rows.iter().enumerate() {
        if better(r, &rows[best]) {
            best = i;
        }
    }
    best
}

/// The predicted class of each row of row-major probabilities over `k` classes (the first of
/// equal probabilities).
pub(crate) fn preds_of(probs: &[f32], k: usize) -> Vec<i64> {
    probs.chunks(k).map(|r| argmax(r) as i64).collect()
}

/// The predictions of `rows` from their probabilities (row-major over the classes).
pub(crate) fn predictions_of(rows: &Split, probs: Vec<f32>, producer: String) -> Predictions {
    let k = rows.label_names.len();
    Predictions {
        ids: rows.ids.clone(),
        labels: rows.labels.clone(),
        preds: preds_of(&probs, k),
        probs,
        label_names: rows.label_names.clone(),
        producer,
    }
}

/// The predictions of another set of predictions' rows (the same ids, labels and class names)
/// from new probabilities (row-major over the classes).
pub(crate) fn predictions_like(
    rows: &Predictions,
    probs: Vec<f32>,
    producer: String,
) -> Predictions {
    Predictions {
        ids: rows.ids.clone(),
        labels: rows.labels.clone(),
        preds: preds_of(&probs, rows.num_classes()),
        probs,
        label_names: rows.label_names.clone(),
        producer,
    }
}

/// Writes the predictions of `split` (`predictions.parquet` for test, see [`predictions_file`]).
pub(crate) fn write_split_predictions(
    ctx: &Context,
    split: &str,
    predictions: &Predictions,
) -> Result<()> {
    write_predictions(&ctx.out(&predictions_file(split)), predictions)
}

/// Pretty JSON, written atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| Error::compute("serialize model.json", e))?;
    fsutil::write_bytes_atomic(path, &bytes)
}

/// When cross-validation picked the smallest or largest value of its grid (of more than one
/// value), a note that says so: the best value may lie beyond the grid. Also logged as a warning.
pub(crate) fn grid_edge_note(what: &str, picked: f64, grid: &[f64]) -> Option<String> {
    let lo = grid.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = grid.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let edge = match () {
        _ if grid.len() < 2 || lo == hi => return None,
        _ if picked == lo => "smallest",
        _ if picked == hi => "largest",
        _ => return None,
    };
    let note = format!(
        "CV picked the {edge} {what} of the grid ({picked}): the best may lie beyond it; widen the grid"
    );
    log::warn!("{note}");
    Some(note)
}

/// The file of the training rows' out-of-fold probabilities at the setting CV chose (`logreg`'s
/// C, `mlp`'s epochs): what an ensemble of such members is scored on.
pub(crate) const CV_PREDICTIONS_FILE: &str = "cv_predictions.parquet";

/// Writes [`CV_PREDICTIONS_FILE`]: each validated training row ([`validated_rows`]: its id,
/// true label and the class names) with its probabilities in `out_of_fold` (training rows x
/// classes), of the fit that did not see it. The rows CV never validated (augmented copies)
/// are left out.
pub(crate) fn write_cv_predictions(
    ctx: &Context,
    ids: &[String],
    labels: &[i64],
    label_names: &[String],
    out_of_fold: &[f32],
    producer: &str,
) -> Result<()> {
    let (k, validated) = (label_names.len(), validated_rows(ids));
    let probs: Vec<f32> = (validated.iter())
        .flat_map(|&r| &out_of_fold[r * k..(r + 1) * k])
        .copied()
        .collect();
    let predictions = Predictions {
        ids: validated.iter().map(|&r| ids[r].clone()).collect(),
        labels: validated.iter().map(|&r| labels[r]).collect(),
        preds: preds_of(&probs, k),
        probs,
        label_names: label_names.to_vec(),
        producer: format!("{producer}, out of fold"),
    };
    write_predictions(&ctx.out(CV_PREDICTIONS_FILE), &predictions)
}

#[cfg(test)]
mod grid_edge_tests {
    use super::grid_edge_note;

    #[test]
    fn only_an_edge_of_a_real_grid_is_noted() {
        let grid = [0.01, 0.1, 1.0];
        assert_eq!(
            grid_edge_note("C", 0.01, &grid).as_deref(),
            Some(
                "CV picked the smallest C of the grid (0.01): the best may lie beyond it; widen the grid"
            )
        );
        assert!(
            grid_edge_note("C", 1.0, &grid)
                .unwrap()
                .contains("largest C")
        );
        assert_eq!(grid_edge_note("C", 0.1, &grid), None);
        assert_eq!(grid_edge_note("C", 1.0, &[1.0]), None);
        // Unsorted grids are fine.
        assert!(
            grid_edge_note("epochs", 5.0, &[20.0, 5.0, 10.0])
                .unwrap()
                .contains("smallest")
        );
    }
}
