#!/usr/bin/env python3
"""scikit-learn agreement check: the Python numbers the Rust pipeline's numbers must match.

The project claims that, on the SAME features (same layers, same C), the Rust classifier
(`kind: logreg`, `kind: layer_sweep`, `kind: fuse` + `logreg`) scores within 0.5 accuracy
points of scikit-learn. This script produces the scikit-learn side of that comparison straight
from the cache artifacts, with no Rust involved:

  features mode  -- an EXTRACT artifact (cache/artifacts/<key>/{train,test}.parquet with `id`,
                    `label` and `layer_0..layer_n` fixed_size_list<float> columns; also works on
                    fuse/contrastive artifacts through `column:embedding`). For each configuration
                    and each C: StandardScaler fitted on train (population std, constant
                    features -> 0, exactly like the Rust `Standardizer`), then
                    LogisticRegression(C, solver="lbfgs", max_iter=2000) (multinomial), then test
                    accuracy and macro-F1.

  tfidf mode     -- an INGEST artifact (`text`, `label`): TfidfVectorizer(ngram_range=(1, 2),
                    min_df=2) fitted on train, LogisticRegression(C=1). Two rows: on the raw
                    sparse TF-IDF (the textbook baseline) and on train-standardised dense TF-IDF
                    (what the Rust `tfidf` -> `logreg` stages do: the Rust logreg always
                    standardises its input).

Configurations (features mode, `--config`, repeatable; default: mean:all sweep concat:even4):

  mean:all             element-wise mean of every layer_<i> column (Rust `fuse method: mean,
                       layers: all`; layer_0, the embedding output, included)
  mean:-5,-4,-3,-2,-1  mean over a subset (negative indices count from the end, as in fuse)
  sweep                each layer_<i> on its own (the depth ablation, Rust `layer_sweep`)
  layer:16             one layer
  concat:7,15,22,30    concatenation of the given layers, in that order
  concat:evenK         K evenly spaced layers: floor(L*k/K) for k=1..K, L = last layer index
                       (L=30, K=4 -> 7,15,22,30; L=18 -> 4,9,13,18)
  column:embedding     any vector column as is (fuse/contrastive artifacts)

Output: one JSON document (stdout, or --json FILE) and a markdown table (stdout, after the
JSON, or --markdown FILE). With --expect, rows are compared with the Rust numbers and the exit
status is 1 when any row differs by more than --tolerance (default 0.005 = 0.5 points).

Examples
  PY=/tmp/refenv/bin/python
  # everything at C=0.01 and C=1 on an extract artifact (a key prefix is enough):
  $PY scripts/reference/sklearn_agreement.py features cache/artifacts/125e1c49 --c 0.01 1
  # the paper's 4-layer concat and the last-5 mean, compared with Rust's 0.904 for mean:all@0.01
  $PY scripts/reference/sklearn_agreement.py features cache/artifacts/125e1c49 --c 0.01 \\
      --config mean:all --config concat:5,9,14,18 --config mean:-5,-4,-3,-2,-1 \\
      --expect mean:all@0.01=0.904
  # with 5-fold CV on train for choosing C (as logreg's `select`; folds differ from Rust's)
  $PY scripts/reference/sklearn_agreement.py features ARTIFACT --c 0.01 0.1 1 10 --cv 5
  # TF-IDF baseline from the ingest artifact
  $PY scripts/reference/sklearn_agreement.py tfidf cache/artifacts/b0113aba --expect \\
      tfidf-standardised@1=0.852
  # a Rust logreg artifact's predictions against the same fit here (same labels? probabilities?)
  $PY scripts/reference/sklearn_agreement.py features FUSE_ARTIFACT --config column:embedding \\
      --c 0.01 --predictions column:embedding@0.01=LOGREG_ARTIFACT
  # a Rust layer_sweep (its sweep.json) against the sweep here, layer by layer
  $PY scripts/reference/sklearn_agreement.py features EXTRACT_ARTIFACT --config sweep --c 0.01 \\
      --rust-sweep LAYER_SWEEP_ARTIFACT

Note on tolerance. scikit-learn's lbfgs minimises the loss AVERAGED over rows (the penalty
scaled by 1/(C n)), so its default tol=1e-4 on the gradient is loose: on these features it stops
well before the optimum once C >= 1 or the dimension is large (gemma3-270m mean:all, C=10: 35
iterations and 0.880 at tol 1e-4, 177 iterations and 0.874 at 1e-6; TF-IDF, 12,079 standardised
dims, C=1: 9 iterations and 0.846 at 1e-4, 30 iterations and 0.852 at 1e-6). The agreement claim
is about the same OPTIMUM, so the default here is tol=1e-6 (1e-6 and 1e-8 give identical
predictions on every case tried). `--tol 1e-4` reproduces an out-of-the-box scikit-learn fit.
The "converged" column only says whether scikit-learn raised a ConvergenceWarning (max_iter hit).

Needs numpy, scikit-learn, pyarrow. Threads default to 1 (--threads) so that it can run beside
a build; the data here (2,000 x <=12,160 features) fits in well under 1 GiB.
"""
import argparse
import glob
import json
import math
import os
import sys
import time
import warnings


