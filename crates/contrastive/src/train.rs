//! The projection head, the two contrastive losses and the training loop (CPU, candle).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use llmembed_core::{Error, Result, seeded_rng};

use crate::{Mode, Output, Params};

pub(crate) fn ce(op: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::compute(op, e)
}

/// Rows scaled to unit L2 norm.
fn l2_normalize(z: &Tensor) -> candle_core::Result<Tensor> {
    let norm = (z.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    z.broadcast_div(&norm)
}

/// SimCSE's in-batch InfoNCE: row i of `z1` should be closest (cosine / `temperature`) to row i
/// of `z2` among all rows of `z2`. Mean over rows of `-log softmax_j(cos(z1_i, z2_j) / t)[i]`.
pub(crate) fn info_nce(z1: &Tensor, z2: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let n = z1.dim(0)?;
    let logits = (l2_normalize(z1)?.matmul(&l2_normalize(z2)?.t()?)? / temperature)?;
    let targets = Tensor::arange(0u32, n as u32, z1.device())?;
    candle_nn::loss::cross_entropy(&logits, &targets)
}

/// Khosla et al.'s supervised contrastive loss (L_out) over the rows of `z` (all views
/// stacked): for anchor i, with P(i) the other rows of its label and A(i) all other rows,
/// `L_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{a in A(i)} exp(s_ia / t) )`,
/// averaged over anchors that have a positive.
pub(crate) fn supcon(z: &Tensor, labels: &[i64], temperature: f64) -> candle_core::Result<Tensor> {
    let m = labels.len();
    let device = z.device();
    let zn = l2_normalize(z)?;
    let logits = (zn.matmul(&zn.t()?)? / temperature)?;
    // Self-similarity out of the denominator: a large negative on the diagonal.
    let eye = Tensor::eye(m, DType::F32, device)?;
    let masked = (logits + (&eye * -1e9)?)?;
    let log_prob = candle_nn::ops::log_softmax(&masked, 1)?;
    let mut pos = vec![0f32; m * m];
    let mut has = vec![0f32; m];
    let mut inv_count = vec![0f32; m];
    for i in 0..m {
        let mut c = 0;
        for j in 0..m {
            if i != j && labels[i] == labels[j] {
                pos[i * m + j] = 1.0;
                c += 1;
            }
        }
        if c > 0 {
            has[i] = 1.0;
            inv_count[i] = 1.0 / c as f32;
        }
    }
    let anchors: f32 = has.iter().sum();
    let pos = Tensor::from_vec(pos, (m, m), device)?;
    let inv_count = Tensor::from_vec(inv_count, m, device)?;
    let per_anchor = (pos * log_prob)?.sum(1)?;
    let total = (per_anchor * inv_count)?.sum_all()?;
    if anchors == 0.0 {
        return Tensor::new(0f32, device);
    }
    total.affine(-1.0 / anchors as f64, 0.0)
}

/// One linear layer's values: `(out, in)`, the row-major weight and the bias.
pub(crate) type LinearValues = ((usize, usize), Vec<f32>, Vec<f32>);

/// Linear(d -> d_out), or Linear(d -> hidden) -> GELU -> dropout -> Linear(hidden -> d_out).
pub(crate) struct Head {
    layers: Vec<(Var, Var)>,
    pub(crate) d_in: usize,
    pub(crate) d_out: usize,
    residual: bool,
}

/// A `rows x cols` matrix of uniform values in [-bound, bound] from `rng`.
fn uniform(rng: &mut ChaCha8Rng, rows: usize, cols: usize, bound: f32) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| rng.random_range(-bound..=bound))
        .collect()
}

