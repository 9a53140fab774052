//! Fitting multinomial logistic regression on standardised features, with two solvers for the
//! same objective: an L-BFGS on scikit-learn's exact objective (`solver: lbfgs`, the default,
//! [`crate::lbfgs`]), and linfa-logistic's `MultiLogisticRegression` (`solver: linfa`: argmin's
//! L-BFGS with a More-Thuente line search), with the documented fallback below; and the
//! cross-validation of `C` that `logreg` and `layer_sweep` share.

//!
//! # Regularisation: scikit-learn's `C` in linfa's terms
//!
//! scikit-learn (`LogisticRegression(C, solver="lbfgs")`, multinomial) minimises over the weights
//! `W` (`d x K`) and the intercepts `b` (`K`, not penalised)
//!
//! ```text
//!     J_sk(W, b) = 1/(2C) * ||W||_F^2 + sum_i CE(softmax(W^T x_i + b), y_i)
//! ```
//!
//! (newer versions divide the whole objective by `n`, which changes neither the minimiser nor the
//! meaning of `C`). linfa-logistic 0.8.1 (`multi_logistic_loss` in its `lib.rs`) minimises
//!
//! ```text
//!     J_linfa(W, b) = alpha/2 * ||W||_F^2 + sum_i CE(softmax(W^T x_i + b), y_i)
//! ```
//!
//! with the loss SUMMED over samples (not averaged) and the intercept row excluded from the
//! penalty. The two are the same function when **`alpha = 1 / C`**, which is what `LogReg`
//! passes. The test `c_translation_satisfies_sklearn_optimality` checks the stationarity condition
//! of `J_sk` (`W/C + X^T (P - Y) = 0`, `sum_i (p_i - y_i) = 0`) at linfa's solution.
//!
//! # Tolerance
//!
//! scikit-learn (scipy's L-BFGS-B) stops when the largest gradient component of the per-sample
//! MEAN objective is below `tol`. We use the same measure on the SUMMED objective, so the
//! threshold is `gradient_tolerance = tol * n_train`, and `model.json`'s `gradient_norm` is that
//! max-abs norm. linfa/argmin test the L2 norm instead; it is given the same number, which makes
//! linfa's own stopping test stricter than ours (we check ours after each chunk).

//! # When linfa fails: the documented fallback
//!
//! linfa 0.8.1's `log_sum_exp` subtracts the GLOBAL maximum logit and clamps each row's sum of
//! exponentials at 1e-15, so its loss and gradient are wrong (and mutually inconsistent) for rows
//! whose largest logit is more than ~34.5 below the largest logit anywhere. Weakly regularised
//! fits on nearly separable data (hundreds of dense features, thousands of rows, several classes)
//! reach such points; linfa's L-BFGS then creeps for all its iterations or its More-Thuente line
//! search fails, which argmin turns into a silent early exit, and linfa returns its best iterate
//! without saying whether it converged (nor how many iterations it ran).
//!
//! So [`fit_logreg`] runs linfa in warm-started chunks of [`LINFA_CHUNK`] iterations and after
//! each chunk recomputes the gradient of `J_sk` itself (per-row stable softmax). It stops when
//! that meets the tolerance (`solver: linfa`), and hands over as soon as a chunk no longer lowers
//! `J_sk` or linfa's loss has become unreliable (rows as above exist, [`linfa_clamped_rows`]): the
//! fallback is a plain L-BFGS (memory 10, Armijo backtracking) on the exact `J_sk`, started from
//! linfa's best iterate, with its own `max_iterations` budget (`solver: linfa+exact-lbfgs`). If
//! that also stops short, the last iterate is used and reported with `converged: false` (and a
//! note in the run summary). `model.json` records which path ran, the final gradient norm, the
//! linfa iteration budget used and the fallback's iteration count.

use std::time::Instant;

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_logistic::MultiLogisticRegression;
use llmembed_core::metrics::accuracy;
use llmembed_core::{Error, Result};
use ndarray::{Array1, Array2, ArrayView2, CowArray, Ix2, ShapeBuilder, s};
use serde::{Deserialize, Serialize};

