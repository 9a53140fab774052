//! The decoder-only transformer shared by every decoder architecture (llama, gemma3 from GGUF;
//! llama, qwen2, qwen3, phi from safetensors), written to follow HF's `modeling_llama.py` /
//! `modeling_gemma3.py` / `modeling_phi.py` step by step, with per-layer taps and right padding.
//! Weights are converted to the compute dtype once, at load, and the matmuls are dense. The
//! architectures differ only in data: norm kind (RMS or LayerNorm), optional biases, q/k norms,
//! sandwich norms (gemma), a gated or plain MLP, a parallel attention+MLP block (phi), partial
//! rotary embeddings (phi) and per-layer RoPE bases and sliding windows (gemma).
//!
//! Batching: sequences are right-padded to the batch's longest and masked with an additive mask
//! (causal, key padding, and the sliding window where a layer has one). With right padding a real
//! token only ever sees real tokens at the same positions it would see alone, so a text's
//! vectors do not depend on the batch it is in (tested in `tests/decoder_padding.rs`).

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use llmembed_core::{Error, Result};

use super::tokenizer::DecoderTokenizer;
use super::{ComputeDtype, Embedder, Pooling, Tap, check_taps};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NormKind {
    /// RMSNorm computed in f32 (llama, qwen, gemma).
    Rms,
    /// LayerNorm with weight and bias (phi).
    Layer,
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
    pub norm: NormKind,
    /// Phi: `x + attn(ln(x)) + mlp(ln(x))` with one norm, instead of two residual steps.
    pub parallel_block: bool,
    pub attn_scale: f64,
    /// Per layer: the RoPE base and the sliding window (None = global attention).
    pub rope_theta: Vec<f32>,
    pub window: Vec<Option<usize>>,
    pub context_length: usize,
}

/// A norm's parameters; the kind is the model's (`Config::norm`).
pub(crate) struct Norm {
    pub weight: Tensor,
    /// LayerNorm only.
    pub bias: Option<Tensor>,
}

impl From<Tensor> for Norm {
    fn from(weight: Tensor) -> Self {
        Norm { weight, bias: None }
    }
}

/// A dense layer `x @ w + b`, `w` stored (in, out).
pub(crate) struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.w)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

pub(crate) enum Mlp {
    /// `down(act(gate(x)) * up(x))`: gate and up fused into one (hidden, 2 * ffn) matrix.
    Gated { gate_up: Linear, down: Linear },
    /// `down(act(up(x)))` (phi's fc1 / fc2).
    Plain { up: Linear, down: Linear },
}

pub(crate) struct Block {
    pub attn_norm: Norm,
    /// (hidden, q_dim + 2 * kv_dim): q, k, v projections fused.
    pub qkv: Linear,
    /// Per-head RMSNorm of q and k before RoPE (gemma3, qwen3).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
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

pub(crate) struct Decoder {
    pub cfg: Config,
    pub embed: Embeddings,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    pub tokenizer: DecoderTokenizer,
    pub dtype: DType,
    pub weights_note: String,
}

fn cerr(op: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::compute(op, e)
}

/// `ws` are (out, in) as PyTorch stores them, fused along `out`; returns the (in, sum of out)
/// matrix in the compute dtype.
pub(crate) fn linear_t(ws: &[Tensor], dtype: DType) -> Result<Tensor> {
    let w = if ws.len() == 1 {
        ws[0].clone()
    } else {
        Tensor::cat(ws, 0).map_err(cerr("fuse projection weights"))?
    };
    w.t()
        .and_then(|t| t.contiguous())
        .and_then(|t| t.to_dtype(dtype))
        .map_err(cerr("transpose weight"))
}

/// A bias-free dense layer from (out, in) weights fused along `out`.
pub(crate) fn linear(ws: &[Tensor], dtype: DType) -> Result<Linear> {
    Ok(Linear {
        w: linear_t(ws, dtype)?,
        b: None,
    })
}

/// Biases fused like their weights, in the compute dtype.
pub(crate) fn bias(bs: &[Tensor], dtype: DType) -> Result<Tensor> {
    Tensor::cat(bs, 0)
        .and_then(|b| b.to_dtype(dtype))
        .map_err(cerr("fuse biases"))
}

impl Decoder {
    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        // HF computes RMSNorm in f32 whatever the activation dtype.
        let x32 = x.to_dtype(DType::F32).map_err(cerr("rms_norm"))?;
        let y = candle_nn::ops::rms_norm(&x32, w, self.cfg.eps as f32).map_err(cerr("rms_norm"))?;
        y.to_dtype(self.dtype).map_err(cerr("rms_norm"))
    }

