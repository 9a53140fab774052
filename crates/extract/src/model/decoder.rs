//! The decoder-only transformer shared by every decoder architecture (llama, gemma3 from GGUF;
//! llama, qwen2, qwen3, phi from safetensors), written to follow HF's `modeling_llama.py` /
//! `modeling_gemma3.py` / `modeling_phi.py` step by step, with per-layer taps. Weights are
//! converted once, at load (dequantized to f32; for `compute: bf16` rounded to bf16 and packed
//! for the CPU's bf16 kernel; for `compute: int8` quantised per output column for the int8
//! kernel, see `llmembed_kernels::matmul`). The architectures differ only in data: norm kind (RMS or LayerNorm),
//! optional biases, q/k norms, sandwich norms (gemma), a gated or plain MLP, a parallel
//! attention+MLP block (phi), partial rotary embeddings (phi) and per-layer RoPE bases and
//! sliding windows (gemma).
//!
//! Batching without padding: the tokens of a batch are packed row after row, every per-token step
//! (norms, projections, MLP) runs on all rows at once, and attention (`llmembed_kernels::attention`) keeps each
//! sequence to its own rows. No token ever sees another text's tokens and no row depends on
//! another text's, so a text's vectors do not depend on the batch it is in (tested in
//! `tests/decoder_padding.rs`), and no compute is spent on padding. Activations are f32 `Vec`s;
//! the matrix products, row-wise steps and attention are the kernels crate's
//! (`llmembed_kernels`).

use std::ops::Range;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use llmembed_core::{Error, Result};

use llmembed_kernels::attention::{AttentionShape, LayerAttention, Rope, attend, attend_after};
use llmembed_kernels::{
    Bf16Kernel, Gated, I8Kernel, Outliers, PackedBf16, PackedF32, PackedI8, Rows, gate_up_column,
    gated_width,
};
use rayon::prelude::*;

use super::errors::candle_message;
use super::prefix::{PrefixCache, SharedPrefix, worth_sharing};
use super::tokenizer::DecoderTokenizer;
use crate::embedder::{ComputeDtype, Embedder, IdsOffsets, Pooling, Tap, check_spans, check_taps};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    /// SiLU (llama `hidden_act = silu`).
    Silu,
    /// GELU, tanh approximation (gemma `gelu_pytorch_tanh`).
    GeluTanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RopeStyle {
    /// Rotates pairs (2i, 2i+1): llama.cpp's convert permuted llama's q/k rows for this, which
    /// is equivalent to HF's `rotate_half` on the unpermuted weights.
    Interleaved,
    /// Rotates (i, i + d/2), HF's `rotate_half` (gemma files are not permuted).
    Halves,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub arch: &'static str,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub eps: f64,
    /// Gemma multiplies the embeddings by sqrt(hidden).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    pub rope_style: RopeStyle,
    /// Leading dims of each head that RoPE rotates (= head_dim except phi's partial rotary).
    pub rotary_dim: usize,
    /// Phi: `x + attn(ln(x)) + mlp(ln(x))` with one norm, instead of two residual steps.
    pub parallel_block: bool,
    pub attn_scale: f64,
    /// Per layer: the RoPE base and the sliding window (None = global attention).
    pub rope_theta: Vec<f32>,
    pub window: Vec<Option<usize>>,
    pub context_length: usize,
    /// Tokens see earlier tokens only (decoders); EmbeddingGemma's blocks see both sides.
    pub causal: bool,
}

/// A norm and its parameters.
pub(crate) enum Norm {
    /// RMSNorm computed in f32 (llama, qwen, gemma).
    Rms { weight: Vec<f32> },
    /// LayerNorm with weight and bias (phi).
    Layer { weight: Vec<f32>, bias: Vec<f32> },
}

impl Norm {
    pub fn rms(weight: &Tensor) -> Result<Norm> {
        Ok(Norm::Rms {
            weight: vector(weight)?,
        })
    }

    pub fn layer(weight: &Tensor, bias: &Tensor) -> Result<Norm> {
        Ok(Norm::Layer {
            weight: vector(weight)?,
            bias: vector(bias)?,
        })
    }
}

/// Blocks `0..n` built by `block`, as many at a time as there are threads, in order; the
/// first block that fails (in order) gives the error.
///
/// Why: most of a block's load (dequantizing, the copies and page faults of its matrices) runs
/// on one thread, so the blocks load side by side. At most one block per thread at a time,
/// so the load's temporary matrices stay within that many blocks' worth.
pub(crate) fn load_blocks(
    n: usize,
    block: impl Fn(usize) -> Result<Block> + Sync,
) -> Result<Vec<Block>> {
    let at_once = rayon::current_num_threads().max(1);
    let mut blocks = Vec::with_capacity(n);
    for first in (0..n).step_by(at_once) {
        let built: Vec<Result<Block>> = (first..(first + at_once).min(n))
            .into_par_iter()
            .map(&block)
            .collect();
        for b in built {
            blocks.push(b?);
        }
    }
    Ok(blocks)
}

/// A 1-d weight as f32 values.
pub(crate) fn vector(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(cerr("read weight vector"))
}

