//! Decoders from Hugging Face checkpoints: `config.json` + safetensors (one file, or shards
//! listed by `model.safetensors.index.json`) + `tokenizer.json`. Supported `model_type`s, each
//! mapped onto the shared [`Decoder`] after its HF modeling file:
//! - `llama` / `mistral` (LLaMA-2, SmolLM2, Mistral): RMSNorm, SiLU-gated MLP, optional
//!   `attention_bias` / `mlp_bias`, Mistral's `sliding_window`;
//! - `qwen2` (Qwen2.5): as llama, with biases on q, k and v;
//! - `qwen3`: as llama, with a per-head RMSNorm on q and k and an explicit `head_dim`;
//! - `phi` (Phi-2): LayerNorm with bias, one norm feeding attention and MLP in parallel, biases
//!   everywhere, a plain GELU(tanh) MLP, RoPE on the first `partial_rotary_factor` of each head;
//! - `gemma3_text` (EmbeddingGemma): Gemma-3's blocks (norms multiplying by `1 + w`, sandwich
//!   norms, q/k norms, scaled embeddings, local and global layers), with
//!   `use_bidirectional_attention` an encoder whose tokens see both sides; its
//!   sentence-transformers modules (`sentence.rs`) give `Tap::Sentence`.
//!
//! HF stores q/k unpermuted, so RoPE rotates halves (`rotate_half`). Weights are converted to
//! the compute dtype at load, whatever dtype the file has (f16/bf16/f32), as transformers does
//! with `torch_dtype=float32`. Anything the code does not implement (rope scaling, sliding
//! windows on qwen, phi's q/k LayerNorm) is an error naming the config field, never ignored.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use llmembed_core::{Error, Result};
use serde::Deserialize;
use serde_json::Value;

use super::arch::{Arch, Traits, Window};
use super::decoder::{
    Activation, Block, Config, Decoder, Embeddings, Linear, Mlp, Norm, RopeStyle, load_blocks,
    vector,
};
use super::errors::{candle_message, file_error};
use super::safetensors::{Shards, check_safetensors, weight_files};
use super::sentence;
use super::tokenizer::DecoderTokenizer;
use crate::embedder::{ComputeDtype, LoadSpec};

#[derive(Debug, Deserialize)]
struct HfConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    intermediate_size: usize,
    /// Gemma names it `hidden_activation`.
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    hidden_activation: Option<String>,
    max_position_embeddings: usize,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    layer_norm_eps: Option<f64>,
    /// transformers < 5 writes `rope_theta` / `rope_scaling` / `partial_rotary_factor` at the
    /// top level; transformers 5 groups them in `rope_parameters`.
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    qk_layernorm: Option<bool>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    // Gemma-3 text only.
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    use_bidirectional_attention: Option<bool>,
}

struct Weights {
    st: Shards,
    prefix: &'static str,
    files: String,
}

/// How a dense layer is made from its tensors and biases: [`Linear::new`] or [`Linear::gated`].
type MakeLinear = fn(Vec<Tensor>, Option<&[Tensor]>, ComputeDtype) -> Result<Linear>;

impl Weights {
    fn get(&self, name: &str) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        self.st
            .load(&full, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| {
                Error::compute(
                    "read safetensors tensor",
                    format!("{}: `{full}`: {}", self.files, candle_message(&e)),
                )
            })
    }

    fn has(&self, name: &str) -> bool {
        self.st.has(&format!("{}{name}", self.prefix))
    }

    /// `{name}.{what}` for each of `names`.
    fn all(&self, names: &[String], what: &str) -> Result<Vec<Tensor>> {
        names
            .iter()
            .map(|n| self.get(&format!("{n}.{what}")))
            .collect()
    }

    /// The dense layer of `names` fused along their outputs, with their biases when `bias`.
    fn linear(&self, names: &[String], bias: bool, compute: ComputeDtype) -> Result<Linear> {
        self.fused(names, bias, compute, Linear::new)
    }

    /// The tensors of `names` (and their biases when `bias`) made into a layer by `make`
    /// ([`Linear::new`], or [`Linear::gated`] for an MLP's gate and up).
    fn fused(
        &self,
        names: &[String],
        bias: bool,
        compute: ComputeDtype,
        make: MakeLinear,
    ) -> Result<Linear> {
        let bs = if bias {
            Some(self.all(names, "bias")?)
        } else {
            None
        };
        make(self.all(names, "weight")?, bs.as_deref(), compute)
    }

    fn norm(&self, name: &str, traits: &Traits) -> Result<Norm> {
        let weight = self.get(&format!("{name}.weight"))?;
        if traits.layer_norm {
            Norm::layer(&weight, &self.get(&format!("{name}.bias"))?)
        } else {
            Norm::rms(&self.rms_weight(weight, traits)?)
        }
    }

    /// Gemma's RMSNorm multiplies by `1 + w` (computed in f32, as HF does); others by `w`.
    fn rms_weight(&self, w: Tensor, traits: &Traits) -> Result<Tensor> {
        if !traits.sandwich_norms {
            return Ok(w);
        }
        w.affine(1.0, 1.0).map_err(|e| {
            Error::compute(
                "read safetensors tensor",
                format!("{}: {}", self.files, candle_message(&e)),
            )
        })
    }
}

