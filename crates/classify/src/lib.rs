//! Classifiers on frozen embeddings and their ensembles:
//!
//! * [`LogReg`] (`kind: logreg`): multinomial logistic regression on standardised features with
//!   scikit-learn's `C`: an L-BFGS on scikit-learn's exact objective by default, linfa-logistic
//!   (with the exact L-BFGS as its fallback) as `solver: linfa`; optional C selection by
//!   stratified CV on train rows.
//! * [`Mlp`] (`kind: mlp`): the paper's MLP head (candle), seeded end to end.
//! * [`Ensemble`] (`kind: ensemble`): soft, hard or geometric voting over prediction artifacts,
//!   or a stack: a logistic regression on the members' out-of-fold probabilities (`stack`).
//! * [`LayerSweep`] (`kind: layer_sweep`): the depth ablation, one logistic regression per
//!   `layer_<i>` column, the layer chosen by CV on train rows, test scores reported.
//! * [`Select`] (`kind: select`): of several classifiers, the one with the best CV accuracy on
//!   the training rows (as each recorded it), its predictions passed on.
//!
//! `logreg` and `mlp` read one embedding artifact (`train.parquet`, `test.parquet`) and write
//! `predictions.parquet` (test rows, with a label or not), `predictions-<split>.parquet` for any
//! other split but train, `model.json` (hyper-parameters, CV table, convergence) and the fitted
//! model (`model.safetensors`, `classifier.json`: see `saved.rs`), which their `Stage::applier`
//! loads to classify new rows exactly as the stage did. Training rows without a label
//! (`UNLABELLED`) are dropped with a note. [`bench_logreg`] times the logistic-regression fit against the scikit-learn
//! reference script `scripts/reference/sklearn_logreg.py`.
//!
//! # Modules
//! The stages (`logreg`, `mlp`, `layer_sweep`, `ensemble`, `select`) sit on shared pieces that import
//! none of them: `prologue` (param checks, reading train/test, the best row of a CV table,
//! writing predictions and JSON), `data` (feature matrices and their standardisation), `folds`
//! (stratified folds), `logreg_fit` (the fit and the CV of `C`), `lbfgs` (the solver), `mlp_net`
//! (the network), `saved` (the saved models and their appliers), `stack` (the fit of `ensemble`'s `stack`). Metrics come from
//! `llmembed_core::metrics`, the ones `evaluate` reports.

mod adam;
mod data;
mod ensemble;
mod folds;
mod layer_sweep;
mod lbfgs;
mod logreg;
mod logreg_fit;
mod mlp;
mod mlp_net;
mod plot;
mod prologue;
mod saved;
mod select;
mod sparse;
mod stack;

pub use ensemble::{Ensemble, EnsembleMethod, EnsembleParams};
pub use layer_sweep::{LayerSweep, LayerSweepParams};
pub use llmembed_core::Layers;
pub use logreg::{
    LogReg, LogRegBench, LogRegParams, LogRegSelect, bench_logreg, bench_logreg_with_solver,
};
pub use logreg_fit::LogRegSolver;
pub use mlp::{DEFAULT_EPOCHS, Mlp, MlpParams, MlpSelect};
pub use select::{Select, SelectParams};

#[cfg(test)]
mod tests;
