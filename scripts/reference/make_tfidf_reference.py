#!/usr/bin/env python3
"""Writes crates/fuse/tests/fixtures/tfidf_reference.json: scikit-learn TfidfVectorizer outputs on
a tiny fixed corpus, which `crates/fuse/tests/tfidf_reference.rs` compares the `tfidf` stage to.

Run from the repository root:  /tmp/refenv/bin/python scripts/reference/make_tfidf_reference.py
(needs scikit-learn and numpy; the fixture records the versions used).
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer

TRAIN = [
    "The stock market fell as oil prices rose; the market closed lower.",
    "Oil prices rose again, and the stock market fell for a third day.",
    "The team won the final game of the season in overtime.",
    "The team lost the game, but the season is not over.",
    "New software from the company fixes a security flaw in the browser.",
    "The company released new software and a browser update on Monday.",
    "Café owners in Zürich say prices rose; café sales fell.",
    "A game of chess: the final move won the world title.",
    "Security experts say the flaw affects every browser version 2.0 and 3.1.",
    "The market for new software is over 42 billion dollars!",
]
TEST = [
    "The market fell again as oil prices rose.",
    "The team won the game in the final minute.",
    "Nothing here matches anything seen before: zebra xylophone.",
    "A café in Zürich released new software.",
]

CASES = [
    {
        "name": "bigrams_min_df2_max_features",
        "params": {"ngram_range": [1, 2], "min_df": 2, "max_df": 1.0,
                   "max_features": 13, "sublinear_tf": False, "lowercase": True},
    },
    {
        "name": "unigrams_sublinear_max_df",
        "params": {"ngram_range": [1, 1], "min_df": 1, "max_df": 0.5,
                   "max_features": None, "sublinear_tf": True, "lowercase": True},
    },
    {
        "name": "defaults",
        "params": {"ngram_range": [1, 2], "min_df": 2, "max_df": 1.0,
                   "max_features": 20000, "sublinear_tf": False, "lowercase": True},
    },
]


def check_no_tie_at_cut(p):
    """scikit-learn keeps the `max_features` most frequent terms with an unstable argsort: a tie
    at the cut would make the reference arbitrary, so refuse to write one."""
    if p["max_features"] is None:
        return
    from sklearn.feature_extraction.text import CountVectorizer
    cv = CountVectorizer(ngram_range=tuple(p["ngram_range"]), min_df=p["min_df"],
                         max_df=p["max_df"], lowercase=p["lowercase"])
    counts = np.asarray(cv.fit_transform(TRAIN).sum(axis=0)).ravel()
    k = p["max_features"]
    if len(counts) > k:
        s = np.sort(counts)[::-1]
        assert s[k - 1] != s[k], f"tie at the max_features cut ({s[k - 1]}); change the case"


def main():
    out = {"sklearn_version": sklearn.__version__, "numpy_version": np.__version__,
           "train": TRAIN, "test": TEST, "cases": []}
    for case in CASES:
        p = case["params"]
        check_no_tie_at_cut(p)
        v = TfidfVectorizer(ngram_range=tuple(p["ngram_range"]), min_df=p["min_df"],
                            max_df=p["max_df"], max_features=p["max_features"],
                            sublinear_tf=p["sublinear_tf"], lowercase=p["lowercase"],
                            norm="l2", smooth_idf=True, use_idf=True, dtype=np.float64)
        xtr = v.fit_transform(TRAIN).toarray()
        xte = v.transform(TEST).toarray()
        out["cases"].append({
            "name": case["name"],
            "params": p,
            "features": v.get_feature_names_out().tolist(),
            "idf": v.idf_.tolist(),
            "train_matrix": xtr.tolist(),
            "test_matrix": xte.tolist(),
        })
    path = pathlib.Path(__file__).resolve().parents[2] / "crates/fuse/tests/fixtures/tfidf_reference.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({len(out['cases'])} cases)")


if __name__ == "__main__":
    main()
