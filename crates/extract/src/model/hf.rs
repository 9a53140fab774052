//! Decoders from Hugging Face checkpoints: `config.json` + safetensors (one file, or shards
//! listed by `model.safetensors.index.json`) + `tokenizer.json`. Supported `model_type`s, each
//! mapped onto the shared [`Decoder`] after its HF modeling file:
//! - `llama` / `mistral` (LLaMA-2, SmolLM2, Mistral): RMSNorm, SiLU-gated MLP, optional
//!   `attention_bias` / `mlp_bias`, Mistral's `sliding_window`;
//! - `qwen2` (Qwen2.5): as llama, with biases on q, k and v;
//! - `qwen3`: as llama, with a per-head RMSNorm on q and k and an explicit `head_dim`;
//! - `phi` (Phi-2): LayerNorm with bias, one norm feeding attention and MLP in parallel, biases
//!   everywhere, a plain GELU(tanh) MLP, RoPE on the first `partial_rotary_factor` of each head.
//!
//! HF stores q/k unpermuted, so RoPE rotates halves (`rotate_half`). Weights are converted to
//! the compute dtype at load, whatever dtype the file has (f16/bf16/f32), as transformers does
//! with `torch_dtype=float32`. Anything the code does not implement (rope scaling, sliding
//! windows on qwen, phi's q/k LayerNorm) is an error naming the config field, never ignored.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::BufferedSafetensors;
use candle_core::{DType, Device, Tensor};
use llmembed_core::{Error, Result};
use serde::Deserialize;
use serde_json::Value;

use super::decoder::{
    Activation, Block, Config, Decoder, Embeddings, Linear, Mlp, Norm, RopeStyle, vector,
};
use super::tokenizer::DecoderTokenizer;
use super::{LoadSpec, candle_message, file_error, hex_bytes};

/// The `model_type`s this module loads.
pub(crate) const MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "phi"];

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
    hidden_act: String,
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
}

/// The safetensors files behind `weights`: the file itself, or the shards its index lists.
pub(crate) fn weight_files(weights: &Path) -> Result<Vec<PathBuf>> {
    let name = weights.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.ends_with(".index.json") {
        return Ok(vec![weights.to_path_buf()]);
    }
    let raw = std::fs::read_to_string(weights)
        .map_err(|e| Error::io("read safetensors index", weights, e))?;
    let index: Value =
        serde_json::from_str(&raw).map_err(|e| file_error(weights, format!("not JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| file_error(weights, "field `weight_map` is missing or not a map"))?;
    let dir = weights.parent().unwrap_or(Path::new("."));
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let f = file.as_str().ok_or_else(|| {
            file_error(
                weights,
                format!("field `weight_map`: `{tensor}`: not a file name"),
            )
        })?;
        shards.insert(f.to_string());
    }
    Ok(shards.into_iter().map(|f| dir.join(f)).collect())
}

/// The tensors of one or more safetensors files, read into memory.
///
/// Why not mapped: mapping a file is `unsafe` (another process could change it under the map),
/// and `unsafe` is kept to the kernels crate; the files are read once at load and dropped once
/// the weights are packed, so reading costs their size in memory for the duration of the load.
pub(crate) struct Shards {
    files: Vec<BufferedSafetensors>,
    /// Tensor name -> file; a name in several files is taken from the last (as candle's
    /// `MmapedSafetensors::multi` does).
    routing: HashMap<String, usize>,
}

impl Shards {
    pub fn read(paths: &[PathBuf]) -> candle_core::Result<Shards> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (index, p) in paths.iter().enumerate() {
            let bytes = std::fs::read(p).map_err(|e| candle_core::Error::from(e).with_path(p))?;
            let st = BufferedSafetensors::new(bytes).map_err(|e| e.with_path(p))?;
            for (name, _) in st.tensors() {
                routing.insert(name, index);
            }
            files.push(st);
        }
        Ok(Shards { files, routing })
    }

    fn file(&self, name: &str) -> candle_core::Result<&BufferedSafetensors> {
        match self.routing.get(name) {
            Some(&i) => Ok(&self.files[i]),
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.file(name).and_then(|f| f.get(name)).is_ok()
    }

    /// The tensor's dtype in the file, as safetensors names it (`BF16`, `F32`, ...).
    pub fn dtype(&self, name: &str) -> candle_core::Result<String> {
        Ok(format!("{:?}", self.file(name)?.get(name)?.dtype()))
    }

    pub fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        self.file(name)?.load(name, dev)
    }
}

struct Weights {
    st: Shards,
    prefix: &'static str,
    files: String,
}

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
}

