"""Long run of the GPU pipeline: host RSS and GPU memory after each pass over the clips (does memory grow?).

    python3 tools/gpu_soak.py WORK_DIR SECONDS   (bench clips in WORK_DIR, built by `vidx bench gpu`)

One JSON line per pass, then a summary line; the engines are loaded once, as a worker does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cupy as cp

from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer.decode.nvdec import NvdecDecoder
from indexer.pipeline import VideoIndexer
from schemas.config import IndexSettings, RuntimeConfig
from vidx.bench_video import rss_mib, run_pipeline

work, seconds = Path(sys.argv[1]), float(sys.argv[2])
clips = sorted(work.glob("bench_h264_*.mp4")) + sorted(work.glob("bench_hevc_*.mp4"))
paths = [clips[i % len(clips)] for i in range(16)]
settings = IndexSettings(runtime=RuntimeConfig(device="gpu", videos_in_flight=14))  # the default engine (FP16)
indexer = VideoIndexer(load_engines(settings.detection, settings.runtime, store=ModelStore()), settings, NvdecDecoder())
run_pipeline(indexer, paths[:2], 2)
pool = cp.get_default_memory_pool()
start, rss_start = time.monotonic(), rss_mib()
passes = frames = 0
peak_pool = 0
while time.monotonic() - start < seconds:
    row = run_pipeline(indexer, paths, 14)
    passes += 1
    frames += row["frames_decoded"]
    peak_pool = max(peak_pool, pool.total_bytes())
    print(json.dumps({"pass": passes, "t_s": round(time.monotonic() - start, 1), "rss_mib": round(rss_mib(), 1),
                      "pool_gib": round(pool.total_bytes() / 2**30, 2), "decoded_fps": row["decoded_fps"],
                      "failed": row["failed"]}), flush=True)
print(json.dumps({"summary": True, "seconds": round(time.monotonic() - start, 1), "passes": passes,
                  "frames_decoded": frames, "rss_mib_start": round(rss_start, 1), "rss_mib_end": round(rss_mib(), 1),
                  "gpu_pool_peak_gib": round(peak_pool / 2**30, 2)}), flush=True)
