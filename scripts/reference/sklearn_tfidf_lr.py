#!/usr/bin/env python3
"""scikit-learn reference for the TF-IDF baseline of `agnews-full.yaml` (`tfidf` + `logreg`).

The usual scikit-learn recipe on raw (unstandardised, sparse) TF-IDF rows, with the settings of
the pipeline's `tfidf` stage and the C grid of its `tfidf_lr` stage:

    TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=20000)
    LogisticRegression(C, tol=1e-6, max_iter=1000), C chosen by stratified 5-fold CV on the
    train rows (best mean accuracy, ties to the smaller C), refitted on all train rows.

`--sklearn-defaults` uses TfidfVectorizer's own defaults instead (min_df=1, every term). The folds
are scikit-learn's (StratifiedKFold, shuffled with random_state=0), not the pipeline's (drawn with
its seed), so CV scores differ slightly; the test accuracy is the figure to compare. Prints one
JSON line.

    /tmp/sparse-refenv/bin/python scripts/reference/sklearn_tfidf_lr.py \
        --data ../shared/data/ag_news [--grid 0.1 1 10 100] [--sklearn-defaults]

Needs numpy, scikit-learn, pyarrow.
"""
import argparse
import json
import pathlib
import time

import numpy as np
import pyarrow.parquet as pq
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold


def load(path):
    t = pq.read_table(path, columns=["text", "label"])
    return t.column("text").to_pylist(), t.column("label").to_numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/ag_news")
    ap.add_argument("--grid", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--sklearn-defaults", action="store_true")
    a = ap.parse_args()

    data = pathlib.Path(a.data)
    tr_text, ytr = load(data / "train.parquet")
    te_text, yte = load(data / "test.parquet")
    settings = dict(ngram_range=(1, 2), sublinear_tf=True)
    if not a.sklearn_defaults:
        settings.update(min_df=2, max_features=20000)

    start = time.perf_counter()
    # As the pipeline does: the vectorizer is fitted once on all train rows (the `tfidf` stage),
    # and C is chosen by CV of the classifier alone on those rows (the `logreg` stage).
    vec = TfidfVectorizer(**settings)
    xtr = vec.fit_transform(tr_text)
    xte = vec.transform(te_text)
    folds = StratifiedKFold(n_splits=a.folds, shuffle=True, random_state=0)
    cv = []
    for c in a.grid:
        accs = []
        for tr, va in folds.split(xtr, ytr):
            m = LogisticRegression(C=c, tol=a.tol, max_iter=1000).fit(xtr[tr], ytr[tr])
            accs.append(float((m.predict(xtr[va]) == ytr[va]).mean()))
        cv.append({"c": c, "mean_accuracy": float(np.mean(accs))})
    best = max(cv, key=lambda r: (r["mean_accuracy"], -r["c"]))["c"]
    model = LogisticRegression(C=best, tol=a.tol, max_iter=1000).fit(xtr, ytr)
    acc = float((model.predict(xte) == yte).mean())
    print(json.dumps({
        "impl": "sklearn " + sklearn.__version__,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "train_rows": len(tr_text),
        "test_rows": len(te_text),
        "features": len(vec.vocabulary_),
        "cv": cv,
        "best_c": best,
        "accuracy": acc,
        "n_iter": int(np.max(model.n_iter_)),
        "seconds": time.perf_counter() - start,
    }))


if __name__ == "__main__":
    main()
