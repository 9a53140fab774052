//! Frozen models that turn token ids into pooled hidden states, one vector per requested tap.
//!
//! The decoders are written here, close to HF's modeling files, because candle-transformers'
//! models expose neither per-layer hidden states nor padding masks: one shared [`decoder`], read
//! from GGUF files (`llama`, `gemma3`) or from HF safetensors checkpoints (`hf`: llama, mistral,
//! qwen2, qwen3, phi). The BERT encoder lives in `crate::bert`.
//!
//! Tap numbering follows HF `output_hidden_states`: `Layer(0)` is the embedding output (for
//! Gemma after the `sqrt(hidden)` scaling), `Layer(k)` the output of block `k`. HF replaces the
//! LAST entry (`hidden_states[n]`) by the final-norm output for llama-family models, so to match
//! HF exactly: `Layer(k)` for `k < n` is the raw block-`k` output, and `Layer(n)` equals
//! `FinalNorm` (the final RMSNorm applied to block `n`'s output). Decoders do not support
//! `Pooler`.

use std::path::{Path, PathBuf};

use llmembed_core::{Error, Result};

pub(crate) mod decoder;
pub(crate) mod gemma3;
pub(crate) mod gguf;
pub(crate) mod hf;
pub(crate) mod llama;
pub(crate) mod tokenizer;

/// Which hidden state to pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tap {
    /// `Layer(0)` = embedding output, `Layer(k)` = output of block `k` (HF numbering; see module
    /// docs for how `Layer(n)` relates to `FinalNorm`).
    Layer(usize),
    /// The final norm applied to the last block's output.
    FinalNorm,
    /// The encoder's pooler output (BERT only).
    Pooler,
}

/// How a sequence of hidden states becomes one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over real (non-pad) tokens, including special tokens the tokenizer adds.
    Mean,
    /// The last real token.
    Last,
    /// The first token.
    First,
    /// The model's pooler (BERT only).
    Pooler,
}

/// Precision of the activations and matmuls (weights are dequantized from the file to this).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    F32,
    Bf16,
}

/// Where a model's files are.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// A `.gguf` file (decoders) or a `.safetensors` file (BERT, with `config`).
    pub weights: PathBuf,
    pub config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub compute: ComputeDtype,
}

impl LoadSpec {
    /// `config`, else `config.json` next to the weights.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| self.sibling("config.json"))
    }

    /// `tokenizer`, else `tokenizer.json` next to the weights.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.tokenizer
            .clone()
            .unwrap_or_else(|| self.sibling("tokenizer.json"))
    }

    fn sibling(&self, name: &str) -> PathBuf {
        self.weights.parent().unwrap_or(Path::new(".")).join(name)
    }
}

pub trait Embedder: Send + Sync {
    /// Number of blocks `n`; taps `Layer(0..=n)` exist.
    fn num_layers(&self) -> usize;
    fn hidden_size(&self) -> usize;
    fn supports(&self, tap: Tap) -> bool;
    /// Ids exactly as the HF reference tokenizer makes them (default special tokens), truncated
    /// to `max_tokens`; the bool says whether it was truncated.
    fn tokenize(&self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, bool)>;
    /// Runs a batch of sequences of any lengths (packed row after row, no padding) and returns, per
    /// requested tap, a `batch x hidden` row-major `Vec<f32>` of pooled vectors.
    fn embed(&self, batch: &[&[u32]], taps: &[Tap], pooling: Pooling) -> Result<Vec<Vec<f32>>>;
    /// Architecture + the config values that affect outputs (goes into the cache fingerprint).
    fn describe(&self) -> String;
}

/// Picks the architecture from the file: GGUF `general.architecture` (`llama`, `gemma3`), or
/// the `model_type` of the config.json next to a `.safetensors` file (or shard index):
/// `bert` -> `crate::bert`, decoders -> `hf`. A file named `.gguf` must start with the GGUF magic.
pub fn load(spec: &LoadSpec) -> Result<Box<dyn Embedder>> {
    let magic = first_bytes(&spec.weights)?;
    let named_gguf = spec
        .weights
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if magic == *b"GGUF" {
        let file = gguf::GgufFile::open(&spec.weights)?;
        let arch = file.get_str("general.architecture")?.to_string();
        match arch.as_str() {
            "llama" => Ok(Box::new(llama::load(file, spec)?)),
            "gemma3" => Ok(Box::new(gemma3::load(file, spec)?)),
            other => Err(Error::param(
                "model",
                format!(
                    "{}: GGUF architecture `{other}` is not supported (supported: llama, gemma3)",
                    spec.weights.display()
                ),
            )),
        }
    } else if named_gguf {
        Err(file_error(
            &spec.weights,
            format!(
                "not a GGUF file ({}, GGUF files start with `GGUF`)",
                first_bytes_note(&magic)
            ),
        ))
    } else if !is_safetensors_name(&spec.weights) && !spec.config_path().is_file() {
        // Neither kind by name or content: say so rather than "config.json: no such file".
        Err(file_error(
            &spec.weights,
            format!(
                "not a GGUF file ({}), nor a safetensors checkpoint (no {} next to it)",
                first_bytes_note(&magic),
                spec.config_path().display()
            ),
        ))
    } else {
        load_safetensors(spec)
    }
}

