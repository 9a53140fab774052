//! A BERT encoder (all-MiniLM-L6-v2 and friends) from `model.safetensors` + `config.json` +
//! `tokenizer.json`, written after HF `modeling_bert.py` (and candle-transformers' `bert.rs`)
//! but returning the pooled hidden state of every requested layer instead of only the last.
//!
//! Taps: `Layer(0)` = embedding output (after the embedding LayerNorm), `Layer(k)` = output of
//! block `k`, `Pooler` = `tanh(dense(h_n[:, 0]))` when the checkpoint has pooler weights.
//! BERT is post-LN, so there is no separate final norm (`FinalNorm` is not supported).

use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use llmembed_core::{Error, Result};
use serde::Deserialize;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::errors::{candle_message, file_error};
use super::safetensors::check_safetensors;
use super::tokenizer::{added_tokens_empty, read_tokenizer_json};
use crate::embedder::{ComputeDtype, Embedder, IdsOffsets, LoadSpec, Pooling, Tap, check_spans};

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

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    out_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
}

struct Block {
    attn: SelfAttention,
    inter: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

struct Bert {
    config: Config,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    blocks: Vec<Block>,
    pooler: Option<Linear>,
    dtype: DType,
    device: Device,
    /// The tokenizer and the truncation length it is set to (changed on demand).
    tokenizer: Mutex<(usize, Tokenizer)>,
}

/// A weight that would not load: the file, the module and candle's reason on one line.
fn weight_error(path: &Path, name: &str, e: &candle_core::Error) -> Error {
    Error::compute(
        "load bert weights",
        format!("{}: {name}: {}", path.display(), candle_message(e)),
    )
}

fn linear(vb: &VarBuilder, path: &Path, d_in: usize, d_out: usize, name: &str) -> Result<Linear> {
    candle_nn::linear(d_in, d_out, vb.pp(name)).map_err(|e| weight_error(path, name, &e))
}

fn layer_norm(
    vb: &VarBuilder,
    path: &Path,
    size: usize,
    eps: f64,
    name: &str,
) -> Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb.pp(name)).map_err(|e| weight_error(path, name, &e))
}

fn embedding(vb: &VarBuilder, path: &Path, n: usize, dim: usize, name: &str) -> Result<Embedding> {
    candle_nn::embedding(n, dim, vb.pp(name)).map_err(|e| weight_error(path, name, &e))
}

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
    if !matches!(config.hidden_act.as_str(), "gelu" | "relu" | "gelu_new") {
        return Err(bad(
            "hidden_act",
            format!(
                "`{}` is not supported (gelu, gelu_new, relu)",
                config.hidden_act
            ),
        ));
    }
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
    // The small file first, so that a bad one is named before the weights are mapped.
    let mut tokenizer = read_tokenizer_json(&tok_path)?;
    check_safetensors(&spec.weights)?;
    let dtype = match spec.compute {
        ComputeDtype::F32 => DType::F32,
        ComputeDtype::Bf16 => DType::BF16,
    };
    let device = Device::Cpu;
    // Read, not mapped (mapping is `unsafe`, kept to the kernels crate): BERT checkpoints are
    // small, and the bytes are dropped once the layers hold their tensors.
    let bytes = std::fs::read(&spec.weights)
        .map_err(|e| Error::io("read safetensors", &spec.weights, e))?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, dtype, &device).map_err(|e| {
        Error::compute(
            "read safetensors",
            format!("{}: {}", spec.weights.display(), candle_message(&e)),
        )
    })?;
    let path = spec.weights.as_path();
    let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
        vb.pp("bert")
    } else {
        vb
    };
    let h = config.hidden_size;
    let e = vb.pp("embeddings");
    let word = embedding(&e, path, config.vocab_size, h, "word_embeddings")?;
    let position = embedding(
        &e,
        path,
        config.max_position_embeddings,
        h,
        "position_embeddings",
    )?;
    let token_type = embedding(&e, path, config.type_vocab_size, h, "token_type_embeddings")?;
    let emb_norm = layer_norm(&e, path, h, config.layer_norm_eps, "LayerNorm")?;
    let mut blocks = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let l = vb.pp(format!("encoder.layer.{i}"));
        let a = l.pp("attention");
        blocks.push(Block {
            attn: SelfAttention {
                query: linear(&a, path, h, h, "self.query")?,
                key: linear(&a, path, h, h, "self.key")?,
                value: linear(&a, path, h, h, "self.value")?,
                out: linear(&a, path, h, h, "output.dense")?,
                out_norm: layer_norm(&a, path, h, config.layer_norm_eps, "output.LayerNorm")?,
                heads: config.num_attention_heads,
                head_dim: h / config.num_attention_heads,
            },
            inter: linear(&l, path, h, config.intermediate_size, "intermediate.dense")?,
            output: linear(&l, path, config.intermediate_size, h, "output.dense")?,
            output_norm: layer_norm(&l, path, h, config.layer_norm_eps, "output.LayerNorm")?,
        });
    }
    let pooler = if vb.contains_tensor("pooler.dense.weight") {
        Some(linear(&vb, path, h, h, "pooler.dense")?)
    } else {
        None
    };
    // tokenizer.json of sentence-transformers checkpoints pads to a fixed 128; we pad ourselves.
    tokenizer.with_padding(None::<PaddingParams>);
    tokenizer
        .with_truncation(None)
        .map_err(|e| Error::compute("configure tokenizer", e))?;
    Ok(Box::new(Bert {
        config,
        word,
        position,
        token_type,
        emb_norm,
        blocks,
        pooler,
        dtype,
        device,
        tokenizer: Mutex::new((0, tokenizer)),
    }))
}

