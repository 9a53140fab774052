//! Multinomial logistic regression (`kind: logreg`) on standardised features, with two solvers
//! for the same objective: an L-BFGS on scikit-learn's exact objective (`solver: lbfgs`, the
//! default, one pass over the data per evaluation), and linfa-logistic's
//! `MultiLogisticRegression` (`solver: linfa`: argmin's L-BFGS with a More-Thuente line search),
//! with the documented fallback below.
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
//! penalty. The two are the same function when **`alpha = 1 / C`**, which is what [`LogReg`]
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

use std::path::Path;
use std::time::Instant;

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_logistic::MultiLogisticRegression;
use llmembed_core::{
    Arity, Context, Error, Input, Predictions, Result, Stage, Summary, fsutil, seeded_rng,
    write_predictions,
};
use ndarray::{Array1, Array2, ArrayView2, Axis, ShapeBuilder, s};
use serde::{Deserialize, Serialize};

use crate::data::{
    Split, Standardizer, accuracy, check_folds, complement, load_train_test, stratified_folds,
};

/// At most this many warm-started linfa runs per fit.
pub const MAX_RUNS: usize = 20;

pub(crate) fn default_tol() -> f64 {
    1e-4
}
pub(crate) fn default_max_iterations() -> u64 {
    1000
}
pub(crate) fn default_folds() -> usize {
    5
}

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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// Which optimiser fits the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// Grid search over `C` by stratified k-fold cross-validation on the training rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRegSelect {
    pub c: Vec<f64>,
    #[serde(default = "default_folds")]
    pub folds: usize,
}

/// `kind: logreg`.
pub struct LogReg;

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

pub(crate) fn check_c(name: &str, c: f64) -> Result<()> {
    if !(c.is_finite() && c > 0.0) {
        return Err(Error::param(
            name,
            format!("must be a positive finite number, got {c}"),
        ));
    }
    Ok(())
}

fn softmax_rows(logits: &mut Array2<f64>) {
    for mut row in logits.rows_mut() {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.mapv_inplace(|v| (v - m).exp());
        let z = row.sum();
        row.mapv_inplace(|v| v / z);
    }
}

/// Value and gradient norm of scikit-learn's objective `J_sk` (see the module docs).
pub(crate) fn sklearn_objective(
    x: ArrayView2<f64>,
    onehot: &Array2<f64>,
    w: &Array2<f64>,
    b: &Array1<f64>,
    c: f64,
) -> (f64, Array2<f64>, Array1<f64>) {
    let mut p = x.dot(w) + b;
    // Cross-entropy with a per-row log-sum-exp.
    let mut loss = 0.0;
    for (row, y) in p.rows().into_iter().zip(onehot.rows()) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss -= row.iter().zip(y).map(|(z, t)| t * (z - lse)).sum::<f64>();
    }
    let value = loss + 0.5 / c * w.iter().map(|v| v * v).sum::<f64>();
    softmax_rows(&mut p);
    let diff = p - onehot;
    let gw = x.t().dot(&diff) + &(w / c);
    let gb = diff.sum_axis(Axis(0));
    (value, gw, gb)
}