use crate::data::{Split, standardized_pair};
use crate::folds::{CvFolds, PerFold, cv_folds_for, fold_rows};
use crate::lbfgs::{Design, lbfgs_exact, norm_inf, sklearn_objective, softmax_rows};
use crate::prologue::preds_of;

/// The defaults of the params that `logreg` and `layer_sweep` share.
pub(crate) fn default_tol() -> f64 {
    1e-4
}
pub(crate) fn default_max_iterations() -> u64 {
    1000
}
pub(crate) fn default_folds() -> usize {
    llmembed_core::folds::DEFAULT_FOLDS
}

/// At most this many warm-started linfa runs per fit.
pub const MAX_RUNS: usize = 20;

/// Which optimiser fits the model.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogRegSolver {
    /// linfa-logistic's L-BFGS, handing over to the exact-objective L-BFGS only when linfa stops
    /// short (see the module docs).
    Linfa,
    /// The exact-objective L-BFGS alone, from zero: the same minimiser at scikit-learn's speed or
    /// better. The default: linfa computes the loss and the gradient in separate passes over the
    /// data (three matrix products per evaluation, where one pass needs two) and its More-Thuente
    /// L-BFGS spends about three times scipy's evaluations, so it fits 2-2.4x slower than
    /// scikit-learn on the AG News features (README, "Logistic regression speed").
    #[default]
    Lbfgs,
}

/// scikit-learn's `C` (the inverse L2 strength) is a positive finite number.
pub(crate) fn check_c(name: &str, c: f64) -> Result<()> {
    if !(c.is_finite() && c > 0.0) {
        return Err(Error::param(
            name,
            format!("must be a positive finite number, got {c}"),
        ));
    }
    Ok(())
}

/// A fitted model: weights over the classes present in training.
#[derive(Clone, Debug)]
pub(crate) struct LogRegFit {
    /// `d x k_present`.
    pub w: Array2<f64>,
    pub b: Array1<f64>,
    /// Class index (into the label names) of each column of `w`.
    pub present: Vec<usize>,
    pub n_classes: usize,
    pub converged: bool,
    /// Max-abs gradient component of `J_sk` at the solution (see the module docs).
    pub gradient_norm: f64,
    pub gradient_tolerance: f64,
    /// linfa runs (of at most [`LINFA_CHUNK`] iterations each, warm-started).
    pub runs: usize,
    /// linfa does not report its iteration count; this is the sum of the runs' budgets.
    pub linfa_iterations_at_most: u64,
    /// Rows where linfa's loss was unreliable at its last iterate (see [`linfa_clamped_rows`]).
    pub linfa_clamped_rows: usize,
    /// Iterations of the exact-objective fallback, when it ran.
    pub fallback_iterations: Option<u64>,
    /// Time before the fallback started (set-up and linfa; the rest of `fit_seconds` is the
    /// fallback).
    pub linfa_seconds: f64,
    pub fit_seconds: f64,
}

/// linfa's `log_sum_exp` subtracts the GLOBAL maximum logit (over all rows) and clamps each row's
/// sum of exponentials at 1e-15, so its loss and gradient are wrong for every row whose largest
/// logit lies more than ~34.5 below the largest logit anywhere (ln 1e-15 = -34.5). Weakly
/// regularised fits on nearly separable data (hundreds of dense features, thousands of rows) get
/// there, and then linfa's L-BFGS creeps or its line search fails. Returns the number of such
/// rows (with a safety margin: 30 instead of 34.5).
pub(crate) fn linfa_clamped_rows(x: ArrayView2<f64>, w: &Array2<f64>, b: &Array1<f64>) -> usize {
    let h = x.dot(w) + b;
    let row_max: Vec<f64> = h
        .rows()
        .into_iter()
        .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .collect();
    let global = row_max.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    row_max.iter().filter(|&&m| m < global - 30.0).count()
}

/// Iterations of linfa per run between checks of the exact gradient.
const LINFA_CHUNK: u64 = 50;