def _set_threads(argv):
    """BLAS/OpenMP thread counts must be set before numpy is imported."""
    n = "1"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ.setdefault(var, n)


_set_threads(sys.argv)

import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import sklearn  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Loading


def resolve_artifact(path):
    """A folder with train/test parquet, or a cache key (prefix) under cache/artifacts."""
    if os.path.isdir(path):
        return os.path.abspath(path)
    candidates = glob.glob(path + "*")
    if not candidates:
        here = os.path.dirname(os.path.abspath(__file__))
        root = os.path.dirname(os.path.dirname(here))
        candidates = glob.glob(os.path.join(root, "cache", "artifacts", os.path.basename(path) + "*"))
    candidates = [c for c in candidates if os.path.isdir(c)]
    if len(candidates) != 1:
        sys.exit(f"error: {path!r} names {len(candidates)} artifact folders "
                 f"({', '.join(candidates[:5])}); give the folder or an unambiguous key prefix")
    return os.path.abspath(candidates[0])


def read_manifest(folder):
    p = os.path.join(folder, "manifest.json")
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return json.load(f)


def split_path(folder, split):
    p = os.path.join(folder, f"{split}.parquet")
    if not os.path.exists(p):
        sys.exit(f"error: {p} does not exist")
    return p


def label_names(path):
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"llmembed.label_names")
    return json.loads(raw) if raw else None


def vector_columns(path):
    """Names and widths of the fixed_size_list columns of a parquet file."""
    import pyarrow as pa
    out = {}
    for field in pq.read_schema(path):
        if pa.types.is_fixed_size_list(field.type):
            out[field.name] = field.type.list_size
    return out


def layer_columns(cols):
    layers = sorted((int(n.split("_", 1)[1]), n) for n in cols
                    if n.startswith("layer_") and n.split("_", 1)[1].isdigit())
    idx = [i for i, _ in layers]
    if idx and idx != list(range(len(idx))):
        print(f"warning: layer columns are not contiguous from 0: {idx}", file=sys.stderr)
    return idx


def load_columns(path, columns):
    """{column: float32 array (rows x dim)}, labels (int64), ids."""
    table = pq.read_table(path, columns=["id", "label"] + list(columns))
    out = {}
    for c in columns:
        col = table.column(c).combine_chunks()
        dim = col.type.list_size
        if col.null_count:
            sys.exit(f"error: {path}: column {c} has {col.null_count} null rows")
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        out[c] = np.asarray(flat, dtype=np.float32).reshape(len(table), dim)
    y = table.column("label").to_numpy().astype(np.int64)
    ids = table.column("id").to_pylist()
    return out, y, ids


# ----------------------------------------------------------------------------------------------
# Configurations


def parse_layers(spec, n_layers):
    """'all', 'evenK', or a comma list of (possibly negative) layer indices -> list of indices."""
    spec = spec.strip()
    last = n_layers - 1
    if spec == "all":
        return list(range(n_layers))
    if spec.startswith("even"):
        k = int(spec[4:])
        if k < 1 or k > last:
            raise ValueError(f"{spec}: need 1 <= K <= {last}")
        return [math.floor(last * j / k) for j in range(1, k + 1)]
    out = []
    for tok in spec.split(","):
        i = int(tok)
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise ValueError(f"layer {i} out of range (layers 0..{last})")
        out.append(j)
    return out


