#!/usr/bin/env bash
# The one prepared GPU check of the scale work (issue 38), sized for under 8 minutes on one
# H100: the CUDA tests, the Laplace uncertainty benchmark at 128x128 with its phase
# breakdown, and the scaling benchmark up to 512x512. Run from the repository root with the
# project's environment (CUDA jax + ASTRA) and the real data at ../shared/data:
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes OUT_DIR/{cuda_tests.txt,uncertainty_128.json,scaling.json,*.log} (default $OUT or
# /tmp/gpu_check). Each step has its own time limit so one slow step cannot eat the others.
set -u
OUT_DIR=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak memory as used, not as reserved
start=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*"; }

stamp "devices"
$PY -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$OUT_DIR/devices.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$OUT_DIR/devices.txt"

stamp "CUDA tests (limit 90 s)"
timeout 90 $PY -m pytest -q -x tests/test_cuda.py 2>&1 | tail -15 | tee "$OUT_DIR/cuda_tests.txt"

stamp "Laplace at 128x128 with its phase breakdown (limit 150 s)"
(cd benchmarks && timeout 150 $PY uncertainty.py --methods laplace \
    --scans ellipses_128_fanflat,htc2022_ta --json "$OUT_DIR/uncertainty_128.json") \
    > "$OUT_DIR/uncertainty_128.log" 2>&1
tail -12 "$OUT_DIR/uncertainty_128.log"

stamp "scaling up to 512x512, HTC2022 ta and simulated, 60 views (limit 210 s)"
(cd benchmarks && timeout 210 $PY scaling.py --max-size 512 --json "$OUT_DIR/scaling.json") \
    > "$OUT_DIR/scaling.log" 2>&1
tail -14 "$OUT_DIR/scaling.log"
stamp "done"
