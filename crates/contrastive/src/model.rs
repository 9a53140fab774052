//! What `contrastive` fits, as saved into its artifact and loaded back to apply to new rows:
//! `model.safetensors` (`head.<k>.weight` `(out, in)` and `head.<k>.bias` `(out)` of each linear
//! layer, PyTorch's layout; `standardizer.mean` and `standardizer.scale` of the input column)
//! and `model.json` (what they mean). The standardiser is applied in f32 from those f32 values,
//! so the saved tensors are exactly what the stage used.

use std::path::Path;

use serde::{Deserialize, Serialize};

use llmembed_core::{
    Error, Result, SavedTensors, Standardizer, load_json, save_json, save_tensors,
};

use crate::train::Head;
use crate::{Mode, Output, Params};

pub(crate) const TENSORS_FILE: &str = "model.safetensors";
pub(crate) const META_FILE: &str = "model.json";

/// `model.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub kind: String,
    /// The stage whose vectors the head was trained on, and its column.
    pub input: String,
    pub column: String,
    pub mode: Mode,
    pub output: Output,
    pub d_in: usize,
    pub d_out: usize,
    pub hidden: Option<usize>,
    /// Width of the output column `embedding`.
    pub width: usize,
    pub label_names: Vec<String>,
    /// Labelled train rows the standardiser and the head were fitted on.
    pub train_rows: usize,
    /// The epoch whose head was kept (0: the initial head).
    pub best_epoch: usize,
    /// The tensors of `model.safetensors`, in the order written.
    pub tensors: Vec<String>,
}

/// Writes `model.safetensors` and `model.json` into `dir`.
pub(crate) fn save(dir: &Path, meta: Meta, head: &Head, standardizer: &Standardizer) -> Result<()> {
    let layers = head.layers()?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (k, ((o, i), w, b)) in layers.into_iter().enumerate() {
        tensors.push((format!("head.{k}.weight"), vec![o, i], w));
        tensors.push((format!("head.{k}.bias"), vec![o], b));
    }
    // f32, as `apply_rows_f32` rounds them before using them.
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let d = standardizer.mean.len();
    tensors.push((
        "standardizer.mean".into(),
        vec![d],
        f32s(&standardizer.mean),
    ));
    tensors.push((
        "standardizer.scale".into(),
        vec![d],
        f32s(&standardizer.scale),
    ));
    let views: Vec<(&str, &[usize], &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice()))
        .collect();
    save_tensors(&dir.join(TENSORS_FILE), &views)?;
    let meta = Meta {
        tensors: tensors.into_iter().map(|(n, _, _)| n).collect(),
        ..meta
    };
    save_json(&dir.join(META_FILE), &meta)
}

/// What [`load`] reads back.
pub(crate) struct Loaded {
    pub meta: Meta,
    pub head: Head,
    pub standardizer: Standardizer,
}

/// Reads a contrastive artifact's model, checking it against the params given now.
pub(crate) fn load(dir: &Path, p: &Params) -> Result<Loaded> {
    let meta_path = dir.join(META_FILE);
    let meta: Meta = load_json(&meta_path)?;
    if meta.output != p.output || meta.hidden != p.hidden || meta.mode != p.mode {
        return Err(Error::mismatch(
            "load contrastive",
            format!(
                "{}: fitted with mode {:?}, output {:?}, hidden {:?}; the params now say {:?}, \
                 {:?}, {:?}",
                meta_path.display(),
                meta.mode,
                meta.output,
                meta.hidden,
                p.mode,
                p.output,
                p.hidden
            ),
        ));
    }
    let tensors = SavedTensors::load(&dir.join(TENSORS_FILE))?;
    let dims: Vec<(usize, usize)> = match meta.hidden {
        Some(h) => vec![(h, meta.d_in), (meta.d_out, h)],
        None => vec![(meta.d_out, meta.d_in)],
    };
    let mut layers = Vec::with_capacity(dims.len());
    for (k, (o, i)) in dims.into_iter().enumerate() {
        let w = tensors.get(&format!("head.{k}.weight"), &[o, i])?.to_vec();
        let b = tensors.get(&format!("head.{k}.bias"), &[o])?.to_vec();
        layers.push(((o, i), w, b));
    }
    let head = Head::from_layers(&layers, meta.output == Output::Residual)?;
    let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let standardizer = Standardizer {
        mean: f64s(tensors.get("standardizer.mean", &[meta.d_in])?),
        scale: f64s(tensors.get("standardizer.scale", &[meta.d_in])?),
    };
    Ok(Loaded {
        meta,
        head,
        standardizer,
    })
}
