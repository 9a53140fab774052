#!/usr/bin/env python3
"""Writes crates/evaluate/tests/fixtures/metrics_reference.json: a fixed (y_true, y_pred) example
scored by scikit-learn, against which the evaluate crate's metrics are checked (to 1e-12).

The example has 5 classes: class 3 occurs in y_true but is never predicted (precision 0/0) and
class 4 is predicted but never true (recall 0/0), so both zero-division cases are exercised.
Metrics are taken over labels=range(5), as the Rust code does.

    python scripts/reference/make_metrics_reference.py   # needs numpy and scikit-learn
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech", "Other"]

rng = np.random.default_rng(20240611)
n = 97
y_true = rng.choice([0, 1, 2, 3], size=n, p=[0.3, 0.3, 0.25, 0.15])
y_pred = y_true.copy()
# Corrupt about 30% of the predictions, never predicting class 3.
flip = rng.random(n) < 0.3
y_pred[flip] = rng.choice([0, 1, 2, 4], size=flip.sum())
y_pred[y_true == 3] = rng.choice([0, 1, 2, 4], size=(y_true == 3).sum())
assert 3 in y_true and 3 not in y_pred and 4 in y_pred and 4 not in y_true

labels = list(range(len(LABEL_NAMES)))
p, r, f, s = precision_recall_fscore_support(
    y_true, y_pred, labels=labels, average=None, zero_division=0.0)
out = {
    "generator": "scripts/reference/make_metrics_reference.py",
    "sklearn_version": sklearn.__version__,
    "numpy_version": np.__version__,
    "label_names": LABEL_NAMES,
    "y_true": [int(v) for v in y_true],
    "y_pred": [int(v) for v in y_pred],
    "accuracy": float(accuracy_score(y_true, y_pred)),
    "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0.0)),
    "precision": [float(v) for v in p],
    "recall": [float(v) for v in r],
    "f1": [float(v) for v in f],
    "support": [int(v) for v in s],
    "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
}
root = pathlib.Path(__file__).resolve().parents[2]
dest = root / "crates/evaluate/tests/fixtures/metrics_reference.json"
# One key per line, values compact: small and diff-friendly.
dest.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in out.items()) + "\n}\n")
print(f"wrote {dest}")
