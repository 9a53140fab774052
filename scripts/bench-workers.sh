#!/usr/bin/env bash
# Overhead of sharing an extraction: 2 workers x 1 thread (`run --worker`, then the finishing
# `run`) against one 2-thread `run`, each on a fresh cache, SmolLM2 over AG News texts. Prints
# both wall times, their ratio, the CPU model, and whether any shard was published twice.
# Usage: scripts/bench-workers.sh [BINARY] [TRAIN_PER_CLASS]   (default: target/release/xtask, 250)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/xtask}
per_class=${2:-250}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
models=$(pwd)/cache/models
cat > "$work/p.yaml" <<YAML
name: bench-workers
settings:
  seed: 1
  models_dir: $models
stages:
  - id: data
    kind: ingest
    params:
      dataset: ag_news
      splits:
        train: {sample: {per_class: $per_class}}
  - id: llm
    kind: extract
    inputs: [data]
    params:
      model: smollm2-135m
      layers: [8]
      shard_rows: 25
YAML
run() { "$bin" --quiet --cache "$work/$1" --results "$work/r-$1" "${@:2}"; }
# The data stage first in both caches, so that both timings are extraction only.
run one run "$work/p.yaml" --until data >/dev/null
run two run "$work/p.yaml" --until data >/dev/null

t0=$(date +%s.%N)
RAYON_NUM_THREADS=2 run one run "$work/p.yaml" >/dev/null
t1=$(date +%s.%N)
export RUST_LOG=warn,llmembed_extract=debug
RAYON_NUM_THREADS=1 run two run "$work/p.yaml" --worker 2>"$work/w1.log" >/dev/null &
RAYON_NUM_THREADS=1 run two run "$work/p.yaml" --worker 2>"$work/w2.log" >/dev/null &
wait
tw=$(date +%s.%N)
RAYON_NUM_THREADS=2 run two run "$work/p.yaml" 2>"$work/f.log" >/dev/null
t2=$(date +%s.%N)

one=$(awk "BEGIN {print $t1 - $t0}")
two=$(awk "BEGIN {print $t2 - $t1}")
dups=$(cat "$work"/w1.log "$work"/w2.log "$work"/f.log | grep -o 'published shard [0-9]*' | sort | uniq -d | wc -l)
shards=$(cat "$work"/w1.log "$work"/w2.log "$work"/f.log | grep -c 'published shard' || true)
a=$(cd "$work/one/artifacts" && find . -name '*.parquet' | sort | xargs sha256sum | sha256sum)
b=$(cd "$work/two/artifacts" && find . -name '*.parquet' | sort | xargs sha256sum | sha256sum)
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "texts: $((per_class * 4)), shards published: $shards, published twice: $dups"
printf 'one process x 2 threads: %.1fs\n2 workers x 1 thread + finishing run: %.1fs (workers %.1fs)\nratio: %.3f\n' \
  "$one" "$two" "$(awk "BEGIN {print $tw - $t1}")" "$(awk "BEGIN {print $two / $one}")"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (other processes on the machine distort both timings)"
[ "$a" = "$b" ] && echo "artifacts: byte-identical" || { echo "artifacts differ" >&2; exit 1; }
