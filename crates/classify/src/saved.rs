//! What the classifiers save into their artifacts, and the appliers that load it back to classify
//! new rows without fitting (`predict`, `serve`).
//!
//! # Files
//!
//! * `model.safetensors`: the fitted tensors.
//!   - `logreg` and `layer_sweep` (the chosen layer's fit): `weight` `[K, d]` and `intercept`
//!     `[K]` over the `K` classes seen in training, `mean` and `scale` `[d]` (the standardiser
//!     fitted on the training rows), all **f64**: the stage computes its probabilities in f64
//!     from exactly these values, so an applier gives the same bits.
//!   - `mlp`: `layers.<i>.weight` `[out, in]` and `layers.<i>.bias` `[out]` (f32, what candle
//!     trained), `mean` and `scale` `[d]` (f64, as the stage standardises).
//! * `classifier.json`: what the tensors mean: the kind, the class names, the feature columns and
//!   width, the hyper-parameters chosen (`c`, `epochs`), the solver and its iterations, the
//!   stage the model was fitted on, the `producer` its predictions carry, and the formula.
//!   `ensemble` saves only this file (method and members: it fits nothing).
//!
//! In Python (`safetensors` + numpy), for `logreg`:
//!
//! ```text
//! t = safetensors.numpy.load_file("model.safetensors"); m = json.load(open("classifier.json"))
//! z = ((x - t["mean"]) / t["scale"]) @ t["weight"].T + t["intercept"]
//! p = np.zeros((len(x), len(m["classes"]))); p[:, m["class_index"]] = scipy.special.softmax(z, 1)
//! ```

use std::path::Path;

use candle_core::{Device, Tensor};
use llmembed_core::{
    Apply, EmbeddingTable, Error, Input, Predictions, Result, Rows, SavedTensors, Standardizer,
    TensorValues, load_json, save_json, save_typed_tensors,
};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::data::{Split, matrix, standardized_f32};
use crate::lbfgs::softmax_rows;
use crate::logreg_fit::LogRegFit;
use crate::mlp_net::{Net, tensor2};
use crate::prologue::predictions_of;

/// The fitted tensors.
pub(crate) const TENSORS_FILE: &str = "model.safetensors";
/// What they mean.
pub(crate) const META_FILE: &str = "classifier.json";

/// The rows a classifier was fitted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct FittedOn {
    /// The id of the input stage (its `train` split).
    pub stage: String,
    pub split: String,
    /// Labelled training rows (the ones fitted on).
    pub rows: usize,
    /// Training rows without a label, not fitted on.
    pub unlabelled_rows_dropped: usize,
}

/// `classifier.json` of `logreg` and `layer_sweep`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct LinearMeta {
    pub kind: String,
    pub classes: Vec<String>,
    /// The class (index into `classes`) of each row of `weight`: the classes seen in training. A
    /// class missing from training gets probability 0.
    pub class_index: Vec<usize>,
    /// The vector columns, concatenated in this order, and their total width `d`.
    pub columns: Vec<String>,
    pub input_dim: usize,
    /// `layer_sweep`: the layer chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// scikit-learn's `C` fitted with (chosen by CV when `select` was given).
    pub c: f64,
    pub solver: String,
    /// Iterations of the exact-objective L-BFGS (`None` when linfa alone converged).
    pub iterations: Option<u64>,
    /// linfa's iteration budget used (0 with `solver: lbfgs`).
    pub linfa_iterations_at_most: u64,
    pub converged: bool,
    pub fitted_on: FittedOn,
    /// The `producer` of the predictions this model makes.
    pub producer: String,
    pub formula: String,
    pub dtype: String,
    /// Fitted on sparse rows (`tfidf`), raw: `mean` is 0 and `scale` 1, and the applier takes
    /// sparse rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
}

const LINEAR_FORMULA: &str = "probs[:, class_index] = softmax(((x - mean) / scale) @ weight.T + \
                              intercept); pred = argmax(probs) (the first of equal values)";

