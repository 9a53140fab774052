#!/usr/bin/env python3
"""Does the model's own answer help the heads? A probe on stored features (issue #18).

An instruct model asked "Answer with one word: World, Sports, Business or Technology" in its
chat template, with the assistant's turn left open, would write its answer next: the logits of
the four answer words at that position are a zero-shot classifier that needs no training rows.
Those logits are the final-norm output of the last token (the extract stage's `layer_<n>`
column with `pooling: last`, which equals HF's last hidden state) times the rows of the
model's output matrix for the four words' tokens. So this script reads them off the stored
features and the GGUF file, with nothing re-run:

1. zero-shot accuracy of the argmax over the four answer logits, on the train and test rows;
2. a logistic regression on the four logits (C by 5-fold CV on the train rows), its CV and
   test accuracy;
3. the soft average of given heads' out-of-fold probabilities (their `cv_predictions.parquet`)
   with and without the four-logit regression's out-of-fold probabilities (at an equal say, and
   at 0.05-0.3 of the vote), over the same rows: whether the zero-shot prior adds what CV can
   see; and the same combinations on the test rows (the heads' `predictions.parquet`).

The folds of step 2 are scikit-learn's (stratified, shuffled with the pipeline's seed), not
the pipeline's own: good enough for a probe of a four-column regression, which moves little
between folds; a candidate in a pipeline would need the stage's own folds.

Usage:
  answer_logits.py FEATURES_DIR MODEL.gguf LAYER [HEAD_DIR ...]
FEATURES_DIR: an extract stage's artifact directory, with its `train.parquet` and
`test.parquet` (`xtask show --json FILE STAGE` names it); LAYER: its last layer column (`layer_28` for Qwen2.5-Coder-1.5B); HEAD_DIR: the
artifact directories of `logreg`/`mlp` stages with `select:` (their `cv_predictions.parquet`).
Needs numpy, pyarrow, gguf and scikit-learn.
"""

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from gguf import GGUFReader
from gguf.quants import dequantize
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

# The words the prompt asks for, in the data set's class order (AG News: World, Sports,
# Business, Sci/Tech), as the model writes them first after "assistant\n" (no leading space).
ANSWERS = ["World", "Sports", "Business", "Technology"]
SEED = 42


def answer_rows(gguf_path):
    reader = GGUFReader(gguf_path)
    tokens_field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(tokens_field.parts[i]).decode("utf-8", "replace") for i in tokens_field.data]
    ids = []
    for word in ANSWERS:
        found = [i for i, t in enumerate(tokens) if t == word]
        if len(found) != 1:
            sys.exit(f"{gguf_path}: the answer `{word}` is not one token of the vocabulary")
        ids.append(found[0])
    tensors = {t.name: t for t in reader.tensors}
    # The output matrix where the file has one; else the tied embedding table.
    out = tensors.get("output.weight") or tensors["token_embd.weight"]
    rows = np.stack([dequantize(out.data[i : i + 1], out.tensor_type)[0] for i in ids])
    return ids, rows.astype(np.float64)


def read_features(path, layer):
    table = pq.read_table(path, columns=["id", "label", layer])
    ids = table.column("id").to_pylist()
    labels = table.column("label").to_pylist()
    x = np.array(table.column(layer).to_pylist(), dtype=np.float64)
    return ids, labels, x


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    features, model, layer = sys.argv[1:4]
    heads = sys.argv[4:]
    token_ids, rows = answer_rows(model)
    print(f"answer tokens: {dict(zip(ANSWERS, token_ids))}")
    ids, labels, x = read_features(Path(features) / "train.parquet", layer)
    classes = sorted(set(labels))
    y = np.array([classes.index(l) for l in labels])
    logits = x @ rows.T
    print(f"zero-shot accuracy, train rows ({len(y)}): {np.mean(logits.argmax(1) == y):.4f}")
    t_ids, t_labels, t_x = read_features(Path(features) / "test.parquet", layer)
    t_y = np.array([classes.index(l) for l in t_labels])
    t_logits = t_x @ rows.T
    print(f"zero-shot accuracy, test rows ({len(t_y)}): {np.mean(t_logits.argmax(1) == t_y):.4f}")

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    best = None
    for c in [0.001, 0.01, 0.1, 1.0, 10.0]:
        lr = LogisticRegression(C=c, max_iter=2000)
        oof = cross_val_predict(lr, logits, y, cv=folds, method="predict_proba")
        acc = np.mean(oof.argmax(1) == y)
        print(f"four-logit LR, C = {c}: CV {acc:.4f}")
        if best is None or acc > best[0]:
            best = (acc, c, oof)
    acc, c, oof = best
    fitted = LogisticRegression(C=c, max_iter=2000).fit(logits, y)
    print(f"four-logit LR: C = {c}, CV {acc:.4f}, test {np.mean(fitted.predict(t_logits) == t_y):.4f}")

    if not heads:
        return
    # The heads' probabilities of the train rows out of fold, and of the test rows.
    probs = [head_probs(Path(h) / "cv_predictions.parquet", ids, len(classes)) for h in heads]
    t_probs = [head_probs(Path(h) / "predictions.parquet", t_ids, len(classes)) for h in heads]
    for head, p in zip(heads, probs):
        print(f"{Path(head).name}: out-of-fold {np.mean(p.argmax(1) == y):.4f}")
    mean, t_mean = np.mean(probs, axis=0), np.mean(t_probs, axis=0)
    t_prior = fitted.predict_proba(t_logits)
    combined = [
        ("heads, soft", mean, t_mean),
        ("heads + four-logit LR, soft", np.mean(probs + [oof], axis=0), np.mean(t_probs + [t_prior], axis=0)),
    ]
    # The four-logit regression with a smaller say than a head's: (1 - w) heads + w prior.
    for w in [0.05, 0.1, 0.2, 0.3]:
        combined.append(
            (f"heads + four-logit LR at weight {w}", (1 - w) * mean + w * oof, (1 - w) * t_mean + w * t_prior)
        )
    for name, cv_p, test_p in combined:
        cv_acc = np.mean(cv_p.argmax(1) == y)
        test_acc = np.mean(test_p.argmax(1) == t_y)
        print(f"{name}: out-of-fold {cv_acc:.4f}, test {test_acc:.4f}")


def head_probs(path, ids, classes):
    """A head's `probs` column (a predictions file) in the order of `ids`."""
    table = pq.read_table(path)
    values = np.array(table.column("probs").to_pylist(), dtype=np.float64)
    at = {i: k for k, i in enumerate(ids)}
    p = np.zeros((len(ids), classes))
    for row, i in enumerate(table.column("id").to_pylist()):
        p[at[i]] = values[row]
    return p

if __name__ == "__main__":
    main()
