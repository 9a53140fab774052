//! The solver of `solver: lbfgs` (and linfa's fallback): L-BFGS with memory 10, the two-loop
//! recursion and Armijo backtracking from step 1, on scikit-learn's exact objective `J_sk` (see
//! `logreg_fit`), with a per-row stable log-sum-exp. Pure arithmetic on ndarray: it
//! knows nothing about tables, params or stages.

use std::collections::VecDeque;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use sprs::CsMat;

/// The two products of the objective with the feature matrix `X` (`n x d`): `X W` and `X^T R`.
/// Dense standardised features and sparse TF-IDF rows (CSR, never densified) share the solver.
pub(crate) trait Design: Copy {
    /// `X W` (`n x k`).
    fn dot(self, w: &Array2<f64>) -> Array2<f64>;
    /// `X^T R` (`d x k`).
    fn t_dot(self, r: &Array2<f64>) -> Array2<f64>;
}

impl Design for ArrayView2<'_, f64> {
    fn dot(self, w: &Array2<f64>) -> Array2<f64> {
        ArrayView2::dot(&self, w)
    }
    fn t_dot(self, r: &Array2<f64>) -> Array2<f64> {
        self.t().dot(r)
    }
}

/// sprs's serial products: each output sums its terms in the order of the stored entries, so the
/// same rows give the same bits on every machine and thread count.
impl Design for &CsMat<f64> {
    fn dot(self, w: &Array2<f64>) -> Array2<f64> {
        self * w
    }
    fn t_dot(self, r: &Array2<f64>) -> Array2<f64> {
        &self.transpose_view() * r
    }
}

/// Rows turned into probabilities (each shifted by its own maximum first).
pub(crate) fn softmax_rows(logits: &mut Array2<f64>) {
    for mut row in logits.rows_mut() {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.mapv_inplace(|v| (v - m).exp());
        let z = row.sum();
        row.mapv_inplace(|v| v / z);
    }
}

/// Value and gradient norm of scikit-learn's objective `J_sk` (see the module docs).
pub(crate) fn sklearn_objective<X: Design>(
    x: X,
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
    let gw = x.t_dot(&diff) + &(w / c);
    let gb = diff.sum_axis(Axis(0));
    (value, gw, gb)
}

/// Largest absolute gradient component: scikit-learn's (scipy's `pgtol`) convergence measure.
pub(crate) fn norm_inf(gw: &Array2<f64>, gb: &Array1<f64>) -> f64 {
    gw.iter().chain(gb.iter()).fold(0.0, |m, v| m.max(v.abs()))
}

/// Where [`lbfgs_exact`] stopped.
pub(crate) struct ExactResult {
    pub w: Array2<f64>,
    pub b: Array1<f64>,
    pub gradient_norm: f64,
    pub converged: bool,
    pub iterations: u64,
}

/// A point (or direction) in parameter space: weights and intercepts.
type Point = (Array2<f64>, Array1<f64>);

fn dot2(a: &Point, b: &Point) -> f64 {
    (&a.0 * &b.0).sum() + (&a.1 * &b.1).sum()
}

/// L-BFGS (memory 10, two-loop recursion, Armijo backtracking from step 1) on scikit-learn's exact
/// objective `J_sk`, with a per-row stable log-sum-exp. The fallback when linfa stops short.
pub(crate) fn lbfgs_exact<X: Design>(
    x: X,
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
    let mut mem: VecDeque<(Point, Point, f64)> = VecDeque::new();
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
