#!/usr/bin/env bash
# One GPU lease: the gpu-marked tests, then (optionally) `vidx bench gpu`. Results under $OUT.
#   bash tools/gpu_check.sh [tests|bench|all]
# Run after the devkit parts are received (. /tmp/devkit/env); models and photos come in .devcache.
set -uo pipefail
what=${1:-all}
export PYTHONPATH=$PWD:${PYTHONPATH:-} VIDX_CACHE_DIR=$PWD/.devcache VIDX_REQUIRE_GPU=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import PyNvVideoCodec as n, onnxruntime as o, cupy as c, av; print('pynvc', getattr(n,'__version__','?'), 'ort', o.__version__, o.get_available_providers(), 'cupy', c.__version__, 'av', av.__version__)" | tee -a "$OUT/gpu.txt"
if [ "$what" = tests ] || [ "$what" = all ]; then
  timeout 420 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py --durations=8 2>&1 | tail -60 | tee "$OUT/gpu_tests.txt"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 -m vidx bench gpu --work-dir /tmp/vidx-bench ${BENCH_ARGS:-} --save "$OUT/bench_gpu.json" 2>&1 | tail -60 | tee "$OUT/bench_gpu.txt"
fi
