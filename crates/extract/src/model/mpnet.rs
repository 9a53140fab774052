//! The MPNet encoder (sentence-transformers' all-mpnet-base-v2) from `model.safetensors` +
//! `config.json` + `tokenizer.json`, after HF `modeling_mpnet.py`. Its blocks are BERT's
//! (the shared post-LN encoder, `encoder.rs`); what is MPNet's own is here:
//! - embeddings `LN(word(ids) + position(p))` with RoBERTa's positions: `p` counts the non-pad
//!   tokens from `pad_token_id + 1` on, a pad id gets `pad_token_id` (no token types);
//! - one relative position bias shared by every block (`encoder.relative_attention_bias`,
//!   heads values per bucket of `key - query`, T5's bidirectional buckets), added to the scores
//!   before the padding mask.
//!
//! The checkpoint's own sentence embedding (`1_Pooling`: mean; `2_Normalize`) is the last
//! layer's tap with `pooling: mean`, L2-normalised.

use llmembed_core::Result;
use llmembed_kernels::attention::RelativeBias;
use serde::Deserialize;

use super::encoder::{
    Act, AttentionNames, Dims, Encoder, Front, LayerNorm, Parts, Table, Weights, engine, load_stack,
};
use super::errors::file_error;
use super::tokenizer::read_tokenizer_json;
use crate::embedder::{Embedder, LoadSpec};

/// The buckets HF's `MPNetEncoder.compute_position_bias` uses, whatever the config says.
const BUCKETS: usize = 32;
/// Distances from which every distance shares one bucket per direction.
const MAX_DISTANCE: usize = 128;

#[derive(Debug, Clone, Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_pad")]
    pad_token_id: u32,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: usize,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_pad() -> u32 {
    1
}

fn default_buckets() -> usize {
    BUCKETS
}

/// The bucket of a relative position `key - query`, as HF's
/// `MPNetEncoder.relative_position_bucket` computes it (the logarithm in f32, as torch does on
/// a float tensor): half the buckets for keys before or at the query, half for keys after;
/// distances below 8 exact, then logarithmic up to `MAX_DISTANCE`, then the last bucket.
pub(crate) fn relative_position_bucket(relative: i64) -> usize {
    let half = (BUCKETS / 2) as i64;
    let n = -relative;
    let side = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        return (side + n) as usize;
    }
    let scale = (MAX_DISTANCE as f64 / max_exact as f64).ln() as f32;
    let log = (n as f32 / max_exact as f32).ln() / scale * (half - max_exact) as f32;
    let large = (max_exact + log as i64).min(half - 1);
    (side + large) as usize
}

struct Embeddings {
    word: Table,
    position: Table,
    norm: LayerNorm,
    pad: u32,
    /// `encoder.relative_attention_bias` looked up for every distance a sequence can have.
    bias: RelativeBias,
}

impl Front for Embeddings {
    fn forward(&self, batch: &[&[u32]]) -> Vec<f32> {
        let h = self.word.width();
        let mut x = Vec::with_capacity(batch.iter().map(|s| s.len()).sum::<usize>() * h);
        for seq in batch {
            // HF `create_position_ids_from_input_ids`: cumsum(id != pad) * (id != pad) + pad.
            let mut seen = 0;
            for &id in seq.iter() {
                let position = if id == self.pad {
                    self.pad
                } else {
                    seen += 1;
                    self.pad + seen
                };
                let word = self.word.row(id as usize);
                x.extend(
                    word.iter()
                        .zip(self.position.row(position as usize))
                        .map(|(w, p)| w + p),
                );
            }
        }
        self.norm.forward(&x)
    }

    fn attention_bias(&self) -> Option<&RelativeBias> {
        Some(&self.bias)
    }
}

/// The bias of every head for every distance `key - query` of sequences up to `max_len`
/// tokens, from the per-bucket table `buckets` (buckets, heads): the [`RelativeBias`] layout.
fn relative_bias(buckets: &Table, heads: usize, max_len: usize) -> RelativeBias {
    let distances = 2 * max_len - 1;
    let mut table = vec![0f32; heads * distances];
    for (i, d) in (-(max_len as i64 - 1)..max_len as i64).enumerate() {
        let row = buckets.row(relative_position_bucket(d));
        for (h, &v) in row.iter().enumerate() {
            table[h * distances + i] = v;
        }
    }
    RelativeBias { table, max_len }
}

const ATTENTION: AttentionNames = AttentionNames {
    query: "attn.q",
    key: "attn.k",
    value: "attn.v",
    out: "attn.o",
    norm: "LayerNorm",
};

