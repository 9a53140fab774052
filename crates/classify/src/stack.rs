//! `method: stack` of `kind: ensemble`: stacked generalisation (Wolpert 1992; what scikit-learn's
//! `StackingClassifier` does with `stack_method="predict_proba"`, its final estimator fitted on
//! the members' cross-validated predictions). A multinomial logistic regression learns how much
//! to trust each member for each class, from the members' out-of-fold probabilities of the
//! training rows: what each member says about rows its fits did not see, which is what it will
//! say about the test rows. Averaging (`soft`,
//! `geometric`) gives every member the same weight, so a weak member (TF-IDF beside two LLM
//! views) pulls as hard as a strong one.
//!
//! The features are the members' log-probabilities, member after member (`members x classes`
//! columns), each floored at [`STACK_FLOOR`]; unstandardised, since they share one scale. With
//! equal weights on a member's own classes and no intercept the regression is `geometric`'s
//! product of experts, so the stack can reach every geometric ensemble of its members.
//!
//! Its CV score, for `select`, is cross-validated over the members' own folds: for each fold,
//! the regression is fitted on the other folds' out-of-fold rows and predicts the fold's. It is a
//! little optimistic, as every CV score here is: the members' C (or epochs) were chosen on the
//! same folds, and a member's out-of-fold probabilities of the other folds came from fits that
//! saw this fold's rows. C is chosen on the same CV ([`better_c`]: the highest mean accuracy,
//! ties to the smaller C), then fitted on all the out-of-fold rows.

use llmembed_core::{Error, Predictions, Result};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::folds::CvFolds;
use crate::logreg::better_c;
use crate::logreg_fit::{CvRow, fit_exact, grid_cv, linear_probabilities};
use crate::prologue::best_index;

/// The smallest probability a feature takes the logarithm of. Why this floor and not
/// `geometric`'s 1e-12: the members' probabilities are fitted on a few thousand rows, and
/// below about one in a million they say nothing the regression could weigh; a deeper floor
/// only lets a few over-confident rows dominate the fit's scale.
pub const STACK_FLOOR: f64 = 1e-6;
/// The fit's tolerance (scikit-learn's `tol`, on the mean gradient) and iteration budget: the
/// problem is small (members x classes features), so a tight tolerance costs nothing.
const TOL: f64 = 1e-6;
const MAX_ITERATIONS: u64 = 1000;

/// The C grid when the params give none: scikit-learn's default C.
pub(crate) fn default_grid() -> Vec<f64> {
    vec![1.0]
}

/// A fitted stack, saved in the ensemble's `classifier.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StackModel {
    /// The C chosen by CV.
    pub c: f64,
    pub members: usize,
    pub classes: usize,
    /// `members x classes` rows (member `m`'s class `j` is row `m * classes + j`), each one
    /// weight per class seen in training (`present`, in order).
    pub weights: Vec<Vec<f64>>,
    pub intercepts: Vec<f64>,
    pub present: Vec<usize>,
    /// Whether the final fit met its tolerance.
    pub converged: bool,
    /// The CV table of the grid.
    pub cv: Vec<CvRow>,
}

/// The stack's features of the first member's rows: per row, every member's log-probabilities
/// ([`STACK_FLOOR`]), member after member; `order[m][i]` is member `m`'s row of row `i`
/// ([`crate::ensemble::align`]).
pub(crate) fn features(members: &[(String, Predictions)], order: &[Vec<usize>]) -> Array2<f64> {
    let n = order.first().map_or(0, Vec::len);
    let k = members.first().map_or(0, |(_, m)| m.num_classes());
    let mut x = Array2::zeros((n, members.len() * k));
    for (m, ((_, member), row_of)) in members.iter().zip(order).enumerate() {
        for (i, &r) in row_of.iter().enumerate() {
            for (j, &p) in member.row_probs(r).iter().enumerate() {
                x[[i, m * k + j]] = (p as f64).max(STACK_FLOOR).ln();
            }
        }
    }
    x
}

/// What [`fit`] gives: the model, and the training rows' probabilities at the chosen C, each
/// from the fold fit that did not see the row (rows x classes).
pub(crate) struct StackFit {
    pub model: StackModel,
    pub out_of_fold: Vec<f32>,
}

/// Fits the stack on `x` ([`features`] of the members' out-of-fold probabilities, every row
/// labelled) and `labels`, choosing C of `grid` by CV over `folds` (the members' folds).
pub(crate) fn fit(
    x: ArrayView2<f64>,
    labels: &[i64],
    classes: usize,
    members: usize,
    folds: &CvFolds,
    grid: &[f64],
) -> Result<StackFit> {
    const OP: &str = "fit stack";
    let (n, d) = x.dim();
    if d != members * classes || labels.len() != n {
        return Err(Error::mismatch(
            OP,
            format!(
                "features ({n}, {d}) for {members} members x {classes} classes and {} labels",
                labels.len()
            ),
        ));
    }
    if grid.is_empty() {
        return Err(Error::param("c", "the grid is empty"));
    }
    // Each fold's rows are selected once, for every C of the grid.
    let (table, mut out_of_fold) = grid_cv(folds, labels, grid, classes, |f| {
        let train = folds.training_rows(f);
        let y: Vec<i64> = train.iter().map(|&r| labels[r]).collect();
        let (x_train, x_fold) = (x.select(Axis(0), &train), x.select(Axis(0), &folds.rows[f]));
        Ok(grid
            .iter()
            .map(|&c| {
                let fitted = fit_exact(x_train.view(), &y, classes, d, c, TOL, MAX_ITERATIONS);
                (fitted.probabilities(x_fold.view()), fitted.converged)
            })
            .collect())
    })?;
    let best = best_index(&table, better_c);
    let c = table[best].c;
    let fitted = fit_exact(x, labels, classes, d, c, TOL, MAX_ITERATIONS);
    Ok(StackFit {
        model: StackModel {
            c,
            members,
            classes,
            weights: fitted.w.rows().into_iter().map(|r| r.to_vec()).collect(),
            intercepts: fitted.b.to_vec(),
            present: fitted.present.clone(),
            converged: fitted.converged,
            cv: table,
        },
        out_of_fold: out_of_fold.swap_remove(best),
    })
}

impl StackModel {
    /// Class probabilities of rows of [`features`] (rows x classes, row-major), as the fit
    /// computed them for its CV rows.
    pub(crate) fn probabilities(&self, x: ArrayView2<f64>) -> Result<Vec<f32>> {
        let d = self.members * self.classes;
        let present = self.present.len();
        if x.ncols() != d
            || self.weights.len() != d
            || self.weights.iter().any(|r| r.len() != present)
            || self.intercepts.len() != present
            || self.present.iter().any(|&j| j >= self.classes)
        {
            return Err(Error::mismatch(
                "apply stack",
                format!(
                    "features of {} columns for a stack of {} members x {} classes ({} weight \
                     rows, {present} classes seen in training)",
                    x.ncols(),
                    self.members,
                    self.classes,
                    self.weights.len()
                ),
            ));
        }
        let w = Array2::from_shape_fn((d, present), |(i, j)| self.weights[i][j]);
        let b = Array1::from(self.intercepts.clone());
        Ok(linear_probabilities(x, &w, &b, &self.present, self.classes))
    }
}
