//! Learned layer weights for `method: weighted`.
//!
//! What is learned: for every source `s` a vector of logits `a_s` (one per selected layer of that
//! source), turned into weights `w_s = softmax(a_s)` (non-negative, summing to 1). A row's fused
//! vector is `concat_s( sum_l w_s[l] * x_{s,l} )`. To give the weights a training signal they are
//! learned jointly with a linear softmax classifier `logits = fused W + b` by minimising the mean
//! cross-entropy on the TRAIN rows only, with Adam (decoupled weight decay on `W` only, as in
//! AdamW). The classifier is thrown away; only `w_s` are kept and applied to every split.
//! Because the weights see the labels, the stage also learns them once per fold of the
//! classifiers' cross-validation and writes each fold's training vectors (`fuse.rs`,
//! `write_fold_vectors`, which also fuses an input's own per-fold vectors fold by fold).
//!
//! Determinism: all parameters start at zero (uniform layer weights, zero classifier), and the only
//! random choice, the order of mini-batches, comes from a seeded generator.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;

use llmembed_core::{Error, Result};

use llmembed_core::Matrix;

/// Training settings, see [`crate::WeightedParams`].
pub(crate) struct TrainSettings {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

/// The outcome of training: layer weights per source and how well the probe fit the train rows.
pub(crate) struct WeightedFit {
    pub weights: Vec<Vec<f32>>,
    /// Mean cross-entropy over the train rows during the last epoch.
    pub last_epoch_loss: f64,
    /// Accuracy of the jointly trained linear probe on the train rows after training.
    pub train_accuracy: f64,
}

fn ce(op: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::compute(op, e)
}

/// Gathers rows `idx` of every layer of a source into a `(batch, layers, dim)` tensor.
fn gather(layers: &[Matrix], idx: &[usize], dev: &Device) -> Result<Tensor> {
    let dim = layers[0].dim;
    let mut buf = Vec::with_capacity(idx.len() * layers.len() * dim);
    for &i in idx {
        for l in layers {
            buf.extend_from_slice(l.row(i));
        }
    }
    Tensor::from_vec(buf, (idx.len(), layers.len(), dim), dev)
        .map_err(ce("weighted fusion: gather batch (batch, layers, dim)"))
}

/// The fused batch `(batch, sum of source dims)` for the current layer logits.
fn fuse_batch(
    sources: &[Vec<Matrix>],
    alphas: &[Var],
    idx: &[usize],
    dev: &Device,
) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(sources.len());
    for (layers, alpha) in sources.iter().zip(alphas) {
        let x = gather(layers, idx, dev)?;
        let w = candle_nn::ops::softmax(alpha.as_tensor(), 0)
            .and_then(|w| w.reshape((1, layers.len(), 1)))
            .map_err(ce("weighted fusion: softmax of layer logits"))?;
        let fused = x
            .broadcast_mul(&w)
            .and_then(|t| t.sum(1))
            .map_err(ce("weighted fusion: weighted sum over layers"))?;
        parts.push(fused);
    }
    Tensor::cat(&parts, 1).map_err(ce("weighted fusion: concat sources"))
}

pub(crate) fn fit(
    sources: &[Vec<Matrix>],
    labels: &[i64],
    num_classes: usize,
    s: &TrainSettings,
) -> Result<WeightedFit> {
    let dev = Device::Cpu;
    let n = labels.len();
    if n == 0 {
        return Err(Error::mismatch(
            "weighted fusion",
            "the train split has no rows",
        ));
    }
    let total_dim: usize = sources.iter().map(|l| l[0].dim).sum();
    let alphas: Vec<Var> = sources
        .iter()
        .map(|l| Var::zeros(l.len(), DType::F32, &dev))
        .collect::<candle_core::Result<_>>()
        .map_err(ce("weighted fusion: init layer logits"))?;
    let w = Var::zeros((total_dim, num_classes), DType::F32, &dev)
        .map_err(ce("weighted fusion: init probe"))?;
    let b = Var::zeros(num_classes, DType::F32, &dev).map_err(ce("weighted fusion: init bias"))?;
    let adam = |vars: Vec<Var>, wd: f64| {
        AdamW::new(
            vars,
            ParamsAdamW {
                lr: s.lr,
                weight_decay: wd,
                ..ParamsAdamW::default()
            },
        )
        .map_err(ce("weighted fusion: create optimizer"))
    };
    let mut opt_probe = adam(vec![w.clone(), b.clone()], s.weight_decay)?;
    let mut opt_layers = adam(alphas.clone(), 0.0)?;
    let targets: Vec<u32> = labels.iter().map(|&l| l as u32).collect();

    let logits_of = |idx: &[usize]| -> Result<Tensor> {
        let x = fuse_batch(sources, &alphas, idx, &dev)?;
        x.matmul(w.as_tensor())
            .and_then(|t| t.broadcast_add(b.as_tensor()))
            .map_err(ce(
                "weighted fusion: probe logits (batch, dim) x (dim, classes)",
            ))
    };

    let mut rng = llmembed_core::seeded_rng(s.seed, "fuse/weighted/batches");
    let mut order: Vec<usize> = (0..n).collect();
    let mut last_epoch_loss = f64::NAN;
    for _ in 0..s.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0f64;
        for idx in order.chunks(s.batch_size) {
            let logits = logits_of(idx)?;
            let y = Tensor::new(idx.iter().map(|&i| targets[i]).collect::<Vec<u32>>(), &dev)
                .map_err(ce("weighted fusion: targets"))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)
                .map_err(ce("weighted fusion: cross-entropy"))?;
            let grads = loss.backward().map_err(ce("weighted fusion: backward"))?;
            opt_probe
                .step(&grads)
                .map_err(ce("weighted fusion: probe step"))?;
            opt_layers
                .step(&grads)
                .map_err(ce("weighted fusion: layer-weight step"))?;
            let l = loss
                .to_scalar::<f32>()
                .map_err(ce("weighted fusion: read loss"))?;
            loss_sum += f64::from(l) * idx.len() as f64;
        }
        last_epoch_loss = loss_sum / n as f64;
        if !last_epoch_loss.is_finite() {
            return Err(Error::compute(
                "weighted fusion",
                format!(
                    "training diverged (loss {last_epoch_loss}); lower `weighted.lr` or use \
                     `normalize: l2`"
                ),
            ));
        }
    }

    let mut correct = 0usize;
    let all: Vec<usize> = (0..n).collect();
    for idx in all.chunks(s.batch_size.max(256)) {
        let pred: Vec<u32> = logits_of(idx)?
            .argmax(1)
            .and_then(|t| t.to_vec1::<u32>())
            .map_err(ce("weighted fusion: probe predictions"))?;
        correct += idx
            .iter()
            .zip(pred)
            .filter(|&(&i, p)| targets[i] == p)
            .count();
    }

    let weights = alphas
        .iter()
        .map(|a| {
            candle_nn::ops::softmax(a.as_tensor(), 0)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(ce("weighted fusion: read layer weights"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(WeightedFit {
        weights,
        last_epoch_loss,
        train_accuracy: correct as f64 / n as f64,
    })
}