/// `starts with bytes 3c 21 44 4f`, or what there is of a shorter file.
fn first_bytes_note(magic: &[u8]) -> String {
    match magic.len() {
        0 => "the file is empty".to_string(),
        n if n < 4 => format!("the file has only {n} bytes: {}", hex_bytes(magic)),
        _ => format!("starts with bytes {}", hex_bytes(magic)),
    }
}

fn is_safetensors_name(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")
}

fn load_safetensors(spec: &LoadSpec) -> Result<Box<dyn Embedder>> {
    let path = spec.config_path();
    let raw =
        std::fs::read_to_string(&path).map_err(|e| Error::io("read model config", &path, e))?;
    let config: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| file_error(&path, format!("not JSON: {e}")))?;
    let model_type = config
        .get("model_type")
        .ok_or_else(|| file_error(&path, "field `model_type` is missing"))?
        .as_str()
        .ok_or_else(|| file_error(&path, "field `model_type` is not a string"))?;
    if let Some(arch) = hf::MODEL_TYPES.iter().find(|t| **t == model_type) {
        Ok(Box::new(hf::load(spec, arch, &raw)?))
    } else if model_type == "bert" {
        crate::bert::load(spec, &raw)
    } else {
        Err(file_error(
            &path,
            format!(
                "field `model_type`: `{model_type}` is not supported (bert, {})",
                hf::MODEL_TYPES.join(", ")
            ),
        ))
    }
}

/// The first (up to) 4 bytes of the file.
fn first_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io("open model", path, e))?;
    let mut magic = Vec::with_capacity(4);
    f.take(4)
        .read_to_end(&mut magic)
        .map_err(|e| Error::io("read model", path, e))?;
    Ok(magic)
}

pub(crate) fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A model file that is there but wrong: `load model: <path>: <what>`, one line.
pub(crate) fn file_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::compute("load model", format!("{}: {what}", path.display()))
}

/// A candle error as one line, without the backtrace candle appends to its `Display` when
/// `RUST_BACKTRACE` is set (`Error::WithBacktrace`, added by `bail!` and `bt()`) and with its
/// context and path on the same line.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string().lines().collect::<Vec<_>>().join("; "),
    }
}

/// The innermost candle error under backtraces, contexts and paths.
pub(crate) fn candle_root(e: &candle_core::Error) -> &candle_core::Error {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            candle_root(inner)
        }
        other => other,
    }
}

/// Checks taps against a model and returns the deepest block that must run.
pub(crate) fn check_taps(
    taps: &[Tap],
    pooling: Pooling,
    num_layers: usize,
    arch: &str,
) -> Result<usize> {
    if taps.is_empty() {
        return Err(Error::param("taps", "no taps requested"));
    }
    if pooling == Pooling::Pooler {
        return Err(Error::param(
            "pooling",
            format!("{arch} has no pooler; use mean, last or first"),
        ));
    }
    let mut deepest = 0;
    for t in taps {
        match *t {
            Tap::Layer(k) if k <= num_layers => deepest = deepest.max(k),
            Tap::Layer(k) => {
                return Err(Error::param(
                    "layers",
                    format!(
                        "{arch} has {num_layers} blocks; layer {k} does not exist (0..={num_layers})"
                    ),
                ));
            }
            Tap::FinalNorm => deepest = num_layers,
            Tap::Pooler => {
                return Err(Error::param("taps", format!("{arch} has no pooler")));
            }
        }
    }
    Ok(deepest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_message_is_one_line_without_the_backtrace() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("tensor needs 10 bytes".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        // candle's own Display appends the backtrace on further lines.
        assert!(e.to_string().contains('\n'));
        assert_eq!(candle_message(&e), "tensor needs 10 bytes");
        let e = e.context("reading x");
        assert_eq!(candle_message(&e), "reading x: tensor needs 10 bytes");
        assert!(matches!(candle_root(&e), candle_core::Error::Msg(_)));
        let e = candle_core::Error::Msg("header too large".into()).with_path("/m/w.safetensors");
        assert_eq!(candle_message(&e), "/m/w.safetensors: header too large");
    }
}
