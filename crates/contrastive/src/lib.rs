//! `contrastive`: SimCSE-style post-training of a small projection head on fused embeddings
//! (CPU, candle), with the in-batch InfoNCE loss at temperature τ.
//!
//! * `mode: unsup`: two dropout views of the same row are positives (SimCSE).
//! * `mode: augmented`: a row and its augmented copy are positives. The embedding table carries
//!   no `source_id`, so pairs are found by the augment stage's id convention: a train row whose id
//!   is `<id>-aug<k>` pairs with the train row `<id>` (rows without a partner take no part in the
//!   loss but are still embedded). Each side of a pair gets its own dropout mask.
//! * `mode: supcon`: supervised contrastive (Khosla et al. 2020, L_out): two dropout views of
//!   every row in the batch, and every other view of the same label is a positive.
//!
//! Inputs are standardised (mean and std fit on all labelled train rows). The head is Linear(d -> d_out),
//! or Linear(d -> hidden) -> GELU -> Linear(hidden -> d_out), with inverted dropout `p` on its
//! input (and hidden layer) to make views; weights are initialised from
//! `seeded_rng(seed, "contrastive-init")`, batches and dropout masks come from their own seeded
//! streams, so a run is deterministic. AdamW; early stopping on the validation loss of a
//! held-out part of the training examples (`holdout`), keeping the best epoch's weights
//! (epoch 0, the initial head, included).
//!
//! Output (`output`), chosen so that the stage cannot cost a linear probe much (the seed
//! reproduction's plain projection lost 4 points):
//! * `concat` (default): `[standardised x, sqrt(d_out) * normalize(head(x))]`, width d + d_out;
//! * `residual`: `x + head(x)` (d_out = d; the head's last layer starts at zero);
//! * `head`: `head(x)` only (what SimCSE and the seed reproduction output).
//!
//! Files: one `embedding` column per split (all splits of the input: train, test, dev ...,
//! same rows and order), `training.json` (loss curves, best epoch; see `TrainingLog`), and the
//! fitted head and standardiser (`model.safetensors`, `model.json`; see `model.rs`), which the
//! stage's applier loads to refine new rows' vectors as `run` refined the splits.
//!
//! Train rows without a label (`UNLABELLED`) are refined like the others but take no part in
//! fitting (neither the standardiser nor the head's training).
//!
//! `mode: supcon` fits on the labels, so it also writes the training rows' vectors once per fold
//! of the classifiers' cross-validation (`folds`, drawn by `llmembed_core::folds::cv_folds` from
//! the pipeline's seed): `train.fold<f>.parquet`, from a standardiser and head fitted on fold
//! `f`'s training rows alone, and `fold_vectors.json`; a classifier's CV reads those (see
//! ARCHITECTURE.md, "Cross-validation after a stage that fits on labels"). An input that has
//! such files (`fuse`'s learned weights) is refined per fold in every mode: fold `f`'s vectors by
//! a head fitted on the input's fold `f` vectors of that fold's training rows.

mod model;
mod train;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use llmembed_core::folds::{
    DEFAULT_FOLDS, FoldRows, FoldVectors, check_fold_rows, cv_folds, fold_vectors_file,
};
use llmembed_core::{
    Apply, ApplyEnv, Arity, ConstantColumn, Context, EmbeddingTable, Error, Input, Precision,
    Result, Rows, Stage, Standardizer, Summary, UNLABELLED, VectorColumn, augmented_source, fsutil,
    read_embedding_table, seeded_rng, table::embedding_columns, write_embedding_table,
};

use train::{Examples, Head};

/// The stage.
pub struct Contrastive;

/// What makes a positive pair.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Two dropout views of one row (SimCSE).
    Unsup,
    /// A row and its augmented copy (`<id>` and `<id>-aug<k>`).
    Augmented,
    /// Rows of the same label (Khosla et al.).
    #[default]
    Supcon,
}

