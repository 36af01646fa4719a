"""Where a GPU worker's host memory goes: resident memory after each step of a worker's start-up.

    python3 tools/gpu_rss_breakdown.py WORK_DIR   (bench clips in WORK_DIR, built by `vidx bench gpu`)

One JSON line per step: RSS split into anonymous memory (heaps, pinned buffers, caches) and
file-backed pages (shared libraries: CUDA, cuDNN, cuBLAS, ONNX Runtime), so a growth can be told
apart from libraries paged in. Each engine is opened and warmed up on its own, then the pipeline runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

STARTED = time.monotonic()


def memory(step: str) -> None:
    fields: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    print(json.dumps({"step": step, "t_s": round(time.monotonic() - STARTED, 1), **fields}), flush=True)


memory("python")
import cupy as cp  # noqa: E402
import onnxruntime  # noqa: E402,F401

memory("imports (cupy, onnxruntime)")
cp.zeros(1).sum().get()
memory("CUDA context")

from engines.loader import load_engines  # noqa: E402
from engines.zoo import ModelStore  # noqa: E402
from indexer.decode.nvdec import NvdecDecoder  # noqa: E402
from indexer.pipeline import VideoIndexer  # noqa: E402
from schemas.config import IndexSettings, RuntimeConfig  # noqa: E402
from vidx.bench_video import run_pipeline  # noqa: E402

work = Path(sys.argv[1])
settings = IndexSettings(runtime=RuntimeConfig(device="gpu", videos_in_flight=14))  # the default engine (FP16)
engines = load_engines(settings.detection, settings.runtime, store=ModelStore(), warm_up=False)
memory("sessions opened (no run yet)")
frame = cp.zeros((1080, 1920, 3), cp.uint8)
engines.faces.detect([frame])
memory("face detector: one 1080p frame")
engines.faces.detect([frame] * 32)
memory("face detector: 32 frames")
if engines.persons is not None:
    engines.persons.detect([frame] * 32)
    memory("person detector: 32 frames")
engines.warm_up()
memory("warm-up (every embedder batch size)")
clips = sorted(work.glob("bench_h264_*.mp4")) + sorted(work.glob("bench_hevc_*.mp4"))
paths = [clips[i % len(clips)] for i in range(16)]
indexer = VideoIndexer(engines, settings, NvdecDecoder())
for n in range(1, 4):
    row = run_pipeline(indexer, paths, 14)
    memory(f"pipeline pass {n} ({row['decoded_fps']} fps)")
pool = cp.get_default_memory_pool()
print(json.dumps({"gpu_pool_gib": round(pool.total_bytes() / 2**30, 2),
                  "pinned_pool_free_blocks": cp.get_default_pinned_memory_pool().n_free_blocks()}), flush=True)