def expand_configs(specs, cols):
    """Config strings -> list of (name, kind, columns, spec as given). Names use resolved
    layer indices (mean:-2,-1 on a 30-layer model is named mean:29,30)."""
    layer_idx = layer_columns(cols)
    n = len(layer_idx)
    out = []
    seen = set()

    def add(name, kind, columns, spec):
        if name not in seen:  # e.g. concat:even4 and the same explicit list
            seen.add(name)
            out.append((name, kind, columns, spec))

    for spec in specs:
        kind, _, arg = spec.partition(":")
        try:
            if kind == "sweep":
                if not n:
                    raise ValueError("no layer_<i> columns")
                for i in parse_layers(arg or "all", n):
                    add(f"layer:{i}", "single", [f"layer_{i}"], spec)
            elif kind in ("layer", "mean", "concat"):
                if not n:
                    raise ValueError("no layer_<i> columns")
                idx = parse_layers(arg or "all", n)
                if kind == "layer" and len(idx) != 1:
                    raise ValueError("layer: takes one index")
                name = f"{kind}:{arg or 'all'}"
                if arg and arg != "all":
                    name = f"{kind}:{','.join(map(str, idx))}"
                add(name, {"layer": "single"}.get(kind, kind),
                    [f"layer_{i}" for i in idx], spec)
            elif kind == "column":
                if arg not in cols:
                    raise ValueError(f"no vector column {arg!r} (has {', '.join(cols)})")
                add(f"column:{arg}", "single", [arg], spec)
            else:
                raise ValueError("unknown kind (sweep, layer, mean, concat, column)")
        except ValueError as e:
            sys.exit(f"error: --config {spec!r}: {e}")
    return out


def build(kind, arrays):
    if kind == "single":
        return arrays[0]
    if kind == "mean":
        widths = {a.shape[1] for a in arrays}
        if len(widths) != 1:
            sys.exit(f"error: mean of columns with different widths {sorted(widths)}")
        # Accumulate in f64 and round once: the Rust mean is f32 output too; any difference is
        # far below what a classifier can notice.
        acc = np.zeros(arrays[0].shape, dtype=np.float64)
        for a in arrays:
            acc += a
        return (acc / len(arrays)).astype(np.float32)
    if kind == "concat":
        return np.concatenate(arrays, axis=1)
    raise AssertionError(kind)


# ----------------------------------------------------------------------------------------------
# Fitting


def fit_score(xtr, ytr, xte, yte, c, max_iter, tol, standardize=True):
    """Returns a dict of metrics; x may be dense or scipy sparse."""
    if standardize:
        scaler = StandardScaler().fit(xtr)
        xtr = scaler.transform(xtr)
        xte = scaler.transform(xte)
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(xtr, ytr)
        secs = time.perf_counter() - t0
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    proba = model.predict_proba(xte)
    pred = model.classes_[np.argmax(proba, axis=1)]
    return {
        "accuracy": float(accuracy_score(yte, pred)),
        "macro_f1": float(f1_score(yte, pred, average="macro")),
        "n_iter": int(np.max(model.n_iter_)),
        "converged": converged,
        "fit_seconds": round(secs, 3),
    }, (pred, proba, model.classes_)


def cv_accuracy(x, y, c, folds, seed, max_iter, tol, standardize=True):
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accs = []
    for tr, va in skf.split(np.zeros(len(y)), y):
        m, _ = fit_score(x[tr], y[tr], x[va], y[va], c, max_iter, tol, standardize)
        accs.append(m["accuracy"])
    return float(np.mean(accs))


# ----------------------------------------------------------------------------------------------
# Expectations and output


def parse_expect(items):
    """'NAME[@C]=ACC' -> list of (name, c or None, acc). ACC may be a fraction or a percentage."""
    out = []
    for it in items or []:
        left, eq, right = it.rpartition("=")
        if not eq:
            sys.exit(f"error: --expect {it!r}: want NAME[@C]=ACCURACY")
        name, at, c = left.partition("@")
        acc = float(right)
        if acc > 1.0:
            acc /= 100.0
        out.append((name, float(c) if at else None, acc))
    return out


def parse_predictions(items):
    """'NAME@C=PATH' -> {(name, c): path}; PATH is a predictions.parquet or a logreg artifact
    folder / key prefix holding one."""
    out = {}
    for it in items or []:
        left, eq, path = it.partition("=")
        name, at, c = left.partition("@")
        if not (eq and at):
            sys.exit(f"error: --predictions {it!r}: want NAME@C=PATH")
        if not path.endswith(".parquet"):
            path = os.path.join(resolve_artifact(path), "predictions.parquet")
        if not os.path.exists(path):
            sys.exit(f"error: --predictions {it!r}: {path} does not exist")
        out[(name, float(c))] = path
    return out