/// A dense layer `x @ w + b`.
pub(crate) struct Linear {
    pub w: Weight,
    pub b: Option<Vec<f32>>,
}

pub(crate) enum Weight {
    /// f32, packed for the kernels' f32 product (`compute: f32`).
    F32(PackedF32),
    /// Rounded to bf16 and packed for the kernels' bf16 product (`compute: bf16`).
    Bf16(PackedBf16),
    /// Quantised to int8 per output column for the kernels' int8 product (`compute: int8`).
    I8(PackedI8),
}

impl Weight {
    /// The kernel that multiplies: the vectors of two kernels differ in their last bits, so
    /// `describe()` names it and the store never mixes them.
    pub(crate) fn kernel(&self) -> String {
        match self {
            Weight::F32(w) => w.kernel().name().into(),
            Weight::Bf16(w) => w.kernel().fingerprint(),
            // The outlier rule changes the arithmetic as much as the kernel does.
            Weight::I8(w) => format!("{},{}", w.kernel().name(), w.outliers().name()),
        }
    }

    /// `values` is (k = in, n = out) f32, row-major.
    fn new(values: &[f32], k: usize, n: usize, compute: ComputeDtype) -> Result<Weight> {
        let pack = |e: llmembed_kernels::Error| Error::compute(e.op, e.message);
        Ok(match compute {
            ComputeDtype::F32 => Weight::F32(PackedF32::new(values, k, n).map_err(pack)?),
            ComputeDtype::Bf16 => {
                Weight::Bf16(PackedBf16::new(values, k, n, Bf16Kernel::detect()).map_err(pack)?)
            }
            ComputeDtype::Int8 => Weight::I8(
                PackedI8::new(values, k, n, I8Kernel::detect(), int8_outliers()).map_err(pack)?,
            ),
        })
    }
}

/// Weights fused along their outputs and transposed: `w` is (k = in, n = out) f32 row-major.
struct Fused {
    w: Vec<f32>,
    k: usize,
    n: usize,
    b: Option<Vec<f32>>,
}

/// Where [`fused`] writes each output's weights: in order, or as a gated MLP's gate and up
/// projections interleaved for the kernels ([`gate_up_column`]).
#[derive(Clone, Copy)]
enum Columns {
    InOrder,
    GateUp { ffn: usize },
}

impl Columns {
    /// Columns of the fused matrix for `n` outputs.
    fn width(self, n: usize) -> usize {
        match self {
            Columns::InOrder => n,
            Columns::GateUp { ffn } => gated_width(ffn),
        }
    }

    /// The column of output `o`.
    fn of(self, o: usize) -> usize {
        match self {
            Columns::InOrder => o,
            Columns::GateUp { ffn } => gate_up_column(ffn, o),
        }
    }

    /// One value per output (a bias) placed in the `n` columns as the weights are.
    fn place(self, values: Vec<f32>, outputs: usize, n: usize) -> Result<Vec<f32>> {
        match self {
            Columns::InOrder => Ok(values),
            Columns::GateUp { .. } if values.len() != outputs => Err(Error::compute(
                "fuse biases",
                format!(
                    "the gate and up biases have {} values for {outputs} outputs",
                    values.len()
                ),
            )),
            Columns::GateUp { .. } => {
                let mut placed = vec![0f32; n];
                for (o, v) in values.into_iter().enumerate() {
                    placed[self.of(o)] = v;
                }
                Ok(placed)
            }
        }
    }
}

