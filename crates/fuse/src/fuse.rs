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
//! Fits (learned weights, the standardiser) see only the train rows that have a label; rows
//! without one (`UNLABELLED`) are fused like any other. What was fitted is saved into the
//! artifact (`model.safetensors`, `model.json`: see `model.rs`), and [`Fuse`]'s applier fuses new
//! rows of every input with it, as `run` fused the splits.
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

use candle_core::{Device, Tensor};
use serde::Serialize;

use llmembed_core::{
    Apply, ApplyEnv, Arity, ConstantColumn, Context, EmbeddingTable, EmbeddingWriter, Error, Input,
    Matrix, Precision, Result, Rows, Stage, Standardizer, Summary, UNLABELLED, VectorColumn,
    l2_normalize_rows, write_embedding_table,
};

use llmembed_core::folds::{
    DEFAULT_FOLDS, FoldRows, FoldVectors, check_fold_rows, cv_folds, fold_vectors_file,
};

use crate::align::{Aligned, align_rows, load_aligned, load_aligned_paths};
use crate::model::{self, Fitted};
use crate::ops::{self, GramEntries};
use crate::params::{FuseParams, Gram, Method, Normalize};
use crate::select::{Resolved, check_widths, resolve};
use crate::weighted;

/// The `fuse` stage kind.
pub struct Fuse;

impl Stage for Fuse {
    const KIND: &'static str = "fuse";
    // 2: the artifact holds what was fitted (`model.safetensors`, `model.json`); the split
    // files' bytes are those of version 1. 3: `method: weighted` also writes the training
    // vectors per CV fold (`weighted.folds`); the split files' bytes are those of version 2.
    const VERSION: u32 = 3;
    const INPUTS: Arity = Arity::AtLeast(1);
    // The pipeline's seed is part of the key: co-occurrence projections and learned-weight batches are drawn with it.
    const SEEDED: bool = true;
    // `weighted`'s per-fold vectors are for the folds the classifiers draw from the pipeline's
    // seed, even where the stage's own `seed` param draws the rest.
    const READS_PIPELINE_SEED: bool = true;
    type Params = FuseParams;