def compare_predictions(row, path, ids, fitted):
    """Adds to `row` how far the Rust predictions in `path` are from scikit-learn's (by id)."""
    pred, proba, classes = fitted
    t = pq.read_table(path)
    rid = t.column("id").to_pylist()
    rpred = t.column("pred").to_numpy()
    rprobs = pc.list_flatten(t.column("probs").combine_chunks()).to_numpy(
        zero_copy_only=False).reshape(len(rid), -1)
    pos = {k: i for i, k in enumerate(ids)}
    missing = [k for k in rid if k not in pos]
    if missing or len(rid) != len(ids):
        print(f"warning: {path}: {len(rid)} rows, {len(missing)} ids not in the test split",
              file=sys.stderr)
    idx = np.array([pos[k] for k in rid if k in pos])
    keep = np.array([k in pos for k in rid])
    full = np.zeros((len(ids), rprobs.shape[1]))
    full[:, classes] = proba  # classes are label indices 0..k-1
    row["rust_predictions"] = path
    row["same_pred_fraction"] = float((pred[idx] == rpred[keep]).mean())
    row["max_abs_prob_diff"] = float(np.abs(full[idx] - rprobs[keep]).max())
    r_acc = float((rpred[keep] == t.column("label").to_numpy()[keep]).mean())
    row["rust_predictions_accuracy"] = r_acc
    print(f"  vs {path}: same prediction on {100 * row['same_pred_fraction']:.1f}% of rows, "
          f"max |prob diff| {row['max_abs_prob_diff']:.2e}, Rust accuracy {r_acc:.4f}",
          file=sys.stderr)


def rust_sweep_expects(path):
    """A Rust `layer_sweep` sweep.json (or its artifact folder / key prefix) -> expectations
    [(f"layer:{i}", C, test_accuracy)], plus (C, chosen layer)."""
    if not path.endswith(".json"):
        path = os.path.join(resolve_artifact(path), "sweep.json")
    with open(path) as f:
        sweep = json.load(f)
    c = float(sweep["c"])
    exp = [(f"layer:{r['layer']}", c, float(r["test_accuracy"])) for r in sweep["layers"]]
    return exp, c, sweep.get("chosen_layer"), path


def _mark(r, acc, tol):
    r["rust_accuracy"] = acc
    r["delta_points"] = round(100.0 * (r["accuracy"] - acc), 2)
    r["agrees"] = abs(r["accuracy"] - acc) <= tol + 1e-12
    return r["agrees"]


def apply_expect(rows, expects, tol):
    """Marks rows with the Rust accuracy (from --predictions files, then --expect, which wins)
    and whether they agree; returns False if any does not (or an --expect matches no row)."""
    ok = True
    for r in rows:
        if "rust_predictions_accuracy" in r:
            ok &= _mark(r, r["rust_predictions_accuracy"], tol)
    for name, c, acc in expects:
        hits = [r for r in rows if name in (r["config"], r.get("spec")) and (c is None or math.isclose(r["c"], c))]
        if not hits:
            print(f"warning: --expect {name}@{c}: no such row", file=sys.stderr)
            ok = False
            continue
        for r in hits:
            ok &= _mark(r, acc, tol)
    return ok


