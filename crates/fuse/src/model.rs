//! What `fuse` fits, as it saves it into its artifact and loads it back to apply to new rows:
//! `model.safetensors` (f32 tensors) and `model.json` (what the tensors mean).
//!
//! Tensors: `weights.<s>` (`method: weighted`, source `s`: one softmax weight per selected
//! column), `projection.<s>.<column>` (`method: cooccurrence`: the `(width of column, width)`
//! Gaussian projection of a source vector not already `width` wide), `standardizer.mean` and
//! `standardizer.scale` (`standardize: true`, one per output dimension; f64, the precision the
//! standardiser is fitted and applied in, so that applying them gives `run`'s bits).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use llmembed_core::saved::{TensorValues, save_typed_tensors};
use llmembed_core::{Error, Result, SavedTensors, Standardizer, load_json, save_json};

use crate::params::{CooccurrenceParams, FuseParams, Method, Normalize};
use crate::select::Resolved;

pub(crate) const TENSORS_FILE: &str = "model.safetensors";
pub(crate) const META_FILE: &str = "model.json";

/// What is fitted on the train split and applied to every split.
pub(crate) enum Fitted {
    None,
    /// Per source, one weight per selected column.
    Weighted(Vec<Vec<f32>>),
    /// Per source vector (flattened over sources): `None` = already `width` wide.
    Projections(Vec<Option<Tensor>>),
}

/// `model.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub kind: String,
    pub method: Method,
    pub normalize: Normalize,
    pub standardize: bool,
    /// `method: cooccurrence` only.
    pub cooccurrence: Option<CooccurrenceParams>,
    /// One per input, in input order: the stage it was fitted on and the columns taken from it.
    pub sources: Vec<Source>,
    /// Width of the output column `embedding`.
    pub width: usize,
    pub label_names: Vec<String>,
    /// Labelled train rows the fit saw.
    pub train_rows: usize,
    /// The tensors of `model.safetensors`, in the order written.
    pub tensors: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Source {
    pub input: String,
    pub columns: Vec<Column>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Column {
    pub name: String,
    pub width: usize,
}

fn projection_name(source: usize, column: &str) -> String {
    format!("projection.{source}.{column}")
}

/// The source vectors, flattened over sources, as (source index, column name, width).
fn source_vectors(resolved: &[Resolved]) -> Vec<(usize, &str, usize)> {
    resolved
        .iter()
        .enumerate()
        .flat_map(|(s, r)| r.columns.iter().map(move |(n, d)| (s, n.as_str(), *d)))
        .collect()
}

/// What [`save`] is given.
pub(crate) struct ToSave<'a> {
    pub params: &'a FuseParams,
    pub resolved: &'a [Resolved],
    pub fitted: &'a Fitted,
    pub standardizer: Option<&'a Standardizer>,
    pub width: usize,
    pub label_names: &'a [String],
    pub train_rows: usize,
}

/// Writes `model.safetensors` and `model.json` into `dir`.
pub(crate) fn save(dir: &std::path::Path, m: &ToSave) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut exact: Vec<(String, Vec<usize>, &[f64])> = Vec::new();
    match m.fitted {
        Fitted::None => {}
        Fitted::Weighted(weights) => {
            for (s, w) in weights.iter().enumerate() {
                tensors.push((format!("weights.{s}"), vec![w.len()], w.clone()));
            }
        }
        Fitted::Projections(projections) => {
            for ((s, column, dim), p) in source_vectors(m.resolved).into_iter().zip(projections) {
                if let Some(p) = p {
                    let values = p
                        .flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(|e| Error::compute("save cooccurrence projection", e))?;
                    let width = values.len() / dim;
                    tensors.push((projection_name(s, column), vec![dim, width], values));
                }
            }
        }
    }
    if let Some(st) = m.standardizer {
        exact.push(("standardizer.mean".into(), vec![st.mean.len()], &st.mean));
        exact.push(("standardizer.scale".into(), vec![st.scale.len()], &st.scale));
    }
    let views: Vec<(&str, &[usize], TensorValues)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.as_slice(), TensorValues::F32(v)))
        .chain(
            exact
                .iter()
                .map(|(n, s, v)| (n.as_str(), s.as_slice(), TensorValues::F64(v))),
        )
        .collect();
    save_typed_tensors(&dir.join(TENSORS_FILE), &views)?;
    let p = m.params;
    let meta = Meta {
        kind: "fuse".into(),
        method: p.method,
        normalize: p.normalize,
        standardize: p.standardize,
        cooccurrence: (p.method == Method::Cooccurrence).then(|| p.cooccurrence.clone()),
        sources: m
            .resolved
            .iter()
            .map(|r| Source {
                input: r.stage_id.clone(),
                columns: r
                    .columns
                    .iter()
                    .map(|(name, width)| Column {
                        name: name.clone(),
                        width: *width,
                    })
                    .collect(),
            })
            .collect(),
        width: m.width,
        label_names: m.label_names.to_vec(),
        train_rows: m.train_rows,
        tensors: views.iter().map(|(n, _, _)| n.to_string()).collect(),
    };
    save_json(&dir.join(META_FILE), &meta)
}