    fn check(p: &FuseParams) -> Result<()> {
        crate::params::check(p)
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
        let upstream = upstream_folds(p, inputs)?;
        let seed = ctx.seed;
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
        if upstream.is_none() && streams(p, inputs, &resolved)? {
            return run_in_chunks(p, &inputs[0], &resolved[0], &splits, ctx);
        }

        let mut fitted = Fitted::None;
        let mut standardizer: Option<Standardizer> = None;
        let mut summary = Summary::default();
        let mut trained: Option<(usize, Vec<String>, usize)> = None;
        let mut fold_note = None;
        for split in &splits {
            let mut data = load_aligned(split, inputs, &resolved)?;
            if p.normalize == Normalize::L2 {
                data.sources
                    .iter_mut()
                    .flatten()
                    .for_each(l2_normalize_rows);
            }
            // Rows without a label flow through but are never fitted on.
            let labelled: Option<Vec<usize>> =
                (split == "train" && data.labels.contains(&UNLABELLED)).then(|| {
                    (0..data.labels.len())
                        .filter(|&i| data.labels[i] != UNLABELLED)
                        .collect()
                });
            if split == "train" {
                fitted = match &labelled {
                    None => fit(p, &data, &resolved, seed, ctx, &mut summary)?,
                    Some(rows) => {
                        let subset = data.select_rows(rows);
                        fit(p, &subset, &resolved, seed, ctx, &mut summary)?
                    }
                };
                if p.method == Method::Weighted || upstream.is_some() {
                    let fit_rows =
                        (labelled.clone()).unwrap_or_else(|| (0..data.ids.len()).collect());
                    let folds = PerFold {
                        inputs,
                        resolved: &resolved,
                        upstream: upstream.as_ref(),
                        fitted: &fitted,
                    };
                    fold_note = Some(write_fold_vectors(p, &folds, &data, &fit_rows, ctx)?);
                }
            }
            let mut fused = apply(p, &fitted, &data)?;
            if p.standardize {
                let s = standardizer.get_or_insert_with(|| match &labelled {
                    None => Standardizer::fit(&fused, ConstantColumn::Zero),
                    Some(rows) => Standardizer::fit(&fused.select_rows(rows), ConstantColumn::Zero),
                });
                s.apply(&mut fused);
            }
            let dim = fused.dim;
            if split == "train" {
                let rows = labelled.as_ref().map_or(data.ids.len(), Vec::len);
                trained = Some((dim, data.label_names.clone(), rows));
            }
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
        summary.notes.extend(fold_note);
        let (width, label_names, train_rows) = trained.expect("train is the first split");
        model::save(
            &ctx.out_dir,
            &model::ToSave {
                params: p,
                resolved: &resolved,
                fitted: &fitted,
                standardizer: standardizer.as_ref(),
                width,
                label_names: &label_names,
                train_rows,
            },
        )?;
        Ok(summary)
    }

    /// Loads what `run` fitted (`model.json`, `model.safetensors`) and fuses new rows of every
    /// input exactly as `run` fused its splits.
    fn applier(p: &FuseParams, fitted: &Input, _env: &ApplyEnv) -> Result<Option<Box<dyn Apply>>> {
        Self::check(p)?;
        let loaded = model::load(&fitted.dir, p)?;
        Ok(Some(Box::new(FuseApply {
            params: p.clone(),
            loaded,
        })))
    }
}

/// [`Fuse`] loaded from its artifact.
struct FuseApply {
    params: FuseParams,
    loaded: model::Loaded,
}

impl Apply for FuseApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        let sources = &self.loaded.meta.sources;
        let tables: Vec<&EmbeddingTable> = inputs
            .iter()
            .map(|r| match r {
                Rows::Embedding(t) => Some(t),
                _ => None,
            })
            .collect::<Option<_>>()
            .filter(|t: &Vec<_>| t.len() == sources.len())
            .ok_or_else(|| {
                Error::mismatch(
                    "apply fuse",
                    format!(
                        "expected {} embedding table(s) (from {}), got [{}]",
                        sources.len(),
                        sources
                            .iter()
                            .map(|s| s.input.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        inputs.iter().map(Rows::kind).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
        let names: Vec<String> = sources
            .iter()
            .enumerate()
            .map(|(i, s)| format!("input {i} (`{}`)", s.input))
            .collect();
        let mut data = align_rows(&tables, &names, &self.loaded.resolved)?;
        if self.params.normalize == Normalize::L2 {
            data.sources
                .iter_mut()
                .flatten()
                .for_each(l2_normalize_rows);
        }
        let mut fused = apply(&self.params, &self.loaded.fitted, &data)?;
        if let Some(s) = &self.loaded.standardizer {
            s.apply(&mut fused);
        }
        let dim = fused.dim;
        Ok(Rows::Embedding(EmbeddingTable {
            ids: data.ids,
            labels: data.labels,
            label_names: data.label_names,
            columns: vec![VectorColumn::new("embedding", dim, fused.data)],
        }))
    }
}

/// Selected bytes of a train split above which a row-wise fusion reads and writes it in chunks.
/// Below it the whole split is read at once, as it always was (the same bytes out): the largest
/// of the small pipelines, `agnews-full`'s mean of 19 layers, selects 428 MB. Reading a whole
/// split takes several times its size at the peak (Parquet pages, Arrow arrays, the matrices, the
/// writer's buffer): 698 MB of selected layers peaked at 4.5 GB.
const CHUNKED_ABOVE_BYTES: usize = 512 << 20;
/// Rows per chunk: 4,096 rows x 19 layers x 640 f32 is 200 MB.
const CHUNK_ROWS: usize = 4096;

/// Whether to fuse in chunks: one input, a method that works row by row (`mean`, `max`,
/// `concat`; `normalize: l2` is row-wise too), nothing fitted on the whole train split
/// (`standardize`), and a train split whose selected columns would take more than
/// [`CHUNKED_ABOVE_BYTES`] in memory.
fn streams(p: &FuseParams, inputs: &[Input], resolved: &[Resolved]) -> Result<bool> {
    if inputs.len() != 1
        || p.standardize
        || !matches!(p.method, Method::Mean | Method::Max | Method::Concat)
    {
        return Ok(false);
    }
    let rows = llmembed_core::table_rows(&inputs[0].split("train")?)?;
    let width: usize = resolved[0].columns.iter().map(|(_, d)| d).sum();
    Ok(rows * width * 4 > CHUNKED_ABOVE_BYTES)
}

/// [`Fuse::run`] for what [`streams`]: every split read [`CHUNK_ROWS`] rows at a time, each
/// chunk fused (row by row, so a row's output is what the whole-split path gives it) and appended
/// to the output in row groups, so memory holds a chunk rather than the split.
fn run_in_chunks(
    p: &FuseParams,
    input: &Input,
    resolved: &Resolved,
    splits: &[String],
    ctx: &Context,
) -> Result<Summary> {
    let names: Vec<&str> = resolved.columns.iter().map(|(n, _)| n.as_str()).collect();
    let dim = match p.method {
        Method::Concat => resolved.columns.iter().map(|(_, d)| d).sum(),
        _ => resolved.columns[0].1,
    };
    let mut summary = Summary::default();
    for split in splits {
        let path = input.split(split)?;
        let out = ctx.out(&format!("{split}.parquet"));
        let mut writer: Option<EmbeddingWriter> = None;
        llmembed_core::for_each_embedding_chunk(&path, &names, CHUNK_ROWS, |chunk| {
            for ((name, want), col) in resolved.columns.iter().zip(&chunk.columns) {
                if col.dim != *want {
                    return Err(Error::schema(
                        &path,
                        name,
                        format!("width {} here but {want} in the train split", col.dim),
                    ));
                }
            }
            let mut data = Aligned {
                ids: chunk.ids,
                labels: chunk.labels,
                label_names: chunk.label_names,
                sources: vec![chunk.columns.into_iter().map(Matrix::from).collect()],
            };
            if p.normalize == Normalize::L2 {
                data.sources
                    .iter_mut()
                    .flatten()
                    .for_each(l2_normalize_rows);
            }
            let fused = apply(p, &Fitted::None, &data)?;
            if writer.is_none() {
                writer = Some(EmbeddingWriter::create(
                    &out,
                    &data.label_names,
                    &[("embedding".to_string(), dim)],
                    Precision::F32,
                )?);
            }
            summary.rows_out += data.ids.len();
            writer
                .as_mut()
                .expect("created above")
                .write(&EmbeddingTable {
                    ids: data.ids,
                    labels: data.labels,
                    label_names: data.label_names,
                    columns: vec![VectorColumn::new("embedding", dim, fused.data)],
                })
        })?;
        match writer {
            Some(w) => w.finish()?,
            None => {
                return Err(Error::schema(&path, "id", "no rows"));
            }
        }
        if split == "train" {
            summary.notes.push(format!(
                "{:?} over {} source vector(s) -> width {dim}",
                p.method,
                resolved.columns.len()
            ));
            summary
                .notes
                .push(format!("read and written in chunks of {CHUNK_ROWS} rows"));
        }
    }
    Ok(summary)
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
            let w = &p.weighted;
            let fit = fit_weights(p, train, seed)?;
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

/// The layer weights of `method: weighted`, learned with a linear probe on `train`'s labels.
fn fit_weights(p: &FuseParams, train: &Aligned, seed: u64) -> Result<weighted::WeightedFit> {
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
                "train row {row} (id `{}`) has label {l} but there are {num_classes} label names",
                train.ids[row]
            ),
        ));
    }
    let w = &p.weighted;
    weighted::fit(
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
    )
}

/// The per-fold training vectors the inputs made (`llmembed_core::folds`).
struct Upstream {
    /// What the first input that made them says of them.
    made: FoldVectors,
    /// That input's stage (for messages).
    stage: String,
    /// Per input, whether it made them.
    by_input: Vec<bool>,
}

/// The inputs' per-fold training vectors, when any made them: all that did must have made them
/// for the same folds, and `weighted.folds`, if given, must be their number.
fn upstream_folds(p: &FuseParams, inputs: &[Input]) -> Result<Option<Upstream>> {
    let made = inputs
        .iter()
        .map(FoldVectors::of)
        .collect::<Result<Vec<_>>>()?;
    let mut with = inputs
        .iter()
        .zip(&made)
        .filter_map(|(i, m)| Some((i, m.as_ref()?)));
    let Some((first_input, first)) = with.next() else {
        return Ok(None);
    };
    first.folds(&first_input.stage_id, "weighted.folds", p.weighted.folds)?;
    for (input, other) in with {
        if (first.folds, &first.splits) != (other.folds, &other.splits) {
            return Err(Error::mismatch(
                "fuse: per-fold vectors",
                format!(
                    "`{}` made its training vectors per fold of {}-fold CV (splits {}), `{}` of \
                     {}-fold CV (splits {}): fuse inputs made for the same folds",
                    first_input.stage_id,
                    first.folds,
                    first.splits,
                    input.stage_id,
                    other.folds,
                    other.splits
                ),
            ));
        }
    }
    Ok(Some(Upstream {
        made: first.clone(),
        stage: first_input.stage_id.clone(),
        by_input: made.iter().map(Option::is_some).collect(),
    }))
}

/// What the per-fold training vectors of a run are made from.
struct PerFold<'a> {
    inputs: &'a [Input],
    resolved: &'a [Resolved],
    /// The inputs' own per-fold vectors, if any made them ([`upstream_folds`]).
    upstream: Option<&'a Upstream>,
    /// What the run fitted on all training rows: what a fold uses where nothing it fits reads a
    /// label (the co-occurrence projections are drawn, not fitted).
    fitted: &'a Fitted,
}