    fn norm(&self, x: &Tensor, n: &Norm) -> Result<Tensor> {
        match self.cfg.norm {
            NormKind::Rms => self.rms(x, &n.weight),
            NormKind::Layer => {
                // HF's LayerNorm runs in the activation dtype; f32 here as for RMSNorm.
                let e = cerr("layer_norm");
                let x32 = x.to_dtype(DType::F32).map_err(&e)?;
                let zeros;
                let b = match &n.bias {
                    Some(b) => b,
                    None => {
                        zeros = n.weight.zeros_like().map_err(&e)?;
                        &zeros
                    }
                };
                let y = candle_nn::ops::layer_norm(&x32, &n.weight, b, self.cfg.eps as f32)
                    .map_err(&e)?;
                y.to_dtype(self.dtype).map_err(&e)
            }
        }
    }

    /// cos/sin tables (t, rotary_dim/2) for one RoPE base, as HF computes them (f32 inv_freq).
    fn rope_tables(&self, theta: f32, t: usize) -> Result<(Tensor, Tensor)> {
        let d = self.cfg.rotary_dim;
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / d as f32))
            .collect();
        let mut cos = Vec::with_capacity(t * d / 2);
        let mut sin = Vec::with_capacity(t * d / 2);
        for p in 0..t {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (t, d / 2), &Device::Cpu)
            .and_then(|x| x.to_dtype(self.dtype))
            .map_err(cerr("rope tables"))?;
        let sin = Tensor::from_vec(sin, (t, d / 2), &Device::Cpu)
            .and_then(|x| x.to_dtype(self.dtype))
            .map_err(cerr("rope tables"))?;
        Ok((cos, sin))
    }

    /// Additive mask (b, 1, t, t): 0 where query i may attend key j, -inf elsewhere.
    fn mask(&self, lens: &[usize], t: usize, window: Option<usize>) -> Result<Tensor> {
        let b = lens.len();
        let mut m = vec![f32::NEG_INFINITY; b * t * t];
        for (s, &len) in lens.iter().enumerate() {
            for i in 0..t {
                for j in 0..=i {
                    let key_ok = j < len || j == i; // pad queries keep their own key: no NaN
                    let win_ok = window.is_none_or(|w| i - j < w);
                    if key_ok && win_ok {
                        m[(s * t + i) * t + j] = 0.0;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, t, t), &Device::Cpu)
            .and_then(|x| x.to_dtype(self.dtype))
            .map_err(cerr("attention mask"))
    }

    fn attention(
        &self,
        blk: &Block,
        h: &Tensor,
        b: usize,
        t: usize,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let e = cerr("attention");
        let qkv = blk.qkv.forward(h).map_err(&e)?;
        let q = qkv.narrow(1, 0, nh * hd).map_err(&e)?;
        let k = qkv.narrow(1, nh * hd, nkv * hd).map_err(&e)?;
        let v = qkv.narrow(1, (nh + nkv) * hd, nkv * hd).map_err(&e)?;
        let mut q = q.reshape((b, t, nh, hd)).map_err(&e)?;
        let mut k = k.reshape((b, t, nkv, hd)).map_err(&e)?;
        let v = v.reshape((b, t, nkv, hd)).map_err(&e)?;
        if let Some(w) = &blk.q_norm {
            q = self.rms(&q.contiguous().map_err(&e)?, w)?;
        }
        if let Some(w) = &blk.k_norm {
            k = self.rms(&k.contiguous().map_err(&e)?, w)?;
        }
        let q = q.transpose(1, 2).and_then(|x| x.contiguous()).map_err(&e)?;
        let k = k.transpose(1, 2).and_then(|x| x.contiguous()).map_err(&e)?;
        let v = v.transpose(1, 2).and_then(|x| x.contiguous()).map_err(&e)?;
        let q = self.rotate(&q, rope).map_err(&e)?;
        let k = self.rotate(&k, rope).map_err(&e)?;
        // Grouped-query attention: kv head g serves query heads g*G .. (g+1)*G (HF repeat_kv).
        let groups = nh / nkv;
        let (k, v) = if groups == 1 {
            (k, v)
        } else {
            let rep = |x: Tensor| {
                x.unsqueeze(2)
                    .and_then(|x| x.expand((b, nkv, groups, t, hd)))
                    .and_then(|x| x.reshape((b, nh, t, hd)))
            };
            (rep(k).map_err(&e)?, rep(v).map_err(&e)?)
        };
        let scores = q
            .matmul(&k.t().map_err(&e)?)
            .and_then(|s| s.affine(c.attn_scale, 0.0))
            .and_then(|s| s.broadcast_add(mask))
            .map_err(&e)?;
        let probs = if self.dtype == DType::F32 {
            candle_nn::ops::softmax_last_dim(&scores).map_err(&e)?
        } else {
            // HF upcasts the softmax to f32.
            scores
                .to_dtype(DType::F32)
                .and_then(|s| candle_nn::ops::softmax_last_dim(&s))
                .and_then(|s| s.to_dtype(self.dtype))
                .map_err(&e)?
        };
        let out = probs.matmul(&v).map_err(&e)?; // (b, nh, t, hd)
        out.transpose(1, 2)
            .and_then(|x| x.reshape((b * t, nh * hd)))
            .and_then(|x| blk.o.forward(&x))
            .map_err(&e)
    }

    /// RoPE on the first `rotary_dim` dims of each (b, heads, t, head_dim) head.
    fn rotate(&self, x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> candle_core::Result<Tensor> {
        let (hd, rd) = (self.cfg.head_dim, self.cfg.rotary_dim);
        let rot = |x: &Tensor| match self.cfg.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin),
            RopeStyle::Halves => candle_nn::rotary_emb::rope(x, cos, sin),
        };
        if rd == hd {
            return rot(x);
        }
        let head = rot(&x.narrow(3, 0, rd)?.contiguous()?)?;
        Tensor::cat(&[&head, &x.narrow(3, rd, hd - rd)?], 3)
    }

    fn act(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.cfg.activation {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::GeluTanh => x.gelu(),
        }
    }

    fn mlp(&self, blk: &Block, h: &Tensor) -> Result<Tensor> {
        let e = cerr("mlp");
        match &blk.mlp {
            Mlp::Gated { gate_up, down } => {
                let f = self.cfg.ffn;
                let gu = gate_up.forward(h).map_err(&e)?;
                let g = gu.narrow(1, 0, f).map_err(&e)?;
                let u = gu.narrow(1, f, f).map_err(&e)?;
                let g = self.act(&g).map_err(&e)?;
                (g * u).and_then(|a| down.forward(&a)).map_err(&e)
            }
            Mlp::Plain { up, down } => up
                .forward(h)
                .and_then(|a| self.act(&a))
                .and_then(|a| down.forward(&a))
                .map_err(&e),
        }
    }

    /// Runs the blocks up to the deepest tap; returns (b*t, hidden) f32 states per tap.
    fn forward(&self, batch: &[&[u32]], taps: &[Tap]) -> Result<(Vec<Vec<f32>>, usize)> {
        let c = &self.cfg;
        let deepest = check_taps(taps, Pooling::Mean, c.n_layers, c.arch)?;
        let b = batch.len();
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let t = *lens.iter().max().unwrap_or(&0);
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
        let mut ids = Vec::with_capacity(b * t);
        for s in batch {
            for &id in *s {
                if id as usize >= vocab {
                    return Err(Error::param(
                        "tokens",
                        format!("token id {id} outside the vocabulary of {vocab}"),
                    ));
                }
                ids.push(id);
            }
            ids.extend(std::iter::repeat_n(0u32, t - s.len()));
        }
        let e = cerr("decoder forward");
        let ids = Tensor::from_vec(ids, b * t, &Device::Cpu).map_err(&e)?;
        let mut x = self
            .embed
            .lookup(&ids)
            .map_err(cerr("embedding lookup"))?;
        if let Some(s) = c.embed_scale {
            x = (x * s as f64).map_err(&e)?;
        }
        x = x.to_dtype(self.dtype).map_err(&e)?;

        let mut out: Vec<Option<Vec<f32>>> = vec![None; taps.len()];
        let grab = |x: &Tensor| -> Result<Vec<f32>> {
            x.to_dtype(DType::F32)
                .and_then(|x| x.flatten_all())
                .and_then(|x| x.to_vec1::<f32>())
                .map_err(cerr("read hidden states"))
        };
        let record = |out: &mut Vec<Option<Vec<f32>>>, layer: usize, x: &Tensor| -> Result<()> {
            let mut cached: Option<Vec<f32>> = None;
            for (slot, tap) in out.iter_mut().zip(taps) {
                let hit = match *tap {
                    Tap::Layer(k) => k == layer && layer < c.n_layers,
                    _ => false,
                };
                if hit {
                    if cached.is_none() {
                        cached = Some(grab(x)?);
                    }
                    *slot = cached.clone();
                }
            }
            Ok(())
        };
        record(&mut out, 0, &x)?;

        // RoPE tables and masks, one per distinct base / window.
        let mut ropes: Vec<(f32, (Tensor, Tensor))> = Vec::new();
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for l in 0..deepest {
            let th = c.rope_theta[l];
            if !ropes.iter().any(|(x, _)| *x == th) {
                ropes.push((th, self.rope_tables(th, t)?));
            }
            let w = c.window[l].filter(|&w| w < t);
            if !masks.iter().any(|(x, _)| *x == w) {
                masks.push((w, self.mask(&lens, t, w)?));
            }
        }

        for (l, blk) in self.blocks.iter().enumerate().take(deepest) {
            let rope = &ropes
                .iter()
                .find(|(x, _)| *x == c.rope_theta[l])
                .expect("rope")
                .1;
            let w = c.window[l].filter(|&w| w < t);
            let mask = &masks.iter().find(|(x, _)| *x == w).expect("mask").1;
            let h = self.norm(&x, &blk.attn_norm)?;
            let mut a = self.attention(blk, &h, b, t, rope, mask)?;
            if let Some(n) = &blk.post_attn_norm {
                a = self.norm(&a, n)?;
            }
            let h = match &blk.ffn_norm {
                // Parallel block: the MLP reads the same normed input as attention.
                None => h,
                Some(n) => {
                    x = (x + &a).map_err(&e)?;
                    self.norm(&x, n)?
                }
            };
            let mut m = self.mlp(blk, &h)?;
            if let Some(n) = &blk.post_ffn_norm {
                m = self.norm(&m, n)?;
            }
            x = if blk.ffn_norm.is_none() {
                (x + a).and_then(|x| x + m).map_err(&e)?
            } else {
                (x + m).map_err(&e)?
            };
            record(&mut out, l + 1, &x)?;
        }
        if deepest == c.n_layers {
            // HF's last hidden_states entry is after the final norm: Layer(n) == FinalNorm.
            let needs = taps
                .iter()
                .any(|tp| matches!(tp, Tap::FinalNorm) || *tp == Tap::Layer(c.n_layers));
            if needs {
                let y = grab(&self.norm(&x, &self.final_norm)?)?;
                for (slot, tap) in out.iter_mut().zip(taps) {
                    if matches!(tap, Tap::FinalNorm) || *tap == Tap::Layer(c.n_layers) {
                        *slot = Some(y.clone());
                    }
                }
            }
        }
        let out = out
            .into_iter()
            .map(|o| o.ok_or_else(|| Error::compute("decoder forward", "a tap was not produced")))
            .collect::<Result<Vec<_>>>()?;
        Ok((out, t))
    }
}