/// Weights (out, in) as PyTorch stores them, fused along `out` and transposed, with the biases
/// fused the same way; the outputs (weights and biases) placed as `columns` says.
///
/// One copy: each weight is read where it lies (an f32 tensor is borrowed, another dtype
/// converted first) and written transposed into the fused matrix, a block of inputs per task
/// on all threads. Why not candle's `cat`, `t` and `contiguous`, then `to_vec1`: each made its
/// own copy of the whole matrix, one thread at a time, and loading Qwen2.5-Coder-1.5B spent most
/// of its time there (faulting in fresh pages and copying). `ws` is taken by value so that the
/// sources are freed here, before the caller packs the result: a model's blocks load side by
/// side ([`load_blocks`]), and each holds fewer whole matrices at once.
fn fused(ws: Vec<Tensor>, bs: Option<&[Tensor]>, columns: Columns) -> Result<Fused> {
    const OP: &str = "fuse and transpose weights";
    let e = cerr(OP);
    let ws: Vec<Tensor> = ws
        .into_iter()
        .map(|w| w.to_dtype(DType::F32).and_then(|w| w.contiguous()))
        .collect::<candle_core::Result<_>>()
        .map_err(&e)?;
    let shapes: Vec<(usize, usize)> = ws
        .iter()
        .map(|w| w.dims2())
        .collect::<candle_core::Result<_>>()
        .map_err(&e)?;
    let k = shapes.first().map_or(0, |s| s.1);
    if let Some(&(out, inputs)) = shapes.iter().find(|s| s.1 != k) {
        return Err(Error::compute(
            OP,
            format!("a ({out}, {inputs}) weight does not take the {k} inputs of the others"),
        ));
    }
    let outputs: usize = shapes.iter().map(|s| s.0).sum();
    let n = columns.width(outputs);
    let guards: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let sources: Vec<&[f32]> = guards
        .iter()
        .map(|(storage, layout)| {
            let candle_core::Storage::Cpu(cpu) = &**storage else {
                return Err(Error::compute(OP, "a weight is not in CPU memory"));
            };
            let data = cpu.as_slice::<f32>().map_err(&e)?;
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| Error::compute(OP, "a weight is not contiguous"))?;
            Ok(&data[start..end])
        })
        .collect::<Result<_>>()?;
    // Each output's row of weights and the column it goes to.
    let placed: Vec<(&[f32], usize)> = sources
        .iter()
        .flat_map(|src| src.chunks_exact(k.max(1)))
        .enumerate()
        .map(|(o, row)| (row, columns.of(o)))
        .collect();
    // Tasks of 64 inputs (rows of the result), each taking 16 outputs at a time: for each
    // input, the 16 values go to neighbouring columns of one row, and the 16 rows read stay in
    // L1. Why not one output at a time down a column: the rows of the result lie a multiple of
    // 2 KiB apart for most widths, so a column's 64 lines fell into a few L1 sets and every
    // store missed (the copy was a third of the samples of Qwen2.5-Coder-1.5B's int8 load;
    // in this order it takes about half as many).
    const BLOCK: usize = 64;
    const GROUP: usize = 16;
    let mut w = vec![0f32; k * n];
    if n > 0 && k > 0 {
        w.par_chunks_mut(BLOCK * n)
            .enumerate()
            .for_each(|(block, rows)| {
                let first = block * BLOCK;
                for group in placed.chunks(GROUP) {
                    for (i, dst) in rows.chunks_exact_mut(n).enumerate() {
                        for &(row, col) in group {
                            dst[col] = row[first + i];
                        }
                    }
                }
            });
    }
    let b = bs
        .map(|bs| {
            let joined = vector(&Tensor::cat(bs, 0).map_err(cerr("fuse biases"))?)?;
            columns.place(joined, outputs, n)
        })
        .transpose()?;
    Ok(Fused { w, k, n, b })
}

/// The outlier rule of `compute: int8`: [`Outliers::DEFAULT`], or none when
/// `LLMEMBED_INT8_NO_OUTLIERS` is set (to measure what the rule does; `describe()` names the
/// rule, so the store keeps the two apart).
fn int8_outliers() -> Outliers {
    if std::env::var_os("LLMEMBED_INT8_NO_OUTLIERS").is_some() {
        Outliers::NONE
    } else {
        Outliers::DEFAULT
    }
}

impl Linear {
    /// A dense layer from (out, in) weights as PyTorch stores them, fused along `out` (q, k
    /// and v into one product), with their biases fused the same way.
    pub fn new(ws: Vec<Tensor>, bs: Option<&[Tensor]>, compute: ComputeDtype) -> Result<Linear> {
        let Fused { w, k, n, b } = fused(ws, bs, Columns::InOrder)?;
        Ok(Linear {
            w: Weight::new(&w, k, n, compute)?,
            b,
        })
    }

    /// A gated MLP's gate and up projections (`ws`, `bs`: gate then up), packed side by side
    /// for [`Linear::forward_gated`] (`gate_up_column`'s order), biases likewise.
    pub fn gated(ws: Vec<Tensor>, bs: Option<&[Tensor]>, compute: ComputeDtype) -> Result<Linear> {
        let outputs: Vec<usize> = ws
            .iter()
            .map(|w| w.dims().first().copied().unwrap_or(0))
            .collect();
        let n: usize = outputs.iter().sum();
        let ffn = n / 2;
        if outputs.len() != 2 || 2 * ffn != n || outputs[0] != ffn {
            return Err(Error::compute(
                "fuse gate and up weights",
                format!(
                    "{} matrices of {n} outputs in all are not a gate and an up projection of the same width",
                    outputs.len()
                ),
            ));
        }
        let Fused { w, k, n, b } = fused(ws, bs, Columns::GateUp { ffn })?;
        Ok(Linear {
            w: Weight::new(&w, k, n, compute)?,
            b,
        })
    }

    /// `act(x @ gate + b_g) * (x @ up + b_u)` for `x` (rows, in) row-major, from weights
    /// packed by [`Linear::gated`], in one pass: (rows, ffn).
    fn forward_gated(
        &self,
        x: &[f32],
        rows: usize,
        ffn: usize,
        gelu: bool,
    ) -> llmembed_kernels::Result<Vec<f32>> {
        let g = self.gated_params(ffn, gelu);
        match &self.w {
            Weight::F32(w) => w.matmul_gated(x, rows, &g),
            Weight::Bf16(w) => w.matmul_gated(x, rows, &g),
            Weight::I8(w) => w.matmul_gated(x, rows, &g),
        }
    }