impl PerFold<'_> {
    /// The training rows as fold `f` sees them: each input's fold `f` vectors where it made
    /// them, its training split otherwise, with `train`'s rows (checked); `None` when no input
    /// made any (then they are `train`, the run's, normalised).
    fn train(&self, p: &FuseParams, f: usize, train: &Aligned) -> Result<Option<Aligned>> {
        let Some(upstream) = self.upstream else {
            return Ok(None);
        };
        let paths = (self.inputs.iter().zip(&upstream.by_input))
            .map(|(input, &made)| match made {
                true => FoldVectors::path(input, f),
                false => input.split("train"),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut data = load_aligned_paths(&paths, self.resolved)?;
        check_fold_rows(&paths[0], "id", f, fold_rows_of(&data), fold_rows_of(train))?;
        if p.normalize == Normalize::L2 {
            data.sources
                .iter_mut()
                .flatten()
                .for_each(l2_normalize_rows);
        }
        Ok(Some(data))
    }
}

/// Aligned rows as [`check_fold_rows`] compares them, their width all sources' together.
fn fold_rows_of(data: &Aligned) -> FoldRows<'_> {
    FoldRows {
        ids: &data.ids,
        labels: &data.labels,
        dim: data.sources.iter().flatten().map(|m| m.dim).sum(),
    }
}