/// A logistic regression as fitted: the standardiser and the linear head, in f64.
#[derive(Clone, Debug)]
pub(crate) struct LinearModel {
    pub columns: Vec<String>,
    pub classes: Vec<String>,
    pub standardizer: Standardizer,
    /// `d x K` (K: the classes seen in training).
    pub w: Array2<f64>,
    pub b: Array1<f64>,
    pub present: Vec<usize>,
}

impl LinearModel {
    pub fn new(
        columns: Vec<String>,
        classes: Vec<String>,
        standardizer: Standardizer,
        fit: &LogRegFit,
    ) -> Self {
        LinearModel {
            columns,
            classes,
            standardizer,
            w: fit.w.clone(),
            b: fit.b.clone(),
            present: fit.present.clone(),
        }
    }

    /// Class probabilities of `rows` (row-major over all classes, f32): the arithmetic of
    /// `LogRegFit::predict_proba` on the standardised rows, so that the stage's predictions and
    /// an applier's are the same bits.
    pub fn predict_proba(&self, rows: &Split) -> Result<Vec<f32>> {
        let x = matrix(rows, &self.standardizer)?;
        let mut p = x.dot(&self.w) + &self.b;
        softmax_rows(&mut p);
        let k = self.classes.len();
        let mut out = vec![0f32; x.nrows() * k];
        for (i, row) in p.rows().into_iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                out[i * k + self.present[j]] = v as f32;
            }
        }
        Ok(out)
    }

    pub fn predict(&self, rows: &Split, producer: &str) -> Result<Predictions> {
        Ok(predictions_of(
            rows,
            self.predict_proba(rows)?,
            producer.to_string(),
        ))
    }

    pub fn meta(&self, fit: &LogRegFit, c: f64, fitted_on: FittedOn) -> LinearMeta {
        LinearMeta {
            kind: String::new(),
            classes: self.classes.clone(),
            class_index: self.present.clone(),
            columns: self.columns.clone(),
            input_dim: self.w.nrows(),
            layer: None,
            c,
            solver: fit.solver().to_string(),
            iterations: fit.fallback_iterations,
            linfa_iterations_at_most: fit.linfa_iterations_at_most,
            converged: fit.converged,
            fitted_on,
            producer: String::new(),
            formula: LINEAR_FORMULA.to_string(),
            dtype: "f64".to_string(),
            sparse: false,
        }
    }

    /// Writes `model.safetensors` and `classifier.json` (`meta`) into `dir`.
    pub fn save(&self, dir: &Path, meta: &LinearMeta) -> Result<()> {
        let (d, k) = self.w.dim();
        // `[K, d]`, as scikit-learn's `coef_` and PyTorch's `Linear.weight`.
        let weight: Vec<f64> = self.w.t().iter().copied().collect();
        let intercept = self.b.to_vec();
        save_typed_tensors(
            &dir.join(TENSORS_FILE),
            &[
                ("weight", &[k, d], TensorValues::F64(&weight)),
                ("intercept", &[k], TensorValues::F64(&intercept)),
                ("mean", &[d], TensorValues::F64(&self.standardizer.mean)),
                ("scale", &[d], TensorValues::F64(&self.standardizer.scale)),
            ],
        )?;
        save_json(&dir.join(META_FILE), meta)
    }

    /// Loads what [`LinearModel::save`] wrote into `fitted`'s folder, checking it is `kind`'s.
    pub fn load(fitted: &Input, kind: &str) -> Result<(LinearModel, LinearMeta)> {
        let meta: LinearMeta = load_meta(fitted, kind)?;
        let tensors = SavedTensors::load(&fitted.path(TENSORS_FILE)?)?;
        let (d, k) = (meta.input_dim, meta.class_index.len());
        let weight = tensors.get_f64("weight", &[k, d])?;
        let w = Array2::from_shape_fn((d, k), |(i, j)| weight[j * d + i]);
        let b = Array1::from(tensors.get_f64("intercept", &[k])?.to_vec());
        let standardizer = Standardizer {
            mean: tensors.get_f64("mean", &[d])?.to_vec(),
            scale: tensors.get_f64("scale", &[d])?.to_vec(),
        };
        if let Some(&c) = meta.class_index.iter().find(|&&c| c >= meta.classes.len()) {
            return Err(Error::mismatch(
                "load classifier",
                format!(
                    "{}: class_index {c} outside the {} classes",
                    fitted.dir.join(META_FILE).display(),
                    meta.classes.len()
                ),
            ));
        }
        let model = LinearModel {
            columns: meta.columns.clone(),
            classes: meta.classes.clone(),
            standardizer,
            w,
            b,
            present: meta.class_index.clone(),
        };
        Ok((model, meta))
    }
}

