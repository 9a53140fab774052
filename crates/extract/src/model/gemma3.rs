//! Gemma-3 text decoders from GGUF, following HF `modeling_gemma3.py`:
//! embeddings scaled by sqrt(hidden); per block
//! `x + post_attn_norm(attn(input_norm(x)))`, `x + post_ffn_norm(mlp(pre_ffn_norm(x)))`;
//! RMSNorm on q and k per head before RoPE; GELU(tanh)-gated MLP; sliding-window attention with
//! the local RoPE base on five of every six layers, global attention with the global base on
//! every sixth.
//!
//! Gemma's RMSNorm multiplies by `1 + w`; llama.cpp's converter stores `w + 1` in the GGUF, so
//! the file's norm weights are used as plain multipliers here.

use llmembed_core::Result;

use super::arch::{Arch, Window};
use super::decoder::{Activation, Config, Decoder, Embeddings, Norm, RopeStyle, load_blocks};
use super::gguf::GgufFile;
use super::llama::block;
use super::tokenizer::DecoderTokenizer;
use crate::embedder::LoadSpec;

/// HF Gemma3TextConfig defaults that GGUF files do not carry.
const ROPE_LOCAL_BASE: f32 = 10_000.0;
const SLIDING_WINDOW_PATTERN: usize = 6;

pub(crate) fn load(f: GgufFile, spec: &LoadSpec) -> Result<Decoder> {
    let p = "gemma3";
    let key = |k: &str| format!("{p}.{k}");
    let hidden = f.get_usize(&key("embedding_length"))?;
    let n_layers = f.get_usize(&key("block_count"))?;
    let n_heads = f.get_usize(&key("attention.head_count"))?;
    let n_kv_heads = f.get_usize(&key("attention.head_count_kv"))?;
    let head_dim = f.get_usize(&key("attention.key_length"))?;
    let ffn = f.get_usize(&key("feed_forward_length"))?;
    let eps = f.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64;
    let theta = f.get_f32(&key("rope.freq_base"))?;
    let window = f.get_usize(&key("attention.sliding_window"))?;
    let context_length = f.get_usize(&key("context_length"))?;
    // HF: scaling = query_pre_attn_scalar ** -0.5 with query_pre_attn_scalar = head_dim
    // (llama.cpp makes the same choice for every size but 27B).
    let attn_scale = 1.0 / (head_dim as f64).sqrt();
    // Five local (sliding-window) layers, then a global one.
    let is_global = |l: usize| {
        Arch::Gemma3.traits().window != Window::LocalGlobal
            || (l + 1).is_multiple_of(SLIDING_WINDOW_PATTERN)
    };
    let tokenizer = DecoderTokenizer::from_gguf(&f, p)?;
    let compute = spec.compute;
    let embed = f.qtensor("token_embd.weight")?;
    let embed_type = format!("{:?}", embed.dtype());
    let traits = Arch::Gemma3.traits();
    let blocks = load_blocks(n_layers, |l| block(&f, l, &traits, compute))?;
    let final_norm = Norm::rms(&f.tensor_f32("output_norm.weight")?)?;
    let cfg = Config {
        arch: Arch::Gemma3.name(),
        hidden,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn,
        eps,
        embed_scale: traits.embed_scale.then(|| (hidden as f32).sqrt()),
        activation: Activation::GeluTanh,
        rotary_dim: head_dim,
        parallel_block: false,
        rope_style: RopeStyle::Halves,
        attn_scale,
        rope_theta: (0..n_layers)
            .map(|l| if is_global(l) { theta } else { ROPE_LOCAL_BASE })
            .collect(),
        window: (0..n_layers)
            .map(|l| if is_global(l) { None } else { Some(window) })
            .collect(),
        context_length,
        causal: true,
    };
    Ok(Decoder {
        cfg,
        embed: Embeddings::Quantized(embed),
        blocks,
        final_norm,
        tokenizer,
        compute,
        weights_note: format!("gguf-dequantized(embed={embed_type})"),
        sentence: None,
        shared: Default::default(),
    })
}
