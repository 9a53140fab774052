//! The `logreg` stage: multinomial logistic regression on standardised features (the fit and
//! its solvers are [`crate::logreg_fit`]), `C` given or chosen by CV on the training rows.

use std::path::Path;

use llmembed_core::metrics::accuracy;
use llmembed_core::{Apply, ApplyEnv, Arity, Context, Error, Input, Result, Stage, Summary};
use serde::{Deserialize, Serialize};

use crate::data::{
    Split, load_train_test, standardized_pair, standardizer, train_matrix, write_every_split,
};
use crate::folds::PerFold;
use crate::logreg_fit::{
    CvOutcome, CvRow, LogRegSolver, check_c, cross_validate, default_folds, default_max_iterations,
    default_tol, fit_logreg,
};
use crate::prologue::{
    self, FeatureParams, TrainTest, best_index, check_columns, check_select_folds,
    check_tol_and_iterations, feature_params, preds_of, scored_accuracy, write_cv_predictions,
    write_json,
};
use crate::saved::{FittedOn, LinearApply, LinearModel};

/// Params of `kind: logreg`.
///
/// ```yaml
/// kind: logreg
/// params:
///   column: layer_16        # or `columns: [layer_8, layer_16]` (concatenated); default: the only one
///   c: 1.0                  # scikit-learn's C (inverse L2 strength); default 1.0
///   tol: 1.0e-4             # gradient tolerance on the per-sample mean objective
///   max_iterations: 1000    # the solver's budget (with linfa: linfa's, and the fallback's)
///   solver: lbfgs           # lbfgs (default: exact L-BFGS) | linfa (linfa-logistic, exact fallback)
///   select:                 # optional: choose C by stratified k-fold CV on train rows only
///     c: [0.01, 0.1, 1, 10]
///     folds: 5
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogRegParams {
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// scikit-learn's `C`; 1.0 when absent. Not allowed together with `select`.
    #[serde(default)]
    pub c: Option<f64>,
    #[serde(default = "default_tol")]
    pub tol: f64,
    #[serde(default = "default_max_iterations")]
    pub max_iterations: u64,
    #[serde(default)]
    pub select: Option<LogRegSelect>,
    #[serde(default)]
    pub solver: LogRegSolver,
}

impl Default for LogRegParams {
    fn default() -> Self {
        LogRegParams {
            column: None,
            columns: None,
            c: None,
            tol: default_tol(),
            max_iterations: default_max_iterations(),
            select: None,
            solver: LogRegSolver::default(),
        }
    }
}

/// Grid search over `C` by stratified k-fold cross-validation on the training rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogRegSelect {
    pub c: Vec<f64>,
    #[serde(default = "default_folds")]
    pub folds: usize,
}

/// `kind: logreg`.
pub struct LogReg;

/// What `select.c` chose, as model.json records it (dense and sparse rows alike).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Selection {
    folds: usize,
    /// The folds' `folds::CvFolds::splits`.
    splits: String,
    table: Vec<CvRow>,
    pub best_c: f64,
    /// The chosen C's out-of-fold probabilities of the training rows.
    #[serde(skip)]
    pub out_of_fold: Vec<f32>,
}

