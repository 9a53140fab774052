//! `logreg` on sparse features (`tfidf`'s `SparseTable`s): the rows stay sparse from the file to
//! the fit (sprs CSR, f64), and are fitted raw, without the standardisation the dense path applies
//! (it would make them dense; scikit-learn's usual TF-IDF recipe fits raw TF-IDF too). Same
//! objective, solver (the exact L-BFGS), CV folds and outputs as the dense path.

use llmembed_core::metrics::accuracy;
use llmembed_core::{
    Apply, Context, Error, Input, Predictions, Result, Rows, SparseTable, Standardizer, Summary,
    UNLABELLED, read_sparse_table,
};
use serde::Serialize;
use sprs::CsMat;

use crate::folds::{check_folds, cv_folds};
use crate::logreg::{LogRegParams, Selection};
use crate::logreg_fit::{
    CvOutcome, LogRegFit, LogRegSolver, fit_exact, grid_cv, linear_probabilities,
};
use crate::prologue::{
    grid_edge_note, preds_of, scored_accuracy, write_cv_predictions, write_json,
};
use crate::saved::{FittedOn, LinearMeta, LinearModel};

/// One split as CSR rows.
pub(crate) struct SparseSplit {
    pub ids: Vec<String>,
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    pub x: CsMat<f64>,
}

impl SparseSplit {
    /// The rows of `table`, their labels checked as the dense path checks them (`UNLABELLED`
    /// rows are kept: they are predicted, never fitted on nor scored).
    pub fn from_table(path: &std::path::Path, table: SparseTable) -> Result<SparseSplit> {
        crate::data::check_labels(path, &table.labels, &table.label_names)?;
        Ok(SparseSplit {
            x: csr(&table),
            ids: table.ids,
            labels: table.labels,
            label_names: table.label_names,
        })
    }

    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    pub fn dim(&self) -> usize {
        self.x.cols()
    }