    /// `down(act(x @ gate + b_g) * (x @ up + b_u)) + b_down`, `self` packed by
    /// [`Linear::gated`]: (rows, out). In bf16 and int8 the kernels run the two products as
    /// one (`PackedBf16::matmul_mlp`, `PackedI8::matmul_mlp`: on AMX the activations never
    /// reach memory whole); in f32 [`Linear::forward_gated`] then `down`.
    fn forward_mlp(
        &self,
        down: &Linear,
        x: &[f32],
        rows: usize,
        ffn: usize,
        gelu: bool,
    ) -> llmembed_kernels::Result<Vec<f32>> {
        let g = self.gated_params(ffn, gelu);
        let y = match (&self.w, &down.w) {
            (Weight::Bf16(gate_up), Weight::Bf16(down_w)) => {
                gate_up.matmul_mlp(down_w, x, rows, &g)?
            }
            (Weight::I8(gate_up), Weight::I8(down_w)) => gate_up.matmul_mlp(down_w, x, rows, &g)?,
            _ => return down.forward(&self.forward_gated(x, rows, ffn, gelu)?, rows),
        };
        Ok(down.biased(y))
    }

    /// What the kernels' gated products take besides the weights: this layer's gate and up
    /// biases (interleaved as its weights are).
    fn gated_params(&self, ffn: usize, gelu: bool) -> Gated<'_> {
        Gated {
            ffn,
            gelu,
            bias: self.b.as_deref(),
        }
    }

    /// `y` with this layer's bias added, if it has one.
    fn biased(&self, mut y: Vec<f32>) -> Vec<f32> {
        if let Some(b) = &self.b {
            Rows::best().add_bias(&mut y, b);
        }
        y
    }

    /// `x` is (rows, in) row-major; returns (rows, out).
    pub(crate) fn forward(&self, x: &[f32], rows: usize) -> llmembed_kernels::Result<Vec<f32>> {
        let y = match &self.w {
            Weight::F32(w) => w.matmul(x, rows)?,
            Weight::Bf16(w) => w.matmul(x, rows)?,
            Weight::I8(w) => w.matmul(x, rows)?,
        };
        Ok(self.biased(y))
    }
}

pub(crate) enum Mlp {
    /// `down(act(gate(x)) * up(x))`: gate and up packed side by side ([`Linear::gated`]) and
    /// multiplied in one pass that applies the activation.
    Gated { gate_up: Linear, down: Linear },
    /// `down(act(up(x)))` (phi's fc1 / fc2).
    Plain { up: Linear, down: Linear },
}

pub(crate) struct Block {
    pub attn_norm: Norm,
    /// (hidden, q_dim + 2 * kv_dim): q, k, v projections fused.
    pub qkv: Linear,
    /// Per-head RMSNorm of q and k before RoPE (gemma3, qwen3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// (q_dim, hidden)
    pub o: Linear,
    pub post_attn_norm: Option<Norm>,
    /// None for parallel blocks, whose MLP reads `attn_norm`'s output.
    pub ffn_norm: Option<Norm>,
    pub mlp: Mlp,
    pub post_ffn_norm: Option<Norm>,
}

/// The token embedding matrix.
pub(crate) enum Embeddings {
    /// Kept quantized (GGUF); rows are dequantized on lookup (exactly the values a full
    /// dequantization gives), which keeps a 262k-row vocabulary out of memory.
    Quantized(QTensor),
    /// (vocab, hidden) f32 (safetensors).
    Dense(Tensor),
}

impl Embeddings {
    fn rows(&self) -> usize {
        match self {
            Embeddings::Quantized(q) => q.shape().dims()[0],
            Embeddings::Dense(t) => t.dims()[0],
        }
    }

    fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Embeddings::Quantized(q) => q.embedding(ids),
            Embeddings::Dense(t) => t.index_select(ids, 0),
        }
    }
}

/// The sentence-transformers modules after the transformer (EmbeddingGemma's `modules.json`):
/// mean pooling of the last hidden state over every token, dense layers without activation,
/// then L2 normalisation. Read by `sentence.rs`.
pub(crate) struct SentenceHead {
    pub dense: Vec<Linear>,
    pub normalize: bool,
    /// What the modules are, for `describe()`: `mean,dense(768x3072),...,normalize`.
    pub note: String,
}

impl SentenceHead {
    /// The sentence embeddings (sequences, out) of the final-norm states (packed rows).
    fn forward(&self, states: &[f32], lens: &[usize], hidden: usize) -> Result<Vec<f32>> {
        // Every token, a prompt's too: sentence-transformers' Pooling (`include_prompt`) does so.
        let whole: Vec<Range<usize>> = lens.iter().map(|&n| 0..n).collect();
        let mut v = pool(states, lens, &whole, hidden, Pooling::Mean);
        for d in &self.dense {
            v = d.forward(&v, lens.len()).map_err(kerr("sentence dense"))?;
        }
        if self.normalize {
            let width = v.len() / lens.len().max(1);
            // torch.nn.functional.normalize: v / max(||v||, 1e-12).
            v.par_chunks_mut(width).for_each(|row| {
                let norm = row
                    .iter()
                    .map(|x| (*x as f64) * (*x as f64))
                    .sum::<f64>()
                    .sqrt();
                let norm = norm.max(1e-12) as f32;
                row.iter_mut().for_each(|x| *x /= norm);
            });
        }
        Ok(v)
    }
}

