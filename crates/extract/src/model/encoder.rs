//! The post-LN transformer encoder that BERT (`bert.rs`) and MPNet (`mpnet.rs`) share, after HF
//! `modeling_bert.py` and `modeling_mpnet.py`: the blocks (attention, its LayerNorm over the
//! residual, the feed-forward and its LayerNorm), pooling, the pooler and tokenization. What
//! sets the two apart is the [`Front`]: how token ids become the first hidden states, and the
//! bias MPNet adds to every block's attention scores.
//!
//! Batching without padding, as the decoders (`decoder.rs`): the tokens of a batch are packed
//! row after row, the products, norms and activations run on all rows at once on the kernels
//! crate, and attention keeps each sequence to its own rows (bidirectional), so a text's vectors
//! do not depend on its batch, bit for bit, and no compute goes to padding.
//!
//! Taps: `Layer(0)` = embedding output (after the embedding LayerNorm), `Layer(k)` = output of
//! block `k`, `Pooler` = `tanh(dense(h_n[:, 0]))` when the checkpoint has pooler weights. The
//! blocks are post-LN, so there is no separate final norm (`FinalNorm` is not supported).

use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use llmembed_core::{Error, Result};
use llmembed_kernels::Rows;
use llmembed_kernels::attention::{AttentionShape, LayerAttention, RelativeBias, Rope, attend};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::decoder::{Linear, fill_taps, pool, vector};
use super::errors::candle_message;
use super::safetensors::check_safetensors;
use super::tokenizer::added_tokens_empty;
use crate::embedder::{ComputeDtype, Embedder, IdsOffsets, LoadSpec, Pooling, Tap, check_spans};

/// A checkpoint's tensors (read into memory as f32) and where they came from, so that a weight
/// that will not load is named with its file.
pub(crate) struct Weights<'a> {
    vb: VarBuilder<'static>,
    path: &'a Path,
    /// `load bert weights`, `load mpnet weights`.
    op: &'static str,
    /// The products' precision (`Linear`s are packed for it).
    compute: ComputeDtype,
}

