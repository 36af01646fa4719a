"""Long run of the GPU pipeline at the default sampling: host RSS and GPU memory after each pass (does memory
grow?), and the pipeline's frame rate over passes long enough that a run's start and end weigh little.

    python3 tools/gpu_soak.py WORK_DIR SECONDS   (builds the bench clips in WORK_DIR if they are missing)

Environment: COPIES videos per pass (default 42), IN_FLIGHT videos in flight in the pipeline (default a GPU
worker's, schemas.config.NVDEC_VIDEOS_IN_FLIGHT), HANDOFFS (comma-separated values of
RuntimeConfig.decode_handoff to cycle through, default the pipeline's own), CODECS (default h264,hevc),
MALLOC_ARENA_MAX (default: the worker's cap, indexer.host_memory; 128 is glibc's own on 16 cores).
First a decode-only row per codec over the same COPIES files (14 NVDEC threads), then the engines are loaded
once, as a worker does, and passes cycle through codec x hand-off until SECONDS have passed. One JSON line
per pass, then a summary line with each cell's median rate and its ratio to decode-only.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from itertools import cycle
from pathlib import Path

import cupy as cp

from bench.video import bench_clips, decode_only, repeated_clips, rss_mib, run_pipeline
from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer import pipeline
from indexer.decode.nvdec import DECODERS as NVDEC_DECODERS
from indexer.decode.nvdec import NvdecDecoder, decode_frames_only
from indexer.host_memory import limit_malloc_arenas
from indexer.pipeline import VideoIndexer
from schemas.config import NVDEC_VIDEOS_IN_FLIGHT, IndexSettings, RuntimeConfig

DECODERS = 14
"""NVDEC threads of the decode-only rows (the best of 7 / 14 / 21 for H.264 in `vidx bench gpu`)."""
arenas = limit_malloc_arenas()  # as a worker does; MALLOC_ARENA_MAX=128 is glibc's default on 16 cores
work, seconds = Path(sys.argv[1]), float(sys.argv[2])
copies = int(os.environ.get("COPIES", "42"))
codecs = os.environ.get("CODECS", "h264,hevc").split(",")
handoffs = [int(h) for h in os.environ.get("HANDOFFS", str(pipeline.DECODE_HANDOFF)).split(",")]
bench_clips(work, None, lambda line: print(line, file=sys.stderr))
paths = {codec: repeated_clips(work, codec, copies) for codec in codecs}
decode_fps = {}
for codec in codecs:
    row = decode_only(paths[codec], DECODERS, decode_frames_only)
    decode_fps[codec] = row["fps"]
    print(json.dumps({"decode_only": codec, **row}), flush=True)

# the default engine (FP16) and engine start (quick sessions first, the fastest taking over during the first passes)
in_flight = int(os.environ.get("IN_FLIGHT", str(NVDEC_VIDEOS_IN_FLIGHT)))
settings = IndexSettings(runtime=RuntimeConfig(device="gpu", videos_in_flight=in_flight))
t0 = time.monotonic()
engines = load_engines(settings.detection, settings.runtime, store=ModelStore(), sampling_mode=settings.sampling.mode)
indexers = {h: VideoIndexer(engines, replace(settings, runtime=replace(settings.runtime, decode_handoff=h)),
                            NvdecDecoder()) for h in handoffs}
run_pipeline(indexers[handoffs[0]], paths[codecs[0]][:2], 2)
print(json.dumps({"load_and_warm_up_s": round(time.monotonic() - t0, 1)}), flush=True)
pool = cp.get_default_memory_pool()
start, rss_start = time.monotonic(), rss_mib()
passes = frames = 0
peak_pool = 0
rates: dict[str, list[float]] = {}
for codec, handoff in cycle([(c, h) for c in codecs for h in handoffs]):
    if time.monotonic() - start >= seconds:
        break
    row = run_pipeline(indexers[handoff], paths[codec], in_flight)
    passes += 1
    frames += row["frames_decoded"]
    peak_pool = max(peak_pool, pool.total_bytes())
    rates.setdefault(f"{codec}/handoff{handoff}", []).append(row["video_fps"])
    print(json.dumps({"pass": passes, "t_s": round(time.monotonic() - start, 1), "codec": codec, "handoff": handoff,
                      "rss_mib": round(rss_mib(), 1), "pool_gib": round(pool.total_bytes() / 2**30, 2),
                      "pool_used_gib": round(pool.used_bytes() / 2**30, 2), "py_blocks": sys.getallocatedblocks(),
                      "threads": threading.active_count(), "shape_sessions": engines.shape_sessions(),
                      "decoders_created": NVDEC_DECODERS.created, "decoders_reused": NVDEC_DECODERS.reused,
                      "wall_s": row["wall_s"], "video_fps": row["video_fps"], "decoded_fps": row["decoded_fps"],
                      "faces": row["faces"], "failed": row["failed"], "stage_s": row["stage_s"]}), flush=True)
cells = {key: {"passes": len(v), "median_video_fps": statistics.median(v), "min": min(v), "max": max(v),
               "x_decode_only": round(statistics.median(v) / decode_fps[key.split("/")[0]], 3)}
         for key, v in rates.items()}
print(json.dumps({"summary": True, "seconds": round(time.monotonic() - start, 1), "passes": passes,
                  "videos_per_pass": copies, "videos_in_flight": in_flight, "malloc_arenas": arenas,
                  "frames_decoded": frames, "decode_only_fps": decode_fps, "cells": cells,
                  "rss_mib_start": round(rss_start, 1), "rss_mib_end": round(rss_mib(), 1),
                  "gpu_pool_peak_gib": round(peak_pool / 2**30, 2)}), flush=True)
