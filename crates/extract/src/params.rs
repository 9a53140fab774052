//! The `extract` stage's params and their defaults.

use llmembed_core::{Layers, Precision};
use serde::{Deserialize, Serialize};

use crate::embedder::{ComputeDtype, MeanOver, Pooling};
use crate::source::ModelParam;

/// Params of the `extract` stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractParams {
    /// A preset name (`smollm2-135m`, `gemma3-270m`, `minilm-l6`, `embeddinggemma-300m`, ...) or a spec map
    /// (`{source: pypi|hub|local, ...}`).
    pub model: ModelParam,
    #[serde(default = "default_layers")]
    pub layers: Layers,
    /// Add a `final_norm` column (decoders: the final norm applied to the last block).
    #[serde(default = "default_false")]
    pub final_norm: bool,
    /// Add a `pooler` column (BERT checkpoints with pooler weights).
    #[serde(default = "default_false")]
    pub pooler: bool,
    /// Add a `sentence` column: the model's own sentence embedding, as its sentence-transformers
    /// modules make it (EmbeddingGemma: mean pooling, Dense 768->3072->768, L2 normalisation),
    /// whatever `pooling` says for the layers. Left out of the params' canonical form when false,
    /// so that the keys of pipelines without it stay what they were.
    #[serde(default = "default_false", skip_serializing_if = "std::ops::Not::not")]
    pub sentence: bool,
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    /// A template the text is put into before it is tokenized, holding `{text}` exactly once
    /// (PromptEOL: `'This news article: "{text}" means in one word:"'` with `pooling: last`).
    /// The ids are the tokenizer's own for the filled string; `max_tokens` cuts the text, never
    /// the template (see `prompt.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// With a prompt and `pooling: mean`: which tokens the mean averages, `text` (the default:
    /// the tokens carrying the text's bytes, a token straddling the boundary included; the
    /// template's tokens and BOS left out) or `sequence` (every token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_over: Option<MeanOver>,
    /// Tokens per text, special tokens included; longer texts are truncated (and counted).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Token budget of a forward batch, counted as texts x the longest text's tokens (texts are
    /// sorted by length within a shard first; rows are packed, nothing is padded).
    /// Each worker thread runs its own batch, so one batch's activations stay small; 512 was
    /// faster than 256 or 1024 on SmolLM2 in both compute modes (`cargo xtask bench extract`).
    /// Tokens that every text of a shard begins with (a prompt's template) count once where the
    /// model runs them once for the batch (causal decoders, README "Shared leading tokens"), so
    /// a decoder's batch holds as many prompted texts as bare ones.
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
    /// Precision of the matrix products: `f32`, `bf16` (bf16 inputs, f32 sums) or `int8` (int8
    /// weights and activations, int32 sums); activations are f32 between the products in every
    /// mode.
    #[serde(default = "default_compute")]
    pub compute: ComputeDtype,
    /// Storage precision of the output vectors.
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// Texts per store shard (the unit of resumption).
    #[serde(default = "default_shard_rows")]
    pub shard_rows: usize,
}

fn default_layers() -> Layers {
    Layers::All
}
fn default_false() -> bool {
    false
}
fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_max_tokens() -> usize {
    256
}
fn default_batch_tokens() -> usize {
    512
}
fn default_compute() -> ComputeDtype {
    ComputeDtype::F32
}
fn default_precision() -> Precision {
    Precision::F32
}
fn default_shard_rows() -> usize {
    256
}

impl ExtractParams {
    /// Params with every default and the given model.
    pub fn new(model: ModelParam) -> Self {
        ExtractParams {
            model,
            layers: default_layers(),
            final_norm: false,
            pooler: false,
            sentence: false,
            pooling: default_pooling(),
            prompt: None,
            mean_over: None,
            max_tokens: default_max_tokens(),
            batch_tokens: default_batch_tokens(),
            compute: default_compute(),
            precision: default_precision(),
            shard_rows: default_shard_rows(),
        }
    }
}

impl ExtractParams {
    /// The checked template, if any (errors name `prompt`).
    pub(crate) fn template(&self) -> llmembed_core::Result<Option<crate::prompt::Prompt>> {
        self.prompt
            .as_deref()
            .map(crate::prompt::Prompt::parse)
            .transpose()
    }

    /// The tokens the stage embeds for `text` with `model` under these params: the prompt filled
    /// in, cut to `max_tokens`, and the tokens mean pooling averages.
    pub fn tokens(
        &self,
        model: &dyn crate::Embedder,
        text: &str,
    ) -> llmembed_core::Result<crate::prompt::Tokens> {
        crate::prompt::tokenize(
            model,
            self.template()?.as_ref(),
            self.mean_over(),
            text,
            self.max_tokens,
        )
    }

    /// Which tokens mean pooling averages: `mean_over`, `text` by default with a prompt.
    pub(crate) fn mean_over(&self) -> MeanOver {
        self.mean_over.unwrap_or(match self.prompt {
            Some(_) => MeanOver::Text,
            None => MeanOver::Sequence,
        })
    }
}