/// What the output vectors are made of.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Standardised input beside the normalised head output.
    #[default]
    Concat,
    /// Standardised input plus the head output (d_out = d).
    Residual,
    /// The head output alone.
    Head,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The vector column to refine; by default the input's only vector column.
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub output: Output,
    /// Head output width; by default 256 (at most d), and d for `output: residual`.
    #[serde(default)]
    pub d_out: Option<usize>,
    /// Width of an optional hidden layer (GELU).
    #[serde(default)]
    pub hidden: Option<usize>,
    /// Dropout probability that makes the views.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Fraction of the training examples held out for early stopping (0: none, train all
    /// epochs and keep the last).
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// Epochs without a better validation loss before stopping.
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// Overrides the pipeline seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// With `mode: supcon` (the one mode that fits on labels): the folds of the classifiers'
    /// cross-validation after this stage (their `select.folds`; 5 by default, or the input's
    /// where it made its vectors per fold). The training rows' vectors are also made once per
    /// fold, by a head fitted without that fold's rows (`train.fold<f>.parquet`), and a
    /// classifier's CV scores each fold on those, so that no held-out row's label shaped the
    /// vectors it is scored with. The folds are drawn from the pipeline's seed, as the
    /// classifiers draw theirs, whatever `seed` says.
    #[serde(default)]
    pub folds: Option<usize>,
}

fn default_dropout() -> f64 {
    0.1
}
fn default_temperature() -> f64 {
    0.1
}
fn default_lr() -> f64 {
    1e-3
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_epochs() -> usize {
    20
}
fn default_batch_size() -> usize {
    128
}
fn default_holdout() -> f64 {
    0.1
}
fn default_patience() -> usize {
    3
}

impl Mode {
    /// The name a pipeline file gives it.
    fn name(self) -> &'static str {
        match self {
            Mode::Unsup => "unsup",
            Mode::Augmented => "augmented",
            Mode::Supcon => "supcon",
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            column: None,
            mode: Mode::default(),
            output: Output::default(),
            d_out: None,
            hidden: None,
            dropout: default_dropout(),
            temperature: default_temperature(),
            lr: default_lr(),
            weight_decay: default_weight_decay(),
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            holdout: default_holdout(),
            patience: default_patience(),
            seed: None,
            folds: None,
        }
    }
}

/// The standardiser of the input vectors, fitted on the train rows: a column whose deviation is
/// at most 1e-8 counts as constant, and the statistics are applied in f32 (what this stage's
/// artifacts have always been made with).
pub(crate) fn fit_standardizer(values: &[f32], dim: usize) -> Standardizer {
    Standardizer::fit_rows(values, dim, ConstantColumn::AtMost(1e-8))
}

