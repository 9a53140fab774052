//! Classifiers on frozen embeddings and their ensembles:
//!
//! * [`LogReg`] (`kind: logreg`): multinomial logistic regression (an exact-objective L-BFGS; linfa-logistic as `solver: linfa`) on
//!   standardised features, with scikit-learn's `C` (see [`logreg`](crate::LogReg) docs for the
//!   exact translation) and optional C selection by stratified CV on train rows.
//! * [`Mlp`] (`kind: mlp`): the paper's MLP head (candle), seeded end to end.
//! * [`Ensemble`] (`kind: ensemble`): soft or hard voting over prediction artifacts.
//! * [`LayerSweep`] (`kind: layer_sweep`): the depth ablation, one logistic regression per
//!   `layer_<i>` column, the layer chosen by CV on train rows, test scores reported.
//!
//! `logreg` and `mlp` read one embedding artifact (`train.parquet`, `test.parquet`) and write
//! `predictions.parquet` (test rows) and `model.json` (hyper-parameters, CV table, timing,
//! convergence). [`bench_logreg`] times the logistic-regression fit against the scikit-learn
//! reference script `scripts/reference/sklearn_logreg.py`.

mod data;
mod ensemble;
mod layer_sweep;
mod logreg;
mod mlp;
mod plot;

pub use ensemble::{Ensemble, EnsembleMethod, EnsembleParams};
pub use layer_sweep::{LayerSweep, LayerSweepParams};
pub use llmembed_core::Layers;
pub use logreg::{
    LogReg, LogRegBench, LogRegParams, LogRegSelect, LogRegSolver, bench_logreg,
    bench_logreg_with_solver,
};
pub use mlp::{DEFAULT_EPOCHS, Mlp, MlpParams, MlpSelect};

#[cfg(test)]
mod tests;