impl<'a> Weights<'a> {
    /// Reads `spec.weights`; a checkpoint of a task model that nests the encoder under
    /// `prefix.` (HF `BertForMaskedLM`: `bert.`) is read from there, as told by the tensor
    /// `prefix.{probe}`.
    pub fn read(spec: &'a LoadSpec, op: &'static str, prefix: &str, probe: &str) -> Result<Self> {
        check_safetensors(&spec.weights)?;
        // Read, not mapped (mapping is `unsafe`, kept to the kernels crate): encoder checkpoints
        // are small, and the bytes are dropped once the layers hold their weights.
        let bytes = std::fs::read(&spec.weights)
            .map_err(|e| Error::io("read safetensors", &spec.weights, e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).map_err(
            |e| {
                Error::compute(
                    "read safetensors",
                    format!("{}: {}", spec.weights.display(), candle_message(&e)),
                )
            },
        )?;
        let vb = if vb.contains_tensor(&format!("{prefix}.{probe}")) {
            vb.pp(prefix)
        } else {
            vb
        };
        Ok(Weights {
            vb,
            path: &spec.weights,
            op,
            compute: spec.compute,
        })
    }

    pub fn pp(&self, name: impl ToString) -> Weights<'a> {
        Weights {
            vb: self.vb.pp(name),
            path: self.path,
            op: self.op,
            compute: self.compute,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// A weight that would not load: the file, the module and the reason on one line.
    fn error(&self, name: &str, message: impl std::fmt::Display) -> Error {
        Error::compute(
            self.op,
            format!("{}: {name}: {message}", self.path.display()),
        )
    }

    fn tensor(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.vb
            .get(shape, name)
            .map_err(|e| self.error(name, candle_message(&e)))
    }

    /// Dense layers `name.weight` (out, in) and `name.bias`, fused along their outputs (q, k
    /// and v into one product) and packed for the compute dtype.
    pub fn linear(&self, d_in: usize, d_out: usize, names: &[&str]) -> Result<Linear> {
        let mut ws = Vec::with_capacity(names.len());
        let mut bs = Vec::with_capacity(names.len());
        for name in names {
            ws.push(self.tensor(&[d_out, d_in], &format!("{name}.weight"))?);
            bs.push(self.tensor(&[d_out], &format!("{name}.bias"))?);
        }
        Linear::new(ws, Some(&bs), self.compute).map_err(|e| self.error(&names.join("+"), e))
    }

    pub fn layer_norm(&self, size: usize, eps: f64, name: &str) -> Result<LayerNorm> {
        let read = |part: &str| {
            let t = self.tensor(&[size], &format!("{name}.{part}"))?;
            vector(&t).map_err(|e| self.error(name, e))
        };
        Ok(LayerNorm {
            weight: read("weight")?,
            bias: read("bias")?,
            eps: eps as f32,
        })
    }

    /// An embedding table (`n` rows of `dim`).
    pub fn embedding(&self, n: usize, dim: usize, name: &str) -> Result<Table> {
        let t = self.tensor(&[n, dim], &format!("{name}.weight"))?;
        Ok(Table {
            values: vector(&t).map_err(|e| self.error(name, e))?,
            dim,
        })
    }
}

/// An embedding table, row-major.
pub(crate) struct Table {
    values: Vec<f32>,
    dim: usize,
}

impl Table {
    pub fn width(&self) -> usize {
        self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// torch's LayerNorm: weight, bias and epsilon.
pub(crate) struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        Rows::best().layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    /// `LN(x + y)`; `x` is left holding the sum.
    fn add_forward(&self, x: &mut [f32], y: &[f32]) -> Vec<f32> {
        Rows::best().add_layer_norm(x, y, &self.weight, &self.bias, self.eps)
    }
}

/// The feed-forward activation, by its config.json `hidden_act`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Act {
    /// `gelu`: the exact (erf) GELU.
    Gelu,
    /// `gelu_new`: the tanh approximation.
    GeluNew,
    Relu,
}

impl Act {
    pub const NAMES: &'static str = "gelu, gelu_new, relu";

    pub fn from_name(name: &str) -> Option<Act> {
        match name {
            "gelu" => Some(Act::Gelu),
            "gelu_new" => Some(Act::GeluNew),
            "relu" => Some(Act::Relu),
            _ => None,
        }
    }

    fn apply(self, x: &mut [f32]) {
        match self {
            Act::Gelu => Rows::best().gelu_erf(x),
            Act::GeluNew => Rows::best().activate(x, true),
            Act::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
    }
}

/// The sizes every block of one model has.
pub(crate) struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub eps: f64,
}

/// The names of a block's attention weights under its layer, which the two checkpoints spell
/// differently (`attention.self.query` / `attention.attn.q`, ...); the feed-forward's are the same.
pub(crate) struct AttentionNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub out: &'static str,
    pub norm: &'static str,
}

/// One post-LN block: `a = LN(x + o(attn(x)))`, `y = LN(a + down(act(up(a))))`.
pub(crate) struct Block {
    /// q, k and v fused into one product.
    qkv: Linear,
    out: Linear,
    out_norm: LayerNorm,
    inter: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The blocks `encoder.layer.<i>` (i < `layers`) and the pooler `pooler.dense`, where the
/// checkpoint has one: what BERT and MPNet checkpoints name alike.
pub(crate) fn load_stack(
    vb: &Weights,
    dims: &Dims,
    layers: usize,
    names: &AttentionNames,
) -> Result<(Vec<Block>, Option<Linear>)> {
    let blocks = (0..layers)
        .map(|i| Block::load(&vb.pp(format!("encoder.layer.{i}")), dims, names))
        .collect::<Result<Vec<_>>>()?;
    let pooler = if vb.contains("pooler.dense.weight") {
        Some(vb.linear(dims.hidden, dims.hidden, &["pooler.dense"])?)
    } else {
        None
    };
    Ok((blocks, pooler))
}

impl Block {
    /// Loads the block under `layer` (`encoder.layer.<i>`).
    pub fn load(layer: &Weights, d: &Dims, names: &AttentionNames) -> Result<Block> {
        let (h, a) = (d.hidden, layer.pp("attention"));
        Ok(Block {
            qkv: a.linear(h, h, &[names.query, names.key, names.value])?,
            out: a.linear(h, h, &[names.out])?,
            out_norm: a.layer_norm(h, d.eps, names.norm)?,
            inter: layer.linear(h, d.intermediate, &["intermediate.dense"])?,
            output: layer.linear(d.intermediate, h, &["output.dense"])?,
            output_norm: layer.layer_norm(h, d.eps, "output.LayerNorm")?,
        })
    }