impl SelfAttention {
    /// `x`: (b, L, h); `mask`: (b, 1, 1, L) additive.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, h))?;
        let out = self.out.forward(&ctx)?;
        self.out_norm.forward(&(out + x)?)
    }
}

impl Block {
    fn forward(&self, x: &Tensor, mask: &Tensor, act: &str) -> candle_core::Result<Tensor> {
        let a = self.attn.forward(x, mask)?;
        let i = self.inter.forward(&a)?;
        let i = match act {
            "relu" => i.relu()?,
            "gelu_new" => i.gelu()?,
            _ => i.gelu_erf()?,
        };
        let o = self.output.forward(&i)?;
        self.output_norm.forward(&(o + a)?)
    }
}

impl Bert {
    /// Pools `h` (b, L, hidden) to (b, hidden) f32; mean averages the tokens `mean_f32` marks.
    fn pool(
        &self,
        h: &Tensor,
        mean_f32: &Tensor,
        lens: &[usize],
        pooling: Pooling,
    ) -> candle_core::Result<Tensor> {
        let h = h.to_dtype(DType::F32)?;
        match pooling {
            Pooling::Mean => {
                let summed = h.broadcast_mul(&mean_f32.unsqueeze(2)?)?.sum(1)?;
                let counts = mean_f32.sum_keepdim(1)?;
                summed.broadcast_div(&counts)
            }
            Pooling::First => h.narrow(1, 0, 1)?.squeeze(1),
            Pooling::Last => {
                let rows = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| h.get(i)?.get(n - 1))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::stack(&rows, 0)
            }
            Pooling::Pooler => candle_core::bail!("pooler pooling requested for a layer tap"),
        }
    }
}

impl Embedder for Bert {
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn supports(&self, tap: Tap) -> bool {
        match tap {
            Tap::Layer(k) => k <= self.config.num_hidden_layers,
            Tap::FinalNorm => false,
            Tap::Pooler => self.pooler.is_some(),
        }
    }

    fn tokenize(&self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, bool)> {
        let max = max_tokens.min(self.config.max_position_embeddings);
        if max < 2 {
            return Err(Error::param(
                "max_tokens",
                "must be at least 2 for BERT ([CLS] and [SEP])",
            ));
        }
        let mut guard = self
            .tokenizer
            .lock()
            .map_err(|_| Error::compute("tokenize", "tokenizer lock poisoned"))?;
        if guard.0 != max {
            guard
                .1
                .with_truncation(Some(TruncationParams {
                    max_length: max,
                    ..Default::default()
                }))
                .map_err(|e| Error::compute("configure tokenizer", e))?;
            guard.0 = max;
        }
        let enc = guard
            .1
            .encode(text, true)
            .map_err(|e| Error::compute("tokenize", e))?;
        let truncated = !enc.get_overflowing().is_empty();
        Ok((enc.get_ids().to_vec(), truncated))
    }

    fn embed(&self, batch: &[&[u32]], taps: &[Tap], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        let whole: Vec<Range<usize>> = batch.iter().map(|s| 0..s.len()).collect();
        self.embed_spans(batch, &whole, taps, pooling)
    }

    fn encode_with_offsets(&self, text: &str) -> Result<IdsOffsets> {
        let mut guard = self
            .tokenizer
            .lock()
            .map_err(|_| Error::compute("tokenize", "tokenizer lock poisoned"))?;
        // 0: no truncation (`tokenize` sets it again for its own length).
        if guard.0 != 0 {
            guard
                .1
                .with_truncation(None)
                .map_err(|e| Error::compute("configure tokenizer", e))?;
            guard.0 = 0;
        }
        let enc = guard
            .1
            .encode(text, true)
            .map_err(|e| Error::compute("tokenize", e))?;
        Ok((enc.get_ids().to_vec(), added_tokens_empty(&enc)))
    }

