#!/usr/bin/env python3
"""Issue #15's bar: `predict` on a pipeline's own test texts, given as a CSV without a label
column, gives each classifier's own test predictions (same class on every row, probabilities
within 1e-6).

Usage (after `cargo xtask run P` for each pipeline):
    python3 -m venv /tmp/bars && /tmp/bars/bin/pip install pyarrow
    /tmp/bars/bin/python scripts/bars/predict_matches_pipeline.py target/release/xtask \
        pipelines/agnews.yaml:lr pipelines/agnews-fusion.yaml:concat4_lr \
        pipelines/agnews-fusion.yaml:hard pipelines/agnews-llmembed.yaml:mlp

Needs only pyarrow; the CSV is written with the csv module. Prints one line per stage and exits
non-zero if any differs.
"""
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq


def show(xtask, pipeline):
    out = subprocess.run([xtask, "show", pipeline, "--json"], check=True,
                         capture_output=True, text=True).stdout
    return {s["id"]: s for s in json.loads(out)["stages"]}


def file_of(stage, name):
    for f in stage["files"]:
        if f["name"] == name:
            return f["path"]
    raise SystemExit(f"stage {stage['id']} has no {name} (run the pipeline first)")


def main():
    xtask, targets = sys.argv[1], sys.argv[2:]
    failed = False
    for target in targets:
        pipeline, stage_id = target.rsplit(":", 1)
        stages = show(xtask, pipeline)
        ingest = next(s for s in stages.values() if s["kind"] == "ingest")
        texts = pq.read_table(file_of(ingest, "test.parquet")).to_pydict()
        own = pq.read_table(file_of(stages[stage_id], "predictions.parquet")).to_pydict()
        classes = json.loads(pq.read_schema(
            file_of(stages[stage_id], "predictions.parquet")).metadata[b"llmembed.label_names"])
        with tempfile.TemporaryDirectory() as tmp:
            csv_path, out_path = Path(tmp, "new.csv"), Path(tmp, "out.jsonl")
            with open(csv_path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "text"])  # no label column
                w.writerows(zip(texts["id"], texts["text"]))
            subprocess.run([xtask, "predict", pipeline, "--stage", stage_id, "--input",
                            str(csv_path), "--out", str(out_path), "--quiet"], check=True)
            rows = {r["id"]: r for r in map(json.loads, open(out_path))}
        same, worst = 0, 0.0
        for i, rid in enumerate(own["id"]):
            r = rows[rid]
            same += r["label"] == classes[own["pred"][i]]
            for c, name in enumerate(classes):
                worst = max(worst, abs(r[name] - own["probs"][i][c]))
        n = len(own["id"])
        ok = same == n and worst <= 1e-6
        failed |= not ok
        print(f"{pipeline} {stage_id}: same class {same}/{n}, "
              f"largest probability difference {worst:.3g} {'ok' if ok else 'FAILED'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