    /// The block over packed rows `x` (rows, hidden) of the sequences `lens`.
    fn forward(
        &self,
        x: &[f32],
        lens: &[usize],
        shape: &AttentionShape,
        layer: &LayerAttention,
        act: Act,
    ) -> llmembed_kernels::Result<Vec<f32>> {
        let rows = lens.iter().sum();
        let qkv = self.qkv.forward(x, rows)?;
        let ctx = attend(shape, layer, &qkv, lens);
        let mut o = self.out.forward(&ctx, rows)?;
        let a = self.out_norm.add_forward(&mut o, x);
        let mut i = self.inter.forward(&a, rows)?;
        act.apply(&mut i);
        let mut y = self.output.forward(&i, rows)?;
        Ok(self.output_norm.add_forward(&mut y, &a))
    }
}

/// What `describe()` says of the arithmetic after the config values: the engine and the
/// kernel of the products (two kernels' vectors differ in their last bits, so the store never
/// mixes them).
pub(crate) fn engine(blocks: &[Block], compute: ComputeDtype) -> String {
    format!(
        "engine=packed-rows-v1,matmul={},compute={compute:?}",
        blocks.first().map_or("none".into(), |b| b.qkv.w.kernel())
    )
}

/// What an encoder does before its blocks.
pub(crate) trait Front: Send + Sync {
    /// The embedding output of `batch`'s sequences packed row after row, (tokens, hidden); ids
    /// are within the vocabulary ([`Parts::vocab`]).
    fn forward(&self, batch: &[&[u32]]) -> Vec<f32>;

    /// A bias every block adds to its attention scores, by the distance key - query (MPNet),
    /// or none (BERT).
    fn attention_bias(&self) -> Option<&RelativeBias> {
        None
    }
}

/// The parts of an [`Encoder`] that its model file loads.
pub(crate) struct Parts {
    /// `bert`, `mpnet`: in error messages.
    pub name: &'static str,
    /// `bert forward`, `mpnet forward`: the op of a forward pass's errors.
    pub forward_op: &'static str,
    /// What `tokenize` needs room for: `BERT ([CLS] and [SEP])`.
    pub special_tokens: &'static str,
    pub front: Box<dyn Front>,
    pub blocks: Vec<Block>,
    pub act: Act,
    pub pooler: Option<Linear>,
    pub hidden: usize,
    pub heads: usize,
    /// Rows of the word embedding table.
    pub vocab: usize,
    /// The longest sequence the position embeddings allow.
    pub max_len: usize,
    /// `describe()`: architecture and the config values that affect outputs.
    pub description: String,
}

/// A loaded encoder: its [`Parts`] and the tokenizer, behind the shared [`Embedder`].
pub(crate) struct Encoder {
    p: Parts,
    /// The tokenizer and the truncation length it is set to (changed on demand).
    tokenizer: Mutex<(usize, Tokenizer)>,
}

impl Encoder {
    pub fn new(p: Parts, mut tokenizer: Tokenizer) -> Result<Encoder> {
        // tokenizer.json of sentence-transformers checkpoints pads to a fixed 128; we never
        // pad, and truncate to what the stage asks (`tokenize`).
        tokenizer.with_padding(None::<PaddingParams>);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::compute("configure tokenizer", e))?;
        Ok(Encoder {
            p,
            tokenizer: Mutex::new((0, tokenizer)),
        })
    }