/// The config values the decoder needs, checked.
struct Shape {
    hidden: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    theta: f32,
    eps: f64,
    activation: Activation,
    window: Option<usize>,
}

/// Loads a decoder whose `config.json` (already read, as the text `config`) names `arch`.
pub(crate) fn load(spec: &LoadSpec, arch: Arch, config: &str) -> Result<Decoder> {
    let config_path = spec.config_path();
    // From the text, so that a bad value's error says where it is (line and column).
    let c: HfConfig = serde_json::from_str(config)
        .map_err(|e| file_error(&config_path, format!("not a decoder config: {e}")))?;
    let traits = arch.traits();
    let shape = check_config(&c, arch, &config_path)?;
    // The small files first, so that a bad one is named before the weights are read.
    let tokenizer = DecoderTokenizer::from_file(&spec.tokenizer_path())?;
    let w = read_weights(&spec.weights)?;
    let file_dtype =
        w.st.dtype(&format!("{}embed_tokens.weight", w.prefix))
            .map_err(|e| {
                Error::compute(
                    "read safetensors tensor",
                    format!("{}: {}", w.files, candle_message(&e)),
                )
            })?;
    let blocks = load_blocks(c.num_hidden_layers, |l| {
        block(&w, l, &c, &traits, spec.compute)
    })?;
    let final_norm = if traits.parallel_block {
        "final_layernorm"
    } else {
        "norm"
    };
    let final_norm = w.norm(final_norm, &traits)?;
    let embed = Embeddings::Dense(w.get("embed_tokens.weight")?);
    let n = c.num_hidden_layers;
    let layers = if arch == Arch::Gemma3Text {
        gemma3_layers(&c, &shape, &config_path)?
    } else {
        Layers {
            rope_theta: vec![shape.theta; n],
            window: vec![shape.window; n],
            attn_scale: 1.0 / (shape.head_dim as f64).sqrt(),
            causal: true,
        }
    };
    let cfg = Config {
        arch: arch.name(),
        hidden: shape.hidden,
        n_layers: n,
        n_heads: shape.n_heads,
        n_kv_heads: shape.n_kv_heads,
        head_dim: shape.head_dim,
        ffn: c.intermediate_size,
        eps: shape.eps,
        // HF: Gemma3TextScaledWordEmbedding, `hidden_size ** 0.5` as an f32 tensor.
        embed_scale: traits
            .embed_scale
            .then(|| (shape.hidden as f64).sqrt() as f32),
        activation: shape.activation,
        rope_style: RopeStyle::Halves,
        rotary_dim: shape.rotary_dim,
        parallel_block: traits.parallel_block,
        attn_scale: layers.attn_scale,
        rope_theta: layers.rope_theta,
        window: layers.window,
        context_length: c.max_position_embeddings,
        causal: layers.causal,
    };
    // EmbeddingGemma's sentence-transformers modules, when the checkpoint folder has them
    // (only there: the head was checked against sentence-transformers for this model).
    let sentence = if arch == Arch::Gemma3Text {
        sentence::load_head(spec, shape.hidden, spec.compute)?
    } else {
        None
    };
    Ok(Decoder {
        cfg,
        embed,
        blocks,
        final_norm,
        tokenizer,
        compute: spec.compute,
        weights_note: format!("safetensors({file_dtype})"),
        sentence,
        shared: Default::default(),
    })
}

/// Per-layer attention of a model: RoPE base, sliding window, scale, direction.
struct Layers {
    rope_theta: Vec<f32>,
    window: Vec<Option<usize>>,
    attn_scale: f64,
    causal: bool,
}

