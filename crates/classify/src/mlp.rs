//! The paper's MLP head (`kind: mlp`): input -> 1024 -> 256 -> C with ReLU and dropout 0.5 after
//! each hidden layer, trained with Adam (lr 1e-4) on cross-entropy over the logits (softmax applied
//! once, inside the loss; the paper's code applied it twice). Inputs are standardised with train
//! statistics. Everything random is drawn from seeded streams: the initial weights
//! (`seeded_rng(seed, "mlp-init")`, PyTorch's `nn.Linear` init: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`
//! for weights and biases), the epoch shuffles (`"mlp-shuffle"`) and the dropout masks
//! (`"mlp-dropout"`), so the same seed gives the same bytes on the same machine.
//!
//! Default `epochs: 30`: with the paper's small learning rate (1e-4) and ~2,000 training rows
//! (the seed protocol's train sample) an epoch is ~32 Adam steps of batch 64, so 30 epochs is
//! ~950 steps, enough for the training loss to flatten on standardised LLM embeddings while
//! dropout 0.5 keeps it from overfitting badly; `select.epochs` picks it by CV when it matters.

use candle_core::Device;
use llmembed_core::metrics::accuracy;
use llmembed_core::{Apply, ApplyEnv, Arity, Context, Error, Input, Result, Stage, Summary};
use serde::{Deserialize, Serialize};

use crate::data::{Split, standardized_f32, standardizer, write_every_split};
use crate::folds::{PerFold, cv_folds_for, fold_rows};
use crate::logreg_fit::grid_cv;
use crate::mlp_net::{MlpConfig, tensor2, train_mlp};
use crate::prologue::{
    self, FeatureParams, TrainTest, best_index, check_columns, check_select_folds, feature_params,
    preds_of, scored_accuracy, write_cv_predictions, write_json,
};
use crate::saved::{FittedOn, MLP_FORMULA, MlpApply, MlpMeta, MlpModel};

fn default_hidden() -> Vec<usize> {
    vec![1024, 256]
}
fn default_dropout() -> f64 {
    0.5
}
fn default_lr() -> f64 {
    1e-4
}
fn default_batch_size() -> usize {
    64
}
/// See the module docs for why 30.
pub const DEFAULT_EPOCHS: usize = 30;
fn default_folds() -> usize {
    llmembed_core::folds::DEFAULT_FOLDS
}

/// Params of `kind: mlp`.
///
/// ```yaml
/// kind: mlp
/// params:
///   column: embedding       # or `columns: [..]`; default: the only vector column
///   hidden: [1024, 256]     # hidden widths (the paper's)
///   dropout: 0.5
///   lr: 1.0e-4              # Adam (no weight decay)
///   batch_size: 64
///   epochs: 30              # default 30; not together with `select`
///   seed: 7                 # weights, batches, dropout; default: the pipeline's seed
///   select:                 # optional: choose epochs by stratified k-fold CV on train rows
///                           # (the folds every classifier uses: from the pipeline's seed)
///     epochs: [10, 20, 30, 50]
///     folds: 5
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MlpParams {
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Training epochs; [`DEFAULT_EPOCHS`] when absent.
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub select: Option<MlpSelect>,
}

impl Default for MlpParams {
    fn default() -> Self {
        MlpParams {
            column: None,
            columns: None,
            hidden: default_hidden(),
            dropout: default_dropout(),
            lr: default_lr(),
            batch_size: default_batch_size(),
            epochs: None,
            seed: None,
            select: None,
        }
    }
}

/// Choose the number of epochs by stratified k-fold CV on the training rows. Each fold trains
/// once for the largest value and is scored after each listed epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MlpSelect {
    pub epochs: Vec<usize>,
    #[serde(default = "default_folds")]
    pub folds: usize,
}

/// `kind: mlp`.
pub struct Mlp;

#[derive(Clone, Debug, Serialize)]
struct CvRow {
    epochs: usize,
    fold_accuracy: Vec<f64>,
    mean_accuracy: f64,
}

#[derive(Clone, Debug, Serialize)]
struct Selection {
    folds: usize,
    /// The folds' [`CvFolds::splits`](crate::folds::CvFolds::splits).
    splits: String,
    table: Vec<CvRow>,
    best_epochs: usize,
}

#[derive(Clone, Debug, Serialize)]
struct ModelSummary {
    kind: &'static str,
    columns: Vec<String>,
    input_dim: usize,
    train_rows: usize,
    test_rows: usize,
    classes: Vec<String>,
    layers: Vec<usize>,
    dropout: f64,
    lr: f64,
    batch_size: usize,
    epochs: usize,
    seed: u64,
    steps: usize,
    epoch_train_loss: Vec<f64>,
    train_accuracy: f64,
    test_accuracy: f64,
    select: Option<Selection>,
}

