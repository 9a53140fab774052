//! A checkpoint's sentence-transformers modules (`modules.json` next to the weights), read into
//! the [`SentenceHead`] that makes the model's own sentence embedding (`Tap::Sentence`) from
//! the last hidden state. What EmbeddingGemma has is supported: the transformer, mean pooling
//! over every token (`include_prompt: true`), Dense layers with or without bias and no
//! activation, L2 normalisation. Any other module or setting is an error naming the file and
//! the field, never ignored.

use std::path::Path;

use candle_core::{DType, Device};
use llmembed_core::Result;
use serde::Deserialize;

use super::decoder::{Linear, SentenceHead};
use super::errors::{candle_message, file_error};
use crate::embedder::{ComputeDtype, LoadSpec};

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default = "yes")]
    include_prompt: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    activation_function: String,
}

const IDENTITY: &str = "torch.nn.modules.linear.Identity";

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| llmembed_core::Error::io("read sentence-transformers config", path, e))?;
    serde_json::from_str(&raw).map_err(|e| file_error(path, format!("not the expected JSON: {e}")))
}

/// The head described by `modules.json` beside the weights, or `None` when there is none.
pub(crate) fn load_head(
    spec: &LoadSpec,
    hidden: usize,
    compute: ComputeDtype,
) -> Result<Option<SentenceHead>> {
    let dir = spec.weights.parent().unwrap_or(Path::new("."));
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok(None);
    }
    let modules: Vec<Module> = read_json(&modules_path)?;
    let bad = |what: String| file_error(&modules_path, what);
    let mut dense = Vec::new();
    let mut notes = Vec::new();
    let mut normalize = false;
    let mut width = hidden;
    for (i, m) in modules.iter().enumerate() {
        let kind = m.kind.rsplit('.').next().unwrap_or(&m.kind);
        let mdir = dir.join(&m.path);
        match (i, kind) {
            (0, "Transformer") => {}
            (0, _) => {
                return Err(bad(format!(
                    "module 0 is `{}`, not the Transformer",
                    m.kind
                )));
            }
            (1, "Pooling") => {
                let path = mdir.join("config.json");
                let p: PoolingConfig = read_json(&path)?;
                let others = [
                    p.pooling_mode_cls_token,
                    p.pooling_mode_max_tokens,
                    p.pooling_mode_mean_sqrt_len_tokens,
                    p.pooling_mode_weightedmean_tokens,
                    p.pooling_mode_lasttoken,
                ];
                if !p.pooling_mode_mean_tokens || others.iter().any(|&x| x) {
                    return Err(file_error(
                        &path,
                        "only `pooling_mode_mean_tokens` alone is supported",
                    ));
                }
                if !p.include_prompt {
                    return Err(file_error(
                        &path,
                        "field `include_prompt`: false is not supported",
                    ));
                }
                if p.word_embedding_dimension != hidden {
                    return Err(file_error(
                        &path,
                        format!(
                            "field `word_embedding_dimension`: {}, the model's hidden size is {hidden}",
                            p.word_embedding_dimension
                        ),
                    ));
                }
                notes.push("mean".to_string());
            }
            (1, _) => return Err(bad(format!("module 1 is `{}`, not Pooling", m.kind))),
            (_, "Dense") if !normalize => {
                let path = mdir.join("config.json");
                let c: DenseConfig = read_json(&path)?;
                if c.activation_function != IDENTITY {
                    return Err(file_error(
                        &path,
                        format!(
                            "field `activation_function`: `{}` is not supported ({IDENTITY})",
                            c.activation_function
                        ),
                    ));
                }
                if c.in_features != width {
                    return Err(file_error(
                        &path,
                        format!(
                            "field `in_features`: {}, the module before gives {width}",
                            c.in_features
                        ),
                    ));
                }
                let weights = mdir.join("model.safetensors");
                let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
                    .map_err(|e| file_error(&weights, candle_message(&e)))?;
                let get = |name: &str| {
                    tensors
                        .get(name)
                        .ok_or_else(|| file_error(&weights, format!("no tensor `{name}`")))
                        .and_then(|t| {
                            t.to_dtype(DType::F32)
                                .map_err(|e| file_error(&weights, candle_message(&e)))
                        })
                };
                let w = get("linear.weight")?;
                if w.dims() != [c.out_features, c.in_features] {
                    return Err(file_error(
                        &weights,
                        format!(
                            "`linear.weight` has shape {:?}, the config says [{}, {}]",
                            w.dims(),
                            c.out_features,
                            c.in_features
                        ),
                    ));
                }
                let b = c.bias.then(|| get("linear.bias")).transpose()?;
                dense.push(Linear::new(
                    vec![w],
                    b.as_ref().map(std::slice::from_ref),
                    compute,
                )?);
                notes.push(format!(
                    "dense({}x{}{})",
                    c.in_features,
                    c.out_features,
                    if c.bias { "+bias" } else { "" }
                ));
                width = c.out_features;
            }
            (_, "Normalize") if !normalize => {
                normalize = true;
                notes.push("normalize".into());
            }
            _ => {
                return Err(bad(format!(
                    "module {i} `{}` is not supported here (Transformer, Pooling, Dense..., \
                     Normalize)",
                    m.kind
                )));
            }
        }
    }
    if modules.len() < 2 {
        return Err(bad("needs the Transformer and a Pooling module".to_string()));
    }
    Ok(Some(SentenceHead {
        dense,
        normalize,
        note: notes.join(","),
    }))
}