impl Selection {
    /// The C of `cv`'s table with the best mean accuracy, ties to the smaller C (stronger
    /// regularisation), and its out-of-fold probabilities.
    pub(crate) fn best_of(mut cv: CvOutcome, folds: usize) -> Selection {
        let best = best_index(&cv.table, better_c);
        Selection {
            folds,
            splits: cv.splits,
            best_c: cv.table[best].c,
            out_of_fold: cv.oof.swap_remove(best),
            table: cv.table,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct ModelSummary {
    kind: &'static str,
    columns: Vec<String>,
    input_dim: usize,
    train_rows: usize,
    test_rows: usize,
    classes: Vec<String>,
    c: f64,
    /// What linfa was given: alpha = 1/C.
    linfa_alpha: f64,
    tol: f64,
    gradient_tolerance: f64,
    gradient_norm: f64,
    max_iterations: u64,
    /// `linfa`, `linfa+exact-lbfgs` when the fallback ran, or `exact-lbfgs` (`solver: lbfgs`).
    solver: &'static str,
    linfa_runs: usize,
    linfa_iterations_at_most: u64,
    linfa_clamped_rows: usize,
    fallback_iterations: Option<u64>,
    converged: bool,
    train_accuracy: f64,
    test_accuracy: f64,
    select: Option<Selection>,
}

feature_params!(LogRegParams);

impl Stage for LogReg {
    const KIND: &'static str = "logreg";
    // 3: the artifact holds the fitted model (`model.safetensors`, `classifier.json`) and the
    // predictions of splits besides train and test; predictions.parquet and model.json keep
    // their bytes. 4: with `select`, also the training rows' out-of-fold probabilities
    // (`cv_predictions.parquet`), which an ensemble is scored on. 5: with `select`, model.json
    // names the folds' splits (`select.splits`); the folds themselves are unchanged. 6: an
    // augmented copy goes with its source's fold (`folds::cv_folds`): fitted on only where its
    // source is, never validated, absent from cv_predictions.parquet; a table without copies
    // gets the bytes of 5.
    const VERSION: u32 = 6;
    const INPUTS: Arity = Arity::Exactly(1);
    // The pipeline's seed is part of the key: cross-validation folds are drawn with it.
    const SEEDED: bool = true;
    type Params = LogRegParams;

    fn check(p: &LogRegParams) -> Result<()> {
        check_columns(p.column(), p.columns())?;
        if let Some(c) = p.c {
            check_c("c", c)?;
        }
        check_tol_and_iterations(p.tol, p.max_iterations)?;
        if let Some(sel) = &p.select {
            if p.c.is_some() {
                return Err(Error::param("c", "give either `c` or `select.c`, not both"));
            }
            if sel.c.is_empty() {
                return Err(Error::param("select.c", "empty grid"));
            }
            for &c in &sel.c {
                check_c("select.c", c)?;
            }
        }
        check_select_folds(p)
    }

    fn run(p: &LogRegParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(p)?;
        // Sparse rows (`tfidf`) are fitted as they are, beside the dense path (`sparse.rs`).
        if let Some((column, _)) = llmembed_core::sparse_column(&inputs[0].split("train")?)? {
            return crate::sparse::run_logreg_sparse(p, &inputs[0], &column, ctx);
        }
        let loaded = prologue::load(&inputs[0], p)?;
        let mut notes: Vec<String> = loaded.unlabelled_note().into_iter().collect();
        let TrainTest {
            train,
            test,
            columns,
            unlabelled_train,
        } = loaded;
        let k = train.label_names.len();
        let (c, select) = match &p.select {
            None => (p.c.unwrap_or(1.0), None),
            Some(sel) => {
                let per_fold = PerFold::find(&inputs[0], &columns)?;
                let selection = select_c(&train, per_fold.as_ref(), sel, p, ctx.seed)?;
                notes.push(format!(
                    "{}-fold CV picked C={}",
                    sel.folds, selection.best_c
                ));
                notes.extend(prologue::grid_edge_note("C", selection.best_c, &sel.c));
                notes.extend(per_fold.as_ref().map(PerFold::note));
                (selection.best_c, Some(selection))
            }
        };

        let st = standardizer(&train);
        let xtr = train_matrix(&train, &st)?;
        let fit = fit_logreg(
            xtr.view(),
            &train.labels,
            k,
            c,
            p.tol,
            p.max_iterations,
            p.solver,
        )?;
        if !fit.converged {
            notes.push(format!(
                "NOT converged: gradient norm {:.3e} > tolerance {:.3e} ({}, {} linfa runs, \
                 fallback iterations {:?})",
                fit.gradient_norm,
                fit.gradient_tolerance,
                fit.solver(),
                fit.runs,
                fit.fallback_iterations
            ));
        }
        let train_acc = accuracy(&train.labels, &preds_of(&fit.predict_proba(xtr.view()), k));
        let model = LinearModel::new(columns.clone(), train.label_names.clone(), st, &fit);
        let producer = format!("logreg(C={c}, {})", columns.join("+"));
        let predictions = model.predict(&test, &producer)?;
        let test_acc = scored_accuracy(&test.labels, &predictions.preds);
        let rows_out =
            write_every_split(ctx, &inputs[0], &columns, &train, &predictions, |rows| {
                model.predict(rows, &producer)
            })?;
        let mut meta = model.meta(
            &fit,
            c,
            FittedOn {
                stage: inputs[0].stage_id.clone(),
                split: "train".into(),
                rows: train.rows(),
                unlabelled_rows_dropped: unlabelled_train,
            },
        );
        meta.kind = Self::KIND.into();
        if let Some(sel) = &select {
            let (ids, labels, names) = (&train.ids, &train.labels, &train.label_names);
            write_cv_predictions(ctx, ids, labels, names, &sel.out_of_fold, &producer)?;
        }
        meta.producer = producer;
        model.save(&ctx.out_dir, &meta)?;
        let summary = ModelSummary {
            kind: "logreg",
            columns,
            input_dim: train.dim(),
            train_rows: train.rows(),
            test_rows: test.rows(),
            classes: train.label_names.clone(),
            c,
            linfa_alpha: 1.0 / c,
            tol: p.tol,
            gradient_tolerance: fit.gradient_tolerance,
            gradient_norm: fit.gradient_norm,
            max_iterations: p.max_iterations,
            solver: fit.solver(),
            linfa_runs: fit.runs,
            linfa_iterations_at_most: fit.linfa_iterations_at_most,
            linfa_clamped_rows: fit.linfa_clamped_rows,
            fallback_iterations: fit.fallback_iterations,
            converged: fit.converged,
            train_accuracy: train_acc,
            test_accuracy: test_acc,
            select,
        };
        write_json(&ctx.out("model.json"), &summary)?;
        notes.push(format!(
            "C={c}, fit {:.2}s, train acc {train_acc:.4}, test acc {test_acc:.4}",
            fit.fit_seconds
        ));
        Ok(Summary {
            rows_out,
            notes,
            ..Default::default()
        })
    }

    fn applier(
        _p: &LogRegParams,
        fitted: &Input,
        _env: &ApplyEnv,
    ) -> Result<Option<Box<dyn Apply>>> {
        let (model, meta) = LinearModel::load(fitted, Self::KIND)?;
        if meta.sparse {
            return Ok(Some(Box::new(crate::sparse::SparseLinearApply {
                model,
                meta,
            })));
        }
        Ok(Some(Box::new(LinearApply { model, meta })))
    }
}

/// The CV table of `select.c` on the training rows, and the C it picks
/// ([`Selection::best_of`]).
fn select_c(
    train: &Split,
    per_fold: Option<&PerFold>,
    sel: &LogRegSelect,
    p: &LogRegParams,
    seed: u64,
) -> Result<Selection> {
    let cv = cross_validate(
        train,
        per_fold,
        &sel.c,
        sel.folds,
        p.tol,
        p.max_iterations,
        p.solver,
        seed,
    )?;
    Ok(Selection::best_of(cv, sel.folds))
}

pub(crate) fn better_c(a: &CvRow, b: &CvRow) -> bool {
    a.mean_accuracy > b.mean_accuracy || (a.mean_accuracy == b.mean_accuracy && a.c < b.c)
}

/// What [`bench_logreg`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct LogRegBench {
    pub train_rows: usize,
    pub test_rows: usize,
    pub dim: usize,
    pub c: f64,
    /// Wall time of the fit alone (standardisation and reading excluded), as the Python
    /// reference times `LogisticRegression.fit`.
    pub fit_seconds: f64,
    pub accuracy: f64,
    pub converged: bool,
    pub gradient_norm: f64,
    /// `linfa`, `linfa+exact-lbfgs` or `exact-lbfgs`.
    pub solver: String,
    pub linfa_seconds: f64,
    pub linfa_iterations_at_most: u64,
    pub fallback_iterations: Option<u64>,
}

/// Times the Rust fit on embedding files the way `scripts/reference/sklearn_logreg.py` times
/// scikit-learn's: read both splits, standardise with train statistics, time the fit, report the
/// test accuracy. Uses the stage defaults (`tol` 1e-4, 1000 iterations, `solver: linfa`).
pub fn bench_logreg(train: &Path, test: &Path, column: &str, c: f64) -> Result<LogRegBench> {
    bench_logreg_with_solver(train, test, column, c, LogRegSolver::default())
}

/// [`bench_logreg`] with a chosen solver.
pub fn bench_logreg_with_solver(
    train: &Path,
    test: &Path,
    column: &str,
    c: f64,
    solver: LogRegSolver,
) -> Result<LogRegBench> {
    check_c("c", c)?;
    let TrainTest {
        train: tr,
        test: te,
        ..
    } = load_train_test(train, test, Some(column), None)?;
    let k = tr.label_names.len();
    let (xtr, xte) = standardized_pair(&tr, &te)?;
    let fit = fit_logreg(
        xtr.view(),
        &tr.labels,
        k,
        c,
        default_tol(),
        default_max_iterations(),
        solver,
    )?;
    let preds = preds_of(&fit.predict_proba(xte.view()), k);
    Ok(LogRegBench {
        train_rows: tr.rows(),
        test_rows: te.rows(),
        dim: tr.dim(),
        c,
        fit_seconds: fit.fit_seconds,
        accuracy: accuracy(&te.labels, &preds),
        converged: fit.converged,
        gradient_norm: fit.gradient_norm,
        solver: fit.solver().to_string(),
        linfa_seconds: fit.linfa_seconds,
        linfa_iterations_at_most: fit.linfa_iterations_at_most,
        fallback_iterations: fit.fallback_iterations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_c_prefers_accuracy_then_smaller_c() {
        let row = |c, a| CvRow {
            c,
            fold_accuracy: vec![a],
            mean_accuracy: a,
            all_converged: true,
        };
        let best_c = |t: &[CvRow]| t[best_index(t, better_c)].c;
        assert_eq!(
            best_c(&[row(1.0, 0.8), row(0.1, 0.9), row(10.0, 0.85)]),
            0.1
        );
        assert_eq!(best_c(&[row(1.0, 0.9), row(0.1, 0.9)]), 0.1);
    }

    #[test]
    fn check_rejects_bad_params() {
        let ok = LogRegParams::default();
        assert!(LogReg::check(&ok).is_ok());
        let both = LogRegParams {
            column: Some("a".into()),
            columns: Some(vec!["b".into()]),
            ..LogRegParams::default()
        };
        assert!(
            LogReg::check(&both)
                .unwrap_err()
                .to_string()
                .contains("column")
        );
        let neg = LogRegParams {
            c: Some(-1.0),
            ..LogRegParams::default()
        };
        let err = LogReg::check(&neg).unwrap_err().to_string();
        assert_eq!(err, "param `c`: must be a positive finite number, got -1");
        let c_and_select = LogRegParams {
            c: Some(1.0),
            select: Some(LogRegSelect {
                c: vec![1.0],
                folds: 5,
            }),
            ..LogRegParams::default()
        };
        let err = LogReg::check(&c_and_select).unwrap_err().to_string();
        assert_eq!(err, "param `c`: give either `c` or `select.c`, not both");
    }

    #[test]
    fn params_defaults_are_explicit_and_unknown_fields_rejected() {
        let p: LogRegParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, LogRegParams::default());
        let p: LogRegParams = serde_json::from_str(r#"{"select": {"c": [0.1, 1]}}"#).unwrap();
        assert_eq!(p.select.unwrap().folds, 5);
        let err = serde_json::from_str::<LogRegParams>(r#"{"C": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `C`"), "{err}");
    }
}
