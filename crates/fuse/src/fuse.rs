//! The `fuse` stage: turns the per-layer vectors of one or more embedding artifacts into one
//! vector per row (column `embedding`).
//!
//! # Terms
//! * A *source* is one input artifact together with the columns selected from it
//!   (`sources[i]` describes `inputs[i]`).
//! * A *source vector* is one selected column of one source (e.g. `layer_15` of the LLM).
//!
//! # Pipeline per split (the same for every method)
//! 1. Read the selected columns of every input; rows of inputs 2.. are matched to the rows of
//!    input 1 **by id** (the output keeps input 1's row order). Row sets, labels and label names
//!    must agree; the first differing id is named in the error.
//! 2. `normalize: l2` scales every source vector of every row to unit length.
//! 3. The method (below) makes one vector per row.
//! 4. `standardize: true` z-scores every output dimension with mean / std fitted on the train
//!    split and applied unchanged to every split.
//!
//! # Methods
//! * `mean` / `max`: element-wise mean / max over the selected vectors **within each source**
//!   (their widths must agree), then concatenation across sources in input order. Output width:
//!   sum of the source widths.
//! * `concat`: every selected vector of every source side by side, in order (sources in input
//!   order, vectors in selection order).
//! * `weighted`: within each source a softmax-weighted sum of its selected vectors, then
//!   concatenation across sources. The weights (one set per source) are learned on the train rows
//!   only, jointly with a throw-away linear softmax classifier, and written to `weights.json`
//!   (see [`crate::weighted`] for what exactly is optimised).
//! * `cooccurrence` (LLMEmbed's co-occurrence pooling): the `k` source vectors of all sources are
//!   brought to a common width `cooccurrence.width` (a vector already that wide is used as is;
//!   others are multiplied by a fixed seeded Gaussian projection with N(0, 1/width) entries, one
//!   matrix per source vector), stacked into `V` (k x width), and `G = V Vᵀ` is squashed with
//!   `tanh(sigma * G / 2)` (= the paper's `2 * sigmoid(sigma * G) - 1`). The flattened squashed
//!   Gram matrix (all k*k entries, or the upper triangle with the diagonal) is followed by the mean
//!   of the first source's selected vectors. With 5 LLaMA layers (4096) + BERT + RoBERTa (1024
//!   each) and `width: 1024` this is the official code's 49 + 4096 = 4145 features.
//!
//!   Why a random projection: in the official code the 4096 -> 1024 compression is a
//!   `Linear + ReLU + Dropout` trained end to end with the MLP classifier, which this stage cannot
//!   do (it has no classifier). A fixed Gaussian projection needs no fitting, is the same for
//!   train and test, and preserves inner products in expectation (Johnson-Lindenstrauss), which is
//!   all that the Gram matrix consumes; PCA would need a 4096 x 4096 eigendecomposition per layer
//!   and discards the scale of the components that the inner products depend on. Raw LLM hidden
//!   states have large norms, so `tanh` saturates to +-1 unless the vectors are scaled first:
//!   use `normalize: l2` (then `G` holds cosine similarities) or a small `sigma`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use llmembed_core::table::embedding_columns;
use llmembed_core::{
    Arity, Context, EmbeddingTable, Error, Input, Precision, Result, Stage, Summary, VectorColumn,
    read_embedding_table, write_embedding_table,
};

use crate::ops::{self, GramEntries, Mat, Standardizer};
use crate::weighted;

/// The `fuse` stage kind.
pub struct Fuse;

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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `all`, or a list of layer indices: `i >= 0` is column `layer_<i>`; `i < 0` counts from the
    /// end of the input's `layer_*` columns (`-1` = the highest-numbered layer).
    #[serde(default = "default_layers")]
    pub layers: Option<Layers>,
    /// Other vector columns by name, e.g. `final_norm`, `pooler`.
    #[serde(default = "Vec::new")]
    pub columns: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Layers {
    All(AllLayers),
    List(Vec<i64>),
}

/// The keyword `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllLayers {
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Mean,
    Max,
    Concat,
    Weighted,
    Cooccurrence,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    None,
    L2,
}

/// Training of the layer weights of `method: weighted` (Adam on the train rows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

impl Default for WeightedParams {
    fn default() -> Self {
        WeightedParams {
            epochs: default_epochs(),
            lr: default_lr(),
            batch_size: default_batch_size(),
            weight_decay: default_weight_decay(),
        }
    }
}