pub(crate) struct Decoder {
    pub cfg: Config,
    pub embed: Embeddings,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    pub tokenizer: DecoderTokenizer,
    /// The matrix products' precision; activations are f32 either way.
    pub compute: ComputeDtype,
    pub weights_note: String,
    /// The model's own sentence embedding (`Tap::Sentence`), where it has one.
    pub sentence: Option<SentenceHead>,
    /// Runs of the tokens that batches' texts share (`prefix.rs`), kept from batch to batch.
    pub shared: PrefixCache,
}

fn cerr(op: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::compute(op, candle_message(&e))
}

/// A kernel error inside `op` (its message starts with the kernel's own op).
fn kerr(op: &'static str) -> impl Fn(llmembed_kernels::Error) -> Error {
    move |e| Error::compute(op, e)
}

impl Decoder {
    fn norm(&self, x: &[f32], n: &Norm) -> Vec<f32> {
        let eps = self.cfg.eps as f32;
        match n {
            Norm::Rms { weight } => Rows::best().rms_norm(x, weight, eps),
            Norm::Layer { weight, bias } => Rows::best().layer_norm(x, weight, bias, eps),
        }
    }

    /// `x += y`, then `n` of the new `x`.
    fn add_norm(&self, x: &mut [f32], y: &[f32], n: &Norm) -> Vec<f32> {
        match n {
            Norm::Rms { weight } => Rows::best().add_rms_norm(x, y, weight, self.cfg.eps as f32),
            Norm::Layer { .. } => {
                Rows::best().add_assign(x, y);
                self.norm(x, n)
            }
        }
    }