/// Reads `classifier.json` from `fitted`'s folder; an artifact made before classifiers saved
/// themselves (or by another kind) is refused with what to do.
pub(crate) fn load_meta<T: for<'de> Deserialize<'de>>(fitted: &Input, kind: &str) -> Result<T> {
    let path = fitted.dir.join(META_FILE);
    if !path.exists() {
        return Err(Error::mismatch(
            "load classifier",
            format!(
                "stage `{}` ({kind}): {} is missing: the artifact was made before classifiers \
                 saved their models; run the pipeline again to remake it",
                fitted.stage_id,
                path.display()
            ),
        ));
    }
    let value: serde_json::Value = load_json(&path)?;
    let found = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if found != kind {
        return Err(Error::mismatch(
            "load classifier",
            format!("{}: a `{found}` model, expected `{kind}`", path.display()),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::mismatch("load classifier", format!("{}: {e}", path.display())))
}

/// The one embedding table an applier of a one-input classifier is given.
pub(crate) fn one_embedding<'a>(inputs: &'a [Rows], kind: &str) -> Result<&'a EmbeddingTable> {
    match inputs {
        [Rows::Embedding(t)] => Ok(t),
        [other] => Err(Error::mismatch(
            "apply classifier",
            format!("{kind} takes embedding rows, got {} rows", other.kind()),
        )),
        _ => Err(Error::mismatch(
            "apply classifier",
            format!("{kind} takes 1 input, got {}", inputs.len()),
        )),
    }
}

/// An applier's rows: the one embedding input's `columns`, which must have the width the model
/// was fitted on.
fn rows_to_classify(
    inputs: &[Rows],
    kind: &str,
    columns: &[String],
    classes: &[String],
    input_dim: usize,
) -> Result<Split> {
    let table = one_embedding(inputs, kind)?;
    let rows = Split::from_columns("rows to classify", table, columns, classes)?;
    if rows.dim() != input_dim {
        return Err(Error::mismatch(
            "apply classifier",
            format!(
                "columns {columns:?} have width {}, the model was fitted on width {input_dim}",
                rows.dim()
            ),
        ));
    }
    Ok(rows)
}

/// `logreg` and `layer_sweep` loaded: embedding rows in, predictions out.
pub(crate) struct LinearApply {
    pub model: LinearModel,
    pub meta: LinearMeta,
}

impl Apply for LinearApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        let rows = rows_to_classify(
            inputs,
            &self.meta.kind,
            &self.model.columns,
            &self.model.classes,
            self.meta.input_dim,
        )?;
        Ok(Rows::Predictions(
            self.model.predict(&rows, &self.meta.producer)?,
        ))
    }
}

/// `classifier.json` of `mlp`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct MlpMeta {
    pub kind: String,
    pub classes: Vec<String>,
    pub columns: Vec<String>,
    pub input_dim: usize,
    /// Widths from input to classes: `layers.<i>` maps `layers[i]` to `layers[i + 1]`.
    pub layers: Vec<usize>,
    pub activation: String,
    pub epochs: usize,
    pub seed: u64,
    pub fitted_on: FittedOn,
    pub producer: String,
    pub formula: String,
}

pub(crate) const MLP_FORMULA: &str = "h = (x - mean) / scale (in f64, then f32); for each layer \
                                      i: h = h @ layers.i.weight.T + layers.i.bias, then relu \
                                      except after the last; probs = softmax(h)";

