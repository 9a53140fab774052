#!/usr/bin/env python3
"""scikit-learn fixture for the Rust logistic regression (crates/classify/src/tests.rs,
`logreg_matches_scikit_learn_on_iris`).

Fits LogisticRegression(solver="lbfgs", multinomial, tol=1e-10, max_iter=100000) on the Iris data
set that scikit-learn ships (150 rows, 4 features, 3 classes: real measurements), standardised
with StandardScaler, at several C, and writes X, y, and per C the coefficients, the intercepts and
the predicted probabilities of every row.

    python3 -m venv /tmp/skenv && /tmp/skenv/bin/pip install scikit-learn numpy
    /tmp/skenv/bin/python scripts/reference/make_logreg_reference.py \
        > crates/classify/tests/fixtures/logreg_iris.json
"""
import json

import numpy as np
import sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def main():
    x, y = load_iris(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    fits = []
    for c in [0.01, 1.0, 100.0]:
        m = LogisticRegression(C=c, solver="lbfgs", tol=1e-10, max_iter=100000).fit(x, y)
        fits.append(
            {
                "c": c,
                "coef": m.coef_.tolist(),  # classes x features
                "intercept": m.intercept_.tolist(),
                "proba": m.predict_proba(x).tolist(),
                "n_iter": int(m.n_iter_[0]),
            }
        )
    print(
        json.dumps(
            {
                "sklearn": sklearn.__version__,
                "x": x.tolist(),
                "y": y.tolist(),
                "fits": fits,
            }
        )
    )


if __name__ == "__main__":
    main()
