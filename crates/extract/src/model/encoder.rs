//! The post-LN transformer encoder that BERT (`bert.rs`) and MPNet (`mpnet.rs`) share, after HF
//! `modeling_bert.py` and `modeling_mpnet.py` (candle-nn ops): the blocks (attention, its
//! LayerNorm over the residual, the feed-forward and its LayerNorm), the padding mask, pooling,
//! the pooler and tokenization. What sets the two apart is the [`Front`]: how token ids become
//! the first hidden states, and the bias MPNet adds to every block's attention scores.
//!
//! Taps: `Layer(0)` = embedding output (after the embedding LayerNorm), `Layer(k)` = output of
//! block `k`, `Pooler` = `tanh(dense(h_n[:, 0]))` when the checkpoint has pooler weights. The
//! blocks are post-LN, so there is no separate final norm (`FinalNorm` is not supported).

use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use llmembed_core::{Error, Result};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::errors::candle_message;
use super::safetensors::check_safetensors;
use super::tokenizer::added_tokens_empty;
use crate::embedder::{ComputeDtype, Embedder, IdsOffsets, LoadSpec, Pooling, Tap, check_spans};

/// A checkpoint's tensors (read into memory in the compute dtype) and where they came from, so
/// that a weight that will not load is named with its file.
pub(crate) struct Weights<'a> {
    vb: VarBuilder<'static>,
    path: &'a Path,
    /// `load bert weights`, `load mpnet weights`.
    op: &'static str,
}

impl<'a> Weights<'a> {
    /// Reads `spec.weights` in `spec.compute`'s dtype; a checkpoint of a task model that nests
    /// the encoder under `prefix.` (HF `BertForMaskedLM`: `bert.`) is read from there, as told
    /// by the tensor `prefix.{probe}`.
    pub fn read(spec: &'a LoadSpec, op: &'static str, prefix: &str, probe: &str) -> Result<Self> {
        let dtype = dtype(spec)?;
        check_safetensors(&spec.weights)?;
        // Read, not mapped (mapping is `unsafe`, kept to the kernels crate): encoder checkpoints
        // are small, and the bytes are dropped once the layers hold their tensors.
        let bytes = std::fs::read(&spec.weights)
            .map_err(|e| Error::io("read safetensors", &spec.weights, e))?;
        let vb =
            VarBuilder::from_buffered_safetensors(bytes, dtype, &Device::Cpu).map_err(|e| {
                Error::compute(
                    "read safetensors",
                    format!("{}: {}", spec.weights.display(), candle_message(&e)),
                )
            })?;
        let vb = if vb.contains_tensor(&format!("{prefix}.{probe}")) {
            vb.pp(prefix)
        } else {
            vb
        };
        Ok(Weights {
            vb,
            path: &spec.weights,
            op,
        })
    }

    pub fn pp(&self, name: impl ToString) -> Weights<'a> {
        Weights {
            vb: self.vb.pp(name),
            path: self.path,
            op: self.op,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// A weight that would not load: the file, the module and candle's reason on one line.
    fn error(&self, name: &str, e: &candle_core::Error) -> Error {
        Error::compute(
            self.op,
            format!("{}: {name}: {}", self.path.display(), candle_message(e)),
        )
    }

    pub fn linear(&self, d_in: usize, d_out: usize, name: &str) -> Result<Linear> {
        candle_nn::linear(d_in, d_out, self.vb.pp(name)).map_err(|e| self.error(name, &e))
    }

    pub fn layer_norm(&self, size: usize, eps: f64, name: &str) -> Result<LayerNorm> {
        candle_nn::layer_norm(size, eps, self.vb.pp(name)).map_err(|e| self.error(name, &e))
    }

    pub fn embedding(&self, n: usize, dim: usize, name: &str) -> Result<Embedding> {
        candle_nn::embedding(n, dim, self.vb.pp(name)).map_err(|e| self.error(name, &e))
    }
}

/// The dtype an encoder computes in; `int8` runs the decoders' products only.
pub(crate) fn dtype(spec: &LoadSpec) -> Result<DType> {
    match spec.compute {
        ComputeDtype::F32 => Ok(DType::F32),
        ComputeDtype::Bf16 => Ok(DType::BF16),
        ComputeDtype::Int8 => Err(Error::param(
            "compute",
            format!(
                "{}: int8 runs the decoders' products only; use f32 or bf16 for an encoder",
                spec.weights.display()
            ),
        )),
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
}

/// The sizes every block of one model has.
pub(crate) struct Dims {
    pub hidden: usize,
    pub heads: usize,
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
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    out_norm: LayerNorm,
    inter: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
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
        Some(vb.linear(dims.hidden, dims.hidden, "pooler.dense")?)
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
            query: a.linear(h, h, names.query)?,
            key: a.linear(h, h, names.key)?,
            value: a.linear(h, h, names.value)?,
            out: a.linear(h, h, names.out)?,
            out_norm: a.layer_norm(h, d.eps, names.norm)?,
            inter: layer.linear(h, d.intermediate, "intermediate.dense")?,
            output: layer.linear(d.intermediate, h, "output.dense")?,
            output_norm: layer.layer_norm(h, d.eps, "output.LayerNorm")?,
            heads: d.heads,
            head_dim: h / d.heads,
        })
    }

    /// `x`: (b, L, h); `bias`: (1, heads, L, L) added to the scores before `mask`, (b, 1, 1, L)
    /// additive, as HF adds them.
    fn attention(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let mut scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
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

    fn forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        mask: &Tensor,
        act: Act,
    ) -> candle_core::Result<Tensor> {
        let a = self.attention(x, bias, mask)?;
        let i = self.inter.forward(&a)?;
        let i = match act {
            Act::Relu => i.relu()?,
            Act::GeluNew => i.gelu()?,
            Act::Gelu => i.gelu_erf()?,
        };
        let o = self.output.forward(&i)?;
        self.output_norm.forward(&(o + a)?)
    }
}