    /// The rows at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> SparseSplit {
        let mut indptr = Vec::with_capacity(idx.len() + 1);
        let (mut indices, mut data) = (Vec::new(), Vec::new());
        indptr.push(0);
        for &i in idx {
            let row = self.x.outer_view(i).expect("row in range");
            indices.extend_from_slice(row.indices());
            data.extend_from_slice(row.data());
            indptr.push(indices.len());
        }
        SparseSplit {
            ids: idx.iter().map(|&i| self.ids[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            label_names: self.label_names.clone(),
            x: CsMat::new((idx.len(), self.dim()), indptr, indices, data),
        }
    }
}

/// A sparse table's rows as an f64 CSR matrix (the table's entries are already in CSR order).
pub(crate) fn csr(table: &SparseTable) -> CsMat<f64> {
    CsMat::new(
        (table.len(), table.dim),
        table.indptr.clone(),
        table.indices.iter().map(|&j| j as usize).collect(),
        table.values.iter().map(|&v| f64::from(v)).collect(),
    )
}

/// `model.json` of a sparse fit: the dense path's fields that apply, and `sparse: true`.
#[derive(Serialize)]
struct SparseModelSummary {
    kind: &'static str,
    columns: Vec<String>,
    sparse: bool,
    /// Stored entries per row, on average over the training rows.
    mean_nonzero: f64,
    input_dim: usize,
    train_rows: usize,
    test_rows: usize,
    classes: Vec<String>,
    c: f64,
    tol: f64,
    gradient_tolerance: f64,
    gradient_norm: f64,
    max_iterations: u64,
    solver: &'static str,
    iterations: Option<u64>,
    converged: bool,
    train_accuracy: f64,
    test_accuracy: f64,
    select: Option<Selection>,
}

/// `logreg`'s run on an input whose splits are sparse tables (see the module docs).
pub(crate) fn run_logreg_sparse(
    p: &LogRegParams,
    input: &Input,
    column: &str,
    ctx: &Context,
) -> Result<Summary> {
    let wanted: Vec<&str> = match (&p.column, &p.columns) {
        (Some(c), _) => vec![c.as_str()],
        (None, Some(cs)) => cs.iter().map(String::as_str).collect(),
        (None, None) => vec![column],
    };
    if wanted != [column] {
        return Err(Error::param(
            if p.column.is_some() {
                "column"
            } else {
                "columns"
            },
            format!(
                "`{}` holds one sparse column, `{column}`; got {wanted:?}",
                input.stage_id
            ),
        ));
    }
    if p.solver == LogRegSolver::Linfa {
        return Err(Error::param(
            "solver",
            format!(
                "linfa takes dense features only; `{}` writes sparse rows: use `solver: lbfgs`",
                input.stage_id
            ),
        ));
    }
    let (train_path, test_path) = (input.split("train")?, input.split("test")?);
    if let Some(sel) = &p.select {
        check_folds(&train_path, "select.folds", sel.folds)?;
    }
    let all_train = SparseSplit::from_table(&train_path, read_sparse_table(&train_path)?)?;
    // Rows without a label are never fitted on, as in the dense path.
    let labelled: Vec<usize> = (0..all_train.rows())
        .filter(|&i| all_train.labels[i] != UNLABELLED)
        .collect();
    let unlabelled_train = all_train.rows() - labelled.len();
    let train = if unlabelled_train == 0 {
        all_train
    } else {
        all_train.subset(&labelled)
    };
    let test = SparseSplit::from_table(&test_path, read_sparse_table(&test_path)?)?;
    if train.dim() != test.dim() || train.label_names != test.label_names {
        return Err(Error::mismatch(
            "load sparse features",
            format!(
                "{} has width {} and classes {:?}, {} width {} and classes {:?}",
                train_path.display(),
                train.dim(),
                train.label_names,
                test_path.display(),
                test.dim(),
                test.label_names
            ),
        ));
    }
    if train.rows() == 0 {
        return Err(Error::schema(&train_path, "id", "no training rows"));
    }
    let k = train.label_names.len();
    let mut notes = Vec::new();
    if unlabelled_train > 0 {
        notes.push(format!(
            "{unlabelled_train} unlabelled training row(s) not fitted on"
        ));
    }
    let (c, select) = match &p.select {
        None => (p.c.unwrap_or(1.0), None),
        Some(sel) => {
            let cv = cross_validate_sparse(&train, &sel.c, sel.folds, p, ctx.seed)?;
            let selection = Selection::best_of(cv, sel.folds);
            let best_c = selection.best_c;
            notes.push(format!("{}-fold CV picked C={best_c}", sel.folds));
            notes.extend(grid_edge_note("C", best_c, &sel.c));
            (best_c, Some(selection))
        }
    };
    let fit = fit(&train, c, p);
    if !fit.converged {
        notes.push(format!(
            "NOT converged: gradient norm {:.3e} > tolerance {:.3e} ({} iterations)",
            fit.gradient_norm,
            fit.gradient_tolerance,
            fit.fallback_iterations.unwrap_or(0)
        ));
    }
    let train_acc = accuracy(&train.labels, &preds_of(&fit.probabilities(&train.x), k));
    let probs = fit.probabilities(&test.x);
    let preds = preds_of(&probs, k);
    let test_acc = scored_accuracy(&test.labels, &preds);
    let producer = format!("logreg(C={c}, {column})");
    let predictions = llmembed_core::Predictions {
        ids: test.ids.clone(),
        labels: test.labels.clone(),
        preds,
        probs,
        label_names: test.label_names.clone(),
        producer: producer.clone(),
    };
    llmembed_core::write_predictions(&ctx.out("predictions.parquet"), &predictions)?;
    if let Some(sel) = &select {
        write_cv_predictions(
            ctx,
            &train.ids,
            &train.labels,
            &train.label_names,
            &sel.out_of_fold,
            &producer,
        )?;
    }
    save_model(
        ctx,
        &fit,
        c,
        column,
        &train,
        FittedOn {
            stage: input.stage_id.clone(),
            split: "train".into(),
            rows: train.rows(),
            unlabelled_rows_dropped: unlabelled_train,
        },
        producer,
    )?;
    let summary = SparseModelSummary {
        kind: "logreg",
        columns: vec![column.to_string()],
        sparse: true,
        mean_nonzero: train.x.nnz() as f64 / train.rows() as f64,
        input_dim: train.dim(),
        train_rows: train.rows(),
        test_rows: test.rows(),
        classes: train.label_names.clone(),
        c,
        tol: p.tol,
        gradient_tolerance: fit.gradient_tolerance,
        gradient_norm: fit.gradient_norm,
        max_iterations: p.max_iterations,
        solver: fit.solver(),
        iterations: fit.fallback_iterations,
        converged: fit.converged,
        train_accuracy: train_acc,
        test_accuracy: test_acc,
        select,
    };
    write_json(&ctx.out("model.json"), &summary)?;
    notes.push(format!(
        "sparse rows ({:.1} entries of {} per row), C={c}, fit {:.2}s, train acc {train_acc:.4}, \
         test acc {test_acc:.4}",
        summary.mean_nonzero,
        train.dim(),
        fit.fit_seconds
    ));
    Ok(Summary {
        rows_out: test.rows(),
        notes,
        ..Default::default()
    })
}

/// Saves a sparse fit as the dense path saves its own (`LinearModel::save`: `weight`,
/// `intercept`, and a `mean` of 0 and `scale` of 1, so that one formula reads both), with
/// `sparse: true` in `classifier.json`.
fn save_model(
    ctx: &Context,
    fit: &LogRegFit,
    c: f64,
    column: &str,
    train: &SparseSplit,
    fitted_on: FittedOn,
    producer: String,
) -> Result<()> {
    let d = train.dim();
    let model = LinearModel::new(
        vec![column.to_string()],
        train.label_names.clone(),
        Standardizer {
            mean: vec![0.0; d],
            scale: vec![1.0; d],
        },
        fit,
    );
    let mut meta = model.meta(fit, c, fitted_on);
    meta.kind = "logreg".into();
    meta.producer = producer;
    meta.sparse = true;
    model.save(&ctx.out_dir, &meta)
}

/// `logreg` fitted on sparse rows, loaded: sparse rows in (`tfidf`'s applier), predictions out,
/// with the arithmetic of the fit's own predictions (the same bits).
pub(crate) struct SparseLinearApply {
    pub model: LinearModel,
    pub meta: LinearMeta,
}

impl Apply for SparseLinearApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        let table = match inputs {
            [Rows::Sparse(t)] => t,
            [other] => {
                return Err(Error::mismatch(
                    "apply classifier",
                    format!(
                        "logreg was fitted on sparse rows, got {} rows",
                        other.kind()
                    ),
                ));
            }
            _ => {
                return Err(Error::mismatch(
                    "apply classifier",
                    format!("logreg takes 1 input, got {}", inputs.len()),
                ));
            }
        };
        if table.dim != self.meta.input_dim || table.label_names != self.model.classes {
            return Err(Error::mismatch(
                "apply classifier",
                format!(
                    "rows of width {} and classes {:?}; the model was fitted on width {} and \
                     classes {:?}",
                    table.dim, table.label_names, self.meta.input_dim, self.model.classes
                ),
            ));
        }
        let x = csr(table);
        let k = self.model.classes.len();
        let probs = linear_probabilities(&x, &self.model.w, &self.model.b, &self.model.present, k);
        Ok(Rows::Predictions(Predictions {
            ids: table.ids.clone(),
            labels: table.labels.clone(),
            preds: preds_of(&probs, k),
            probs,
            label_names: self.model.classes.clone(),
            producer: self.meta.producer.clone(),
        }))
    }
}

fn fit(train: &SparseSplit, c: f64, p: &LogRegParams) -> LogRegFit {
    fit_exact(
        &train.x,
        &train.labels,
        train.label_names.len(),
        train.dim(),
        c,
        p.tol,
        p.max_iterations,
    )
}

/// The dense path's CV (`logreg_fit::cross_validate`) on sparse rows: the same folds, drawn from
/// the same seed and purpose, with nothing to refit inside a fold.
fn cross_validate_sparse(
    train: &SparseSplit,
    grid: &[f64],
    folds: usize,
    p: &LogRegParams,
    seed: u64,
) -> Result<CvOutcome> {
    let cv = cv_folds(&train.ids, &train.labels, folds, seed);
    let k = train.label_names.len();
    let (table, oof) = grid_cv(&cv, &train.labels, grid, k, |f| {
        let (tr, va) = (
            train.subset(&cv.training_rows(f)),
            train.subset(&cv.rows[f]),
        );
        Ok(grid
            .iter()
            .map(|&c| {
                let fit = fit(&tr, c, p);
                (fit.probabilities(&va.x), fit.converged)
            })
            .collect())
    })?;
    Ok(CvOutcome {
        table,
        oof,
        splits: cv.splits,
    })
}