/// Largest absolute gradient component: scikit-learn's (scipy's `pgtol`) convergence measure.
fn norm_inf(gw: &Array2<f64>, gb: &Array1<f64>) -> f64 {
    gw.iter().chain(gb.iter()).fold(0.0, |m, v| m.max(v.abs()))
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
    let mut present: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    present.sort_unstable();
    present.dedup();
    let k = present.len();
    let y: Array1<usize> = labels
        .iter()
        .map(|&l| present.binary_search(&(l as usize)).expect("present label"))
        .collect();
    let mut onehot = Array2::<f64>::zeros((n, k));
    for (i, &j) in y.iter().enumerate() {
        onehot[[i, j]] = 1.0;
    }
    // X column-major: every product here (`X W`, `X^T R`, a handful of classes) is bound by
    // reading X, and with two threads matrixmultiply runs both about 2.4x faster on a
    // column-major X (8,794 x 640: 2.3 ms instead of 5.6 ms per product). `standardized_pair`
    // builds training matrices that way; anything else is copied once.
    let column_major;
    let input = x;
    let x = if input.t().is_standard_layout() {
        input.view()
    } else {
        let mut copy = Array2::<f64>::zeros((n, d).f());
        copy.assign(&input);
        column_major = copy;
        column_major.view()
    };
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

struct ExactResult {
    w: Array2<f64>,
    b: Array1<f64>,
    gradient_norm: f64,
    converged: bool,
    iterations: u64,
}

/// A point (or direction) in parameter space: weights and intercepts.
type Point = (Array2<f64>, Array1<f64>);

fn dot2(a: &Point, b: &Point) -> f64 {
    (&a.0 * &b.0).sum() + (&a.1 * &b.1).sum()
}

/// L-BFGS (memory 10, two-loop recursion, Armijo backtracking from step 1) on scikit-learn's exact
/// objective `J_sk`, with a per-row stable log-sum-exp. The fallback when linfa stops short.
fn lbfgs_exact(
    x: ArrayView2<f64>,
    onehot: &Array2<f64>,
    c: f64,
    w0: Array2<f64>,
    b0: Array1<f64>,
    tol: f64,
    max_iterations: u64,
) -> ExactResult {
    const M: usize = 10;
    let mut theta = (w0, b0);
    let (mut f, gw, gb) = sklearn_objective(x, onehot, &theta.0, &theta.1, c);
    let mut g = (gw, gb);
    // (s, y, 1 / s.y) pairs, oldest first.
    let mut mem: std::collections::VecDeque<(Point, Point, f64)> =
        std::collections::VecDeque::new();
    let mut iterations = 0;
    let mut gnorm = norm_inf(&g.0, &g.1);
    while gnorm >= tol && iterations < max_iterations {
        let g2 = dot2(&g, &g).sqrt();
        iterations += 1;
        // Two-loop recursion: dir = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(mem.len());
        for (s, yv, rho) in mem.iter().rev() {
            let a = rho * dot2(s, &q);
            q.0.scaled_add(-a, &yv.0);
            q.1.scaled_add(-a, &yv.1);
            alphas.push(a);
        }
        let gamma = match mem.back() {
            Some((s, yv, _)) => dot2(s, yv) / dot2(yv, yv),
            None => 1.0 / g2.max(1.0),
        };
        q.0 *= gamma;
        q.1 *= gamma;
        for ((s, yv, rho), a) in mem.iter().zip(alphas.into_iter().rev()) {
            let beta = rho * dot2(yv, &q);
            q.0.scaled_add(a - beta, &s.0);
            q.1.scaled_add(a - beta, &s.1);
        }
        let mut dir = (-q.0, -q.1);
        let mut slope = dot2(&g, &dir);
        if slope >= 0.0 {
            mem.clear();
            let scale = 1.0 / g2.max(1.0);
            dir = (&g.0 * -scale, &g.1 * -scale);
            slope = dot2(&g, &dir);
        }
        // Armijo backtracking.
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..50 {
            let cand = (&theta.0 + &(&dir.0 * step), &theta.1 + &(&dir.1 * step));
            let (fc, gwc, gbc) = sklearn_objective(x, onehot, &cand.0, &cand.1, c);
            if fc.is_finite() && fc <= f + 1e-4 * step * slope {
                accepted = Some((cand, fc, (gwc, gbc)));
                break;
            }
            step *= 0.5;
        }
        let Some((cand, fc, gc)) = accepted else {
            break; // no decrease possible along the direction: stalled
        };
        let s = (&cand.0 - &theta.0, &cand.1 - &theta.1);
        let yv = (&gc.0 - &g.0, &gc.1 - &g.1);
        let sy = dot2(&s, &yv);
        if sy > 1e-12 * dot2(&yv, &yv).max(f64::MIN_POSITIVE) {
            if mem.len() == M {
                mem.pop_front();
            }
            mem.push_back((s, yv, 1.0 / sy));
        }
        theta = cand;
        f = fc;
        g = gc;
        gnorm = norm_inf(&g.0, &g.1);
    }
    ExactResult {
        w: theta.0,
        b: theta.1,
        gradient_norm: gnorm,
        converged: gnorm < tol,
        iterations,
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
        let mut p = x.dot(&self.w) + &self.b;
        softmax_rows(&mut p);
        let mut out = vec![0f32; x.nrows() * self.n_classes];
        for (i, row) in p.rows().into_iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                out[i * self.n_classes + self.present[j]] = v as f32;
            }
        }
        out
    }
}

pub(crate) fn preds_of(probs: &[f32], k: usize) -> Vec<i64> {
    probs
        .chunks(k)
        .map(|r| crate::data::argmax(r) as i64)
        .collect()
}

/// Both splits as f64 matrices, standardised with the statistics of `train` only.
/// The training matrix column-major (what [`fit_logreg`] reads fastest, with no copy), the other
/// row-major.
pub(crate) fn standardized_pair(
    train: &Split,
    other: &Split,
) -> Result<(Array2<f64>, Array2<f64>)> {
    let st = Standardizer::fit(train);
    let train_matrix =
        Array2::from_shape_vec((train.rows(), train.dim).f(), st.apply_f64_columns(train))
            .map_err(|e| Error::compute("build feature matrix", e))?;
    Ok((train_matrix, matrix(other, &st)?))
}

pub(crate) fn matrix(split: &Split, st: &Standardizer) -> Result<Array2<f64>> {
    Array2::from_shape_vec((split.rows(), split.dim), st.apply_f64(split))
        .map_err(|e| Error::compute("build feature matrix", e))
}

/// One row of the CV table in `model.json`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CvRow {
    pub c: f64,
    pub fold_accuracy: Vec<f64>,
    pub mean_accuracy: f64,
    pub all_converged: bool,
}