/// The training rows' vectors once per fold of the classifiers' CV (drawn from the pipeline's
/// seed as theirs are), when `method: weighted` learns its weights on the labels or an input
/// made its vectors per fold: fold `f`'s from the inputs' fold `f` vectors ([`PerFold::train`])
/// with weights (and a standardiser) fitted on that fold's training rows alone, as the whole
/// stage would fit on them (see `llmembed_core::folds`). `train` is the whole training split,
/// `fit_rows` its rows that are fitted on (the labelled ones). Returns the run's note.
fn write_fold_vectors(
    p: &FuseParams,
    per_fold: &PerFold,
    train: &Aligned,
    fit_rows: &[usize],
    ctx: &Context,
) -> Result<String> {
    let ids: Vec<String> = fit_rows.iter().map(|&i| train.ids[i].clone()).collect();
    let labels: Vec<i64> = fit_rows.iter().map(|&i| train.labels[i]).collect();
    let folds = (per_fold.upstream.map(|u| u.made.folds))
        .or(p.weighted.folds)
        .unwrap_or(DEFAULT_FOLDS);
    let cv = cv_folds(&ids, &labels, folds, ctx.env.seed);
    if let Some(u) = per_fold.upstream {
        u.made.check(&u.stage, &cv, "weighted.folds")?;
    }
    for f in 0..folds {
        let rows: Vec<usize> = cv.training_rows(f).iter().map(|&r| fit_rows[r]).collect();
        let own = per_fold.train(p, f, train)?;
        let data = own.as_ref().unwrap_or(train);
        let fold_fit;
        let fitted = match p.method {
            Method::Weighted => {
                let weights = fit_weights(p, &data.select_rows(&rows), ctx.seed)?.weights;
                fold_fit = Fitted::Weighted(weights);
                &fold_fit
            }
            _ => per_fold.fitted,
        };
        let mut fused = apply(p, fitted, data)?;
        if p.standardize {
            Standardizer::fit(&fused.select_rows(&rows), ConstantColumn::Zero).apply(&mut fused);
        }
        let table = EmbeddingTable {
            ids: train.ids.clone(),
            labels: train.labels.clone(),
            label_names: train.label_names.clone(),
            columns: vec![VectorColumn::new("embedding", fused.dim, fused.data)],
        };
        write_embedding_table(&ctx.out(&fold_vectors_file(f)), &table, Precision::F32)?;
    }
    let made_by = match per_fold.upstream {
        Some(u) if p.method != Method::Weighted => format!("fuse, over {}", u.made.made_by),
        _ => "fuse (method: weighted)".into(),
    };
    let meta = FoldVectors {
        folds,
        splits: cv.splits.clone(),
        made_by,
    };
    meta.save(&ctx.out_dir)?;
    Ok(format!(
        "training vectors also made per fold of {folds}-fold CV (splits {}), each fused from \
         what that fold's fit may see",
        cv.splits
    ))
}

