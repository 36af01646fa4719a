#!/usr/bin/env bash
# GPU acceptance run on an NVIDIA machine: the gpu-marked tests, `vidx bench gpu`, pipeline A/B rows, a soak,
# or indexing through the product.
#   bash tools/gpu_check.sh [tests|bench|all|ab|soak|search|product|stress|quick]   (from the repository root; results under $OUT)
# Needs vidx[gpu] installed; models and test photos are cached in .devcache (VIDX_CACHE_DIR).
#   TESTS_K      pytest -k expression for the tests (default: every GPU test)
#   TESTS_LIMIT  seconds before the tests are stopped (default 420)
#   BENCH_ARGS   extra arguments for `vidx bench gpu`
#   AB_ROWS=1    after the bench, the three pipeline rows again with NVDEC decoding every frame
#                (tools/gpu_pipeline_rows.py ... decode-all): what skipping unsampled frames saves
#   ab           tools/gpu_pipeline_rows.py on the bench clips (built by `bench`) with its ROWS / HANDOFFS
#                environment (e.g. HANDOFFS=32,8,32,8 ROWS=fps,keyframes), AB_CODECS (default h264,hevc)
#   soak         tools/gpu_soak.py for SOAK_S seconds (default 600); log in $OUT/soak.jsonl
#   search       guided against full face search: tools/face_search_compare.py (every frame, test + bench
#                archives: tracks lost, stage times), then tools/gpu_pipeline_rows.py once per mode
#                (FACE_SEARCH=guided|full) on the bench clips (built by `bench`, or by the compare) for
#                SEARCH_CODECS (default h264)
#   product      tools/gpu_scaling.py: `vidx index --device gpu` on PRODUCT_COPIES x 2 bench clips (default 42) with
#                its default worker processes, then with one in-process worker (same tracks and search hits?)
#   stress       tools/gpu_capture_stress.py for STRESS_S seconds a scenario (default 30): CUDA graphs recorded beside
#                new ONNX Runtime sessions and NVDEC decoders opening and closing, each scenario in its own process,
#                with vidx's capture gate off and then on (both+gate); each process loads the models first
#   quick        the engine starts on one machine: each shape's set-up, quick and fastest (tools/gpu_startup.py);
#                the pipeline rows (2 fps and every frame) on quick sessions, on the fastest, and three times from
#                the start with the fastest set up behind the quick ones; the GPU tests that compare quick engines
#                with the CPU; `vidx index` from its start to its first video (tools/gpu_scaling.py, PRODUCT_COPIES
#                default 14) with each --engine-start
set -uo pipefail
what=${1:-all}
export PYTHONPATH=$PWD:${PYTHONPATH:-} VIDX_CACHE_DIR=$PWD/.devcache VIDX_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import PyNvVideoCodec as n, onnxruntime as o, cupy as c, av; print('pynvc', getattr(n,'__version__','?'), 'ort', o.__version__, o.get_available_providers(), 'cupy', c.__version__, 'av', av.__version__)" | tee -a "$OUT/gpu.txt"
if [ "$what" = tests ] || [ "$what" = all ]; then
  k=()
  [ -n "${TESTS_K:-}" ] && k=(-k "$TESTS_K")
  timeout "${TESTS_LIMIT:-420}" python3 -m pytest -v -p no:cacheprovider -o addopts="" tests/test_gpu.py "${k[@]}" \
    --durations=12 2>&1 | tee "$OUT/gpu_tests.txt" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error|assert" | tail -60
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 -m vidx bench gpu --work-dir /tmp/vidx-bench ${BENCH_ARGS:-} --save "$OUT/bench_gpu.json" 2>&1 \
    | tee "$OUT/bench_gpu.txt" | tail -60
  if [ "${AB_ROWS:-0}" = 1 ]; then
    python3 tools/gpu_pipeline_rows.py /tmp/vidx-bench decode-all h264 14 decode-all 2>&1 | tee "$OUT/rows_decode_all.jsonl" | tail -5
  fi
fi
if [ "$what" = ab ]; then
  python3 tools/gpu_pipeline_rows.py /tmp/vidx-bench ab "${AB_CODECS:-h264,hevc}" 14 2>"$OUT/ab_rows.jsonl" \
    | tee "$OUT/ab.json"
  grep '"mode"' "$OUT/ab_rows.jsonl" | cut -c1-400
fi
if [ "$what" = search ]; then
  python3 tools/face_search_compare.py /tmp/vidx-search --archives test,bench --device gpu --sampling every-frame \
    > "$OUT/face_search_compare_gpu.jsonl" 2> "$OUT/face_search_compare_gpu.err"; grep summary "$OUT/face_search_compare_gpu.jsonl"
  clips=/tmp/vidx-bench; ls $clips/bench_h264_*.mp4 >/dev/null 2>&1 || clips=/tmp/vidx-search/bench
  for mode in guided full; do
    FACE_SEARCH=$mode python3 tools/gpu_pipeline_rows.py "$clips" "$mode" "${SEARCH_CODECS:-h264}" 14 \
      2>>"$OUT/face_search_rows.err" | tee -a "$OUT/face_search_rows.jsonl" | cut -c1-300
  done
fi
if [ "$what" = soak ]; then
  python3 tools/gpu_soak.py /tmp/vidx-bench "${SOAK_S:-600}" 2>&1 | tee "$OUT/soak.jsonl" | tail -4
fi
if [ "$what" = product ]; then
  python3 tools/gpu_scaling.py --copies "${PRODUCT_COPIES:-42}" local "local+--workers-per-gpu 1" 2>&1 \
    | tee "$OUT/product.txt" | cut -c1-600
fi
if [ "$what" = stress ]; then
  python3 tools/gpu_capture_stress.py "${STRESS_S:-30}" 2>&1 | tee "$OUT/capture_stress.jsonl" | cut -c1-600
fi
if [ "$what" = quick ]; then
  python3 -c "from bench.video import bench_clips; from pathlib import Path; bench_clips(Path('/tmp/vidx-bench'), None, print)"
  for start in quick wait; do
    ENGINE_START=$start SERIAL=1 python3 tools/gpu_startup.py "$start" 2>>"$OUT/quick.err" | tee -a "$OUT/quick_startup.jsonl"
  done
  for start in quick wait; do
    ENGINE_START=$start ROWS=fps,every-frame python3 tools/gpu_pipeline_rows.py /tmp/vidx-bench "$start" h264 14 \
      2>>"$OUT/quick_rows.jsonl" | tee -a "$OUT/quick_rows_summary.jsonl" | cut -c1-300
  done
  ENGINE_START=background REPEAT=3 ROWS=fps,every-frame python3 tools/gpu_pipeline_rows.py /tmp/vidx-bench background \
    h264 14 2>>"$OUT/quick_rows.jsonl" | tee -a "$OUT/quick_rows_summary.jsonl" | cut -c1-300
  grep '"mode"' "$OUT/quick_rows.jsonl" | cut -c1-300
  timeout "${TESTS_LIMIT:-420}" python3 -m pytest -v -p no:cacheprovider -o addopts="" tests/test_gpu.py \
    -k "quick_start or set_up_behind or detector_finds or embeddings_match" 2>&1 | tee "$OUT/quick_tests.txt" | grep -E "PASSED|FAILED|passed|failed"
  python3 tools/gpu_scaling.py --copies "${PRODUCT_COPIES:-14}" local "local+--engine-start quick" \
    "local+--engine-start wait" 2>&1 | tee "$OUT/quick_product.txt" | cut -c1-600
fi
