#!/usr/bin/env bash
# One prepared GPU run of the jaxembed benchmark harness (not run yet: no GPU was lent).
#
# Assumes the GPU machine's environment: python3.12 with jax 0.11 (CUDA), flax, optax, numpy,
# torch 2.11 (CUDA), matplotlib if present; nothing is installed or fetched. Run from the repo
# root; results (JSON, markdown, PNG, logs) go to $OUT (default ./gpu_results).
#
# Stages, each its own process with its own time limit, most important first. A stage cut by its
# timeout still leaves the JSON written after each finished (V, D, dtype) (marked "partial").
#   1. cas: the jaxlib 0.10.2-0.11.0 GPU scatter-add trap (openxla/xla#46225): fwd+bwd and the
#      options with uniform, Zipf and padding-heavy ids. Compare the skewed rows with uniform
#      (target skewed / uniform <= 1.5) and padding_idx against plain.
#   2. f32: the grid in float32 with every operation (train steps with uniform ids).
#   3. bf16: the same in bfloat16.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# JAX must not grab 75 % of the card: torch runs in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3.12}
command -v "$PY" >/dev/null || PY=python3

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv || true
  "$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available(), torch.version.cuda)" || true
  "$PY" -c "import flax, optax; print('flax', flax.__version__, 'optax', optax.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stage() {  # stage NAME SECONDS ARGS...
  local name=$1 secs=$2; shift 2
  echo "== stage $name (limit ${secs}s): $*"
  # EXTRA_ARGS (e.g. "--V 300 --D 8 --n 32") overrides sizes for a dry run on a CPU machine.
  # shellcheck disable=SC2086
  timeout --signal=TERM --kill-after=10 "$secs" "$PY" -m benchmarks --out "$OUT/$name" "$@" \
    ${EXTRA_ARGS:-} > "$OUT/$name.log" 2>&1
  echo "   exit $? ; $(grep -c '^== ' "$OUT/$name.log") groups timed"
  tail -n 25 "$OUT/$name.log"
}

stage cas 200 --V 32768,1048576 --D 128 --n 4096,65536 --dtypes float32,bfloat16 \
  --dists uniform,zipf,padding --ops fwd,fwdbwd,opt_fwdbwd --reps 7 --target-ms 5
stage f32 190 --V 32768,1048576 --D 64,128,768 --n 4096,65536 --dtypes float32 \
  --dists uniform --ops fwd,fwdbwd,sgd,adam,opt_fwd --reps 7 --target-ms 5
stage bf16 120 --V 32768,1048576 --D 128,768 --n 4096,65536 --dtypes bfloat16 \
  --dists uniform --ops fwd,fwdbwd,sgd,opt_fwd --reps 5 --target-ms 5
date -u >> "$OUT/env.txt"