    /// The forward pass of a batch packed row after row, pooled at each tap (mean over the
    /// tokens `mean` marks), up to block `deepest`.
    fn run(
        &self,
        batch: &[&[u32]],
        mean: &[Range<usize>],
        deepest: usize,
        taps: &[Tap],
        pooling: Pooling,
    ) -> llmembed_kernels::Result<Vec<Vec<f32>>> {
        let h = self.p.hidden;
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let head_dim = h / self.p.heads;
        let shape = AttentionShape {
            n_heads: self.p.heads,
            n_kv_heads: self.p.heads,
            head_dim,
            rotary_dim: 0,
            interleaved: false,
            scale: 1.0 / (head_dim as f32).sqrt(),
            eps: 0.0,
        };
        let no_rope = Rope::new(10_000.0, 0, 0);
        let layer = LayerAttention {
            rope: &no_rope,
            window: None,
            causal: false,
            q_norm: None,
            k_norm: None,
            bias: self.p.front.attention_bias(),
        };
        let mut out: Vec<Option<Vec<f32>>> = vec![None; taps.len()];
        // Pools block `k`'s output (once) into the slot of every tap on it.
        let take = |k: usize, x: &[f32], out: &mut [Option<Vec<f32>>]| {
            fill_taps(
                out,
                taps,
                |t| t == Tap::Layer(k),
                || pool(x, &lens, mean, h, pooling),
            )
        };
        let mut x = self.p.front.forward(batch);
        take(0, &x, &mut out);
        for (k, block) in self.p.blocks.iter().enumerate().take(deepest) {
            x = block.forward(&x, &lens, &shape, &layer, self.p.act)?;
            take(k + 1, &x, &mut out);
        }
        if let (Some(pooler), true) = (&self.p.pooler, taps.contains(&Tap::Pooler)) {
            let whole: Vec<Range<usize>> = lens.iter().map(|&n| 0..n).collect();
            let first = pool(&x, &lens, &whole, h, Pooling::First);
            let mut p = pooler.forward(&first, lens.len())?;
            p.iter_mut().for_each(|v| *v = v.tanh());
            fill_taps(&mut out, taps, |t| t == Tap::Pooler, || p.clone());
        }
        Ok(out.into_iter().map(|o| o.unwrap_or_default()).collect())
    }
}

impl Embedder for Encoder {
    fn num_layers(&self) -> usize {
        self.p.blocks.len()
    }

    fn hidden_size(&self) -> usize {
        self.p.hidden
    }

    fn supports(&self, tap: Tap) -> bool {
        match tap {
            Tap::Layer(k) => k <= self.p.blocks.len(),
            Tap::FinalNorm | Tap::Sentence => false,
            Tap::Pooler => self.p.pooler.is_some(),
        }
    }

    fn tokenize(&self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, bool)> {
        let max = max_tokens.min(self.p.max_len);
        if max < 2 {
            return Err(Error::param(
                "max_tokens",
                format!("must be at least 2 for {}", self.p.special_tokens),
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
        self.p.max_len
    }

    fn embed_spans(
        &self,
        batch: &[&[u32]],
        mean: &[Range<usize>],
        taps: &[Tap],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>> {
        let (name, n) = (self.p.name, self.p.blocks.len());
        if taps.is_empty() {
            return Err(Error::param("taps", "no taps requested"));
        }
        let mut deepest = 0;
        for &t in taps {
            match t {
                Tap::Layer(k) if k <= n => deepest = deepest.max(k),
                Tap::Pooler if self.p.pooler.is_some() => deepest = n,
                other => {
                    return Err(Error::param(
                        "layers",
                        format!(
                            "{name} with {n} blocks has no tap {other:?} (layers 0..={n}, pooler when the checkpoint has one)"
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
        let op = self.p.forward_op;
        let l = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        if batch.iter().any(|s| s.is_empty()) {
            return Err(Error::compute(op, "empty token sequence in batch"));
        }
        if l > self.p.max_len {
            return Err(Error::compute(
                op,
                format!(
                    "sequence of {l} tokens exceeds the {} positions {name} has",
                    self.p.max_len
                ),
            ));
        }
        let vocab = self.p.vocab;
        if let Some(id) = batch
            .iter()
            .flat_map(|s| s.iter())
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::compute(
                op,
                format!("token id {id} outside the vocabulary of {vocab}"),
            ));
        }
        check_spans(batch, mean)?;
        self.run(batch, mean, deepest, taps, pooling).map_err(|e| {
            Error::compute(
                op,
                format!("batch of {b}, longest {l} tokens, taps {taps:?}: {e}"),
            )
        })
    }

    fn describe(&self) -> String {
        self.p.description.clone()
    }
}
