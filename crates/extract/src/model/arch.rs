//! The architectures as data: one enum, the names files give them (matched here and nowhere
//! else), and a table of what sets each decoder apart, after its HF modeling file.

/// A model architecture this crate loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arch {
    /// The BERT encoder (`bert.rs`), safetensors only.
    Bert,
    /// The MPNet encoder (`mpnet.rs`), safetensors only.
    Mpnet,
    /// LLaMA-2, SmolLM2: GGUF (`llama.rs`) or safetensors (`hf.rs`).
    Llama,
    Mistral,
    /// Qwen2.5: GGUF (`llama.rs`) or safetensors (`hf.rs`).
    Qwen2,
    Qwen3,
    /// Phi-2.
    Phi,
    /// Gemma-3 text, GGUF (`gemma3.rs`).
    Gemma3,
    /// Gemma-3 text from HF checkpoints (`hf.rs`), `model_type: gemma3_text`; with
    /// `use_bidirectional_attention` an encoder (EmbeddingGemma).
    Gemma3Text,
}

/// Where a bias is: always, never, or as the config's flag says (default off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bias {
    Always,
    Never,
    /// `attention_bias` for attention projections, `mlp_bias` for the MLP.
    Config,
}

/// Which attention layers look at a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Window {
    None,
    /// Every layer, the config's `sliding_window` (Mistral).
    Config,
    /// All but every sixth layer (Gemma-3: five local layers, then a global one).
    LocalGlobal,
}

/// What sets a decoder apart; the shared [`super::decoder::Decoder`] runs them all.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Traits {
    /// LayerNorm with bias (phi) instead of RMSNorm.
    pub layer_norm: bool,
    pub qkv_bias: Bias,
    pub o_bias: Bias,
    /// The MLP's biases; phi's plain MLP always has them.
    pub mlp_bias: Bias,
    /// `down(act(gate(x)) * up(x))`, else `down(act(up(x)))` (phi).
    pub gated_mlp: bool,
    /// Per-head RMSNorm on q and k before RoPE.
    pub qk_norm: bool,
    /// `x + attn(ln(x)) + mlp(ln(x))` with one norm (phi).
    pub parallel_block: bool,
    pub window: Window,
    /// Norms after attention and after the MLP too (gemma's "sandwich").
    pub sandwich_norms: bool,
    /// Embeddings multiplied by sqrt(hidden) (gemma).
    pub embed_scale: bool,
}

const LLAMA: Traits = Traits {
    layer_norm: false,
    qkv_bias: Bias::Config,
    o_bias: Bias::Config,
    mlp_bias: Bias::Config,
    gated_mlp: true,
    qk_norm: false,
    parallel_block: false,
    window: Window::None,
    sandwich_norms: false,
    embed_scale: false,
};

impl Arch {
    /// Every architecture, in the order error messages list them.
    const ALL: [Arch; 9] = [
        Arch::Bert,
        Arch::Mpnet,
        Arch::Llama,
        Arch::Mistral,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Phi,
        Arch::Gemma3,
        Arch::Gemma3Text,
    ];

    /// The name files use (GGUF `general.architecture`, config.json `model_type`), also the
    /// first word of the model's description.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::Mpnet => "mpnet",
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi => "phi",
            Arch::Gemma3 => "gemma3",
            Arch::Gemma3Text => "gemma3_text",
        }
    }

    /// Whether it is read from GGUF files.
    fn in_gguf(self) -> bool {
        matches!(self, Arch::Llama | Arch::Qwen2 | Arch::Gemma3)
    }

    /// Whether it is read from HF checkpoints (config.json + safetensors).
    fn in_safetensors(self) -> bool {
        !matches!(self, Arch::Gemma3)
    }

    /// The architecture of a GGUF `general.architecture`.
    pub fn from_gguf(name: &str) -> Option<Arch> {
        Self::ALL
            .into_iter()
            .find(|a| a.in_gguf() && a.name() == name)
    }

    /// The architecture of a config.json `model_type`.
    pub fn from_model_type(name: &str) -> Option<Arch> {
        Self::ALL
            .into_iter()
            .find(|a| a.in_safetensors() && a.name() == name)
    }

    /// `llama, qwen2, gemma3`: the GGUF architectures.
    pub fn gguf_names() -> String {
        Self::names(Arch::in_gguf)
    }

    /// `bert, mpnet, llama, mistral, qwen2, qwen3, phi, gemma3_text`: the `model_type`s.
    pub fn model_type_names() -> String {
        Self::names(Arch::in_safetensors)
    }

    fn names(keep: fn(Arch) -> bool) -> String {
        let names: Vec<&str> = Self::ALL
            .into_iter()
            .filter(|&a| keep(a))
            .map(Arch::name)
            .collect();
        names.join(", ")
    }

    /// What sets this decoder apart (BERT and MPNet, encoders, are the llama row: unused).
    pub fn traits(self) -> Traits {
        match self {
            Arch::Llama | Arch::Bert | Arch::Mpnet => LLAMA,
            Arch::Mistral => Traits {
                window: Window::Config,
                ..LLAMA
            },
            Arch::Qwen2 => Traits {
                qkv_bias: Bias::Always,
                o_bias: Bias::Never,
                ..LLAMA
            },
            Arch::Qwen3 => Traits {
                qk_norm: true,
                ..LLAMA
            },
            Arch::Phi => Traits {
                layer_norm: true,
                qkv_bias: Bias::Always,
                o_bias: Bias::Always,
                mlp_bias: Bias::Always,
                gated_mlp: false,
                parallel_block: true,
                ..LLAMA
            },
            Arch::Gemma3 | Arch::Gemma3Text => Traits {
                qk_norm: true,
                window: Window::LocalGlobal,
                sandwich_norms: true,
                embed_scale: true,
                ..LLAMA
            },
        }
    }
}

impl Bias {
    /// Whether the bias is there, given the config's flag.
    pub fn on(self, flag: Option<bool>) -> bool {
        match self {
            Bias::Always => true,
            Bias::Never => false,
            Bias::Config => flag.unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_list_in_order() {
        for a in Arch::ALL {
            let found = [Arch::from_gguf(a.name()), Arch::from_model_type(a.name())];
            assert!(found.contains(&Some(a)), "{a:?}");
        }
        assert_eq!(Arch::gguf_names(), "llama, qwen2, gemma3");
        assert_eq!(
            Arch::model_type_names(),
            "bert, mpnet, llama, mistral, qwen2, qwen3, phi, gemma3_text"
        );
        assert_eq!(Arch::from_gguf("mistral"), None);
        assert_eq!(Arch::from_model_type("gemma3"), None);
    }
}