/// The CV table of `select.epochs` (sorted, distinct); per row of it, every training row's
/// class probabilities (train order, rows x classes) from the fold's network that did not see
/// the row, after that many epochs (an augmented copy, which no fold validates, has zeros):
/// what an ensemble with this member is scored on; and the folds'
/// [`CvFolds::splits`](crate::folds::CvFolds::splits).
fn cross_validate(
    train: &Split,
    per_fold: Option<&PerFold>,
    sel: &MlpSelect,
    cfg: &MlpConfig,
    pipeline_seed: u64,
    dev: &Device,
) -> Result<(Vec<CvRow>, Vec<Vec<f32>>, String)> {
    let cv = cv_folds_for(train, per_fold, sel.folds, pipeline_seed, "select.folds")?;
    let k = train.label_names.len();
    let max_epochs = *sel.epochs.iter().max().expect("checked non-empty");
    let mut checkpoints = sel.epochs.clone();
    checkpoints.sort_unstable();
    checkpoints.dedup();
    let grid: Vec<f64> = checkpoints.iter().map(|&e| e as f64).collect();
    let (rows, oof) = grid_cv(&cv, &train.labels, &grid, k, |f| {
        let (tr, va) = fold_rows(train, per_fold, &cv, f)?;
        let st = standardizer(&tr);
        let xtr = tensor2(standardized_f32(&tr, &st), tr.rows(), tr.dim(), dev)?;
        let xva = tensor2(standardized_f32(&va, &st), va.rows(), va.dim(), dev)?;
        let t = train_mlp(
            &xtr,
            &tr.labels,
            k,
            max_epochs,
            cfg,
            Some((&xva, &checkpoints)),
        )?;
        Ok(t.checkpoint_probs.into_iter().map(|p| (p, true)).collect())
    })?;
    let table = checkpoints
        .iter()
        .zip(rows)
        .map(|(&epochs, row)| CvRow {
            epochs,
            fold_accuracy: row.fold_accuracy,
            mean_accuracy: row.mean_accuracy,
        })
        .collect();
    Ok((table, oof, cv.splits))
}

feature_params!(MlpParams);

impl Stage for Mlp {
    const KIND: &'static str = "mlp";
    // 3: the artifact holds the trained network (`model.safetensors`, `classifier.json`) and the
    // predictions of splits besides train and test; predictions.parquet and model.json keep
    // their bytes. 4: with `select`, also the training rows' out-of-fold probabilities
    // (`cv_predictions.parquet`, as `logreg` writes them), so that an ensemble with this member
    // has a CV score. 5: with `select`, the folds are every classifier's (`folds::cv_folds`,
    // from the pipeline's seed), no longer the MLP's own, and model.json names their splits.
    // 6: with `select`, an augmented copy goes with its source's fold, as in `logreg` 6.
    const VERSION: u32 = 6;
    const INPUTS: Arity = Arity::Exactly(1);
    // The pipeline's seed is part of the key: initialisation, dropout and batches are drawn with it.
    const SEEDED: bool = true;
    // With `select`, the CV folds are drawn from the pipeline's seed even where the stage's own
    // `seed` param draws the rest.
    const READS_PIPELINE_SEED: bool = true;
    type Params = MlpParams;

    fn check(p: &MlpParams) -> Result<()> {
        check_columns(p.column(), p.columns())?;
        if p.hidden.contains(&0) {
            return Err(Error::param("hidden", "widths must be at least 1"));
        }
        if !(0.0..1.0).contains(&p.dropout) {
            return Err(Error::param(
                "dropout",
                format!("must be in [0, 1), got {}", p.dropout),
            ));
        }
        if !(p.lr.is_finite() && p.lr > 0.0) {
            return Err(Error::param(
                "lr",
                format!("must be positive, got {}", p.lr),
            ));
        }
        if p.batch_size == 0 {
            return Err(Error::param("batch_size", "must be at least 1"));
        }
        if p.epochs == Some(0) {
            return Err(Error::param("epochs", "must be at least 1"));
        }
        if let Some(sel) = &p.select {
            if p.epochs.is_some() {
                return Err(Error::param(
                    "epochs",
                    "give either `epochs` or `select.epochs`, not both",
                ));
            }
            if sel.epochs.is_empty() || sel.epochs.contains(&0) {
                return Err(Error::param(
                    "select.epochs",
                    "needs a non-empty list of positive values",
                ));
            }
        }
        check_select_folds(p)
    }

