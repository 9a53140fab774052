#!/usr/bin/env python3
"""Writes the reference fixture for the safetensors decoders (crates/extract/src/model/hf.rs).

No real hub checkpoint can be downloaded on the machine the tests run on, so each supported
`model_type` (llama, mistral, qwen2, qwen3, phi) is checked on a tiny checkpoint whose weights
follow a fixed formula that the Rust test reproduces bit for bit (`det_weights` below and
`det_weights` in crates/extract/tests/hf_decoders.rs):

    u = frac(sin(i * 12.9898 + b) * 43758.5453),  b = 0.01 * sum(utf-8 bytes of the name)
    v = 2u - 1 (f64, then f32);  norm weights 1 + 0.1 v,  biases 0.02 v,  the rest 0.08 v

For each architecture transformers builds the model from a small config (`AutoModel.from_config`,
float32, eager attention), every parameter is overwritten with the formula, and for a few texts
(each encoded alone, no padding) it records the token ids, the mean over all tokens of every
`output_hidden_states` entry, and the last token of the last entry. The fixture also carries the
configs (as `save_pretrained` writes them), the parameter names and shapes, and the tokenizer
(a small word-level `tokenizer.json`, with `<s>` prepended by its post-processor).

The Rust test writes model.safetensors from the names, shapes and formula, config.json and
tokenizer.json from the fixture, loads them with the extract crate, and compares.

Usage: /tmp/refenv/bin/python scripts/reference/make_tiny_decoder_reference.py
Output: crates/extract/tests/fixtures/tiny_decoders_reference.json
"""
import json
import os
import tempfile

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModel

OUT = "crates/extract/tests/fixtures/tiny_decoders_reference.json"

WORDS = (
    "the a of to in and on for with by at from oil prices stocks market team game season "
    "players won lost score apple google software internet computer phone space nasa "
    "scientists study new report says year week monday president election government"
).split()
VOCAB = ["<unk>", "<s>", "</s>"] + WORDS
VOCAB_SIZE = 64  # the embedding has spare rows, as real checkpoints often do

TEXTS = [
    "oil",
    "the team won the game on monday",
    "google says new phone software for the internet market",
    "scientists at nasa report a new study of space",
    # unknown words map to <unk>; long enough to pass mistral's window of 4 several times
    "stocks lost in the market week as oil prices won and the president says the "
    "government election year report of the new season players score by monday zebra",
    "apple",
]

COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CONFIGS = {
    # LLaMA-2 layout: grouped-query attention, no biases.
    "llama": dict(model_type="llama", num_key_value_heads=2, rms_norm_eps=1e-6,
                  rope_theta=10000.0, hidden_act="silu"),
    # Mistral: llama plus a sliding window (4 tokens, so the long text exercises it).
    "mistral": dict(model_type="mistral", num_key_value_heads=2, rms_norm_eps=1e-6,
                    rope_theta=10000.0, hidden_act="silu", sliding_window=4),
    # Qwen2.5: biases on q, k, v; a large RoPE base.
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, hidden_act="silu", use_sliding_window=False),
    # Qwen3: q/k RMSNorm per head, head_dim (32) not hidden / heads (16).
    "qwen3": dict(model_type="qwen3", num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, hidden_act="silu", attention_bias=False,
                  use_sliding_window=False),
    # Phi-2: LayerNorm, parallel attention + MLP, biases everywhere, half the head rotated.
    "phi": dict(model_type="phi", num_key_value_heads=4, layer_norm_eps=1e-5,
                rope_theta=10000.0, hidden_act="gelu_new", partial_rotary_factor=0.5,
                qk_layernorm=False),
}


def det_weights(name, shape):
    n = int(np.prod(shape))
    b = 0.01 * sum(name.encode("utf-8"))
    x = np.sin(np.arange(n, dtype=np.float64) * 12.9898 + b) * 43758.5453
    v = 2.0 * (x - np.floor(x)) - 1.0
    if name.endswith("norm.weight"):
        v = 1.0 + 0.1 * v
    elif name.endswith(".bias"):
        v = 0.02 * v
    else:
        v = 0.08 * v
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def make_tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    return tok


def main():
    torch.manual_seed(0)
    tok = make_tokenizer()
    out = {
        "generator": "scripts/reference/make_tiny_decoder_reference.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "tokenizer_json": json.loads(tok.to_str()),
        "models": {},
    }
    for arch, extra in CONFIGS.items():
        cfg_kwargs = dict(COMMON, **extra)
        model_type = cfg_kwargs.pop("model_type")
        config = AutoConfig.for_model(model_type, **cfg_kwargs)
        config._attn_implementation = "eager"
        model = AutoModel.from_config(config, dtype=torch.float32).eval()
        params = []
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(det_weights(name, tuple(p.shape)))
                params.append({"name": name, "shape": list(p.shape)})
        with tempfile.TemporaryDirectory() as d:
            config.save_pretrained(d)
            with open(os.path.join(d, "config.json")) as f:
                saved_config = json.load(f)
        cases = []
        for text in TEXTS:
            ids = tok.encode(text).ids
            with torch.no_grad():
                o = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            hs = o.hidden_states
            cases.append({
                "text": text,
                "ids": ids,
                "layer_means": [h[0].double().mean(0).tolist() for h in hs],
                "last_token_final": hs[-1][0, -1].double().tolist(),
                "last_entry_is_last_hidden_state": bool(torch.equal(hs[-1], o.last_hidden_state)),
            })
        out["models"][arch] = {"config": saved_config, "params": params, "cases": cases}
        print(arch, "params", len(params), "hidden_states", len(cases[0]["layer_means"]),
              "last entry normed:", cases[0]["last_entry_is_last_hidden_state"])
    with open(OUT, "w") as f:
        json.dump(out, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
