//! The params of `kind: fuse` and the checks that need no input.

use llmembed_core::{Error, Layers, Result};
use serde::{Deserialize, Serialize};

/// Params of `kind: fuse`. Example:
/// ```yaml
/// kind: fuse
/// inputs: [extract_llm, extract_bert]
/// params:
///   sources:
///     - {layers: [-5, -4, -3, -2, -1]}
///     - {columns: [pooler]}
///   method: cooccurrence
///   normalize: l2
///   standardize: false
///   cooccurrence: {width: 1024, sigma: 1.0, gram: full}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FuseParams {
    /// One entry per input, in input order: which vector columns of it to use.
    pub sources: Vec<SourceSpec>,
    #[serde(default = "default_method")]
    pub method: Method,
    #[serde(default = "default_normalize")]
    pub normalize: Normalize,
    #[serde(default = "default_false")]
    pub standardize: bool,
    /// Settings of `method: weighted` (ignored by the other methods).
    #[serde(default = "WeightedParams::default")]
    pub weighted: WeightedParams,
    /// Settings of `method: cooccurrence` (ignored by the other methods).
    #[serde(default = "CooccurrenceParams::default")]
    pub cooccurrence: CooccurrenceParams,
    /// Overrides the pipeline seed (used by `weighted` batch order and `cooccurrence` projections).
    #[serde(default = "default_seed")]
    pub seed: Option<u64>,
}

/// Which columns of one input to use. `layers` and `columns` may be combined; the selection is
/// the layers (in the order given; `all` = every `layer_<i>` column by increasing `i`) followed by
/// the named columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `all`, or a list of layer indices: `i >= 0` is column `layer_<i>`; `i < 0` counts from the
    /// end of the input's `layer_*` columns (`-1` = the highest-numbered layer).
    #[serde(default = "default_layers")]
    pub layers: Option<Layers<i64>>,
    /// Other vector columns by name, e.g. `final_norm`, `pooler`.
    #[serde(default)]
    pub columns: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Mean,
    Max,
    Concat,
    Weighted,
    Cooccurrence,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    None,
    L2,
}

/// Training of the layer weights of `method: weighted` (Adam on the train rows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedParams {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Decoupled weight decay on the linear probe (not on the layer weights).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// The folds of the classifiers' cross-validation after this stage (their `select.folds`;
    /// 5 by default, or the inputs' where they made their vectors per fold): the weights are
    /// learned on the labels, so the training rows' vectors are also made once per fold, with
    /// weights learned without that fold's rows
    /// (`train.fold<f>.parquet`), and a classifier's CV scores each fold on those. Left out of
    /// the canonical params when not given, so that no fuse stage's key moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<usize>,
}

impl Default for WeightedParams {
    fn default() -> Self {
        WeightedParams {
            epochs: default_epochs(),
            lr: default_lr(),
            batch_size: default_batch_size(),
            weight_decay: default_weight_decay(),
            folds: None,
        }
    }
}

/// Settings of `method: cooccurrence`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CooccurrenceParams {
    /// Common width the source vectors are projected to (1024 in the paper).
    #[serde(default = "default_width")]
    pub width: usize,
    /// Scale inside the squashing function `tanh(sigma * G / 2)`.
    #[serde(default = "default_sigma")]
    pub sigma: f64,
    /// `full`: all k*k Gram entries, row-major (as the official code); `upper`: the k(k+1)/2
    /// entries on and above the diagonal.
    #[serde(default = "default_gram")]
    pub gram: Gram,
}

impl Default for CooccurrenceParams {
    fn default() -> Self {
        CooccurrenceParams {
            width: default_width(),
            sigma: default_sigma(),
            gram: default_gram(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Gram {
    Full,
    Upper,
}

fn default_method() -> Method {
    Method::Mean
}
fn default_normalize() -> Normalize {
    Normalize::None
}
fn default_false() -> bool {
    false
}
fn default_seed() -> Option<u64> {
    None
}
fn default_layers() -> Option<Layers<i64>> {
    None
}
fn default_epochs() -> usize {
    50
}
fn default_lr() -> f64 {
    0.05
}
fn default_batch_size() -> usize {
    128
}
fn default_weight_decay() -> f64 {
    0.0
}
fn default_width() -> usize {
    1024
}
fn default_sigma() -> f64 {
    1.0
}
fn default_gram() -> Gram {
    Gram::Full
}

/// The checks of [`FuseParams`] that need no input (`Stage::check`).
pub(crate) fn check(p: &FuseParams) -> Result<()> {
    if p.sources.is_empty() {
        return Err(Error::param("sources", "give one entry per input"));
    }
    for (i, s) in p.sources.iter().enumerate() {
        let name = format!("sources[{i}]");
        match &s.layers {
            None if s.columns.is_empty() => {
                return Err(Error::param(&name, "select `layers` and/or `columns`"));
            }
            Some(Layers::List(l)) if l.is_empty() => {
                return Err(Error::param(
                    &format!("{name}.layers"),
                    "empty list (leave `layers` out to use only `columns`)",
                ));
            }
            _ => {}
        }
    }
    let w = &p.weighted;
    if w.epochs == 0 || w.batch_size == 0 {
        return Err(Error::param(
            "weighted",
            "`epochs` and `batch_size` must be at least 1",
        ));
    }
    if !(w.lr.is_finite() && w.lr > 0.0) {
        return Err(Error::param("weighted.lr", "must be a positive number"));
    }
    if !(w.weight_decay.is_finite() && w.weight_decay >= 0.0) {
        return Err(Error::param("weighted.weight_decay", "must be >= 0"));
    }
    if let Some(k) = w.folds.filter(|&k| k < 2) {
        return Err(Error::param(
            "weighted.folds",
            format!("needs at least 2 folds, got {k}"),
        ));
    }
    let c = &p.cooccurrence;
    if c.width == 0 {
        return Err(Error::param("cooccurrence.width", "must be at least 1"));
    }
    if !(c.sigma.is_finite() && c.sigma > 0.0) {
        return Err(Error::param(
            "cooccurrence.sigma",
            "must be a positive number",
        ));
    }
    Ok(())
}
