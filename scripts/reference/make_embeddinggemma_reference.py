#!/usr/bin/env python3
"""Writes the reference fixture of the Rust EmbeddingGemma encoder (crates/extract/src/model/hf.rs,
`gemma3_text` with bidirectional attention, and sentence.rs, its sentence-transformers modules).

The checkpoint is the `embeddinggemma-300m` preset as `cargo xtask fetch embeddinggemma-300m`
unpacks it (google/embeddinggemma-300m, F32 safetensors, model.safetensors sha256
cbf5a78393b6a033...), loaded by sentence-transformers on CPU in float32 with eager attention.
For a few fixed texts, each encoded alone (no padding), it records:
  * the token ids (the tokenizer's default special tokens: <bos> ... <eos>),
  * per entry of the transformer's `output_hidden_states` (0 = scaled embeddings, k = block k;
    HF's last entry is after the final norm), the hidden states mean-pooled over all tokens,
    summarised as the L2 norm, the sum and the first 16 dims, with the full vector on every layer
    for the texts in FULL_TEXTS and on FULL_LAYERS for the others,
  * the sentence embedding `SentenceTransformer.encode` gives (mean pooling, Dense 768->3072,
    Dense 3072->768, Normalize), in full.
Tokenization-only cases: edge-case strings and the first 200 AG News test texts (ids only).

Versions this fixture was written with: torch 2.15.0, transformers 5.24.0,
sentence-transformers 6.3.0 (`pip install sentence-transformers` into /tmp/refenv).

Usage: /tmp/refenv/bin/python scripts/reference/make_embeddinggemma_reference.py
"""
import json
import os

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

MODEL_DIR = os.environ.get("LLMEMBED_EMBEDDINGGEMMA_DIR", "cache/models/assembled/embeddinggemma-300m")
OUT = "crates/extract/tests/fixtures/embeddinggemma_reference.json"

PARA = (
    "Oil prices soared to record highs on Monday as traders worried about supply disruptions "
    "in the Gulf of Mexico, while stocks on Wall Street slipped for a third straight session. "
    "Analysts said the central bank would likely raise interest rates again next month, "
    "citing stronger than expected employment figures and rising consumer prices across "
    "the country, although some economists warned that growth could slow sharply next year. "
)
# ~650 tokens: longer than the bidirectional sliding window (257 positions on either side).
LONG = " ".join(f"({i}) {PARA}" for i in range(8)).strip()
HEADLINE = (
    "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's "
    "dwindling band of ultra-cynics, are seeing green again."
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "Café naïve résumé — Zürich über Straße. 東京は日本の首都です。 Привет, мир! 🙂",
    HEADLINE,
    # The model card's prompt for classification, as a user would put it before a text.
    "task: classification | query: " + HEADLINE,
    PARA.strip(),
    LONG,
]
FULL_TEXTS = {0, 2, 5, 6}

TOKENIZE_ONLY = [
    "",
    " ",
    "\n\n\n",
    "\t\ttabs",
    "a",
    "1234567890",
    "<bos>hello<eos>",
    "<start_of_turn>user",
    "emoji 🙂🚀👍🏽 and flags 🇫🇷",
    "Ελληνικά, العربية, हिन्दी, 한국어, ไทย",
    "zero\u200bwidth and nbsp\u00a0here",
    "combining e\u0301 vs é",
    "x" * 300,
    "C:\\path\\to\\file.txt and {\"json\": [1, 2, 3]}",
    "It's  double  spaced.  Ends with space ",
]


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


def main():
    st = SentenceTransformer(
        MODEL_DIR,
        device="cpu",
        model_kwargs={"dtype": torch.float32, "attn_implementation": "eager"},
    )
    st.eval()
    tok = st.tokenizer
    model = st[0].auto_model
    cfg = model.config
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
            if k in full or ti in FULL_TEXTS:
                entry["full"] = [r(a) for a in v.float()]
            layers.append(entry)
        sentence = st.encode([text], convert_to_tensor=True, batch_size=1)[0]
        cases.append(
            {
                "text": text,
                "ids": [int(i) for i in ids],
                "layers": layers,
                "sentence": [r(a) for a in sentence],
            }
        )
        print(len(ids), "tokens", flush=True)
    tok_cases = [{"text": t, "ids": [int(i) for i in tok(t)["input_ids"]]} for t in TOKENIZE_ONLY + ag_news_texts()]
    fixture = {
        "generator": "scripts/reference/make_embeddinggemma_reference.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "model": "google/embeddinggemma-300m (preset embeddinggemma-300m, model.safetensors sha256 "
        "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2)",
        "modules": [type(m).__name__ for m in st],
        "config": {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool)) or v is None},
        "num_layers": len(cases[0]["layers"]) - 1,
        "full_layers": full_layers(len(cases[0]["layers"])),
        "full_texts": sorted(FULL_TEXTS),
        "note": "layers[n] is HF's last hidden_states entry = final norm of block n's output; "
        "sentence = SentenceTransformer.encode (mean pooling, two Dense, Normalize)",
        "cases": cases,
        "tokenize": tok_cases,
    }
    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump(fixture, fh, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases, {fixture['num_layers']} blocks, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