/// What [`load`] reads back.
pub(crate) struct Loaded {
    pub meta: Meta,
    pub resolved: Vec<Resolved>,
    pub fitted: Fitted,
    pub standardizer: Option<Standardizer>,
}

/// Reads `model.json` and `model.safetensors` of a fuse artifact, checking them against the
/// params the pipeline gives the stage now.
pub(crate) fn load(dir: &std::path::Path, p: &FuseParams) -> Result<Loaded> {
    let meta_path = dir.join(META_FILE);
    let meta: Meta = load_json(&meta_path)?;
    let differs = |what: &str, saved: String, now: String| {
        Error::mismatch(
            "load fuse",
            format!(
                "{}: fitted with {what} {saved}, the params now say {now}",
                meta_path.display()
            ),
        )
    };
    if meta.method != p.method {
        return Err(differs(
            "method",
            format!("{:?}", meta.method),
            format!("{:?}", p.method),
        ));
    }
    if meta.normalize != p.normalize || meta.standardize != p.standardize {
        return Err(differs(
            "normalize/standardize",
            format!("{:?}/{}", meta.normalize, meta.standardize),
            format!("{:?}/{}", p.normalize, p.standardize),
        ));
    }
    if meta.cooccurrence.is_some() && meta.cooccurrence.as_ref() != Some(&p.cooccurrence) {
        return Err(differs(
            "cooccurrence",
            format!("{:?}", meta.cooccurrence),
            format!("{:?}", p.cooccurrence),
        ));
    }
    if meta.sources.len() != p.sources.len() {
        return Err(differs(
            "sources",
            meta.sources.len().to_string(),
            p.sources.len().to_string(),
        ));
    }
    let resolved: Vec<Resolved> = meta
        .sources
        .iter()
        .map(|s| Resolved {
            stage_id: s.input.clone(),
            columns: s
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.width))
                .collect(),
        })
        .collect();
    let tensors = SavedTensors::load(&dir.join(TENSORS_FILE))?;
    let fitted = match p.method {
        Method::Mean | Method::Max | Method::Concat => Fitted::None,
        Method::Weighted => Fitted::Weighted(
            resolved
                .iter()
                .enumerate()
                .map(|(s, r)| {
                    Ok(tensors
                        .get(&format!("weights.{s}"), &[r.columns.len()])?
                        .to_vec())
                })
                .collect::<Result<_>>()?,
        ),
        Method::Cooccurrence => {
            let width = p.cooccurrence.width;
            let mut projections = Vec::new();
            for (s, column, dim) in source_vectors(&resolved) {
                projections.push(if dim == width {
                    None
                } else {
                    let values = tensors.get(&projection_name(s, column), &[dim, width])?;
                    Some(
                        Tensor::from_slice(values, (dim, width), &Device::Cpu)
                            .map_err(|e| Error::compute("load cooccurrence projection", e))?,
                    )
                });
            }
            Fitted::Projections(projections)
        }
    };
    let standardizer = if p.standardize {
        Some(Standardizer {
            mean: tensors
                .get_f64("standardizer.mean", &[meta.width])?
                .to_vec(),
            scale: tensors
                .get_f64("standardizer.scale", &[meta.width])?
                .to_vec(),
        })
    } else {
        None
    };
    Ok(Loaded {
        meta,
        resolved,
        fitted,
        standardizer,
    })
}