fn apply(p: &FuseParams, fitted: &Fitted, data: &Aligned) -> Result<Matrix> {
    let per_source = |f: &dyn Fn(usize, &[&Matrix]) -> Matrix| -> Matrix {
        let parts: Vec<Matrix> = data
            .sources
            .iter()
            .enumerate()
            .map(|(s, v)| f(s, &v.iter().collect::<Vec<_>>()))
            .collect();
        Matrix::concat_cols(&parts.iter().collect::<Vec<_>>())
    };
    Ok(match (p.method, fitted) {
        (Method::Mean, _) => per_source(&|_, v| ops::mean_of(v)),
        (Method::Max, _) => per_source(&|_, v| ops::max_of(v)),
        (Method::Concat, _) => {
            Matrix::concat_cols(&data.sources.iter().flatten().collect::<Vec<_>>())
        }
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
            Matrix::concat_cols(&[&gram, &first_mean])
        }
        _ => {
            return Err(Error::compute(
                "fuse",
                "the state fitted on train does not belong to the method",
            ));
        }
    })
}

fn project(v: &Matrix, m: &Tensor, width: usize) -> Result<Matrix> {
    let op = "cooccurrence: project (rows, dim) x (dim, width)";
    let x = Tensor::from_slice(&v.data, (v.rows, v.dim), &Device::Cpu)
        .map_err(|e| Error::compute(op, e))?;
    let y = x
        .matmul(m)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| Error::compute(op, e))?;
    Ok(Matrix::new(v.rows, width, y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmembed_core::read_embedding_table;

    /// The chunked path gives every row exactly the vector the whole-split path gives it, over
    /// chunks that end mid-table (10,000 rows: two full chunks and a partial one).
    #[test]
    fn chunks_give_the_rows_of_the_whole_split() {
        let dir = tempfile::tempdir().unwrap();
        let n = 10_000;
        let layer = |k: usize| {
            let v: Vec<f32> = (0..n * 3)
                .map(|i| ((i * 7 + k * 13) % 29) as f32 - 14.0 + 0.25 * k as f32)
                .collect();
            VectorColumn::new(llmembed_core::layer_column(k), 3, v)
        };
        let table = EmbeddingTable {
            ids: (0..n).map(|i| format!("r{i}")).collect(),
            labels: (0..n).map(|i| (i % 2) as i64).collect(),
            label_names: vec!["a".into(), "b".into()],
            columns: vec![layer(0), layer(1), layer(2)],
        };
        let inp = dir.path().join("llm");
        std::fs::create_dir_all(&inp).unwrap();
        for split in ["train", "test"] {
            write_embedding_table(
                &inp.join(format!("{split}.parquet")),
                &table,
                Precision::F32,
            )
            .unwrap();
        }
        let input = Input {
            stage_id: "llm".into(),
            dir: inp,
            files: vec!["test.parquet".into(), "train.parquet".into()],
        };
        let env = llmembed_core::Env {
            data_dir: dir.path().into(),
            models_dir: dir.path().into(),
            pipeline_dir: dir.path().into(),
            seed: 1,
            quiet: true,
        };
        for method in ["mean", "max", "concat"] {
            let p: FuseParams = serde_json::from_value(serde_json::json!({
                "sources": [{"layers": "all"}], "method": method, "normalize": "l2"
            }))
            .unwrap();
            let resolved = vec![resolve(0, &p.sources[0], &input).unwrap()];
            let splits = vec!["train".to_string(), "test".to_string()];
            let ctx = |name: &str| {
                let out = dir.path().join(format!("{method}-{name}"));
                std::fs::create_dir_all(&out).unwrap();
                Context {
                    env: &env,
                    out_dir: out,
                    store_dir: dir.path().join("store"),
                    seed: 1,
                    store_ready: None,
                }
            };
            let (whole, chunked) = (ctx("whole"), ctx("chunked"));
            // Small enough for the whole-split path.
            assert!(!streams(&p, std::slice::from_ref(&input), &resolved).unwrap());
            Fuse::run(&p, std::slice::from_ref(&input), &whole).unwrap();
            let s = run_in_chunks(&p, &input, &resolved[0], &splits, &chunked).unwrap();
            assert_eq!(s.rows_out, 2 * n);
            for split in &splits {
                let f = format!("{split}.parquet");
                let a = read_embedding_table(&whole.out_dir.join(&f), None).unwrap();
                let b = read_embedding_table(&chunked.out_dir.join(&f), None).unwrap();
                assert_eq!(a, b, "{method} {split}");
            }
        }
    }
}
