//! A BERT encoder (all-MiniLM-L6-v2 and friends) from `model.safetensors` + `config.json` +
//! `tokenizer.json`, written after HF `modeling_bert.py` (and candle-transformers' `bert.rs`)
//! but returning the pooled hidden state of every requested layer instead of only the last.
//! The blocks, pooling and taps are the shared post-LN encoder's (`encoder.rs`); this file holds
//! BERT's config, its weight names and its embeddings (word + absolute position + token type).

use candle_core::{Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm};
use llmembed_core::Result;
use serde::Deserialize;

use super::encoder::{
    Act, AttentionNames, Dims, Encoder, Front, Parts, Weights, dtype, load_stack,
};
use super::errors::file_error;
use super::tokenizer::read_tokenizer_json;
use crate::embedder::{Embedder, LoadSpec};

#[derive(Debug, Clone, Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: u32,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}

fn default_eps() -> f64 {
    1e-12
}

/// `LN(word(ids) + token_type(0) + position(0..L))`.
struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
}

impl Front for Embeddings {
    fn forward(
        &self,
        ids: Vec<u32>,
        b: usize,
        l: usize,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let ids = Tensor::from_vec(ids, (b, l), dev)?;
        let types = ids.zeros_like()?;
        let positions = Tensor::arange(0u32, l as u32, dev)?;
        let x = self
            .word
            .forward(&ids)?
            .add(&self.token_type.forward(&types)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        self.norm.forward(&x)
    }
}

const ATTENTION: AttentionNames = AttentionNames {
    query: "self.query",
    key: "self.key",
    value: "self.value",
    out: "output.dense",
    norm: "output.LayerNorm",
};

/// Loads a BERT checkpoint: `spec.weights` is the `.safetensors` file, `config` the text of its
/// `config.json` (`spec.config_path()`), `spec.tokenizer` defaults to `tokenizer.json` next to it.
pub fn load(spec: &LoadSpec, config: &str) -> Result<Box<dyn Embedder>> {
    let config_path = spec.config_path();
    let tok_path = spec.tokenizer_path();
    // From the text, so that a bad value's error says where it is (line and column).
    let config: Config = serde_json::from_str(config)
        .map_err(|e| file_error(&config_path, format!("not a BERT config: {e}")))?;
    let bad =
        |field: &str, msg: String| file_error(&config_path, format!("field `{field}`: {msg}"));
    if let Some(t) = &config.position_embedding_type
        && t != "absolute"
    {
        return Err(bad(
            "position_embedding_type",
            format!("`{t}` is not supported (only absolute)"),
        ));
    }
    let Some(act) = Act::from_name(&config.hidden_act) else {
        return Err(bad(
            "hidden_act",
            format!("`{}` is not supported ({})", config.hidden_act, Act::NAMES),
        ));
    };
    if config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(bad(
            "num_attention_heads",
            format!(
                "{} does not divide hidden_size {}",
                config.num_attention_heads, config.hidden_size
            ),
        ));
    }
    // The small file first, so that a bad one is named before the weights are read.
    let tokenizer = read_tokenizer_json(&tok_path)?;
    let vb = Weights::read(
        spec,
        "load bert weights",
        "bert",
        "embeddings.word_embeddings.weight",
    )?;
    let h = config.hidden_size;
    let eps = config.layer_norm_eps;
    let e = vb.pp("embeddings");
    let front = Embeddings {
        word: e.embedding(config.vocab_size, h, "word_embeddings")?,
        position: e.embedding(config.max_position_embeddings, h, "position_embeddings")?,
        token_type: e.embedding(config.type_vocab_size, h, "token_type_embeddings")?,
        norm: e.layer_norm(h, eps, "LayerNorm")?,
    };
    let dims = Dims {
        hidden: h,
        heads: config.num_attention_heads,
        intermediate: config.intermediate_size,
        eps,
    };
    let (blocks, pooler) = load_stack(&vb, &dims, config.num_hidden_layers, &ATTENTION)?;
    let dtype = dtype(spec)?;
    let c = &config;
    let description = format!(
        "bert(hidden={}, blocks={}, heads={}, intermediate={}, vocab={}, max_pos={}, eps={:e}, act={}, pooler={}, compute={:?})",
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.intermediate_size,
        c.vocab_size,
        c.max_position_embeddings,
        c.layer_norm_eps,
        c.hidden_act,
        pooler.is_some(),
        dtype,
    );
    let parts = Parts {
        name: "bert",
        forward_op: "bert forward",
        special_tokens: "BERT ([CLS] and [SEP])",
        front: Box::new(front),
        blocks,
        act,
        pooler,
        hidden: h,
        max_len: config.max_position_embeddings,
        pad_id: config.pad_token_id,
        dtype,
        description,
    };
    Ok(Box::new(Encoder::new(parts, tokenizer)?))
}