fn pick_column(input: &Input, params: &Params) -> Result<String> {
    let path = input.split("train")?;
    let cols = embedding_columns(&path)?;
    match &params.column {
        Some(c) => {
            if cols.iter().any(|(n, _)| n == c) {
                Ok(c.clone())
            } else {
                Err(Error::schema(
                    &path,
                    c,
                    format!(
                        "no such vector column (have: {})",
                        cols.iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
        None => match cols.as_slice() {
            [(only, _)] => Ok(only.clone()),
            _ => Err(Error::param(
                "column",
                format!(
                    "{} has {} vector columns ({}); name one",
                    path.display(),
                    cols.len(),
                    cols.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        },
    }
}

/// Splits `0..n` into (train, holdout) with a seeded shuffle.
fn holdout_split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut seeded_rng(seed, "contrastive-holdout"));
    let k = (fraction * n as f64).round() as usize;
    // At least 2 held out (an in-batch loss needs 2 rows), at least 2 left to train on.
    let k = if k == 1 { 2 } else { k };
    let k = k.min(n.saturating_sub(2));
    let (val, train) = order.split_at(k);
    let (mut train, mut val) = (train.to_vec(), val.to_vec());
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

fn gather(values: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| values[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// The training examples (and held-out ones) for `mode`.
fn examples(
    params: &Params,
    seed: u64,
    train: &EmbeddingTable,
    x: &[f32],
    d: usize,
) -> Result<(Examples, Option<Examples>, String)> {
    match params.mode {
        Mode::Unsup | Mode::Supcon => {
            let (tr, va) = holdout_split(train.len(), params.holdout, seed);
            let make = |idx: &[usize]| Examples::Rows {
                x: gather(x, d, idx),
                labels: idx.iter().map(|&i| train.labels[i]).collect(),
            };
            let note = format!("{} rows for training, {} held out", tr.len(), va.len());
            let val = (va.len() >= 2).then(|| make(&va));
            Ok((make(&tr), val, note))
        }
        Mode::Augmented => {
            let pos: HashMap<&str, usize> = train
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            // Pairs (source row, augmented row), grouped by source so a source's pairs are
            // all on one side of the holdout split.
            let mut by_source: Vec<(usize, Vec<usize>)> = Vec::new();
            let mut group_of: HashMap<usize, usize> = HashMap::new();
            for (i, id) in train.ids.iter().enumerate() {
                if let Some(&s) = augmented_source(id).and_then(|s| pos.get(s)) {
                    let g = *group_of.entry(s).or_insert_with(|| {
                        by_source.push((s, Vec::new()));
                        by_source.len() - 1
                    });
                    by_source[g].1.push(i);
                }
            }
            let pairs: usize = by_source.iter().map(|(_, a)| a.len()).sum();
            if pairs < 2 {
                return Err(Error::mismatch(
                    "contrastive (mode: augmented)",
                    format!(
                        "found {pairs} (row, augmented row) pairs among {} train rows; \
                         mode `augmented` needs rows with ids `<id>-aug<k>` next to row `<id>` \
                         (run an `augment` stage before `extract`)",
                        train.len()
                    ),
                ));
            }
            let (tr, va) = holdout_split(by_source.len(), params.holdout, seed);
            let make = |groups: &[usize]| {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for &g in groups {
                    let (s, augs) = &by_source[g];
                    for &t in augs {
                        a.push(*s);
                        b.push(t);
                    }
                }
                Examples::Pairs {
                    a: gather(x, d, &a),
                    b: gather(x, d, &b),
                }
            };
            let note = format!(
                "{pairs} (row, augmented row) pairs from {} source rows; {} sources held out",
                by_source.len(),
                va.len()
            );
            let val = (!va.is_empty()).then(|| make(&va));
            Ok((make(&tr), val, note))
        }
    }
}

impl Stage for Contrastive {
    const KIND: &'static str = "contrastive";
    // 2: the artifact holds the head and the standardiser (`model.safetensors`, `model.json`);
    // the split files' bytes are those of version 1. 3: `mode: supcon` also writes the training
    // vectors per CV fold (`folds`); the split files' bytes are those of version 2.
    const VERSION: u32 = 3;
    const INPUTS: Arity = Arity::Exactly(1);
    // The pipeline's seed is part of the key: the hold-out split, initialisation and batches are drawn with it.
    const SEEDED: bool = true;
    // `supcon`'s per-fold vectors are for the folds the classifiers draw from the pipeline's
    // seed, even where the stage's own `seed` param draws the rest.
    const READS_PIPELINE_SEED: bool = true;
    type Params = Params;

    fn check(p: &Params) -> Result<()> {
        if !(0.0..1.0).contains(&p.dropout) {
            return Err(Error::param("dropout", "must be in [0, 1)"));
        }
        if p.mode == Mode::Unsup && p.dropout == 0.0 {
            return Err(Error::param(
                "dropout",
                "mode `unsup` needs dropout > 0 (the two views would be identical)",
            ));
        }
        if !(p.temperature > 0.0 && p.temperature.is_finite()) {
            return Err(Error::param("temperature", "must be > 0"));
        }
        if !(p.lr > 0.0 && p.lr.is_finite()) {
            return Err(Error::param("lr", "must be > 0"));
        }
        if !(p.weight_decay >= 0.0 && p.weight_decay.is_finite()) {
            return Err(Error::param("weight_decay", "must be >= 0"));
        }
        if p.epochs == 0 {
            return Err(Error::param("epochs", "must be >= 1"));
        }
        if p.batch_size < 2 {
            return Err(Error::param(
                "batch_size",
                "must be >= 2 (in-batch negatives)",
            ));
        }
        if !(0.0..0.9).contains(&p.holdout) {
            return Err(Error::param("holdout", "must be in [0, 0.9)"));
        }
        if p.patience == 0 {
            return Err(Error::param("patience", "must be >= 1"));
        }
        if p.d_out == Some(0) || p.hidden == Some(0) {
            return Err(Error::param("d_out/hidden", "widths must be >= 1"));
        }
        match (p.mode, p.folds) {
            (Mode::Supcon, Some(k)) if k < 2 => Err(Error::param(
                "folds",
                format!("needs at least 2 folds, got {k}"),
            )),
            (Mode::Unsup | Mode::Augmented, Some(_)) => Err(Error::param(
                "folds",
                "only `mode: supcon` fits on the labels and makes vectors per fold",
            )),
            _ => Ok(()),
        }
    }

    fn run(params: &Params, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(params)?;
        let input = inputs
            .first()
            .ok_or_else(|| Error::mismatch("contrastive", "no input"))?;
        let seed = ctx.seed;
        let column = pick_column(input, params)?;
        let train_path = input.split("train")?;
        let train = read_embedding_table(&train_path, Some(&[column.as_str()]))?;
        let d = train.columns[0].dim;
        let d_out = match (params.output, params.d_out) {
            (Output::Residual, Some(k)) if k != d => {
                return Err(Error::param(
                    "d_out",
                    format!("output `residual` needs d_out = input width {d}, got {k}"),
                ));
            }
            (Output::Residual, _) => d,
            (_, Some(k)) => k,
            (_, None) => d.min(256),
        };
        // Rows without a label are embedded like the others but never fitted on.
        let labelled = labelled_rows(&train);
        let fit_on = labelled.as_ref().unwrap_or(&train);
        // The classifiers' folds of the rows they fit on (the labelled ones, in train's order):
        // SupCon fits on their labels, and an input made per fold (`fuse`'s learned weights,
        // say) is refined per fold, each fold's vectors by a head fitted on them.
        let upstream = FoldVectors::of(input)?;
        let folds = match &upstream {
            Some(up) => Some(up.folds(&input.stage_id, "folds", params.folds)?),
            None => (params.mode == Mode::Supcon).then(|| params.folds.unwrap_or(DEFAULT_FOLDS)),
        };
        let cv = folds.map(|k| cv_folds(&fit_on.ids, &fit_on.labels, k, ctx.env.seed));
        if let (Some(up), Some(cv)) = (&upstream, &cv) {
            up.check(&input.stage_id, cv, "folds")?;
        }
        let fits = 1 + cv.as_ref().map_or(0, |cv| cv.rows.len());
        let bar = ctx.progress((fits * params.epochs) as u64, "contrastive");
        let fit = |rows: &EmbeddingTable| -> Result<Fitted> {
            fit_head(params, seed, rows, d_out, &|l, v| {
                bar.set_message(match v {
                    Some(v) => format!("loss {l:.4} val {v:.4}"),
                    None => format!("loss {l:.4}"),
                });
                bar.inc(1);
            })
        };
        let Fitted {
            standardizer,
            head,
            log,
            examples_note,
        } = fit(fit_on)?;

        model::save(
            &ctx.out_dir,
            model::Meta {
                kind: Self::KIND.into(),
                input: input.stage_id.clone(),
                column: column.clone(),
                mode: params.mode,
                output: params.output,
                d_in: d,
                d_out,
                hidden: params.hidden,
                width: match params.output {
                    Output::Concat => d + d_out,
                    Output::Residual | Output::Head => d_out,
                },
                label_names: train.label_names.clone(),
                train_rows: fit_on.len(),
                best_epoch: log.best_epoch,
                tensors: Vec::new(),
            },
            &head,
            &standardizer,
        )?;

        let mut rows_out = 0;
        for (split, path) in input.splits() {
            let other;
            let table = if path == train_path {
                &train
            } else {
                other = read_embedding_table(&path, Some(&[column.as_str()]))?;
                &other
            };
            let col = &table.columns[0];
            if col.dim != d {
                return Err(Error::schema(
                    &path,
                    &column,
                    format!("width {} differs from train's {d}", col.dim),
                ));
            }
            let out = refine(&standardizer, &head, params.output, table)?;
            rows_out += out.len();
            write_embedding_table(&ctx.out(&format!("{split}.parquet")), &out, Precision::F32)?;
        }
        let mut notes = vec![
            format!(
                "column `{column}` ({d}) -> `embedding` ({:?}, head {d}->{d_out})",
                params.output
            ),
            examples_note,
            match log.best_val_loss {
                Some(v) => format!(
                    "best epoch {} of {} (val loss {v:.4})",
                    log.best_epoch, log.epochs_run
                ),
                None => format!("{} epochs, no holdout", log.epochs_run),
            },
        ];
        if let Some(cv) = &cv {
            // Each fold's head fitted as the whole one was, on the rows that fold's fit in a
            // classifier's CV trains on (their vectors made without the fold where the input
            // has such); every training row refined by it.
            for f in 0..cv.rows.len() {
                let own = match upstream {
                    Some(_) => Some(fold_input(input, f, &column, &train)?),
                    None => None,
                };
                let source = own.as_ref().unwrap_or(&train);
                let labelled = labelled_rows(source);
                let rows = subset(labelled.as_ref().unwrap_or(source), &cv.training_rows(f));
                let fold = fit(&rows)?;
                let out = refine(&fold.standardizer, &fold.head, params.output, source)?;
                write_embedding_table(&ctx.out(&fold_vectors_file(f)), &out, Precision::F32)?;
            }
            let meta = FoldVectors {
                folds: cv.rows.len(),
                splits: cv.splits.clone(),
                made_by: format!("contrastive (mode: {})", params.mode.name()),
            };
            meta.save(&ctx.out_dir)?;
            notes.push(format!(
                "training vectors also made per fold of {}-fold CV (splits {}), each by a head \
                 fitted without that fold's rows",
                cv.rows.len(),
                cv.splits
            ));
        }
        bar.finish();
        let json = serde_json::to_vec_pretty(&log)
            .map_err(|e| Error::compute("serialize training.json", e))?;
        fsutil::write_bytes_atomic(&ctx.out("training.json"), &json)?;
        Ok(Summary {
            rows_out,
            notes,
            ..Default::default()
        })
    }

    /// Loads the head and the standardiser `run` saved and refines new rows' vectors as `run`
    /// refined its splits.
    fn applier(params: &Params, fitted: &Input, _env: &ApplyEnv) -> Result<Option<Box<dyn Apply>>> {
        Self::check(params)?;
        Ok(Some(Box::new(ContrastiveApply {
            loaded: model::load(&fitted.dir, params)?,
        })))
    }
}

/// The train rows that have a label, when some have none (`None`: all have one).
fn labelled_rows(train: &EmbeddingTable) -> Option<EmbeddingTable> {
    if !train.labels.contains(&UNLABELLED) {
        return None;
    }
    let keep: Vec<usize> = (0..train.len())
        .filter(|&i| train.labels[i] != UNLABELLED)
        .collect();
    Some(subset(train, &keep))
}

/// Fold `f`'s training vectors of `input` (column `column`), which must hold `train`'s rows in
/// its order and width.
fn fold_input(
    input: &Input,
    f: usize,
    column: &str,
    train: &EmbeddingTable,
) -> Result<EmbeddingTable> {
    let path = FoldVectors::path(input, f)?;
    let table = read_embedding_table(&path, Some(&[column]))?;
    check_fold_rows(&path, column, f, FoldRows::of(&table), FoldRows::of(train))?;
    Ok(table)
}

/// A head and the standardiser of its inputs, fitted on some rows.
struct Fitted {
    standardizer: Standardizer,
    head: Head,
    log: train::TrainingLog,
    examples_note: String,
}

/// Fits the standardiser and then the head on `rows` (labelled): the stage's fit, on all the
/// training rows or on a CV fold's. `epoch(loss, val_loss)` after each epoch.
fn fit_head(
    params: &Params,
    seed: u64,
    rows: &EmbeddingTable,
    d_out: usize,
    epoch: &dyn Fn(f64, Option<f64>),
) -> Result<Fitted> {
    let d = rows.columns[0].dim;
    let standardizer = fit_standardizer(&rows.columns[0].values, d);
    let mut x = rows.columns[0].values.clone();
    standardizer.apply_rows_f32(&mut x);
    let (tr, val, examples_note) = examples(params, seed, rows, &x, d)?;
    let head = Head::new(
        d,
        params.hidden,
        d_out,
        params.output == Output::Residual,
        seed,
    )?;
    let log = train::train(&head, params, seed, &tr, val.as_ref(), |_, l, v| {
        epoch(l, v)
    })?;
    Ok(Fitted {
        standardizer,
        head,
        log,
        examples_note,
    })
}

/// `table` (one vector column) refined: standardised, then through `head` as `output` says;
/// the same rows, in one `embedding` column.
fn refine(
    standardizer: &Standardizer,
    head: &Head,
    output: Output,
    table: &EmbeddingTable,
) -> Result<EmbeddingTable> {
    let mut x = table.columns[0].values.clone();
    standardizer.apply_rows_f32(&mut x);
    let (width, values) = train::embed(head, output, &x)?;
    Ok(EmbeddingTable {
        ids: table.ids.clone(),
        labels: table.labels.clone(),
        label_names: table.label_names.clone(),
        columns: vec![VectorColumn::new("embedding", width, values)],
    })
}

/// The rows `keep` of a table of one vector column.
fn subset(table: &EmbeddingTable, keep: &[usize]) -> EmbeddingTable {
    let c = &table.columns[0];
    EmbeddingTable {
        ids: keep.iter().map(|&i| table.ids[i].clone()).collect(),
        labels: keep.iter().map(|&i| table.labels[i]).collect(),
        label_names: table.label_names.clone(),
        columns: vec![VectorColumn::new(
            c.name.clone(),
            c.dim,
            gather(&c.values, c.dim, keep),
        )],
    }
}

/// [`Contrastive`] loaded from its artifact.
struct ContrastiveApply {
    loaded: model::Loaded,
}

impl Apply for ContrastiveApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        let meta = &self.loaded.meta;
        let [Rows::Embedding(table)] = inputs else {
            return Err(Error::mismatch(
                "apply contrastive",
                format!(
                    "expected one embedding table (from `{}`), got [{}]",
                    meta.input,
                    inputs.iter().map(Rows::kind).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let col = table.column(&meta.column).ok_or_else(|| {
            Error::mismatch(
                "apply contrastive",
                format!(
                    "no column `{}` in the rows (they have: {})",
                    meta.column,
                    table.column_names().join(", ")
                ),
            )
        })?;
        if col.dim != meta.d_in {
            return Err(Error::mismatch(
                "apply contrastive",
                format!(
                    "column `{}` is {} wide; the head was trained on {} wide vectors",
                    meta.column, col.dim, meta.d_in
                ),
            ));
        }
        let mut x = col.values.clone();
        self.loaded.standardizer.apply_rows_f32(&mut x);
        let (width, values) = train::embed(&self.loaded.head, meta.output, &x)?;
        Ok(Rows::Embedding(EmbeddingTable {
            ids: table.ids.clone(),
            labels: table.labels.clone(),
            label_names: table.label_names.clone(),
            columns: vec![VectorColumn::new("embedding", width, values)],
        }))
    }
}

#[cfg(test)]
mod tests;
