//! Llama-architecture decoders from GGUF (SmolLM2), following HF `modeling_llama.py`:
//! `x + attn(rms(x))`, `x + mlp(rms(x))`, SiLU-gated MLP, RoPE, grouped-query attention; and
//! Qwen2 (Qwen2.5), which is llama with biases on q, k and v (HF `modeling_qwen2.py`).
//!
//! llama.cpp's converter permutes llama's q/k rows so that RoPE rotates interleaved pairs; it
//! leaves qwen2's as HF has them (llama.cpp runs qwen2 with NEOX RoPE, HF's `rotate_half`). Qwen2
//! ties the LM head to the embeddings; the head is never used here, only the embedding matrix.

use llmembed_core::{Error, Result};

use super::arch::{Arch, Traits};
use super::decoder::{
    Activation, Block, Config, Decoder, Embeddings, Linear, Mlp, Norm, RopeStyle, load_blocks,
    vector,
};
use super::gguf::GgufFile;
use super::tokenizer::DecoderTokenizer;
use crate::embedder::{ComputeDtype, LoadSpec};

/// Block `l` of a GGUF decoder, its tensors named as llama.cpp's converter names them (for
/// every GGUF architecture): a gated MLP without biases, q/k/v biases where `traits` has them
/// always (qwen2), and the norms `traits` asks for.
pub(crate) fn block(
    f: &GgufFile,
    l: usize,
    traits: &Traits,
    compute: ComputeDtype,
) -> Result<Block> {
    let t = |n: &str| f.tensor_f32(&format!("blk.{l}.{n}.weight"));
    let attn_norm = Norm::rms(&t("attn_norm")?)?;
    let qkv_w = vec![t("attn_q")?, t("attn_k")?, t("attn_v")?];
    let qkv_b = if traits.qkv_bias.on(None) {
        let b = |n: &str| f.tensor_f32(&format!("blk.{l}.{n}.bias"));
        Some([b("attn_q")?, b("attn_k")?, b("attn_v")?])
    } else {
        None
    };
    let qkv = Linear::new(qkv_w, qkv_b.as_ref().map(|b| b.as_slice()), compute)?;
    let (q_norm, k_norm) = if traits.qk_norm {
        (
            Some(vector(&t("attn_q_norm")?)?),
            Some(vector(&t("attn_k_norm")?)?),
        )
    } else {
        (None, None)
    };
    let o = Linear::new(vec![t("attn_output")?], None, compute)?;
    let sandwich = traits.sandwich_norms;
    let post_attn_norm = sandwich
        .then(|| Norm::rms(&t("post_attention_norm")?))
        .transpose()?;
    let ffn_norm = Some(Norm::rms(&t("ffn_norm")?)?);
    let mlp = Mlp::Gated {
        gate_up: Linear::gated(vec![t("ffn_gate")?, t("ffn_up")?], None, compute)?,
        down: Linear::new(vec![t("ffn_down")?], None, compute)?,
    };
    let post_ffn_norm = sandwich
        .then(|| Norm::rms(&t("post_ffw_norm")?))
        .transpose()?;
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

/// A llama or qwen2 GGUF (`arch`).
pub(crate) fn load(f: GgufFile, spec: &LoadSpec, arch: Arch) -> Result<Decoder> {
    let p = arch.name();
    let key = |k: &str| format!("{p}.{k}");
    let hidden = f.get_usize(&key("embedding_length"))?;
    let n_layers = f.get_usize(&key("block_count"))?;
    let n_heads = f.get_usize(&key("attention.head_count"))?;
    let n_kv_heads = if f.has(&key("attention.head_count_kv")) {
        f.get_usize(&key("attention.head_count_kv"))?
    } else {
        n_heads
    };
    let head_dim = hidden / n_heads;
    if f.has(&key("rope.dimension_count")) && f.get_usize(&key("rope.dimension_count"))? != head_dim
    {
        return Err(Error::param(
            "model",
            format!(
                "{}: partial rotary embeddings are not supported",
                f.path.display()
            ),
        ));
    }
    if f.has(&key("rope.scaling.type")) {
        let ty = f.get_str(&key("rope.scaling.type"))?;
        if ty != "none" {
            return Err(Error::param(
                "model",
                format!("{}: rope scaling `{ty}` is not supported", f.path.display()),
            ));
        }
    }
    let ffn = f.get_usize(&key("feed_forward_length"))?;
    let eps = f.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64;
    let theta = if f.has(&key("rope.freq_base")) {
        f.get_f32(&key("rope.freq_base"))?
    } else {
        10_000.0
    };
    let context_length = f.get_usize(&key("context_length"))?;
    let tokenizer = DecoderTokenizer::from_gguf(&f, p)?;
    let compute = spec.compute;
    let embed = f.qtensor("token_embd.weight")?;
    let embed_type = format!("{:?}", embed.dtype());
    let traits = arch.traits();
    let blocks = load_blocks(n_layers, |l| block(&f, l, &traits, compute))?;
    let final_norm = Norm::rms(&f.tensor_f32("output_norm.weight")?)?;
    let cfg = Config {
        arch: arch.name(),
        hidden,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn,
        eps,
        embed_scale: None,
        activation: Activation::Silu,
        rotary_dim: head_dim,
        parallel_block: false,
        rope_style: match arch {
            Arch::Llama => RopeStyle::Interleaved,
            _ => RopeStyle::Halves,
        },
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        rope_theta: vec![theta; n_layers],
        window: vec![None; n_layers],
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