/// Settings of `method: cooccurrence`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
fn default_layers() -> Option<Layers> {
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

/// One input's selection resolved to column names, with their widths.
struct Resolved {
    stage_id: String,
    columns: Vec<(String, usize)>,
}

/// One split of every source, aligned to the row order of the first input.
struct Aligned {
    ids: Vec<String>,
    labels: Vec<i64>,
    label_names: Vec<String>,
    /// `sources[s][v]`: selected vector `v` of source `s`.
    sources: Vec<Vec<Mat>>,
}

/// What is fitted on the train split and applied to every split.
enum Fitted {
    None,
    Weighted(Vec<Vec<f32>>),
    /// Per source vector (flattened over sources): `None` = already `width` wide.
    Projections(Vec<Option<Tensor>>),
}

impl Stage for Fuse {
    const KIND: &'static str = "fuse";
    const VERSION: u32 = 1;
    const INPUTS: Arity = Arity::AtLeast(1);
    // The pipeline's seed is part of the key: co-occurrence projections and learned-weight batches are drawn with it.
    const SEEDED: bool = true;
    type Params = FuseParams;

    fn check(p: &FuseParams) -> Result<()> {
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

    fn check_inputs(p: &FuseParams, inputs: usize) -> Result<()> {
        if p.sources.len() != inputs {
            return Err(Error::param(
                "sources",
                format!(
                    "{} entries for {inputs} inputs; give one entry per input, in order",
                    p.sources.len()
                ),
            ));
        }
        Ok(())
    }

    fn run(p: &FuseParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(p)?;
        if p.sources.len() != inputs.len() {
            return Err(Error::param(
                "sources",
                format!(
                    "{} entries for {} inputs ({}); give one entry per input, in order",
                    p.sources.len(),
                    inputs.len(),
                    inputs
                        .iter()
                        .map(|i| i.stage_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let seed = p.seed.unwrap_or(ctx.seed);
        let resolved: Vec<Resolved> = p
            .sources
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(i, (spec, input))| resolve(i, spec, input))
            .collect::<Result<_>>()?;
        check_widths(p, &resolved)?;

        // Splits: those of the first input, train first (it is what gets fitted).
        let mut splits: Vec<String> = inputs[0].splits().into_iter().map(|(s, _)| s).collect();
        if !splits.iter().any(|s| s == "train") {
            return Err(Error::mismatch(
                "fuse",
                format!("input `{}` has no train split", inputs[0].stage_id),
            ));
        }
        splits.sort_by_key(|s| (s.as_str() != "train", s.clone()));

        let mut fitted = Fitted::None;
        let mut standardizer: Option<Standardizer> = None;
        let mut summary = Summary::default();
        for split in &splits {
            let mut data = load_aligned(split, inputs, &resolved)?;
            if p.normalize == Normalize::L2 {
                data.sources
                    .iter_mut()
                    .flatten()
                    .for_each(ops::l2_normalize_rows);
            }
            if split == "train" {
                fitted = fit(p, &data, &resolved, seed, ctx, &mut summary)?;
            }
            let mut fused = apply(p, &fitted, &data)?;
            if p.standardize {
                let s = standardizer.get_or_insert_with(|| Standardizer::fit(&fused));
                s.apply(&mut fused);
            }
            let dim = fused.dim;
            let table = EmbeddingTable {
                ids: data.ids,
                labels: data.labels,
                label_names: data.label_names,
                columns: vec![VectorColumn::new("embedding", dim, fused.data)],
            };
            write_embedding_table(
                &ctx.out(&format!("{split}.parquet")),
                &table,
                Precision::F32,
            )?;
            summary.rows_out += table.ids.len();
            if split == "train" {
                summary.notes.push(format!(
                    "{:?} over {} source vector(s) -> width {dim}",
                    p.method,
                    resolved.iter().map(|r| r.columns.len()).sum::<usize>()
                ));
            }
        }
        Ok(summary)
    }
}

/// Resolves a source's selection against the columns of its train file.
fn resolve(i: usize, spec: &SourceSpec, input: &Input) -> Result<Resolved> {
    let path = input.split("train")?;
    let available = embedding_columns(&path)?;
    let mut layer_cols: Vec<(usize, &(String, usize))> = available
        .iter()
        .filter_map(|c| {
            c.0.strip_prefix("layer_")
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| (n, c))
        })
        .collect();
    layer_cols.sort_by_key(|(n, _)| *n);
    let names_of = || {
        available
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut columns: Vec<(String, usize)> = Vec::new();
    match &spec.layers {
        None => {}
        Some(Layers::All(_)) => {
            if layer_cols.is_empty() {
                return Err(Error::schema(
                    &path,
                    "layer_*",
                    format!(
                        "sources[{i}] asks for all layers but there are no layer columns (has: {})",
                        names_of()
                    ),
                ));
            }
            columns.extend(layer_cols.iter().map(|(_, c)| (*c).clone()));
        }
        Some(Layers::List(list)) => {
            for &l in list {
                let found = if l >= 0 {
                    layer_cols.iter().find(|(n, _)| *n as i64 == l)
                } else {
                    let back = l.unsigned_abs() as usize;
                    layer_cols
                        .len()
                        .checked_sub(back)
                        .and_then(|k| layer_cols.get(k))
                };
                let (_, c) = found.ok_or_else(|| {
                    Error::schema(
                        &path,
                        &format!("layer {l}"),
                        format!("sources[{i}] asks for it; the file has: {}", names_of()),
                    )
                })?;
                columns.push((*c).clone());
            }
        }
    }
    for name in &spec.columns {
        let c = available.iter().find(|(n, _)| n == name).ok_or_else(|| {
            Error::schema(
                &path,
                name,
                format!("sources[{i}] asks for it; the file has: {}", names_of()),
            )
        })?;
        columns.push(c.clone());
    }
    let mut seen = HashSet::new();
    for (n, _) in &columns {
        if !seen.insert(n) {
            return Err(Error::param(
                &format!("sources[{i}]"),
                format!("column `{n}` of `{}` is selected twice", input.stage_id),
            ));
        }
    }
    Ok(Resolved {
        stage_id: input.stage_id.clone(),
        columns,
    })
}

fn describe(r: &Resolved) -> String {
    r.columns
        .iter()
        .map(|(n, d)| format!("{n}={d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Methods that combine vectors element-wise need one width per source.
fn check_widths(p: &FuseParams, resolved: &[Resolved]) -> Result<()> {
    let same_width = |r: &Resolved| r.columns.iter().all(|(_, d)| *d == r.columns[0].1);
    let which: Vec<&Resolved> = match p.method {
        Method::Mean | Method::Max | Method::Weighted => resolved.iter().collect(),
        Method::Cooccurrence => resolved.iter().take(1).collect(),
        Method::Concat => Vec::new(),
    };
    for r in which {
        if !same_width(r) {
            return Err(Error::mismatch(
                "fuse",
                format!(
                    "method {:?} combines the selected vectors of `{}` element-wise, but their \
                     widths differ ({}); select vectors of one width or use `concat`",
                    p.method,
                    r.stage_id,
                    describe(r)
                ),
            ));
        }
    }
    Ok(())
}

fn to_mat(c: VectorColumn) -> Mat {
    Mat::new(c.rows(), c.dim, c.values)
}

/// The first input's file, ids, labels and label names: what the other inputs are matched to.
type Base = (PathBuf, Vec<String>, Vec<i64>, Vec<String>);

/// Reads one split of every input and reorders inputs 2.. to the ids of input 1.
fn load_aligned(split: &str, inputs: &[Input], resolved: &[Resolved]) -> Result<Aligned> {
    let mut base: Option<Base> = None;
    let mut base_index: HashMap<String, usize> = HashMap::new();
    let mut sources: Vec<Vec<Mat>> = Vec::with_capacity(inputs.len());
    for (input, r) in inputs.iter().zip(resolved) {
        let path = input.split(split)?;
        let names: Vec<&str> = r.columns.iter().map(|(n, _)| n.as_str()).collect();
        let table = read_embedding_table(&path, Some(&names))?;
        for ((name, dim), col) in r.columns.iter().zip(&table.columns) {
            if col.dim != *dim {
                return Err(Error::schema(
                    &path,
                    name,
                    format!("width {} here but {dim} in the train split", col.dim),
                ));
            }
        }
        let index = index_ids(&path, &table.ids)?;
        if base.is_none() {
            base_index = index;
            base = Some((path, table.ids, table.labels, table.label_names));
            sources.push(table.columns.into_iter().map(to_mat).collect());
            continue;
        }
        let (base_path, ids, labels, label_names) = base.as_ref().expect("set by the first input");
        if &table.label_names != label_names {
            return Err(Error::mismatch(
                "fuse: match inputs",
                format!(
                    "label names differ: {} has {:?}, {} has {:?}",
                    base_path.display(),
                    label_names,
                    path.display(),
                    table.label_names
                ),
            ));
        }
        // Every base id must be present, and nothing else.
        let mut order = Vec::with_capacity(ids.len());
        for (row, id) in ids.iter().enumerate() {
            let Some(&j) = index.get(id) else {
                return Err(Error::mismatch(
                    "fuse: match inputs by id",
                    format!(
                        "id `{id}` (row {row} of {}) is missing from {}",
                        base_path.display(),
                        path.display()
                    ),
                ));
            };
            if table.labels[j] != labels[row] {
                return Err(Error::mismatch(
                    "fuse: match inputs by id",
                    format!(
                        "id `{id}` has label {} in {} but {} in {}",
                        labels[row],
                        base_path.display(),
                        table.labels[j],
                        path.display()
                    ),
                ));
            }
            order.push(j);
        }
        if let Some((row, id)) = table
            .ids
            .iter()
            .enumerate()
            .find(|(_, id)| !base_index.contains_key(*id))
        {
            return Err(Error::mismatch(
                "fuse: match inputs by id",
                format!(
                    "id `{id}` (row {row} of {}) is missing from {}",
                    path.display(),
                    base_path.display()
                ),
            ));
        }
        let mats = table
            .columns
            .into_iter()
            .map(|c| {
                let mut data = Vec::with_capacity(c.values.len());
                for &j in &order {
                    data.extend_from_slice(c.row(j));
                }
                Mat::new(order.len(), c.dim, data)
            })
            .collect();
        sources.push(mats);
    }
    let (_, ids, labels, label_names) = base.expect("at least one input");
    Ok(Aligned {
        ids,
        labels,
        label_names,
        sources,
    })
}

fn index_ids(path: &Path, ids: &[String]) -> Result<HashMap<String, usize>> {
    let mut index = HashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        if let Some(first) = index.insert(id.clone(), row) {
            return Err(Error::row(
                path,
                row,
                "id",
                format!("duplicate id `{id}` (also row {first})"),
            ));
        }
    }
    Ok(index)
}

#[derive(Serialize)]
struct WeightsReport<'a> {
    method: &'static str,
    fitted_on: &'static str,
    train_rows: usize,
    epochs: usize,
    last_epoch_loss: f64,
    probe_train_accuracy: f64,
    sources: Vec<SourceWeights<'a>>,
}

#[derive(Serialize)]
struct SourceWeights<'a> {
    input: &'a str,
    columns: Vec<&'a str>,
    weights: &'a [f32],
}

fn fit(
    p: &FuseParams,
    train: &Aligned,
    resolved: &[Resolved],
    seed: u64,
    ctx: &Context,
    summary: &mut Summary,
) -> Result<Fitted> {
    match p.method {
        Method::Mean | Method::Max | Method::Concat => Ok(Fitted::None),
        Method::Weighted => {
            let num_classes = train.label_names.len();
            if let Some((row, &l)) = train
                .labels
                .iter()
                .enumerate()
                .find(|&(_, &l)| l < 0 || l as usize >= num_classes)
            {
                return Err(Error::mismatch(
                    "weighted fusion",
                    format!(
                        "train row {row} (id `{}`) has label {l} but there are {num_classes} \
                         label names",
                        train.ids[row]
                    ),
                ));
            }
            let w = &p.weighted;
            let fit = weighted::fit(
                &train.sources,
                &train.labels,
                num_classes,
                &weighted::TrainSettings {
                    epochs: w.epochs,
                    lr: w.lr,
                    batch_size: w.batch_size,
                    weight_decay: w.weight_decay,
                    seed,
                },
            )?;
            let report = WeightsReport {
                method: "softmax-normalised per-layer weights learned jointly with a linear \
                         softmax probe (Adam, train rows only)",
                fitted_on: "train",
                train_rows: train.ids.len(),
                epochs: w.epochs,
                last_epoch_loss: fit.last_epoch_loss,
                probe_train_accuracy: fit.train_accuracy,
                sources: resolved
                    .iter()
                    .zip(&fit.weights)
                    .map(|(r, w)| SourceWeights {
                        input: &r.stage_id,
                        columns: r.columns.iter().map(|(n, _)| n.as_str()).collect(),
                        weights: w,
                    })
                    .collect(),
            };
            let json = serde_json::to_vec_pretty(&report)
                .map_err(|e| Error::compute("serialize weights.json", e))?;
            llmembed_core::fsutil::write_bytes_atomic(&ctx.out("weights.json"), &json)?;
            for (r, w) in resolved.iter().zip(&fit.weights) {
                let (best, wmax) =
                    w.iter().enumerate().fold(
                        (0, f32::MIN),
                        |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                    );
                summary.notes.push(format!(
                    "{}: largest weight {wmax:.3} on {}",
                    r.stage_id, r.columns[best].0
                ));
            }
            Ok(Fitted::Weighted(fit.weights))
        }
        Method::Cooccurrence => {
            let width = p.cooccurrence.width;
            let mut projections = Vec::new();
            let mut k = 0usize;
            for r in resolved {
                for (name, dim) in &r.columns {
                    if *dim == width {
                        projections.push(None);
                    } else {
                        let mut rng = llmembed_core::seeded_rng(
                            seed,
                            &format!("fuse/cooccurrence/projection/{k}"),
                        );
                        let m = ops::gaussian_projection(&mut rng, *dim, width);
                        let t = Tensor::from_vec(m.data, (*dim, width), &Device::Cpu)
                            .map_err(|e| Error::compute("cooccurrence: projection matrix", e))?;
                        summary.notes.push(format!(
                            "{}/{name}: Gaussian projection {dim} -> {width}",
                            r.stage_id
                        ));
                        projections.push(Some(t));
                    }
                    k += 1;
                }
            }
            Ok(Fitted::Projections(projections))
        }
    }
}

fn apply(p: &FuseParams, fitted: &Fitted, data: &Aligned) -> Result<Mat> {
    let per_source = |f: &dyn Fn(usize, &[&Mat]) -> Mat| -> Mat {
        let parts: Vec<Mat> = data
            .sources
            .iter()
            .enumerate()
            .map(|(s, v)| f(s, &v.iter().collect::<Vec<_>>()))
            .collect();
        ops::concat_cols(&parts.iter().collect::<Vec<_>>())
    };
    Ok(match (p.method, fitted) {
        (Method::Mean, _) => per_source(&|_, v| ops::mean_of(v)),
        (Method::Max, _) => per_source(&|_, v| ops::max_of(v)),
        (Method::Concat, _) => ops::concat_cols(&data.sources.iter().flatten().collect::<Vec<_>>()),
        (Method::Weighted, Fitted::Weighted(w)) => per_source(&|s, v| ops::weighted_sum(v, &w[s])),
        (Method::Cooccurrence, Fitted::Projections(proj)) => {
            let width = p.cooccurrence.width;
            let mut projected = Vec::with_capacity(proj.len());
            for (v, pr) in data.sources.iter().flatten().zip(proj) {
                projected.push(match pr {
                    None => v.clone(),
                    Some(m) => project(v, m, width)?,
                });
            }
            let entries = match p.cooccurrence.gram {
                Gram::Full => GramEntries::Full,
                Gram::Upper => GramEntries::Upper,
            };
            let gram = ops::gram_tanh(
                &projected.iter().collect::<Vec<_>>(),
                p.cooccurrence.sigma,
                entries,
            );
            let first_mean = ops::mean_of(&data.sources[0].iter().collect::<Vec<_>>());
            ops::concat_cols(&[&gram, &first_mean])
        }
        _ => {
            return Err(Error::compute(
                "fuse",
                "the state fitted on train does not belong to the method",
            ));
        }
    })
}

fn project(v: &Mat, m: &Tensor, width: usize) -> Result<Mat> {
    let op = "cooccurrence: project (rows, dim) x (dim, width)";
    let x = Tensor::from_slice(&v.data, (v.rows, v.dim), &Device::Cpu)
        .map_err(|e| Error::compute(op, e))?;
    let y = x
        .matmul(m)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| Error::compute(op, e))?;
    Ok(Mat::new(v.rows, width, y))
}
