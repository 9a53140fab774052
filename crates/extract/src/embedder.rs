//! What every model gives the stage: the [`Embedder`] contract, the taps and pooling it is
//! asked for, the compute dtype and where its files are ([`LoadSpec`]). Shared by the decoders
//! and the BERT encoder; imports no model.

use std::path::{Path, PathBuf};

use llmembed_core::{Error, Result};

/// Which hidden state to pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tap {
    /// `Layer(0)` = embedding output, `Layer(k)` = output of block `k` (HF numbering; see module
    /// docs for how `Layer(n)` relates to `FinalNorm`).
    Layer(usize),
    /// The final norm applied to the last block's output.
    FinalNorm,
    /// The encoder's pooler output (BERT, MPNet).
    Pooler,
    /// The model's own sentence embedding, as its sentence-transformers modules make it from the
    /// last hidden state (EmbeddingGemma: mean pooling, two Dense layers, L2 normalisation);
    /// independent of the `pooling` asked for the other taps.
    Sentence,
}

/// How a sequence of hidden states becomes one vector.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over real (non-pad) tokens, including special tokens the tokenizer adds.
    Mean,
    /// The last real token.
    Last,
    /// The first token.
    First,
    /// The model's pooler (BERT, MPNet).
    Pooler,
}

/// Precision of the activations and matmuls (weights are dequantized from the file to this).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    F32,
    Bf16,
    /// Decoders only: int8 weights (per output column, at load) times int8 activations (per
    /// row, at each product), int32 sums; everything outside the products stays f32 (see
    /// `llmembed_kernels::PackedI8`).
    Int8,
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
            Tap::FinalNorm | Tap::Sentence => deepest = num_layers,
            Tap::Pooler => {
                return Err(Error::param("taps", format!("{arch} has no pooler")));
            }
        }
    }
    Ok(deepest)
}