impl Head {
    /// Seeded initialisation (candle's `linear` uses an unseeded generator): PyTorch's default
    /// for Linear, U(-1/sqrt(in), 1/sqrt(in)) for weights and biases. A residual head's last
    /// layer starts at zero, so that training starts from the identity.
    pub(crate) fn new(
        d_in: usize,
        hidden: Option<usize>,
        d_out: usize,
        residual: bool,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = seeded_rng(seed, "contrastive-init");
        let dims: Vec<(usize, usize)> = match hidden {
            Some(h) => vec![(d_in, h), (h, d_out)],
            None => vec![(d_in, d_out)],
        };
        let last = dims.len() - 1;
        let mut layers = Vec::new();
        for (k, &(i, o)) in dims.iter().enumerate() {
            let bound = 1.0 / (i as f32).sqrt();
            let (w, b) = if residual && k == last {
                (vec![0f32; o * i], vec![0f32; o])
            } else {
                (
                    uniform(&mut rng, o, i, bound),
                    uniform(&mut rng, 1, o, bound),
                )
            };
            let w = Var::from_vec(w, (o, i), &Device::Cpu).map_err(ce("init head"))?;
            let b = Var::from_vec(b, o, &Device::Cpu).map_err(ce("init head"))?;
            layers.push((w, b));
        }
        Ok(Head {
            layers,
            d_in,
            d_out,
            residual,
        })
    }

    /// A head with the given layers' `(weight (out, in), bias (out))` values, as [`Self::layers`]
    /// gives them: a saved head loaded back.
    pub(crate) fn from_layers(layers: &[LinearValues], residual: bool) -> Result<Self> {
        let mut vars = Vec::with_capacity(layers.len());
        for ((o, i), w, b) in layers {
            let w = Var::from_vec(w.clone(), (*o, *i), &Device::Cpu).map_err(ce("load head"))?;
            let b = Var::from_vec(b.clone(), *o, &Device::Cpu).map_err(ce("load head"))?;
            vars.push((w, b));
        }
        let d_in = layers.first().map_or(0, |l| l.0.1);
        let d_out = layers.last().map_or(0, |l| l.0.0);
        Ok(Head {
            layers: vars,
            d_in,
            d_out,
            residual,
        })
    }

    /// Each layer's `((out, in), weight, bias)`, row-major.
    pub(crate) fn layers(&self) -> Result<Vec<LinearValues>> {
        self.layers
            .iter()
            .map(|(w, b)| {
                let dims = w.as_tensor().dims2().map_err(ce("read head"))?;
                let w = w
                    .as_tensor()
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(ce("read head"))?;
                let b = b.as_tensor().to_vec1::<f32>().map_err(ce("read head"))?;
                Ok((dims, w, b))
            })
            .collect()
    }

    pub(crate) fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    fn snapshot(&self) -> candle_core::Result<Vec<Tensor>> {
        self.vars().iter().map(|v| v.as_tensor().copy()).collect()
    }

    fn restore(&self, saved: &[Tensor]) -> candle_core::Result<()> {
        for (v, t) in self.vars().iter().zip(saved) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The head's output for `x`; `drop` gives the dropout masks (input, hidden) for a view.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        masks: Option<(&Tensor, Option<&Tensor>)>,
    ) -> candle_core::Result<Tensor> {
        let input = match masks {
            Some((m, _)) => (x * m)?,
            None => x.clone(),
        };
        let mut h = input.clone();
        let last = self.layers.len() - 1;
        for (k, (w, b)) in self.layers.iter().enumerate() {
            h = h
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            if k < last {
                h = h.gelu_erf()?;
                if let Some((_, Some(hm))) = masks {
                    h = (h * hm)?;
                }
            }
        }
        if self.residual { input + h } else { Ok(h) }
    }
}

/// Inverted-dropout masks (0 or 1/(1-p)) from a seeded stream.
fn mask(rng: &mut ChaCha8Rng, rows: usize, cols: usize, p: f64) -> candle_core::Result<Tensor> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)
}

/// What the loss is computed on: single rows (unsup, supcon) or (row, augmented copy) pairs.
pub(crate) enum Examples {
    Rows { x: Vec<f32>, labels: Vec<i64> },
    Pairs { a: Vec<f32>, b: Vec<f32> },
}

impl Examples {
    fn len(&self, dim: usize) -> usize {
        match self {
            Examples::Rows { x, .. } => x.len() / dim,
            Examples::Pairs { a, .. } => a.len() / dim,
        }
    }
}

fn gather(values: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * dim);
    for &i in idx {
        out.extend_from_slice(&values[i * dim..(i + 1) * dim]);
    }
    out
}