    fn max_sequence(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn embed_spans(
        &self,
        batch: &[&[u32]],
        mean: &[Range<usize>],
        taps: &[Tap],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>> {
        let n = self.config.num_hidden_layers;
        if taps.is_empty() {
            return Err(Error::param("taps", "no taps requested"));
        }
        let mut deepest = 0;
        for &t in taps {
            match t {
                Tap::Layer(k) if k <= n => deepest = deepest.max(k),
                Tap::Pooler if self.pooler.is_some() => deepest = n,
                other => {
                    return Err(Error::param(
                        "layers",
                        format!(
                            "bert with {n} blocks has no tap {other:?} (layers 0..={n}, pooler when the checkpoint has one)"
                        ),
                    ));
                }
            }
        }
        if pooling == Pooling::Pooler && taps.iter().any(|t| matches!(t, Tap::Layer(_))) {
            return Err(Error::param(
                "pooling",
                "`pooler` pooling applies to the pooler tap only; pool layers with mean, first or last",
            ));
        }
        let b = batch.len();
        if b == 0 {
            return Ok(vec![Vec::new(); taps.len()]);
        }
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let l = *lens.iter().max().unwrap_or(&0);
        if lens.contains(&0) {
            return Err(Error::compute(
                "bert forward",
                "empty token sequence in batch",
            ));
        }
        if l > self.config.max_position_embeddings {
            return Err(Error::compute(
                "bert forward",
                format!(
                    "sequence of {l} tokens exceeds max_position_embeddings {}",
                    self.config.max_position_embeddings
                ),
            ));
        }
        check_spans(batch, mean)?;
        let pad = self.config.pad_token_id;
        let mut ids = Vec::with_capacity(b * l);
        let mut mask = Vec::with_capacity(b * l);
        // The tokens mean pooling averages: the mask itself unless a prompt leaves some out.
        let mut mean_mask = Vec::with_capacity(b * l);
        for (s, m) in batch.iter().zip(mean) {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad, l - s.len()));
            mask.extend(std::iter::repeat_n(1f32, s.len()));
            mask.extend(std::iter::repeat_n(0f32, l - s.len()));
            mean_mask.extend((0..l).map(|i| if m.contains(&i) { 1f32 } else { 0f32 }));
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let dev = &self.device;
            let ids = Tensor::from_vec(ids, (b, l), dev)?;
            let mask_f32 = Tensor::from_vec(mask, (b, l), dev)?;
            let mean_f32 = Tensor::from_vec(mean_mask, (b, l), dev)?;
            let types = ids.zeros_like()?;
            let positions = Tensor::arange(0u32, l as u32, dev)?;
            let x = self
                .word
                .forward(&ids)?
                .add(&self.token_type.forward(&types)?)?
                .broadcast_add(&self.position.forward(&positions)?)?;
            let mut x = self.emb_norm.forward(&x)?;
            // Additive mask, as HF: 0 for real tokens, the dtype's minimum for pads.
            let additive = ((mask_f32.clone() - 1.0)? * 3.0e38)?
                .to_dtype(self.dtype)?
                .reshape((b, 1, 1, l))?;
            let mut out: Vec<Option<Vec<f32>>> = vec![None; taps.len()];
            let take = |k: usize, x: &Tensor, out: &mut Vec<Option<Vec<f32>>>| {
                for (i, &t) in taps.iter().enumerate() {
                    if t == Tap::Layer(k) {
                        let p = self.pool(x, &mean_f32, &lens, pooling)?;
                        out[i] = Some(p.flatten_all()?.to_vec1::<f32>()?);
                    }
                }
                candle_core::Result::Ok(())
            };
            take(0, &x, &mut out)?;
            for (k, block) in self.blocks.iter().enumerate().take(deepest) {
                x = block.forward(&x, &additive, &self.config.hidden_act)?;
                take(k + 1, &x, &mut out)?;
            }
            if let Some(pooler) = &self.pooler {
                for (i, &t) in taps.iter().enumerate() {
                    if t == Tap::Pooler {
                        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
                        let p = pooler.forward(&cls)?.tanh()?.to_dtype(DType::F32)?;
                        out[i] = Some(p.flatten_all()?.to_vec1::<f32>()?);
                    }
                }
            }
            Ok(out.into_iter().map(|o| o.unwrap_or_default()).collect())
        };
        run().map_err(|e| {
            Error::compute(
                "bert forward",
                format!(
                    "batch {b} x {l} tokens, taps {taps:?}: {}",
                    candle_message(&e)
                ),
            )
        })
    }

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "bert(hidden={}, blocks={}, heads={}, intermediate={}, vocab={}, max_pos={}, eps={:e}, act={}, pooler={}, compute={:?})",
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size,
            c.vocab_size,
            c.max_position_embeddings,
            c.layer_norm_eps,
            c.hidden_act,
            self.pooler.is_some(),
            self.dtype,
        )
    }
}
