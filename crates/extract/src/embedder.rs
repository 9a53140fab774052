//! What every model gives the stage: the [`Embedder`] contract, the taps and pooling it is
//! asked for, the compute dtype and where its files are ([`LoadSpec`]). Shared by the decoders
//! and the BERT encoder; imports no model.

use std::ops::Range;
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
    /// Mean over real (non-pad) tokens, including special tokens the tokenizer adds (with a
    /// prompt, over the tokens `mean_over` says).
    Mean,
    /// The last real token.
    Last,
    /// The first token.
    First,
    /// The model's pooler (BERT, MPNet).
    Pooler,
}

/// Token ids and each token's byte range of the input (empty for tokens the tokenizer adds).
pub type IdsOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// With a prompt, which tokens of the prompted sequence mean pooling averages (see
/// `prompt.rs`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MeanOver {
    /// The tokens that carry bytes of the text: the template's own tokens and the tokenizer's
    /// special tokens (BOS) are left out; a token straddling the boundary counts as text.
    Text,
    /// Every token of the prompted sequence, special tokens included (the unprompted mean of
    /// the filled string).
    Sequence,
}

/// Precision of the activations and matmuls (weights are dequantized from the file to this).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    F32,
    Bf16,
    /// int8 weights (per output column, at load) times int8 activations (per row, at each
    /// product), int32 sums; everything outside the products stays f32 (see
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
    /// The ids of `text` (default special tokens, not truncated) and, per token, the byte range
    /// of `text` it comes from (empty for tokens the tokenizer adds, such as BOS): what prompts
    /// need to know which tokens come from the text. A model without offsets refuses prompts.
    fn encode_with_offsets(&self, text: &str) -> Result<IdsOffsets> {
        let _ = text;
        Err(Error::param(
            "prompt",
            format!(
                "{} gives no token offsets, so it takes no prompt",
                self.describe()
            ),
        ))
    }
    /// The most tokens a sequence may have (prompted texts are cut to it).
    fn max_sequence(&self) -> usize {
        usize::MAX
    }
    /// As `embed`, but mean pooling averages only the tokens `mean[i]` of sequence `i` (the
    /// text's tokens in a prompted sequence); other poolings ignore it. Spans that cover every
    /// token give `embed`'s bits.
    fn embed_spans(
        &self,
        batch: &[&[u32]],
        mean: &[Range<usize>],
        taps: &[Tap],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>> {
        let whole = batch.iter().zip(mean).all(|(s, m)| *m == (0..s.len()));
        if pooling == Pooling::Mean && !whole {
            return Err(Error::param(
                "mean_over",
                format!(
                    "{} averages whole sequences only; use `mean_over: sequence`",
                    self.describe()
                ),
            ));
        }
        self.embed(batch, taps, pooling)
    }
    /// Architecture + the config values that affect outputs (goes into the cache fingerprint).
    fn describe(&self) -> String;
    /// The lengths of the leading-token runs the model keeps for reuse (a causal decoder runs
    /// tokens that every text of a batch begins with, a prompt's template, once: `prefix.rs`
    /// in the models). They change no vector; the run log reports them.
    fn shared_prefixes(&self) -> Vec<usize> {
        Vec::new()
    }
    /// Whether the model runs the leading tokens that a batch's texts share once for the batch
    /// when it embeds `taps` (causal decoders: `prefix.rs` in the models), so that the batcher
    /// counts them once in `batch_tokens`.
    fn shares_leading_tokens(&self, taps: &[Tap]) -> bool {
        let _ = taps;
        false
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
            Tap::FinalNorm | Tap::Sentence => deepest = num_layers,
            Tap::Pooler => {
                return Err(Error::param("taps", format!("{arch} has no pooler")));
            }
        }
    }
    Ok(deepest)
}

/// Checks that each sequence's mean span is a non-empty part of it.
pub(crate) fn check_spans(batch: &[&[u32]], mean: &[Range<usize>]) -> Result<()> {
    if batch.len() != mean.len() {
        return Err(Error::mismatch(
            "embed",
            format!("{} sequences, {} mean spans", batch.len(), mean.len()),
        ));
    }
    for (i, (s, m)) in batch.iter().zip(mean).enumerate() {
        if m.is_empty() || m.end > s.len() {
            return Err(Error::mismatch(
                "embed",
                format!(
                    "sequence {i}: mean span {m:?} is not a non-empty part of its {} tokens",
                    s.len()
                ),
            ));
        }
    }
    Ok(())
}