/// Gemma-3 text after HF `modeling_gemma3.py` / `configuration_gemma3.py`: `layer_types` (else
/// five sliding layers, then a full one) choose per layer the local RoPE base
/// (`rope_local_base_freq`) and the sliding window, or the global base (`rope_theta`) and full
/// attention; scores scaled by `query_pre_attn_scalar ** -0.5`. With
/// `use_bidirectional_attention` (EmbeddingGemma) every token sees both sides, and HF sets the
/// window to `sliding_window // 2 + 1` and masks `|i - j| < window`, which is the kernel's
/// bidirectional window of that size.
fn gemma3_layers(c: &HfConfig, shape: &Shape, config_path: &Path) -> Result<Layers> {
    let bad = |field: &str, msg: String| file_error(config_path, format!("field `{field}`: {msg}"));
    let n = c.num_hidden_layers;
    let bidirectional = c.use_bidirectional_attention.unwrap_or(false);
    let sliding = |l: usize| -> Result<bool> {
        match &c.layer_types {
            None => Ok(!(l + 1).is_multiple_of(6)),
            Some(t) if t.len() != n => Err(bad(
                "layer_types",
                format!("{} entries for {n} layers", t.len()),
            )),
            Some(t) => match t[l].as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(bad(
                    "layer_types",
                    format!("`{other}` is not supported (sliding_attention, full_attention)"),
                )),
            },
        }
    };
    let window = c
        .sliding_window
        .ok_or_else(|| bad("sliding_window", "missing".into()))?;
    let window = if bidirectional {
        window / 2 + 1
    } else {
        window
    };
    let local = c.rope_local_base_freq.unwrap_or(10_000.0) as f32;
    let scalar = c
        .query_pre_attn_scalar
        .ok_or_else(|| bad("query_pre_attn_scalar", "missing".into()))?;
    let mut layers = Layers {
        rope_theta: Vec::with_capacity(n),
        window: Vec::with_capacity(n),
        attn_scale: 1.0 / scalar.sqrt(),
        causal: !bidirectional,
    };
    for l in 0..n {
        let s = sliding(l)?;
        layers.rope_theta.push(if s { local } else { shape.theta });
        layers.window.push(s.then_some(window));
    }
    Ok(layers)
}

/// Checks the config against what the code implements (anything else is an error naming the
/// field) and derives the attention shape.
fn check_config(c: &HfConfig, arch: Arch, config_path: &Path) -> Result<Shape> {
    let bad = |field: &str, msg: String| file_error(config_path, format!("field `{field}`: {msg}"));
    let (theta, factor) = rope(c, &bad)?;
    if c.use_sliding_window == Some(true) {
        return Err(bad(
            "use_sliding_window",
            "sliding-window attention is not supported for qwen".into(),
        ));
    }
    if c.qk_layernorm == Some(true) {
        return Err(bad(
            "qk_layernorm",
            "phi's q/k LayerNorm is not supported".into(),
        ));
    }
    let act = c
        .hidden_act
        .as_deref()
        .or(c.hidden_activation.as_deref())
        .ok_or_else(|| bad("hidden_act", "missing".into()))?;
    let activation = match act {
        "silu" => Activation::Silu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        other => {
            return Err(bad(
                "hidden_act",
                format!("`{other}` is not supported (silu, gelu_new, gelu_pytorch_tanh)"),
            ));
        }
    };
    let (h, nh) = (c.hidden_size, c.num_attention_heads);
    let nkv = c.num_key_value_heads.unwrap_or(nh);
    if nh == 0 || nkv == 0 || !nh.is_multiple_of(nkv) {
        return Err(bad(
            "num_key_value_heads",
            format!("{nkv} kv heads do not divide {nh} attention heads"),
        ));
    }
    let head_dim = match c.head_dim {
        Some(d) => d,
        None if h.is_multiple_of(nh) => h / nh,
        None => {
            return Err(bad(
                "num_attention_heads",
                format!("{nh} does not divide {h}"),
            ));
        }
    };
    let rotary_dim = (head_dim as f64 * factor) as usize;
    if rotary_dim == 0 || rotary_dim > head_dim || !rotary_dim.is_multiple_of(2) {
        return Err(bad(
            "partial_rotary_factor",
            format!("{factor} of head_dim {head_dim} is not an even number of dims"),
        ));
    }
    let traits = arch.traits();
    let (eps, eps_field) = if traits.layer_norm {
        (c.layer_norm_eps, "layer_norm_eps")
    } else {
        (c.rms_norm_eps, "rms_norm_eps")
    };
    let eps = eps.ok_or_else(|| bad(eps_field, "missing".into()))?;
    let window = match traits.window {
        Window::Config => c.sliding_window,
        Window::None | Window::LocalGlobal => None,
    };
    Ok(Shape {
        hidden: h,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim,
        rotary_dim,
        theta,
        eps,
        activation,
        window,
    })
}

