#!/usr/bin/env bash
# Extraction speed, side by side in one run on the same texts, file and thread count:
# PyTorch + transformers in float32 (scripts/peers/pytorch_extract.py), llama.cpp through
# llama-cpp-python when that Python has it (scripts/peers/llamacpp_extract.py), then the Rust
# extract stage with compute f32 and bf16 (`xtask bench extract`), then the ratios of real tokens/s.
#
# Usage: scripts/peers/extract_side_by_side.sh [N_TEXTS] [PYTHON] [PRESET]
#   N_TEXTS  first N AG News test texts (default 500)
#   PYTHON   a Python with torch, transformers, gguf, pyarrow (default /tmp/refenv/bin/python)
#   PRESET   a GGUF model preset (default smollm2-135m; qwen2.5-coder-0.5b, qwen2.5-coder-1.5b)
# Run it on an otherwise idle machine: the three runs share the same two cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-500}"
py="${2:-/tmp/refenv/bin/python}"
preset="${3:-smollm2-135m}"

cargo build --release --quiet --package xtask
xtask=./target/release/xtask
gguf=$($xtask fetch "$preset" | awk '{print $2}')

tps() { grep -oE '[0-9.]+ (real )?tokens/s' | grep -oE '^[0-9.]+' | tail -1; }

echo "== PyTorch fp32 (2 threads)"
torch_out=$("$py" scripts/peers/pytorch_extract.py "$gguf" "$n" 2 2>/dev/null | tail -1)
echo "$torch_out"
torch=$(echo "$torch_out" | tps)

llama=""
if "$py" -c "import llama_cpp" 2>/dev/null; then
  echo "== llama.cpp (2 threads)"
  llama_out=$("$py" scripts/peers/llamacpp_extract.py "$gguf" "$n" 2 2>/dev/null | tail -1)
  echo "$llama_out"
  llama=$(echo "$llama_out" | tps)
fi

declare -A rust
for compute in f32 bf16; do
  echo "== Rust extract, compute $compute"
  out=$($xtask bench extract --model "$preset" --texts "$n" --compute "$compute" 2>&1)
  echo "$out" | grep -E "embedded|peak"
  rust[$compute]=$(echo "$out" | grep embedded | tps)
done

echo "== $preset, $n texts, $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs) (cpu family $(grep -m1 "cpu family" /proc/cpuinfo | cut -d: -f2 | xargs))"
echo "== real tokens/s: pytorch-f32 $torch, rust-f32 ${rust[f32]}, rust-bf16 ${rust[bf16]}"
awk -v t="$torch" -v f="${rust[f32]}" -v b="${rust[bf16]}" \
  'BEGIN { printf "== ratio to PyTorch fp32: rust-f32 %.2fx, rust-bf16 %.2fx\n", f / t, b / t }'
if [ -n "$llama" ]; then
  awk -v l="$llama" -v f="${rust[f32]}" -v b="${rust[bf16]}" \
    'BEGIN { printf "== ratio to llama.cpp (%s tokens/s): rust-f32 %.2fx, rust-bf16 %.2fx\n", l, f / l, b / l }'
fi