    fn attention_shape(&self) -> AttentionShape {
        let c = &self.cfg;
        AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            rotary_dim: c.rotary_dim,
            interleaved: c.rope_style == RopeStyle::Interleaved,
            scale: c.attn_scale as f32,
            eps: c.eps as f32,
        }
    }

    /// Attention of one block over packed rows `h` (rows, hidden); `lens` are the sequences'
    /// own rows. With `shared` (a prefix run's q, k and v rows of this block) each sequence
    /// attends over those rows followed by its own, as if they were its first tokens; `keep`
    /// gets this block's q, k and v rows (a prefix run's own).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        blk: &Block,
        h: &[f32],
        lens: &[usize],
        shape: &AttentionShape,
        rope: &Rope,
        window: Option<usize>,
        shared: Option<&[f32]>,
        keep: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Vec<f32>> {
        let e = kerr("attention");
        let rows = h.len() / self.cfg.hidden;
        let qkv = blk.qkv.forward(h, rows).map_err(&e)?;
        let layer = LayerAttention {
            rope,
            window,
            causal: self.cfg.causal,
            q_norm: blk.q_norm.as_deref(),
            k_norm: blk.k_norm.as_deref(),
            bias: None,
        };
        let out = match shared {
            None => attend(shape, &layer, &qkv, lens),
            Some(shared) => attend_after(shape, &layer, shared, &qkv, lens),
        };
        if let Some(keep) = keep {
            keep.push(qkv);
        }
        blk.o.forward(&out, rows).map_err(&e)
    }

    fn mlp(&self, blk: &Block, h: &[f32], rows: usize) -> Result<Vec<f32>> {
        let e = kerr("mlp");
        let gelu = self.cfg.activation == Activation::GeluTanh;
        match &blk.mlp {
            Mlp::Gated { gate_up, down } => gate_up
                .forward_mlp(down, h, rows, self.cfg.ffn, gelu)
                .map_err(&e),
            Mlp::Plain { up, down } => {
                let mut a = up.forward(h, rows).map_err(&e)?;
                Rows::best().activate(&mut a, gelu);
                down.forward(&a, rows).map_err(&e)
            }
        }
    }

    /// The embedding output of the batch's tokens, packed row after row, after checking the
    /// sequences against the model (not empty, the longest, `t` tokens with any shared ones
    /// before it, within its context, ids within its vocabulary).
    fn embeddings(&self, batch: &[&[u32]], lens: &[usize], t: usize) -> Result<Vec<f32>> {
        let c = &self.cfg;
        if let Some(i) = lens.iter().position(|&l| l == 0) {
            return Err(Error::param(
                "batch",
                format!("sequence {i} of the batch has no tokens"),
            ));
        }
        if t > c.context_length {
            return Err(Error::param(
                "max_tokens",
                format!(
                    "{} tokens exceed the model's context of {}",
                    t, c.context_length
                ),
            ));
        }
        let vocab = self.embed.rows();
        let ids: Vec<u32> = batch.iter().flat_map(|s| s.iter().copied()).collect();
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::param(
                "tokens",
                format!("token id {id} outside the vocabulary of {vocab}"),
            ));
        }
        let rows = ids.len();
        let ids = Tensor::from_vec(ids, rows, &Device::Cpu).map_err(cerr("embedding lookup"))?;
        let mut x = self
            .embed
            .lookup(&ids)
            .and_then(|x| x.to_dtype(DType::F32))
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(cerr("embedding lookup"))?;
        if let Some(s) = c.embed_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        Ok(x)
    }

    /// Runs the blocks up to `deepest` (the deepest tap, from `check_taps`) over the batch's
    /// tokens packed row after row (no padding); returns per tap the pooled (batch, hidden)
    /// vectors, row-major. Leading tokens that the batch's sequences share (a prompt's
    /// template) are run once, or taken from an earlier batch's run (`prefix.rs`).
    fn forward(
        &self,
        batch: &[&[u32]],
        mean: &[Range<usize>],
        taps: &[Tap],
        pooling: Pooling,
        deepest: usize,
    ) -> Result<Vec<Vec<f32>>> {
        // A kept run serves any batch that begins with it, a batch of one text too (a long
        // template leaves room for one text a batch); a new run is made for two texts or more.
        let shared = if self.shares_leading_tokens(taps) {
            let common = &batch[0][..worth_sharing(batch)];
            match self.shared.find(common) {
                Some(found) => Some(found),
                None if batch.len() >= 2 && !common.is_empty() => {
                    let made = std::sync::Arc::new(self.run_prefix(common)?);
                    self.shared.keep(made.clone());
                    Some(made)
                }
                None => None,
            }
        } else {
            None
        };
        match shared {
            Some(prefix) => {
                let own: Vec<&[u32]> = batch.iter().map(|s| &s[prefix.len()..]).collect();
                self.run(
                    &own,
                    Some(prefix.as_ref()),
                    mean,
                    taps,
                    pooling,
                    deepest,
                    None,
                )
            }
            None => self.run(batch, None, mean, taps, pooling, deepest, None),
        }
    }

    /// Runs `ids` through every block on their own, keeping what later sequences that begin
    /// with them need: each block's q, k and v rows and the states every tap reads.
    fn run_prefix(&self, ids: &[u32]) -> Result<SharedPrefix> {
        let mut prefix = SharedPrefix {
            ids: ids.to_vec(),
            qkv: Vec::with_capacity(self.cfg.n_layers),
            states: Vec::with_capacity(self.cfg.n_layers + 2),
        };
        self.run(
            &[ids],
            None,
            std::slice::from_ref(&(0..ids.len())),
            &[],
            Pooling::Mean,
            self.cfg.n_layers,
            Some(&mut prefix),
        )?;
        Ok(prefix)
    }

    /// The blocks up to `deepest` over the sequences `batch`, each after `shared`'s tokens
    /// when given (`mean` then counts those tokens too: spans are over whole sequences).
    /// `keep`: a prefix run's own, which gets the states and q, k, v rows (all blocks deep).
    /// States are pooled as soon as they are produced, so no layer's full states are kept.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        batch: &[&[u32]],
        shared: Option<&SharedPrefix>,
        mean: &[Range<usize>],
        taps: &[Tap],
        pooling: Pooling,
        deepest: usize,
        mut keep: Option<&mut SharedPrefix>,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let before = shared.map_or(0, SharedPrefix::len);
        let own: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        // Whole sequences, the shared tokens included.
        let lens: Vec<usize> = own.iter().map(|l| before + l).collect();
        let t = *lens.iter().max().unwrap_or(&0);
        let mut x = self.embeddings(batch, &own, t)?;
        let rows = x.len() / c.hidden;
        let keeping = keep.is_some();

        let mut out: Vec<Option<Vec<f32>>> = vec![None; taps.len()];
        // Pools `states` (the state `at` of `states`' numbering in SharedPrefix) once into the
        // slot of every tap that `wants` them; a prefix run keeps them instead.
        let mut record = |out: &mut [Option<Vec<f32>>],
                          wants: &dyn Fn(Tap) -> bool,
                          at: usize,
                          states: &[f32]| {
            if let Some(keep) = keep.as_deref_mut() {
                debug_assert_eq!(keep.states.len(), at);
                keep.states.push(states.to_vec());
            }
            let before_rows = shared.map_or(&[][..], |s| s.states[at].as_slice());
            fill_taps(out, taps, wants, || {
                pool_after(before_rows, states, &lens, mean, c.hidden, pooling)
            })
        };
        // HF's last hidden_states entry is after the final norm: Layer(n) == FinalNorm.
        let after_final_norm = |tap: Tap| tap == Tap::FinalNorm || tap == Tap::Layer(c.n_layers);
        let after_block =
            |layer: usize| move |tap: Tap| tap == Tap::Layer(layer) && layer < c.n_layers;
        record(&mut out, &after_block(0), 0, &x);

        // RoPE tables, one per distinct base.
        let mut ropes: Vec<(f32, Rope)> = Vec::new();
        for l in 0..deepest {
            let th = c.rope_theta[l];
            if !ropes.iter().any(|(x, _)| *x == th) {
                ropes.push((th, Rope::new(th, c.rotary_dim, t)));
            }
        }

        let shape = self.attention_shape();
        // Each residual add is fused with the norm that reads its result (the block's ffn_norm,
        // the next block's attn_norm), so `h` is always the normed input of the next step.
        let mut h = match self.blocks.first() {
            Some(blk) if deepest > 0 => self.norm(&x, &blk.attn_norm),
            _ => Vec::new(),
        };
        let mut kept_qkv = Vec::new();
        for (l, blk) in self.blocks.iter().enumerate().take(deepest) {
            let rope = &ropes
                .iter()
                .find(|(x, _)| *x == c.rope_theta[l])
                .expect("rope")
                .1;
            let shared_qkv = shared.map(|s| s.qkv[l].as_slice());
            let keep_qkv = keeping.then_some(&mut kept_qkv);
            let mut a = self.attention(
                blk,
                &h,
                &own,
                &shape,
                rope,
                c.window[l],
                shared_qkv,
                keep_qkv,
            )?;
            if let Some(n) = &blk.post_attn_norm {
                a = self.norm(&a, n);
            }
            // A parallel block's MLP reads the same normed input as its attention.
            let h_mlp = match &blk.ffn_norm {
                None => {
                    Rows::best().add_assign(&mut x, &a);
                    h
                }
                Some(n) => self.add_norm(&mut x, &a, n),
            };
            let mut m = self.mlp(blk, &h_mlp, rows)?;
            if let Some(n) = &blk.post_ffn_norm {
                m = self.norm(&m, n);
            }
            h = match self.blocks.get(l + 1) {
                Some(next) if l + 1 < deepest => self.add_norm(&mut x, &m, &next.attn_norm),
                _ => {
                    Rows::best().add_assign(&mut x, &m);
                    Vec::new()
                }
            };
            record(&mut out, &after_block(l + 1), l + 1, &x);
        }
        let wants_sentence = taps.contains(&Tap::Sentence);
        if deepest == c.n_layers
            && (keeping || wants_sentence || taps.iter().any(|&t| after_final_norm(t)))
        {
            let normed = self.norm(&x, &self.final_norm);
            record(&mut out, &after_final_norm, c.n_layers + 1, &normed);
            if let (true, Some(head)) = (wants_sentence, &self.sentence) {
                let v = head.forward(&normed, &lens, c.hidden)?;
                fill_taps(&mut out, taps, |t| t == Tap::Sentence, || v.clone());
            }
        }
        if let Some(keep) = keep {
            keep.qkv = kept_qkv;
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| Error::compute("decoder forward", "a tap was not produced")))
            .collect()
    }
}

