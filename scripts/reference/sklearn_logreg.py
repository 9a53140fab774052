#!/usr/bin/env python3
"""scikit-learn reference for `kind: logreg` (crates/classify) and `bench_logreg`.

Reads the same EmbeddingTable Parquet files (`id`, `label`, fixed-size-list vector columns),
standardises with train statistics (StandardScaler), fits LogisticRegression(C, solver="lbfgs")
(multinomial for more than two classes), and prints one JSON line: fit seconds (the `fit` call
alone, as the Rust side times it), test accuracy, iterations, and shapes.

    python scripts/reference/sklearn_logreg.py --train T.parquet --test S.parquet \
        --column layer_16 --c 1.0 [--tol 1e-4] [--max-iter 1000]

Needs numpy, scikit-learn, pyarrow.
"""
import argparse
import json
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def load(path, column):
    table = pq.read_table(path, columns=["id", "label", column])
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    x = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
    x = x.reshape(len(table), dim)
    y = table.column("label").to_numpy()
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--column", required=True)
    ap.add_argument("--c", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-iter", type=int, default=1000)
    a = ap.parse_args()

    xtr, ytr = load(a.train, a.column)
    xte, yte = load(a.test, a.column)
    scaler = StandardScaler().fit(xtr)
    xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    model = LogisticRegression(C=a.c, solver="lbfgs", tol=a.tol, max_iter=a.max_iter)
    start = time.perf_counter()
    model.fit(xtr, ytr)
    fit_seconds = time.perf_counter() - start
    acc = float((model.predict(xte) == yte).mean())
    print(json.dumps({
        "impl": "sklearn " + sklearn.__version__,
        "train_rows": int(xtr.shape[0]),
        "test_rows": int(xte.shape[0]),
        "dim": int(xtr.shape[1]),
        "c": a.c,
        "fit_seconds": fit_seconds,
        "accuracy": acc,
        "n_iter": int(np.max(model.n_iter_)),
        "converged": bool(np.max(model.n_iter_) < a.max_iter),
    }))


if __name__ == "__main__":
    main()