/// The loss of one batch (`idx` into `ex`), with dropout masks drawn from `rng`.
fn batch_loss(
    head: &Head,
    params: &Params,
    ex: &Examples,
    idx: &[usize],
    rng: &mut ChaCha8Rng,
) -> candle_core::Result<Tensor> {
    let d = head.d_in;
    let n = idx.len();
    let p = params.dropout;
    let hidden = params.hidden;
    let view = |rng: &mut ChaCha8Rng| -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let m = mask(rng, n, d, p)?;
        let hm = match hidden {
            Some(h) => Some(mask(rng, n, h, p)?),
            None => None,
        };
        Ok((m, hm))
    };
    let (m1, h1) = view(rng)?;
    let (m2, h2) = view(rng)?;
    match ex {
        Examples::Rows { x, labels } => {
            let x = Tensor::from_vec(gather(x, d, idx), (n, d), &Device::Cpu)?;
            let z1 = head.forward(&x, Some((&m1, h1.as_ref())))?;
            let z2 = head.forward(&x, Some((&m2, h2.as_ref())))?;
            match params.mode {
                Mode::Supcon => {
                    let mut l: Vec<i64> = idx.iter().map(|&i| labels[i]).collect();
                    l.extend_from_within(..);
                    supcon(&Tensor::cat(&[&z1, &z2], 0)?, &l, params.temperature)
                }
                _ => info_nce(&z1, &z2, params.temperature),
            }
        }
        Examples::Pairs { a, b } => {
            let xa = Tensor::from_vec(gather(a, d, idx), (n, d), &Device::Cpu)?;
            let xb = Tensor::from_vec(gather(b, d, idx), (n, d), &Device::Cpu)?;
            let z1 = head.forward(&xa, Some((&m1, h1.as_ref())))?;
            let z2 = head.forward(&xb, Some((&m2, h2.as_ref())))?;
            info_nce(&z1, &z2, params.temperature)
        }
    }
}

/// Contiguous batches of `order`; a last batch of fewer than 2 rows is merged into the previous
/// one (an in-batch loss needs negatives).
fn batches(order: &[usize], size: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = order.chunks(size).map(<[usize]>::to_vec).collect();
    if out.len() > 1 && out.last().is_some_and(|b| b.len() < 2) {
        let tail = out.pop().expect("non-empty");
        out.last_mut().expect("non-empty").extend(tail);
    }
    out.retain(|b| b.len() >= 2);
    out
}

#[derive(Debug, Serialize)]
pub(crate) struct TrainingLog {
    pub mode: Mode,
    pub output: Output,
    pub d_in: usize,
    pub d_out: usize,
    pub train_examples: usize,
    pub holdout_examples: usize,
    pub train_loss: Vec<f64>,
    pub val_loss: Vec<f64>,
    /// 1-based epoch whose weights were kept (0: the initial weights).
    pub best_epoch: usize,
    pub best_val_loss: Option<f64>,
    pub epochs_run: usize,
    pub stopped_early: bool,
}

