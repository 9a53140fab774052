//! A BERT encoder (all-MiniLM-L6-v2 and friends) from `model.safetensors` + `config.json` +
//! `tokenizer.json`, written after HF `modeling_bert.py` (and candle-transformers' `bert.rs`)
//! but returning the pooled hidden state of every requested layer instead of only the last.
//! The blocks, pooling and taps are the shared post-LN encoder's (`encoder.rs`); this file holds
//! BERT's config, its weight names and its embeddings (word + absolute position + token type).

use llmembed_core::Result;
use serde::Deserialize;

use super::encoder::{
    Act, AttentionNames, Dims, Encoder, Front, LayerNorm, Parts, Table, Weights, engine, load_stack,
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
    word: Table,
    position: Table,
    token_type: Table,
    norm: LayerNorm,
}

impl Front for Embeddings {
    fn forward(&self, batch: &[&[u32]]) -> Vec<f32> {
        let h = self.word.width();
        let mut x = Vec::with_capacity(batch.iter().map(|s| s.len()).sum::<usize>() * h);
        let token_type = self.token_type.row(0);
        for seq in batch {
            for (p, &id) in seq.iter().enumerate() {
                // HF's order: (word + token type) + position.
                let rows = self.word.row(id as usize).iter().zip(token_type);
                x.extend(rows.zip(self.position.row(p)).map(|((w, t), p)| w + t + p));
            }
        }
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
        intermediate: config.intermediate_size,
        eps,
    };
    let (blocks, pooler) = load_stack(&vb, &dims, config.num_hidden_layers, &ATTENTION)?;
    let c = &config;
    let description = format!(
        "bert(hidden={}, blocks={}, heads={}, intermediate={}, vocab={}, max_pos={}, eps={:e}, act={}, pooler={}, {})",
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.intermediate_size,
        c.vocab_size,
        c.max_position_embeddings,
        c.layer_norm_eps,
        c.hidden_act,
        pooler.is_some(),
        engine(&blocks, spec.compute),
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
        heads: config.num_attention_heads,
        vocab: config.vocab_size,
        max_len: config.max_position_embeddings,
        description,
    };
    Ok(Box::new(Encoder::new(parts, tokenizer)?))
}