/// The classes present in `labels` (sorted), each row's index among them, and its one-hot row.
fn encode_labels(labels: &[i64]) -> (Vec<usize>, Array1<usize>, Array2<f64>) {
    let mut present: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    present.sort_unstable();
    present.dedup();
    let y: Array1<usize> = labels
        .iter()
        .map(|&l| present.binary_search(&(l as usize)).expect("present label"))
        .collect();
    let mut onehot = Array2::<f64>::zeros((labels.len(), present.len()));
    for (i, &j) in y.iter().enumerate() {
        onehot[[i, j]] = 1.0;
    }
    (present, y, onehot)
}

/// Fits on standardised `x` (`n x d`) with scikit-learn's `c`: linfa first, then, only if linfa
/// stops short of the tolerance, the exact-objective L-BFGS fallback (see the module docs).
pub(crate) fn fit_logreg(
    x: ArrayView2<f64>,
    labels: &[i64],
    n_classes: usize,
    c: f64,
    tol: f64,
    max_iterations: u64,
    solver: LogRegSolver,
) -> Result<LogRegFit> {
    let start = Instant::now();
    let n = x.nrows();
    let d = x.ncols();
    let (present, y, onehot) = encode_labels(labels);
    let k = present.len();
    // X column-major: every product here (`X W`, `X^T R`, a handful of classes) is bound by
    // reading X, and with two threads matrixmultiply runs both about 2.4x faster on a
    // column-major X (8,794 x 640: 2.3 ms instead of 5.6 ms per product). `standardized_pair`
    // builds training matrices that way; anything else is copied once.
    let x: CowArray<'_, f64, Ix2> = if x.t().is_standard_layout() {
        x.into()
    } else {
        let mut copy = Array2::<f64>::zeros((n, d).f());
        copy.assign(&x);
        copy.into()
    };
    let x = x.view();
    let gradient_tolerance = tol * n as f64;

    let mut best: Option<(f64, Array2<f64>, Array1<f64>, f64)> = None;
    let mut runs = 0;
    let mut linfa_iterations = 0u64;
    let mut converged = false;
    let mut clamped = 0;
    if solver == LogRegSolver::Lbfgs {
        best = Some((
            f64::INFINITY,
            Array2::zeros((d, k)),
            Array1::zeros(k),
            f64::INFINITY,
        ));
    }
    // linfa's Dataset owns its records: a copy (column-major too), made only for linfa.
    let dataset = (solver == LogRegSolver::Linfa).then(|| Dataset::new(x.to_owned(), y));
    while let Some(dataset) = dataset.as_ref()
        && linfa_iterations < max_iterations
        && runs < MAX_RUNS
    {
        runs += 1;
        let budget = LINFA_CHUNK.min(max_iterations - linfa_iterations);
        let mut model = MultiLogisticRegression::<f64>::default()
            .alpha(1.0 / c)
            .gradient_tolerance(gradient_tolerance)
            .max_iterations(budget);
        if let Some((_, w, b, _)) = &best {
            let mut p = Array2::<f64>::zeros((d + 1, k));
            p.slice_mut(s![..d, ..]).assign(w);
            p.row_mut(d).assign(b);
            model = model.initial_params(p);
        }
        let fitted = model.fit(dataset).map_err(|e| {
            Error::compute(
                "fit logistic regression",
                format!("x {n}x{d}, {k} classes, C={c}: {e}"),
            )
        })?;
        linfa_iterations += budget;
        // linfa orders its columns by sorted class value, which is our `present` order.
        let w = fitted.params().to_owned();
        let b = fitted.intercept().to_owned();
        let (value, gw, gb) = sklearn_objective(x, &onehot, &w, &b, c);
        if !value.is_finite() {
            return Err(Error::compute(
                "fit logistic regression",
                format!("non-finite objective {value} (x {n}x{d}, C={c})"),
            ));
        }
        let gnorm = norm_inf(&gw, &gb);
        let improved = best
            .as_ref()
            .is_none_or(|(v, ..)| value < *v - 1e-12 * v.abs().max(1.0));
        clamped = linfa_clamped_rows(x, &w, &b);
        if improved {
            best = Some((value, w, b, gnorm));
        }
        if gnorm < gradient_tolerance {
            converged = true;
            break;
        }
        if !improved || clamped > 0 {
            break;
        }
    }
    let (_, mut w, mut b, mut gradient_norm) = best.expect("at least one run");
    let linfa_seconds = start.elapsed().as_secs_f64();
    let mut fallback_iterations = None;
    if !converged {
        let r = lbfgs_exact(x, &onehot, c, w, b, gradient_tolerance, max_iterations);
        w = r.w;
        b = r.b;
        gradient_norm = r.gradient_norm;
        converged = r.converged;
        fallback_iterations = Some(r.iterations);
    }
    Ok(LogRegFit {
        w,
        b,
        present,
        n_classes,
        converged,
        gradient_norm,
        gradient_tolerance,
        runs,
        linfa_iterations_at_most: linfa_iterations,
        linfa_clamped_rows: clamped,
        fallback_iterations,
        linfa_seconds,
        fit_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Fits with the exact-objective L-BFGS alone, from zero (`solver: lbfgs`), on features of any
/// [`Design`]: the path of sparse TF-IDF rows, which are fitted raw (scikit-learn's recipe for
/// TF-IDF: standardising would make them dense) and which linfa cannot take.
pub(crate) fn fit_exact<X: Design>(
    x: X,
    labels: &[i64],
    n_classes: usize,
    dim: usize,
    c: f64,
    tol: f64,
    max_iterations: u64,
) -> LogRegFit {
    let start = Instant::now();
    let (present, _, onehot) = encode_labels(labels);
    let k = present.len();
    let gradient_tolerance = tol * labels.len() as f64;
    let r = lbfgs_exact(
        x,
        &onehot,
        c,
        Array2::zeros((dim, k)),
        Array1::zeros(k),
        gradient_tolerance,
        max_iterations,
    );
    LogRegFit {
        w: r.w,
        b: r.b,
        present,
        n_classes,
        converged: r.converged,
        gradient_norm: r.gradient_norm,
        gradient_tolerance,
        runs: 0,
        linfa_iterations_at_most: 0,
        linfa_clamped_rows: 0,
        fallback_iterations: Some(r.iterations),
        linfa_seconds: 0.0,
        fit_seconds: start.elapsed().as_secs_f64(),
    }
}

impl LogRegFit {
    pub fn solver(&self) -> &'static str {
        match (self.runs, self.fallback_iterations) {
            (0, _) => "exact-lbfgs",
            (_, Some(_)) => "linfa+exact-lbfgs",
            (_, None) => "linfa",
        }
    }

    /// Class probabilities over all `n_classes` (absent classes get 0), row-major f32.
    pub fn predict_proba(&self, x: ArrayView2<f64>) -> Vec<f32> {
        self.probabilities(x)
    }

    /// [`Self::predict_proba`] of dense or sparse rows.
    pub fn probabilities<X: Design>(&self, x: X) -> Vec<f32> {
        linear_probabilities(x, &self.w, &self.b, &self.present, self.n_classes)
    }
}

/// `softmax(x w + b)` over the classes seen in training (`present`), scattered into rows of all
/// `n_classes` (absent classes get 0), row-major f32: what a fit and a saved model's applier both
/// compute, so that they give the same bits.
pub(crate) fn linear_probabilities<X: Design>(
    x: X,
    w: &Array2<f64>,
    b: &Array1<f64>,
    present: &[usize],
    n_classes: usize,
) -> Vec<f32> {
    let mut p = x.dot(w) + b;
    softmax_rows(&mut p);
    let mut out = vec![0f32; p.nrows() * n_classes];
    for (i, row) in p.rows().into_iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[i * n_classes + present[j]] = v as f32;
        }
    }
    out
}

