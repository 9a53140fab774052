#!/usr/bin/env bash
# Extraction speed, side by side in one run on the same texts, file and thread count:
# PyTorch + transformers in fp32, bf16 and int8-dynamic (scripts/peers/pytorch_extract.py),
# llama.cpp through llama-cpp-python when that Python has it (scripts/peers/llamacpp_extract.py),
# then the Rust extract stage with compute f32, bf16 and int8 (`xtask bench extract`), then the
# ratios of real tokens/s that issue #19's bars ask for, and each Rust run's share of the
# 2-core limit of its instruction (2 x the per-core peak that scripts/peers/fma_peak.rs measures
# just before and just after the Rust runs, the larger taken, over the model's GFLOP per token
# from scripts/peers/model_flops.py).
#
# Usage: scripts/peers/extract_side_by_side.sh [N_TEXTS] [PYTHON] [PRESET]
#   N_TEXTS  first N AG News test texts (default 500)
#   PYTHON   a Python with torch, transformers, gguf, pyarrow (default /tmp/refenv/bin/python)
#   PRESET   the model (default smollm2-135m; gemma3-270m, qwen2.5-coder-0.5b, ...; the
#            encoders minilm-l6 and mpnet-base too)
#   XTASK    (environment) a built xtask binary to use instead of building one (a shared
#            target dir's binary may be another worktree's)
# Run it on an otherwise idle machine: the runs share the same two cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-500}"
py="${2:-/tmp/refenv/bin/python}"
preset="${3:-smollm2-135m}"

xtask="${XTASK:-}"
if [ -z "$xtask" ]; then
  cargo build --release --quiet --package xtask
  xtask="${CARGO_TARGET_DIR:-target}/release/xtask"
fi
gguf=$($xtask fetch "$preset" | awk '{print $2}')
dtypes="fp32 bf16 int8"
computes="f32 bf16 int8"

tps() { grep -oE '[0-9.]+ (real )?tokens/s' | grep -oE '^[0-9.]+' | tail -1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "n/a" }'; }

declare -A torch
for dtype in $dtypes; do
  echo "== PyTorch $dtype (2 threads)"
  out=$("$py" scripts/peers/pytorch_extract.py "$gguf" "$n" 2 "$dtype" 2>/dev/null | tail -1)
  echo "$out"
  torch[$dtype]=$(echo "$out" | tps)
done

llama=""
if "$py" -c "import llama_cpp" 2>/dev/null; then
  echo "== llama.cpp (2 threads)"
  llama_out=$("$py" scripts/peers/llamacpp_extract.py "$gguf" "$n" 2 2>/dev/null | tail -1)
  echo "$llama_out"
  llama=$(echo "$llama_out" | tps)
fi

peaks=$(mktemp -d)
trap 'rm -rf "$peaks"' EXIT
rustc --edition 2024 -O -C target-cpu=native scripts/peers/fma_peak.rs -o "$peaks/fma_peak"
"$peaks/fma_peak" > "$peaks/before"
declare -A rust
for compute in $computes; do
  echo "== Rust extract, compute $compute"
  out=$($xtask bench extract --model "$preset" --texts "$n" --compute "$compute" 2>&1)
  echo "$out" | grep -E "embedded|peak|portable|int8 products"
  rust[$compute]=$(echo "$out" | grep embedded | tps)
done

"$peaks/fma_peak" > "$peaks/after"
# Both cores at once, one fma_peak pinned to each: on a virtual machine the two cores may
# share a physical core's units, or a neighbour may run on one (on an AMD Zen 3 host, 2026-12-07,
# one core alone measured 71-76 GFLOP/s and the other 93-94 in one minute, and both at once
# 95 to 179 in all over an hour), and then 2 x the one-core peak overstates what the two can
# do together.
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  taskset -c 0 "$peaks/fma_peak" > "$peaks/both0" &
  taskset -c 1 "$peaks/fma_peak" > "$peaks/both1"
  wait
