#!/usr/bin/env bash
# The prepared device check of the train-step benchmark: one call on one GPU.
#
#   OUT=runs/gpu_bench bash experiments/gpu_bench.sh      # from the repository root
#
# 1. fp32 (TF32 allowed on both sides), the reference setting: every method of
#    experiments.bench, jkt next to the eager PyTorch reference, fused Table-1 groups,
#    the goal ratios and the Table-1 projection -> $OUT/fp32/bench.{md,json}.
# 2. bf16 compute for the steps Table 1 uses, fused groups in both layouts (unrolled and
#    vmap) -> $OUT/bf16/bench.{md,json}.
# Needs jax[cuda], flax, optax, chex, orbax and (for the reference) torch; not
# tensorflow-datasets. Each part has its own timeout so that a slow first part still
# leaves the second; a killed part leaves bench.partial.json with what it measured.
set -uo pipefail
OUT=${OUT:-runs/gpu_bench}
PY=${PYTHON:-python3}  # the GPU image's python3 holds jax, torch and flax
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
  'optax', optax.__version__, jax.devices())"
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    || echo "torch: not available"
} 2>&1 | tee "$OUT/env.txt"

timeout -k 10 "${FP32_TIMEOUT:-360}" "$PY" -m experiments.bench --reference --overwrite --out "$OUT/fp32" \
  2>&1 | tee "$OUT/fp32.log"

timeout -k 10 "${BF16_TIMEOUT:-150}" "$PY" -m experiments.bench --reference --dtype bfloat16 \
  --no-torch --overwrite --out "$OUT/bf16" \
  --methods ce,ce+act,ce+act+jac:label,vgg9:ce,vgg9:ce+jac_norm,fused:act-group,fused:jac-group,fused-vmap:jac-group \
  2>&1 | tee "$OUT/bf16.log"