/// RoPE's base and the rotated fraction of each head, wherever this transformers version put
/// them; any rope scaling is an error.
fn rope(c: &HfConfig, bad: &dyn Fn(&str, String) -> Error) -> Result<(f32, f64)> {
    let rp = c.rope_parameters.as_ref();
    let rp_f64 = |k: &str| rp.and_then(|v| v.get(k)).and_then(Value::as_f64);
    let theta = rp_f64("rope_theta").or(c.rope_theta).unwrap_or(10_000.0) as f32;
    let rope_type = rp
        .and_then(|v| v.get("rope_type"))
        .or_else(|| {
            c.rope_scaling
                .as_ref()
                .and_then(|v| v.get("rope_type").or(v.get("type")))
        })
        .and_then(Value::as_str)
        .unwrap_or("default");
    if rope_type != "default" {
        return Err(bad(
            "rope_parameters.rope_type",
            format!("rope scaling `{rope_type}` is not supported (only default)"),
        ));
    }
    let factor = rp_f64("partial_rotary_factor")
        .or(c.partial_rotary_factor)
        .unwrap_or(1.0);
    Ok((theta, factor))
}

/// The safetensors files behind `weights`, checked, then read; tensor names with or without
/// the `model.` prefix.
fn read_weights(weights: &Path) -> Result<Weights> {
    let files = weight_files(weights)?;
    let files_note = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for f in &files {
        if !f.is_file() {
            return Err(file_error(
                f,
                format!("weight file missing (listed by {})", weights.display()),
            ));
        }
        check_safetensors(f)?;
    }
    let st = Shards::read(&files).map_err(|e| {
        Error::compute(
            "read safetensors",
            format!("{files_note}: {}", candle_message(&e)),
        )
    })?;
    let mut w = Weights {
        st,
        prefix: "",
        files: files_note,
    };
    if w.has("model.embed_tokens.weight") {
        w.prefix = "model.";
    }
    Ok(w)
}

/// Block `l`, its tensors named as the architecture's HF modeling file names them.
fn block(w: &Weights, l: usize, c: &HfConfig, t: &Traits, compute: ComputeDtype) -> Result<Block> {
    let p = format!("layers.{l}");
    let a = format!("{p}.self_attn");
    let attn_bias = c.attention_bias;
    let mlp_bias = t.mlp_bias.on(c.mlp_bias);
    let qkv = w.linear(
        &[
            format!("{a}.q_proj"),
            format!("{a}.k_proj"),
            format!("{a}.v_proj"),
        ],
        t.qkv_bias.on(attn_bias),
        compute,
    )?;
    let attn_norm = w.norm(&format!("{p}.input_layernorm"), t)?;
    let qk_norm = |which: &str| -> Result<Option<Vec<f32>>> {
        t.qk_norm
            .then(|| vector(&w.get(&format!("{a}.{which}_norm.weight"))?))
            .transpose()
    };
    let (q_norm, k_norm) = (qk_norm("q")?, qk_norm("k")?);
    // Gemma's q/k norms multiply by `1 + w` too.
    let plus_one = |v: Option<Vec<f32>>| {
        v.map(|v| {
            if t.sandwich_norms {
                v.into_iter().map(|x| 1.0 + x).collect()
            } else {
                v
            }
        })
    };
    let (q_norm, k_norm) = (plus_one(q_norm), plus_one(k_norm));
    // Phi names its output projection `dense` and its MLP `fc1` / `fc2`.
    let o_name = if t.parallel_block { "dense" } else { "o_proj" };
    let o = w.linear(&[format!("{a}.{o_name}")], t.o_bias.on(attn_bias), compute)?;
    // A parallel block's MLP reads the attention's norm. Gemma's "sandwich": the attention's
    // output is normed (`post_attention_layernorm`) before the residual add, the MLP's input by
    // `pre_feedforward_layernorm`, its output by `post_feedforward_layernorm`.
    let ffn_norm_name = if t.sandwich_norms {
        "pre_feedforward_layernorm"
    } else {
        "post_attention_layernorm"
    };
    let ffn_norm = (!t.parallel_block)
        .then(|| w.norm(&format!("{p}.{ffn_norm_name}"), t))
        .transpose()?;
    let sandwich = |name: &str| {
        t.sandwich_norms
            .then(|| w.norm(&format!("{p}.{name}"), t))
            .transpose()
    };
    let post_attn_norm = sandwich("post_attention_layernorm")?;
    let post_ffn_norm = sandwich("post_feedforward_layernorm")?;
    let m = format!("{p}.mlp");
    let mlp = if t.gated_mlp {
        Mlp::Gated {
            gate_up: w.fused(
                &[format!("{m}.gate_proj"), format!("{m}.up_proj")],
                mlp_bias,
                compute,
                Linear::gated,
            )?,
            down: w.linear(&[format!("{m}.down_proj")], mlp_bias, compute)?,
        }
    } else {
        Mlp::Plain {
            up: w.linear(&[format!("{m}.fc1")], mlp_bias, compute)?,
            down: w.linear(&[format!("{m}.fc2")], mlp_bias, compute)?,
        }
    };
    Ok(Block {
        attn_norm,
        qkv,
        q_norm,
        k_norm,
        o,
        post_attn_norm,
        ffn_norm,
        mlp,
        post_ffn_norm,
    })
}