/// Loads a decoder whose `config.json` (already read, as the text `config`) names `arch`, one of
/// [`MODEL_TYPES`].
pub(crate) fn load(spec: &LoadSpec, arch: &'static str, config: &str) -> Result<Decoder> {
    let config_path = spec.config_path();
    let tok_path = spec.tokenizer_path();
    // From the text, so that a bad value's error says where it is (line and column).
    let c: HfConfig = serde_json::from_str(config)
        .map_err(|e| file_error(&config_path, format!("not a decoder config: {e}")))?;
    let bad =
        |field: &str, msg: String| file_error(&config_path, format!("field `{field}`: {msg}"));
    let is_phi = arch == "phi";

    // RoPE: base, type and the rotated fraction, wherever this transformers version put them.
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
    let activation = match c.hidden_act.as_str() {
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
    let factor = rp_f64("partial_rotary_factor")
        .or(c.partial_rotary_factor)
        .unwrap_or(1.0);
    let rotary_dim = (head_dim as f64 * factor) as usize;
    if rotary_dim == 0 || rotary_dim > head_dim || !rotary_dim.is_multiple_of(2) {
        return Err(bad(
            "partial_rotary_factor",
            format!("{factor} of head_dim {head_dim} is not an even number of dims"),
        ));
    }
    let eps = if is_phi {
        c.layer_norm_eps
    } else {
        c.rms_norm_eps
    }
    .ok_or_else(|| {
        bad(
            if is_phi {
                "layer_norm_eps"
            } else {
                "rms_norm_eps"
            },
            "missing".into(),
        )
    })?;
    let window = if arch == "mistral" {
        c.sliding_window
    } else {
        None
    };

    // The small files first, so that a bad one is named before the weights are mapped.
    let tokenizer = DecoderTokenizer::from_file(&tok_path)?;
    let files = weight_files(&spec.weights)?;
    let files_note = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for f in &files {
        if !f.is_file() {
            return Err(file_error(
                f,
                format!("weight file missing (listed by {})", spec.weights.display()),
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
    let compute = spec.compute;
    let file_dtype =
        w.st.dtype(&format!("{}embed_tokens.weight", w.prefix))
            .map_err(|e| {
                Error::compute(
                    "read safetensors tensor",
                    format!("{}: {}", w.files, candle_message(&e)),
                )
            })?;
    let all = |names: &[&str], what: &str| -> Result<Vec<Tensor>> {
        names
            .iter()
            .map(|n| w.get(&format!("{n}.{what}")))
            .collect()
    };
    let with_bias = |names: &[&str], on: bool| -> Result<Linear> {
        let bs = if on { Some(all(names, "bias")?) } else { None };
        Linear::new(&all(names, "weight")?, bs.as_deref(), compute)
    };
    let norm = |name: &str| -> Result<Norm> {
        let weight = w.get(&format!("{name}.weight"))?;
        if is_phi {
            Norm::layer(&weight, &w.get(&format!("{name}.bias"))?)
        } else {
            Norm::rms(&weight)
        }
    };
    let qkv_bias = match arch {
        "qwen2" | "phi" => true,
        _ => c.attention_bias.unwrap_or(false),
    };
    let o_bias = match arch {
        "phi" => true,
        "qwen2" => false,
        _ => c.attention_bias.unwrap_or(false),
    };
    let mlp_bias = c.mlp_bias.unwrap_or(false);
    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for l in 0..c.num_hidden_layers {
        let p = format!("layers.{l}");
        let a = format!("{p}.self_attn");
        let qkv = with_bias(
            &[
                &format!("{a}.q_proj"),
                &format!("{a}.k_proj"),
                &format!("{a}.v_proj"),
            ],
            qkv_bias,
        )?;
        let block = if is_phi {
            Block {
                attn_norm: norm(&format!("{p}.input_layernorm"))?,
                qkv,
                q_norm: None,
                k_norm: None,
                o: with_bias(&[&format!("{a}.dense")], o_bias)?,
                post_attn_norm: None,
                ffn_norm: None,
                mlp: Mlp::Plain {
                    up: with_bias(&[&format!("{p}.mlp.fc1")], true)?,
                    down: with_bias(&[&format!("{p}.mlp.fc2")], true)?,
                },
                post_ffn_norm: None,
            }
        } else {
            let m = format!("{p}.mlp");
            let qk_norm = arch == "qwen3";
            Block {
                attn_norm: norm(&format!("{p}.input_layernorm"))?,
                qkv,
                q_norm: if qk_norm {
                    Some(vector(&w.get(&format!("{a}.q_norm.weight"))?)?)
                } else {
                    None
                },
                k_norm: if qk_norm {
                    Some(vector(&w.get(&format!("{a}.k_norm.weight"))?)?)
                } else {
                    None
                },
                o: with_bias(&[&format!("{a}.o_proj")], o_bias)?,
                post_attn_norm: None,
                ffn_norm: Some(norm(&format!("{p}.post_attention_layernorm"))?),
                mlp: Mlp::Gated {
                    gate_up: with_bias(
                        &[&format!("{m}.gate_proj"), &format!("{m}.up_proj")],
                        mlp_bias,
                    )?,
                    down: with_bias(&[&format!("{m}.down_proj")], mlp_bias)?,
                },
                post_ffn_norm: None,
            }
        };
        blocks.push(block);
    }
    let final_norm = norm(if is_phi { "final_layernorm" } else { "norm" })?;
    let embed = Embeddings::Dense(w.get("embed_tokens.weight")?);
    let cfg = Config {
        arch,
        hidden: h,
        n_layers: c.num_hidden_layers,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim,
        ffn: c.intermediate_size,
        eps,
        embed_scale: None,
        activation,
        rope_style: RopeStyle::Halves,
        rotary_dim,
        parallel_block: is_phi,
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        rope_theta: vec![theta; c.num_hidden_layers],
        window: vec![window; c.num_hidden_layers],
        context_length: c.max_position_embeddings,
    };
    Ok(Decoder {
        cfg,
        embed,
        blocks,
        final_norm,
        tokenizer,
        compute,
        weights_note: format!("safetensors({file_dtype})"),
    })
}

/// safetensors' limit on the JSON header.
const MAX_HEADER: u64 = 100_000_000;

/// Checks a safetensors file's framing before it is mapped: the 8-byte header length, the JSON
/// header, and that every tensor's bytes lie inside the file (naming the first one, in file
/// order, that does not). What this cannot judge is left to the safetensors reader.
pub(crate) fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open safetensors", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io("open safetensors", path, e))?
        .len();
    let bad = |what: String| file_error(path, what);
    let mut head = [0u8; 8];
    if len < 8 {
        return Err(bad(format!(
            "not a safetensors file (it has only {len} bytes; safetensors files start with an \
             8-byte header length)"
        )));
    }
    f.read_exact(&mut head)
        .map_err(|e| Error::io("read safetensors", path, e))?;
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER || n > len - 8 {
        return Err(bad(format!(
            "not a safetensors file, or truncated: it starts with bytes {}, a header length of \
             {n} bytes, and the file has {len} bytes",
            hex_bytes(&head)
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| Error::io("read safetensors", path, e))?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header).map_err(|e| {
        bad(format!(
            "not a safetensors file (its header is not a JSON map: {e})"
        ))
    })?;
    let data_start = 8 + n;
    let mut first_cut: Option<(u64, u64, &str)> = None;
    for (name, info) in &header {
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)));
        let Some((a, b)) = offsets else {
            continue; // `__metadata__`, or a malformed entry the reader will name
        };
        let (start, end) = (data_start.saturating_add(a), data_start.saturating_add(b));
        if end > len && first_cut.is_none_or(|(s, _, n)| (start, name.as_str()) < (s, n)) {
            first_cut = Some((start, end, name));
        }
    }
    match first_cut {
        Some((start, end, name)) => Err(bad(format!(
            "truncated safetensors file: tensor `{name}` needs bytes {start}..{end}, the file has \
             {len} bytes"
        ))),
        None => Ok(()),
    }
}