#[derive(Clone, Debug, Serialize)]
struct Selection {
    folds: usize,
    table: Vec<CvRow>,
    best_c: f64,
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

/// Stratified k-fold CV of each C on the training rows (standardiser refit inside each fold).
pub(crate) fn cross_validate(
    train: &Split,
    sel: &LogRegSelect,
    tol: f64,
    max_iterations: u64,
    solver: LogRegSolver,
    seed: u64,
) -> Result<Vec<CvRow>> {
    let mut rng = seeded_rng(seed, "logreg-cv-folds");
    let folds = stratified_folds(&train.labels, sel.folds, &mut rng);
    let k = train.label_names.len();
    let mut parts = Vec::new();
    for fold in &folds {
        let tr = train.subset(&complement(train.rows(), fold));
        let va = train.subset(fold);
        let (xtr, xva) = standardized_pair(&tr, &va)?;
        parts.push((xtr, tr.labels, xva, va.labels));
    }
    let mut table = Vec::new();
    for &c in &sel.c {
        let mut accs = Vec::new();
        let mut all_converged = true;
        for (xtr, ytr, xva, yva) in &parts {
            let fit = fit_logreg(xtr.view(), ytr, k, c, tol, max_iterations, solver)?;
            all_converged &= fit.converged;
            accs.push(accuracy(yva, &preds_of(&fit.predict_proba(xva.view()), k)));
        }
        table.push(CvRow {
            c,
            mean_accuracy: accs.iter().sum::<f64>() / accs.len() as f64,
            fold_accuracy: accs,
            all_converged,
        });
    }
    Ok(table)
}

/// Best mean CV accuracy; ties go to the smaller C (stronger regularisation).
fn best_c(table: &[CvRow]) -> f64 {
    let mut best = &table[0];
    for row in table {
        if row.mean_accuracy > best.mean_accuracy
            || (row.mean_accuracy == best.mean_accuracy && row.c < best.c)
        {
            best = row;
        }
    }
    best.c
}

impl Stage for LogReg {
    const KIND: &'static str = "logreg";
    const VERSION: u32 = 2;
    const INPUTS: Arity = Arity::Exactly(1);
    // The pipeline's seed is part of the key: cross-validation folds are drawn with it.
    const SEEDED: bool = true;
    type Params = LogRegParams;

    fn check(p: &LogRegParams) -> Result<()> {
        if p.column.is_some() && p.columns.is_some() {
            return Err(Error::param(
                "column",
                "give either `column` or `columns`, not both",
            ));
        }
        if let Some(cs) = &p.columns
            && cs.is_empty()
        {
            return Err(Error::param("columns", "empty list"));
        }
        if let Some(c) = p.c {
            check_c("c", c)?;
        }
        if !(p.tol.is_finite() && p.tol > 0.0) {
            return Err(Error::param(
                "tol",
                format!("must be positive, got {}", p.tol),
            ));
        }
        if p.max_iterations == 0 {
            return Err(Error::param("max_iterations", "must be at least 1"));
        }
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
            if sel.folds < 2 {
                return Err(Error::param("select.folds", "needs at least 2 folds"));
            }
        }
        Ok(())
    }

    fn run(p: &LogRegParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(p)?;
        let input = &inputs[0];
        let (train_path, test_path) = (input.split("train")?, input.split("test")?);
        if let Some(sel) = &p.select {
            check_folds(&train_path, "select.folds", sel.folds)?;
        }
        let (train, test, columns) = load_train_test(
            &train_path,
            &test_path,
            p.column.as_deref(),
            p.columns.as_deref(),
        )?;
        let k = train.label_names.len();
        let mut notes = Vec::new();

        let (c, select) = match &p.select {
            None => (p.c.unwrap_or(1.0), None),
            Some(sel) => {
                let table =
                    cross_validate(&train, sel, p.tol, p.max_iterations, p.solver, ctx.seed)?;
                let c = best_c(&table);
                notes.push(format!("{}-fold CV picked C={c}", sel.folds));
                (
                    c,
                    Some(Selection {
                        folds: sel.folds,
                        table,
                        best_c: c,
                    }),
                )
            }
        };

        let (xtr, xte) = standardized_pair(&train, &test)?;
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
        let probs = fit.predict_proba(xte.view());
        let preds = preds_of(&probs, k);
        let test_acc = accuracy(&test.labels, &preds);
        let predictions = Predictions {
            ids: test.ids.clone(),
            labels: test.labels.clone(),
            preds,
            probs,
            label_names: test.label_names.clone(),
            producer: format!("logreg(C={c}, {})", columns.join("+")),
        };
        write_predictions(&ctx.out("predictions.parquet"), &predictions)?;
        let summary = ModelSummary {
            kind: "logreg",
            columns,
            input_dim: train.dim,
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
            rows_out: test.rows(),
            notes,
        })
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| Error::compute("serialize model.json", e))?;
    fsutil::write_bytes_atomic(path, &bytes)
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
    let (tr, te, _) = load_train_test(train, test, Some(column), None)?;
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
        dim: tr.dim,
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