def markdown(rows, title, with_cv):
    has_rust = any("rust_accuracy" in r for r in rows)
    has_pred = any("same_pred_fraction" in r for r in rows)
    head = ["config", "C", "dim", "accuracy", "macro-F1"]
    if with_cv:
        head += ["CV acc", "chosen C"]
    head += ["iters", "converged"]
    if has_rust:
        head += ["Rust acc", "Δ points", "agrees"]
    if has_pred:
        head += ["same preds", "max Δprob"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" if h in ("config", "converged", "agrees", "chosen C")
                            else "---:" for h in head) + "|"]
    for r in rows:
        cells = [f"`{r['config']}`", f"{r['c']:g}", str(r["dim"]),
                 f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}"]
        if with_cv:
            cells += [f"{r['cv_accuracy']:.4f}" if "cv_accuracy" in r else "",
                      "yes" if r.get("chosen") else ""]
        cells += [str(r["n_iter"]), "yes" if r["converged"] else "**no**"]
        if has_rust:
            if "rust_accuracy" in r:
                cells += [f"{r['rust_accuracy']:.4f}", f"{r['delta_points']:+.2f}",
                          "yes" if r["agrees"] else "**NO**"]
            else:
                cells += ["", "", ""]
        if has_pred:
            cells += ([f"{100 * r['same_pred_fraction']:.1f}%", f"{r['max_abs_prob_diff']:.1e}"]
                      if "same_pred_fraction" in r else ["", ""])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def emit(doc, md, args, ok):
    text = json.dumps(doc, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    print()
    print(md, end="")
    if not ok:
        print("\nDISAGREEMENT: at least one --expect row is off by more than "
              f"{100 * args.tolerance:.2f} points (or missing)", file=sys.stderr)
        sys.exit(1)


def common_doc(args, folder, manifest):
    pre = manifest.get("preimage", {})
    return {
        "impl": f"scikit-learn {sklearn.__version__}, numpy {np.__version__}",
        "artifact": folder,
        "artifact_kind": pre.get("kind"),
        "stage_id": manifest.get("stage_id"),
        "params": pre.get("params"),
        "classifier": {"model": "LogisticRegression", "solver": "lbfgs",
                       "max_iter": args.max_iter, "tol": args.tol,
                       "scaling": "StandardScaler fit on train"},
    }


# ----------------------------------------------------------------------------------------------
# Modes


def run_features(args):
    folder = resolve_artifact(args.artifact)
    manifest = read_manifest(folder)
    ptr, pte = split_path(folder, "train"), split_path(folder, "test")
    cols = vector_columns(ptr)
    if not cols:
        sys.exit(f"error: {ptr} has no fixed_size_list vector columns")
    configs = expand_configs(args.config or ["mean:all", "sweep", "concat:even4"], cols)
    needed = sorted({c for _, _, cs, _ in configs for c in cs},
                    key=lambda n: (0, int(n[6:])) if n[6:].isdigit() else (1, n))
    t0 = time.perf_counter()
    tr, ytr, _ = load_columns(ptr, needed)
    te, yte, test_ids = load_columns(pte, needed)
    preds_wanted = parse_predictions(args.predictions)
    load_s = time.perf_counter() - t0
    names = label_names(ptr)
    print(f"loaded {len(ytr)} train / {len(yte)} test rows, {len(needed)} columns "
          f"in {load_s:.1f}s from {folder}", file=sys.stderr)

    rows = []
    for name, kind, cs, spec in configs:
        xtr = build(kind, [tr[c] for c in cs])
        xte = build(kind, [te[c] for c in cs])
        group = []
        for c in args.c:
            m, fitted = fit_score(xtr, ytr, xte, yte, c, args.max_iter, args.tol)
            row = {"config": name, "spec": spec, "columns": cs, "c": c, "dim": int(xtr.shape[1]), **m}
            for key in ((name, c), (spec, c)):
                if key in preds_wanted:
                    compare_predictions(row, preds_wanted.pop(key), test_ids, fitted)
                    break
            if args.cv:
                row["cv_accuracy"] = cv_accuracy(xtr, ytr, c, args.cv, args.seed,
                                                 args.max_iter, args.tol)
            group.append(row)
            print(f"  {name:<28} C={c:<8g} acc={m['accuracy']:.4f} f1={m['macro_f1']:.4f}"
                  + (f" cv={row['cv_accuracy']:.4f}" if args.cv else "")
                  + ("" if m["converged"] else "  (not converged)"), file=sys.stderr)
        if args.cv:
            # Best CV accuracy; ties to the smaller C (the first in the sorted grid).
            best = max(sorted(group, key=lambda r: r["c"]), key=lambda r: r["cv_accuracy"])
            best["chosen"] = True
        rows.extend(group)

    for (name, c) in preds_wanted:
        print(f"warning: --predictions {name}@{c:g}: no such row", file=sys.stderr)
    expects = parse_expect(args.expect)
    rust_sweep = None
    if args.rust_sweep:
        exp, c, chosen, path = rust_sweep_expects(args.rust_sweep)
        if not any(math.isclose(c, x) for x in args.c):
            print(f"warning: {path} is at C={c:g}, which is not in --c", file=sys.stderr)
        expects = exp + expects
        rust_sweep = {"path": path, "c": c, "chosen_layer": chosen}
    ok = apply_expect(rows, expects, args.tolerance)
    doc = common_doc(args, folder, manifest)
    doc["rust_sweep"] = rust_sweep
    doc.update({"mode": "features", "train_rows": int(len(ytr)), "test_rows": int(len(yte)),
                "label_names": names, "layers": len(layer_columns(cols)),
                "cv": {"folds": args.cv, "seed": args.seed} if args.cv else None,
                "rows": rows})
    sweep = [r for r in rows if r["config"].startswith("layer:")]
    if sweep:
        best = max(sweep, key=lambda r: r["accuracy"])
        doc["best_single_layer_by_test"] = {"config": best["config"], "c": best["c"],
                                            "accuracy": best["accuracy"]}
    title = (f"scikit-learn on `{doc['stage_id'] or '?'}` "
             f"({(doc['params'] or {}).get('model', os.path.basename(folder)[:12])}), "
             f"{len(ytr)} train / {len(yte)} test")
    emit(doc, markdown(rows, title, bool(args.cv)), args, ok)


def run_tfidf(args):
    from sklearn.feature_extraction.text import TfidfVectorizer

    folder = resolve_artifact(args.artifact)
    manifest = read_manifest(folder)
    ptr, pte = split_path(folder, "train"), split_path(folder, "test")
    for path in (ptr, pte):
        have = pq.read_schema(path).names
        for col in ("id", args.text_column, "label"):
            if col not in have:
                sys.exit(f"error: {path} has no column {col!r} (has {', '.join(have[:8])}); "
                         "tfidf mode wants an ingest (or augment) artifact")
    ttr = pq.read_table(ptr, columns=[args.text_column, "label"])
    tte = pq.read_table(pte, columns=["id", args.text_column, "label"])
    test_ids = tte.column("id").to_pylist()
    preds_wanted = parse_predictions(args.predictions)
    xtr_text = [s or "" for s in ttr.column(args.text_column).to_pylist()]
    xte_text = [s or "" for s in tte.column(args.text_column).to_pylist()]
    ytr = ttr.column("label").to_numpy().astype(np.int64)
    yte = tte.column("label").to_numpy().astype(np.int64)

    vec = TfidfVectorizer(ngram_range=(args.ngram_min, args.ngram_max), min_df=args.min_df,
                          max_features=args.max_features, sublinear_tf=args.sublinear_tf)
    xtr = vec.fit_transform(xtr_text)
    xte = vec.transform(xte_text)
    n_feat = int(xtr.shape[1])
    print(f"TF-IDF: {len(ytr)} train / {len(yte)} test rows, {n_feat} terms", file=sys.stderr)

    rows = []
    scalings = {"sparse": False, "standardised": True}
    wanted = ["sparse", "standardised"] if args.scaling == "both" else [args.scaling]
    for s in wanted:
        for c in args.c:
            xa, xb = (xtr, xte)
            if scalings[s]:
                # Dense, centred, as the Rust logreg does with the dense tfidf artifact.
                xa, xb = xtr.toarray(), xte.toarray()
            m, fitted = fit_score(xa, ytr, xb, yte, c, args.max_iter, args.tol,
                                  standardize=scalings[s])
            name = f"tfidf-{s}"
            row = {"config": name, "c": c, "dim": n_feat, **m}
            if (name, c) in preds_wanted:
                compare_predictions(row, preds_wanted.pop((name, c)), test_ids, fitted)
            rows.append(row)
            print(f"  {name:<22} C={c:<6g} acc={m['accuracy']:.4f} f1={m['macro_f1']:.4f}",
                  file=sys.stderr)

    ok = apply_expect(rows, parse_expect(args.expect), args.tolerance)
    doc = common_doc(args, folder, manifest)
    doc["classifier"]["scaling"] = "sparse: none; standardised: dense StandardScaler fit on train"
    doc.update({"mode": "tfidf", "train_rows": int(len(ytr)), "test_rows": int(len(yte)),
                "label_names": label_names(ptr),
                "vectorizer": {"ngram_range": [args.ngram_min, args.ngram_max],
                               "min_df": args.min_df, "max_features": args.max_features,
                               "sublinear_tf": args.sublinear_tf, "n_features": n_feat},
                "rows": rows})
    title = f"scikit-learn TF-IDF baseline, {len(ytr)} train / {len(yte)} test, {n_feat} terms"
    emit(doc, markdown(rows, title, False), args, ok)


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " See the module docstring (head of this file) "
        "for the configuration syntax and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("Configurations"):])
    sub = ap.add_subparsers(dest="mode", required=True)

    def common(p, default_c):
        p.add_argument("artifact", help="artifact folder (cache/artifacts/<key>) or a key prefix")
        p.add_argument("--c", type=float, nargs="+", default=default_c,
                       help=f"inverse regularisation strength(s) (scikit-learn C); "
                            f"default {' '.join(map(str, default_c))}")
        p.add_argument("--max-iter", type=int, default=2000, help="lbfgs iterations (2000)")
        p.add_argument("--tol", type=float, default=1e-6,
                       help="lbfgs tolerance (default 1e-6, NOT scikit-learn's 1e-4: see the "
                            "note on tolerance at the head of this file)")
        p.add_argument("--expect", action="append", metavar="NAME[@C]=ACC",
                       help="Rust accuracy to compare with, e.g. mean:all@0.01=0.904 "
                            "(fraction or percent; NAME is a row's config as printed, or the "
                            "--config spec as given, e.g. concat:even4; without @C every C); "
                            "repeatable; exit 1 on disagreement")
        p.add_argument("--predictions", action="append", metavar="NAME@C=PATH",
                       help="Rust predictions to compare with row NAME at C: PATH is a "
                            "predictions.parquet or a logreg artifact folder/key prefix; adds the "
                            "share of identical predicted labels, the max |probability "
                            "difference| and (unless --expect gives it) the Rust accuracy; "
                            "repeatable")
        p.add_argument("--tolerance", type=float, default=0.005,
                       help="allowed |accuracy difference| for --expect (0.005 = 0.5 points)")
        p.add_argument("--json", metavar="FILE", help="write the JSON here instead of stdout")
        p.add_argument("--markdown", metavar="FILE", help="also write the markdown table here")
        p.add_argument("--threads", type=int, default=1,
                       help="BLAS/OpenMP threads (1; read before numpy is imported)")

    pf = sub.add_parser("features", help="logistic regression on extract-artifact layers",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=__doc__[__doc__.index("Configurations"):
                                       __doc__.index("Output:")])
    common(pf, [1.0])
    pf.add_argument("--config", action="append", metavar="SPEC",
                    help="mean:all | mean:I,J,.. | sweep[:I,J,..] | layer:I | concat:I,J,.. | "
                         "concat:evenK | column:NAME; repeatable "
                         "(default: mean:all sweep concat:even4)")
    pf.add_argument("--cv", type=int, default=0, metavar="FOLDS",
                    help="also report stratified k-fold CV accuracy on train for each C and mark "
                         "the C it would choose (0 = off). The folds are scikit-learn's, not the "
                         "Rust ones, so the chosen C can differ on near-ties")
    pf.add_argument("--seed", type=int, default=42, help="CV shuffle seed (42)")
    pf.add_argument("--rust-sweep", metavar="PATH",
                    help="a Rust layer_sweep sweep.json, or its artifact folder / key prefix: "
                         "its per-layer test accuracies become --expect rows for layer:<i> at "
                         "its C (run with --config sweep and that C)")
    pf.set_defaults(func=run_features)

    pt = sub.add_parser("tfidf", help="TF-IDF + logistic regression from an ingest artifact")
    common(pt, [1.0])
    pt.add_argument("--text-column", default="text")
    pt.add_argument("--ngram-min", type=int, default=1)
    pt.add_argument("--ngram-max", type=int, default=2)
    pt.add_argument("--min-df", type=int, default=2)
    pt.add_argument("--max-features", type=int, default=None,
                    help="vocabulary cap (default none; the Rust tfidf stage defaults to 20000, "
                         "which only matters when the train vocabulary is larger)")
    pt.add_argument("--sublinear-tf", action="store_true")
    pt.add_argument("--scaling", choices=["sparse", "standardised", "both"], default="both",
                    help="sparse: LR on raw TF-IDF; standardised: dense StandardScaler first "
                         "(what the Rust logreg does); both (default)")
    pt.set_defaults(func=run_tfidf)

    args = ap.parse_args()
    for c in args.c:
        if not c > 0:
            ap.error(f"--c must be > 0 (got {c})")
    args.func(args)


if __name__ == "__main__":
    main()