/// Trains `head` on `train`, early-stopping on `val` (if any), and keeps the best weights.
pub(crate) fn train(
    head: &Head,
    params: &Params,
    seed: u64,
    train: &Examples,
    val: Option<&Examples>,
    mut progress: impl FnMut(usize, f64, Option<f64>),
) -> Result<TrainingLog> {
    let d = head.d_in;
    let n = train.len(d);
    let mut opt = AdamW::new(
        head.vars(),
        ParamsAdamW {
            lr: params.lr,
            weight_decay: params.weight_decay,
            ..ParamsAdamW::default()
        },
    )
    .map_err(ce("create AdamW"))?;
    let val_loss = |head: &Head| -> Result<f64> {
        let Some(val) = val else { return Ok(f64::NAN) };
        // The same batches and dropout masks at every epoch, so the losses are comparable.
        let mut rng = seeded_rng(seed, "contrastive-val");
        let order: Vec<usize> = (0..val.len(d)).collect();
        let (mut sum, mut count) = (0.0, 0usize);
        for b in batches(&order, params.batch_size) {
            let l = batch_loss(head, params, val, &b, &mut rng)
                .and_then(|l| l.to_scalar::<f32>())
                .map_err(ce("contrastive validation loss"))?;
            sum += l as f64 * b.len() as f64;
            count += b.len();
        }
        Ok(if count == 0 {
            f64::NAN
        } else {
            sum / count as f64
        })
    };
    let mut log = TrainingLog {
        mode: params.mode,
        output: params.output,
        d_in: d,
        d_out: head.d_out,
        train_examples: n,
        holdout_examples: val.map_or(0, |v| v.len(d)),
        train_loss: Vec::new(),
        val_loss: Vec::new(),
        best_epoch: 0,
        best_val_loss: None,
        epochs_run: 0,
        stopped_early: false,
    };
    let has_val = val.is_some_and(|v| v.len(d) >= 2);
    let mut best = if has_val {
        let v = val_loss(head)?;
        log.best_val_loss = Some(v);
        Some((v, head.snapshot().map_err(ce("snapshot head"))?))
    } else {
        None
    };
    let mut since_best = 0usize;
    let mut shuffle_rng = seeded_rng(seed, "contrastive-batches");
    let mut drop_rng = seeded_rng(seed, "contrastive-dropout");
    for epoch in 1..=params.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut shuffle_rng);
        let (mut sum, mut count) = (0.0, 0usize);
        for b in batches(&order, params.batch_size) {
            let loss = batch_loss(head, params, train, &b, &mut drop_rng)
                .map_err(ce("contrastive loss"))?;
            opt.backward_step(&loss)
                .map_err(ce("contrastive AdamW step"))?;
            let l = loss.to_scalar::<f32>().map_err(ce("read loss"))? as f64;
            if !l.is_finite() {
                return Err(Error::compute(
                    "contrastive training",
                    format!("loss became {l} at epoch {epoch}; lower `lr` or raise `temperature`"),
                ));
            }
            sum += l * b.len() as f64;
            count += b.len();
        }
        log.train_loss.push(sum / count.max(1) as f64);
        log.epochs_run = epoch;
        let v = if has_val { Some(val_loss(head)?) } else { None };
        progress(epoch, sum / count.max(1) as f64, v);
        if let (Some(v), Some((best_v, saved))) = (v, best.as_mut()) {
            log.val_loss.push(v);
            if v < *best_v {
                *best_v = v;
                *saved = head.snapshot().map_err(ce("snapshot head"))?;
                log.best_epoch = epoch;
                log.best_val_loss = Some(v);
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= params.patience {
                    log.stopped_early = true;
                    break;
                }
            }
        } else {
            log.best_epoch = epoch;
        }
    }
    if let Some((_, saved)) = best {
        head.restore(&saved).map_err(ce("restore best head"))?;
    }
    Ok(log)
}

/// The refined vectors of standardised rows `x` (no dropout), in the layout of `output`.
pub(crate) fn embed(head: &Head, output: Output, x: &[f32]) -> Result<(usize, Vec<f32>)> {
    let d = head.d_in;
    let n = x.len() / d;
    let mut out = Vec::new();
    let mut width = 0;
    for start in (0..n).step_by(1024) {
        let rows = (n - start).min(1024);
        let xs = &x[start * d..(start + rows) * d];
        let t = Tensor::from_slice(xs, (rows, d), &Device::Cpu).map_err(ce("embed rows"))?;
        let z = head.forward(&t, None).map_err(ce("head forward"))?;
        let v = match output {
            Output::Head | Output::Residual => z,
            Output::Concat => {
                // The unit-normalised head output scaled to the width of a standardised input
                // (per-feature variance about 1), beside the standardised input.
                let scale = (head.d_out as f64).sqrt();
                let z =
                    (l2_normalize(&z).map_err(ce("normalize"))? * scale).map_err(ce("scale"))?;
                Tensor::cat(&[&t, &z], 1).map_err(ce("concat"))?
            }
        };
        width = v.dim(1).map_err(ce("embed"))?;
        out.extend(
            v.flatten_all()
                .and_then(|f| f.to_vec1::<f32>())
                .map_err(ce("read embeddings"))?,
        );
    }
    if n == 0 {
        width = match output {
            Output::Concat => d + head.d_out,
            _ => head.d_out,
        };
    }
    Ok((width, out))
}