/// One row of the CV table in `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CvRow {
    pub c: f64,
    pub fold_accuracy: Vec<f64>,
    pub mean_accuracy: f64,
    pub all_converged: bool,
}

/// Stratified `folds`-fold CV of each C of `grid` on the training rows (standardiser refit inside
/// each fold); each fold on its own vectors where the input made them per fold (`per_fold`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_validate(
    train: &Split,
    per_fold: Option<&PerFold>,
    grid: &[f64],
    folds: usize,
    tol: f64,
    max_iterations: u64,
    solver: LogRegSolver,
    seed: u64,
) -> Result<CvOutcome> {
    let cv = cv_folds_for(train, per_fold, folds, seed, "select.folds")?;
    let k = train.label_names.len();
    // One fold's matrices at a time (each C fitted on it, then dropped): a fold's standardised
    // f64 copy is twice the f32 features, and holding every fold's at once (5 x 2 x 690 MB for
    // 67,000 rows x 2,560) is what made large CVs run out of memory. Every fit is the same
    // computation as before, so the table has the same values.
    let (table, oof) = grid_cv(&cv, &train.labels, grid, k, |f| {
        let (tr, va) = fold_rows(train, per_fold, &cv, f)?;
        let (xtr, xva) = standardized_pair(&tr, &va)?;
        drop(tr.x);
        grid.iter()
            .map(|&c| {
                let fit = fit_logreg(xtr.view(), &tr.labels, k, c, tol, max_iterations, solver)?;
                Ok((fit.predict_proba(xva.view()), fit.converged))
            })
            .collect()
    })?;
    Ok(CvOutcome {
        table,
        oof,
        splits: cv.splits,
    })
}