/// Pools a (b*t, h) row-major state over each sequence's real tokens.
pub(crate) fn pool(
    states: &[f32],
    lens: &[usize],
    t: usize,
    h: usize,
    pooling: Pooling,
) -> Vec<f32> {
    let mut out = vec![0f32; lens.len() * h];
    for (s, &len) in lens.iter().enumerate() {
        let row = |i: usize| &states[(s * t + i) * h..(s * t + i + 1) * h];
        let dst = &mut out[s * h..(s + 1) * h];
        match pooling {
            Pooling::Mean => {
                let mut acc = vec![0f64; h];
                for i in 0..len {
                    for (a, v) in acc.iter_mut().zip(row(i)) {
                        *a += *v as f64;
                    }
                }
                for (d, a) in dst.iter_mut().zip(&acc) {
                    *d = (*a / len as f64) as f32;
                }
            }
            Pooling::Last => dst.copy_from_slice(row(len - 1)),
            Pooling::First | Pooling::Pooler => dst.copy_from_slice(row(0)),
        }
    }
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
        }
    }

    fn tokenize(&self, text: &str, max_tokens: usize) -> Result<(Vec<u32>, bool)> {
        self.tokenizer.encode(text, max_tokens)
    }

    fn embed(&self, batch: &[&[u32]], taps: &[Tap], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        check_taps(taps, pooling, self.cfg.n_layers, self.cfg.arch)?;
        if batch.is_empty() {
            return Ok(vec![Vec::new(); taps.len()]);
        }
        let (states, t) = self.forward(batch, taps)?;
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        Ok(states
            .iter()
            .map(|s| pool(s, &lens, t, self.cfg.hidden, pooling))
            .collect())
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
            dt = self.dtype,
            wn = self.weights_note,
            tk = self.tokenizer.kind,
            bos = self.tokenizer.add_bos,
            extra = {
                // Only what differs from the GGUF architectures, so their fingerprints (and
                // the texts stored under them) stay valid.
                let mut x = String::new();
                if c.rotary_dim != c.head_dim {
                    x += &format!(",rotary_dim={}", c.rotary_dim);
                }
                if c.norm != NormKind::Rms {
                    x += &format!(",norm={:?}", c.norm);
                }
                if c.parallel_block {
                    x += ",parallel_block";
                }
                x
            },
        )
    }
}

pub(crate) fn compute_dtype(c: ComputeDtype) -> DType {
    match c {
        ComputeDtype::F32 => DType::F32,
        ComputeDtype::Bf16 => DType::BF16,
    }
}
