#!/usr/bin/env python3
"""Would another kind of head beat the logistic regression? A probe on stored features (#18).

Reads a fuse or extract stage's artifact (its `train.parquet` and `test.parquet`, with one
`embedding` column) and scores heads that the pipeline does not have by 5-fold stratified CV
on the training rows (scikit-learn's folds, shuffled with seed 42), then by test accuracy:
ridge classification, a linear SVM (hinge loss), k nearest neighbours by cosine, and PCA
whitening before the regression, each on standardised features, beside scikit-learn's own
logistic regression at C = 0.01 for scale. A kind whose CV score is not above the pipeline's
own regression's CV is not worth adding as a stage.

Usage:
  heads.py ARTIFACT_DIR        (`xtask show --json FILE STAGE` names the directory)
Needs numpy, pyarrow and scikit-learn.
"""
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC


def load(artifact, split):
    table = pq.read_table(f"{artifact}/{split}.parquet")
    vectors = table.column("embedding").combine_chunks()
    x = vectors.values.to_numpy(zero_copy_only=False).reshape(len(table), -1)
    return x.astype(np.float64), table.column("label").to_numpy()


def main():
    artifact = sys.argv[1]
    x_train, y_train = load(artifact, "train")
    x_test, y_test = load(artifact, "test")
    print(f"train {x_train.shape}, test {x_test.shape}", flush=True)
    folds = StratifiedKFold(5, shuffle=True, random_state=42)
    std = StandardScaler
    heads = {
        f"ridge alpha={alpha:g}": make_pipeline(std(), RidgeClassifier(alpha=alpha))
        for alpha in (1e3, 3e3, 1e4, 3e4, 1e5, 3e5)
    }
    heads |= {
        "logistic regression C=0.01": make_pipeline(std(), LogisticRegression(C=0.01, max_iter=2000)),
        "linear SVM C=1e-3": make_pipeline(std(), LinearSVC(C=1e-3, max_iter=5000)),
        "linear SVM C=1e-4": make_pipeline(std(), LinearSVC(C=1e-4, max_iter=5000)),
        "15 nearest by cosine": make_pipeline(
            std(), Normalizer(), KNeighborsClassifier(15, weights="distance")
        ),
        "PCA 256 whitened + LR C=0.01": make_pipeline(
            std(), PCA(256, whiten=True, random_state=0), LogisticRegression(C=0.01, max_iter=2000)
        ),
    }
    for name, head in heads.items():
        start = time.time()
        cv = cross_val_score(head, x_train, y_train, cv=folds).mean()
        test = (head.fit(x_train, y_train).predict(x_test) == y_test).mean()
        print(f"{name}: CV {cv:.4f}, test {test:.4f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