fi
torch[int8]="${torch[int8]:-}"
rust[int8]="${rust[int8]:-}"
# The larger of the two measurements of an instruction's per-core peak (GFLOP/s); f32 is the
# AVX-512 FMA, or AVX2's where the CPU has no AVX-512 (AMD Zen 3).
# The GFLOP/s figures of fma_peak's lines matching $1 in the files that follow.
gflops() { local what="$1"; shift; cat "$@" 2>/dev/null | grep "$what" | grep -oE '[0-9.]+ GFLOP' | grep -oE '^[0-9.]+'; }
peak() { gflops "$1" "$peaks/before" "$peaks/after" | sort -g | tail -1; }
gflop=$("$py" scripts/peers/model_flops.py "$gguf")
f32_peak=$(peak "f32 vfmadd zmm" || true)
f32_peak="${f32_peak:-$(peak "f32 vfmadd ymm" || true)}"
# The instruction each Rust run multiplies with: AMX's tiles where the CPU has them and
# LLMEMBED_NO_AMX is unset (fma_peak then measures them too), else AVX512-BF16's vdpbf16ps;
# without it our bf16 is f32 products of rounded values (f32's limit). int8: AMX, else VNNI's
# vpdpbusd, else AVX2's vpmaddwd.
amx_peak() { if [ -z "${LLMEMBED_NO_AMX:-}" ]; then peak "$1" || true; fi; }
bf16_peak=$(amx_peak "bf16 amx")
bf16_peak="${bf16_peak:-$(peak vdpbf16ps || true)}"
bf16_peak="${bf16_peak:-$f32_peak}"
int8_peak=$(amx_peak "int8 amx")
int8_peak="${int8_peak:-$(peak vpdpbusd || true)}"
int8_peak="${int8_peak:-$(peak vpmaddwd || true)}"
share() { awk -v t="$1" -v p="$2" -v g="$gflop" 'BEGIN { if (p > 0) printf "%.0f%%", 100 * t * g / (2 * p); else print "n/a" }'; }
# The two cores' sum for an instruction when both ran at once (empty if they did not).
both() { gflops "$1" "$peaks/both0" "$peaks/both1" | awk '{ s += $1; n++ } END { if (n == 2) printf "%.1f", s }'; }
f32_both=$(both "f32 vfmadd zmm" || true)
f32_both="${f32_both:-$(both "f32 vfmadd ymm" || true)}"

echo "== $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs) (cpu family $(grep -m1 "cpu family" /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d" " -f1-3 /proc/loadavg)"
echo "== real tokens/s ($preset, $n texts): pytorch fp32 ${torch[fp32]}, bf16 ${torch[bf16]}, int8 ${torch[int8]}; rust f32 ${rust[f32]}, bf16 ${rust[bf16]}, int8 ${rust[int8]}"
echo "== rust int8 / rust bf16:     $(ratio "${rust[int8]}" "${rust[bf16]}")  (bar 1.6x)"
echo "== rust int8 / pytorch int8:  $(ratio "${rust[int8]}" "${torch[int8]}")  (bar 2x)"
echo "== rust bf16 / pytorch bf16:  $(ratio "${rust[bf16]}" "${torch[bf16]}")  (bar 2x)"
echo "== rust f32 / pytorch fp32:   $(ratio "${rust[f32]}" "${torch[fp32]}")"
echo "== per-core peaks (GFLOP/s): f32 $f32_peak, bf16 $bf16_peak, int8 $int8_peak; products $gflop GFLOP per token"
echo "== share of the 2-core limit: rust f32 $(share "${rust[f32]}" "$f32_peak"), bf16 $(share "${rust[bf16]}" "$bf16_peak"), int8 $(share "${rust[int8]}" "$int8_peak")  (bar 80% for f32 and bf16)"
if [ -n "$f32_both" ]; then
  # share() takes a per-core peak: half of the two cores' sum.
  half=$(awk -v s="$f32_both" 'BEGIN { print s / 2 }')
  also=""
  [ "$bf16_peak" = "$f32_peak" ] && also=", bf16's (f32 products here) $(share "${rust[bf16]}" "$half")"
  echo "== f32 FMA on both cores at once: $f32_both GFLOP/s in all (2 x the per-core peak: $(awk -v p="$f32_peak" 'BEGIN { print 2 * p }')); rust f32's share of it $(share "${rust[f32]}" "$half")$also"
fi
if [ -n "$llama" ]; then
  echo "== ratio to llama.cpp ($llama tokens/s): rust f32 $(ratio "${rust[f32]}" "$llama"), bf16 $(ratio "${rust[bf16]}" "$llama"), int8 $(ratio "${rust[int8]}" "$llama")"
fi