/// Whether batches share their leading tokens' run: unless `LLMEMBED_NO_SHARED_PREFIX` is set
/// (to measure what sharing saves; the vectors are the same bits either way).
fn shares_prefixes() -> bool {
    static SHARES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SHARES.get_or_init(|| std::env::var_os("LLMEMBED_NO_SHARED_PREFIX").is_none())
}

/// Puts the vectors `make` returns (called once, and only if some tap wants them) into the slot
/// of every tap in `taps` that `wants` them.
pub(crate) fn fill_taps(
    out: &mut [Option<Vec<f32>>],
    taps: &[Tap],
    wants: impl Fn(Tap) -> bool,
    mut make: impl FnMut() -> Vec<f32>,
) {
    let mut made: Option<Vec<f32>> = None;
    for (slot, &tap) in out.iter_mut().zip(taps) {
        if wants(tap) {
            *slot = Some(made.get_or_insert_with(&mut make).clone());
        }
    }
}

/// Pools packed (tokens, h) row-major states over each sequence's tokens: (sequences, h). Mean
/// averages the tokens `mean[i]` of sequence `i` (all of them unless a prompt says otherwise).
pub(crate) fn pool(
    states: &[f32],
    lens: &[usize],
    mean: &[Range<usize>],
    h: usize,
    pooling: Pooling,
) -> Vec<f32> {
    pool_after(&[], states, lens, mean, h, pooling)
}

/// [`pool`] of sequences that all begin with the rows `shared` (a prefix run's states, not in
/// `states`; `lens` and `mean` count them): a sequence's token `i` is `shared`'s row `i` for the
/// first ones, then its own rows. The rows are summed in the same order as [`pool`] of the
/// whole sequences, so the result has the same bits.
fn pool_after(
    shared: &[f32],
    states: &[f32],
    lens: &[usize],
    mean: &[Range<usize>],
    h: usize,
    pooling: Pooling,
) -> Vec<f32> {
    let before = shared.len() / h;
    let starts: Vec<usize> = lens
        .iter()
        .scan(0, |at, &len| {
            let start = *at;
            *at += len - before;
            Some(start)
        })
        .collect();
    let mut out = vec![0f32; lens.len() * h];
    out.par_chunks_mut(h)
        .zip(starts.par_iter().zip(lens).zip(mean))
        .for_each(|(dst, ((&start, &len), span))| {
            let row = |i: usize| match i.checked_sub(before) {
                None => &shared[i * h..(i + 1) * h],
                Some(own) => &states[(start + own) * h..(start + own + 1) * h],
            };
            match pooling {
                Pooling::Mean => {
                    let rows: Vec<&[f32]> = span.clone().map(row).collect();
                    Rows::best().mean(&rows, dst);
                }
                Pooling::Last => dst.copy_from_slice(row(len - 1)),
                Pooling::First | Pooling::Pooler => dst.copy_from_slice(row(0)),
            }
        });
    out
}

