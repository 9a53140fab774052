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

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW};
use llmembed_core::{
    Arity, Context, Error, Input, Predictions, Result, Stage, Summary, seeded_rng,
    write_predictions,
};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::{
    Split, Standardizer, accuracy, argmax, check_folds, complement, load_train_test,
    stratified_folds,
};
use crate::logreg::write_json;

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
    5
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
///   seed: 7                 # default: the pipeline's seed
///   select:                 # optional: choose epochs by stratified k-fold CV on train rows
///     epochs: [10, 20, 30, 50]
///     folds: 5
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSelect {
    pub epochs: Vec<usize>,
    #[serde(default = "default_folds")]
    pub folds: usize,
}

/// `kind: mlp`.
pub struct Mlp;

fn cerr(op: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::compute(op, e)
}

struct Net {
    /// `(weight out x in, bias out)` per layer.
    layers: Vec<(Var, Var)>,
}

impl Net {
    /// PyTorch's `nn.Linear` init from the seeded stream.
    fn init(dims: &[usize], seed: u64, dev: &Device) -> Result<Net> {
        let mut rng = seeded_rng(seed, "mlp-init");
        let mut layers = Vec::new();
        for pair in dims.windows(2) {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let w: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let b: Vec<f32> = (0..fan_out)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let w = Tensor::from_vec(w, (fan_out, fan_in), dev).map_err(cerr("mlp init"))?;
            let b = Tensor::from_vec(b, fan_out, dev).map_err(cerr("mlp init"))?;
            layers.push((
                Var::from_tensor(&w).map_err(cerr("mlp init"))?,
                Var::from_tensor(&b).map_err(cerr("mlp init"))?,
            ));
        }
        Ok(Net { layers })
    }

    fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    /// Logits. `dropout` is `(p, rng)` in training and `None` in evaluation.
    fn forward(
        &self,
        x: &Tensor,
        mut dropout: Option<(f64, &mut rand_chacha::ChaCha8Rng)>,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let lin = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
            h = lin.forward(&h)?;
            if i < last {
                h = h.relu()?;
                if let Some((p, rng)) = dropout.as_mut()
                    && *p > 0.0
                {
                    let keep = 1.0 - *p;
                    let scale = (1.0 / keep) as f32;
                    let mask: Vec<f32> = (0..h.elem_count())
                        .map(|_| {
                            if rng.random::<f64>() < keep {
                                scale
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let mask = Tensor::from_vec(mask, h.dims(), h.device())?;
                    h = (h * mask)?;
                }
            }
        }
        Ok(h)
    }

    /// Class probabilities, row-major, in chunks of 1024 rows.
    fn predict_proba(&self, x: &Tensor) -> Result<Vec<f32>> {
        let n = x.dims()[0];
        let mut out = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (n - start).min(1024);
            let chunk = x.narrow(0, start, len).map_err(cerr("mlp predict"))?;
            let logits = self.forward(&chunk, None).map_err(cerr("mlp predict"))?;
            let probs = candle_nn::ops::softmax_last_dim(&logits).map_err(cerr("mlp softmax"))?;
            out.extend(
                probs
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(cerr("mlp predict"))?,
            );
            start += len;
        }
        Ok(out)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct MlpConfig {
    pub hidden: Vec<usize>,
    pub dropout: f64,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
}

pub(crate) struct Trained {
    net: Net,
    /// Mean training loss of each epoch.
    pub epoch_loss: Vec<f64>,
    /// Accuracy on the evaluation rows after each checkpoint epoch.
    pub checkpoint_accuracy: Vec<f64>,
    pub steps: usize,
    pub fit_seconds: f64,
}

fn tensor2(values: Vec<f32>, rows: usize, dim: usize, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(values, (rows, dim), dev)
        .map_err(|e| Error::compute("build feature tensor", format!("{rows}x{dim}: {e}")))
}

/// Trains for `epochs` on standardised `x`; scores `eval` after each epoch in `checkpoints`.
pub(crate) fn train_mlp(
    x: &Tensor,
    labels: &[i64],
    n_classes: usize,
    epochs: usize,
    cfg: &MlpConfig,
    eval: Option<(&Tensor, &[i64], &[usize])>,
) -> Result<Trained> {
    let start = Instant::now();
    let dev = x.device().clone();
    let (n, d) = x.dims2().map_err(cerr("mlp input"))?;
    let mut dims = vec![d];
    dims.extend(&cfg.hidden);
    dims.push(n_classes);
    let net = Net::init(&dims, cfg.seed, &dev)?;
    let mut opt = AdamW::new(
        net.vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )
    .map_err(cerr("mlp optimizer"))?;
    let targets = Tensor::from_vec(
        labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        n,
        &dev,
    )
    .map_err(cerr("mlp targets"))?;
    let mut shuffle_rng = seeded_rng(cfg.seed, "mlp-shuffle");
    let mut dropout_rng = seeded_rng(cfg.seed, "mlp-dropout");
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut epoch_loss = Vec::new();
    let mut checkpoint_accuracy = Vec::new();
    let mut steps = 0;
    for epoch in 1..=epochs {
        order.shuffle(&mut shuffle_rng);
        let mut loss_sum = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            let idx = Tensor::from_slice(batch, batch.len(), &dev).map_err(cerr("mlp batch"))?;
            let xb = x.index_select(&idx, 0).map_err(cerr("mlp batch"))?;
            let yb = targets.index_select(&idx, 0).map_err(cerr("mlp batch"))?;
            let logits = net
                .forward(&xb, Some((cfg.dropout, &mut dropout_rng)))
                .map_err(|e| {
                    Error::compute("mlp forward", format!("batch {}x{d}: {e}", batch.len()))
                })?;
            let loss =
                candle_nn::loss::cross_entropy(&logits, &yb).map_err(cerr("mlp cross-entropy"))?;
            opt.backward_step(&loss).map_err(cerr("mlp backward"))?;
            let l = loss.to_scalar::<f32>().map_err(cerr("mlp loss"))? as f64;
            if !l.is_finite() {
                return Err(Error::compute(
                    "mlp training",
                    format!("loss became {l} in epoch {epoch} (lr {})", cfg.lr),
                ));
            }
            loss_sum += l * batch.len() as f64;
            steps += 1;
        }
        epoch_loss.push(loss_sum / n as f64);
        if let Some((xe, ye, checkpoints)) = eval
            && checkpoints.contains(&epoch)
        {
            let probs = net.predict_proba(xe)?;
            let preds: Vec<i64> = probs.chunks(n_classes).map(|r| argmax(r) as i64).collect();
            checkpoint_accuracy.push(accuracy(ye, &preds));
        }
    }
    Ok(Trained {
        net,
        epoch_loss,
        checkpoint_accuracy,
        steps,
        fit_seconds: start.elapsed().as_secs_f64(),
    })
}

#[derive(Clone, Debug, Serialize)]
struct CvRow {
    epochs: usize,
    fold_accuracy: Vec<f64>,
    mean_accuracy: f64,
}

#[derive(Clone, Debug, Serialize)]
struct Selection {
    folds: usize,
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

fn cross_validate(
    train: &Split,
    sel: &MlpSelect,
    cfg: &MlpConfig,
    dev: &Device,
) -> Result<Vec<CvRow>> {
    let mut rng = seeded_rng(cfg.seed, "mlp-cv-folds");
    let folds = stratified_folds(&train.labels, sel.folds, &mut rng);
    let k = train.label_names.len();
    let max_epochs = *sel.epochs.iter().max().expect("checked non-empty");
    let mut checkpoints = sel.epochs.clone();
    checkpoints.sort_unstable();
    checkpoints.dedup();
    let mut per_fold = Vec::new();
    for fold in &folds {
        let tr = train.subset(&complement(train.rows(), fold));
        let va = train.subset(fold);
        let st = Standardizer::fit(&tr);
        let xtr = tensor2(st.apply_f32(&tr), tr.rows(), tr.dim, dev)?;
        let xva = tensor2(st.apply_f32(&va), va.rows(), va.dim, dev)?;
        let t = train_mlp(
            &xtr,
            &tr.labels,
            k,
            max_epochs,
            cfg,
            Some((&xva, &va.labels, &checkpoints)),
        )?;
        per_fold.push(t.checkpoint_accuracy);
    }
    Ok(checkpoints
        .iter()
        .enumerate()
        .map(|(j, &e)| {
            let accs: Vec<f64> = per_fold.iter().map(|f| f[j]).collect();
            CvRow {
                epochs: e,
                mean_accuracy: accs.iter().sum::<f64>() / accs.len() as f64,
                fold_accuracy: accs,
            }
        })
        .collect())
}

impl Stage for Mlp {
    const KIND: &'static str = "mlp";
    const VERSION: u32 = 2;
    const INPUTS: Arity = Arity::Exactly(1);
    // The pipeline's seed is part of the key: initialisation, dropout and batches are drawn with it.
    const SEEDED: bool = true;
    type Params = MlpParams;

    fn check(p: &MlpParams) -> Result<()> {
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
            if sel.folds < 2 {
                return Err(Error::param("select.folds", "needs at least 2 folds"));
            }
        }
        Ok(())
    }

    fn run(p: &MlpParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
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
        let dev = Device::Cpu;
        let seed = p.seed.unwrap_or(ctx.seed);
        let cfg = MlpConfig {
            hidden: p.hidden.clone(),
            dropout: p.dropout,
            lr: p.lr,
            batch_size: p.batch_size,
            seed,
        };
        let mut notes = Vec::new();
        let (epochs, select) = match &p.select {
            None => (p.epochs.unwrap_or(DEFAULT_EPOCHS), None),
            Some(sel) => {
                let table = cross_validate(&train, sel, &cfg, &dev)?;
                // Best mean accuracy; ties go to fewer epochs (the table is sorted by epochs).
                let mut best = &table[0];
                for row in &table {
                    if row.mean_accuracy > best.mean_accuracy {
                        best = row;
                    }
                }
                let e = best.epochs;
                notes.push(format!("{}-fold CV picked {e} epochs", sel.folds));
                (
                    e,
                    Some(Selection {
                        folds: sel.folds,
                        table,
                        best_epochs: e,
                    }),
                )
            }
        };
        let st = Standardizer::fit(&train);
        let xtr = tensor2(st.apply_f32(&train), train.rows(), train.dim, &dev)?;
        let xte = tensor2(st.apply_f32(&test), test.rows(), test.dim, &dev)?;
        let trained = train_mlp(&xtr, &train.labels, k, epochs, &cfg, None)?;
        let train_probs = trained.net.predict_proba(&xtr)?;
        let train_preds: Vec<i64> = train_probs.chunks(k).map(|r| argmax(r) as i64).collect();
        let train_acc = accuracy(&train.labels, &train_preds);
        let probs = trained.net.predict_proba(&xte)?;
        let preds: Vec<i64> = probs.chunks(k).map(|r| argmax(r) as i64).collect();
        let test_acc = accuracy(&test.labels, &preds);
        write_predictions(
            &ctx.out("predictions.parquet"),
            &Predictions {
                ids: test.ids.clone(),
                labels: test.labels.clone(),
                preds,
                probs,
                label_names: test.label_names.clone(),
                producer: format!("mlp({epochs} epochs, {})", columns.join("+")),
            },
        )?;
        let mut layers = vec![train.dim];
        layers.extend(&p.hidden);
        layers.push(k);
        write_json(
            &ctx.out("model.json"),
            &ModelSummary {
                kind: "mlp",
                columns,
                input_dim: train.dim,
                train_rows: train.rows(),
                test_rows: test.rows(),
                classes: train.label_names.clone(),
                layers,
                dropout: p.dropout,
                lr: p.lr,
                batch_size: p.batch_size,
                epochs,
                seed,
                steps: trained.steps,
                epoch_train_loss: trained.epoch_loss.clone(),
                train_accuracy: train_acc,
                test_accuracy: test_acc,
                select,
            },
        )?;
        notes.push(format!(
            "{epochs} epochs, fit {:.1}s, final train loss {:.4}, test acc {test_acc:.4}",
            trained.fit_seconds,
            trained.epoch_loss.last().copied().unwrap_or(f64::NAN)
        ));
        Ok(Summary {
            rows_out: test.rows(),
            notes,
        })
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

    #[test]
    fn seeded_init_is_reproducible_and_seed_dependent() {
        let dev = Device::Cpu;
        let a = Net::init(&[5, 4, 3], 1, &dev).unwrap();
        let b = Net::init(&[5, 4, 3], 1, &dev).unwrap();
        let c = Net::init(&[5, 4, 3], 2, &dev).unwrap();
        let flat = |n: &Net| -> Vec<f32> {
            n.layers[0]
                .0
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(flat(&a), flat(&b));
        assert_ne!(flat(&a), flat(&c));
        let bound = 1.0 / 5f32.sqrt();
        assert!(flat(&a).iter().all(|v| v.abs() <= bound));
    }
}