/// Loads an MPNet checkpoint: `spec.weights` is the `.safetensors` file, `config` the text of
/// its `config.json` (`spec.config_path()`), `spec.tokenizer` defaults to `tokenizer.json` next
/// to it.
pub fn load(spec: &LoadSpec, config: &str) -> Result<Box<dyn Embedder>> {
    let config_path = spec.config_path();
    // From the text, so that a bad value's error says where it is (line and column).
    let config: Config = serde_json::from_str(config)
        .map_err(|e| file_error(&config_path, format!("not an MPNet config: {e}")))?;
    let bad =
        |field: &str, msg: String| file_error(&config_path, format!("field `{field}`: {msg}"));
    let Some(act) = Act::from_name(&config.hidden_act) else {
        return Err(bad(
            "hidden_act",
            format!("`{}` is not supported ({})", config.hidden_act, Act::NAMES),
        ));
    };
    let h = config.hidden_size;
    let heads = config.num_attention_heads;
    if heads == 0 || !h.is_multiple_of(heads) {
        return Err(bad(
            "num_attention_heads",
            format!("{heads} does not divide hidden_size {h}"),
        ));
    }
    if config.relative_attention_num_buckets < BUCKETS {
        return Err(bad(
            "relative_attention_num_buckets",
            format!(
                "{} is fewer than the {BUCKETS} buckets MPNet's attention uses",
                config.relative_attention_num_buckets
            ),
        ));
    }
    // Positions run from pad + 1 to pad + L.
    let first_position = config.pad_token_id as usize + 1;
    if config.max_position_embeddings < first_position + 2 {
        return Err(bad(
            "max_position_embeddings",
            format!(
                "{} leaves no room for two tokens after the pad position {}",
                config.max_position_embeddings, config.pad_token_id
            ),
        ));
    }
    // The small file first, so that a bad one is named before the weights are read.
    let tokenizer = read_tokenizer_json(&spec.tokenizer_path())?;
    let vb = Weights::read(
        spec,
        "load mpnet weights",
        "mpnet",
        "embeddings.word_embeddings.weight",
    )?;
    let eps = config.layer_norm_eps;
    let e = vb.pp("embeddings");
    let max_len = config.max_position_embeddings - first_position;
    let front = Embeddings {
        word: e.embedding(config.vocab_size, h, "word_embeddings")?,
        position: e.embedding(config.max_position_embeddings, h, "position_embeddings")?,
        norm: e.layer_norm(h, eps, "LayerNorm")?,
        pad: config.pad_token_id,
        bias: relative_bias(
            &vb.pp("encoder").embedding(
                config.relative_attention_num_buckets,
                heads,
                "relative_attention_bias",
            )?,
            heads,
            max_len,
        ),
    };
    let dims = Dims {
        hidden: h,
        intermediate: config.intermediate_size,
        eps,
    };
    let (blocks, pooler) = load_stack(&vb, &dims, config.num_hidden_layers, &ATTENTION)?;
    let c = &config;
    let description = format!(
        "mpnet(hidden={}, blocks={}, heads={}, intermediate={}, vocab={}, max_pos={}, pad={}, buckets={BUCKETS}/{MAX_DISTANCE}, eps={:e}, act={}, pooler={}, {})",
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.intermediate_size,
        c.vocab_size,
        c.max_position_embeddings,
        c.pad_token_id,
        c.layer_norm_eps,
        c.hidden_act,
        pooler.is_some(),
        engine(&blocks, spec.compute),
    );
    let parts = Parts {
        name: "mpnet",
        forward_op: "mpnet forward",
        special_tokens: "MPNet (<s> and </s>)",
        front: Box::new(front),
        blocks,
        act,
        pooler,
        hidden: h,
        heads,
        vocab: config.vocab_size,
        max_len,
        description,
    };
    Ok(Box::new(Encoder::new(parts, tokenizer)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every distance of the committed fixture (-600..=600, past the 512 positions) falls in the
    /// bucket transformers' own `relative_position_bucket` gives it, the logarithm's boundaries
    /// included.
    #[test]
    fn buckets_match_transformers() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mpnet_base_reference.json"
        );
        let fx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let [lo, hi] = [0, 1].map(|i| fx["bucket_distances"][i].as_i64().unwrap());
        let want: Vec<u64> = fx["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .collect();
        assert_eq!(want.len() as i64, hi - lo + 1);
        for (d, &w) in (lo..=hi).zip(&want) {
            assert_eq!(relative_position_bucket(d) as u64, w, "distance {d}");
        }
        // The fixture reaches the last bucket of each side.
        assert!(want.contains(&15) && want.contains(&31));
    }
}
