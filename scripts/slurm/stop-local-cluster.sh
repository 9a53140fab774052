#!/usr/bin/env bash
# Stops what start-local-cluster.sh started: slurmd, slurmctld (their pid files under the state
# folder) and munged. Jobs still queued or running are cancelled first.
set -uo pipefail
state=${LLMEMBED_SLURM_DIR:-/tmp/llmembed-slurm}
command -v scancel >/dev/null && scancel --quiet --full --user="$(id -un)" 2>/dev/null
for d in slurmd slurmctld; do
  f="$state/$d.pid"
  if [ -f "$f" ]; then
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$f"
  fi
done
if [ -f /run/munge/munged.pid ]; then
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null
fi
echo "slurm: stopped"
