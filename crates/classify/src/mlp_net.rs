//! The MLP itself (candle): seeded initialisation, forward pass with seeded dropout, training
//! with Adam and scoring of checkpoint epochs. Knows nothing about tables or params.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{Module, ParamsAdamW};
use llmembed_core::{Error, Result, seeded_rng};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::adam::Adam;

fn cerr(op: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::compute(op, e)
}

pub(crate) struct Net {
    /// `(weight out x in, bias out)` per layer.
    layers: Vec<(Var, Var)>,
}

impl Net {
    /// PyTorch's `nn.Linear` init from the seeded stream.
    pub(crate) fn init(dims: &[usize], seed: u64, dev: &Device) -> Result<Net> {
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

    /// A trained network from its layers' `(weight out x in, bias out)` (as [`Net::weights`]
    /// gives them).
    pub(crate) fn from_layers(layers: Vec<(Tensor, Tensor)>) -> Result<Net> {
        let mut out = Vec::with_capacity(layers.len());
        for (w, b) in layers {
            out.push((
                Var::from_tensor(&w).map_err(cerr("mlp load"))?,
                Var::from_tensor(&b).map_err(cerr("mlp load"))?,
            ));
        }
        if out.is_empty() {
            return Err(Error::mismatch("mlp load", "no layers"));
        }
        Ok(Net { layers: out })
    }

    /// Each layer's weight (row-major, out x in) and bias.
    pub(crate) fn weights(&self) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        self.layers
            .iter()
            .map(|(w, b)| {
                let w = w.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>());
                let b = b.as_tensor().to_vec1::<f32>();
                Ok((w.map_err(cerr("mlp save"))?, b.map_err(cerr("mlp save"))?))
            })
            .collect()
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
    pub(crate) fn predict_proba(&self, x: &Tensor) -> Result<Vec<f32>> {
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
    pub net: Net,
    /// Mean training loss of each epoch.
    pub epoch_loss: Vec<f64>,
    /// The evaluation rows' class probabilities (rows x classes) after each checkpoint epoch.
    pub checkpoint_probs: Vec<Vec<f32>>,
    pub steps: usize,
    pub fit_seconds: f64,
}

pub(crate) fn tensor2(values: Vec<f32>, rows: usize, dim: usize, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(values, (rows, dim), dev)
        .map_err(|e| Error::compute("build feature tensor", format!("{rows}x{dim}: {e}")))
}

/// Trains for `epochs` on standardised `x`; predicts `eval`'s rows after each epoch in
/// `checkpoints`.
pub(crate) fn train_mlp(
    x: &Tensor,
    labels: &[i64],
    n_classes: usize,
    epochs: usize,
    cfg: &MlpConfig,
    eval: Option<(&Tensor, &[usize])>,
) -> Result<Trained> {
    let start = Instant::now();
    let dev = x.device().clone();
    let (n, d) = x.dims2().map_err(cerr("mlp input"))?;
    let mut dims = vec![d];
    dims.extend(&cfg.hidden);
    dims.push(n_classes);
    let net = Net::init(&dims, cfg.seed, &dev)?;
    let mut opt = Adam::new(
        net.vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    );
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
    let mut checkpoint_probs = Vec::new();
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
            opt.backward_step(&loss)?;
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
        if let Some((xe, checkpoints)) = eval
            && checkpoints.contains(&epoch)
        {
            checkpoint_probs.push(net.predict_proba(xe)?);
        }
    }
    Ok(Trained {
        net,
        epoch_loss,
        checkpoint_probs,
        steps,
        fit_seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