/// What an encoder does before its blocks.
pub(crate) trait Front: Send + Sync {
    /// The embedding output (b, L, hidden) in the compute dtype, for `ids`: `b` rows of `L` ids,
    /// row-major, each row's real tokens first and then the pad id.
    fn forward(
        &self,
        ids: Vec<u32>,
        b: usize,
        l: usize,
        dev: &Device,
    ) -> candle_core::Result<Tensor>;

    /// A bias every block adds to its attention scores, (1, heads, L, L), or none (BERT).
    fn attention_bias(&self, _l: usize, _dev: &Device) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
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
    /// The longest sequence the position embeddings allow.
    pub max_len: usize,
    pub pad_id: u32,
    pub dtype: DType,
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
        // tokenizer.json of sentence-transformers checkpoints pads to a fixed 128; we pad
        // ourselves, and truncate to what the stage asks (`tokenize`).
        tokenizer.with_padding(None::<PaddingParams>);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::compute("configure tokenizer", e))?;
        Ok(Encoder {
            p,
            tokenizer: Mutex::new((0, tokenizer)),
        })
    }

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

    /// The forward pass of a padded batch, pooled at each tap (mean over the tokens `mean_mask`
    /// marks).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        ids: Vec<u32>,
        mask: Vec<f32>,
        mean_mask: Vec<f32>,
        lens: &[usize],
        deepest: usize,
        taps: &[Tap],
        pooling: Pooling,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let (b, l) = (lens.len(), mask.len() / lens.len());
        let dev = &Device::Cpu;
        let mask_f32 = Tensor::from_vec(mask, (b, l), dev)?;
        let mean_f32 = Tensor::from_vec(mean_mask, (b, l), dev)?;
        let mut x = self.p.front.forward(ids, b, l, dev)?;
        let bias = self.p.front.attention_bias(l, dev)?;
        // Additive mask, as HF: 0 for real tokens, the dtype's minimum for pads.
        let additive = ((mask_f32.clone() - 1.0)? * 3.0e38)?
            .to_dtype(self.p.dtype)?
            .reshape((b, 1, 1, l))?;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; taps.len()];
        let take = |k: usize, x: &Tensor, out: &mut Vec<Option<Vec<f32>>>| {
            for (i, &t) in taps.iter().enumerate() {
                if t == Tap::Layer(k) {
                    let p = self.pool(x, &mean_f32, lens, pooling)?;
                    out[i] = Some(p.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            candle_core::Result::Ok(())
        };
        take(0, &x, &mut out)?;
        for (k, block) in self.p.blocks.iter().enumerate().take(deepest) {
            x = block.forward(&x, bias.as_ref(), &additive, self.p.act)?;
            take(k + 1, &x, &mut out)?;
        }
        if let Some(pooler) = &self.p.pooler {
            for (i, &t) in taps.iter().enumerate() {
                if t == Tap::Pooler {
                    let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
                    let p = pooler.forward(&cls)?.tanh()?.to_dtype(DType::F32)?;
                    out[i] = Some(p.flatten_all()?.to_vec1::<f32>()?);
                }
            }
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
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let l = *lens.iter().max().unwrap_or(&0);
        if lens.contains(&0) {
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
        check_spans(batch, mean)?;
        let mut ids = Vec::with_capacity(b * l);
        let mut mask = Vec::with_capacity(b * l);
        // The tokens mean pooling averages: the mask itself unless a prompt leaves some out.
        let mut mean_mask = Vec::with_capacity(b * l);
        for (s, m) in batch.iter().zip(mean) {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(self.p.pad_id, l - s.len()));
            mask.extend(std::iter::repeat_n(1f32, s.len()));
            mask.extend(std::iter::repeat_n(0f32, l - s.len()));
            mean_mask.extend((0..l).map(|i| if m.contains(&i) { 1f32 } else { 0f32 }));
        }
        self.run(ids, mask, mean_mask, &lens, deepest, taps, pooling)
            .map_err(|e| {
                Error::compute(
                    op,
                    format!(
                        "batch {b} x {l} tokens, taps {taps:?}: {}",
                        candle_message(&e)
                    ),
                )
            })
    }

    fn describe(&self) -> String {
        self.p.description.clone()
    }
}
