"""Does decoding in parallel slow the consumer? Stage times per analysed frame against videos in flight.

    python3 tools/gpu_inflight.py WORK_DIR MODE N1,N2,...
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from engines.loader import load_engines
from engines.zoo import ModelStore
from indexer.decode.nvdec import NvdecDecoder
from indexer.pipeline import VideoIndexer, VideoTask
from schemas.config import IndexSettings, RuntimeConfig, SamplingConfig

work, mode, counts = Path(sys.argv[1]), sys.argv[2], [int(n) for n in sys.argv[3].split(",")]
clips = sorted(work.glob("bench_h264_*.mp4"))
settings = IndexSettings(sampling=SamplingConfig(mode=mode),  # type: ignore[arg-type]
                         runtime=RuntimeConfig(device="gpu", engine="onnxruntime", frame_batch=32))
engines = load_engines(settings.detection, settings.runtime, store=ModelStore())
for n in counts:
    indexer = VideoIndexer(engines, settings, NvdecDecoder())
    list(indexer.index_many([VideoTask(clips[0], 0, "w")], in_flight=1))
    indexer.timings = dict.fromkeys(indexer.timings, 0.0)
    tasks = [VideoTask(clips[i % len(clips)], i + 1, "p") for i in range(max(n, 4))]
    t0 = time.perf_counter()
    frames = sum(r.frames_analysed for _, r in indexer.index_many(tasks, in_flight=n))  # type: ignore[union-attr]
    wall = time.perf_counter() - t0
    per = {k: round(1000 * v / frames, 2) for k, v in indexer.timings.items()}
    print(json.dumps({"mode": mode, "in_flight": n, "videos": len(tasks), "wall_s": round(wall, 2),
                      "analysed": frames, "ms_per_analysed_frame": per}), flush=True)
