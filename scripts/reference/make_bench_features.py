#!/usr/bin/env python3
"""Writes benchmark EmbeddingTables (train.parquet, test.parquet) for `bench_logreg` and
sklearn_logreg.py from the raw AG News files, without any model:

* `bow`: counts of the 500 most frequent train words (sparse-ish, like the crate's tests);
* `proj`: a dense 640-d Gaussian random projection of log(1 + counts) over 5,000 words, the
  shape of a small LLM's hidden states (hundreds of dense features, thousands of rows).

    python scripts/reference/make_bench_features.py --data ../shared/data/ag_news --out /tmp/bench
"""
import argparse
import json
import os
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def toks(t):
    return [w.lower() for w in re.split(r"[^0-9A-Za-z]+", t) if len(w) >= 2]


def counts(texts, vocab):
    m = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in toks(t):
            j = vocab.get(w)
            if j is not None:
                m[i, j] += 1
    return m


def write(path, ids, labels, cols):
    arrays = [pa.array(ids, pa.string()), pa.array(labels, pa.int64())]
    fields = [pa.field("id", pa.string(), False), pa.field("label", pa.int64(), False)]
    for name, m in cols:
        item = pa.field("item", pa.float32(), False)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1), pa.float32()), type=pa.list_(item, m.shape[1]))
        arrays.append(arr)
        fields.append(pa.field(name, pa.list_(item, m.shape[1]), False))
    schema = pa.schema(fields, metadata={"llmembed.label_names": json.dumps(LABELS)})
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tr = pq.read_table(os.path.join(a.data, "train.parquet"), columns=["text", "label"]).to_pydict()
    te = pq.read_table(os.path.join(a.data, "test.parquet"), columns=["text", "label"]).to_pydict()
    freq = Counter(w for t in tr["text"] for w in toks(t))
    words = [w for w, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))]
    v500 = {w: i for i, w in enumerate(words[:500])}
    v5k = {w: i for i, w in enumerate(words[:5000])}
    proj = np.random.default_rng(0).standard_normal((5000, 640)).astype(np.float32) / np.sqrt(640)
    for name, d in [("train", tr), ("test", te)]:
        bow = counts(d["text"], v500)
        dense = np.log1p(counts(d["text"], v5k)) @ proj
        ids = [f"{name}-{i}" for i in range(len(d["text"]))]
        write(os.path.join(a.out, f"{name}.parquet"), ids, d["label"], [("bow", bow), ("proj", dense)])
        print(name, bow.shape, dense.shape)


if __name__ == "__main__":
    main()