impl Embedder for Decoder {
    fn num_layers(&self) -> usize {
        self.cfg.n_layers
    }

    fn hidden_size(&self) -> usize {
        self.cfg.hidden
    }

    fn supports(&self, tap: Tap) -> bool {
        match tap {
            Tap::Layer(k) => k <= self.cfg.n_layers,
            Tap::FinalNorm => true,
            Tap::Pooler => false,
            Tap::Sentence => self.sentence.is_some(),
        }
    }

    fn tokenize(&self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, bool)> {
        self.tokenizer.encode(text, max_tokens)
    }

    fn embed(&self, batch: &[&[u32]], taps: &[Tap], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        let whole: Vec<Range<usize>> = batch.iter().map(|s| 0..s.len()).collect();
        self.embed_spans(batch, &whole, taps, pooling)
    }

    fn encode_with_offsets(&self, text: &str) -> Result<IdsOffsets> {
        self.tokenizer.encode_with_offsets(text)
    }

    fn embed_spans(
        &self,
        batch: &[&[u32]],
        mean: &[Range<usize>],
        taps: &[Tap],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>> {
        let deepest = check_taps(taps, pooling, self.cfg.n_layers, self.cfg.arch)?;
        if self.sentence.is_none() && taps.contains(&Tap::Sentence) {
            return Err(Error::param(
                "taps",
                format!(
                    "{} has no sentence embedding (no sentence-transformers modules.json)",
                    self.cfg.arch
                ),
            ));
        }
        if batch.is_empty() {
            return Ok(vec![Vec::new(); taps.len()]);
        }
        // An empty sequence is the forward's error (it names the sequence), not the span's.
        if batch.iter().all(|s| !s.is_empty()) {
            check_spans(batch, mean)?;
        }
        self.forward(batch, mean, taps, pooling, deepest)
    }

    fn shared_prefixes(&self) -> Vec<usize> {
        self.shared.lengths()
    }

    fn shares_leading_tokens(&self, taps: &[Tap]) -> bool {
        // Only a causal model's shared tokens are the same in every text; EmbeddingGemma's
        // sentence head pools every token of the last layer (kept simple: not shared).
        self.cfg.causal && !taps.contains(&Tap::Sentence) && shares_prefixes()
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "{arch}(layers={l},hidden={h},heads={nh},kv_heads={nkv},head_dim={hd},ffn={f},eps={eps:e},act={act:?},rope={rs:?},rope_theta={th:?},window={w:?},attn_scale={sc},embed_scale={es:?},compute={dt:?},weights={wn},tokenizer={tk},bos={bos:?}{extra},taps=hf_hidden_states(layer_n=final_norm))",
            arch = c.arch,
            l = c.n_layers,
            h = c.hidden,
            nh = c.n_heads,
            nkv = c.n_kv_heads,
            hd = c.head_dim,
            f = c.ffn,
            eps = c.eps,
            act = c.activation,
            rs = c.rope_style,
            th = {
                let mut v = c.rope_theta.clone();
                v.dedup();
                v
            },
            w = {
                let mut v = c.window.clone();
                v.dedup();
                v
            },
            sc = c.attn_scale,
            es = c.embed_scale,
            dt = self.compute,
            wn = self.weights_note,
            tk = self.tokenizer.kind,
            bos = self.tokenizer.add_bos,
            extra = {
                // The forward's arithmetic (packed rows, the fused kernels); then what only
                // some architectures have.
                let mut x = format!(
                    ",engine=packed-rows-v3,matmul={}",
                    self.blocks
                        .first()
                        .map_or("none".into(), |b| b.qkv.w.kernel())
                );
                if c.rotary_dim != c.head_dim {
                    x += &format!(",rotary_dim={}", c.rotary_dim);
                }
                if matches!(self.final_norm, Norm::Layer { .. }) {
                    x += ",norm=Layer";
                }
                if c.parallel_block {
                    x += ",parallel_block";
                }
                if !c.causal {
                    x += ",attention=bidirectional";
                }
                if let Some(head) = &self.sentence {
                    x += &format!(",sentence={}", head.note);
                }
                x
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_up_biases_are_placed_as_the_kernels_interleave_them() {
        for ffn in [7, 32, 45, 64] {
            let bias: Vec<f32> = (0..2 * ffn).map(|i| i as f32 + 1.0).collect();
            let placed = Columns::GateUp { ffn }
                .place(bias.clone(), 2 * ffn, gated_width(ffn))
                .unwrap();
            let interleaved = llmembed_kernels::interleave_gate_up(&bias, 1, ffn);
            assert_eq!(placed, interleaved, "ffn {ffn}");
        }
        let e = Columns::GateUp { ffn: 8 }
            .place(vec![0.0; 15], 16, gated_width(8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("15 values for 16 outputs"), "{e}");
        assert_eq!(
            Columns::InOrder.place(vec![1.0, 2.0], 2, 2).unwrap(),
            vec![1.0, 2.0]
        );
    }
}