/// The MLP as trained: the standardiser and the network.
pub(crate) struct MlpModel {
    pub columns: Vec<String>,
    pub classes: Vec<String>,
    pub standardizer: Standardizer,
    pub net: Net,
}

impl MlpModel {
    pub fn predict(&self, rows: &Split, producer: &str) -> Result<Predictions> {
        let x = tensor2(
            standardized_f32(rows, &self.standardizer),
            rows.rows(),
            rows.dim(),
            &Device::Cpu,
        )?;
        Ok(predictions_of(
            rows,
            self.net.predict_proba(&x)?,
            producer.to_string(),
        ))
    }

    pub fn save(&self, dir: &Path, meta: &MlpMeta) -> Result<()> {
        let layers = self.net.weights()?;
        let names: Vec<(String, String)> = (0..layers.len())
            .map(|i| (format!("layers.{i}.weight"), format!("layers.{i}.bias")))
            .collect();
        let shapes: Vec<([usize; 2], [usize; 1])> = layers
            .iter()
            .map(|(w, b)| ([b.len(), w.len() / b.len()], [b.len()]))
            .collect();
        let d = self.standardizer.mean.len();
        let mut tensors: Vec<(&str, &[usize], TensorValues<'_>)> = Vec::new();
        for (((wn, bn), (ws, bs)), (w, b)) in names.iter().zip(&shapes).zip(&layers) {
            tensors.push((wn, ws, TensorValues::F32(w)));
            tensors.push((bn, bs, TensorValues::F32(b)));
        }
        let dims = [d];
        tensors.push(("mean", &dims, TensorValues::F64(&self.standardizer.mean)));
        tensors.push(("scale", &dims, TensorValues::F64(&self.standardizer.scale)));
        save_typed_tensors(&dir.join(TENSORS_FILE), &tensors)?;
        save_json(&dir.join(META_FILE), meta)
    }

    pub fn load(fitted: &Input) -> Result<(MlpModel, MlpMeta)> {
        let meta: MlpMeta = load_meta(fitted, "mlp")?;
        let tensors = SavedTensors::load(&fitted.path(TENSORS_FILE)?)?;
        let d = meta.input_dim;
        if meta.layers.len() < 2 || meta.layers[0] != d {
            return Err(Error::mismatch(
                "load classifier",
                format!(
                    "{}: layers {:?} do not start at the input width {d}",
                    fitted.dir.join(META_FILE).display(),
                    meta.layers
                ),
            ));
        }
        let dev = Device::Cpu;
        let mut layers = Vec::new();
        for (i, pair) in meta.layers.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let w = tensors.get(&format!("layers.{i}.weight"), &[fan_out, fan_in])?;
            let b = tensors.get(&format!("layers.{i}.bias"), &[fan_out])?;
            let w = Tensor::from_slice(w, (fan_out, fan_in), &dev)
                .map_err(|e| Error::compute("load mlp", e))?;
            let b =
                Tensor::from_slice(b, fan_out, &dev).map_err(|e| Error::compute("load mlp", e))?;
            layers.push((w, b));
        }
        let standardizer = Standardizer {
            mean: tensors.get_f64("mean", &[d])?.to_vec(),
            scale: tensors.get_f64("scale", &[d])?.to_vec(),
        };
        let model = MlpModel {
            columns: meta.columns.clone(),
            classes: meta.classes.clone(),
            standardizer,
            net: Net::from_layers(layers)?,
        };
        Ok((model, meta))
    }
}

/// `mlp` loaded: embedding rows in, predictions out.
pub(crate) struct MlpApply {
    pub model: MlpModel,
    pub meta: MlpMeta,
}

impl Apply for MlpApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        let rows = rows_to_classify(
            inputs,
            "mlp",
            &self.model.columns,
            &self.model.classes,
            self.meta.input_dim,
        )?;
        Ok(Rows::Predictions(
            self.model.predict(&rows, &self.meta.producer)?,
        ))
    }
}