/// The CV of every setting of `grid` (a C; the MLP's epoch counts) over `cv`'s folds of rows
/// labelled `labels`: its table, and per setting the training rows' probabilities (rows x `k`),
/// each from the fold fit that did not see the row. `fit_fold(f)` fits every setting without
/// fold `f`'s rows and gives, per setting in grid order, the fold's probabilities (its rows in
/// order) and whether that fit converged; the fits of one fold are made together, so that
/// whatever they share (a standardised copy of the rows; one network's training, checkpointed
/// at each epoch count) is made once and dropped before the next fold's.
pub(crate) fn grid_cv(
    cv: &CvFolds,
    labels: &[i64],
    grid: &[f64],
    k: usize,
    mut fit_fold: impl FnMut(usize) -> Result<Vec<(Vec<f32>, bool)>>,
) -> Result<(Vec<CvRow>, Vec<Vec<f32>>)> {
    let mut oof = vec![vec![0f32; labels.len() * k]; grid.len()];
    let mut accs = vec![Vec::with_capacity(cv.rows.len()); grid.len()];
    let mut converged = vec![true; grid.len()];
    for (f, fold) in cv.rows.iter().enumerate() {
        let truth: Vec<i64> = fold.iter().map(|&r| labels[r]).collect();
        let fits = fit_fold(f)?;
        debug_assert_eq!(fits.len(), grid.len());
        for (g, (probs, fit_converged)) in fits.into_iter().enumerate() {
            converged[g] &= fit_converged;
            accs[g].push(accuracy(&truth, &preds_of(&probs, k)));
            keep_out_of_fold(&mut oof[g], fold, &probs, k);
        }
    }
    let table = grid
        .iter()
        .zip(accs)
        .zip(converged)
        .map(|((&c, accs), all_converged)| CvRow {
            c,
            mean_accuracy: accs.iter().sum::<f64>() / accs.len() as f64,
            fold_accuracy: accs,
            all_converged,
        })
        .collect();
    Ok((table, oof))
}

/// A CV table and, per row of it, the training rows' class probabilities (train order, rows x
/// classes) from the fold's fit that did not see the row: what an ensemble of CV-selected
/// members is scored on (an augmented copy, which no fold validates, has zeros).
pub(crate) struct CvOutcome {
    pub table: Vec<CvRow>,
    pub oof: Vec<Vec<f32>>,
    /// The folds' [`CvFolds::splits`](crate::folds::CvFolds::splits).
    pub splits: String,
}

/// Writes a fold's probabilities (`probs`, the fold's rows in order) to those rows of `oof`.
pub(crate) fn keep_out_of_fold(oof: &mut [f32], fold: &[usize], probs: &[f32], k: usize) {
    for (&row, p) in fold.iter().zip(probs.chunks_exact(k)) {
        oof[row * k..(row + 1) * k].copy_from_slice(p);
    }
}