    fn run(p: &MlpParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(p)?;
        let loaded = prologue::load(&inputs[0], p)?;
        let unlabelled_note = loaded.unlabelled_note();
        let TrainTest {
            train,
            test,
            columns,
            unlabelled_train,
        } = loaded;
        let k = train.label_names.len();
        let dev = Device::Cpu;
        let seed = ctx.seed;
        let cfg = MlpConfig {
            hidden: p.hidden.clone(),
            dropout: p.dropout,
            lr: p.lr,
            batch_size: p.batch_size,
            seed,
        };
        let mut notes: Vec<String> = unlabelled_note.into_iter().collect();
        let (epochs, select, out_of_fold) = match &p.select {
            None => (p.epochs.unwrap_or(DEFAULT_EPOCHS), None, None),
            Some(sel) => {
                // The pipeline's seed, not `ctx.seed`, which is this stage's own `seed` where it
                // has one: another draw of the network must be scored on the same folds.
                let per_fold = PerFold::find(&inputs[0], &columns)?;
                let (table, mut oof, splits) =
                    cross_validate(&train, per_fold.as_ref(), sel, &cfg, ctx.env.seed, &dev)?;
                // Best mean accuracy; ties go to fewer epochs (the table is sorted by epochs).
                let best = best_index(&table, |a, b| a.mean_accuracy > b.mean_accuracy);
                let e = table[best].epochs;
                notes.push(format!("{}-fold CV picked {e} epochs", sel.folds));
                let grid: Vec<f64> = sel.epochs.iter().map(|&x| x as f64).collect();
                notes.extend(prologue::grid_edge_note("epochs", e as f64, &grid));
                notes.extend(per_fold.as_ref().map(PerFold::note));
                let selection = Selection {
                    folds: sel.folds,
                    splits,
                    table,
                    best_epochs: e,
                };
                (e, Some(selection), Some(oof.swap_remove(best)))
            }
        };
        let st = standardizer(&train);
        let xtr = tensor2(
            standardized_f32(&train, &st),
            train.rows(),
            train.dim(),
            &dev,
        )?;
        let trained = train_mlp(&xtr, &train.labels, k, epochs, &cfg, None)?;
        let train_probs = trained.net.predict_proba(&xtr)?;
        let train_acc = accuracy(&train.labels, &preds_of(&train_probs, k));
        let producer = format!("mlp({epochs} epochs, {})", columns.join("+"));
        let (epoch_loss, steps, fit_seconds) =
            (trained.epoch_loss, trained.steps, trained.fit_seconds);
        let model = MlpModel {
            columns: columns.clone(),
            classes: train.label_names.clone(),
            standardizer: st,
            net: trained.net,
        };
        let predictions = model.predict(&test, &producer)?;
        let test_acc = scored_accuracy(&test.labels, &predictions.preds);
        let rows_out =
            write_every_split(ctx, &inputs[0], &columns, &train, &predictions, |rows| {
                model.predict(rows, &producer)
            })?;
        if let Some(oof) = &out_of_fold {
            let (ids, labels, names) = (&train.ids, &train.labels, &train.label_names);
            write_cv_predictions(ctx, ids, labels, names, oof, &producer)?;
        }
        let mut layers = vec![train.dim()];
        layers.extend(&p.hidden);
        layers.push(k);
        write_json(
            &ctx.out("model.json"),
            &ModelSummary {
                kind: "mlp",
                columns: columns.clone(),
                input_dim: train.dim(),
                train_rows: train.rows(),
                test_rows: test.rows(),
                classes: train.label_names.clone(),
                layers: layers.clone(),
                dropout: p.dropout,
                lr: p.lr,
                batch_size: p.batch_size,
                epochs,
                seed,
                steps,
                epoch_train_loss: epoch_loss.clone(),
                train_accuracy: train_acc,
                test_accuracy: test_acc,
                select,
            },
        )?;
        let meta = MlpMeta {
            kind: Self::KIND.into(),
            classes: train.label_names.clone(),
            columns,
            input_dim: train.dim(),
            layers,
            activation: "relu".into(),
            epochs,
            seed,
            fitted_on: FittedOn {
                stage: inputs[0].stage_id.clone(),
                split: "train".into(),
                rows: train.rows(),
                unlabelled_rows_dropped: unlabelled_train,
            },
            producer,
            formula: MLP_FORMULA.into(),
        };
        model.save(&ctx.out_dir, &meta)?;
        notes.push(format!(
            "{epochs} epochs, fit {fit_seconds:.1}s, final train loss {:.4}, test acc {test_acc:.4}",
            epoch_loss.last().copied().unwrap_or(f64::NAN)
        ));
        Ok(Summary {
            rows_out,
            notes,
            ..Default::default()
        })
    }

    fn applier(_p: &MlpParams, fitted: &Input, _env: &ApplyEnv) -> Result<Option<Box<dyn Apply>>> {
        let (model, meta) = MlpModel::load(fitted)?;
        Ok(Some(Box::new(MlpApply { model, meta })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_bad_params() {
        assert!(Mlp::check(&MlpParams::default()).is_ok());
        for (bad, want) in [
            (
                MlpParams {
                    dropout: 1.0,
                    ..MlpParams::default()
                },
                "param `dropout`: must be in [0, 1), got 1",
            ),
            (
                MlpParams {
                    batch_size: 0,
                    ..MlpParams::default()
                },
                "param `batch_size`: must be at least 1",
            ),
            (
                MlpParams {
                    epochs: Some(5),
                    select: Some(MlpSelect {
                        epochs: vec![5],
                        folds: 3,
                    }),
                    ..MlpParams::default()
                },
                "param `epochs`: give either `epochs` or `select.epochs`, not both",
            ),
        ] {
            let err = Mlp::check(&bad).unwrap_err().to_string();
            assert_eq!(err, want, "{bad:?}");
        }
        let p: MlpParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, MlpParams::default());
        let err = serde_json::from_str::<MlpParams>(r#"{"epoch": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `epoch`"), "{err}");
    }
}
